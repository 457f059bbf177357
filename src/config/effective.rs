//! The effective configuration: what `arc-onboard validate` prints, defaults filled in and no secret.

use toml::{Table, Value};

use super::{Config, Connectivity, CredentialConfig, Location, RegionSelection};
use crate::config::duration::format_duration;

impl Config {
    /// The effective configuration as TOML, defaults filled in. No secret ever appears: `credential` is a
    /// comment that says which credential is in use and where it comes from (see
    /// [`crate::adapters::credential::Credential::describe`]).
    pub fn to_effective_toml(&self, credential: &str) -> String {
        let body = toml::to_string_pretty(&self.effective_table()).unwrap_or_default();
        let notes: String = self
            .effective_notes()
            .iter()
            .map(|n| format!("# note: {n}\n"))
            .collect();
        format!("# effective configuration\n# credential: {credential}\n{notes}{body}")
    }

    /// The notes printed above the effective configuration: the validator's warnings and the keys that
    /// come from the environment.
    pub fn effective_notes(&self) -> Vec<String> {
        let mut notes: Vec<String> = self.warnings.iter().map(|w| w.to_string()).collect();
        if let Some(az) = &self.azure {
            for (key, var) in &az.from_env {
                notes.push(format!("{key} comes from {var}"));
            }
        }
        notes
    }

    /// The effective configuration as a TOML table, defaults filled in, no secret (`validate --output
    /// json` prints it as JSON).
    pub fn effective_table(&self) -> Table {
        let mut root = Table::new();
        let mut aws = Table::new();
        match &self.aws.regions {
            RegionSelection::AllEnabled => {
                aws.insert("all_regions".into(), Value::Boolean(true));
            }
            RegionSelection::List(list) => {
                aws.insert("all_regions".into(), Value::Boolean(false));
                aws.insert(
                    "regions".into(),
                    Value::Array(list.iter().cloned().map(Value::String).collect()),
                );
            }
        }
        if let Some(tf) = &self.aws.tag_filter {
            let mut t = Table::new();
            t.insert("key".into(), Value::String(tf.key.clone()));
            if let Some(value) = &tf.value {
                t.insert("value".into(), Value::String(value.clone()));
            }
            t.insert("case_sensitive".into(), Value::Boolean(tf.case_sensitive));
            aws.insert("tag_filter".into(), Value::Table(t));
        }
        aws.insert(
            "accounts".into(),
            Value::Table(self.aws.accounts.to_table()),
        );
        root.insert("aws".into(), Value::Table(aws));

        let iam = &self.iam;
        let mut t = Table::new();
        t.insert(
            "auto_assignment".into(),
            Value::Boolean(iam.auto_assignment),
        );
        let schedule = if iam.schedule_enabled {
            "enable"
        } else {
            "disable"
        };
        t.insert(
            "auto_assignment_schedule".into(),
            Value::String(schedule.into()),
        );
        t.insert(
            "auto_assignment_interval".into(),
            Value::String(format_duration(iam.interval)),
        );
        t.insert(
            "policy_update_allowed".into(),
            Value::Boolean(iam.policy_update_allowed),
        );
        t.insert("role_name".into(), Value::String(iam.role_name.clone()));
        t.insert(
            "instance_profile_name".into(),
            Value::String(iam.instance_profile_name.clone()),
        );
        root.insert("iam".into(), Value::Table(t));

        let lifecycle = &self.lifecycle;
        let mut t = Table::new();
        t.insert(
            "delete_terminated".into(),
            Value::Boolean(lifecycle.delete_terminated),
        );
        t.insert(
            "delete_after".into(),
            Value::String(format_duration(lifecycle.delete_after)),
        );
        root.insert("lifecycle".into(), Value::Table(t));

        let ob = &self.onboarding;
        let mut t = Table::new();
        t.insert("periodic_sync".into(), Value::Boolean(ob.periodic_sync));
        t.insert(
            "sync_interval".into(),
            Value::String(format_duration(ob.sync_interval)),
        );
        match &ob.connectivity {
            Connectivity::Public => {
                t.insert("connectivity".into(), Value::String("public".into()));
            }
            Connectivity::Proxy(url) => {
                t.insert("connectivity".into(), Value::String("proxy".into()));
                t.insert("proxy_url".into(), Value::String(url.to_string()));
            }
        }
        t.insert(
            "installer_url_linux".into(),
            Value::String(ob.installer_url_linux.to_string()),
        );
        t.insert(
            "installer_url_windows".into(),
            Value::String(ob.installer_url_windows.to_string()),
        );
        t.insert(
            "installer_msi_url_windows".into(),
            Value::String(ob.installer_msi_url_windows.to_string()),
        );
        for (key, pin) in [
            ("installer_sha256_linux", &ob.installer_sha256_linux),
            ("installer_sha256_windows", &ob.installer_sha256_windows),
            (
                "installer_sha256_windows_msi",
                &ob.installer_sha256_windows_msi,
            ),
        ] {
            if let Some(pin) = pin {
                t.insert(key.into(), Value::String(pin.clone()));
            }
        }
        for (key, id) in [
            ("gateway_id", &ob.gateway_id),
            ("private_link_scope", &ob.private_link_scope),
        ] {
            if let Some(id) = id {
                t.insert(key.into(), Value::String(id.clone()));
            }
        }
        t.insert(
            "sql_server_license".into(),
            Value::String(ob.sql_server_license.as_str().into()),
        );
        t.insert(
            "automatic_upgrade".into(),
            Value::Boolean(ob.automatic_upgrade),
        );
        root.insert("onboarding".into(), Value::Table(t));

        if let Some(az) = &self.azure {
            let mut t = Table::new();
            t.insert("tenant_id".into(), Value::String(az.tenant_id.clone()));
            t.insert(
                "subscription_id".into(),
                Value::String(az.subscription_id.clone()),
            );
            let location = match &az.location {
                Location::Fixed(l) => l.clone(),
                Location::Auto => "auto".into(),
            };
            t.insert("location".into(), Value::String(location));
            t.insert(
                "resource_group_location".into(),
                Value::String(az.resource_group_location.clone()),
            );
            if !az.locations.is_empty() {
                let map = az
                    .locations
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                t.insert("locations".into(), Value::Table(map));
            }
            t.insert(
                "resource_group".into(),
                Value::String(az.resource_group.clone()),
            );
            t.insert("cloud".into(), Value::String(az.cloud.as_str().into()));
            if let Some(client_id) = &az.client_id {
                t.insert("client_id".into(), Value::String(client_id.clone()));
            }
            t.insert(
                "credential".into(),
                Value::String(az.credential.name().into()),
            );
            credential_keys(&mut t, &az.credential);
            t.insert(
                "authority_host".into(),
                Value::String(az.authority_host.to_string()),
            );
            t.insert(
                "resource_manager".into(),
                Value::String(az.resource_manager.to_string()),
            );
            if !az.tags.is_empty() {
                let tags = az
                    .tags
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                t.insert("tags".into(), Value::Table(tags));
            }
            if let Some(onb) = &az.onboarding {
                let mut o = Table::new();
                o.insert("tenant_id".into(), Value::String(onb.tenant_id.clone()));
                if let Some(client_id) = &onb.client_id {
                    o.insert("client_id".into(), Value::String(client_id.clone()));
                }
                o.insert(
                    "credential".into(),
                    Value::String(onb.credential.name().into()),
                );
                credential_keys(&mut o, &onb.credential);
                t.insert("onboarding".into(), Value::Table(o));
            }
            root.insert("azure".into(), Value::Table(t));
        }
        if let Some(events) = &self.events {
            let mut t = Table::new();
            t.insert("queue_url".into(), Value::String(events.queue_url.clone()));
            root.insert("events".into(), Value::Table(t));
        }
        let lc = &self.lifecycle;
        let mut t = Table::new();
        t.insert(
            "delete_terminated".into(),
            Value::Boolean(lc.delete_terminated),
        );
        t.insert(
            "delete_after".into(),
            Value::String(format_duration(lc.delete_after)),
        );
        t.insert("repair".into(), Value::Boolean(lc.repair));
        t.insert(
            "repair_after".into(),
            Value::String(format_duration(lc.repair_after)),
        );
        root.insert("lifecycle".into(), Value::Table(t));
        root
    }
}

