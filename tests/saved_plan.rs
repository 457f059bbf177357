//! Saved plans against the AWS emulator and the Azure stub: `plan --out FILE` then `run --plan FILE` applies
//! that plan and nothing else (an instance launched in between is left alone, a row whose world changed is
//! skipped with the reason), a plan too old or from another configuration is refused before any call;
//! `plan --detailed-exitcode`; and `run`'s exit code when nothing was onboarded while instances wait.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{fleet_with, row, Outcome, World, ACCOUNT};
use serde_json::{json, Value};

const CONFIG: &str = "[aws]\nregions = [\"us-east-1\"]\n";

fn seed(w: &World, fleet: &Value) -> Vec<String> {
    w.aws
        .seed(fleet)
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_string())
        .collect()
}

fn plan_out(w: &World, file: &Path) -> Outcome {
    let out = w.run(
        &["plan", "--output", "json", "--out", file.to_str().unwrap()],
        &w.config(CONFIG),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    out
}

fn run_plan(w: &World, config: &str, file: &Path, extra: &[&str]) -> Outcome {
    let mut args = vec![
        "run",
        "--output",
        "json",
        "--wait-for-ssm",
        "30s",
        "--verify-timeout",
        "20s",
        "--plan",
        file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    w.run(&args, &w.config(config))
}

/// The instances a successful call of `operation` named in its `InstanceId` parameter.
fn associated(w: &World) -> Vec<String> {
    w.aws
        .calls()
        .iter()
        .filter(|c| c["operation"] == "ec2:AssociateIamInstanceProfile" && c["status"] == 200)
        .map(|c| c["params"]["InstanceId"].as_str().unwrap().to_string())
        .collect()
}

/// Every instance an install command was sent to.
/// The instances an install command went to (key exchanges are not installs).
fn commanded(w: &World) -> Vec<String> {
    w.aws
        .install_commands()
        .iter()
        .flat_map(|c| c["instance_ids"].as_array().unwrap().clone())
        .map(|i| i.as_str().unwrap().to_string())
        .collect()
}

fn saved_file(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("plan.json")
}

fn read(file: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

#[test]
fn run_plan_applies_the_saved_plan_and_leaves_an_instance_launched_since_untouched() {
    let w = World::start();
    // #0 ready (SSM profile), #1 without a profile (association, then install).
    let id = seed(
        &w,
        &fleet_with(json!([
            {"region": "us-east-1", "instance_profile": "AppProfile"},
            {"region": "us-east-1"}
        ])),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = saved_file(&dir);
    let planned = plan_out(&w, &file).json();
    assert_eq!(row(&planned, &id[1])["status"], "planned");

    // What the file says the plan rests on.
    let saved = read(&file);
    assert_eq!(saved["format"], 2);
    assert_eq!(saved["tool_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(saved["created_at"], planned["started_at"]);
    assert!(saved["config_fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_eq!(saved["regions"], json!(["us-east-1"]));
    assert_eq!(saved["accounts"][0]["account_id"], ACCOUNT);
    // The install batches the report shows are the file's, with their document and instances.
    let batches = &saved["accounts"][0]["batches"];
    assert_eq!(batches, &planned["accounts"][0]["batches"]);
    assert_eq!(batches[0]["document"], "AWS-RunShellScript");
    let mut batched: Vec<&str> = batches[0]["instance_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    batched.sort_unstable();
    let mut ids = vec![id[0].as_str(), id[1].as_str()];
    ids.sort_unstable();
    assert_eq!(batched, ids);
    assert_eq!(batches[0]["resource_group"], format!("aws_{ACCOUNT}"));
    let bare = saved["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["instance_id"] == id[1].as_str())
        .unwrap();
    assert_eq!(
        bare["actions"],
        json!([
            {"action": "associate-instance-profile", "profile": "AzureArcForServerSSMInstanceProfile"},
            {"action": "install-agent"}
        ])
    );
    assert_eq!(
        bare["basis"],
        json!({"state": "running", "instance_profile": null, "ssm_ping": null, "arc_machine": {"seen": "absent"}})
    );

    // Launched after the plan: no profile, so a fresh plan would associate one and install.
    let late = seed(&w, &json!({"instances": [{"region": "us-east-1"}]}))[0].clone();
    w.aws.reset_calls();

    let out = run_plan(&w, CONFIG, &file, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json();
    assert_eq!(row(&report, &id[0])["status"], "onboarded", "{report:#}");
    assert_eq!(row(&report, &id[1])["status"], "onboarded", "{report:#}");
    let l = row(&report, &late);
    assert_eq!(l["status"], "skipped", "{l}");
    assert_eq!(l["actions"], json!([]));
    assert!(
        l["detail"]
            .as_str()
            .unwrap()
            .contains("not in the saved plan"),
        "{l}"
    );
    assert_eq!(
        associated(&w),
        vec![id[1].clone()],
        "only the planned association"
    );
    let sent = commanded(&w);
    // Not even a key exchange reaches it.
    let any: Vec<Value> = w
        .aws
        .sent_commands()
        .iter()
        .flat_map(|c| c["instance_ids"].as_array().unwrap().clone())
        .collect();
    assert!(
        !any.contains(&json!(late)),
        "no command for {late}: {any:?}"
    );
    assert!(sent.contains(&id[0]) && sent.contains(&id[1]), "{sent:?}");

    // Left for the next run: a plain plan still wants to onboard it.
    let next = w.run(&["plan", "--output", "json"], &w.config(CONFIG));
    assert_eq!(row(&next.json(), &late)["status"], "planned");
}

#[test]
fn a_row_whose_arc_machine_changed_since_the_plan_is_skipped_with_the_reason() {
    let w = World::start();
    let id = seed(
        &w,
        &fleet_with(json!([{"region": "us-east-1", "count": 2, "instance_profile": "AppProfile"}])),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = saved_file(&dir);
    plan_out(&w, &file);

    // Someone (another tool) created a machine for #0 meanwhile.
    w.azure.control(
        "POST",
        "/_stub/machines",
        Some(
            &json!({"resource_group": format!("aws_{ACCOUNT}"), "name": id[0], "location": "eastus",
                     "status": "Disconnected"}),
        ),
    );
    let out = run_plan(&w, CONFIG, &file, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json();
    let changed = row(&report, &id[0]);
    assert_eq!(changed["status"], "skipped", "{changed}");
    let detail = changed["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("Arc machine absent -> {} Disconnected", id[0])),
        "{detail}"
    );
    assert!(detail.contains("run plan again"), "{detail}");
    assert_eq!(row(&report, &id[1])["status"], "onboarded");
    assert_eq!(commanded(&w), vec![id[1].clone()]);
}

#[test]
fn a_saved_plan_too_old_from_another_configuration_or_version_is_refused_before_any_call() {
    let w = World::start();
    let id = seed(
        &w,
        &fleet_with(json!([{"region": "us-east-1", "instance_profile": "AppProfile"}])),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = saved_file(&dir);
    plan_out(&w, &file);
    let fresh = read(&file);
    let write = |v: &Value| std::fs::write(&file, v.to_string()).unwrap();
    let refused = |config: &str, extra: &[&str], expect: &str| {
        w.aws.reset_calls();
        w.azure
            .control("POST", "/_stub/requests/reset", Some(&json!({})));
        let out = run_plan(&w, config, &file, extra);
        assert_eq!(out.code, 2, "{expect}: {}", out.stderr);
        assert!(out.stderr.contains(expect), "{expect}: {}", out.stderr);
        assert!(out.stderr.contains("nothing was changed"), "{}", out.stderr);
        assert!(w.aws.calls().is_empty(), "{expect}: {:?}", w.aws.calls());
        assert!(w.azure.requests().is_empty(), "{expect}: no Azure call");
    };

    // Two hours old: refused with the default --plan-max-age 1h, accepted with 3h.
    let mut old = fresh.clone();
    old["created_at"] = json!(humantime::format_rfc3339_seconds(
        SystemTime::now() - Duration::from_secs(2 * 3600)
    )
    .to_string());
    write(&old);
    refused(CONFIG, &[], "more than --plan-max-age 1h");

    // Another configuration (one more region): refused whatever its age.
    write(&fresh);
    let other = "[aws]\nregions = [\"us-east-1\", \"eu-west-1\"]\n";
    refused(other, &[], "made from another configuration");
    // Comments and spacing are not the configuration.
    let same = format!("# reviewed\n{}", CONFIG.replace(" = ", "="));

    // Another version of arc-onboard, or not a saved plan at all.
    let mut version = fresh.clone();
    version["tool_version"] = json!("0.0.1");
    write(&version);
    refused(CONFIG, &[], "made by arc-onboard 0.0.1");
    // A file of the earlier format (no install batches): refused for its format, not as unreadable.
    let mut older = fresh.clone();
    older["format"] = json!(1);
    older["accounts"][0]
        .as_object_mut()
        .unwrap()
        .remove("batches");
    write(&older);
    refused(CONFIG, &[], "format 1, expected 2");
    std::fs::write(&file, "{\"mode\": \"plan\"}").unwrap();
    refused(CONFIG, &[], "is not a saved plan");

    write(&old);
    let out = run_plan(&w, &same, &file, &["--plan-max-age", "3h"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(row(&out.json(), &id[0])["status"], "onboarded");
}

#[test]
fn plan_detailed_exitcode_tells_changes_pending_from_nothing_to_do() {
    let w = World::start();
    seed(
        &w,
        &fleet_with(json!([{"region": "us-east-1", "instance_profile": "AppProfile"}])),
    );
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan"];
        args.extend_from_slice(extra);
        w.run(&args, &w.config(CONFIG)).code
    };
    assert_eq!(plan(&["--detailed-exitcode"]), 3, "an install is pending");
    assert_eq!(plan(&[]), 0, "without the flag");
    let out = w.run(&["run", "--verify-timeout", "20s"], &w.config(CONFIG));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(plan(&["--detailed-exitcode"]), 0, "nothing left to do");
}

#[test]
fn run_that_onboarded_nothing_while_instances_wait_for_ssm_exits_4() {
    let w = World::start();
    w.aws.configure(json!({"registration_delay_seconds": 60}));
    let id = seed(&w, &json!({"instances": [{"region": "us-east-1"}]}));
    let out = w.run(
        &["run", "--output", "json", "--wait-for-ssm", "0s"],
        &w.config(CONFIG),
    );
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_eq!(row(&out.json(), &id[0])["status"], "waiting-for-ssm");
    assert!(
        out.stderr.contains("nothing was onboarded"),
        "{}",
        out.stderr
    );
}
