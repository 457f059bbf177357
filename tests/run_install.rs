//! Full `arc-onboard run` against the AWS emulator and the Azure stub: install through SSM, verification in
//! Azure, failures mapped to reasons, batching, proxy, secrets, and installs in flight.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use common::{fleet_with, row, script_of, World, STUB_SECRET};
use serde_json::{json, Value};

const TWO_REGIONS: &str = "[aws]\nregions = [\"us-east-1\", \"eu-west-1\"]\n";
const ONE_REGION: &str = "[aws]\nregions = [\"us-east-1\"]\n";

fn ids(w: &World, fleet: &Value) -> Vec<String> {
    let ids = w
        .aws
        .seed(fleet)
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_string())
        .collect();
    w.aws.reset_calls();
    ids
}

/// #0 linux ready, #1 windows without profile, #2 linux with a role lacking the policy, #3 windows ready
/// (eu-west-1), #4 linux without profile (eu-west-1), #5 stopped.
fn mixed_fleet() -> Value {
    fleet_with(json!([
        {"region": "us-east-1", "platform": "linux", "instance_profile": "AppProfile"},
        {"region": "us-east-1", "platform": "windows"},
        {"region": "us-east-1", "platform": "linux", "instance_profile": "LegacyProfile"},
        {"region": "eu-west-1", "platform": "windows", "instance_profile": "AppProfile"},
        {"region": "eu-west-1", "platform": "linux"},
        {"region": "eu-west-1", "platform": "linux", "state": "stopped"}
    ]))
}

/// `run --output json` with short bounds; `extra` flags replace the defaults of the same name.
/// `count` instances in us-east-1 with a working SSM profile: Online at once.
fn ready_fleet(count: usize) -> Value {
    fleet_with(json!([{"region": "us-east-1", "count": count, "instance_profile": "AppProfile"}]))
}

fn run(w: &World, config: &str, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["run", "--output", "json"];
    for (flag, default) in [("--wait-for-ssm", "30s"), ("--verify-timeout", "20s")] {
        if !extra.contains(&flag) {
            args.extend([flag, default]);
        }
    }
    args.extend_from_slice(extra);
    let out = w.run(&args, &w.config(config));
    assert!(
        out.code == 0 || out.code == 1,
        "exit {}: {}",
        out.code,
        out.stderr
    );
    (out.code, out.json(), out.stderr)
}

/// Every command sent, key exchanges and installs.
fn all_commands(w: &World) -> Vec<Value> {
    w.aws.sent_commands()
}

/// Whether a command is a batch's key exchange (its first command).
fn is_key_exchange(command: &Value) -> bool {
    let script = script_of(command);
    script.contains("\nARC_MODE='key-exchange'\n")
        || script.contains("\n$ARC_MODE = 'key-exchange'\n")
}

/// The install commands sent (the second command of each batch).
fn commands(w: &World) -> Vec<Value> {
    all_commands(w)
        .into_iter()
        .filter(|c| !is_key_exchange(c))
        .collect()
}

/// The key exchanges sent.
fn exchanges(w: &World) -> Vec<Value> {
    all_commands(w)
        .into_iter()
        .filter(is_key_exchange)
        .collect()
}

