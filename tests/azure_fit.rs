//! Fitting the enterprise's Azure and AWS, through the real binary against the AWS emulator and the Azure
//! stub: duplicates found by Azure Resource Graph before any install (Defender for Cloud's machines),
//! Resource Graph refused or paged, the agent version from ARM, SSM's Default Host Management
//! Configuration, and case-insensitive tag matching.

mod common;

use common::{fleet_with, row, World};
use serde_json::{json, Value};

const ONE_REGION: &str = "[aws]\nregions = [\"us-east-1\"]\n";
const OTHER_SUB: &str = "11111111-2222-3333-4444-555555555555";
const DHMC_ROLE: &str = "service-role/AWSSystemsManagerDefaultEC2InstanceManagementRole";

fn seed(w: &World, fleet: &Value) -> Vec<String> {
    w.aws.seed_ids(fleet)
}

fn ready(count: usize) -> Value {
    fleet_with(json!([{"region": "us-east-1", "count": count, "instance_profile": "AppProfile"}]))
}

fn defender(w: &World, instance_id: &str, subscription: Option<&str>) -> Value {
    let mut body = json!({"instance_id": instance_id, "account_id": common::ACCOUNT});
    if let Some(s) = subscription {
        body["subscription_id"] = json!(s);
    }
    w.azure
        .control("POST", "/_stub/machines/defender", Some(&body))
}

fn json_of(w: &World, args: &[&str], config: &str) -> (i32, Value, String) {
    let out = w.run(args, &w.config(config));
    assert!(
        out.code == 0 || out.code == 1,
        "exit {}: {}",
        out.code,
        out.stderr
    );
    (out.code, out.json(), out.stderr)
}

/// `run` with short waits.
const RUN: [&str; 7] = [
    "run",
    "--output",
    "json",
    "--wait-for-ssm",
    "30s",
    "--verify-timeout",
    "20s",
];

fn run_json(w: &World, config: &str) -> (i32, Value, String) {
    json_of(w, &RUN, config)
}

/// Instance ids the emulator received a `SendCommand` for.
fn commanded(w: &World) -> Vec<String> {
    w.aws.control("GET", "/_emulator/commands", None)["commands"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["instance_ids"].as_array().cloned().unwrap_or_default())
        .map(|i| i.as_str().unwrap().to_string())
        .collect()
}

fn graph_requests(w: &World) -> usize {
    w.azure
        .requests()
        .iter()
        .filter(|r| {
            r["path"].as_str().is_some_and(|p| {
                p.to_ascii_lowercase()
                    .ends_with("/microsoft.resourcegraph/resources")
            })
        })
        .count()
}

#[test]
fn a_defender_machine_makes_its_instance_connected_elsewhere_and_run_sends_it_nothing() {
    let w = World::start();
    let ids = seed(&w, &ready(3));
    let dup = &ids[1];
    let machine = defender(&w, dup, Some(OTHER_SUB));
    let arc_id = format!(
        "/subscriptions/{OTHER_SUB}/resourceGroups/defender-aws-connector/providers/Microsoft.HybridCompute/machines/{dup}"
    );
    assert_eq!(machine["tags"]["InstanceId"], dup.as_str());

    let (code, plan, _) = json_of(&w, &["plan", "--output", "json"], ONE_REGION);
    assert_eq!(code, 0);
    let r = row(&plan, dup);
    assert_eq!(r["status"], "connected-elsewhere", "{r}");
    assert_eq!(r["actions"], json!([]));
    assert_eq!(r["arc_resource_id"], arc_id.as_str());
    assert!(
        r["detail"].as_str().unwrap().contains("Resource Graph"),
        "{r}"
    );
    for other in [&ids[0], &ids[2]] {
        assert_eq!(row(&plan, other)["status"], "planned");
    }
    assert_eq!(plan["summary"]["api_calls"]["arm:ResourceGraph"], 1);
    assert_eq!(graph_requests(&w), 1);

    let (code, report, stderr) = run_json(&w, ONE_REGION);
    assert_eq!(code, 0, "{stderr}");
    let r = row(&report, dup);
    assert_eq!(r["status"], "connected-elsewhere", "{r}");
    assert_eq!(r["arc_resource_id"], arc_id.as_str());
    for other in [&ids[0], &ids[2]] {
        let o = row(&report, other);
        assert_eq!(o["status"], "onboarded", "{o}");
        assert_eq!(o["agent_version"], "1.50", "{o}");
    }
    // The duplicate got no command and no machine of ours; the others did.
    let sent = commanded(&w);
    assert!(!sent.contains(dup), "{sent:?}");
    assert!(sent.contains(&ids[0]) && sent.contains(&ids[2]), "{sent:?}");
    let connected: Vec<Value> = w
        .azure
        .connects()
        .iter()
        .map(|c| c["instance_id"].clone())
        .collect();
    assert!(!connected.contains(&json!(dup)), "{connected:?}");
    // A second plan shows the others already onboarded with the agent version ARM reports.
    let (_, again, _) = json_of(&w, &["plan", "--output", "json"], ONE_REGION);
    assert_eq!(row(&again, &ids[0])["status"], "already-onboarded");
    assert_eq!(row(&again, &ids[0])["agent_version"], "1.50");
    assert_eq!(row(&again, dup)["status"], "connected-elsewhere");
    let table = w.run(&["plan"], &w.config(ONE_REGION));
    assert!(table.stdout.contains("AGENT"), "{}", table.stdout);
}

