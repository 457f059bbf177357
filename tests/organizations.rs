//! An AWS organization on the emulator: the management account and three members (one whose role cannot be
//! assumed, one with instances in two regions, one without the SSM role), `plan` then `run` then `run`
//! again, through the real binary; and `--shard` over the same organization.

mod common;

use common::{fleet_with, row, World};
use serde_json::{json, Value};

const MGMT: &str = "123456789012";
const TWO_REGIONS: &str = "222222222222";
const DENIED: &str = "333333333333";
const BARE: &str = "444444444444";
const SUSPENDED: &str = "555555555555";

const CONFIG: &str =
    "[aws]\nregions = [\"us-east-1\", \"eu-west-1\"]\n[aws.accounts]\nsource = \"organization\"\n";

/// The organization, its fleets, and the instance ids by account.
fn organization(w: &World) -> Vec<(String, String)> {
    organization_with_units(w).0
}

/// [`organization`], and the unit ids by name.
fn organization_with_units(w: &World) -> (Vec<(String, String)>, Value) {
    let created = w.aws.control(
        "POST",
        "/_emulator/organization",
        Some(&json!({
            "management_account_id": MGMT,
            "units": [{"name": "prod"}, {"name": "prod-eu", "parent": "prod"}, {"name": "dev"}],
            "accounts": [
                {"id": TWO_REGIONS, "unit": "prod"},
                {"id": DENIED, "unit": "prod-eu"},
                {"id": BARE, "unit": "dev"},
                {"id": SUSPENDED, "unit": "dev", "status": "SUSPENDED"}
            ]
        })),
    );
    w.aws.control(
        "POST",
        "/_emulator/assume-role-denied",
        Some(&json!({"denied": [DENIED]})),
    );
    let mut ids = Vec::new();
    let mut seed = |account: &str, spec: Value| {
        let mut spec = spec;
        spec["account_id"] = json!(account);
        for i in w.aws.seed(&spec) {
            ids.push((
                account.to_string(),
                i["instance_id"].as_str().unwrap().to_string(),
            ));
        }
    };
    seed(
        MGMT,
        fleet_with(json!([{"region": "us-east-1", "instance_profile": "AppProfile"}])),
    );
    seed(
        TWO_REGIONS,
        fleet_with(json!([
            {"region": "us-east-1", "instance_profile": "AppProfile"},
            {"region": "eu-west-1", "instance_profile": "AppProfile", "platform": "windows"}
        ])),
    );
    // Instances in the account whose role cannot be assumed: never reached.
    seed(
        DENIED,
        fleet_with(json!([{"region": "us-east-1", "instance_profile": "AppProfile"}])),
    );
    // No SSM role and no profile: run creates the role in this account and associates it.
    seed(BARE, json!({"instances": [{"region": "eu-west-1"}]}));
    seed(
        SUSPENDED,
        fleet_with(json!([{"region": "us-east-1", "instance_profile": "AppProfile"}])),
    );
    w.aws.reset_calls();
    (ids, created["units"].clone())
}

fn reachable(ids: &[(String, String)]) -> Vec<&(String, String)> {
    ids.iter()
        .filter(|(a, _)| a != DENIED && a != SUSPENDED)
        .collect()
}

/// Mutating calls in the emulator's log, less `sts:AssumeRole` (entering an account changes nothing in it).
fn changes(w: &World) -> Vec<Value> {
    w.aws
        .mutating_calls()
        .into_iter()
        .filter(|c| c["operation"] != "sts:AssumeRole")
        .collect()
}

