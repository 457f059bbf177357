//! Event-driven onboarding, end to end: the real daemon long-polls an SQS queue served by the emulator,
//! whose launch and tag controls put on it the events EventBridge would deliver; Azure is the stub.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{fleet_with, run_binary, status_of, Daemon, World};
use serde_json::{json, Value};

/// Both schedules at an hour: anything onboarded after the first passes was onboarded by an event.
fn config(queue_url: &str) -> String {
    format!(
        "[aws]\nregions = [\"us-east-1\"]\ntag_filter = {{ key = \"arc\", value = \"onboard\" }}\n\
         [iam]\nauto_assignment_interval = \"1 hour\"\n[onboarding]\nsync_interval = \"1 hour\"\n\
         [events]\nqueue_url = \"{queue_url}\"\n"
    )
}

/// A world with the IAM fixture seeded, `registration_delay` and install `duration` set, and a queue the
/// emulator delivers events to; returns the queue URL.
fn world(registration_delay: f64, duration: f64) -> (World, String) {
    let w = World::start();
    w.aws.seed(&fleet_with(json!([])));
    w.aws.configure(json!({
        "registration_delay_seconds": registration_delay,
        "command_duration_seconds": duration,
    }));
    let queue = w.aws.control(
        "POST",
        "/_emulator/events",
        Some(&json!({"create_queue": "arc-onboard-events", "region": "us-east-1"})),
    );
    let url = queue["queue_url"].as_str().unwrap().to_string();
    (w, url)
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", l.local_addr().unwrap().port())
}

/// `GET path`: the status code and the whole response.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
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

/// The value of one sample in a Prometheus text body (`name{labels}`), when present.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Polls until `cond` holds (bounded); panics with `what` and the daemon's log.
fn eventually<T>(
    d: &Daemon,
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many passes have finished, by the daemon's log.
fn passes_finished(d: &Daemon) -> usize {
    d.log().matches("\"pass finished\"").count()
}

/// Waits for the daemon's first IAM and onboarding passes to finish.
fn after_first_passes(d: &Daemon) {
    eventually(d, "the first passes", Duration::from_secs(30), || {
        (passes_finished(d) >= 2).then_some(())
    });
}

fn launch(w: &World, item: Value) -> String {
    let out = w.aws.control("POST", "/_emulator/launch", Some(&item));
    out["instances"][0]["instance_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn status_is(d: &Daemon, id: &str, want: &str) -> bool {
    status_of(&d.status(), id).is_some_and(|i| i["status"] == want)
}

/// Install commands that targeted `id` (each batch's key exchange, its first command, is not counted).
fn sends_to(w: &World, id: &str) -> usize {
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
                    .any(|i| i == id)
        })
        .count()
}

fn queue_messages(w: &World) -> Option<u64> {
    w.aws.control("GET", "/_emulator/events", None)["messages"].as_u64()
}

/// Measured: a tagged instance launched with a profile, registered by SSM after R = 3 s, its install
/// taking D = 2 s, is `onboarded` within R + D + 20 s of its launch, with both schedules at an hour.
#[test]
fn a_launched_tagged_instance_with_a_profile_is_onboarded_within_r_plus_d_plus_20s() {
    let (r, d_secs) = (3.0, 2.0);
    let (w, url) = world(r, d_secs);
    let d = w.daemon(&config(&url), &[], None);
    after_first_passes(&d);
    let launched = Instant::now();
    let id = launch(
        &w,
        json!({"region": "us-east-1", "tags": {"arc": "onboard"}, "instance_profile": "AppProfile"}),
    );
    let bound = Duration::from_secs_f64(r + d_secs + 20.0);
    eventually(&d, "onboarded by the event", bound, || {
        status_is(&d, &id, "onboarded").then_some(())
    });
    let took = launched.elapsed();
    eprintln!(
        "launch to onboarded: {:.1} s (bound {:.0} s)",
        took.as_secs_f64(),
        bound.as_secs_f64()
    );
    assert!(took <= bound, "took {took:?}");
    assert_eq!(passes_finished(&d), 2, "no scheduled pass ran meanwhile");
    assert_eq!(sends_to(&w, &id), 1);
    let machines = w.azure.machines();
    assert!(
        machines.iter().any(|m| m["name"] == id.as_str()),
        "the Arc machine exists: {machines:?}"
    );
    eventually(&d, "the message deleted", Duration::from_secs(5), || {
        (queue_messages(&w) == Some(0)).then_some(())
    });
}

