//! Checks the deployment examples in `scripts/deploy/`: the systemd unit and the Kubernetes manifests run
//! `arc-onboard daemon` the way the daemon expects, and neither carries the client secret's value; the
//! Kubernetes example uses Azure workload identity (a projected service account token), so no Azure secret
//! exists there at all.
//! The unit file is read as (section, key, value) entries (no INI crate); the Kubernetes manifests are
//! parsed as YAML (`serde_norway`) and checked by structure, so a moved or misindented key fails; only
//! comments (the commented alternatives, a commented secret) are read as text. The ConfigMap's TOML goes
//! through the real configuration validator.

use std::path::{Path, PathBuf};

use arc_onboard::config::{Config, CredentialConfig};
use serde::Deserialize;
use serde_json::Value;

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

/// The documents of a manifest in `scripts/deploy/`, parsed as YAML (empty documents dropped).
fn yaml_documents(name: &str) -> Vec<Value> {
    let (path, text) = deploy_file(name);
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .filter(|document| !document.is_null())
        .collect()
}

/// The one document of `kind` in `documents`.
fn only<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = documents.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}: {found:?}");
    found[0]
}

/// The entry of the list `items` whose `name` is `name`.
fn named<'a>(items: &'a Value, name: &str) -> &'a Value {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {items}"))
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no `{name}` in {items}"))
}

/// A string field, or a panic naming it.
fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"))
}

/// The container's arguments as strings.
fn args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| text(a, "an argument"))
        .collect()
}

/// The ConfigMap's `arc-onboard.toml` through the real configuration parser.
fn configmap_config(documents: &[Value], name: &str) -> Config {
    let toml = text(
        &only(documents, "ConfigMap")["data"]["arc-onboard.toml"],
        "the ConfigMap's arc-onboard.toml",
    );
    Config::parse(toml, Path::new(name)).unwrap_or_else(|error| {
        panic!("{name}: the ConfigMap's arc-onboard.toml is invalid: {error}")
    })
}

/// No container of `pod` gives `ARC_ONBOARD_CLIENT_SECRET` a literal value.
fn assert_no_literal_secret(pod: &Value, name: &str) {
    for container in pod["containers"].as_array().expect("containers") {
        for entry in container["env"].as_array().into_iter().flatten() {
            if entry["name"] == "ARC_ONBOARD_CLIENT_SECRET" {
                assert!(entry.get("value").is_none(), "{name}: {entry}");
            }
        }
    }
}

#[test]
fn kubernetes_manifests_run_the_daemon() {
    let name = "kubernetes.yaml";
    let docs = yaml_documents(name);
    let deployment = only(&docs, "Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(
        spec["strategy"]["type"], "Recreate",
        "two daemons must never overlap"
    );
    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["ports"][0]["containerPort"], 9464);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let argv = args(container);
    assert_eq!(argv.first(), Some(&"daemon"));
    assert_eq!(flag_value(&argv, "--metrics-addr"), Some("0.0.0.0:9464"));
    // The state file lives on the claimed volume.
    let state_file = flag_value(&argv, "--state-file").expect("--state-file");
    let state_mount = text(
        &named(&container["volumeMounts"], "state")["mountPath"],
        "the state mount",
    );
    assert!(
        Path::new(state_file).starts_with(state_mount),
        "{state_file} on {state_mount}"
    );
    let claim = only(&docs, "PersistentVolumeClaim");
    assert_eq!(
        named(&pod["volumes"], "state")["persistentVolumeClaim"]["claimName"],
        claim["metadata"]["name"]
    );
    // The configuration file the daemon reads is the ConfigMap's key, mounted.
    let config_file = flag_value(&argv, "--config").expect("--config");
    let config_mount = text(
        &named(&container["volumeMounts"], "config")["mountPath"],
        "the config mount",
    );
    assert_eq!(
        Path::new(config_file),
        Path::new(config_mount).join("arc-onboard.toml")
    );
    assert_eq!(
        named(&pod["volumes"], "config")["configMap"]["name"],
        only(&docs, "ConfigMap")["metadata"]["name"]
    );
    let config = configmap_config(&docs, name);

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
    let projected = &named(&pod["volumes"], "azure-identity-token")["projected"]["sources"][0]
        ["serviceAccountToken"];
    assert_eq!(projected["path"], file.to_str().unwrap());
    assert_eq!(projected["audience"], "api://AzureADTokenExchange");
    assert!(projected["expirationSeconds"].is_u64(), "{projected}");
    assert_eq!(
        named(&container["volumeMounts"], "azure-identity-token")["mountPath"],
        mount.to_str().unwrap()
    );
    let env = &container["env"];
    assert_eq!(
        named(env, "AZURE_FEDERATED_TOKEN_FILE")["value"],
        token_file.to_str().unwrap()
    );
    let client_id = azure.client_id.expect("client_id");
    let account = only(&docs, "ServiceAccount");
    let annotations = &account["metadata"]["annotations"];
    assert_eq!(
        annotations["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/arc-onboard"
    );
    assert_eq!(
        annotations["azure.workload.identity/client-id"],
        client_id.to_string()
    );
    assert_eq!(
        named(env, "AZURE_CLIENT_ID")["value"],
        client_id.to_string()
    );
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .all(|e| e.get("valueFrom").is_none()),
        "no secret reference: {env}"
    );
    assert_no_literal_secret(pod, name);

    // The commented alternatives (comments are no YAML structure: read as text).
    let (_, raw) = deploy_file(name);
    assert!(raw.contains("# kind: CronJob"));
    assert!(raw.contains("#   concurrencyPolicy: Forbid"));
    assert_eq!(
        literal_secret_values(&raw),
        Vec::<String>::new(),
        "ARC_ONBOARD_CLIENT_SECRET must come from a Secret, never a literal value"
    );
}