fn account_ids(report: &Value, key: &str) -> Vec<String> {
    report[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_organization_is_planned_onboarded_per_account_and_a_second_run_changes_nothing() {
    let w = World::start();
    let ids = organization(&w);
    let config = w.config(CONFIG);

    // plan: every ACTIVE account listed, the unreachable one in errors[], nothing changed.
    let out = w.run(&["plan", "--output", "json"], &config);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let plan = out.json();
    assert_eq!(
        account_ids(&plan, "accounts"),
        [MGMT, TWO_REGIONS, DENIED, BARE],
        "{plan:#}"
    );
    assert_eq!(plan["errors"].as_array().unwrap().len(), 1, "{plan:#}");
    let e = &plan["errors"][0];
    assert_eq!(e["account_id"], DENIED);
    assert_eq!(e["region"], Value::Null);
    assert_eq!(e["operation"], "sts:AssumeRole");
    assert_eq!(e["code"], "AccessDenied");
    let bare = plan["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["account_id"] == BARE)
        .unwrap();
    assert_eq!(
        bare["actions"],
        json!(["create-ssm-role", "create-resource-group"]),
        "{plan:#}"
    );
    for (account, id) in reachable(&ids) {
        let r = row(&plan, id);
        assert_eq!(r["account_id"], account.as_str());
        assert_eq!(r["status"], "planned", "{r}");
    }
    assert_eq!(plan["instances"].as_array().unwrap().len(), 4);
    assert!(changes(&w).is_empty(), "plan changed: {:?}", changes(&w));
    let calls = w.aws.calls();
    let org_calls: Vec<&Value> = calls
        .iter()
        .filter(|c| c["service"] == "organizations")
        .collect();
    assert!(
        org_calls.iter().all(|c| c["account_id"] == MGMT),
        "{org_calls:?}"
    );
    assert!(org_calls
        .iter()
        .any(|c| c["operation"] == "organizations:ListAccounts"));
    // Each member's calls act in that member (assumed-role credentials), none in the suspended one.
    for account in [TWO_REGIONS, BARE] {
        assert!(
            calls
                .iter()
                .any(|c| c["account_id"] == account && c["operation"] == "ec2:DescribeInstances"),
            "no DescribeInstances in {account}"
        );
    }
    assert!(!calls.iter().any(|c| c["account_id"] == SUSPENDED));
    assert!(!calls.iter().any(|c| c["account_id"] == DENIED));

    // run: every reachable instance onboarded into its account's resource group; exit 1 for the error.
    w.aws.reset_calls();
    let out = w.run(
        &[
            "run",
            "--output",
            "json",
            "--wait-for-ssm",
            "60s",
            "--verify-timeout",
            "30s",
        ],
        &config,
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    let run = out.json();
    assert_eq!(run["errors"].as_array().unwrap().len(), 1, "{run:#}");
    assert_eq!(run["errors"][0]["account_id"], DENIED);
    for (account, id) in reachable(&ids) {
        let r = row(&run, id);
        assert_eq!(r["status"], "onboarded", "{r}");
        assert_eq!(r["account_id"], account.as_str());
    }
    let machines = w.azure.machines();
    for (account, id) in reachable(&ids) {
        let m = machines
            .iter()
            .find(|m| m["name"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} not in Azure: {machines:?}"));
        assert_eq!(
            m["resource_group"].as_str().unwrap().to_ascii_lowercase(),
            format!("aws_{account}"),
            "{m}"
        );
    }
    assert_eq!(machines.len(), 4, "{machines:?}");
    // The SSM role was created in the account lacking it, and only there.
    let calls = w.aws.calls();
    let created: Vec<&Value> = calls
        .iter()
        .filter(|c| c["operation"] == "iam:CreateRole")
        .collect();
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["account_id"], BARE);

    // A second run changes nothing.
    w.aws.reset_calls();
    let out = w.run(
        &["run", "--output", "json", "--wait-for-ssm", "0s"],
        &config,
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    let again = out.json();
    for (_, id) in reachable(&ids) {
        assert_eq!(row(&again, id)["status"], "already-onboarded", "{again:#}");
    }
    assert!(
        changes(&w).is_empty(),
        "second run changed: {:?}",
        changes(&w)
    );
}

#[test]
fn a_shard_handles_only_its_accounts_and_a_shard_of_only_failures_exits_2() {
    let w = World::start();
    let ids = organization(&w);
    let config = w.config(CONFIG);
    // 123456789012, 222222222222 and 444444444444 are even; 333333333333 is odd.
    let out = w.run(&["plan", "--output", "json", "--shard", "0/2"], &config);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan = out.json();
    assert_eq!(account_ids(&plan, "accounts"), [MGMT, TWO_REGIONS, BARE]);
    assert!(plan["errors"].as_array().unwrap().is_empty());
    assert_eq!(
        plan["instances"].as_array().unwrap().len(),
        reachable(&ids).len()
    );

    let out = w.run(&["plan", "--output", "json", "--shard", "1/2"], &config);
    assert_eq!(out.code, 2, "nothing could be handled: {}", out.stderr);
    let plan = out.json();
    assert_eq!(account_ids(&plan, "accounts"), [DENIED]);
    assert_eq!(account_ids(&plan, "errors"), [DENIED]);

    w.aws.reset_calls();
    for bad in ["2/2", "1/0", "x"] {
        let out = w.run(&["plan", "--shard", bad], &config);
        assert_eq!(out.code, 2, "--shard {bad}: {}", out.stderr);
        assert!(out.stderr.contains("--shard"), "{}", out.stderr);
    }
    assert!(w.aws.calls().is_empty(), "a bad shard makes no AWS call");
}

#[test]
fn the_organization_api_denied_is_an_error_and_nothing_is_handled() {
    let w = World::start();
    organization(&w);
    // The caller is a member (its role in 222222222222 lists nothing): fault the call instead.
    w.aws.faults(
        json!([{"operation": "organizations:ListAccounts", "code": "AccessDeniedException",
                          "message": "You don't have permissions to access this resource."}]),
    );
    let out = w.run(&["plan", "--output", "json"], &w.config(CONFIG));
    assert_eq!(out.code, 2, "{}", out.stderr);
    let plan = out.json();
    assert_eq!(plan["errors"][0]["operation"], "organizations:ListAccounts");
    assert_eq!(plan["errors"][0]["code"], "AccessDeniedException");
    assert_eq!(plan["errors"][0]["account_id"], MGMT);
    assert!(plan["instances"].as_array().unwrap().is_empty());
}

#[test]
fn a_list_of_accounts_with_an_ou_filter_in_the_file_is_refused_before_any_call() {
    let w = World::start();
    let config = w.config("[aws]\nregions = [\"us-east-1\"]\n[aws.accounts]\nsource = \"list\"\nids = [\"222222222222\"]\norganizational_units = [\"ou-ab12-cd34ef56\"]\n");
    let out = w.run(&["plan"], &config);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("aws.accounts.organizational_units"),
        "{}",
        out.stderr
    );
    assert!(w.aws.calls().is_empty());
}

/// `GET /metrics` from the daemon.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn the_daemon_keeps_state_and_metrics_per_account_over_the_organization() {
    use std::time::Duration;

    let w = World::start();
    let ids = organization(&w);
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let config = format!(
        "{CONFIG}[iam]\nauto_assignment_interval = \"2s\"\n[onboarding]\nsync_interval = \"3s\"\n"
    );
    let mut d = w.daemon(&config, &["--metrics-addr", &addr], None);
    let reachable = reachable(&ids);
    let status = d.wait_for(
        "every reachable instance onboarded",
        Duration::from_secs(90),
        |s| {
            reachable.iter().all(|(_, id)| {
                common::status_of(s, id).is_some_and(|i| {
                    i["status"] == "onboarded" || i["status"] == "already-onboarded"
                })
            })
        },
    );
    // `status`: one row per instance, with its account; none of the account that cannot be entered.
    for (account, id) in &reachable {
        let row = common::status_of(&status, id).unwrap();
        assert_eq!(row["account_id"], account.as_str(), "{row}");
    }
    assert!(status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["account_id"] != DENIED && i["account_id"] != SUSPENDED));
    // Metrics per account (label account), the denied account by its error code.
    let text = scrape(&addr);
    for account in [MGMT, TWO_REGIONS, BARE] {
        assert!(
            text.contains(&format!(
                "arc_onboard_account_instances{{kind=\"onboarding\",account=\"{account}\",status=\"onboarded\"}}"
            )) || text.contains(&format!(
                "arc_onboard_account_instances{{kind=\"onboarding\",account=\"{account}\",status=\"already-onboarded\"}}"
            )),
            "no series for {account}:\n{text}"
        );
    }
    assert!(
        text.contains(&format!(
            "arc_onboard_account_errors_total{{account=\"{DENIED}\",code=\"AccessDenied\"}}"
        )),
        "{text}"
    );
    // The member roles were assumed once each for the whole run of the daemon, not once per pass:
    // the credentials are cached (and refreshed by the SDK when they near expiry).
    let assumed: Vec<Value> = w
        .aws
        .calls()
        .into_iter()
        .filter(|c| c["operation"] == "sts:AssumeRole" && c["status"] == 200)
        .collect();
    let passes = status["last_passes"].as_array().unwrap().len();
    assert!(passes >= 2, "{status:#}");
    assert_eq!(
        assumed.len(),
        2,
        "one per member account entered: {assumed:?}"
    );
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), Some(0), "{}", d.log());
}

