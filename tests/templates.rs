//! `arc-onboard template NAME`, the real binary: every template passes `cfn-lint`; the member role and the
//! orchestrator policy allow every call `plan`/`run` make against the emulator and the member role
//! nothing more (bar the documented extras); the event rules match the events EventBridge delivers and
//! nothing else; no configured value can break out of its JSON string.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use common::{fleet_with, World};
use serde_json::{json, Value};

/// What one `template` run printed.
struct Printed {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Printed {
    fn json(&self) -> Value {
        assert_eq!(self.code, 0, "{}", self.stderr);
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }
}

/// `arc-onboard template ARGS` with `config` as the configuration file, or with no file at all (run in an
/// empty directory without `--config`, where the default `./arc-onboard.toml` is missing).
fn template(args: &[&str], config: Option<&str>) -> Printed {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arc-onboard"));
    cmd.current_dir(dir.path()).arg("template").args(args);
    if let Some(text) = config {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        cmd.arg("--config").arg(path);
    }
    common::isolate(&mut cmd, dir.path());
    // No emulator: any AWS call would fail (nothing listens there).
    cmd.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    let out = cmd.output().unwrap();
    Printed {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const BASIC: &str = "[aws]\nregions = [\"us-east-1\", \"eu-west-1\"]\n";
const ORG: &str = "[aws]\nregions = [\"us-east-1\"]\n[aws.accounts]\nsource = \"organization\"\nmember_role = \"ArcMember\"\n[iam]\nrole_name = \"MySsmRole\"\ninstance_profile_name = \"MySsmProfile\"\n";
const ORG_EXTERNAL_ID: &str = "[aws]\nregions = [\"us-east-1\"]\n[aws.accounts]\nsource = \"organization\"\nexternal_id = \"s3cr3t-external-id\"\n";
const LIST: &str = "[aws]\nregions = [\"us-east-1\"]\n[aws.accounts]\nsource = \"list\"\nids = [\"111111111111\", \"222222222222\"]\n";
const EVENTS: &str = "[aws]\nregions = [\"eu-west-1\"]\n[aws.accounts]\nsource = \"organization\"\n[events]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/123456789012/arc-events\"\n";

/// cfn-lint from the emulator's virtual environment.
fn cfn_lint() -> PathBuf {
    let python = std::env::var_os("ARC_ONBOARD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo_file(".venv/bin/python"));
    let lint = python.parent().unwrap().join("cfn-lint");
    assert!(
        lint.exists(),
        "{} not found: run scripts/setup-emulator",
        lint.display()
    );
    lint
}

/// Lints templates in one cfn-lint run; panics with its findings unless it found nothing (errors,
/// warnings or informational).
fn assert_lint_clean(templates: &[(String, Value)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    let mut index = String::new();
    for (n, (what, template)) in templates.iter().enumerate() {
        let path = dir.path().join(format!("t{n}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(template).unwrap()).unwrap();
        index.push_str(&format!("t{n}.json: {what}\n"));
        paths.push(path);
    }
    let out = Command::new(cfn_lint())
        .args(["--regions", "us-east-1", "--"])
        .args(&paths)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "cfn-lint:\n{}{}\nfiles:\n{index}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A policy document wrapped in a template, so that cfn-lint checks it as IAM policy.
fn as_managed_policy(policy: &Value) -> Value {
    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {"Policy": {"Type": "AWS::IAM::ManagedPolicy", "Properties": {"PolicyDocument": policy}}}
    })
}

#[test]
fn every_template_passes_cfn_lint_with_and_without_configuration() {
    let configs: [(&str, Option<&str>); 6] = [
        ("no config", None),
        ("basic", Some(BASIC)),
        ("organization", Some(ORG)),
        ("external id", Some(ORG_EXTERNAL_ID)),
        ("list", Some(LIST)),
        ("events", Some(EVENTS)),
    ];
    let variants: [&[&str]; 6] = [
        &["member-role"],
        &["member-role", "--orchestrator-account", "210987654321"],
        &[
            "member-role",
            "--orchestrator-role-arn",
            "arn:aws:iam::210987654321:role/arc-onboard",
        ],
        &["events"],
        &["events", "--organization-id", "o-abcdef12345"],
        &["events", "--forwarder"],
    ];
    let mut all = Vec::new();
    for (name, config) in configs {
        for args in variants {
            let doc = template(args, config).json();
            all.push((format!("{args:?} with {name}"), doc));
        }
        let policy = template(&["orchestrator-policy"], config).json();
        all.push((
            format!("orchestrator-policy with {name}"),
            as_managed_policy(&policy),
        ));
    }
    assert_lint_clean(&all);

    // The linter does find faults: a role whose trust names no principal.
    let mut broken = template(&["member-role"], None).json();
    broken["Resources"]["MemberRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]
        .as_object_mut()
        .unwrap()
        .remove("Principal");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.json");
    std::fs::write(&path, broken.to_string()).unwrap();
    let out = Command::new(cfn_lint()).arg(&path).output().unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "cfn-lint accepted a trust without principal"
    );
}

/// Every `Action` of the statements of a policy document.
fn actions(policy: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for st in policy["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow");
        match &st["Action"] {
            Value::String(a) => {
                out.insert(a.clone());
            }
            Value::Array(list) => out.extend(list.iter().map(|a| a.as_str().unwrap().to_string())),
            other => panic!("unexpected Action {other}"),
        }
    }
    out
}

/// The statement of a policy that allows `action`.
fn statement_for<'a>(policy: &'a Value, action: &str) -> &'a Value {
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| match &st["Action"] {
            Value::String(a) => a == action,
            Value::Array(list) => list.iter().any(|a| a == action),
            _ => false,
        })
        .unwrap_or_else(|| panic!("no statement allows {action}"))
}

fn member_policy(template: &Value) -> &Value {
    &template["Resources"]["MemberRole"]["Properties"]["Policies"][0]["PolicyDocument"]
}

/// Actions the member role allows although the emulator run below does not call them, each for a reason:
/// tagging is part of creating the SSM role and profile, PassRole is what associating needs, and the
/// others are the paths of installs that time out or answer late (cancel, per-instance detail).
const MEMBER_EXTRAS: [&str; 5] = [
    "iam:TagRole",
    "iam:TagInstanceProfile",
    "iam:PassRole",
    "ssm:CancelCommand",
    "ssm:GetCommandInvocation",
];

#[test]
fn the_member_role_and_orchestrator_policy_cover_every_call_and_the_member_role_no_more() {
    let w = World::start();
    let emu = &w.aws;
    emu.seed(&fleet_with(json!([
        {"region": "us-east-1", "tags": {"Name": "bare"}},
        {"region": "us-east-1", "tags": {"Name": "legacy"}, "instance_profile": "LegacyProfile"},
        {"region": "us-east-1", "tags": {"Name": "good"}, "instance_profile": "AppProfile"},
        {"region": "us-east-1", "tags": {"Name": "empty"}, "instance_profile": "EmptyProfile"},
        {"region": "eu-west-1", "platform": "windows", "tags": {"Name": "win-good"}, "instance_profile": "AppProfile"}
    ])));
    emu.reset_calls();
    let plan = emu.run(&["plan", "--output", "json"], "[aws]\nall_regions = true\n");
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let out = w.run(
        &[
            "run",
            "--wait-for-ssm",
            "30s",
            "--verify-timeout",
            "20s",
            "--output",
            "json",
        ],
        &w.config(BASIC),
    );
    assert!(out.code == 0 || out.code == 1, "{}", out.stderr);
    let called: BTreeSet<String> = emu.counts().keys().cloned().collect();
    assert!(
        called.contains("ssm:SendCommand") && called.contains("iam:CreateRole"),
        "the run exercises installs and role creation: {called:?}"
    );

    let member = template(&["member-role"], Some(&w.config(BASIC))).json();
    let member_allows = actions(member_policy(&member));
    let orchestrator = template(&["orchestrator-policy"], Some(&w.config(BASIC))).json();
    let orchestrator_allows = actions(&orchestrator);
    for op in &called {
        assert!(member_allows.contains(op), "member-role lacks {op}");
        assert!(
            orchestrator_allows.contains(op),
            "orchestrator-policy lacks {op}"
        );
    }
    let beyond: Vec<&String> = member_allows
        .iter()
        .filter(|a| !called.contains(*a) && !MEMBER_EXTRAS.contains(&a.as_str()))
        .collect();
    assert!(
        beyond.is_empty(),
        "member-role allows more than run calls: {beyond:?}"
    );
    for extra in MEMBER_EXTRAS {
        assert!(member_allows.contains(extra), "member-role lacks {extra}");
    }
    // The same set as the repository's example policy, less what only the orchestrator does.
    let mut example: BTreeSet<String> = common::allowed_actions("scripts/iam/run-policy.json")
        .into_iter()
        .collect();
    example.remove("sts:GetWebIdentityToken");
    example.retain(|a| !a.starts_with("sqs:"));
    assert_eq!(member_allows, example);
}

#[test]
fn the_member_role_trusts_the_orchestrator_and_passes_only_the_ssm_role() {
    let t = template(&["member-role"], Some(ORG)).json();
    let role = &t["Resources"]["MemberRole"]["Properties"];
    assert_eq!(role["RoleName"], "ArcMember");
    let trust = &role["AssumeRolePolicyDocument"]["Statement"][0];
    assert_eq!(trust["Action"], "sts:AssumeRole");
    assert_eq!(
        trust["Principal"]["AWS"]["Fn::Join"][1][3],
        json!({"Ref": "OrchestratorAccountId"})
    );
    assert!(
        trust.get("Condition").is_none(),
        "no external id configured"
    );
    assert!(t["Parameters"]["OrchestratorAccountId"]
        .get("Default")
        .is_none());

    let policy = member_policy(&t);
    let pass = statement_for(policy, "iam:PassRole");
    assert_eq!(pass["Resource"]["Fn::Join"][1][4], ":role/MySsmRole");
    assert_eq!(
        pass["Condition"]["StringEquals"]["iam:PassedToService"],
        "ec2.amazonaws.com"
    );
    let create = statement_for(policy, "iam:CreateInstanceProfile");
    assert_eq!(
        create["Resource"][1]["Fn::Join"][1][4],
        ":instance-profile/MySsmProfile"
    );
    let attach = statement_for(policy, "iam:AttachRolePolicy");
    assert_eq!(
        attach["Condition"]["ArnEquals"]["iam:PolicyARN"]["Fn::Join"][1][2],
        ":iam::aws:policy/AmazonSSMManagedInstanceCore"
    );
    let send = statement_for(policy, "ssm:SendCommand");
    let docs: Vec<String> = send["Resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["Fn::Join"][1]
                .as_array()
                .unwrap()
                .last()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        docs[0].ends_with("document/AWS-RunShellScript\""),
        "{docs:?}"
    );
    assert!(
        docs[1].ends_with("document/AWS-RunPowerShellScript\""),
        "{docs:?}"
    );

    let t = template(
        &["member-role", "--orchestrator-account", "210987654321"],
        None,
    )
    .json();
    assert_eq!(
        t["Parameters"]["OrchestratorAccountId"]["Default"],
        "210987654321"
    );
    assert_eq!(
        t["Resources"]["MemberRole"]["Properties"]["RoleName"],
        "AzureArcOnboardingMember"
    );

    let arn = "arn:aws:iam::210987654321:role/ops/arc-onboard";
    let t = template(&["member-role", "--orchestrator-role-arn", arn], None).json();
    assert_eq!(t["Parameters"]["OrchestratorRoleArn"]["Default"], arn);
    assert_eq!(
        t["Resources"]["MemberRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]
            ["Principal"]["AWS"],
        json!({"Ref": "OrchestratorRoleArn"})
    );
}

#[test]
fn an_external_id_is_required_by_the_trust_and_never_printed() {
    let out = template(&["member-role"], Some(ORG_EXTERNAL_ID));
    assert!(
        !out.stdout.contains("s3cr3t-external-id") && !out.stderr.contains("s3cr3t-external-id"),
        "the external id is printed"
    );
    let t = out.json();
    let trust =
        &t["Resources"]["MemberRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0];
    assert_eq!(
        trust["Condition"]["StringEquals"]["sts:ExternalId"],
        json!({"Ref": "ExternalId"})
    );
    assert_eq!(t["Parameters"]["ExternalId"]["NoEcho"], true);
}

#[test]
fn the_orchestrator_policy_follows_the_account_source_and_the_queue() {
    let caller = actions(&template(&["orchestrator-policy"], Some(BASIC)).json());
    assert!(!caller.contains("sts:AssumeRole"));
    assert!(!caller.iter().any(|a| a.starts_with("organizations:")));
    assert!(!caller.iter().any(|a| a.starts_with("sqs:")));

    let list = template(&["orchestrator-policy"], Some(LIST)).json();
    assert!(!actions(&list)
        .iter()
        .any(|a| a.starts_with("organizations:")));
    assert_eq!(
        statement_for(&list, "sts:AssumeRole")["Resource"],
        "arn:aws:iam::*:role/AzureArcOnboardingMember"
    );

    let org = template(&["orchestrator-policy"], Some(ORG)).json();
    assert_eq!(
        statement_for(&org, "sts:AssumeRole")["Resource"],
        "arn:aws:iam::*:role/ArcMember"
    );
    let listing = statement_for(&org, "organizations:ListAccounts");
    assert_eq!(
        listing["Action"],
        json!([
            "organizations:ListAccounts",
            "organizations:ListChildren",
            "organizations:ListAccountsForParent"
        ])
    );
    assert_eq!(
        statement_for(&org, "iam:PassRole")["Resource"],
        "arn:aws:iam::*:role/MySsmRole"
    );

    let events = template(&["orchestrator-policy"], Some(EVENTS)).json();
    let sqs = statement_for(&events, "sqs:ReceiveMessage");
    assert_eq!(
        sqs["Action"],
        json!(["sqs:ReceiveMessage", "sqs:DeleteMessage"])
    );
    assert_eq!(
        sqs["Resource"],
        "arn:aws:sqs:eu-west-1:123456789012:arc-events"
    );

    // Without a file: an organization-wide orchestrator with the default names.
    let none = template(&["orchestrator-policy"], None).json();
    assert_eq!(
        statement_for(&none, "sts:AssumeRole")["Resource"],
        "arn:aws:iam::*:role/AzureArcOnboardingMember"
    );
    assert!(actions(&none).contains("organizations:ListAccounts"));
    let cn = template(&["orchestrator-policy", "--partition", "aws-cn"], None).json();
    assert_eq!(
        statement_for(&cn, "sts:AssumeRole")["Resource"],
        "arn:aws-cn:iam::*:role/AzureArcOnboardingMember"
    );
}

/// EventBridge pattern matching, as far as these patterns use it: every key of the pattern must be in the
/// event; an array lists the allowed values (an event array matches when any element is allowed); an
/// object matches the event's object recursively.
fn matches(pattern: &Value, event: &Value) -> bool {
    let (Value::Object(p), Value::Object(e)) = (pattern, event) else {
        return false;
    };
    p.iter().all(|(key, want)| {
        let Some(got) = e.get(key) else {
            return false;
        };
        match want {
            Value::Object(_) => matches(want, got),
            Value::Array(allowed) => match got {
                Value::Array(values) => values.iter().any(|v| allowed.contains(v)),
                v => allowed.contains(v),
            },
            other => panic!("pattern values are arrays or objects, found {other}"),
        }
    })
}

/// The events as EventBridge delivers them (AWS documentation's samples, ids changed).
fn running_event(state: &str) -> Value {
    json!({
        "version": "0", "id": "7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
        "account": "111122223333", "time": "2026-11-27T12:00:00Z", "region": "us-east-1",
        "resources": ["arn:aws:ec2:us-east-1:111122223333:instance/i-0123456789abcdef0"],
        "detail": {"instance-id": "i-0123456789abcdef0", "state": state}
    })
}

fn tag_event(service: &str, resource_type: &str) -> Value {
    json!({
        "version": "0", "id": "ffd8a6fe-32f8-ef66-c85c-111111111111",
        "detail-type": "Tag Change on Resource", "source": "aws.tag",
        "account": "111122223333", "time": "2026-11-27T12:00:00Z", "region": "us-east-1",
        "resources": [format!("arn:aws:{service}:us-east-1:111122223333:{resource_type}/x-0123")],
        "detail": {
            "changed-tag-keys": ["arc"], "service": service, "resource-type": resource_type,
            "version": 3, "tags": {"arc": "onboard", "Name": "web-1"}
        }
    })
}

fn rule_patterns(t: &Value) -> (Value, Value) {
    let r = &t["Resources"];
    (
        r["InstanceRunningRule"]["Properties"]["EventPattern"].clone(),
        r["InstanceTagChangeRule"]["Properties"]["EventPattern"].clone(),
    )
}

#[test]
fn the_event_rules_match_instance_events_and_nothing_else() {
    for args in [&["events"][..], &["events", "--forwarder"][..]] {
        let t = template(args, Some(EVENTS)).json();
        let (running, tagged) = rule_patterns(&t);
        let accepted = |e: &Value| matches(&running, e) || matches(&tagged, e);
        assert!(matches(&running, &running_event("running")), "{args:?}");
        assert!(matches(&tagged, &tag_event("ec2", "instance")), "{args:?}");
        assert!(!matches(&running, &tag_event("ec2", "instance")));
        for other in [
            running_event("stopped"),
            running_event("pending"),
            tag_event("ec2", "volume"),
            tag_event("rds", "db"),
            json!({"source": "aws.ec2", "detail-type": "EC2 Spot Instance Interruption Warning",
                   "detail": {"instance-id": "i-1", "instance-action": "terminate"}}),
        ] {
            assert!(!accepted(&other), "{args:?} accepts {other}");
        }
        // A member account's event reaches the orchestrator's rules: they name no account.
        assert!(running.get("account").is_none() && tagged.get("account").is_none());
    }
}

#[test]
fn the_events_stack_wires_rules_queue_dead_letters_and_member_accounts() {
    let t = template(
        &["events", "--organization-id", "o-abcdef12345"],
        Some(EVENTS),
    )
    .json();
    let r = &t["Resources"];
    assert_eq!(t["Parameters"]["QueueName"]["Default"], "arc-events");
    assert_eq!(
        r["EventQueue"]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"],
        json!({"Fn::GetAtt": ["DeadLetterQueue", "Arn"]})
    );
    for rule in ["InstanceRunningRule", "InstanceTagChangeRule"] {
        assert_eq!(r[rule]["Properties"]["EventBusName"], "default");
        assert_eq!(
            r[rule]["Properties"]["Targets"][0]["Arn"],
            json!({"Fn::GetAtt": ["EventQueue", "Arn"]})
        );
    }
    let send = &r["EventQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0];
    assert_eq!(
        send["Principal"],
        json!({"Service": "events.amazonaws.com"})
    );
    assert_eq!(send["Action"], "sqs:SendMessage");
    assert_eq!(
        send["Condition"]["ArnEquals"]["aws:SourceArn"],
        json!([
            {"Fn::GetAtt": ["InstanceRunningRule", "Arn"]},
            {"Fn::GetAtt": ["InstanceTagChangeRule", "Arn"]}
        ])
    );
    let bus = &r["OrganizationPutsEvents"]["Properties"]["Statement"];
    assert_eq!(bus["Action"], "events:PutEvents");
    assert_eq!(
        bus["Condition"]["StringEquals"]["aws:PrincipalOrgID"],
        json!({"Ref": "OrganizationId"})
    );
    assert_eq!(
        t["Parameters"]["OrganizationId"]["Default"],
        "o-abcdef12345"
    );
    assert_eq!(
        t["Outputs"]["QueueUrl"]["Value"],
        json!({"Ref": "EventQueue"})
    );
    assert!(t["Outputs"]["QueueArn"].is_object());

    // The listed accounts, by account, for `list`; nobody for the caller alone.
    let t = template(&["events"], Some(LIST)).json();
    let principals =
        &t["Resources"]["MemberAccountsPutEvents"]["Properties"]["Statement"]["Principal"]["AWS"];
    assert_eq!(principals.as_array().unwrap().len(), 2);
    assert_eq!(principals[1]["Fn::Join"][1][3], "222222222222");
    let t = template(&["events"], Some(BASIC)).json();
    let kinds: Vec<&str> = t["Resources"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| r["Type"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"AWS::Events::EventBusPolicy"), "{kinds:?}");

    // The forwarder sends to the orchestrator's bus through its own role.
    let f = template(&["events", "--forwarder"], Some(EVENTS)).json();
    assert_eq!(
        f["Parameters"]["OrchestratorEventBusArn"]["Default"],
        "arn:aws:events:eu-west-1:123456789012:event-bus/default"
    );
    let target = &f["Resources"]["InstanceTagChangeRule"]["Properties"]["Targets"][0];
    assert_eq!(target["Arn"], json!({"Ref": "OrchestratorEventBusArn"}));
    assert_eq!(
        target["RoleArn"],
        json!({"Fn::GetAtt": ["ForwardRole", "Arn"]})
    );
    let put = &f["Resources"]["ForwardRole"]["Properties"]["Policies"][0]["PolicyDocument"]
        ["Statement"][0];
    assert_eq!(put["Action"], "events:PutEvents");
    assert_eq!(put["Resource"], json!({"Ref": "OrchestratorEventBusArn"}));
}

#[test]
fn hostile_names_and_queue_urls_stay_inside_their_strings() {
    // What could break out of a JSON string never reaches a template: the configuration refuses it.
    let role = "x\",\"Effect\":\"Deny\"}]} # '\n: [ {{";
    let config = format!(
        "[aws]\nregions = [\"us-east-1\"]\n[aws.accounts]\nsource = \"organization\"\nmember_role = {}\n[events]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/123456789012/q%22%7D%5D%7D%0A-: x\"\n",
        toml_string(role)
    );
    let out = template(&["member-role"], Some(&config));
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(out.stdout.is_empty(), "nothing printed: {}", out.stdout);
    for key in ["aws.accounts.member_role", "events.queue_url"] {
        assert!(out.stderr.contains(key), "{key}: {}", out.stderr);
    }
    // Every character a valid name may hold comes through verbatim, inside its string.
    let role = "team/+=,.@_-Arc";
    let config = format!(
        "[aws]\nregions = [\"us-east-1\"]\n[aws.accounts]\nsource = \"organization\"\nmember_role = {}\n[events]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/123456789012/q-_1.fifo\"\n",
        toml_string(role)
    );
    let member = template(&["member-role"], Some(&config)).json();
    let name = &member["Resources"]["MemberRole"]["Properties"];
    assert_eq!(
        format!(
            "{}{}",
            name["Path"].as_str().unwrap_or("/"),
            name["RoleName"].as_str().unwrap()
        ),
        format!("/{role}")
    );
    let policy = template(&["orchestrator-policy"], Some(&config)).json();
    assert_eq!(
        statement_for(&policy, "sts:AssumeRole")["Resource"],
        format!("arn:aws:iam::*:role/{role}")
    );
    assert_eq!(
        statement_for(&policy, "sqs:ReceiveMessage")["Resource"],
        "arn:aws:sqs:us-east-1:123456789012:q-_1.fifo"
    );
    let events = template(&["events"], Some(&config)).json();
    assert_eq!(events["Parameters"]["QueueName"]["Default"], "q-_1.fifo");
}

/// `s` as a TOML string literal.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[test]
fn unknown_names_bad_options_and_bad_files_exit_2_before_anything() {
    let out = template(&["nope"], None);
    assert_eq!(out.code, 2);
    for name in ["member-role", "orchestrator-policy", "events"] {
        assert!(out.stderr.contains(name), "{}", out.stderr);
    }
    let out = template(&["member-role", "--orchestrator-account", "12345"], None);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("--orchestrator-account"),
        "{}",
        out.stderr
    );
    let out = template(
        &[
            "member-role",
            "--orchestrator-role-arn",
            "arn:aws:iam::123456789012:user/x",
        ],
        None,
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("--orchestrator-role-arn"),
        "{}",
        out.stderr
    );
    let out = template(&["events", "--organization-id", "org"], None);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--organization-id"), "{}", out.stderr);

    let out = template(
        &["orchestrator-policy"],
        Some("[aws]\nregions = [\"us-east-1\"]\n[events]\nqueue_url = \"https://example.com/queue\"\n"),
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("events.queue_url"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    let out = template(
        &["member-role"],
        Some("[aws]\nregions = [\"us-east-1\"]\nbogus = 1\n"),
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("aws.bogus"), "{}", out.stderr);
    // A file named explicitly must exist.
    let out = template(&["member-role", "--config", "/nonexistent/arc.toml"], None);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("/nonexistent/arc.toml"),
        "{}",
        out.stderr
    );
}

/// `[azure]` (and `[azure.onboarding]`) with `credential = "aws-federation"`.
const FEDERATED: &str = "[aws]\nregions = [\"us-east-1\"]\n[azure]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\nsubscription_id = \"00000000-0000-0000-0000-000000000002\"\nclient_id = \"00000000-0000-0000-0000-000000000003\"\nlocation = \"eastus\"\ncredential = \"aws-federation\"\n[azure.onboarding]\nclient_id = \"00000000-0000-0000-0000-000000000004\"\ncredential = \"aws-federation\"\naws_federation_audience = \"api://ArcOnboarding\"\n";

#[test]
fn web_identity_tokens_are_allowed_only_for_our_audiences_algorithm_and_lifetime() {
    let expected = json!({
        "ForAllValues:StringEquals": {"sts:IdentityTokenAudience": ["api://ArcOnboarding", "api://AzureADTokenExchange"]},
        "Null": {"sts:IdentityTokenAudience": "false"},
        "StringEquals": {"sts:SigningAlgorithm": "RS256"},
        "NumericLessThanEquals": {"sts:DurationSeconds": 60}
    });
    let policy = template(&["orchestrator-policy"], Some(FEDERATED)).json();
    assert_eq!(
        statement_for(&policy, "sts:GetWebIdentityToken")["Condition"],
        expected
    );
    // No federation configured: no such permission at all.
    let basic = template(&["orchestrator-policy"], Some(BASIC)).json();
    assert!(!actions(&basic).contains("sts:GetWebIdentityToken"));
    // The repository's example policies: the same conditions for the default audience, and IAM reads only on
    // roles and instance profiles.
    for path in [
        "scripts/iam/plan-policy.json",
        "scripts/iam/run-policy.json",
    ] {
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(common::repo_file(path)).unwrap())
                .unwrap();
        let mut federation = statement_for(&doc, "sts:GetWebIdentityToken")["Condition"].clone();
        federation["ForAllValues:StringEquals"]["sts:IdentityTokenAudience"] =
            json!(["api://ArcOnboarding", "api://AzureADTokenExchange"]);
        assert_eq!(federation, expected, "{path}");
        for statement in doc["Statement"].as_array().unwrap() {
            let actions: Vec<&str> = match &statement["Action"] {
                Value::String(a) => vec![a.as_str()],
                Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if actions
                .iter()
                .any(|a| a.starts_with("iam:Get") || a.starts_with("iam:List"))
            {
                assert_ne!(statement["Resource"], "*", "{path}: {statement}");
                for r in statement["Resource"].as_array().unwrap() {
                    let r = r.as_str().unwrap();
                    assert!(
                        r.ends_with(":role/*") || r.ends_with(":instance-profile/*"),
                        "{path}: {r}"
                    );
                }
            }
            assert!(!actions.contains(&"sqs:GetQueueAttributes"), "{path}");
        }
    }
}

/// The ARM action of one request the Azure stub served (`kind: arm`), as Azure RBAC names it; a
/// simulated `azcmagent connect` (`kind: connect`) with the scripts' token creates the machine.
fn arm_action(request: &Value) -> Option<String> {
    let path = request["path"].as_str()?.to_ascii_lowercase();
    let method = request["method"].as_str()?;
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let action = match (request["kind"].as_str()?, method, segments.as_slice()) {
        ("connect", _, _) if request["status"] == 200 => "Microsoft.HybridCompute/machines/write",
        ("arm", "GET" | "HEAD", ["subscriptions", _, "resourcegroups", _]) => {
            "Microsoft.Resources/subscriptions/resourceGroups/read"
        }
        ("arm", "PUT", ["subscriptions", _, "resourcegroups", _]) => {
            "Microsoft.Resources/subscriptions/resourceGroups/write"
        }
        ("arm", "GET", [.., "microsoft.hybridcompute", "machines"])
        | ("arm", "GET", [.., "microsoft.hybridcompute", "machines", _]) => {
            "Microsoft.HybridCompute/machines/read"
        }
        ("arm", "DELETE", [.., "microsoft.hybridcompute", "machines", _]) => {
            "Microsoft.HybridCompute/machines/delete"
        }
        ("arm", "POST", ["providers", "microsoft.resourcegraph", "resources"]) => {
            "Microsoft.ResourceGraph/resources/read"
        }
        ("arm", _, _) => panic!("an ARM request this test cannot map: {request}"),
        _ => return None,
    };
    Some(action.to_string())
}

#[test]
fn the_azure_role_holds_exactly_the_arm_actions_a_run_and_a_deletion_use() {
    let w = World::start();
    let ids: Vec<String> = w
        .aws
        .seed(&fleet_with(json!([
            {"region": "us-east-1", "tags": {"Name": "gone"}, "instance_profile": "AppProfile"},
            {"region": "us-east-1", "tags": {"Name": "stays"}, "instance_profile": "AppProfile"}
        ])))
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_string())
        .collect();
    let config = w.config("[aws]\nregions = [\"us-east-1\"]\n[lifecycle]\ndelete_after = \"0s\"\n");
    let run = |args: &[&str]| {
        let out = w.run(args, &config);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.json()
    };
    run(&["plan", "--output", "json"]);
    let first = run(&["run", "--wait-for-ssm", "20s", "--output", "json"]);
    assert_eq!(first["summary"]["by_status"]["onboarded"], 2, "{first:#}");
    w.aws.control(
        "POST",
        &format!("/_emulator/instances/{}/state", ids[0]),
        Some(&json!({"state": "terminated"})),
    );
    let second = run(&["run", "--output", "json"]);
    assert_eq!(
        second["summary"]["by_status"]["offboarded"], 1,
        "{second:#}"
    );

    let used: BTreeSet<String> = w.azure.requests().iter().filter_map(arm_action).collect();
    let role = template(&["azure-role"], Some(&config)).json();
    let allowed: BTreeSet<String> = role["Actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(allowed, used, "the role's actions are exactly those used");
    assert_eq!(
        role["AssignableScopes"],
        json!(["/subscriptions/00000000-0000-0000-0000-000000000002"])
    );
    assert_eq!(role["NotActions"], json!([]));
    assert!(role["Name"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(role["Description"].as_str().is_some_and(|d| !d.is_empty()));
    // With an onboarding identity the scripts' token is that identity's: the orchestrator creates no machine.
    let split = template(
        &["azure-role"],
        Some(&format!(
            "{config}\n[azure.onboarding]\nclient_id = \"00000000-0000-0000-0000-000000000004\"\n"
        )),
    )
    .json();
    let split: BTreeSet<String> = split["Actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut without_connect = used.clone();
    without_connect.remove("Microsoft.HybridCompute/machines/write");
    assert_eq!(split, without_connect);
    // Without [azure] there is no subscription to scope it to.
    let bare = template(&["azure-role"], Some(BASIC));
    assert_eq!(bare.code, 2, "{}", bare.stderr);
    assert!(bare.stderr.contains("azure"), "{}", bare.stderr);
}
#[test]
fn events_with_an_organization_id_and_no_configuration_lets_the_organization_forward() {
    // Without a file, as a member account's operator or a first set-up would run it.
    let t = template(&["events", "--organization-id", "o-abcdef12345"], None).json();
    let bus = &t["Resources"]["OrganizationPutsEvents"];
    assert_eq!(bus["Type"], "AWS::Events::EventBusPolicy");
    assert_eq!(
        bus["Properties"]["Statement"]["Condition"]["StringEquals"]["aws:PrincipalOrgID"],
        json!({"Ref": "OrganizationId"})
    );
    assert_eq!(
        t["Parameters"]["OrganizationId"]["Default"],
        "o-abcdef12345"
    );
    // Without it, nobody else may put events on the bus.
    let t = template(&["events"], None).json();
    assert!(t["Resources"].get("OrganizationPutsEvents").is_none());
    assert!(t["Parameters"].get("OrganizationId").is_none());
    // With a list of accounts as well, both policies, under distinct statement ids.
    let t = template(
        &["events", "--organization-id", "o-abcdef12345"],
        Some(LIST),
    )
    .json();
    let ids: Vec<&Value> = ["OrganizationPutsEvents", "MemberAccountsPutEvents"]
        .iter()
        .map(|r| &t["Resources"][r]["Properties"]["StatementId"])
        .collect();
    assert!(
        ids[0].is_string() && ids[1].is_string() && ids[0] != ids[1],
        "{ids:?}"
    );
}

#[test]
fn the_event_queues_state_their_deletion_and_replacement_policies() {
    for config in [None, Some(EVENTS)] {
        let t = template(&["events"], config).json();
        for queue in ["EventQueue", "DeadLetterQueue"] {
            let q = &t["Resources"][queue];
            assert_eq!(q["Type"], "AWS::SQS::Queue");
            assert_eq!(q["DeletionPolicy"], "Delete", "{queue}");
            assert_eq!(q["UpdateReplacePolicy"], "Delete", "{queue}");
        }
    }
}
