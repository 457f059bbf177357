//! Every `[azure] credential` kind end to end: `run` against the AWS emulator and the Azure stub onboards
//! with it, `validate` says where it comes from (never its content), and a wrong proof (expired or
//! keyless certificate, missing token file, wrong audience, federation disabled, `az` signed out, a
//! challenge file outside the agent's directory) exits 2 with the reason before any mutating AWS call.

mod common;

use std::path::Path;

use common::{fake_az, fleet_with, row, signed_in_az, Outcome, World, RUN_JSON};
use serde_json::{json, Value};

const ONE_REGION: &str = "[aws]\nregions = [\"us-east-1\"]\n";
const CLIENT: &str = "00000000-0000-0000-0000-000000000003";
const TENANT: &str = "00000000-0000-0000-0000-000000000001";
const SUBJECT: &str = "system:serviceaccount:arc-onboard:arc-onboard";
const ORCHESTRATOR_ROLE: &str = "arn:aws:iam::123456789012:role/ArcOnboardOrchestrator";

/// One Online Linux instance; returns its id with the call log cleared.
fn one_ready_instance(w: &World) -> String {
    let seeded = w.aws.seed(&fleet_with(json!([
        {"region": "us-east-1", "instance_profile": "AppProfile"}
    ])));
    w.aws.reset_calls();
    seeded[0]["instance_id"].as_str().unwrap().to_string()
}

/// `run` with `credential_lines` in `[azure]`; asserts exit 0 and the instance onboarded.
fn run_onboards(
    w: &World,
    id: &str,
    credential_lines: &str,
    client_id: bool,
    env: &[(&str, &str)],
) -> Value {
    let config = format!(
        "{ONE_REGION}\n{}",
        w.azure_section_with(credential_lines, client_id)
    );
    let out = w.run_without_secret(&RUN_JSON, &config, env);
    let report = out.json_of_success();
    assert_eq!(row(&report, id)["status"], "onboarded", "{report:#}");
    report
}

/// `cmd` with `credential_lines`; asserts exit 2, the reason in stderr, and no mutating AWS call.
fn refused(
    w: &World,
    cmd: &[&str],
    credential_lines: &str,
    env: &[(&str, &str)],
    reason: &[&str],
) -> Outcome {
    let config = format!(
        "{ONE_REGION}\n{}",
        w.azure_section_with(credential_lines, true)
    );
    let out = w.run_without_secret(cmd, &config, env);
    assert_eq!(
        out.code, 2,
        "{cmd:?}: stderr:\n{}\nstdout:\n{}",
        out.stderr, out.stdout
    );
    for r in reason {
        assert!(
            out.stderr.contains(r),
            "{cmd:?}: {r:?} not in:\n{}",
            out.stderr
        );
    }
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let mutating = w.aws.mutating_calls();
    assert!(
        mutating.is_empty(),
        "{cmd:?}: mutating calls: {mutating:#?}"
    );
    out
}