/// Measured: an instance launched without a profile gets the SSM profile within seconds of its event
/// (before the SSM agent's first look for credentials), then the agent.
#[test]
fn a_launched_instance_without_a_profile_is_associated_within_seconds_of_the_event() {
    let (w, url) = world(3.0, 1.0);
    let d = w.daemon(&config(&url), &[], None);
    after_first_passes(&d);
    let launched = Instant::now();
    let id = launch(
        &w,
        json!({"region": "us-east-1", "tags": {"arc": "onboard"}}),
    );
    eventually(&d, "the association", Duration::from_secs(5), || {
        w.aws
            .calls()
            .iter()
            .any(|c| {
                c["operation"] == "ec2:AssociateIamInstanceProfile"
                    && c["status"] == 200
                    && c["params"]["InstanceId"] == id.as_str()
            })
            .then_some(())
    });
    let took = launched.elapsed();
    eprintln!("launch to profile associated: {:.1} s", took.as_secs_f64());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    eventually(&d, "onboarded", Duration::from_secs(30), || {
        status_is(&d, &id, "onboarded").then_some(())
    });
    assert_eq!(passes_finished(&d), 2, "no scheduled pass ran meanwhile");
    assert_eq!(sends_to(&w, &id), 1);
}

#[test]
fn malformed_other_and_out_of_scope_messages_are_deleted_and_counted() {
    let (w, url) = world(0.0, 1.0);
    let addr = free_addr();
    let d = w.daemon(&config(&url), &["--metrics-addr", &addr], None);
    after_first_passes(&d);
    let send = |body: Value| {
        w.aws.control("POST", "/_emulator/events/send", Some(&body));
    };
    let event = |account: &str, region: &str, state: &str| {
        json!({"event": {"version": "0", "id": "x", "source": "aws.ec2",
            "detail-type": "EC2 Instance State-change Notification", "account": account,
            "region": region, "resources": [], "detail": {"instance-id": "i-0123456789abcdef0", "state": state}}})
    };
    send(json!({"body": "this is not an event"}));
    send(json!({"body": "{\"detail-type\": \"EC2 Instance State-change Notification\"}"}));
    send(event("123456789012", "us-east-1", "stopping"));
    send(event("210987654321", "us-east-1", "running"));
    send(event("123456789012", "eu-west-3", "running"));
    send(event("123456789012", "us-east-1", "running")); // no such instance
    let untagged = launch(&w, json!({"region": "us-east-1", "tags": {"arc": "no"}}));
    let metrics = eventually(&d, "every message counted", Duration::from_secs(20), || {
        let (_, body) = http_get(&addr, "/metrics");
        let v = |r: &str| {
            sample(
                &body,
                &format!("arc_onboard_events_total{{result=\"{r}\"}}"),
            )
        };
        (v("malformed") == Some(2.0) && v("ignored") == Some(1.0) && v("out-of-scope") == Some(4.0))
            .then_some(body)
    });
    assert_eq!(
        sample(&metrics, "arc_onboard_events_total{result=\"accepted\"}"),
        Some(0.0)
    );
    eventually(&d, "the queue emptied", Duration::from_secs(5), || {
        (queue_messages(&w) == Some(0)).then_some(())
    });
    let log = d.log();
    assert!(log.contains("malformed event message; deleted"), "{log}");
    assert!(log.contains("event out of scope; deleted"), "{log}");
    assert!(status_of(&d.status(), &untagged).is_none(), "not recorded");
    assert_eq!(http_get(&addr, "/healthz").0, 200, "never fatal");
    assert!(w
        .aws
        .calls()
        .iter()
        .all(|c| c["operation"] != "ec2:AssociateIamInstanceProfile"
            && c["operation"] != "ssm:SendCommand"));
}

