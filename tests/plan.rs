//! `arc-onboard plan` against the AWS emulator: the right actions and statuses per instance, no mutating
//! call, and API counts that match what the emulator saw.

mod common;

use common::{actions, fleet_with, row, Emulator, ACCOUNT};
use serde_json::{json, Value};

fn fleet() -> Value {
    let tagged = |name: &str| json!({"Name": name, "arc": "onboard"});
    fleet_with(json!([
        {"region": "us-east-1", "platform": "linux", "tags": tagged("ready"), "instance_profile": "AppProfile"},
        {"region": "us-east-1", "platform": "windows", "tags": tagged("win-bare")},
        {"region": "us-east-1", "platform": "linux", "tags": tagged("legacy"), "instance_profile": "LegacyProfile"},
        {"region": "us-east-1", "platform": "linux", "tags": tagged("empty"), "instance_profile": "EmptyProfile"},
        {"region": "us-east-1", "platform": "linux", "state": "stopped", "tags": tagged("stopped")},
        {"region": "us-east-1", "platform": "linux", "tags": {"Name": "untagged"}, "instance_profile": "AppProfile"},
        {"region": "us-east-1", "platform": "linux", "state": "terminated", "tags": tagged("gone")},
        {"region": "eu-west-1", "platform": "windows", "tags": tagged("win-ready"), "instance_profile": "AppProfile"},
        {"region": "eu-west-1", "platform": "linux", "tags": tagged("legacy-eu"), "instance_profile": "LegacyProfile"},
        {"region": "eu-west-1", "platform": "linux", "state": "stopped", "tags": {"Name": "untagged-stopped"}}
    ]))
}

const CONFIG: &str = r#"
[aws]
regions = ["us-east-1", "eu-west-1"]
tag_filter = { key = "arc", value = "onboard" }
"#;

fn ids(seeded: &[Value]) -> Vec<String> {
    seeded
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn plan_reports_every_instance_and_changes_nothing() {
    let emu = Emulator::start();
    let id = ids(&emu.seed(&fleet()));
    emu.reset_calls();

    let out = emu.run(&["plan", "--output", "json"], CONFIG);
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    let report = out.json();
    assert_eq!(report["mode"], "plan");
    assert_eq!(
        report["accounts"],
        json!([{"account_id": ACCOUNT, "actions": ["create-ssm-role"], "ssm_role_steps": {
        "create_role": true, "attach_policy": true, "create_profile": true, "add_role_to_profile": true}}])
    );

    // No [azure] section: what would get the agent is `unverified` (Azure was not asked).
    let expect: [(usize, &[&str], &str); 7] = [
        (0, &["install-agent"], "unverified"),
        (
            1,
            &["associate-instance-profile", "install-agent"],
            "unverified",
        ),
        (2, &["attach-role-policy", "install-agent"], "unverified"),
        (
            3,
            &["add-role-to-instance-profile", "install-agent"],
            "unverified",
        ),
        (4, &["associate-instance-profile"], "not-running"),
        (7, &["install-agent"], "unverified"),
        (8, &["attach-role-policy", "install-agent"], "unverified"),
    ];
    let rows = report["instances"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        expect.len(),
        "only tagged, non-terminated instances: {rows:#?}"
    );
    for (n, want_actions, want_status) in expect {
        let r = row(&report, &id[n]);
        assert_eq!(actions(r), want_actions, "instance #{n}: {r}");
        assert_eq!(r["status"], want_status, "instance #{n}: {r}");
        assert_eq!(r["account_id"], ACCOUNT);
        assert!(!r["detail"].as_str().unwrap().is_empty());
    }
    for n in [5, 6, 9] {
        assert!(
            rows.iter().all(|r| r["instance_id"] != id[n].as_str()),
            "#{n} must be filtered out"
        );
    }
    // Fields.
    let ready = row(&report, &id[0]);
    assert_eq!(ready["region"], "us-east-1");
    assert_eq!(ready["name"], "ready");
    assert_eq!(ready["platform"], "linux");
    assert_eq!(ready["state"], "running");
    assert_eq!(ready["ssm_ping"], "Online");
    assert_eq!(
        ready["instance_profile"],
        format!("arn:aws:iam::{ACCOUNT}:instance-profile/AppProfile")
    );
    let bare = row(&report, &id[1]);
    assert_eq!(bare["platform"], "windows");
    assert_eq!(bare["ssm_ping"], Value::Null);
    assert_eq!(bare["instance_profile"], Value::Null);
    assert_eq!(row(&report, &id[7])["platform"], "windows");
    assert_eq!(row(&report, &id[7])["region"], "eu-west-1");
    assert_eq!(row(&report, &id[4])["state"], "stopped");

    // Nothing was changed, and the report's counts are the emulator's.
    assert!(
        emu.mutating_calls().is_empty(),
        "{:#?}",
        emu.mutating_calls()
    );
    let counts = emu.counts();
    let reported = report["summary"]["api_calls"].as_object().unwrap();
    assert_eq!(reported, &counts, "report vs emulator");
    let expected_counts = json!({
        "sts:GetCallerIdentity": 1,
        "ec2:DescribeInstances": 2,
        "ec2:DescribeIamInstanceProfileAssociations": 2,
        "ssm:DescribeInstanceInformation": 2,
        "ssm:ListCommands": 2,
        "ssm:GetServiceSetting": 1,
        "iam:GetInstanceProfile": 4,
        "iam:GetRole": 1,
        "iam:ListAttachedRolePolicies": 2
    });
    assert_eq!(
        Value::Object(counts),
        expected_counts,
        "one lookup per profile and role, not per instance"
    );
    assert_eq!(report["summary"]["instances"], 7);
    assert_eq!(
        report["summary"]["by_status"],
        json!({"unverified": 6, "not-running": 1})
    );
}

#[test]
fn table_output_and_run_dry_run_render_the_same_plan() {
    let emu = Emulator::start();
    let id = ids(&emu.seed(&fleet()));
    let table = emu.run(&["plan"], CONFIG);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.contains("plan (dry run: nothing was changed)"));
    assert!(table
        .stdout
        .contains("account 123456789012: account actions: create-ssm-role"));
    for n in [0, 1, 2, 3, 4, 7, 8] {
        let line = table
            .stdout
            .lines()
            .find(|l| l.contains(&id[n]))
            .unwrap_or_else(|| panic!("#{n} missing"));
        assert!(
            line.contains("us-east-1") || line.contains("eu-west-1"),
            "{line}"
        );
    }
    assert!(table
        .stdout
        .contains("associate-instance-profile,install-agent"));
    assert!(table.stdout.contains("API calls: "));

    let plan = emu.run(&["plan", "--output", "json"], CONFIG).json();
    let dry = emu
        .run(&["run", "--dry-run", "--output", "json"], CONFIG)
        .json();
    assert_eq!(dry["mode"], "plan");
    assert_eq!(plan["instances"], dry["instances"]);
    assert_eq!(plan["accounts"], dry["accounts"]);
    assert!(emu.mutating_calls().is_empty());
}

