//! The package: the `Dockerfile` passes hadolint and has the shape we promise (multi-stage, pinned bases,
//! the binary alone, a non-root user, an exec-form entrypoint), the Kubernetes manifests name the image it
//! builds, the release profile is the documented one, and `scripts/test` is really checked by ShellCheck.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn text(path: &str) -> String {
    std::fs::read_to_string(common::repo_file(path))
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The Dockerfile's instructions as (INSTRUCTION, arguments), comments dropped, continuations joined.
fn instructions() -> Vec<(String, String)> {
    let joined = text("Dockerfile").replace("\\\n", " ");
    joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (word, rest) = l.split_once(' ').unwrap_or((l, ""));
            (word.to_ascii_uppercase(), rest.trim().to_string())
        })
        .collect()
}

/// A tool installed into the test kit's virtual environment (next to its Python).
fn venv_tool(name: &str) -> PathBuf {
    let python = std::env::var_os("ARC_ONBOARD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo_file(".venv/bin/python"));
    let tool = python.parent().unwrap().join(name);
    assert!(
        tool.exists(),
        "{} not found: run scripts/setup-emulator",
        tool.display()
    );
    tool
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let out = Command::new(venv_tool("hadolint"))
        .arg(common::repo_file("Dockerfile"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_ships_the_binary_alone_as_non_root() {
    let all = instructions();
    let froms: Vec<&String> = all
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| a)
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    for from in &froms {
        let image = from.split_whitespace().next().unwrap();
        let tag = image.rsplit_once(':').map(|(_, t)| t);
        assert!(
            tag.is_some_and(|t| !t.is_empty() && t != "latest" && !t.contains('/')),
            "base image pinned to a tag: {image}"
        );
    }
    assert!(
        all.iter().all(|(i, _)| i != "ADD"),
        "COPY only: no ADD (of URLs or archives)"
    );
    let build = all
        .iter()
        .position(|(i, a)| i == "FROM" && a.ends_with(" AS build"))
        .expect("a stage named build");
    assert!(all[build..]
        .iter()
        .any(|(i, a)| i == "RUN" && a.contains("cargo build --release --locked")));

    // The runtime stage: from the last FROM on.
    let last = all.iter().rposition(|(i, _)| i == "FROM").unwrap();
    let runtime = &all[last..];
    let copies: Vec<&String> = runtime
        .iter()
        .filter(|(i, _)| i == "COPY")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(
        copies,
        vec!["--from=build /out/arc-onboard /usr/local/bin/arc-onboard"],
        "the binary alone"
    );
    assert!(
        runtime.iter().all(|(i, _)| i != "RUN"),
        "nothing run in the runtime image"
    );
    let user = runtime
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.clone())
        .expect("USER in the runtime stage");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "non-root: {user}");
    let entrypoint = runtime
        .iter()
        .find(|(i, _)| i == "ENTRYPOINT")
        .map(|(_, a)| a.clone())
        .expect("ENTRYPOINT");
    let argv: Vec<String> = serde_json::from_str(&entrypoint).expect("exec form (JSON array)");
    assert_eq!(argv, vec!["/usr/local/bin/arc-onboard"]);

    // The Kubernetes manifests run it as that user.
    for manifest in ["kubernetes.yaml", "kubernetes-sharded.yaml"] {
        let m = text(&format!("scripts/deploy/{manifest}"));
        assert!(
            m.contains(&format!("runAsUser: {uid}")),
            "{manifest} runs as {uid}"
        );
    }

    // The build context leaves out build output, environments and history.
    let ignore = text(".dockerignore");
    for entry in ["target", ".git", ".venv"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore lacks {entry}"
        );
    }
}

#[test]
fn the_kubernetes_manifests_and_the_readme_name_the_image_the_dockerfile_builds() {
    let version = env!("CARGO_PKG_VERSION");
    let image = format!("arc-onboard:{version}");
    let dockerfile = text("Dockerfile");
    assert!(
        dockerfile.contains(&format!("org.opencontainers.image.version=\"{version}\"")),
        "the image's version label is the package's"
    );
    let build = format!("docker build -t {image} .");
    assert!(
        dockerfile.contains(&build),
        "the Dockerfile says how it is built"
    );
    assert!(
        text("README.md").contains(&build),
        "the README says how it is built"
    );
    for manifest in ["kubernetes.yaml", "kubernetes-sharded.yaml"] {
        let m = text(&format!("scripts/deploy/{manifest}"));
        let images: Vec<&str> = m
            .lines()
            .filter_map(|l| {
                l.trim()
                    .trim_start_matches('#')
                    .trim()
                    .strip_prefix("image: ")
            })
            .collect();
        assert!(!images.is_empty(), "{manifest} names an image");
        for i in images {
            assert_eq!(i, image, "{manifest}");
        }
    }
}

#[test]
fn the_release_profile_is_lto_one_codegen_unit_and_stripped() {
    let cargo: toml::Value = text("Cargo.toml").parse().unwrap();
    let release = &cargo["profile"]["release"];
    assert_eq!(release["lto"], toml::Value::Boolean(true));
    assert_eq!(release["strip"], toml::Value::Boolean(true));
    assert_eq!(release["codegen-units"], toml::Value::Integer(1));
}

#[test]
fn shellcheck_checks_scripts_test_and_finds_nothing() {
    let run = |path: &std::path::Path| {
        Command::new("shellcheck")
            .arg(path)
            .output()
            .expect("shellcheck (scripts/test installs it)")
    };
    let script = common::repo_file("scripts/test");
    let out = run(&script);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The same file with a finding added: ShellCheck reports it, so nothing in the file stops it from
    // checking (an unparsable directive would end the check with SC1073 instead).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("test");
    std::fs::write(&copy, format!("{}echo $1\n", text("scripts/test"))).unwrap();
    let out = run(&copy);
    let findings = String::from_utf8_lossy(&out.stdout);
    assert!(findings.contains("SC2086"), "{findings}");
    assert!(!findings.contains("SC1073"), "{findings}");
}
