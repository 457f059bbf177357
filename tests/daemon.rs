//! `arc-onboard daemon` against the AWS emulator and the Azure stub: the two schedules end to end, retry
//! backoff, crash safety with kill -9, SIGHUP, metrics and health (also under floods, garbage and slow
//! clients), `status`, clean shutdown.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{fleet_with, status_of, World};
use serde_json::{json, Value};

fn config(iam_every: &str, sync_every: &str) -> String {
    format!(
        "[aws]\nregions = [\"us-east-1\"]\ntag_filter = {{ key = \"arc\", value = \"onboard\" }}\n[iam]\nauto_assignment_interval = \"{iam_every}\"\n[onboarding]\nsync_interval = \"{sync_every}\"\n"
    )
}

/// Install commands sent to an instance (each batch's key exchange, its first command, is not counted).
fn sends_to(w: &World, instance_id: &str) -> usize {
    w.aws.control("GET", "/_emulator/commands", None)["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            !c["parameters"]["commands"]
                .to_string()
                .contains("ARC_MODE='key-exchange'")
                && c["instance_ids"]
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
    let addr = free_addr();
    let d = w.daemon(&config("1 day", "1 day"), &["--metrics-addr", &addr], None);
    d.wait_for(
        "onboarded",
        Duration::from_secs(30),
        status_is(&id, "onboarded"),
    );
    let fetch = |path: &str| http_get(&addr, path);
    let (code, body) = fetch("/metrics");
    assert_eq!(code, 200);
    assert!(
        body.contains("arc_onboard_passes_total{kind=\"onboarding\",result=\"ok\"} 1"),
        "{body}"
    );
    assert!(
        // One batch: the key exchange, then the install.
        body.contains("arc_onboard_api_calls_total{operation=\"ssm:SendCommand\"} 2"),
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
    // Its Arc machine (ours) is deleted at once; once it is, the instance is no longer reported.
    let lifecycle = "[lifecycle]\ndelete_after = \"0s\"\n";
    let d = w.daemon(&format!("{}{lifecycle}", config("1 day", "1s")), &[], None);
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

/// A free port on 127.0.0.1 for the daemon's metrics endpoint.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", l.local_addr().unwrap().port())
}

/// `GET path` (HTTP/1.1, `Connection: close`): the status code and the whole response.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_response(s)
}

/// Reads a response to the end: the status code (0 when the server closed without one) and the text.
fn read_response(mut s: TcpStream) -> (u16, String) {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

/// Connections on `port` accepted and held open by process `pid` (Linux: its socket descriptors matched
/// against the kernel's TCP table; listening sockets and connections not yet accepted are not counted).
fn accepted_by(pid: u32, port: u16) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let mut accepted = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let table = std::fs::read_to_string(table).unwrap_or_default();
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // State 0A is LISTEN. The table is read in pages, so an entry may show twice: a set.
            if local_port == Some(port) && fields[3] != "0A" && inodes.contains(fields[9]) {
                accepted.insert(fields[9].to_string());
            }
        }
    }
    accepted.len()
}

/// The value of the sample line starting with `series ` in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// When the last onboarding pass finished, from the state file.
fn onboarding_passes_finished_at(d: &common::Daemon) -> Option<String> {
    d.status()["last_passes"]
        .as_array()?
        .iter()
        .find(|p| p["kind"] == "onboarding")
        .map(|p| p["finished_at"].as_str().unwrap_or_default().to_string())
}

