//! The onboarding identity (`[azure.onboarding]`): install scripts carry only its tokens, the orchestrator's
//! own token never leaves the process, a person's token (`azure-cli`) is never sent to instances, and its
//! configuration mistakes stop a command before any AWS call. The Azure stub plays both apps and refuses
//! the onboarding identity's tokens for every Resource Manager call, as Azure does for a principal that
//! holds only the *Azure Connected Machine Onboarding* role.

mod common;

use common::{fleet_with, row, signed_in_az, World, RUN_JSON, STUB_SECRET};
use serde_json::{json, Value};

const ONE_REGION: &str = "[aws]\nregions = [\"us-east-1\"]\n";
const ORCHESTRATOR_CLIENT: &str = "00000000-0000-0000-0000-000000000003";
const ONBOARDING_CLIENT: &str = "00000000-0000-0000-0000-000000000004";
const ONBOARDING_SECRET: &str = "onboarding-secret-Kp7";
const ONBOARDING_SECTION: &str =
    "\n[azure.onboarding]\nclient_id = \"00000000-0000-0000-0000-000000000004\"\n";
const NO_ONBOARDING_WARNING: &str = "no [azure.onboarding] identity";

/// A world whose stub knows the onboarding app's secret, with `count` Online Linux instances.
fn world(count: usize) -> (World, Vec<String>) {
    let w = World::start();
    w.azure.control(
        "POST",
        "/_stub/config",
        Some(&json!({"onboarding_client_secret": ONBOARDING_SECRET})),
    );
    let seeded = if count == 0 {
        Vec::new()
    } else {
        w.aws.seed(&fleet_with(json!([
            {"region": "us-east-1", "count": count, "instance_profile": "AppProfile"}
        ])))
    };
    w.aws.reset_calls();
    let ids = seeded
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_string())
        .collect();
    (w, ids)
}

fn commands(w: &World) -> Vec<Value> {
    w.aws.control("GET", "/_emulator/commands", None)["commands"]
        .as_array()
        .unwrap()
        .clone()
}

/// Client ids the stub issued tokens to (its token endpoint's successful requests).
fn token_clients(w: &World) -> Vec<String> {
    w.azure
        .requests()
        .into_iter()
        .filter(|r| r["kind"] == "token" && r["ok"] == true)
        .map(|r| r["client_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn scripts_carry_only_the_onboarding_identitys_token_and_its_secret_goes_nowhere() {
    let (w, ids) = world(3);
    let config = format!("{ONE_REGION}\n{}{ONBOARDING_SECTION}", w.azure_section());
    let out = w.run_env(
        &RUN_JSON,
        &config,
        &[("ARC_ONBOARD_ONBOARDING_CLIENT_SECRET", ONBOARDING_SECRET)],
    );
    let report = out.json_of_success();
    for id in &ids {
        assert_eq!(row(&report, id)["status"], "onboarded", "{report:#}");
    }
    // Every connect used a token of the onboarding app; none of the orchestrator's.
    let connects = w.azure.connects();
    assert_eq!(connects.len(), ids.len(), "{connects:#?}");
    for c in &connects {
        assert_eq!(c["token_client_id"], ONBOARDING_CLIENT, "{c:#}");
        assert_eq!(c["ok"], true, "{c:#}");
    }
    // Both apps got tokens: the orchestrator for Resource Manager (which refuses the onboarding app's
    // tokens, so verification would have failed had they been used there), the onboarding app for scripts.
    let clients = token_clients(&w);
    assert!(
        clients.iter().any(|c| c == ORCHESTRATOR_CLIENT),
        "{clients:?}"
    );
    assert!(
        clients.iter().any(|c| c == ONBOARDING_CLIENT),
        "{clients:?}"
    );
    // No warning about a missing onboarding identity, and neither secret anywhere.
    assert!(
        !out.stderr.contains(NO_ONBOARDING_WARNING),
        "{}",
        out.stderr
    );
    let sent = commands(&w)
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    let calls = w
        .aws
        .calls()
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    for secret in [ONBOARDING_SECRET, STUB_SECRET] {
        assert!(!sent.contains(secret), "a secret was sent to instances");
        assert!(!calls.contains(secret), "a secret reached AWS");
        assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));
    }
}

#[test]
fn resource_manager_refuses_the_onboarding_identitys_tokens() {
    // The stub's own contract, on which the test above relies.
    let (w, _) = world(0);
    let token = w.azure.control(
        "POST",
        "/_stub/tokens",
        Some(&json!({"client_id": ONBOARDING_CLIENT})),
    );
    let token = token["access_token"].as_str().unwrap().to_string();
    let port = w.azure.endpoint.rsplit(':').next().unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!(
                "http://127.0.0.1:{port}/subscriptions/00000000-0000-0000-0000-000000000002/resourcegroups/aws_123456789012?api-version=2021-04-01"
            ),
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
}

#[test]
fn without_an_onboarding_identity_run_warns_once_and_still_onboards() {
    let (w, ids) = world(1);
    let out = w.run(&RUN_JSON, &format!("{ONE_REGION}\n{}", w.azure_section()));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(row(&out.json(), &ids[0])["status"], "onboarded");
    assert_eq!(
        out.stderr.matches(NO_ONBOARDING_WARNING).count(),
        1,
        "{}",
        out.stderr
    );
    for c in w.azure.connects() {
        assert_eq!(c["token_client_id"], ORCHESTRATOR_CLIENT, "{c:#}");
    }
    // validate says so too; plan (which sends no script) does not.
    let validate = w.run(
        &["validate"],
        &format!("{ONE_REGION}\n{}", w.azure_section()),
    );
    assert_eq!(validate.code, 0, "{}", validate.stderr);
    assert!(
        validate.stderr.contains(NO_ONBOARDING_WARNING),
        "{}",
        validate.stderr
    );
    let plan = w.run(&["plan"], &format!("{ONE_REGION}\n{}", w.azure_section()));
    assert!(
        !plan.stderr.contains(NO_ONBOARDING_WARNING),
        "{}",
        plan.stderr
    );
}

