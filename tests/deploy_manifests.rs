//! Checks the deployment examples in `scripts/deploy/`: the systemd unit and the Kubernetes manifests run
//! `arc-onboard daemon` the way the daemon expects, and neither carries the client secret's value; the
//! Kubernetes example uses Azure workload identity (a projected service account token), so no Azure secret
//! exists there at all.
//! The unit file is read with plain string checks (no INI crate); the Kubernetes manifests are also parsed
//! as YAML (PyYAML of the emulator's environment, `ARC_ONBOARD_PYTHON`) where a check depends on structure;
//! the ConfigMap's TOML goes through the real configuration validator.

use std::path::{Path, PathBuf};

use arc_onboard::config::{Config, CredentialConfig};

fn deploy_file(name: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/deploy")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (path, text)
}

/// A systemd unit as (section, key, value) entries, comments dropped, continuation lines joined.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let joined = text.replace("\\\n", " ");
    let mut section = String::new();
    let mut entries = Vec::new();
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a key=value line: {line}"));
        entries.push((
            section.clone(),
            key.trim().to_string(),
            value.trim().to_string(),
        ));
    }
    entries
}

/// The values of `key` in `section`.
fn unit_values<'a>(
    entries: &'a [(String, String, String)],
    section: &str,
    key: &str,
) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

/// The value following `flag` in `argv`.
fn flag_value<'a>(argv: &[&'a str], flag: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| *a == flag)
        .and_then(|i| argv.get(i + 1).copied())
}

#[test]
fn systemd_unit_runs_the_daemon() {
    let (path, text) = deploy_file("arc-onboard.service");
    let entries = unit_entries(&text);
    let sections: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('['))
        .map(str::trim)
        .collect();
    assert_eq!(
        sections,
        ["[Unit]", "[Service]", "[Install]"],
        "{}",
        path.display()
    );

    let exec_start = unit_values(&entries, "Service", "ExecStart");
    assert_eq!(exec_start.len(), 1, "one ExecStart: {exec_start:?}");
    let argv: Vec<&str> = exec_start[0].split_whitespace().collect();
    assert!(
        argv[0].ends_with("/arc-onboard") && argv[1] == "daemon",
        "ExecStart runs `arc-onboard daemon`: {argv:?}"
    );
    assert_eq!(
        flag_value(&argv, "--config"),
        Some("/etc/arc-onboard/arc-onboard.toml")
    );
    assert_eq!(flag_value(&argv, "--log-format"), Some("json"));
    let state_file = flag_value(&argv, "--state-file").expect("--state-file");
    let metrics_addr = flag_value(&argv, "--metrics-addr").expect("--metrics-addr");
    assert!(
        metrics_addr.parse::<std::net::SocketAddr>().is_ok(),
        "--metrics-addr {metrics_addr}"
    );
    // The state file lives in the one writable directory systemd creates for the service.
    let state_dirs = unit_values(&entries, "Service", "StateDirectory");
    assert_eq!(state_dirs, ["arc-onboard"]);
    assert!(
        state_file.starts_with("/var/lib/arc-onboard/"),
        "--state-file {state_file} is under StateDirectory"
    );

    let reload = unit_values(&entries, "Service", "ExecReload");
    assert_eq!(reload.len(), 1, "one ExecReload: {reload:?}");
    assert!(
        reload[0].contains("-HUP") && reload[0].contains("$MAINPID"),
        "{reload:?}"
    );

    for (key, value) in [
        ("EnvironmentFile", "/etc/arc-onboard/env"),
        ("DynamicUser", "yes"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateUsers", "yes"),
        ("PrivateMounts", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ] {
        assert_eq!(
            unit_values(&entries, "Service", key),
            [value],
            "[Service] {key}"
        );
    }
    assert!(!unit_values(&entries, "Install", "WantedBy").is_empty());

    // The secret reaches the service only through EnvironmentFile, never written in the unit.
    assert!(
        !text.contains("ARC_ONBOARD_CLIENT_SECRET="),
        "the unit file must not assign the client secret"
    );
}

/// Lines that give `ARC_ONBOARD_CLIENT_SECRET` a literal `value:` (commented-out lines included).
fn literal_secret_values(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.contains("ARC_ONBOARD_CLIENT_SECRET") {
            continue;
        }
        // Flow style: `- {name: ARC_ONBOARD_CLIENT_SECRET, value: x}`.
        if line.contains("value:") {
            found.push(line.to_string());
        }
        // Block style: the next entry of that list item.
        if line.trim_start_matches("- ").starts_with("name:") {
            if let Some(next) = lines[i + 1..].iter().find(|l| !l.is_empty()) {
                if next.starts_with("value:") {
                    found.push(format!("{line} / {next}"));
                }
            }
        }
    }
    found
}