#[test]
fn a_mixed_fleet_goes_from_nothing_to_onboarded_and_a_second_run_sends_nothing() {
    let w = World::start();
    let id = ids(&w, &mixed_fleet());
    let (code, report, _) = run(&w, TWO_REGIONS, &[]);
    assert_eq!(code, 0, "{report:#}");
    for (n, i) in id.iter().enumerate().take(5) {
        let r = row(&report, i);
        assert_eq!(r["status"], "onboarded", "#{n}: {r}");
        assert!(
            r["detail"].as_str().unwrap().contains("is Connected"),
            "{r}"
        );
    }
    assert_eq!(row(&report, &id[5])["status"], "not-running");

    // One command per region and platform, each to exactly its instances, with the right document.
    let sent = commands(&w);
    let mut by_doc: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for c in &sent {
        let mut targets: Vec<String> = c["instance_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().to_string())
            .collect();
        targets.sort();
        by_doc.insert(
            (
                c["region"].as_str().unwrap().into(),
                c["document_name"].as_str().unwrap().into(),
            ),
            targets,
        );
        assert_eq!(c["max_errors"], "100%");
        assert!(c["comment"]
            .as_str()
            .unwrap()
            .starts_with("arc-onboard run "));
        assert_eq!(c["parameters"]["executionTimeout"], json!(["1800"]));
    }
    let mut us_linux = vec![id[0].clone(), id[2].clone()];
    us_linux.sort();
    assert_eq!(
        by_doc[&("us-east-1".into(), "AWS-RunShellScript".into())],
        us_linux
    );
    assert_eq!(
        by_doc[&("us-east-1".into(), "AWS-RunPowerShellScript".into())],
        vec![id[1].clone()]
    );
    assert_eq!(
        by_doc[&("eu-west-1".into(), "AWS-RunPowerShellScript".into())],
        vec![id[3].clone()]
    );
    assert_eq!(
        by_doc[&("eu-west-1".into(), "AWS-RunShellScript".into())],
        vec![id[4].clone()]
    );
    assert_eq!(sent.len(), 4);
    // Each install went out after a key exchange to the same instances, in the same document.
    let keyed: Vec<(Value, Value, Value)> = exchanges(&w)
        .iter()
        .map(|x| {
            (
                x["region"].clone(),
                x["document_name"].clone(),
                x["instance_ids"].clone(),
            )
        })
        .collect();
    assert_eq!(keyed.len(), 4);
    for c in &sent {
        let key = (
            c["region"].clone(),
            c["document_name"].clone(),
            c["instance_ids"].clone(),
        );
        assert!(keyed.contains(&key), "{c}");
    }

    // Azure: the group was created, machines are named after the instances and tagged.
    let machines = w.azure.machines();
    assert_eq!(machines.len(), 5, "{machines:#?}");
    let m = machines
        .iter()
        .find(|m| m["name"] == id[3].as_str())
        .unwrap();
    assert_eq!(m["tags"]["AwsRegion"], "eu-west-1");
    assert_eq!(m["tags"]["AwsAccountId"], "123456789012");
    assert_eq!(
        report["accounts"][0]["actions"],
        json!(["create-ssm-role", "create-resource-group"])
    );

    // Second run: nothing to send, everything already onboarded.
    w.aws.reset_calls();
    let (code, report, _) = run(&w, TWO_REGIONS, &[]);
    assert_eq!(code, 0);
    for (n, i) in id.iter().enumerate().take(5) {
        assert_eq!(row(&report, i)["status"], "already-onboarded", "#{n}");
    }
    assert_eq!(all_commands(&w).len(), 8, "no new command");
    assert!(
        w.aws.mutating_calls().is_empty(),
        "{:#?}",
        w.aws.mutating_calls()
    );
}

#[test]
fn scripted_failures_end_failed_with_mapped_reasons_while_the_rest_succeed() {
    let w = World::start();
    let id = ids(&w, &ready_fleet(5));
    w.aws.control("POST", "/_emulator/outcomes", Some(&json!({
        &id[0]: {"status": "Failed", "exit_code": 41, "stdout": "AZCM0041: The credentials supplied are invalid\nARC_ONBOARD_RESULT {\"outcome\":\"failed\",\"exit_code\":41,\"step\":\"connect\",\"code\":\"AZCM0041\",\"message\":\"azcmagent connect exited with 41: AZCM0041: The credentials supplied are invalid\"}"},
        &id[1]: {"status": "TimedOut"},
        &id[2]: {"status": "Undeliverable"},
        // The agent's own exit code 4 ("cannot open its log file") equals the script's download code.
        &id[3]: {"status": "Failed", "exit_code": 4, "stdout": "ARC_ONBOARD_RESULT {\"outcome\":\"failed\",\"exit_code\":4,\"step\":\"connect\",\"code\":\"exit-4\",\"message\":\"azcmagent connect exited with 4\"}"}
    })));
    let (code, report, _) = run(&w, ONE_REGION, &[]);
    assert_eq!(code, 1);
    let detail = |n: usize| row(&report, &id[n])["detail"].as_str().unwrap().to_string();
    let failure = |n: usize| row(&report, &id[n])["failure"].clone();
    assert_eq!(row(&report, &id[0])["status"], "failed");
    assert_eq!(failure(0)["step"], "connect");
    assert_eq!(failure(0)["code"], "AZCM0041");
    assert_eq!(failure(0)["exit_code"], 41);
    assert!(
        failure(0)["reason"]
            .as_str()
            .unwrap()
            .starts_with("the credentials were rejected"),
        "mapped reason: {}",
        failure(0)
    );
    assert!(detail(0).contains("AZCM0041"), "output tail: {}", detail(0));
    assert_eq!(
        failure(1),
        json!({"step": "install", "code": "execution-timed-out", "reason": "the install did not finish within --command-timeout 30 minutes"})
    );
    assert_eq!(failure(2)["step"], "ssm");
    assert_eq!(failure(2)["code"], "undeliverable");
    assert!(failure(2).get("exit_code").is_none(), "{}", failure(2));
    assert_eq!(failure(3)["step"], "connect");
    assert_eq!(failure(3)["exit_code"], 4);
    let reason = failure(3)["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("log file") && !reason.contains("download"),
        "{reason}"
    );
    assert_eq!(row(&report, &id[4])["status"], "onboarded");
    assert!(row(&report, &id[4]).get("failure").is_none());
    assert_eq!(
        report["summary"]["by_status"],
        json!({"onboarded": 1, "failed": 4})
    );
    // The table says the same in words.
    let table = w
        .run(&["run", "--wait-for-ssm", "0s"], &w.config(ONE_REGION))
        .stdout;
    assert!(
        table.contains("connect failed (AZCM0041, exit code 41)"),
        "{table}"
    );
    assert!(table.contains("failures: connect/AZCM0041=1"), "{table}");
}

#[test]
fn an_agent_connected_to_another_resource_is_reported_connected_elsewhere_and_left_alone() {
    let w = World::start();
    let id = ids(&w, &ready_fleet(2));
    let other = format!(
        "/subscriptions/00000000-0000-0000-0000-000000000002/resourceGroups/defender-rg/providers/Microsoft.HybridCompute/machines/{}",
        id[0]
    );
    let line = json!({"outcome": "connected-elsewhere", "exit_code": 0, "step": "check",
        "code": "connected-elsewhere", "message": format!("connected to another Arc resource: {other}; left alone"),
        "resource_id": other});
    w.aws.control("POST", "/_emulator/outcomes", Some(&json!({
        &id[0]: {"status": "Success", "stdout": format!("arc-onboard: reading the instance id\nARC_ONBOARD_RESULT {line}")}
    })));
    let (code, report, _) = run(&w, ONE_REGION, &[]);
    assert_eq!(code, 0, "connected elsewhere is not a failure: {report:#}");
    let r = row(&report, &id[0]);
    assert_eq!(r["status"], "connected-elsewhere");
    assert_eq!(r["arc_resource_id"], other.as_str());
    assert!(r.get("failure").is_none());
    assert_eq!(row(&report, &id[1])["status"], "onboarded");
    assert_eq!(report["summary"]["by_status"]["connected-elsewhere"], 1);
    // Nothing was created for it in our group.
    let names: Vec<String> = w
        .azure
        .machines()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, [id[1].clone()]);
    let table = w.run(&["plan"], &w.config(ONE_REGION)).stdout;
    assert!(table.contains(&id[0]), "{table}");
}