#[test]
fn a_persons_token_is_never_sent_run_refuses_azure_cli_without_an_onboarding_identity() {
    let (w, ids) = world(1);
    let dir = tempfile::tempdir().unwrap();
    let (path, person) = signed_in_az(&w.azure, dir.path());
    let azure_cli = w.azure_section_with("credential = \"azure-cli\"\n", false);
    let env = [("PATH", path.as_str())];

    for cmd in [RUN_JSON.to_vec(), vec!["validate"]] {
        let out = w.run_without_secret(&cmd, &format!("{ONE_REGION}\n{azure_cli}"), &env);
        assert_eq!(out.code, 2, "{cmd:?}: {}", out.stderr);
        for words in [
            "azure-cli",
            "[azure.onboarding]",
            "ARC_ONBOARD_ONBOARDING_CLIENT_SECRET",
        ] {
            assert!(
                out.stderr.contains(words),
                "{cmd:?}: {words:?} not in {}",
                out.stderr
            );
        }
        assert!(w.aws.mutating_calls().is_empty());
    }
    assert!(commands(&w).is_empty());
    // plan sends no script: it works with a person's token.
    let plan = w.run_without_secret(&["plan"], &format!("{ONE_REGION}\n{azure_cli}"), &env);
    assert_eq!(plan.code, 0, "{}", plan.stderr);

    // With an onboarding identity, run onboards and the person's token stays on this machine.
    let config = format!("{ONE_REGION}\n{azure_cli}{ONBOARDING_SECTION}");
    let env = [
        ("PATH", path.as_str()),
        ("ARC_ONBOARD_ONBOARDING_CLIENT_SECRET", ONBOARDING_SECRET),
    ];
    let out = w.run_without_secret(&RUN_JSON, &config, &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(row(&out.json(), &ids[0])["status"], "onboarded");
    let sent = commands(&w)
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    assert!(!sent.is_empty());
    assert!(
        !sent.contains(&person),
        "the person's token was sent to an instance"
    );
    for c in w.azure.connects() {
        assert_eq!(c["token_client_id"], ONBOARDING_CLIENT, "{c:#}");
    }
}

#[test]
fn a_missing_onboarding_secret_or_a_bad_section_stops_before_any_aws_call() {
    let (w, _) = world(1);
    let base = format!("{ONE_REGION}\n{}", w.azure_section());
    // The section is there, its secret is not.
    let out = w.run(&RUN_JSON, &format!("{base}{ONBOARDING_SECTION}"));
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("ARC_ONBOARD_ONBOARDING_CLIENT_SECRET"),
        "{}",
        out.stderr
    );
    assert!(w.aws.calls().is_empty(), "{:#?}", w.aws.calls());

    let cases = [
        (
            "client_secret = \"x\"\n",
            "azure.onboarding.client_secret",
            "ARC_ONBOARD_ONBOARDING_CLIENT_SECRET",
        ),
        (
            "credential = \"azure-cli\"\n",
            "azure.onboarding.credential",
            "replaces a person's token",
        ),
        (
            "tenant_id = \"nope\"\n",
            "azure.onboarding.tenant_id",
            "not a GUID",
        ),
        (
            "colour = \"blue\"\n",
            "azure.onboarding.colour",
            "unknown key",
        ),
    ];
    for (line, key, words) in cases {
        let config = format!("{base}{ONBOARDING_SECTION}{line}");
        for cmd in [vec!["validate"], vec!["plan"]] {
            let out = w.run(&cmd, &config);
            assert_eq!(out.code, 2, "{line}: {}", out.stderr);
            assert!(
                out.stderr.contains(key),
                "{line}: {key} not in {}",
                out.stderr
            );
            assert!(
                out.stderr.contains(words),
                "{line}: {words} not in {}",
                out.stderr
            );
        }
    }
    // client_id is required unless the identity is a system-assigned managed identity.
    let out = w.run(
        &["validate"],
        &format!("{base}\n[azure.onboarding]\ncredential = \"client-secret\"\n"),
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("azure.onboarding.client_id"),
        "{}",
        out.stderr
    );
    assert!(w.aws.calls().is_empty());
}

#[test]
fn validate_prints_the_onboarding_identity_without_its_secret() {
    let (w, _) = world(0);
    let config = format!("{ONE_REGION}\n{}{ONBOARDING_SECTION}", w.azure_section());
    let out = w.run_env(
        &["validate"],
        &config,
        &[("ARC_ONBOARD_ONBOARDING_CLIENT_SECRET", ONBOARDING_SECRET)],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let effective: toml::Table = out.stdout.parse().expect("validate prints TOML");
    let onboarding = &effective["azure"]["onboarding"];
    assert_eq!(onboarding["client_id"].as_str(), Some(ONBOARDING_CLIENT));
    assert_eq!(onboarding["credential"].as_str(), Some("client-secret"));
    assert_eq!(
        onboarding["tenant_id"].as_str(),
        Some("00000000-0000-0000-0000-000000000001")
    );
    assert!(!out.stdout.contains(ONBOARDING_SECRET) && !out.stderr.contains(ONBOARDING_SECRET));
    assert!(!out.stderr.contains(NO_ONBOARDING_WARNING));
}
