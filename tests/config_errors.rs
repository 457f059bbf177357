//! Bad configurations: each file in `tests/bad-configs/` must fail with exit code 2, name its key, and make
//! no AWS call at all. Also `validate` on a good file.

mod common;

use common::{repo_file, run_binary, Emulator};

#[test]
fn every_bad_config_fails_before_any_aws_call() {
    let emu = Emulator::start();
    let dir = repo_file("tests/bad-configs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus has {} files", files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let key = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks '# expect: KEY'", file.display()));
        for command in ["plan", "run", "validate"] {
            let out = emu.run_env(
                &[command],
                &text,
                &[("ARC_ONBOARD_CLIENT_SECRET", "s3cr3t-value")],
            );
            let name = file.file_name().unwrap().to_string_lossy();
            assert_eq!(
                out.code, 2,
                "{name} ({command}): exit code; stderr: {}",
                out.stderr
            );
            assert!(
                out.stderr.contains(key),
                "{name} ({command}): stderr does not name {key}:\n{}",
                out.stderr
            );
            assert!(
                !out.stderr.contains("s3cr3t-value"),
                "{name}: secret leaked"
            );
            assert!(out.stdout.is_empty(), "{name}: nothing on stdout");
        }
        assert!(
            emu.calls().is_empty(),
            "{}: AWS was called: {:?}",
            file.display(),
            emu.calls()
        );
    }
}

#[test]
fn validate_prints_the_effective_config_with_the_secret_redacted() {
    let config = r#"
[aws]
regions = ["us-east-1"]
[onboarding]
connectivity = "proxy"
proxy_url = "http://10.0.0.5:3128"
[azure]
tenant_id = "00000000-0000-0000-0000-000000000001"
subscription_id = "00000000-0000-0000-0000-000000000002"
client_id = "00000000-0000-0000-0000-000000000003"
location = "eastus"
cloud = "AzureUSGovernment"
"#;
    let out = run_binary(
        &["validate"],
        config,
        &[("ARC_ONBOARD_CLIENT_SECRET", "very-secret-value")],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("very-secret-value"));
    assert!(out
        .stdout
        .contains("ARC_ONBOARD_CLIENT_SECRET is set (value redacted)"));
    // Defaults are filled in, and follow the cloud.
    for expected in [
        "auto_assignment_interval = \"1 day\"",
        "sync_interval = \"1 hour\"",
        "role_name = \"AzureArcForServerSSM\"",
        "resource_group = \"aws_{account_id}\"",
        "authority_host = \"https://login.microsoftonline.us/\"",
        "resource_manager = \"https://management.usgovcloudapi.net/\"",
        "proxy_url = \"http://10.0.0.5:3128/\"",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected}:\n{}",
            out.stdout
        );
    }
    let unset = run_binary(&["validate"], config, &[]);
    assert!(unset
        .stdout
        .contains("ARC_ONBOARD_CLIENT_SECRET is not set"));
}

#[test]
fn a_missing_config_file_is_exit_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arc-onboard"))
        .args(["plan", "--config", "/nonexistent/arc-onboard.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/arc-onboard.toml"));
}

#[test]
fn usage_errors_are_exit_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arc-onboard"))
        .args(["run", "--wait-for-ssm", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--wait-for-ssm"));
}

#[test]
fn an_https_client_that_cannot_be_built_is_a_clean_exit_2() {
    // No CA certificate can be loaded: the Azure client cannot be built. That is the machine's setup, not a
    // bug: a message and exit code 2, before any AWS call or state file, never a panic.
    let config = r#"
[aws]
regions = ["us-east-1"]
[azure]
tenant_id = "00000000-0000-0000-0000-000000000001"
subscription_id = "00000000-0000-0000-0000-000000000002"
client_id = "00000000-0000-0000-0000-000000000003"
location = "eastus"
"#;
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("state.db");
    let env = [
        ("ARC_ONBOARD_CLIENT_SECRET", "s3cr3t-value"),
        ("SSL_CERT_FILE", "/nonexistent/ca-certificates.crt"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
    ];
    for args in [
        vec!["plan"],
        vec!["run"],
        vec!["daemon", "--state-file", state_file.to_str().unwrap()],
    ] {
        let out = run_binary(&args, config, &env);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("error: cannot build the HTTPS client for Azure"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{args:?}: {}", out.stderr);
        assert!(
            !out.stderr.contains("s3cr3t-value"),
            "{args:?}: secret leaked"
        );
    }
    assert!(
        !state_file.exists(),
        "the daemon stopped before its state file"
    );
}

#[test]
fn validate_prints_the_effective_accounts_section() {
    let config = "[aws]\nregions = [\"us-east-1\"]\n[aws.accounts]\nsource = \"organization\"\norganizational_units = [\"ou-ab12-cd34ef56\"]\nexternal_id = \"tenant-42\"\n";
    let out = run_binary(&["validate"], config, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for expected in [
        "[aws.accounts]",
        "source = \"organization\"",
        "organizational_units = [\"ou-ab12-cd34ef56\"]",
        "member_role = \"AzureArcOnboardingMember\"",
        "external_id = \"tenant-42\"",
        "max_concurrent_accounts = 16",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected}:\n{}",
            out.stdout
        );
    }
    let caller = run_binary(&["validate"], "[aws]\nregions = [\"us-east-1\"]\n", &[]);
    assert!(
        caller.stdout.contains("source = \"caller\""),
        "{}",
        caller.stdout
    );
}
