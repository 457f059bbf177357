//! The Arc side follows the EC2 side, end to end with the real binary, the AWS emulator and the Azure
//! stub: the Arc machine of a terminated instance is deleted, only when it is ours (ownership tags, our
//! resource group), only in regions that were observed, not while `plan`, not with
//! `delete_terminated = false`, after `delete_after`; and a termination event makes the daemon delete it
//! within seconds.

mod common;

use std::time::{Duration, Instant};

use common::{actions, fleet_with, row, World, ACCOUNT};
use serde_json::{json, Value};

const RG: &str = "aws_123456789012";

fn config(regions: &str, lifecycle: &str) -> String {
    format!("[aws]\nregions = [{regions}]\n[lifecycle]\n{lifecycle}\n")
}

/// Seeds running instances with a working SSM profile; returns their ids by name.
fn seed(w: &World, instances: &[(&str, &str)]) -> Vec<String> {
    let items: Vec<Value> = instances
        .iter()
        .map(|(region, name)| {
            json!({"region": region, "tags": {"Name": name}, "instance_profile": "AppProfile"})
        })
        .collect();
    w.aws
        .seed(&fleet_with(Value::Array(items)))
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_string())
        .collect()
}

fn run_json(w: &World, args: &[&str], config: &str) -> Value {
    let mut all = vec![args[0], "--output", "json"];
    all.extend_from_slice(&args[1..]);
    let out = w.run(&all, &w.config(config));
    assert!(
        out.code == 0 || out.code == 1,
        "exit {}: {}",
        out.code,
        out.stderr
    );
    out.json()
}