#[test]
fn the_sharded_statefulset_takes_its_shard_from_the_pod_ordinal_with_a_volume_per_pod() {
    use arc_onboard::config::{AccountSource, Shard};

    let name = "kubernetes-sharded.yaml";
    let docs = yaml_documents(name);
    let set = only(&docs, "StatefulSet");
    assert!(docs.iter().all(|d| d["kind"] != "Deployment"));
    let spec = &set["spec"];
    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    let env = &container["env"];

    // INDEX from the pod ordinal (downward API), COUNT equal to the replicas.
    let replicas = spec["replicas"].as_u64().expect("replicas");
    assert!(replicas >= 2, "an example of sharding has shards");
    assert_eq!(
        named(env, "SHARD_INDEX")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.labels['apps.kubernetes.io/pod-index']"
    );
    assert_eq!(
        named(env, "SHARD_COUNT")["value"],
        replicas.to_string(),
        "SHARD_COUNT must equal replicas"
    );
    let argv = args(container);
    assert_eq!(
        flag_value(&argv, "--shard"),
        Some("$(SHARD_INDEX)/$(SHARD_COUNT)"),
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
    let templates = spec["volumeClaimTemplates"]
        .as_array()
        .expect("volumeClaimTemplates");
    assert_eq!(templates.len(), 1);
    let claim = text(
        &templates[0]["metadata"]["name"],
        "the claim template's name",
    );
    assert_eq!(
        templates[0]["spec"]["accessModes"],
        serde_json::json!(["ReadWriteOnce"])
    );
    let mount = text(
        &named(&container["volumeMounts"], claim)["mountPath"],
        "the state mount",
    );
    let state_file = flag_value(&argv, "--state-file").expect("--state-file");
    assert!(
        Path::new(state_file).starts_with(mount),
        "the state file lives on the per-pod volume: {state_file} on {mount}"
    );
    assert!(pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v.get("persistentVolumeClaim").is_none()));
    assert!(docs.iter().all(|d| d["kind"] != "PersistentVolumeClaim"));

    let service = only(&docs, "Service");
    assert_eq!(service["spec"]["clusterIP"], "None", "a headless Service");
    assert_eq!(service["metadata"]["name"], spec["serviceName"]);

    let config = configmap_config(&docs, name);
    assert_eq!(config.aws.accounts.source, AccountSource::Organization);
    assert!(matches!(
        config.azure.expect("[azure]").credential,
        CredentialConfig::WorkloadIdentity { .. }
    ));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_no_literal_secret(pod, name);
    let (_, raw) = deploy_file(name);
    assert_eq!(literal_secret_values(&raw), Vec::<String>::new());
}

#[test]
fn kubernetes_pods_hold_no_api_token_are_probed_for_readiness_and_admit_only_metrics_traffic() {
    for name in ["kubernetes.yaml", "kubernetes-sharded.yaml"] {
        let docs = yaml_documents(name);
        let of_kind =
            |kind: &str| -> Vec<&Value> { docs.iter().filter(|d| d["kind"] == kind).collect() };
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