#[test]
fn the_secret_check_catches_literal_values() {
    assert_eq!(
        literal_secret_values("env:\n  - name: ARC_ONBOARD_CLIENT_SECRET\n\n    value: hunter2\n")
            .len(),
        1
    );
    assert_eq!(
        literal_secret_values("#   - name: ARC_ONBOARD_CLIENT_SECRET\n#     value: hunter2\n")
            .len(),
        1
    );
    assert_eq!(
        literal_secret_values("- {name: ARC_ONBOARD_CLIENT_SECRET, value: hunter2}").len(),
        1
    );
    assert!(literal_secret_values(
        "- name: ARC_ONBOARD_CLIENT_SECRET\n  valueFrom:\n    secretKeyRef:\n"
    )
    .is_empty());
}

/// The lines of the first list item of `document` that starts with `item` and whose next non-blank line
/// (trimmed) starts with `then`, up to the next item at the same indentation.
fn yaml_block(document: &str, item: &str, then: &str) -> String {
    let lines: Vec<&str> = document.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != item {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let rest: Vec<&str> = lines[i + 1..]
            .iter()
            .copied()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .collect();
        if rest
            .iter()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.trim().starts_with(then))
        {
            return rest.join("\n");
        }
    }
    panic!("no `{item}` item followed by `{then}`")
}

/// The TOML in the ConfigMap's `arc-onboard.toml` block scalar.
fn configmap_toml(document: &str) -> String {
    let mut lines = document.lines();
    let header = lines
        .by_ref()
        .find(|l| l.trim() == "arc-onboard.toml: |")
        .expect("the ConfigMap has an arc-onboard.toml key with a literal block");
    let indent = header.len() - header.trim_start().len() + 2;
    let mut toml = String::new();
    for line in lines {
        if !line.trim().is_empty() && line.len() - line.trim_start().len() < indent {
            break;
        }
        toml.push_str(line.get(indent..).unwrap_or(""));
        toml.push('\n');
    }
    toml
}

