//! The real Linux install script on emulated instances: `run` against the AWS emulator in its
//! `execute_scripts` mode, where every `AWS-RunShellScript` command really runs with bash in a per-instance
//! sandbox (the instance's "disk"; the real `openssl`, a fake installer and a fake `azcmagent` whose
//! `connect` hands the access token it was given to the Azure stub, as the real agent's connect does). With
//! `[azure.onboarding]`, every machine must be connected with the onboarding identity's token (the stub
//! records whose token connected each machine, and refuses that identity's tokens on Resource Manager), and
//! no token the stub issued, nor either client secret, may appear in any command parameter, any invocation
//! output, any file left on an instance, any AWS request, or the binary's output.

mod common;

use std::fs;
use std::path::Path;

use common::{files_containing, files_under, fleet_with, row, World, RUN_JSON, STUB_SECRET};
use serde_json::json;

const ONE_REGION: &str = "[aws]\nregions = [\"us-east-1\"]\n";
const ORCHESTRATOR_CLIENT: &str = "00000000-0000-0000-0000-000000000003";
const ONBOARDING_CLIENT: &str = "00000000-0000-0000-0000-000000000004";
const ONBOARDING_SECRET: &str = "onboarding-secret-Rs5";
const ONBOARDING_SECTION: &str =
    "\n[azure.onboarding]\nclient_id = \"00000000-0000-0000-0000-000000000004\"\n";

/// A world whose emulator runs the Linux scripts, in sandboxes under a directory of this test's, with
/// `count` Online Linux instances.
fn executing_world(count: usize) -> (World, tempfile::TempDir, Vec<String>) {
    let w = World::start();
    w.azure.control(
        "POST",
        "/_stub/config",
        Some(&json!({"onboarding_client_secret": ONBOARDING_SECRET})),
    );
    let root = tempfile::tempdir().unwrap();
    w.aws.configure(json!({
        "execute_scripts": true,
        "sandbox_root": root.path().to_str().unwrap(),
    }));
    let ids = w
        .aws
        .seed(&fleet_with(json!([
            {"region": "us-east-1", "count": count, "instance_profile": "AppProfile"}
        ])))
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_string())
        .collect();
    (w, root, ids)
}

/// A tag value that bash, curl's form encoding and azcmagent's `--tags` syntax would each read differently
/// if any step quoted it wrongly (`'` and `,` are refused by the configuration, as azcmagent cannot carry
/// them).
const HOSTILE_TAG: &str = r#"it is "quoted" $(touch pwned) `touch pwned2` ; a=b \ $HOME & x%41"#;

/// The configuration: the stub's `[azure]` with a hostile tag, `extra` (e.g. `[azure.onboarding]`), and
/// the emulator's fake installer as the Linux installer.
fn config(w: &World, extra: &str) -> String {
    format!(
        "{ONE_REGION}\n{}tags = {{ Note = '{HOSTILE_TAG}' }}\n{extra}\n[onboarding]\ninstaller_url_linux = \"{}/_agent/azcmagent-linux\"\n",
        w.azure_section(),
        w.aws.endpoint
    )
}

/// Names what `needles[i]` is without printing it.
fn describe(i: usize, tokens: usize) -> String {
    if i < tokens {
        format!("issued token #{i}")
    } else {
        [
            "the orchestrator's client secret",
            "the onboarding client secret",
        ][i - tokens]
            .to_string()
    }
}

/// The needles of `text` (`(what, index)`), for a message that does not print them.
fn found_in(text: &str, needles: &[String], tokens: usize) -> Vec<String> {
    needles
        .iter()
        .enumerate()
        .filter(|(_, n)| text.contains(n.as_str()))
        .map(|(i, _)| describe(i, tokens))
        .collect()
}

