//! `arc-onboard daemon` against the AWS emulator and the Azure stub: the two schedules end to end, retry
//! backoff, crash safety with kill -9, SIGHUP, metrics and health, `status`, clean shutdown.

mod common;

use std::time::Duration;

use common::{fleet_with, status_of, World};
use serde_json::{json, Value};

fn config(iam_every: &str, sync_every: &str) -> String {
    format!(
        "[aws]\nregions = [\"us-east-1\"]\ntag_filter = {{ key = \"arc\", value = \"onboard\" }}\n[iam]\nauto_assignment_interval = \"{iam_every}\"\n[onboarding]\nsync_interval = \"{sync_every}\"\n"
    )
}

fn sends_to(w: &World, instance_id: &str) -> usize {
    w.aws.control("GET", "/_emulator/commands", None)["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["instance_ids"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i == instance_id)
        })
        .count()
}

fn seed_one(w: &World, profile: bool) -> String {
    let mut inst = json!({"region": "us-east-1", "tags": {"arc": "onboard"}});
    if profile {
        inst["instance_profile"] = json!("AppProfile");
    }
    let out = w.aws.seed(&fleet_with(json!([inst])));
    out[0]["instance_id"].as_str().unwrap().to_string()
}

fn status_is<'a>(id: &'a str, want: &'static str) -> impl Fn(&Value) -> bool + 'a {
    move |s: &Value| status_of(s, id).is_some_and(|i| i["status"] == want)
}

#[test]
fn a_new_instance_gets_the_ssm_profile_then_the_agent_and_shutdown_is_clean() {
    let w = World::start();
    let first = seed_one(&w, true);
    let mut d = w.daemon(
        &config("2s", "3s"),
        &["--metrics-addr", "127.0.0.1:0"],
        None,
    );
    d.wait_for(
        "the first instance onboarded",
        Duration::from_secs(30),
        status_is(&first, "onboarded"),
    );

    // Launched while the daemon runs, without a profile: the IAM pass associates the SSM profile, a later
    // onboarding pass installs the agent.
    let late = seed_one(&w, false);
    let status = d.wait_for(
        "the late instance onboarded",
        Duration::from_secs(40),
        status_is(&late, "onboarded"),
    );
    let assoc: Vec<Value> = w
        .aws
        .calls()
        .into_iter()
        .filter(|c| c["operation"] == "ec2:AssociateIamInstanceProfile" && c["status"] == 200)
        .collect();
    assert_eq!(assoc.len(), 1);
    assert_eq!(assoc[0]["params"]["InstanceId"], late.as_str());
    assert_eq!(sends_to(&w, &late), 1);
    assert_eq!(
        sends_to(&w, &first),
        1,
        "never re-sent to an onboarded instance"
    );
    let by_status = &status["summary"]["by_status"];
    let done = by_status["onboarded"].as_u64().unwrap_or(0)
        + by_status["already-onboarded"].as_u64().unwrap_or(0);
    assert_eq!(done, 2, "{status:#}");
    let kinds: Vec<&str> = status["last_passes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["iam", "onboarding"]);

    // Structured logs carry the pass id and kind.
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("pass finished"))
        .expect("a pass finished");
    let entry: Value = serde_json::from_str(line).unwrap();
    let pass_id = entry["span"]["pass.id"].as_str().unwrap_or_default();
    assert_eq!(pass_id.len(), 36, "a pass id (UUID): {line}");
    assert!(
        ["iam", "onboarding"].contains(&entry["span"]["pass.kind"].as_str().unwrap_or_default()),
        "{line}"
    );
    // Inner events carry the account (pass span), region and instance fields.
    let assoc = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["message"] == "profile associated")
        .expect("an association was logged");
    assert_eq!(assoc["instance.id"], late.as_str(), "{assoc}");
    assert_eq!(assoc["region"], "us-east-1", "{assoc}");
    let spans = assoc["spans"].as_array().unwrap();
    assert!(
        spans.iter().any(|s| s["account"] == "123456789012"),
        "{assoc}"
    );
    assert!(spans.iter().any(|s| s["pass.id"].is_string()), "{assoc}");

    d.signal("TERM");
    assert_eq!(
        d.wait(Duration::from_secs(30)),
        Some(0),
        "clean exit; log:\n{}",
        d.log()
    );
    assert!(d.log().contains("daemon stopped"));
    // The log was checkpointed into the file at the clean stop.
    let wal = d.dir.path().join("state.db-wal");
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "write-ahead log left with content"
    );
}