#[test]
fn duplicate_and_late_events_send_no_second_install() {
    let (w, url) = world(0.0, 4.0);
    let d = w.daemon(&config(&url), &[], None);
    after_first_passes(&d);
    let id = launch(
        &w,
        json!({"region": "us-east-1", "tags": {"arc": "onboard"}, "instance_profile": "AppProfile"}),
    );
    eventually(&d, "the install in flight", Duration::from_secs(15), || {
        status_is(&d, &id, "in-progress").then_some(())
    });
    // While the install runs: the same event again, and a tag change.
    let running = json!({"event": {"version": "0", "id": "dup", "source": "aws.ec2",
        "detail-type": "EC2 Instance State-change Notification", "account": "123456789012",
        "region": "us-east-1", "resources": [], "detail": {"instance-id": id, "state": "running"}}});
    w.aws
        .control("POST", "/_emulator/events/send", Some(&running));
    w.aws.control(
        "POST",
        &format!("/_emulator/instances/{id}/tags"),
        Some(&json!({"tags": {"team": "web"}})),
    );
    eventually(&d, "onboarded", Duration::from_secs(20), || {
        status_is(&d, &id, "onboarded").then_some(())
    });
    // After it: the same event once more.
    w.aws
        .control("POST", "/_emulator/events/send", Some(&running));
    eventually(
        &d,
        "the late duplicate handled",
        Duration::from_secs(10),
        || {
            (queue_messages(&w) == Some(0)
                && d.log().matches("\"event: instance observed\"").count()
                    + d.log().matches("already being onboarded").count()
                    >= 4)
                .then_some(())
        },
    );
    assert_eq!(sends_to(&w, &id), 1, "one install, whatever the events");
    let status = d.status();
    let now = &status_of(&status, &id).unwrap()["status"];
    assert!(
        now == "onboarded" || now == "already-onboarded",
        "the late event found it connected: {now}"
    );
}

#[test]
fn a_deleted_queue_shows_in_healthz_and_the_schedules_keep_running() {
    let (w, url) = world(0.0, 1.0);
    let addr = free_addr();
    let config = config(&url).replace("sync_interval = \"1 hour\"", "sync_interval = \"3s\"");
    let d = w.daemon(&config, &["--metrics-addr", &addr], None);
    after_first_passes(&d);
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    w.aws
        .control("POST", "/_emulator/events/delete-queue", Some(&json!({})));
    let body = eventually(
        &d,
        "/healthz to report the queue",
        Duration::from_secs(40),
        || {
            let (code, body) = http_get(&addr, "/healthz");
            (code == 503).then_some(body)
        },
    );
    assert!(body.contains("event queue"), "{body}");
    let (_, metrics) = http_get(&addr, "/metrics");
    assert_eq!(
        sample(&metrics, "arc_onboard_event_queue_failing"),
        Some(1.0)
    );
    // The schedules go on: an instance seeded without any event is onboarded by a pass.
    let seeded = w.aws.seed(&fleet_with(json!([{"region": "us-east-1",
        "tags": {"arc": "onboard"}, "instance_profile": "AppProfile"}])));
    let id = seeded[0]["instance_id"].as_str().unwrap().to_string();
    eventually(
        &d,
        "onboarded by a scheduled pass",
        Duration::from_secs(30),
        || status_is(&d, &id, "onboarded").then_some(()),
    );
    assert!(d
        .log()
        .contains("cannot read the event queue; the schedules go on"));
}

#[test]
fn a_bad_queue_url_stops_the_daemon_before_any_aws_call_and_validate_prints_a_good_one() {
    let (w, _) = world(0.0, 1.0);
    w.aws.reset_calls();
    let bad = config("http://sqs.us-east-1.amazonaws.com/123456789012/q");
    let dir = tempfile::tempdir().unwrap();
    let out = w.run(
        &[
            "daemon",
            "--state-file",
            dir.path().join("s.db").to_str().unwrap(),
        ],
        &w.config(&bad),
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("events.queue_url"), "{}", out.stderr);
    assert!(w.aws.calls().is_empty(), "{:?}", w.aws.calls());
    let good = "https://sqs.eu-west-1.amazonaws.com/123456789012/arc-onboard-events";
    let out = run_binary(&["validate"], &config(good), &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("[events]\nqueue_url = \"{good}\"")),
        "{}",
        out.stdout
    );
}

// ----- an organization ---------------------------------------------------------------------------------

const MGMT: &str = "123456789012";
const MEMBER: &str = "222222222222";
const EXCLUDED: &str = "333333333333";
const DENIED: &str = "444444444444";
/// Odd: shard 1/2's account (the others are even: shard 0/2).
const OTHER_SHARD: &str = "555555555555";

/// An organization (the emulator's account manages MEMBER, EXCLUDED, DENIED and OTHER_SHARD, each with
/// the IAM fixture; DENIED's role cannot be assumed) and a queue whose messages come back 2 s after a
/// receive that did not delete them.
fn organization_world() -> (World, String) {
    let w = World::start();
    w.aws.control(
        "POST",
        "/_emulator/organization",
        Some(&json!({
            "management_account_id": MGMT,
            "accounts": [{"id": MEMBER}, {"id": EXCLUDED}, {"id": DENIED}, {"id": OTHER_SHARD}]
        })),
    );
    w.aws.control(
        "POST",
        "/_emulator/assume-role-denied",
        Some(&json!({"denied": [DENIED]})),
    );
    for account in [MGMT, MEMBER, EXCLUDED, DENIED, OTHER_SHARD] {
        let mut spec = fleet_with(json!([]));
        spec["account_id"] = json!(account);
        w.aws.seed(&spec);
    }
    w.aws
        .configure(json!({"registration_delay_seconds": 1.0, "command_duration_seconds": 1.0}));
    let queue = w.aws.control(
        "POST",
        "/_emulator/events",
        Some(
            &json!({"create_queue": "arc-onboard-org-events", "region": "us-east-1",
                     "visibility_timeout": 2}),
        ),
    );
    (w, queue["queue_url"].as_str().unwrap().to_string())
}