#[test]
fn organizational_units_are_followed_down_through_the_organizations_api_and_exclude_wins() {
    let w = World::start();
    let (_, units) = organization_with_units(&w);
    let prod = units["prod"].as_str().unwrap();
    let config = w.config(&format!(
        "{CONFIG}organizational_units = [\"{prod}\"]\nexclude = [\"{DENIED}\"]\n"
    ));
    let out = w.run(&["plan", "--output", "json"], &config);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan = out.json();
    // prod holds TWO_REGIONS; its child prod-eu holds DENIED, excluded; dev and the root are not in scope.
    assert_eq!(account_ids(&plan, "accounts"), [TWO_REGIONS]);
    let ops: Vec<String> = w
        .aws
        .calls()
        .iter()
        .filter(|c| c["service"] == "organizations")
        .map(|c| c["operation"].as_str().unwrap().to_string())
        .collect();
    assert!(
        ops.contains(&"organizations:ListChildren".to_string()),
        "{ops:?}"
    );
    assert!(
        ops.contains(&"organizations:ListAccountsForParent".to_string()),
        "{ops:?}"
    );
    assert!(
        !ops.contains(&"organizations:ListAccounts".to_string()),
        "{ops:?}"
    );
    // Both levels were listed: prod and its child unit.
    let parents: Vec<Value> = w
        .aws
        .calls()
        .into_iter()
        .filter(|c| c["operation"] == "organizations:ListAccountsForParent")
        .map(|c| c["params"]["ParentId"].clone())
        .collect();
    assert_eq!(parents, [json!(prod), units["prod-eu"].clone()]);
}