#[test]
fn failed_installs_are_retried_with_backoff_not_at_every_tick() {
    let w = World::start();
    let bad = seed_one(&w, true);
    let good = seed_one(&w, true);
    w.aws.control(
        "POST",
        "/_emulator/outcomes",
        Some(&json!({&bad: {"status": "Failed", "exit_code": 41}})),
    );
    let d = w.daemon(&config("1 day", "1s"), &["--retry-base", "1h"], None);
    d.wait_for(
        "the good one onboarded",
        Duration::from_secs(30),
        status_is(&good, "onboarded"),
    );
    let status = d.wait_for(
        "the bad one failed",
        Duration::from_secs(30),
        status_is(&bad, "failed"),
    );
    // Several sync ticks later the failed instance was not sent again.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(sends_to(&w, &bad), 1, "retried at every tick");
    let row = status_of(&status, &bad).unwrap();
    assert_eq!(row["attempts"], 1);
    assert!(row["next_attempt_at"].is_string(), "{row}");
    assert!(row["last_error"].as_str().unwrap().contains("41"), "{row}");
    let later = d.status();
    let counts = &later["summary"]["by_status"];
    assert_eq!(counts["failed"], 1, "{later:#}");
    let ok = counts["onboarded"].as_u64().unwrap_or(0)
        + counts["already-onboarded"].as_u64().unwrap_or(0);
    assert_eq!(ok, 1, "{later:#}");
    let row = status_of(&later, &bad).unwrap();
    assert!(
        row["detail"]
            .as_str()
            .unwrap()
            .contains("next attempt not before"),
        "{row}"
    );
    let next_attempt_at = row["next_attempt_at"].clone();

    // `plan --state-file` shows what the daemon's next pass will do, and changes nothing.
    let state = d.dir.path().join("state.db");
    w.aws.reset_calls();
    let out = w.run(
        &[
            "plan",
            "--output",
            "json",
            "--state-file",
            state.to_str().unwrap(),
        ],
        &w.config(&config("1 day", "1s")),
    );
    assert_eq!(out.code, 1, "a held instance is failed: {}", out.stderr);
    let plan = out.json();
    let held = common::row(&plan, &bad);
    assert_eq!(held["status"], "failed", "{held}");
    assert_eq!(held["actions"], json!([]));
    assert_eq!(held["failure"]["exit_code"], 41, "{held}");
    assert_eq!(held["next_attempt_at"], next_attempt_at);
    assert!(w.aws.mutating_calls().is_empty());
    // Without the state file, plan knows nothing of the backoff.
    let plain = w
        .run(
            &["plan", "--output", "json"],
            &w.config(&config("1 day", "1s")),
        )
        .json();
    assert_eq!(
        common::row(&plain, &bad)["actions"],
        json!(["install-agent"])
    );
}

#[test]
fn kill_9_during_an_install_then_restart_resumes_instead_of_resending() {
    let w = World::start();
    w.aws.configure(json!({"command_duration_seconds": 8}));
    let id = seed_one(&w, true);
    let mut d = w.daemon(&config("1 day", "2s"), &[], None);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sends_to(&w, &id) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no install sent; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The command id was committed before the daemon started waiting for it.
    std::thread::sleep(Duration::from_millis(300));
    d.signal("KILL");
    d.wait(Duration::from_secs(10));
    let dir = d.take_dir();
    let before = common::status_in(dir.path());
    let row = status_of(&before, &id).unwrap();
    assert_eq!(row["status"], "in-progress", "{before:#}");
    assert!(row["command_id"].is_string(), "{row}");
    let d2 = w.daemon(&config("1 day", "2s"), &[], Some(dir));
    let after = d2.wait_for(
        "onboarded after the restart",
        Duration::from_secs(40),
        status_is(&id, "onboarded"),
    );
    assert_eq!(
        sends_to(&w, &id),
        1,
        "the install was sent once; log:\n{}",
        d2.log()
    );
    assert_eq!(status_of(&after, &id).unwrap()["attempts"], 0);
}

#[test]
fn sighup_runs_a_pass_now_and_metrics_show_the_passes() {
    let w = World::start();
    let id = seed_one(&w, true);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let d = w.daemon(&config("1 day", "1 day"), &["--metrics-addr", &addr], None);
    d.wait_for(
        "onboarded",
        Duration::from_secs(30),
        status_is(&id, "onboarded"),
    );
    let fetch = |path: &str| -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
        (code, out)
    };
    let (code, body) = fetch("/metrics");
    assert_eq!(code, 200);
    assert!(
        body.contains("arc_onboard_passes_total{kind=\"onboarding\",result=\"ok\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("arc_onboard_api_calls_total{operation=\"ssm:SendCommand\"} 1"),
        "{body}"
    );
    assert_eq!(fetch("/healthz").0, 200);

    // A new instance appears; without SIGHUP nothing would look at it for a day.
    let late = seed_one(&w, true);
    d.signal("HUP");
    d.wait_for(
        "onboarded after SIGHUP",
        Duration::from_secs(30),
        status_is(&late, "onboarded"),
    );
    let (_, body) = fetch("/metrics");
    assert!(
        body.contains("arc_onboard_passes_total{kind=\"onboarding\",result=\"ok\"} 2"),
        "{body}"
    );
}

#[test]
fn a_terminated_instance_leaves_the_state_file_and_the_log_says_so() {
    let w = World::start();
    let stays = seed_one(&w, true);
    let gone = seed_one(&w, true);
    let d = w.daemon(&config("1 day", "1s"), &[], None);
    let done = |id: &str, s: &Value| {
        status_of(s, id)
            .is_some_and(|i| i["status"] == "onboarded" || i["status"] == "already-onboarded")
    };
    d.wait_for("both onboarded", Duration::from_secs(30), |s| {
        done(&stays, s) && done(&gone, s)
    });
    w.aws.control(
        "POST",
        &format!("/_emulator/instances/{gone}/state"),
        Some(&json!({"state": "terminated"})),
    );
    let status = d.wait_for(
        "the terminated instance gone from status",
        Duration::from_secs(30),
        |s| status_of(s, &gone).is_none(),
    );
    assert!(done(&stays, &status), "{status:#}");
    assert_eq!(status["summary"]["instances"], 1, "{status:#}");
    let log = d.log();
    let removal = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("removed from the state file"))
        })
        .unwrap_or_else(|| panic!("no removal logged:\n{log}"));
    assert_eq!(removal["level"], "INFO", "{removal}");
    assert_eq!(removal["removed"], 1, "{removal}");
    assert_eq!(
        removal["instances"],
        format!("us-east-1/{gone}").as_str(),
        "{removal}"
    );
}

#[test]
fn status_without_a_state_file_is_exit_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arc-onboard"))
        .args(["status", "--state-file", "/nonexistent/state.db"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no state file"));
}