#[test]
fn the_scripts_token_outlives_delivery_plus_execution_timeout() {
    let w = World::start();
    let id = ids(&w, &ready_fleet(1));
    // The first token (taken at the start of the run and cached) lives 10 minutes, later ones an hour.
    // Scripts may wait 10 minutes for delivery and run 30: the cached one must not be embedded.
    w.azure.control(
        "POST",
        "/_stub/config",
        Some(&json!({"token_lifetime_sequence": [600]})),
    );
    let (code, report, _) = run(&w, ONE_REGION, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(row(&report, &id[0])["status"], "onboarded");
    let connects = w.azure.connects();
    assert_eq!(connects.len(), 1);
    let remaining = connects[0]["token_remaining_seconds"].as_f64().unwrap();
    assert!(
        remaining > (10 + 30) as f64 * 60.0,
        "the script carried a token with {remaining} s left"
    );
    assert_eq!(report["summary"]["api_calls"]["azure:Token"], 2);

    // When Entra itself issues short tokens, each batch gets a fresh one and the run says so.
    w.azure.control(
        "POST",
        "/_stub/config",
        Some(&json!({"token_lifetime_seconds": 900})),
    );
    let id2 = ids(&w, &ready_fleet(1));
    let (code, _, stderr) = run(&w, ONE_REGION, &[]);
    assert_eq!(code, 0);
    assert!(stderr.contains("Entra issues tokens shorter"), "{stderr}");
    let last = w.azure.connects().last().cloned().unwrap();
    assert_eq!(last["instance_id"], id2[0].as_str());
    assert!(
        last["token_remaining_seconds"].as_f64().unwrap() > 850.0,
        "{last}"
    );
}

#[test]
fn tags_with_spaces_quotes_and_equals_reach_azure_as_given() {
    let w = World::start();
    let id = ids(&w, &ready_fleet(1));
    let config = format!(
        "{ONE_REGION}\n{}tags = {{ Note = 'say \"hi\" a=b c', Owner = \"Shared Infrastructure Services\" }}\n",
        w.azure_section()
    );
    let out = w.aws.run_env(
        &[
            "run",
            "--output",
            "json",
            "--wait-for-ssm",
            "30s",
            "--verify-timeout",
            "20s",
        ],
        &config,
        &[("ARC_ONBOARD_CLIENT_SECRET", common::STUB_SECRET)],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let machine = w
        .azure
        .machines()
        .into_iter()
        .find(|m| m["name"] == id[0].as_str())
        .unwrap();
    assert_eq!(machine["tags"]["Note"], "say \"hi\" a=b c");
    assert_eq!(machine["tags"]["Owner"], "Shared Infrastructure Services");
    assert_eq!(machine["tags"]["AwsRegion"], "us-east-1");
}

#[test]
fn azure_not_showing_the_machine_connected_fails_with_azures_words() {
    let w = World::start();
    let id = ids(&w, &ready_fleet(2));
    w.azure.control("POST", "/_stub/config", Some(&json!({"machine_status": {
        &id[0]: {"status": "Error", "code": "AZCM0062", "message": "connection to the Azure service failed"}
    }})));
    let (code, report, _) = run(&w, ONE_REGION, &["--verify-timeout", "3s"]);
    assert_eq!(code, 1);
    let failed = row(&report, &id[0]);
    assert_eq!(failed["status"], "failed");
    let d = failed["detail"].as_str().unwrap();
    assert!(d.contains("Error") && d.contains("AZCM0062"), "{d}");
    assert_eq!(row(&report, &id[1])["status"], "onboarded");
}

#[test]
fn proxy_mode_puts_the_proxy_in_linux_and_windows_scripts() {
    let w = World::start();
    ids(
        &w,
        &fleet_with(json!([
            {"region": "us-east-1", "platform": "linux", "instance_profile": "AppProfile"},
            {"region": "us-east-1", "platform": "windows", "instance_profile": "AppProfile"}
        ])),
    );
    let config = format!("{ONE_REGION}[onboarding]\nconnectivity = \"proxy\"\nproxy_url = \"http://10.0.0.5:3128\"\n");
    let (code, _, _) = run(&w, &config, &[]);
    assert_eq!(code, 0);
    let sent = commands(&w);
    assert_eq!(sent.len(), 2);
    for c in &sent {
        let script = script_of(c);
        match c["document_name"].as_str().unwrap() {
            "AWS-RunShellScript" => assert!(
                script.contains("ARC_PROXY_URL='http://10.0.0.5:3128'"),
                "{script}"
            ),
            _ => assert!(
                script.contains("$ARC_PROXY_URL = 'http://10.0.0.5:3128'"),
                "{script}"
            ),
        }
    }
}

#[test]
fn one_hundred_thirty_online_instances_take_three_send_commands() {
    let w = World::start();
    let id = ids(&w, &ready_fleet(130));
    let (code, report, _) = run(&w, ONE_REGION, &[]);
    assert_eq!(code, 0);
    // Three batches, two commands each: the key exchange, then the install.
    assert_eq!(w.aws.counts()["ssm:SendCommand"], 6);
    let mut sizes: Vec<usize> = commands(&w)
        .iter()
        .map(|c| c["instance_ids"].as_array().unwrap().len())
        .collect();
    sizes.sort();
    assert_eq!(sizes, [30, 50, 50]);
    assert_eq!(report["summary"]["by_status"]["onboarded"], 130);
    assert_eq!(id.len(), 130);
    // Tracking is command-level: a handful of ListCommands, one ListCommandInvocations page per command
    // (three key exchanges, three installs).
    let counts = w.aws.counts();
    let ssm: Vec<String> = counts
        .iter()
        .filter(|(op, _)| op.starts_with("ssm:"))
        .map(|(op, n)| format!("{op}={n}"))
        .collect();
    eprintln!("130 installs, SSM calls by operation: {}", ssm.join(" "));
    assert_eq!(counts["ssm:ListCommandInvocations"], 6);
    assert!(
        counts.get("ssm:GetCommandInvocation").is_none(),
        "{counts:?}"
    );
    // One ListCommands while observing, then one per poll for the whole region (key exchanges, then
    // installs), not one per command.
    let list_commands = counts["ssm:ListCommands"].as_u64().unwrap();
    assert!(list_commands <= 6, "{counts:?}");
}

#[test]
fn the_client_secret_appears_in_no_command_log_or_report() {
    let w = World::start();
    ids(&w, &mixed_fleet());
    let out = w.run(
        &[
            "-vv",
            "run",
            "--wait-for-ssm",
            "30s",
            "--verify-timeout",
            "20s",
            "--output",
            "json",
        ],
        &w.config(TWO_REGIONS),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains(STUB_SECRET));
    assert!(!out.stderr.contains(STUB_SECRET), "secret in the logs");
    for c in commands(&w) {
        let text = c.to_string();
        assert!(!text.contains(STUB_SECRET), "secret sent to an instance");
        assert!(
            script_of(&c).contains("ARC_SEALED_CONFIG = '")
                || script_of(&c).contains("ARC_SEALED_CONFIG='"),
            "a sealed token travels instead"
        );
    }
    let calls = w
        .aws
        .calls()
        .iter()
        .map(|c| c.to_string())
        .collect::<String>();
    assert!(!calls.contains(STUB_SECRET));
    let table = w.run(&["plan"], &w.config(TWO_REGIONS));
    assert!(!table.stdout.contains(STUB_SECRET) && !table.stderr.contains(STUB_SECRET));
}

#[test]
fn a_failing_token_request_stops_run_before_any_aws_call() {
    let w = World::start();
    ids(&w, &mixed_fleet());
    let out = w.run_env(
        &["run", "--output", "json"],
        &w.config(TWO_REGIONS),
        &[("ARC_ONBOARD_CLIENT_SECRET", "wrong-secret")],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cannot get an Azure Resource Manager token"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("invalid_client"), "{}", out.stderr);
    assert!(w.aws.calls().is_empty(), "{:#?}", w.aws.calls());

    let out = w.aws.run(&["run"], &w.config(TWO_REGIONS));
    assert_eq!(out.code, 2, "no secret at all");
    assert!(
        out.stderr.contains("ARC_ONBOARD_CLIENT_SECRET"),
        "{}",
        out.stderr
    );
    assert!(w.aws.calls().is_empty());

    // plan works without Azure and says what it could not check.
    let plan = w
        .aws
        .run(&["plan", "--output", "json"], &w.config(TWO_REGIONS));
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let report = plan.json();
    assert!(report["instances"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("Azure not checked"));
}

#[test]
fn machines_already_connected_in_azure_get_no_command() {
    let w = World::start();
    let id = ids(&w, &ready_fleet(2));
    w.azure.control("POST", "/_stub/machines", Some(&json!({
        "resource_group": "aws_123456789012", "name": id[0], "location": "eastus", "status": "Connected"
    })));
    let plan = w
        .run(&["plan", "--output", "json"], &w.config(ONE_REGION))
        .json();
    assert_eq!(row(&plan, &id[0])["status"], "already-onboarded");
    assert_eq!(row(&plan, &id[1])["actions"], json!(["install-agent"]));
    assert_eq!(
        plan["accounts"][0]["actions"],
        json!([]),
        "the group exists"
    );
    let (code, report, _) = run(&w, ONE_REGION, &[]);
    assert_eq!(code, 0);
    assert_eq!(row(&report, &id[0])["status"], "already-onboarded");
    assert_eq!(row(&report, &id[1])["status"], "onboarded");
    let sent = commands(&w);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["instance_ids"], json!([id[1]]));
}

#[test]
fn an_install_in_flight_is_never_sent_again() {
    let w = World::start();
    let id = ids(&w, &ready_fleet(2));
    w.aws.configure(json!({"command_duration_seconds": 8}));
    // A first run sends the install and tracks it; meanwhile a second run and a plan look at the fleet.
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("arc-onboard.toml");
    std::fs::write(&config_path, w.config(ONE_REGION)).unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_arc-onboard"));
    first
        .args([
            "run",
            "--wait-for-ssm",
            "0s",
            "--verify-timeout",
            "20s",
            "--output",
            "json",
            "--config",
        ])
        .arg(&config_path);
    common::isolate(&mut first, dir.path());
    let first = first
        .env("AWS_ENDPOINT_URL", &w.aws.endpoint)
        .env("ARC_ONBOARD_CLIENT_SECRET", STUB_SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while commands(&w).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run sent nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let plan = w
        .run(&["plan", "--output", "json"], &w.config(ONE_REGION))
        .json();
    for i in &id {
        assert_eq!(row(&plan, i)["status"], "in-progress", "{plan:#}");
    }
    let (_, second, _) = run(&w, ONE_REGION, &["--wait-for-ssm", "0s"]);
    for i in &id {
        assert_eq!(row(&second, i)["status"], "in-progress");
    }
    assert_eq!(commands(&w).len(), 1, "the install was sent once");
    let out = first.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first_report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for i in &id {
        assert_eq!(row(&first_report, i)["status"], "onboarded");
    }
}

#[test]
fn no_issued_token_appears_in_any_command_parameter_or_output() {
    let w = World::start();
    let id = ids(&w, &mixed_fleet());
    let (code, report, stderr) = run(&w, TWO_REGIONS, &[]);
    assert_eq!(code, 0, "{report:#}");
    for i in id.iter().take(5) {
        assert_eq!(row(&report, i)["status"], "onboarded", "{report:#}");
    }
    // Every machine was connected with a token its instance opened from the sealed configuration, and
    // the stub checked each token as connect would.
    let connects = w.azure.connects();
    assert_eq!(connects.len(), 5);
    for c in &connects {
        assert_eq!(c["ok"], true, "{c}");
        assert_eq!(c["sealed"], true, "{c}");
    }
    let issued = w.azure.control("GET", "/_stub/tokens/issued", None)["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert!(!issued.is_empty());
    // Every command (parameters and invocation outputs, as SSM's history keeps them), the emulator's
    // request log, the report and the logs: no issued token anywhere.
    let everything = [
        serde_json::to_string(&all_commands(&w)).unwrap(),
        w.aws
            .calls()
            .iter()
            .map(|c| c.to_string())
            .collect::<String>(),
        report.to_string(),
        stderr,
    ];
    for token in &issued {
        for (n, text) in everything.iter().enumerate() {
            assert!(
                !text.contains(token.as_str()),
                "an issued token is in text #{n}"
            );
        }
    }
    // The outputs were there to look at: the key exchanges' public keys and the installs' result lines.
    let outputs = everything[0].as_str();
    assert!(outputs.contains("ARC_ONBOARD_KEY"), "{outputs}");
    assert!(outputs.contains("ARC_ONBOARD_RESULT"), "{outputs}");
}