#[test]
fn kubernetes_manifests_run_the_daemon() {
    let (path, text) = deploy_file("kubernetes.yaml");
    let documents: Vec<&str> = text.split("\n---\n").collect();
    let with_kind = |kind: &str| -> Vec<&str> {
        documents
            .iter()
            .copied()
            .filter(|d| d.lines().any(|l| l == format!("kind: {kind}")))
            .collect()
    };

    let deployments = with_kind("Deployment");
    assert_eq!(deployments.len(), 1, "one Deployment in {}", path.display());
    let deployment = deployments[0];
    assert!(deployment.contains("\n  replicas: 1\n"));
    let strategy: Vec<&str> = deployment
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .skip_while(|l| *l != "strategy:")
        .take(2)
        .collect();
    assert_eq!(
        strategy,
        ["strategy:", "type: Recreate"],
        "two daemons must never overlap"
    );
    assert!(deployment.contains("path: /healthz"));
    assert!(deployment.contains("livenessProbe:"));
    assert!(deployment.contains("containerPort: 9464"));
    assert!(deployment.contains("readOnlyRootFilesystem: true"));
    assert!(deployment.contains("runAsNonRoot: true"));
    assert!(deployment.contains("- daemon\n"));
    assert!(deployment.contains("- --state-file\n"));
    assert!(deployment.contains("- --metrics-addr\n"));

    let accounts = with_kind("ServiceAccount");
    assert_eq!(accounts.len(), 1);
    assert!(accounts[0]
        .contains("eks.amazonaws.com/role-arn: arn:aws:iam::123456789012:role/arc-onboard"));
    assert_eq!(with_kind("PersistentVolumeClaim").len(), 1);

    let config_maps = with_kind("ConfigMap");
    assert_eq!(config_maps.len(), 1);
    let toml = configmap_toml(config_maps[0]);
    let config = match Config::parse(&toml, Path::new("kubernetes.yaml ConfigMap")) {
        Ok(config) => config,
        Err(error) => panic!("the ConfigMap's arc-onboard.toml is invalid: {error}\n{toml}"),
    };

    // Azure workload identity: the configured token file is the projected service account token, for
    // Entra's audience, and no Azure secret is in play.
    let azure = config.azure.expect("[azure]");
    let CredentialConfig::WorkloadIdentity { token_file, .. } = &azure.credential else {
        panic!("the example uses workload identity: {:?}", azure.credential);
    };
    let (mount, file) = (
        token_file.parent().unwrap(),
        token_file.file_name().unwrap(),
    );
    let volume = yaml_block(deployment, "- name: azure-identity-token", "projected:");
    assert!(volume.contains("serviceAccountToken:"), "{volume}");
    assert!(
        volume.contains(&format!("path: {}", file.to_str().unwrap())),
        "{volume}"
    );
    assert!(
        volume.contains("audience: api://AzureADTokenExchange"),
        "{volume}"
    );
    assert!(volume.contains("expirationSeconds:"), "{volume}");
    let mounted = yaml_block(deployment, "- name: azure-identity-token", "mountPath:");
    assert!(
        mounted.contains(&format!("mountPath: {}", mount.display())),
        "{mounted}"
    );
    assert!(deployment.contains(&format!(
        "- name: AZURE_FEDERATED_TOKEN_FILE\n              value: {}",
        token_file.display()
    )));
    let client_id = azure.client_id.expect("client_id");
    assert!(accounts[0].contains(&format!(
        "azure.workload.identity/client-id: \"{client_id}\""
    )));
    assert!(deployment.contains(&format!(
        "- name: AZURE_CLIENT_ID\n              value: \"{client_id}\""
    )));
    assert!(!deployment
        .lines()
        .any(|l| l.trim_start().starts_with("secretKeyRef:")));

    // The commented alternative.
    assert!(text.contains("# kind: CronJob"));
    assert!(text.contains("#   concurrencyPolicy: Forbid"));

    assert!(text.contains("/healthz"));
    assert_eq!(
        literal_secret_values(&text),
        Vec::<String>::new(),
        "ARC_ONBOARD_CLIENT_SECRET must come from a Secret, never a literal value"
    );
}

/// The value of `key: value` on the first line of `document` whose trimmed text starts with `key:`.
fn yaml_value<'a>(document: &'a str, key: &str) -> &'a str {
    document
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')))
        .map(|v| v.trim().trim_matches('"'))
        .unwrap_or_else(|| panic!("no `{key}:`"))
}