#[test]
fn the_real_script_connects_every_machine_with_the_onboarding_identitys_token_and_leaves_no_secret()
{
    let (w, root, ids) = executing_world(3);
    let out = w.run_env(
        &RUN_JSON,
        &config(&w, ONBOARDING_SECTION),
        &[("ARC_ONBOARD_ONBOARDING_CLIENT_SECRET", ONBOARDING_SECRET)],
    );
    let report = out.json_of_success();
    for id in &ids {
        assert_eq!(row(&report, id)["status"], "onboarded", "{report:#}");
    }

    // Every machine is Connected, and was connected by the fake agent on its instance with a token of the
    // onboarding app (never the orchestrator's).
    let machines = w.azure.machines();
    assert_eq!(machines.len(), ids.len(), "{machines:#?}");
    for m in &machines {
        assert_eq!(m["properties"]["status"], "Connected", "{m:#}");
        assert_eq!(m["connected_with_client_id"], ONBOARDING_CLIENT, "{m:#}");
        let name = m["name"].as_str().unwrap();
        assert!(ids.iter().any(|id| id == name), "{name}");
        assert_eq!(m["tags"]["AwsInstanceId"], name, "{m:#}");
        // The hostile tag went through the script, the agent's arguments and the form verbatim.
        assert_eq!(m["tags"]["Note"], HOSTILE_TAG, "{m:#}");
    }
    let connects = w.azure.connects();
    assert_eq!(connects.len(), ids.len(), "{connects:#?}");
    for c in &connects {
        assert_eq!(
            c["script_form"], "agent",
            "not the fake agent's connect: {c:#}"
        );
        assert_eq!(c["token_client_id"], ONBOARDING_CLIENT, "{c:#}");
        assert_eq!(c["ok"], true, "{c:#}");
    }

    // Resource Manager refused nothing: no onboarding token was used there (it would answer 403).
    let refused: Vec<_> = w
        .azure
        .requests()
        .into_iter()
        .filter(|r| r["kind"] == "arm" && r["status"] == 403)
        .collect();
    assert!(refused.is_empty(), "{refused:#?}");

    // The needles: every token the stub issued (the orchestrator's and the onboarding app's) and both
    // client secrets.
    let tokens = w.azure.issued_tokens();
    assert!(
        tokens.len() >= 2,
        "expected tokens of both apps: {}",
        tokens.len()
    );
    let mut needles = tokens.clone();
    needles.extend([STUB_SECRET.to_string(), ONBOARDING_SECRET.to_string()]);
    let n = tokens.len();

    // Not in any SendCommand parameter, nor in any invocation output (what SSM's history keeps).
    // (What is scanned is the real thing: the install's parameters carry the sealed token, and the
    // outputs are the script's own, the key exchange's public keys and the install's result lines.)
    let commands = w.aws.sent_commands();
    assert_eq!(commands.len(), 2, "one batch: key exchange + install");
    let everything = serde_json::to_string(&commands).unwrap();
    for marker in [
        "ARC_SEALED_CONFIG='",
        "ARC_ONBOARD_KEY {",
        "connected as i-",
    ] {
        assert!(everything.contains(marker), "{marker} not in {everything}");
    }
    for c in &commands {
        let parameters = c["parameters"].to_string();
        let found = found_in(&parameters, &needles, n);
        assert!(
            found.is_empty(),
            "in the parameters of {}: {found:?}",
            c["command_id"]
        );
        for (id, output) in c["outputs"].as_object().unwrap() {
            assert_eq!(output["status"], "Success", "{id}: {output:#}");
            let text = format!("{}\n{}", output["stdout"], output["stderr"]);
            let found = found_in(&text, &needles, n);
            assert!(found.is_empty(), "in the output of {id}: {found:?}");
        }
    }
    // Nor in any AWS request the binary made.
    let calls = serde_json::to_string(&w.aws.calls()).unwrap();
    assert!(calls.contains("\"ssm:SendCommand\""), "{calls}");
    let found = found_in(&calls, &needles, n);
    assert!(found.is_empty(), "in an AWS request: {found:?}");
    // Nor in the binary's own output.
    let found = found_in(&format!("{}\n{}", out.stdout, out.stderr), &needles, n);
    assert!(found.is_empty(), "in the binary's output: {found:?}");

    // Nor in any file left on any instance. The sandboxes are the instances' disks: each holds the agent
    // the installer put there, the logs the script kept, the agent's connection, SSM's kept output.
    let sandboxes = w.aws.sandboxes();
    assert_eq!(sandboxes.len(), ids.len(), "{sandboxes:?}");
    for (id, dir) in &sandboxes {
        assert!(dir.starts_with(root.path()), "{}", dir.display());
        let files = files_under(dir);
        for expected in [
            "usr/bin/azcmagent",
            "var/log/arc-onboard/connect.log",
            "var/log/arc-onboard/installer.log",
            "var/opt/azcmagent/connection",
        ] {
            assert!(
                files.iter().any(|f| f == Path::new(expected)),
                "{id}: no {expected} in {files:?}"
            );
        }
        assert_eq!(
            fs::read_to_string(dir.join("var/opt/azcmagent/connection"))
                .unwrap()
                .lines()
                .next(),
            Some("Connected")
        );
        let outputs = files
            .iter()
            .filter(|f| f.file_name().is_some_and(|n| n == "stdout"))
            .count();
        assert_eq!(
            outputs, 2,
            "{id}: SSM keeps each command's stdout: {files:?}"
        );
        // What must not stay: SSM's copy of the script (it carries the sealed token), the private key.
        assert!(
            !files.iter().any(|f| f.ends_with("_script.sh")),
            "{id}: {files:?}"
        );
        assert!(
            !files
                .iter()
                .any(|f| f.starts_with("var/lib/arc-onboard/keys")),
            "{id}: a private key was left: {files:?}"
        );
        assert!(
            !files.iter().any(|f| f.to_string_lossy().contains("pwned")),
            "{id}: the hostile tag was executed: {files:?}"
        );
        let hits = files_containing(dir, &needles);
        let named: Vec<_> = hits
            .iter()
            .map(|(path, i)| format!("{}: {}", path.display(), describe(*i, n)))
            .collect();
        assert!(named.is_empty(), "{id}: {named:#?}");
    }
}

