//! The effective configuration: what `arc-onboard validate` prints, defaults filled in and no secret.

use toml::{Table, Value};

use super::{Config, Connectivity, CredentialConfig, RegionSelection};
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
        for (key, pin) in [
            ("installer_sha256_linux", &ob.installer_sha256_linux),
            ("installer_sha256_windows", &ob.installer_sha256_windows),
        ] {
            if let Some(pin) = pin {
                t.insert(key.into(), Value::String(pin.clone()));
            }
        }
        root.insert("onboarding".into(), Value::Table(t));

        if let Some(az) = &self.azure {
            let mut t = Table::new();
            t.insert("tenant_id".into(), Value::String(az.tenant_id.clone()));
            t.insert(
                "subscription_id".into(),
                Value::String(az.subscription_id.clone()),
            );
            t.insert("location".into(), Value::String(az.location.clone()));
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
            match &az.credential {
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
            root.insert("azure".into(), Value::Table(t));
        }
        if let Some(events) = &self.events {
            let mut t = Table::new();
            t.insert("queue_url".into(), Value::String(events.queue_url.clone()));
            root.insert("events".into(), Value::Table(t));
        }
        root
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
}