#[test]
fn the_sharded_statefulset_takes_its_shard_from_the_pod_ordinal_with_a_volume_per_pod() {
    use arc_onboard::config::{AccountSource, Shard};

    let (path, text) = deploy_file("kubernetes-sharded.yaml");
    let documents: Vec<&str> = text.split("\n---\n").collect();
    let with_kind = |kind: &str| -> Vec<&str> {
        documents
            .iter()
            .copied()
            .filter(|d| d.lines().any(|l| l == format!("kind: {kind}")))
            .collect()
    };
    let sets = with_kind("StatefulSet");
    assert_eq!(sets.len(), 1, "one StatefulSet in {}", path.display());
    let set = sets[0];
    assert!(with_kind("Deployment").is_empty());

    // INDEX from the pod ordinal (downward API), COUNT equal to the replicas.
    let replicas: u64 = yaml_value(set, "replicas").parse().unwrap();
    assert!(replicas >= 2, "an example of sharding has shards");
    let index = yaml_block(set, "- name: SHARD_INDEX", "valueFrom:");
    assert!(
        index.contains("fieldPath: metadata.labels['apps.kubernetes.io/pod-index']"),
        "{index}"
    );
    let count = yaml_block(set, "- name: SHARD_COUNT", "value:");
    assert_eq!(
        yaml_value(&count, "value"),
        replicas.to_string(),
        "SHARD_COUNT must equal replicas"
    );
    assert!(
        set.contains("- --shard\n            - $(SHARD_INDEX)/$(SHARD_COUNT)\n"),
        "the daemon gets --shard INDEX/COUNT"
    );
    // What every pod's argument expands to is a valid shard, and together they cover every account id.
    let mut covered = vec![0u32; replicas as usize];
    for ordinal in 0..replicas {
        let arg = "$(SHARD_INDEX)/$(SHARD_COUNT)"
            .replace("$(SHARD_INDEX)", &ordinal.to_string())
            .replace("$(SHARD_COUNT)", &replicas.to_string());
        let shard: Shard = arg.parse().unwrap();
        for id in 100_000_000_000u64..100_000_000_000 + 4 * replicas {
            if shard.selects(&id.to_string()) {
                covered[(id % replicas) as usize] += 1;
            }
        }
    }
    assert!(covered.iter().all(|n| *n == 4), "{covered:?}");

    // One state volume per pod: a claim template mounted where --state-file points; no shared claim.
    assert!(set.contains("volumeClaimTemplates:"));
    let template = yaml_block(set, "- metadata:", "name:");
    let claim = yaml_value(&template, "name");
    let mount = yaml_block(set, &format!("- name: {claim}"), "mountPath:");
    let mount_path = yaml_value(&mount, "mountPath");
    assert!(
        set.contains(&format!("- --state-file\n            - {mount_path}/")),
        "the state file lives on the per-pod volume"
    );
    assert!(!set.contains("persistentVolumeClaim:"));
    assert!(set.contains("ReadWriteOnce"));

    let services = with_kind("Service");
    assert_eq!(services.len(), 1);
    assert!(
        services[0].contains("clusterIP: None"),
        "a headless Service"
    );
    assert_eq!(
        yaml_value(services[0], "name"),
        yaml_value(set, "serviceName")
    );

    let toml = configmap_toml(with_kind("ConfigMap")[0]);
    let config = match Config::parse(&toml, Path::new("kubernetes-sharded.yaml ConfigMap")) {
        Ok(config) => config,
        Err(error) => panic!("the ConfigMap's arc-onboard.toml is invalid: {error}\n{toml}"),
    };
    assert_eq!(config.aws.accounts.source, AccountSource::Organization);
    assert!(matches!(
        config.azure.expect("[azure]").credential,
        CredentialConfig::WorkloadIdentity { .. }
    ));
    assert!(set.contains("path: /healthz"));
    assert_eq!(literal_secret_values(&text), Vec::<String>::new());
}

/// The documents of a manifest in `scripts/deploy/`, parsed as YAML (by PyYAML) into JSON values.
fn yaml_documents(name: &str) -> Vec<serde_json::Value> {
    let (path, _) = deploy_file(name);
    let python = std::env::var_os("ARC_ONBOARD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(&path)
        .output()
        .expect("run the emulator's Python (scripts/setup-emulator)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

#[test]
fn kubernetes_pods_hold_no_api_token_are_probed_for_readiness_and_admit_only_metrics_traffic() {
    for name in ["kubernetes.yaml", "kubernetes-sharded.yaml"] {
        let docs = yaml_documents(name);
        let of_kind = |kind: &str| -> Vec<&serde_json::Value> {
            docs.iter().filter(|d| d["kind"] == kind).collect()
        };
        let workloads: Vec<_> = of_kind("Deployment")
            .into_iter()
            .chain(of_kind("StatefulSet"))
            .collect();
        assert_eq!(workloads.len(), 1, "{name}");
        let pod = &workloads[0]["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        let container = &pod["containers"][0];
        let port = container["ports"][0]["containerPort"].clone();
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(
                container[probe]["httpGet"]["path"], "/healthz",
                "{name} {probe}"
            );
            assert_eq!(
                container[probe]["httpGet"]["port"], "metrics",
                "{name} {probe}"
            );
        }
        assert_eq!(container["ports"][0]["name"], "metrics", "{name}");

        let policies = of_kind("NetworkPolicy");
        assert_eq!(policies.len(), 1, "{name}");
        let spec = &policies[0]["spec"];
        assert_eq!(
            spec["podSelector"]["matchLabels"], workloads[0]["spec"]["selector"]["matchLabels"],
            "{name}: the policy selects the daemon's pods"
        );
        assert_eq!(
            spec["policyTypes"],
            serde_json::json!(["Ingress"]),
            "{name}"
        );
        let ingress = spec["ingress"].as_array().unwrap();
        assert_eq!(ingress.len(), 1, "{name}");
        let ports = ingress[0]["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 1, "{name}: only the metrics port");
        assert_eq!(ports[0]["port"], port, "{name}");
        assert!(
            !ingress[0]["from"].as_array().unwrap().is_empty(),
            "{name}: not open to all"
        );
    }
}