fn token_requests(w: &World) -> Vec<Value> {
    w.azure
        .requests()
        .into_iter()
        .filter(|r| r["kind"] == "token")
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

// ----- client-certificate ------------------------------------------------------------------------

#[test]
fn client_certificate_onboards_with_a_signed_assertion_and_never_sends_the_key() {
    let w = World::start();
    let id = one_ready_instance(&w);
    let cert = w.azure.control(
        "POST",
        "/_stub/certificates/generate",
        Some(&json!({"client_id": CLIENT})),
    );
    let dir = tempfile::tempdir().unwrap();
    let pem = write(dir.path(), "sp.pem", cert["pem"].as_str().unwrap());
    let lines =
        format!("credential = \"client-certificate\"\nclient_certificate_path = \"{pem}\"\n");
    let report = run_onboards(&w, &id, &lines, true, &[]);
    assert!(
        report["summary"]["api_calls"]["azure:Token"]
            .as_u64()
            .unwrap()
            >= 1
    );

    let tokens = token_requests(&w);
    assert!(!tokens.is_empty());
    for t in &tokens {
        assert_eq!(t["status"], 200, "{t}");
        assert_eq!(t["client_auth"], "certificate", "{t}");
        assert_eq!(t["assertion"]["iss"], CLIENT);
        assert_eq!(t["assertion"]["sub"], CLIENT);
        assert_eq!(t["assertion"]["x5t_s256"], cert["x5t_s256"]);
        assert_eq!(
            t["assertion"]["aud"],
            format!("{}/{TENANT}/oauth2/v2.0/token", w.azure.endpoint)
        );
    }
    // The script carried an access token, not the key or an assertion.
    let commands = w
        .aws
        .control("GET", "/_emulator/commands", None)
        .to_string();
    assert!(!commands.contains("PRIVATE KEY") && !commands.contains("client_assertion"));
    assert!(w.azure.connects()[0]["variables"]["token_valid"] == true);

    // validate names the file and the certificate, never the key.
    let config = format!("{ONE_REGION}\n{}", w.azure_section_with(&lines, true));
    let out = w.run_without_secret(&["validate"], &config, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("# credential: client-certificate from {pem}")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(cert["x5t_s256"].as_str().unwrap()),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("PRIVATE KEY") && !out.stderr.contains("PRIVATE KEY"));
}

#[test]
fn an_expired_keyless_unregistered_or_unreadable_certificate_is_refused_before_any_aws_call() {
    let w = World::start();
    one_ready_instance(&w);
    let dir = tempfile::tempdir().unwrap();
    let expired = w.azure.control(
        "POST",
        "/_stub/certificates/generate",
        Some(&json!({"not_before_offset_seconds": -7200, "not_after_offset_seconds": -3600})),
    );
    let pem = write(dir.path(), "expired.pem", expired["pem"].as_str().unwrap());
    let lines =
        format!("credential = \"client-certificate\"\nclient_certificate_path = \"{pem}\"\n");
    for cmd in [vec!["validate"], vec!["plan"], RUN_JSON.to_vec()] {
        refused(
            &w,
            &cmd,
            &lines,
            &[],
            &["azure.client_certificate_path", "expired on"],
        );
    }
    assert!(w.aws.calls().is_empty(), "{:#?}", w.aws.calls());
    assert!(token_requests(&w).is_empty(), "no assertion was even sent");

    // The key alone.
    let good = w
        .azure
        .control("POST", "/_stub/certificates/generate", Some(&json!({})));
    let text = good["pem"].as_str().unwrap();
    let key_only = &text[..text.find("-----BEGIN CERTIFICATE-----").unwrap()];
    let pem = write(dir.path(), "key.pem", key_only);
    let lines =
        format!("credential = \"client-certificate\"\nclient_certificate_path = \"{pem}\"\n");
    refused(
        &w,
        &RUN_JSON,
        &lines,
        &[],
        &["azure.client_certificate_path", "no certificate"],
    );

    // Unreadable (missing).
    let lines =
        "credential = \"client-certificate\"\nclient_certificate_path = \"/nonexistent/sp.pem\"\n";
    refused(
        &w,
        &["validate"],
        lines,
        &[],
        &[
            "azure.client_certificate_path",
            "/nonexistent/sp.pem",
            "cannot read",
        ],
    );

    // A valid certificate Entra does not know: Entra's refusal, still before any AWS call.
    let stranger = w.azure.control(
        "POST",
        "/_stub/certificates/generate",
        Some(&json!({"register": false})),
    );
    let pem = write(
        dir.path(),
        "stranger.pem",
        stranger["pem"].as_str().unwrap(),
    );
    let lines =
        format!("credential = \"client-certificate\"\nclient_certificate_path = \"{pem}\"\n");
    refused(
        &w,
        &RUN_JSON,
        &lines,
        &[],
        &["AADSTS700027", "invalid_client"],
    );
    assert!(w.aws.calls().is_empty(), "{:#?}", w.aws.calls());
}

// ----- workload-identity -------------------------------------------------------------------------

/// A federated credential for the stub's own issuer and a service account token for `audience`.
fn kubernetes_token(w: &World, audience: &str) -> String {
    let minted = w.azure.control(
        "POST",
        "/_stub/oidc/token",
        Some(&json!({"subject": SUBJECT, "audience": audience})),
    );
    w.azure.control(
        "POST",
        "/_stub/federated-credentials",
        Some(&json!({"client_id": CLIENT, "issuer": minted["issuer"], "subject": SUBJECT})),
    );
    minted["token"].as_str().unwrap().to_string()
}

#[test]
fn workload_identity_onboards_with_the_projected_token_and_honours_the_webhook_variables() {
    let w = World::start();
    let id = one_ready_instance(&w);
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "azure-identity-token",
        &kubernetes_token(&w, "api://AzureADTokenExchange"),
    );
    // As the workload identity webhook injects them: file, client id and tenant from the environment.
    let section = w
        .azure_section_with("credential = \"workload-identity\"\n", false)
        .replace(&format!("tenant_id = \"{TENANT}\"\n"), "");
    let config = format!("{ONE_REGION}\n{section}");
    let env = [
        ("AZURE_FEDERATED_TOKEN_FILE", file.as_str()),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_TENANT_ID", TENANT),
    ];
    let out = w.run_without_secret(&RUN_JSON, &config, &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(row(&out.json(), &id)["status"], "onboarded");
    let tokens = token_requests(&w);
    assert!(
        tokens
            .iter()
            .all(|t| t["client_auth"] == "federated" && t["status"] == 200),
        "{tokens:#?}"
    );
    assert_eq!(tokens[0]["assertion"]["sub"], SUBJECT);

    let out = w.run_without_secret(&["validate"], &config, &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for expected in [
        format!("federated token file {file} (from AZURE_FEDERATED_TOKEN_FILE)"),
        "# note: azure.client_id comes from AZURE_CLIENT_ID".to_string(),
        "# note: azure.tenant_id comes from AZURE_TENANT_ID".to_string(),
        "credential = \"workload-identity\"".to_string(),
    ] {
        assert!(
            out.stdout.contains(&expected),
            "{expected:?} not in:\n{}",
            out.stdout
        );
    }
    assert!(!out
        .stdout
        .contains(&std::fs::read_to_string(&file).unwrap()));
}

#[test]
fn workload_identity_without_its_token_file_or_with_the_wrong_audience_stops_before_aws() {
    let w = World::start();
    one_ready_instance(&w);
    let lines =
        "credential = \"workload-identity\"\nfederated_token_file = \"/nonexistent/token\"\n";
    for cmd in [vec!["validate"], vec!["plan"], RUN_JSON.to_vec()] {
        refused(
            &w,
            &cmd,
            lines,
            &[],
            &["azure.federated_token_file", "/nonexistent/token"],
        );
    }
    assert!(w.aws.calls().is_empty());
    // Neither the key nor the variable.
    refused(
        &w,
        &["validate"],
        "credential = \"workload-identity\"\n",
        &[],
        &["azure.federated_token_file", "AZURE_FEDERATED_TOKEN_FILE"],
    );

    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "token",
        &kubernetes_token(&w, "api://SomethingElse"),
    );
    let lines = format!("credential = \"workload-identity\"\nfederated_token_file = \"{file}\"\n");
    refused(
        &w,
        &RUN_JSON,
        &lines,
        &[],
        &["AADSTS700212", "api://SomethingElse"],
    );
    assert!(w.aws.calls().is_empty());
}

// ----- aws-federation ----------------------------------------------------------------------------

/// The orchestrator role's temporary credentials, as the binary's AWS environment.
fn orchestrator_env(w: &World) -> Vec<(String, String)> {
    let creds = w.aws.control(
        "POST",
        "/_emulator/assume-role",
        Some(&json!({"role_arn": ORCHESTRATOR_ROLE})),
    );
    vec![
        (
            "AWS_ACCESS_KEY_ID".into(),
            creds["access_key_id"].as_str().unwrap().into(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            creds["secret_access_key"].as_str().unwrap().into(),
        ),
        (
            "AWS_SESSION_TOKEN".into(),
            creds["session_token"].as_str().unwrap().into(),
        ),
    ]
}

fn as_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[test]
fn aws_federation_presents_a_jwt_from_sts_and_no_azure_secret_exists() {
    let w = World::start();
    let id = one_ready_instance(&w);
    w.aws.control(
        "POST",
        "/_emulator/federation",
        Some(&json!({"enabled": true})),
    );
    w.azure.control(
        "POST",
        "/_stub/federated-credentials",
        Some(&json!({
            "client_id": CLIENT,
            "issuer": format!("{}/oidc", w.aws.endpoint),
            "subject": ORCHESTRATOR_ROLE,
        })),
    );
    let env = orchestrator_env(&w);
    let report = run_onboards(
        &w,
        &id,
        "credential = \"aws-federation\"\n",
        true,
        &as_refs(&env),
    );
    assert!(
        report["summary"]["api_calls"]["sts:GetWebIdentityToken"]
            .as_u64()
            .unwrap()
            >= 1
    );

    let calls = w.aws.calls();
    let first = &calls[0];
    assert_eq!(
        first["operation"], "sts:GetWebIdentityToken",
        "the proof comes first: {calls:#?}"
    );
    assert_eq!(
        first["params"]["Audience.member.1"],
        "api://AzureADTokenExchange"
    );
    assert_eq!(first["params"]["SigningAlgorithm"], "RS256");
    let duration: u64 = first["params"]["DurationSeconds"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((60..=300).contains(&duration), "short-lived: {duration}");
    let tokens = token_requests(&w);
    assert!(
        tokens
            .iter()
            .all(|t| t["client_auth"] == "federated" && t["status"] == 200),
        "{tokens:#?}"
    );
    assert_eq!(tokens[0]["assertion"]["sub"], ORCHESTRATOR_ROLE);

    // The example policies allow what run made, and what plan makes with this credential.
    let run_allows = common::allowed_actions("scripts/iam/run-policy.json");
    for op in w.aws.counts().keys() {
        assert!(run_allows.contains(op), "run-policy.json lacks {op}");
    }
    w.aws.reset_calls();
    let config = format!(
        "{ONE_REGION}\n{}",
        w.azure_section_with("credential = \"aws-federation\"\n", true)
    );
    let plan = w.run_without_secret(&["plan", "--output", "json"], &config, &as_refs(&env));
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let plan_allows = common::allowed_actions("scripts/iam/plan-policy.json");
    let counts = w.aws.counts();
    assert!(
        counts.contains_key("sts:GetWebIdentityToken"),
        "plan checks Azure too: {counts:?}"
    );
    for op in counts.keys() {
        assert!(plan_allows.contains(op), "plan-policy.json lacks {op}");
    }
}

#[test]
fn a_refused_get_web_identity_token_or_a_wrong_audience_stops_run_with_exit_2() {
    let w = World::start();
    one_ready_instance(&w);
    let env = orchestrator_env(&w);
    // Outbound federation not enabled in the account.
    let out = refused(
        &w,
        &RUN_JSON,
        "credential = \"aws-federation\"\n",
        &as_refs(&env),
        &[
            "OutboundWebIdentityFederationDisabledException",
            "nothing was changed",
        ],
    );
    assert!(out.stdout.is_empty());
    let ops: Vec<Value> = w
        .aws
        .calls()
        .iter()
        .map(|c| c["operation"].clone())
        .collect();
    assert_eq!(
        ops,
        [json!("sts:GetWebIdentityToken")],
        "nothing but the proof was asked"
    );

    // Access denied by IAM (injected), then an audience Entra has no federated credential for.
    w.aws.reset_calls();
    w.aws.faults(
        json!([{"operation": "sts:GetWebIdentityToken", "code": "AccessDenied", "max": 1}]),
    );
    refused(
        &w,
        &RUN_JSON,
        "credential = \"aws-federation\"\n",
        &as_refs(&env),
        &["AccessDenied"],
    );
    w.aws.faults(json!([]));
    w.aws.control(
        "POST",
        "/_emulator/federation",
        Some(&json!({"enabled": true})),
    );
    w.azure.control(
        "POST",
        "/_stub/federated-credentials",
        Some(&json!({"client_id": CLIENT, "issuer": format!("{}/oidc", w.aws.endpoint), "subject": ORCHESTRATOR_ROLE})),
    );
    refused(
        &w,
        &RUN_JSON,
        "credential = \"aws-federation\"\naws_federation_audience = \"api://NotAzure\"\n",
        &as_refs(&env),
        &["AADSTS700212", "api://NotAzure"],
    );
}

// ----- managed-identity --------------------------------------------------------------------------

#[test]
fn managed_identity_on_an_azure_vm_asks_imds_with_the_metadata_header() {
    let w = World::start();
    let id = one_ready_instance(&w);
    let env = [(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        w.azure.endpoint.as_str(),
    )];
    // System-assigned: no client_id. The first token is short: the script gets a fresh one.
    w.azure.control(
        "POST",
        "/_stub/config",
        Some(&json!({"token_lifetime_sequence": [600]})),
    );
    let report = run_onboards(&w, &id, "credential = \"managed-identity\"\n", false, &env);
    assert_eq!(
        report["summary"]["api_calls"]["azure:ManagedIdentityToken"],
        2
    );
    let remaining = w.azure.connects()[0]["token_remaining_seconds"]
        .as_f64()
        .unwrap();
    assert!(
        remaining > 40.0 * 60.0,
        "the script's token had {remaining} s left"
    );
    let mi: Vec<Value> = w
        .azure
        .requests()
        .into_iter()
        .filter(|r| r["kind"] == "managed-identity")
        .collect();
    assert!(
        mi.iter()
            .all(|r| r["status"] == 200 && r["mode"] == "imds" && r["client_id"].is_null()),
        "{mi:#?}"
    );
    assert!(
        token_requests(&w).is_empty(),
        "no Entra request with a managed identity"
    );

    // User-assigned: client_id goes along; an unknown one is refused by the endpoint (exit 2).
    w.azure.control(
        "POST",
        "/_stub/config",
        Some(&json!({"mi_client_ids": [CLIENT]})),
    );
    w.aws.reset_calls();
    let id2 = one_ready_instance(&w);
    run_onboards(&w, &id2, "credential = \"managed-identity\"\n", true, &env);
    w.azure
        .control("POST", "/_stub/config", Some(&json!({"mi_client_ids": []})));
    w.aws.reset_calls();
    refused(
        &w,
        &RUN_JSON,
        "credential = \"managed-identity\"\n",
        &env,
        &["Identity not found"],
    );
}

#[test]
fn managed_identity_on_an_arc_server_answers_the_challenge_file_from_the_agents_directory_only() {
    let w = World::start();
    let id = one_ready_instance(&w);
    let tokens_dir = tempfile::tempdir().unwrap();
    let dir = tokens_dir.path().to_str().unwrap();
    w.azure.control(
        "POST",
        "/_stub/config",
        Some(&json!({"arc_token_dir": dir})),
    );
    let endpoint = format!("{}/arc/metadata/identity/oauth2/token", w.azure.endpoint);
    let env = [
        ("IDENTITY_ENDPOINT", endpoint.as_str()),
        ("IMDS_ENDPOINT", w.azure.endpoint.as_str()),
        ("ARC_ONBOARD_HIMDS_TOKEN_DIR", dir),
    ];
    run_onboards(&w, &id, "credential = \"managed-identity\"\n", false, &env);
    let statuses: Vec<Value> = w
        .azure
        .requests()
        .into_iter()
        .filter(|r| r["kind"] == "managed-identity")
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(
        statuses[..2],
        [json!(401), json!(200)],
        "challenge, then token"
    );

    let config = format!(
        "{ONE_REGION}\n{}",
        w.azure_section_with("credential = \"managed-identity\"\n", false)
    );
    let out = w.run_without_secret(&["validate"], &config, &env);
    assert!(
        out.stdout.contains(&format!(
            "Azure Arc agent endpoint {endpoint} (from IDENTITY_ENDPOINT)"
        )),
        "{}",
        out.stdout
    );

    // The agent (or something posing as it) names a file elsewhere: never read.
    let elsewhere = tempfile::tempdir().unwrap();
    w.azure.control(
        "POST",
        "/_stub/config",
        Some(&json!({"arc_token_dir": elsewhere.path().to_str().unwrap()})),
    );
    w.aws.reset_calls();
    let out = w.run_without_secret(&RUN_JSON, &config, &env);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("refusing to read it"), "{}", out.stderr);
    assert!(w.aws.mutating_calls().is_empty());
}

// ----- azure-cli ---------------------------------------------------------------------------------

const ONBOARDING_SECRET: &str = "onboarding-secret-Kp7";
/// `azure-cli` for the orchestrator, and the stub's onboarding app for the scripts.
const AZURE_CLI_WITH_ONBOARDING: &str = "credential = \"azure-cli\"\n\n[azure.onboarding]\nclient_id = \"00000000-0000-0000-0000-000000000004\"\n";

#[test]
fn azure_cli_uses_the_signed_in_users_token_for_the_tenant() {
    let w = World::start();
    let id = one_ready_instance(&w);
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = signed_in_az(&w.azure, dir.path());
    // A person's token never goes to instances: run needs an onboarding identity for the scripts
    // (tests/onboarding_identity.rs checks the refusal without one).
    w.azure.control(
        "POST",
        "/_stub/config",
        Some(&json!({"onboarding_client_secret": ONBOARDING_SECRET})),
    );
    run_onboards(
        &w,
        &id,
        AZURE_CLI_WITH_ONBOARDING,
        false,
        &[
            ("PATH", path.as_str()),
            ("ARC_ONBOARD_ONBOARDING_CLIENT_SECRET", ONBOARDING_SECRET),
        ],
    );
    let args = std::fs::read_to_string(dir.path().join("az-args")).unwrap();
    let first = args.lines().next().unwrap();
    assert!(first.starts_with("account get-access-token"), "{first}");
    assert!(
        first.contains(&format!("--resource {}", w.azure.endpoint)),
        "{first}"
    );
    assert!(first.contains(&format!("--tenant {TENANT}")), "{first}");
    // The orchestrator's tokens came from az; Entra was asked only for the onboarding identity's.
    let asked: Vec<Value> = token_requests(&w)
        .iter()
        .map(|r| r["client_id"].clone())
        .collect();
    assert!(!asked.is_empty());
    assert!(
        asked
            .iter()
            .all(|c| c == "00000000-0000-0000-0000-000000000004"),
        "{asked:?}"
    );

    // Signed out: az's own words, exit 2, nothing changed.
    let out_dir = tempfile::tempdir().unwrap();
    let path = fake_az(
        out_dir.path(),
        "ERROR: Please run 'az login' to setup account.",
        1,
    );
    w.aws.reset_calls();
    refused(
        &w,
        &RUN_JSON,
        AZURE_CLI_WITH_ONBOARDING,
        &[
            ("PATH", path.as_str()),
            ("ARC_ONBOARD_ONBOARDING_CLIENT_SECRET", ONBOARDING_SECRET),
        ],
        &["az login", "azure_cli"],
    );
    // No az at all: caught before anything else.
    let empty = tempfile::tempdir().unwrap();
    refused(
        &w,
        &["validate"],
        "credential = \"azure-cli\"\n",
        &[("PATH", empty.path().to_str().unwrap())],
        &["`az` is not on PATH"],
    );
}

#[test]
fn keys_of_another_credential_and_unknown_kinds_are_config_errors() {
    let w = World::start();
    for (lines, expected) in [
        (
            "credential = \"client-secret\"\nclient_certificate_path = \"/x.pem\"\n",
            "azure.client_certificate_path: is used only with credential = \"client-certificate\"",
        ),
        (
            "credential = \"magic\"\n",
            "azure.credential: must be one of client-secret, client-certificate",
        ),
        (
            "credential = \"client-certificate\"\n",
            "azure.client_certificate_path: is required",
        ),
        (
            "credential = \"aws-federation\"\naws_federation_audience = \"\"\n",
            "azure.aws_federation_audience",
        ),
    ] {
        refused(&w, &["validate"], lines, &[], &[expected]);
    }
    assert!(w.aws.calls().is_empty());
}