/// The key that goes with a credential kind (`client_certificate_path`, ...), as the config file spells it.
fn credential_keys(t: &mut Table, credential: &CredentialConfig) {
    match credential {
        CredentialConfig::ClientCertificate { path } => {
            t.insert(
                "client_certificate_path".into(),
                Value::String(path.display().to_string()),
            );
        }
        CredentialConfig::WorkloadIdentity { token_file, .. } => {
            t.insert(
                "federated_token_file".into(),
                Value::String(token_file.display().to_string()),
            );
        }
        CredentialConfig::AwsFederation { audience } => {
            t.insert(
                "aws_federation_audience".into(),
                Value::String(audience.clone()),
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{parse, FULL};

    #[test]
    fn effective_config_round_trips_and_hides_the_secret() {
        let c = parse(FULL).unwrap();
        let text =
            c.to_effective_toml("client-secret: ARC_ONBOARD_CLIENT_SECRET is set (value redacted)");
        assert!(text.contains("# credential: client-secret"));
        let again = parse(&text).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn the_connect_and_placement_keys_round_trip() {
        let text = FULL.replace("location = \"eastus\"", "location = \"auto\"\nresource_group_location = \"eastus\"")
            .replace("proxy_url = \"http://10.0.0.5:3128\"\n", "proxy_url = \"http://10.0.0.5:3128\"\ngateway_id = \"/subscriptions/00000000-0000-0000-0000-000000000002/resourceGroups/net/providers/Microsoft.HybridCompute/gateways/gw1\"\nsql_server_license = \"payg\"\nautomatic_upgrade = true\n")
            + "[azure.locations]\n\"eu-west-1\" = \"northeurope\"\n";
        let c = parse(&text).unwrap();
        let effective = c.to_effective_toml("x");
        for line in [
            "location = \"auto\"",
            "resource_group_location = \"eastus\"",
            "eu-west-1 = \"northeurope\"",
            "sql_server_license = \"payg\"",
            "automatic_upgrade = true",
            "gateway_id = \"/subscriptions/",
        ] {
            assert!(effective.contains(line), "{line}:\n{effective}");
        }
        assert_eq!(parse(&effective).unwrap(), c);
    }
}
