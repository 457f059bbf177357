//! `arc-onboard run`, IAM part, against the AWS emulator: the right associations and policy attachments,
//! nothing forbidden, idempotence, role creation with propagation delay, throttling and access denied.

mod common;

use std::collections::BTreeMap;

use common::{fleet_with, row, Emulator, World, ACCOUNT};
use serde_json::{json, Value};

const SSM_PROFILE_ARN: &str =
    "arn:aws:iam::123456789012:instance-profile/AzureArcForServerSSMInstanceProfile";

const CONFIG: &str = "[aws]\nregions = [\"us-east-1\", \"eu-west-1\"]\n";

/// #0 no profile, #1 role lacks the policy, #2 correct, #3 profile without role, #4 stopped without profile,
/// #5 eu-west-1 no profile (windows), #6 eu-west-1 correct.
fn fleet() -> Value {
    fleet_with(json!([
        {"region": "us-east-1", "tags": {"Name": "bare"}},
        {"region": "us-east-1", "tags": {"Name": "legacy"}, "instance_profile": "LegacyProfile"},
        {"region": "us-east-1", "tags": {"Name": "good"}, "instance_profile": "AppProfile"},
        {"region": "us-east-1", "tags": {"Name": "empty"}, "instance_profile": "EmptyProfile"},
        {"region": "us-east-1", "state": "stopped", "tags": {"Name": "stopped"}},
        {"region": "eu-west-1", "platform": "windows", "tags": {"Name": "win-bare"}},
        {"region": "eu-west-1", "tags": {"Name": "good-eu"}, "instance_profile": "AppProfile"}
    ]))
}

fn seeded(emu: &Emulator, fleet: &Value) -> Vec<String> {
    let ids = emu
        .seed(fleet)
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_string())
        .collect();
    emu.reset_calls();
    ids
}