#[test]
fn without_an_onboarding_identity_the_stub_records_the_orchestrators_token() {
    // The control for the test above: the same run without [azure.onboarding] connects with the
    // orchestrator's token, and the stub's record says so (so the record can tell the two apart).
    let (w, _root, ids) = executing_world(1);
    let out = w.run(&RUN_JSON, &config(&w, ""));
    out.json_of_success();
    let machines = w.azure.machines();
    assert_eq!(machines.len(), 1, "{machines:#?}");
    assert_eq!(machines[0]["name"], ids[0].as_str());
    assert_eq!(machines[0]["connected_with_client_id"], ORCHESTRATOR_CLIENT);
    assert_eq!(machines[0]["properties"]["status"], "Connected");
}

#[test]
fn the_scan_finds_a_planted_needle_and_names_it_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("var/log/deep")).unwrap();
    fs::write(dir.path().join("clean.txt"), "nothing here").unwrap();
    fs::write(
        dir.path().join("var/log/deep/planted.log"),
        "prefix tok-PLANTED-42 suffix",
    )
    .unwrap();
    let needles = vec!["tok-PLANTED-42".to_string(), "absent".to_string()];
    let hits = files_containing(dir.path(), &needles);
    assert_eq!(
        hits,
        vec![(dir.path().join("var/log/deep/planted.log"), 0)],
        "{hits:?}"
    );
    assert_eq!(describe(0, 1), "issued token #0");
    assert_eq!(describe(1, 1), "the orchestrator's client secret");
    assert_eq!(
        found_in("a tok-PLANTED-42 b", &needles, 1),
        vec!["issued token #0"]
    );
    assert_eq!(
        files_under(dir.path()),
        vec![
            Path::new("clean.txt").to_path_buf(),
            Path::new("var/log/deep/planted.log").to_path_buf()
        ]
    );
}