/// Measured: with `[aws.accounts] source = "organization"` and `--shard 0/2`, a tagged instance launched
/// in a member account is onboarded from its event in that account, into `aws_{member}`; the excluded
/// account's event is deleted as out of scope with no call in that account; the refused role's event is
/// deleted as `account-unreachable`; the other shard's event stays on the queue, never deleted.
#[test]
fn member_events_are_handled_in_their_account_and_the_others_as_the_readme_says() {
    let (w, url) = organization_world();
    let addr = free_addr();
    let config = config(&url).replace(
        "[iam]",
        &format!("[aws.accounts]\nsource = \"organization\"\nexclude = [\"{EXCLUDED}\"]\n[iam]"),
    );
    let d = w.daemon(&config, &["--metrics-addr", &addr, "--shard", "0/2"], None);
    after_first_passes(&d);
    w.aws.reset_calls();
    let tagged = |account: &str| {
        launch(
            &w,
            json!({"account_id": account, "region": "us-east-1", "tags": {"arc": "onboard"},
                   "instance_profile": "AppProfile"}),
        )
    };
    let launched = Instant::now();
    let member = tagged(MEMBER);
    let excluded = tagged(EXCLUDED);
    let denied = tagged(DENIED);
    let other = tagged(OTHER_SHARD);
    eventually(
        &d,
        "the member's instance onboarded",
        Duration::from_secs(30),
        || status_is(&d, &member, "onboarded").then_some(()),
    );
    eprintln!(
        "member account: launch to onboarded {:.1} s",
        launched.elapsed().as_secs_f64()
    );
    let status = d.status();
    assert_eq!(status_of(&status, &member).unwrap()["account_id"], MEMBER);
    let machines = w.azure.machines();
    let machine = machines
        .iter()
        .find(|m| m["name"] == member.as_str())
        .unwrap_or_else(|| panic!("{member} not in Azure: {machines:?}"));
    assert_eq!(
        machine["resource_group"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase(),
        format!("aws_{MEMBER}")
    );
    let metrics = eventually(&d, "every message counted", Duration::from_secs(20), || {
        let (_, body) = http_get(&addr, "/metrics");
        let v = |r: &str| {
            sample(
                &body,
                &format!("arc_onboard_events_total{{result=\"{r}\"}}"),
            )
        };
        (v("accepted") == Some(1.0)
            && v("out-of-scope") == Some(1.0)
            && v("account-unreachable") == Some(1.0)
            && v("other-shard").is_some_and(|n| n >= 2.0))
        .then_some(body)
    });
    // Only the other shard's message is left, and it came back after its visibility timeout.
    assert_eq!(queue_messages(&w), Some(1), "{metrics}");
    let log = d.log();
    assert!(
        log.contains("event of an account whose role cannot be assumed; deleted"),
        "{log}"
    );
    for id in [&excluded, &denied, &other] {
        assert!(status_of(&status, id).is_none(), "{id} not recorded");
        assert_eq!(sends_to(&w, id), 0);
    }
    // No call in the excluded or the other shard's account; one refused AssumeRole into DENIED.
    let calls = w.aws.calls();
    assert!(
        calls
            .iter()
            .any(|c| c["operation"] == "ssm:SendCommand" && c["account_id"] == MEMBER),
        "the install ran in the member's account"
    );
    for account in [EXCLUDED, OTHER_SHARD] {
        let theirs: Vec<&Value> = calls
            .iter()
            .filter(|c| c["account_id"] == account)
            .collect();
        assert!(theirs.is_empty(), "{theirs:?}");
    }
    let assumed: Vec<&Value> = calls
        .iter()
        .filter(|c| c["operation"] == "sts:AssumeRole")
        .collect();
    assert_eq!(
        assumed.len(),
        2,
        "MEMBER and DENIED, once each: {assumed:?}"
    );
    assert_eq!(http_get(&addr, "/healthz").0, 200, "never fatal");
}