#[test]
fn a_machine_tagged_with_the_instance_id_in_another_group_is_a_duplicate_and_ours_is_not() {
    let w = World::start();
    let ids = seed(&w, &ready(3));
    // Same subscription, another group, another name, the instance id in its InstanceId tag.
    w.azure.control(
        "POST",
        "/_stub/machines/elsewhere",
        Some(&json!({"resource_group": "it-servers", "name": "web-01", "tags": {"InstanceId": ids[0]}})),
    );
    // A machine in our own group is not a duplicate: it is ours.
    w.azure.control(
        "POST",
        "/_stub/machines",
        Some(&json!({"resource_group": format!("aws_{}", common::ACCOUNT), "name": ids[1], "location": "eastus"})),
    );
    let (_, plan, _) = json_of(&w, &["plan", "--output", "json"], ONE_REGION);
    assert_eq!(row(&plan, &ids[0])["status"], "connected-elsewhere");
    assert!(row(&plan, &ids[0])["arc_resource_id"]
        .as_str()
        .unwrap()
        .ends_with("/resourceGroups/it-servers/providers/Microsoft.HybridCompute/machines/web-01"));
    assert_eq!(row(&plan, &ids[1])["status"], "already-onboarded");
    assert_eq!(row(&plan, &ids[2])["status"], "planned");
}

#[test]
fn a_refused_resource_graph_is_warned_once_and_the_run_goes_on_as_before() {
    let w = World::start();
    let management = seed(&w, &ready(2));
    w.aws.control(
        "POST",
        "/_emulator/organization",
        Some(&json!({"management_account_id": common::ACCOUNT, "accounts": [{"id": "222222222222"}]})),
    );
    let mut member = ready(2);
    member["account_id"] = json!("222222222222");
    let member = seed(&w, &member);
    defender(&w, &management[0], Some(OTHER_SUB));
    w.azure.control(
        "POST",
        "/_stub/config",
        Some(&json!({"graph_denied": true})),
    );
    // One account after the other, so the second would ask after the first was refused.
    let config = "[aws]\nregions = [\"us-east-1\"]\n[aws.accounts]\nsource = \"organization\"\nmax_concurrent_accounts = 1\n";
    let (code, report, stderr) = run_json(&w, config);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stderr
            .matches("Azure Resource Graph is not permitted")
            .count(),
        1,
        "{stderr}"
    );
    assert_eq!(graph_requests(&w), 1, "asked again after the refusal");
    // As today: without Resource Graph the Defender machine is not seen, and everyone is onboarded.
    for id in management.iter().chain(&member) {
        assert_eq!(row(&report, id)["status"], "onboarded", "{id}");
    }
}

#[test]
fn resource_graph_pages_are_followed() {
    let w = World::start();
    let ids = seed(&w, &ready(5));
    for id in &ids[..4] {
        defender(&w, id, Some(OTHER_SUB));
    }
    w.azure.control(
        "POST",
        "/_stub/config",
        Some(&json!({"graph_page_size": 3})),
    );
    let (_, plan, _) = json_of(&w, &["plan", "--output", "json"], ONE_REGION);
    for id in &ids[..4] {
        assert_eq!(row(&plan, id)["status"], "connected-elsewhere", "{id}");
    }
    assert_eq!(row(&plan, &ids[4])["status"], "planned");
    assert_eq!(plan["summary"]["api_calls"]["arm:ResourceGraph"], 2);
    assert_eq!(graph_requests(&w), 2);
}