#[test]
fn tag_key_filter_and_no_filter() {
    let emu = Emulator::start();
    let id = ids(&emu.seed(&fleet()));
    let key_only = "[aws]\nregions = [\"us-east-1\"]\ntag_filter = { key = \"Name\" }\n";
    let report = emu.run(&["plan", "--output", "json"], key_only).json();
    // Every us-east-1 instance has a Name tag; terminated ones never appear.
    assert_eq!(report["summary"]["instances"], 6);
    row(&report, &id[5]);
    let calls = emu.calls();
    let describe = calls
        .iter()
        .find(|c| c["operation"] == "ec2:DescribeInstances")
        .unwrap();
    let params = describe["params"].to_string();
    assert!(
        params.contains("tag-key"),
        "filter pushed to the server: {params}"
    );

    let all = "[aws]\nregions = [\"us-east-1\", \"eu-west-1\"]\n";
    let report = emu.run(&["plan", "--output", "json"], all).json();
    assert_eq!(report["summary"]["instances"], 9);
    assert_eq!(row(&report, &id[9])["status"], "not-running");
}

#[test]
fn all_regions_uses_the_enabled_regions() {
    let emu = Emulator::start();
    emu.seed(&fleet());
    emu.reset_calls();
    let out = emu.run(&["plan", "--output", "json"], "[aws]\nall_regions = true\n");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json();
    assert_eq!(report["summary"]["instances"], 9);
    let counts = emu.counts();
    assert_eq!(counts["ec2:DescribeRegions"], 1);
    let regions = counts["ec2:DescribeInstances"].as_u64().unwrap();
    assert!(
        regions > 10,
        "every enabled region is scanned, got {regions}"
    );
    // Regions the account has not opted in to are skipped.
    let asked: Vec<String> = emu
        .calls()
        .iter()
        .filter(|c| c["operation"] == "ec2:DescribeInstances")
        .map(|c| c["region"].as_str().unwrap().to_string())
        .collect();
    assert!(!asked.contains(&"ap-east-1".to_string()), "{asked:?}");
    assert!(asked.contains(&"af-south-1".to_string()), "{asked:?}");
}

#[test]
fn an_unreachable_region_is_reported_and_fails_the_exit_code() {
    let emu = Emulator::start();
    let id = ids(&emu.seed(&fleet()));
    emu.faults(json!([{"operation": "ec2:DescribeInstances", "region": "eu-west-1", "code": "UnauthorizedOperation",
        "message": "You are not authorized to perform this operation."}]));
    let out = emu.run(&["plan", "--output", "json"], CONFIG);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let report = out.json();
    assert_eq!(report["errors"][0]["region"], "eu-west-1");
    assert_eq!(report["errors"][0]["code"], "UnauthorizedOperation");
    row(&report, &id[0]);
    assert_eq!(report["summary"]["instances"], 5);

    emu.faults(json!([{"operation": "ec2:DescribeInstances", "code": "UnauthorizedOperation"}]));
    let out = emu.run(&["plan", "--output", "json"], CONFIG);
    assert_eq!(out.code, 2, "no region reachable: {}", out.stderr);
}

#[test]
fn no_credentials_is_exit_2_before_any_instance() {
    let emu = Emulator::start();
    emu.faults(
        json!([{"operation": "sts:GetCallerIdentity", "code": "InvalidClientTokenId",
        "message": "The security token included in the request is invalid."}]),
    );
    let out = emu.run(&["plan"], CONFIG);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("cannot identify the AWS account"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("InvalidClientTokenId"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
}