/// Onboards every seeded instance with one `run`.
fn onboard(w: &World, config: &str) {
    let report = run_json(w, &["run", "--wait-for-ssm", "20s"], config);
    assert!(
        report["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] == "onboarded"),
        "{report:#}"
    );
}

fn terminate(w: &World, id: &str) {
    w.aws.control(
        "POST",
        &format!("/_emulator/instances/{id}/state"),
        Some(&json!({"state": "terminated"})),
    );
}

/// The stub's machines as (resource group lowercased, name).
fn machines(w: &World) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = w
        .azure
        .machines()
        .iter()
        .map(|m| {
            (
                m["resource_group"].as_str().unwrap().to_ascii_lowercase(),
                m["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn has_machine(w: &World, rg: &str, name: &str) -> bool {
    machines(w).contains(&(rg.to_ascii_lowercase(), name.to_string()))
}

fn deletes(w: &World) -> Vec<String> {
    w.azure
        .requests()
        .iter()
        .filter(|r| r["method"] == "DELETE")
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect()
}

fn ownership_tags(region: &str, id: &str) -> Value {
    json!({"ManagedBy": "arc-onboard", "AwsAccountId": ACCOUNT, "AwsRegion": region, "AwsInstanceId": id})
}

fn seed_machine(w: &World, rg: &str, name: &str, tags: Value, last_status_change: Option<&str>) {
    let mut body = json!({"resource_group": rg, "name": name, "location": "eastus",
                          "status": "Disconnected", "tags": tags});
    if let Some(t) = last_status_change {
        body["last_status_change"] = json!(t);
    }
    w.azure.control("POST", "/_stub/machines", Some(&body));
}

#[test]
fn a_terminated_instances_machine_is_deleted_and_only_ours() {
    let w = World::start();
    let ids = seed(&w, &[("us-east-1", "keep"), ("us-east-1", "doomed")]);
    let (keep, doomed) = (&ids[0], &ids[1]);
    let now = config("\"us-east-1\"", "delete_after = \"0s\"");
    onboard(&w, &now);
    // Every machine the binary connected carries the ownership tags, the instance's own included.
    // (Beside them, the SQL Server licence tag every connect sets: `sql_server_license`, default disabled.)
    for m in w.azure.machines() {
        let id = m["name"].as_str().unwrap();
        let mut tags = m["tags"].clone();
        let sql = tags
            .as_object_mut()
            .unwrap()
            .remove("ArcSQLServerExtensionDeployment");
        assert_eq!(sql, Some(json!("Disabled")), "{m:#}");
        assert_eq!(tags, ownership_tags("us-east-1", id), "{m:#}");
    }
    // Not ours: the same name in another resource group (even with our tags), and a machine in our group
    // without the tags (its name is an instance id EC2 does not know).
    seed_machine(
        &w,
        "other-rg",
        doomed,
        ownership_tags("us-east-1", doomed),
        None,
    );
    seed_machine(
        &w,
        RG,
        "i-0123456789abcdef0",
        json!({"Owner": "someone"}),
        None,
    );
    terminate(&w, doomed);

    let plan = run_json(&w, &["plan"], &now);
    let planned = row(&plan, doomed);
    assert_eq!(planned["status"], "terminated", "{plan:#}");
    assert_eq!(actions(planned), ["delete-arc-machine"]);
    assert_eq!(planned["termination"]["resource_group"], RG);
    assert_eq!(row(&plan, keep)["status"], "already-onboarded");
    assert_eq!(
        plan["instances"].as_array().unwrap().len(),
        2,
        "only our machine of a gone instance is a row: {plan:#}"
    );
    assert!(deletes(&w).is_empty(), "plan deletes nothing");
    assert!(has_machine(&w, RG, doomed));

    let run = run_json(&w, &["run"], &now);
    let done = row(&run, doomed);
    assert_eq!(done["status"], "offboarded", "{run:#}");
    assert_eq!(done["planned"]["status"], "terminated");
    assert_eq!(run["summary"]["by_status"]["offboarded"], 1);
    assert!(!has_machine(&w, RG, doomed), "{:?}", machines(&w));
    assert!(
        has_machine(&w, "other-rg", doomed),
        "another group's machine survives"
    );
    assert!(
        has_machine(&w, RG, "i-0123456789abcdef0"),
        "an untagged machine survives"
    );
    assert!(has_machine(&w, RG, keep));
    assert_eq!(deletes(&w).len(), 1, "{:?}", deletes(&w));

    // Once its machine is gone, the terminated instance is no longer reported, and nothing else goes.
    let again = run_json(&w, &["run"], &now);
    assert_eq!(again["instances"].as_array().unwrap().len(), 1, "{again:#}");
    assert_eq!(deletes(&w).len(), 1);
}

#[test]
fn deletion_off_or_in_grace_deletes_nothing_and_says_why() {
    let w = World::start();
    let ids = seed(&w, &[("us-east-1", "doomed")]);
    let doomed = &ids[0];
    onboard(&w, &config("\"us-east-1\"", ""));
    terminate(&w, doomed);

    let off = config(
        "\"us-east-1\"",
        "delete_terminated = false\ndelete_after = \"0s\"",
    );
    let run = run_json(&w, &["run"], &off);
    let r = row(&run, doomed);
    assert_eq!(r["status"], "terminated", "{run:#}");
    assert!(actions(r).is_empty());
    assert!(
        r["detail"]
            .as_str()
            .unwrap()
            .contains("delete_terminated = false"),
        "{r:#}"
    );
    assert!(has_machine(&w, RG, doomed));

    // The default grace (1h) counts from EC2's state transition time: the termination just happened.
    let run = run_json(&w, &["run"], &config("\"us-east-1\"", ""));
    let r = row(&run, doomed);
    assert_eq!(r["status"], "terminated", "{run:#}");
    assert!(actions(r).is_empty());
    assert!(
        r["detail"].as_str().unwrap().contains("not before"),
        "{r:#}"
    );
    assert!(has_machine(&w, RG, doomed));
    assert!(deletes(&w).is_empty());
}

#[test]
fn a_machine_whose_instance_ec2_no_longer_knows_is_deleted_after_its_last_status_change() {
    let w = World::start();
    seed(&w, &[("us-east-1", "live")]);
    onboard(&w, &config("\"us-east-1\"", ""));
    let (old, fresh) = ("i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2");
    seed_machine(
        &w,
        RG,
        old,
        ownership_tags("us-east-1", old),
        Some("2026-01-01T00:00:00.000Z"),
    );
    seed_machine(&w, RG, fresh, ownership_tags("us-east-1", fresh), None);
    let run = run_json(&w, &["run"], &config("\"us-east-1\"", ""));
    assert_eq!(row(&run, old)["status"], "offboarded", "{run:#}");
    assert_eq!(
        row(&run, fresh)["status"],
        "terminated",
        "in grace: {run:#}"
    );
    assert!(!has_machine(&w, RG, old));
    assert!(has_machine(&w, RG, fresh));
}

#[test]
fn a_region_that_could_not_be_observed_deletes_nothing() {
    let w = World::start();
    let ids = seed(&w, &[("us-east-1", "east"), ("eu-west-1", "west")]);
    let (east, west) = (&ids[0], &ids[1]);
    let both = config("\"us-east-1\", \"eu-west-1\"", "delete_after = \"0s\"");
    onboard(&w, &both);
    terminate(&w, east);
    terminate(&w, west);
    w.aws.faults(
        json!([{"operation": "ec2:DescribeInstances", "region": "eu-west-1",
                         "code": "UnauthorizedOperation"}]),
    );
    let out = w.run(&["run", "--output", "json"], &w.config(&both));
    let run = out.json();
    assert_eq!(row(&run, east)["status"], "offboarded", "{run:#}");
    assert!(
        run["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["instance_id"] != west.as_str()),
        "{run:#}"
    );
    assert!(
        run["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["region"] == "eu-west-1"),
        "{run:#}"
    );
    assert!(
        has_machine(&w, RG, west),
        "the unobserved region's machine survives"
    );
    assert!(!has_machine(&w, RG, east));
}

#[test]
fn a_failed_deletion_is_failed_with_step_offboard() {
    let w = World::start();
    let ids = seed(&w, &[("us-east-1", "doomed")]);
    let now = config("\"us-east-1\"", "delete_after = \"0s\"");
    onboard(&w, &now);
    terminate(&w, &ids[0]);
    w.azure.control(
        "POST",
        "/_stub/config",
        Some(&json!({"fail_delete": {"status": 409, "code": "Conflict", "message": "busy"}})),
    );
    let out = w.run(&["run", "--output", "json"], &w.config(&now));
    assert_eq!(out.code, 1, "{}", out.stderr);
    let r = row(&out.json(), &ids[0]).clone();
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(r["failure"]["step"], "offboard");
    assert_eq!(r["failure"]["code"], "Conflict");
    assert!(has_machine(&w, RG, &ids[0]));
}

/// A termination event makes the daemon delete the machine within seconds (`delete_after = "0s"`),
/// though both schedules are an hour apart; `status` and the metrics show it.
#[test]
fn a_termination_event_deletes_the_machine_within_30_seconds() {
    let w = World::start();
    let ids = seed(&w, &[("us-east-1", "doomed")]);
    let doomed = &ids[0];
    let base = config("\"us-east-1\"", "delete_after = \"0s\"");
    onboard(&w, &base);
    let queue = w.aws.control(
        "POST",
        "/_emulator/events",
        Some(&json!({"create_queue": "arc-onboard-events", "region": "us-east-1"})),
    );
    let url = queue["queue_url"].as_str().unwrap();
    let daemon_config = format!(
        "{base}[iam]\nauto_assignment_interval = \"1 hour\"\n[onboarding]\nsync_interval = \"1 hour\"\n\
         [events]\nqueue_url = \"{url}\"\n"
    );
    let d = w.daemon(&daemon_config, &[], None);
    // The first passes run at start: wait for them, so the deletion below is the event's.
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.log().matches("\"pass finished\"").count() < 2 {
        assert!(Instant::now() < deadline, "no passes: {}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(has_machine(&w, RG, doomed));
    let terminated = Instant::now();
    terminate(&w, doomed);
    while has_machine(&w, RG, doomed) {
        assert!(
            terminated.elapsed() < Duration::from_secs(30),
            "not deleted within 30 s; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("deleted {:?} after the termination", terminated.elapsed());
    let status = d.wait_for("offboarded in status", Duration::from_secs(10), |s| {
        common::status_of(s, doomed).is_some_and(|i| i["status"] == "offboarded")
    });
    assert!(status.to_string().contains("offboarded"));
    assert_eq!(deletes(&w).len(), 1, "{:?}", deletes(&w));
}