fn associations(w: &World) -> usize {
    w.aws
        .counts()
        .get("ec2:AssociateIamInstanceProfile")
        .and_then(Value::as_u64)
        .unwrap_or(0) as usize
}

#[test]
fn with_dhmc_on_no_profile_is_associated_and_the_instances_are_onboarded_through_it() {
    let w = World::start();
    let ids = seed(
        &w,
        &fleet_with(json!([
            {"region": "us-east-1", "count": 2},
            {"region": "us-east-1", "instance_profile": "AppProfile"}
        ])),
    );
    w.aws.control(
        "POST",
        "/_emulator/service-settings",
        Some(&json!({"region": "us-east-1", "value": DHMC_ROLE})),
    );
    let (_, plan, _) = json_of(&w, &["plan", "--output", "json"], ONE_REGION);
    for id in &ids[..2] {
        let r = row(&plan, id);
        assert_eq!(r["actions"], json!(["install-agent"]), "{r}");
        assert!(
            r["detail"]
                .as_str()
                .unwrap()
                .contains("Default Host Management Configuration"),
            "{r}"
        );
    }
    // No instance needs the SSM role: it is not created.
    assert_eq!(
        plan["accounts"][0]["actions"],
        json!(["create-resource-group"])
    );
    assert_eq!(plan["summary"]["api_calls"]["ssm:GetServiceSetting"], 1);
    let (code, report, stderr) = run_json(&w, ONE_REGION);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(associations(&w), 0);
    for id in &ids {
        assert_eq!(row(&report, id)["status"], "onboarded", "{id}");
    }
}

#[test]
fn with_dhmc_off_instances_without_a_profile_get_one_as_before() {
    let w = World::start();
    let ids = seed(
        &w,
        &fleet_with(json!([{"region": "us-east-1", "count": 2}])),
    );
    let (_, plan, _) = json_of(&w, &["plan", "--output", "json"], ONE_REGION);
    for id in &ids {
        assert_eq!(
            row(&plan, id)["actions"],
            json!(["associate-instance-profile", "install-agent"])
        );
    }
    assert_eq!(plan["summary"]["api_calls"]["ssm:GetServiceSetting"], 1);
    let (_, _report, stderr) = run_json(&w, ONE_REGION);
    assert_eq!(associations(&w), 2, "{stderr}");
}

#[test]
fn the_tag_filter_ignores_case_unless_told_not_to() {
    let w = World::start();
    let tagged = |tags: Value| json!({"region": "us-east-1", "instance_profile": "AppProfile", "tags": tags});
    let ids = seed(
        &w,
        &fleet_with(json!([
            tagged(json!({"arc": "onboard"})),
            tagged(json!({"ARC": "Onboard"})),
            tagged(json!({"Arc": "other"})),
            tagged(json!({"arcx": "onboard"})),
            tagged(json!({"Arc-Onboarding-Group": "WEB"})),
            tagged(json!({"arc-onboarding-grouP": "web"})),
            tagged(json!({"arc-onboarding-grou": "web"}))
        ])),
    );
    let listed = |config: &str| -> Vec<String> {
        let (_, plan, _) = json_of(&w, &["plan", "--output", "json"], config);
        let mut got: Vec<String> = plan["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["instance_id"].as_str().unwrap().to_string())
            .collect();
        got.sort();
        got
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let short = |extra: &str| {
        format!("[aws]\nregions = [\"us-east-1\"]\ntag_filter = {{ key = \"Arc\", value = \"ONBOARD\"{extra} }}\n")
    };
    assert_eq!(
        listed(&short("")),
        sorted(vec![ids[0].clone(), ids[1].clone()])
    );
    assert_eq!(
        listed(&short(", case_sensitive = true")),
        Vec::<String>::new()
    );
    // A long key goes to EC2 as a wildcard pattern; the match is still exact but for case.
    let long =
        "[aws]\nregions = [\"us-east-1\"]\ntag_filter = { key = \"ARC-onboarding-group\" }\n";
    assert_eq!(listed(long), sorted(vec![ids[4].clone(), ids[5].clone()]));
    // The listing stayed one page per query: the filter went to EC2, not a full scan.
    assert_eq!(w.aws.counts()["ec2:DescribeInstances"], 3);

    let out = w.run(&["validate"], &w.config(&short("")));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("case_sensitive = false"),
        "{}",
        out.stdout
    );
}