/// Successful calls of `operation`, as (param value of `key`).
fn ok_calls(emu: &Emulator, operation: &str, key: &str) -> Vec<String> {
    emu.calls()
        .iter()
        .filter(|c| c["operation"] == operation && c["status"] == 200)
        .map(|c| c["params"][key].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `run` against the world; `config` is the `[aws]`/`[iam]` part, the stub's `[azure]` is appended.
fn run(w: &World, config: &str) -> (i32, Value) {
    let out = w.run(
        &[
            "run",
            "--wait-for-ssm",
            "0s",
            "--verify-timeout",
            "20s",
            "--output",
            "json",
        ],
        &w.config(config),
    );
    // 4: nothing onboarded while instances still wait for SSM (no wait here, so that is common).
    assert!(
        [0, 1, 4].contains(&out.code),
        "exit {}: {}",
        out.code,
        out.stderr
    );
    (out.code, out.json())
}

/// The emulator's counts as the report shows them (the report also counts Azure calls).
fn aws_counts(report: &Value) -> serde_json::Map<String, Value> {
    report["summary"]["api_calls"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.starts_with("azure:") && !k.starts_with("arm:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn run_fixes_exactly_what_is_missing_and_a_second_run_changes_nothing() {
    let w = World::start();
    let emu = &w.aws;
    let id = seeded(emu, &fleet());
    let (code, report) = run(&w, CONFIG);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["mode"], "run");
    assert_eq!(
        report["accounts"][0]["actions"],
        json!(["create-ssm-role", "create-resource-group"])
    );

    // Exactly the expected changes.
    assert_eq!(
        sorted(ok_calls(
            emu,
            "ec2:AssociateIamInstanceProfile",
            "InstanceId"
        )),
        sorted(vec![id[0].clone(), id[4].clone(), id[5].clone()])
    );
    assert_eq!(
        sorted(ok_calls(emu, "iam:AttachRolePolicy", "RoleName")),
        ["AzureArcForServerSSM", "LegacyRole"]
    );
    assert_eq!(
        sorted(ok_calls(
            emu,
            "iam:AddRoleToInstanceProfile",
            "InstanceProfileName"
        )),
        ["AzureArcForServerSSMInstanceProfile", "EmptyProfile"]
    );
    assert_eq!(
        ok_calls(emu, "iam:CreateRole", "RoleName"),
        ["AzureArcForServerSSM"]
    );
    assert_eq!(
        ok_calls(emu, "iam:CreateInstanceProfile", "InstanceProfileName"),
        ["AzureArcForServerSSMInstanceProfile"]
    );
    // What it creates is tagged as its own.
    let create_role = emu
        .calls()
        .into_iter()
        .find(|c| c["operation"] == "iam:CreateRole")
        .unwrap();
    assert_eq!(
        create_role["params"]["Tags.member.1.Key"],
        "arc-onboard:managed"
    );
    assert!(create_role["params"]["AssumeRolePolicyDocument"]
        .as_str()
        .unwrap()
        .contains("ec2.amazonaws.com"));
    // Instances with correct IAM are named by no IAM or EC2 change.
    for c in emu
        .mutating_calls()
        .into_iter()
        .filter(|c| c["service"] != "ssm")
    {
        let params = c["params"].to_string();
        assert!(
            !params.contains(&id[2]) && !params.contains(&id[6]),
            "touched a correct instance: {c}"
        );
    }
    // Statuses: nothing is left "planned"; the stopped one stays not-running.
    assert_eq!(row(&report, &id[4])["status"], "not-running");
    for r in report["instances"].as_array().unwrap() {
        assert_ne!(r["status"], "planned", "{r}");
        assert_ne!(r["status"], "failed", "{r}");
    }
    // The report's counts are the emulator's.
    assert_eq!(aws_counts(&report), emu.counts());

    // A plan now shows no IAM work, and a second run makes no mutating call.
    let plan = emu.run(&["plan", "--output", "json"], CONFIG).json();
    assert_eq!(plan["accounts"][0]["actions"], json!([]));
    for r in plan["instances"].as_array().unwrap() {
        let acts: Vec<&str> = r["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(acts.iter().all(|a| *a == "install-agent"), "{r}");
        assert!(!r["instance_profile"].is_null(), "{r}");
    }
    assert_eq!(row(&plan, &id[0])["instance_profile"], SSM_PROFILE_ARN);
    assert_eq!(row(&plan, &id[0])["ssm_ping"], "Online");
    emu.reset_calls();
    let (code, _) = run(&w, CONFIG);
    assert_eq!(code, 0);
    assert!(
        emu.mutating_calls().is_empty(),
        "second run changed something: {:#?}",
        emu.mutating_calls()
    );
}

#[test]
fn forbidden_changes_are_reported_not_made() {
    let w = World::start();
    let emu = &w.aws;
    let id = seeded(emu, &fleet());
    let no_update = format!("{CONFIG}[iam]\npolicy_update_allowed = false\n");
    let (code, report) = run(&w, &no_update);
    assert_eq!(code, 0);
    assert_eq!(row(&report, &id[1])["status"], "needs-manual-iam");
    assert_eq!(row(&report, &id[3])["status"], "needs-manual-iam");
    assert!(ok_calls(emu, "iam:AttachRolePolicy", "RoleName")
        .iter()
        .all(|r| r != "LegacyRole"));
    assert!(
        ok_calls(emu, "iam:AddRoleToInstanceProfile", "InstanceProfileName")
            .iter()
            .all(|p| p != "EmptyProfile")
    );
    // Giving the SSM profile to instances without one is still allowed.
    assert_eq!(
        ok_calls(emu, "ec2:AssociateIamInstanceProfile", "InstanceId").len(),
        3
    );

    let w = World::start();
    let emu = &w.aws;
    let id = seeded(emu, &fleet());
    let no_auto = format!("{CONFIG}[iam]\nauto_assignment = false\n");
    let (code, report) = run(&w, &no_auto);
    assert_eq!(code, 0);
    let iam_changes: Vec<Value> = emu
        .mutating_calls()
        .into_iter()
        .filter(|c| c["service"] != "ssm")
        .collect();
    assert!(iam_changes.is_empty(), "{iam_changes:#?}");
    for n in [0, 1, 3, 5] {
        assert_eq!(row(&report, &id[n])["status"], "needs-manual-iam", "#{n}");
    }
    assert_eq!(row(&report, &id[4])["status"], "not-running");
    assert_eq!(
        row(&report, &id[2])["status"],
        "onboarded",
        "already Online: installed"
    );
    assert_eq!(
        report["accounts"][0]["actions"],
        json!(["create-resource-group"])
    );
}

#[test]
fn a_new_profile_is_retried_until_ec2_accepts_it() {
    let w = World::start();
    let emu = &w.aws;
    emu.configure(json!({"profile_propagation_seconds": 3}));
    let id = seeded(
        emu,
        &json!({"instances": [{"region": "us-east-1"}, {"region": "us-east-1"}]}),
    );
    let (code, report) = run(&w, "[aws]\nregions = [\"us-east-1\"]\n");
    assert_eq!(code, 0, "{report:#}");
    let assoc: Vec<Value> = emu
        .calls()
        .into_iter()
        .filter(|c| c["operation"] == "ec2:AssociateIamInstanceProfile")
        .collect();
    assert!(
        assoc.iter().any(|c| c["status"] == 400),
        "the propagation window was hit: {assoc:#?}"
    );
    assert_eq!(
        sorted(ok_calls(
            emu,
            "ec2:AssociateIamInstanceProfile",
            "InstanceId"
        )),
        sorted(id.clone())
    );
    assert_eq!(ok_calls(emu, "iam:CreateRole", "RoleName").len(), 1);
    for i in &id {
        assert_ne!(row(&report, i)["status"], "failed");
    }
}

#[test]
fn throttled_associations_all_land_exactly_once() {
    let w = World::start();
    let emu = &w.aws;
    let id = seeded(
        emu,
        &json!({"instances": [{"region": "us-east-1", "count": 20}]}),
    );
    emu.faults(json!([{"operation": "ec2:AssociateIamInstanceProfile", "rate": 0.3, "code": "RequestLimitExceeded",
        "message": "Request limit exceeded."}]));
    let out = w.run_env(
        &["run", "--wait-for-ssm", "0s", "--output", "json"],
        &w.config("[aws]\nregions = [\"us-east-1\"]\n"),
        &[("AWS_MAX_ATTEMPTS", "10")],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let calls = emu.calls();
    let throttled = calls
        .iter()
        .filter(|c| {
            c["operation"] == "ec2:AssociateIamInstanceProfile"
                && c["fault"] == "RequestLimitExceeded"
        })
        .count();
    assert!(throttled > 0, "faults were injected");
    let mut landed: BTreeMap<String, usize> = BTreeMap::new();
    for i in ok_calls(emu, "ec2:AssociateIamInstanceProfile", "InstanceId") {
        *landed.entry(i).or_default() += 1;
    }
    assert_eq!(landed.len(), id.len(), "every instance associated");
    assert!(landed.values().all(|n| *n == 1), "none twice: {landed:?}");
    // The SDK retried: the report counts every attempt, like the emulator.
    let report = out.json();
    let attempts = calls
        .iter()
        .filter(|c| c["operation"] == "ec2:AssociateIamInstanceProfile")
        .count() as u64;
    assert_eq!(
        report["summary"]["api_calls"]["ec2:AssociateIamInstanceProfile"],
        attempts
    );
}

#[test]
fn access_denied_in_one_region_fails_only_that_region() {
    let w = World::start();
    let emu = &w.aws;
    let id = seeded(emu, &fleet());
    emu.faults(json!([{"operation": "ec2:AssociateIamInstanceProfile", "region": "eu-west-1",
        "code": "UnauthorizedOperation", "message": "You are not authorized to perform this operation."}]));
    let (code, report) = run(&w, CONFIG);
    assert_eq!(code, 1);
    let failed = row(&report, &id[5]);
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains("UnauthorizedOperation"),
        "{failed}"
    );
    assert_eq!(row(&report, &id[6])["region"], "eu-west-1");
    assert_eq!(row(&report, &id[6])["status"], "onboarded");
    assert_eq!(
        sorted(ok_calls(
            emu,
            "ec2:AssociateIamInstanceProfile",
            "InstanceId"
        )),
        sorted(vec![id[0].clone(), id[4].clone()])
    );
    assert_eq!(report["summary"]["by_status"]["failed"], 1);
    assert_eq!(report["instances"][0]["account_id"], ACCOUNT);
}

#[test]
fn run_waits_for_ssm_registration_within_the_bound() {
    let w = World::start();
    let emu = &w.aws;
    emu.configure(json!({"registration_delay_seconds": 2}));
    let id = seeded(emu, &json!({"instances": [{"region": "us-east-1"}]}));
    let out = w.run(
        &["run", "--wait-for-ssm", "1m", "--output", "json"],
        &w.config("[aws]\nregions = [\"us-east-1\"]\n"),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json();
    assert_eq!(row(&report, &id[0])["ssm_ping"], "Online", "{report:#}");
    assert_eq!(row(&report, &id[0])["status"], "onboarded", "{report:#}");
    assert!(
        emu.counts()["ssm:DescribeInstanceInformation"]
            .as_u64()
            .unwrap()
            >= 2,
        "polled"
    );

    // With no wait, the same situation ends waiting-for-ssm.
    let w = World::start();
    let emu = &w.aws;
    emu.configure(json!({"registration_delay_seconds": 30}));
    let id = seeded(emu, &json!({"instances": [{"region": "us-east-1"}]}));
    let (code, report) = run(&w, "[aws]\nregions = [\"us-east-1\"]\n");
    assert_eq!(row(&report, &id[0])["status"], "waiting-for-ssm");
    assert_eq!(code, 4, "nothing onboarded, one instance waits");
}

#[test]
fn the_example_policies_cover_every_call_the_tool_makes() {
    let w = World::start();
    let emu = &w.aws;
    emu.seed(&fleet());
    emu.reset_calls();
    let plan = emu.run(&["plan", "--output", "json"], "[aws]\nall_regions = true\n");
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let plan_allows = common::allowed_actions("scripts/iam/plan-policy.json");
    for op in emu.counts().keys() {
        assert!(plan_allows.contains(op), "plan-policy.json lacks {op}");
    }
    emu.reset_calls();
    let (_, _) = run(&w, CONFIG);
    let run_allows = common::allowed_actions("scripts/iam/run-policy.json");
    for op in emu.counts().keys() {
        assert!(run_allows.contains(op), "run-policy.json lacks {op}");
    }
    // Creating tagged IAM resources also needs the tagging actions, and associating needs PassRole.
    for extra in ["iam:TagRole", "iam:TagInstanceProfile", "iam:PassRole"] {
        assert!(
            run_allows.iter().any(|a| a == extra),
            "run-policy.json lacks {extra}"
        );
    }
    assert!(
        plan_allows.iter().all(|a| {
            let op = a.split(':').nth(1).unwrap();
            ["Describe", "Get", "List"]
                .iter()
                .any(|p| op.starts_with(p))
        }),
        "the plan policy is read-only"
    );
}