/// The daemon's endpoint under what a public port meets: garbage, huge heads, clients that connect and
/// say nothing, 500 requests at once, slow clients. The endpoint holds at most 64 connections, keeps
/// answering, the passes go on, and the scrape stays parseable with the pass duration histogram.
#[test]
fn the_metrics_endpoint_holds_up_under_floods_garbage_and_slow_clients() {
    let w = World::start();
    let id = seed_one(&w, true);
    let addr = free_addr();
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let mut d = w.daemon(&config("1 day", "1s"), &["--metrics-addr", &addr], None);
    let pid = d.child.id();
    d.wait_for(
        "onboarded",
        Duration::from_secs(30),
        status_is(&id, "onboarded"),
    );

    // Garbage and heads over 8 KiB: refused, the connection closed.
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
        b"\x00\xff\xfe\xfd garbage\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(junk).unwrap();
        let (code, text) = read_response(s);
        assert!(code == 0 || code == 400, "{junk:?} -> {text:?}");
    }
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let filler = "X-Filler: 0123456789012345678901234567890123456789\r\n".repeat(400);
    let head = format!("GET /metrics HTTP/1.1\r\n{filler}\r\n");
    // The server may close before reading it all.
    let _ = s.write_all(head.as_bytes());
    assert_eq!(read_response(s).0, 431);

    // 180 clients connect and say nothing: 64 are taken in, the rest wait in the listen backlog (128;
    // past it the kernel drops the handshakes and clients retry, which makes a test slow, not another).
    let before = onboarding_passes_finished_at(&d);
    let idle: Vec<TcpStream> = (0..180)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut peak = 0;
    while Instant::now() < deadline && peak < 64 {
        peak = peak.max(accepted_by(pid, port));
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..50 {
        peak = peak.max(accepted_by(pid, port));
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("180 silent clients: the daemon held {peak} of them open at most");
    assert_eq!(peak, 64, "the limit is reached and never passed");
    // Meanwhile the passes go on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while onboarding_passes_finished_at(&d) == before {
        assert!(
            Instant::now() < deadline,
            "no pass finished during the flood"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(idle);
    let started = Instant::now();
    let (code, _) = http_get(&addr, "/healthz");
    assert_eq!(code, 200);
    eprintln!(
        "first answer after the idle clients left: {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Slow clients (one silent, one sending a byte every 100 ms) do not hold up the others.
    let silent = TcpStream::connect(&addr).unwrap();
    let trickler = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            let started = Instant::now();
            for byte in head.iter().cycle() {
                if s.write_all(&[*byte]).is_err() || started.elapsed() > Duration::from_secs(30) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            started.elapsed()
        }
    });

    // 500 requests at once, all sent before any answer is read; the open connections are sampled.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = std::thread::spawn({
        let sampling = sampling.clone();
        move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(accepted_by(pid, port));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        }
    });
    let started = Instant::now();
    let clients: Vec<TcpStream> = (0..500)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    let mut ok = 0;
    let mut last = String::new();
    for s in clients {
        let (code, text) = read_response(s);
        assert_eq!(code, 200, "{text}");
        ok += 1;
        last = text;
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    eprintln!(
        "500 concurrent scrapes answered in {:?} with 2 slow clients connected; at most {peak} open",
        started.elapsed()
    );
    assert_eq!(ok, 500);
    assert!(peak <= 64, "{peak} connections open at once");

    // The scrape parses, and carries the histogram of the recorded passes.
    let body = last.split_once("\r\n\r\n").unwrap().1;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        assert!(value.parse::<f64>().is_ok(), "{line}");
        assert!(series.starts_with("arc_onboard_"), "{line}");
    }
    let count = sample(
        body,
        "arc_onboard_pass_duration_seconds_count{kind=\"onboarding\"}",
    )
    .expect("a _count series");
    assert!(count >= 2.0, "{body}");
    let inf = "arc_onboard_pass_duration_seconds_bucket{kind=\"onboarding\",le=\"+Inf\"}";
    assert_eq!(sample(body, inf), Some(count), "{body}");
    let sum = sample(
        body,
        "arc_onboard_pass_duration_seconds_sum{kind=\"onboarding\"}",
    );
    assert!(sum.is_some_and(|s| s > 0.0), "{body}");
    assert!(body.contains("# TYPE arc_onboard_pass_duration_seconds histogram\n"));

    // The trickler is cut off at the 10 s header deadline, not served and not kept forever.
    let trickled = trickler.join().unwrap();
    eprintln!("the trickling client was cut off after {trickled:?}");
    assert!(
        trickled >= Duration::from_secs(9) && trickled < Duration::from_secs(20),
        "{trickled:?}"
    );
    drop(silent);

    d.signal("TERM");
    assert_eq!(
        d.wait(Duration::from_secs(30)),
        Some(0),
        "log:\n{}",
        d.log()
    );
}

#[test]
fn healthz_turns_503_after_consecutive_failed_passes_and_back() {
    let w = World::start();
    seed_one(&w, true);
    let addr = free_addr();
    let d = w.daemon(
        &config("1 day", "1s"),
        &["--metrics-addr", &addr, "--unhealthy-after", "2"],
        None,
    );
    let wait_for_health = |want: u16| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "no endpoint; log:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        loop {
            let (code, text) = http_get(&addr, "/healthz");
            if code == want {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no {want}; last: {text}\nlog:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for_health(200);
    // No region can be observed: every pass fails.
    w.aws
        .faults(json!([{"operation": "ec2:DescribeInstances", "code": "UnauthorizedOperation"}]));
    let text = wait_for_health(503);
    assert!(
        text.contains("consecutive failed passes (onboarding)"),
        "{text}"
    );
    let (_, scrape) = http_get(&addr, "/metrics");
    assert_eq!(
        sample(&scrape, "arc_onboard_healthy"),
        Some(0.0),
        "{scrape}"
    );
    assert!(
        sample(
            &scrape,
            "arc_onboard_consecutive_failed_passes{kind=\"onboarding\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "{scrape}"
    );
    w.aws.faults(json!([]));
    wait_for_health(200);
    let (_, scrape) = http_get(&addr, "/metrics");
    assert_eq!(
        sample(&scrape, "arc_onboard_healthy"),
        Some(1.0),
        "{scrape}"
    );
}
