//! `[lifecycle] repair` against the AWS emulator and the Azure stub: an `Expired` machine of our resource
//! group, and an instance whose agent reports as another instance's machine (a clone), are planned
//! `reconnect-agent` only with `repair = true`, left `failed` without it, and repaired by `run` in their
//! own batch; the clone's stale machine is left in place.

mod common;

use common::{actions, fleet_with, row, World};
use serde_json::{json, Value};

const RG: &str = "aws_123456789012";
/// The machine a clone's agent reports as: named after an instance that is not in the fleet.
const ORIGIN: &str = "i-0feedfacefeedface";

fn config(w: &World, lifecycle: &str) -> String {
    w.config(&format!(
        "[aws]\nregions = [\"us-east-1\"]\n[lifecycle]\n{lifecycle}\n"
    ))
}

/// Three Online instances: #0 with an `Expired` machine, #1 a clone (machine `ORIGIN` reports its id),
/// #2 with no machine yet.
fn world() -> (World, Vec<String>) {
    let w = World::start();
    let fleet =
        fleet_with(json!([{"region": "us-east-1", "count": 3, "instance_profile": "AppProfile"}]));
    let id: Vec<String> = w
        .aws
        .seed(&fleet)
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_string())
        .collect();
    w.azure.control(
        "POST",
        "/_stub/machines",
        Some(
            &json!({"resource_group": RG, "name": id[0], "location": "eastus",
                     "status": "Expired", "last_status_change": "2026-01-01T00:00:00Z"}),
        ),
    );
    w.azure.control(
        "POST",
        "/_stub/machines",
        Some(
            &json!({"resource_group": RG, "name": ORIGIN, "location": "eastus",
                     "status": "Connected", "detected_instance_id": id[1]}),
        ),
    );
    w.aws.reset_calls();
    (w, id)
}

#[test]
fn plan_shows_reconnect_agent_only_with_repair_on() {
    let (w, id) = world();

    let off = w.run(&["plan", "--output", "json"], &config(&w, ""));
    assert_eq!(off.code, 1, "failed rows make exit 1: {}", off.stderr);
    let off = off.json();
    for i in &id[..2] {
        let r = row(&off, i);
        assert_eq!(r["status"], "failed", "{r}");
        assert!(actions(r).is_empty(), "{r}");
        assert_eq!(r["failure"]["code"], "agent-needs-repair");
        assert!(
            r["detail"].as_str().unwrap().contains("repair = false"),
            "{r}"
        );
    }
    assert!(row(&off, &id[0])["detail"]
        .as_str()
        .unwrap()
        .contains("is Expired"));
    assert!(row(&off, &id[1])["detail"]
        .as_str()
        .unwrap()
        .contains(&format!("reports as Arc machine {RG}/{ORIGIN}")));
    assert_eq!(actions(row(&off, &id[2])), ["install-agent"]);

    let on = w.run(&["plan", "--output", "json"], &config(&w, "repair = true"));
    assert_eq!(on.code, 0, "{}", on.stderr);
    let on = on.json();
    for i in &id[..2] {
        let r = row(&on, i);
        assert_eq!(actions(r), ["reconnect-agent"], "{r}");
        assert_eq!(r["status"], "planned");
    }
    assert_eq!(actions(row(&on, &id[2])), ["install-agent"]);
    assert!(w.aws.mutating_calls().is_empty(), "plan changes nothing");
    let machines = w.azure.machines();
    assert_eq!(machines.len(), 2, "{machines:#?}");
}

#[test]
fn run_reconnects_in_its_own_batch_and_leaves_the_clones_origin_machine() {
    let (w, id) = world();
    let args = ["run", "--output", "json", "--verify-timeout", "20s"];
    let out = w.run(&args, &config(&w, "repair = true"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json();
    for i in &id[..2] {
        let r = row(&report, i);
        assert_eq!(r["status"], "onboarded", "{r}");
        assert!(
            r["detail"].as_str().unwrap().contains("agent reconnected"),
            "{r}"
        );
    }
    assert_eq!(row(&report, &id[2])["status"], "onboarded");

    // Two install commands (each after its batch's key exchange): the repair batch (#0, #1) with the
    // script's switch on, the install (#2) without.
    let mut batches: Vec<Vec<String>> = w
        .aws
        .install_commands()
        .iter()
        .map(|c| {
            let mut ids: Vec<String> = serde_json::from_value(c["instance_ids"].clone()).unwrap();
            ids.sort();
            ids
        })
        .collect();
    batches.sort_by_key(Vec::len);
    let mut repaired = vec![id[0].clone(), id[1].clone()];
    repaired.sort();
    assert_eq!(batches, [vec![id[2].clone()], repaired]);
    let switch: Vec<(String, Value)> = w
        .azure
        .connects()
        .iter()
        .map(|c| {
            (
                c["instance_id"].as_str().unwrap().to_string(),
                c["variables"]["ARC_RECONNECT"].clone(),
            )
        })
        .collect();
    assert_eq!(switch.len(), 3, "{switch:?}");
    for (instance, value) in switch {
        let want = if instance == id[2] { "" } else { "1" };
        assert_eq!(value, json!(want), "{instance}");
    }

    let machines = w.azure.machines();
    let status_of = |name: &str| {
        machines
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| m["properties"]["status"].clone())
    };
    for name in [id[0].as_str(), id[1].as_str(), ORIGIN] {
        assert_eq!(status_of(name), Some(json!("Connected")), "{name}");
    }
    // The clone's origin machine is left as it was: still reported by the clone's id until its own
    // instance's agent heartbeats again.
    let origin = machines.iter().find(|m| m["name"] == ORIGIN).unwrap();
    assert_eq!(
        origin["properties"]["detectedProperties"]["AWS-instanceId"],
        json!(id[1])
    );
}
