//! `arc-onboard plan` and `run` against the AWS emulator and the Azure stub with the connect options of
//! issue 19: `location = "auto"` and `[azure.locations]` give each batch's script its own location (the
//! planner decides, the report shows it), the resource group goes to `resource_group_location`, and the
//! gateway, the SQL Server tag and automatic upgrade reach every script.

mod common;

use common::{fleet_with, row, script_of, World};
use serde_json::json;

const GATEWAY: &str = "/subscriptions/00000000-0000-0000-0000-000000000002/resourceGroups/net/providers/Microsoft.HybridCompute/gateways/gw1";

/// Three regions: us-east-1 and eu-west-1 by the connector's table, eu-central-1 overridden.
fn config(w: &World) -> String {
    let azure = w.azure_section().replace(
        "location = \"eastus\"\n",
        "location = \"auto\"\nresource_group_location = \"northeurope\"\n",
    );
    format!(
        "[aws]\nregions = [\"us-east-1\", \"eu-west-1\", \"eu-central-1\"]\n\
         [onboarding]\ngateway_id = \"{GATEWAY}\"\nsql_server_license = \"license-only\"\nautomatic_upgrade = true\n\
         {azure}[azure.locations]\n\"eu-central-1\" = \"germanywestcentral\"\n"
    )
}

/// The value of `NAME='...'` in a rendered Linux script's assignment block (values here need no escapes).
fn assignment(script: &str, name: &str) -> String {
    let prefix = format!("{name}='");
    let line = script
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{name} is not assigned"));
    line[prefix.len()..line.len() - 1].to_string()
}

#[test]
fn each_batch_gets_the_location_its_region_maps_to_and_the_connect_options() {
    let w = World::start();
    let seeded = w.aws.seed(&fleet_with(json!([
        {"region": "us-east-1", "platform": "linux", "instance_profile": "AppProfile"},
        {"region": "eu-west-1", "platform": "linux", "instance_profile": "AppProfile"},
        {"region": "eu-central-1", "platform": "linux", "instance_profile": "AppProfile"}
    ])));
    let ids: Vec<String> = seeded
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_string())
        .collect();
    let expected = [
        ("us-east-1", "eastus"),
        ("eu-west-1", "westeurope"),
        ("eu-central-1", "germanywestcentral"),
    ];
    let config = config(&w);

    // The plan carries each row's location, in JSON and in the table.
    let plan = w.run(&["plan", "--output", "json"], &config);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let report = plan.json();
    for (id, (region, location)) in ids.iter().zip(expected) {
        let r = row(&report, id);
        assert_eq!(r["region"], region, "{r}");
        assert_eq!(r["azure_location"], location, "{r}");
    }
    let table = w.run(&["plan"], &config);
    assert!(table.stdout.contains("LOCATION"), "{}", table.stdout);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains(&ids[2]) && l.contains("germanywestcentral")),
        "{}",
        table.stdout
    );

    // run: one command per region, each script with its own location and the same connect options.
    w.aws.reset_calls();
    let out = w.run(
        &[
            "run",
            "--output",
            "json",
            "--wait-for-ssm",
            "30s",
            "--verify-timeout",
            "20s",
        ],
        &config,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json();
    // Each batch sends its key exchange, then its install: the installs carry the connect options.
    let commands: Vec<_> = w
        .aws
        .sent_commands()
        .into_iter()
        .filter(|c| script_of(c).contains("\nARC_MODE='install'\n"))
        .collect();
    assert_eq!(commands.len(), 3, "{commands:#?}");
    for (id, (region, location)) in ids.iter().zip(expected) {
        assert_eq!(row(&report, id)["status"], "onboarded", "{report:#}");
        let command = commands
            .iter()
            .find(|c| c["region"] == region)
            .unwrap_or_else(|| panic!("no command in {region}"));
        assert_eq!(command["instance_ids"], json!([id]));
        let script = script_of(command);
        assert_eq!(assignment(&script, "ARC_LOCATION"), location, "{region}");
        assert_eq!(assignment(&script, "ARC_GATEWAY_ID"), GATEWAY);
        assert_eq!(assignment(&script, "ARC_PRIVATE_LINK_SCOPE"), "");
        assert_eq!(assignment(&script, "ARC_AUTOMATIC_UPGRADE"), "true");
        assert!(
            assignment(&script, "ARC_TAGS")
                .split(',')
                .any(|t| t == "ArcSQLServerExtensionDeployment=LicenseOnly"),
            "{region}"
        );
    }
    // The stub connected each machine where its script said, with the SQL Server tag.
    let machines = w.azure.machines();
    for (id, (_, location)) in ids.iter().zip(expected) {
        let m = machines
            .iter()
            .find(|m| m["name"] == id.as_str())
            .unwrap_or_else(|| panic!("no machine {id}: {machines:#?}"));
        assert_eq!(m["location"], location, "{m}");
        assert_eq!(
            m["tags"]["ArcSQLServerExtensionDeployment"], "LicenseOnly",
            "{m}"
        );
    }
    // The account's resource group was created once, in resource_group_location.
    let groups = w.azure.control("GET", "/_stub/resource-groups", None)["resource_groups"].clone();
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 1, "{groups:#?}");
    assert_eq!(groups[0]["location"], "northeurope");
}

#[test]
fn a_listed_region_the_table_does_not_know_is_refused_until_it_is_mapped() {
    let w = World::start();
    // "xx-east-1" stands for an AWS region newer than the table.
    let config = config(&w).replace(
        "regions = [\"us-east-1\", \"eu-west-1\", \"eu-central-1\"]",
        "regions = [\"us-east-1\", \"xx-east-1\"]",
    );
    for command in ["plan", "run", "validate"] {
        let refused = w.run(&[command], &config);
        assert_eq!(refused.code, 2, "{command}: {}", refused.stderr);
        assert!(
            refused.stderr.contains("azure.locations"),
            "{}",
            refused.stderr
        );
        assert!(refused.stderr.contains("xx-east-1"), "{}", refused.stderr);
    }
    assert!(w.aws.calls().is_empty(), "{:?}", w.aws.calls());
    let mapped = format!("{config}\"xx-east-1\" = \"westus3\"\n");
    let out = w.run(&["validate"], &mapped);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("xx-east-1 = \"westus3\""),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("location = \"auto\""), "{}", out.stdout);
}
