//! The planner's install step: which SSM commands carry the agent script to which instances, and with
//! what (document, installer and checksum, resource group, location, tags, connectivity). The executor
//! sends exactly these batches: it may leave a row out (not Online in SSM, failed before, no key), never
//! add one, and it renders each batch's script from the batch alone.
//!
//! # Guarantees
//! - A batch holds at most [`BATCH`] instances, all of one region, one document, one Azure location and
//!   one kind (`install-agent`, or `reconnect-agent` with the script's reconnect switch on).
//! - Every row that runs the agent script is in exactly one batch when Azure is configured; a row that
//!   does not run it is in none. The steps that take actions away (scope, saved plan, event stage) prune
//!   the batches with [`AccountPlan::prune_batches`].

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::config::{Config, Connectivity, SqlServerLicense};
use crate::model::{ownership, Platform};
use crate::ports::{LINUX_DOCUMENT, WINDOWS_DOCUMENT};
use crate::reconcile::plan::{AccountPlan, InstanceAction, InstancePlan};

/// SendCommand accepts at most 50 instance ids.
pub const BATCH: usize = 50;

/// The SSM document a batch is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Document {
    /// `AWS-RunShellScript`: the bash script, for Linux.
    #[serde(rename = "AWS-RunShellScript")]
    Shell,
    /// `AWS-RunPowerShellScript`: the PowerShell script, for Windows.
    #[serde(rename = "AWS-RunPowerShellScript")]
    PowerShell,
}

impl Document {
    /// The document for a platform's instances.
    pub fn for_platform(platform: Platform) -> Document {
        if platform == Platform::Windows {
            Document::PowerShell
        } else {
            Document::Shell
        }
    }

    /// The document's name, as SSM spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Document::Shell => LINUX_DOCUMENT,
            Document::PowerShell => WINDOWS_DOCUMENT,
        }
    }
}

/// What the agent script of one batch does: everything the executor renders it from, besides the
/// delivery (the key exchange, then the token sealed to the keys) and the run's correlation id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    /// The SSM document (and so the script: bash or PowerShell).
    pub document: Document,
    /// Azure subscription of the Arc machines.
    pub subscription_id: String,
    /// Entra tenant.
    pub tenant_id: String,
    /// `AzureCloud` | `AzureUSGovernment` | `AzureChinaCloud`.
    pub cloud: String,
    /// The account's resource group.
    pub resource_group: String,
    /// The Azure location the machines are connected in.
    pub azure_location: String,
    /// Where the script downloads the agent installer from.
    pub installer_url: String,
    /// The installer's pinned SHA-256, when the configuration pins one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installer_sha256: Option<String>,
    /// Windows: where the script downloads the agent's MSI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msi_url: Option<String>,
    /// Windows: the MSI's pinned SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msi_sha256: Option<String>,
    /// `connectivity = "proxy"`: the proxy for the download and the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    /// The Arc gateway to connect through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_id: Option<String>,
    /// The Arc private link scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_link_scope: Option<String>,
    /// Connect with automatic agent upgrade.
    pub automatic_upgrade: bool,
    /// The Arc machines' tags: `[azure] tags`, the SQL Server license tag and the ownership tags (the
    /// script adds the instance's own `AwsInstanceId`).
    pub tags: BTreeMap<String, String>,
    /// `reconnect-agent`: a broken agent of ours is disconnected locally first.
    pub reconnect: bool,
}

impl AgentSpec {
    /// The names of the fields in which `self` and `other` differ (none when they are the same).
    pub fn differences(&self, other: &AgentSpec) -> Vec<String> {
        let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
            (serde_json::to_value(self), serde_json::to_value(other))
        else {
            return vec!["spec".into()];
        };
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .cloned()
            .collect()
    }
}

/// One planned SSM command pair (key exchange, then install): its instances and its script's spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentBatch {
    /// The region the commands are sent in.
    pub region: String,
    /// The instances, at most [`BATCH`], in plan order.
    pub instance_ids: Vec<String>,
    /// What the script does.
    #[serde(flatten)]
    pub spec: AgentSpec,
}

/// Plans the batches of an account's rows that run the agent script (pure). Without `[azure]` there is
/// nothing to connect to, so no batch (a `run` refuses to start then).
pub fn plan_batches(
    instances: &[InstancePlan],
    resource_group: Option<&str>,
    config: &Config,
) -> Vec<AgentBatch> {
    let (Some(azure), Some(rg)) = (&config.azure, resource_group) else {
        return Vec::new();
    };
    let onboarding = &config.onboarding;
    // (region, document, location, reconnect) -> instance ids, in plan order.
    type Key = (String, Document, String, bool);
    let mut groups: BTreeMap<Key, Vec<String>> = BTreeMap::new();
    for row in instances.iter().filter(|r| r.runs_agent_script()) {
        // The planner gives every install row its location; one without is failed there, with no action.
        let Some(location) = &row.azure_location else {
            continue;
        };
        let reconnect = row.actions.contains(&InstanceAction::ReconnectAgent);
        groups
            .entry((
                row.region.clone(),
                Document::for_platform(row.platform),
                location.clone(),
                reconnect,
            ))
            .or_default()
            .push(row.instance_id.clone());
    }
    let proxy_url = match &onboarding.connectivity {
        Connectivity::Public => None,
        Connectivity::Proxy(url) => Some(url.as_str().trim_end_matches('/').to_string()),
    };
    let account_id = instances.first().map_or("", |r| r.account_id.as_str());
    let mut batches = Vec::new();
    for ((region, document, location, reconnect), ids) in groups {
        let mut tags = azure.tags.clone();
        tags.insert("AwsAccountId".into(), account_id.into());
        tags.insert("AwsRegion".into(), region.clone());
        tags.insert(
            SqlServerLicense::TAG.into(),
            onboarding.sql_server_license.tag_value().into(),
        );
        tags.insert(
            ownership::MANAGED_BY.into(),
            ownership::MANAGED_BY_VALUE.into(),
        );
        tags.insert(ownership::ACCOUNT.into(), account_id.into());
        tags.insert(ownership::REGION.into(), region.clone());
        let windows = document == Document::PowerShell;
        let (installer_url, installer_sha256) = if windows {
            (
                &onboarding.installer_url_windows,
                &onboarding.installer_sha256_windows,
            )
        } else {
            (
                &onboarding.installer_url_linux,
                &onboarding.installer_sha256_linux,
            )
        };
        let spec = AgentSpec {
            document,
            subscription_id: azure.subscription_id.clone(),
            tenant_id: azure.tenant_id.clone(),
            cloud: azure.cloud.as_str().to_string(),
            resource_group: rg.to_string(),
            azure_location: location,
            installer_url: installer_url.as_str().to_string(),
            installer_sha256: installer_sha256.clone(),
            msi_url: windows.then(|| onboarding.installer_msi_url_windows.as_str().to_string()),
            msi_sha256: onboarding
                .installer_sha256_windows_msi
                .clone()
                .filter(|_| windows),
            proxy_url: proxy_url.clone(),
            gateway_id: onboarding.gateway_id.clone(),
            private_link_scope: onboarding.private_link_scope.clone(),
            automatic_upgrade: onboarding.automatic_upgrade,
            tags,
            reconnect,
        };
        for chunk in ids.chunks(BATCH) {
            batches.push(AgentBatch {
                region: region.clone(),
                instance_ids: chunk.to_vec(),
                spec: spec.clone(),
            });
        }
    }
    batches
}

impl AccountPlan {
    /// Takes out of the batches every row that no longer runs the agent script (a scope, a saved plan or
    /// an event stage took its action away), and drops the batches left empty. Never adds a row. Pure.
    pub fn prune_batches(&mut self) {
        let running: HashSet<(&str, &str)> = self
            .instances
            .iter()
            .filter(|r| r.runs_agent_script())
            .map(|r| (r.region.as_str(), r.instance_id.as_str()))
            .collect();
        for b in &mut self.batches {
            b.instance_ids
                .retain(|id| running.contains(&(b.region.as_str(), id.as_str())));
        }
        self.batches.retain(|b| !b.instance_ids.is_empty());
    }

    /// The batch that carries the agent script to `instance_id` in `region`, with its index.
    pub fn batch_of(&self, region: &str, instance_id: &str) -> Option<(usize, &AgentBatch)> {
        self.batches
            .iter()
            .enumerate()
            .find(|(_, b)| b.region == region && b.instance_ids.iter().any(|i| i == instance_id))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::SSM_POLICY_ARN;
    use crate::fake::FakeAws;
    use crate::model::InstanceState;
    use crate::reconcile::observe::{observe_account, ArcObservation};
    use crate::reconcile::plan::{plan_account, Memory, Scope, Status};

    const ACCOUNT: &str = "123456789012";
    const SHA_LINUX: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const SHA_WINDOWS: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn config(onboarding: &str) -> Config {
        let text = format!(
            "[aws]\nregions = [\"us-east-1\", \"eu-west-1\"]\n[onboarding]\n{onboarding}\n\
             [azure]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\n\
             subscription_id = \"00000000-0000-0000-0000-000000000002\"\n\
             client_id = \"00000000-0000-0000-0000-000000000003\"\nlocation = \"eastus\"\n\
             tags = {{ CostCenter = \"42\" }}\n[azure.locations]\n\"eu-west-1\" = \"northeurope\"\n"
        );
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    /// 120 Linux and 3 Windows instances in us-east-1, 2 Linux in eu-west-1, one stopped; all with a
    /// working SSM profile.
    fn fleet() -> FakeAws {
        let aws = FakeAws::new(&["us-east-1", "eu-west-1"]);
        aws.add_role("AppRole", &[SSM_POLICY_ARN], Some("AppProfile"));
        let add = |region: &str, id: String, platform: Platform, state: InstanceState| {
            aws.add_instance(region, &id, platform, state, Some("AppProfile"), &[])
        };
        let running = InstanceState::Running;
        for n in 0..120 {
            add(
                "us-east-1",
                format!("i-lin{n:03}"),
                Platform::Linux,
                running,
            );
        }
        for n in 0..3 {
            add(
                "us-east-1",
                format!("i-win{n:03}"),
                Platform::Windows,
                running,
            );
        }
        for n in 0..2 {
            add("eu-west-1", format!("i-eu{n:03}"), Platform::Linux, running);
        }
        add(
            "us-east-1",
            "i-stopped".into(),
            Platform::Linux,
            InstanceState::Stopped,
        );
        aws
    }

    async fn plan_of(aws: &FakeAws, cfg: &Config) -> AccountPlan {
        let regions = ["us-east-1".to_string(), "eu-west-1".to_string()];
        let obs = observe_account(
            ACCOUNT,
            &regions,
            cfg,
            (aws, aws, aws),
            crate::reconcile::observe::InFlightWindow::ending_at(
                std::time::SystemTime::now(),
                Duration::from_secs(60),
            ),
            ArcObservation::NotConfigured,
        )
        .await;
        plan_account(&obs, cfg, &Memory::none())
    }

    /// (region, document, location, number of instances) of each batch.
    fn shape(plan: &AccountPlan) -> Vec<(&str, Document, &str, usize)> {
        plan.batches
            .iter()
            .map(|b| {
                (
                    b.region.as_str(),
                    b.spec.document,
                    b.spec.azure_location.as_str(),
                    b.instance_ids.len(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn the_plan_says_each_batch_with_its_document_installer_checksum_tags_group_and_location()
    {
        let aws = fleet();
        let proxy = config(&format!(
            "connectivity = \"proxy\"\nproxy_url = \"http://10.0.0.5:3128/\"\n\
             installer_sha256_linux = \"{SHA_LINUX}\"\ninstaller_sha256_windows = \"{SHA_WINDOWS}\"\n\
             sql_server_license = \"payg\""
        ));
        let plan = plan_of(&aws, &proxy).await;
        // Batches by region, document and location; at most 50 each, in plan order.
        assert_eq!(
            shape(&plan),
            [
                ("eu-west-1", Document::Shell, "northeurope", 2),
                ("us-east-1", Document::Shell, "eastus", 50),
                ("us-east-1", Document::Shell, "eastus", 50),
                ("us-east-1", Document::Shell, "eastus", 20),
                ("us-east-1", Document::PowerShell, "eastus", 3),
            ]
        );
        let ids: Vec<&str> = plan.batches[1..4]
            .iter()
            .flat_map(|b| b.instance_ids.iter().map(String::as_str))
            .collect();
        let expected: Vec<String> = (0..120).map(|n| format!("i-lin{n:03}")).collect();
        assert_eq!(ids, expected, "every Linux row once, in order");
        // Every row that runs the agent script is in exactly one batch; the stopped one in none.
        for row in &plan.instances {
            let batches = plan
                .batches
                .iter()
                .filter(|b| b.region == row.region && b.instance_ids.contains(&row.instance_id))
                .count();
            assert_eq!(batches, usize::from(row.runs_agent_script()), "{row:?}");
        }
        assert!(plan.batch_of("us-east-1", "i-stopped").is_none());

        let linux = &plan.batches[1].spec;
        assert_eq!(linux.document.as_str(), "AWS-RunShellScript");
        assert_eq!(
            linux.installer_url,
            "https://gbl.his.arc.azure.com/azcmagent-linux"
        );
        assert_eq!(linux.installer_sha256.as_deref(), Some(SHA_LINUX));
        assert_eq!(
            (linux.msi_url.as_deref(), linux.msi_sha256.as_deref()),
            (None, None)
        );
        assert_eq!(linux.proxy_url.as_deref(), Some("http://10.0.0.5:3128"));
        assert_eq!(linux.resource_group, format!("aws_{ACCOUNT}"));
        assert_eq!(
            (linux.subscription_id.as_str(), linux.cloud.as_str()),
            ("00000000-0000-0000-0000-000000000002", "AzureCloud")
        );
        assert!(!linux.reconnect);
        let windows = &plan.batches[4].spec;
        assert_eq!(windows.document.as_str(), "AWS-RunPowerShellScript");
        assert_eq!(windows.installer_url, "https://aka.ms/azcmagent-windows");
        assert_eq!(windows.installer_sha256.as_deref(), Some(SHA_WINDOWS));
        assert!(windows.msi_url.is_some());
        let tag = |spec: &AgentSpec, k: &str| spec.tags.get(k).cloned().unwrap_or_default();
        for (spec, region) in [(linux, "us-east-1"), (&plan.batches[0].spec, "eu-west-1")] {
            assert_eq!(tag(spec, "CostCenter"), "42");
            assert_eq!(tag(spec, "AwsAccountId"), ACCOUNT);
            assert_eq!(tag(spec, "AwsRegion"), region);
            assert_eq!(
                tag(spec, ownership::MANAGED_BY),
                ownership::MANAGED_BY_VALUE
            );
            assert_eq!(tag(spec, ownership::ACCOUNT), ACCOUNT);
            assert_eq!(tag(spec, ownership::REGION), region);
            assert_eq!(tag(spec, SqlServerLicense::TAG), "PAYG");
        }

        // Public: no proxy, no checksum unless pinned; the same batches.
        let public = plan_of(&aws, &config("")).await;
        assert_eq!(shape(&public), shape(&plan));
        for b in &public.batches {
            assert_eq!(b.spec.proxy_url, None);
            assert_eq!(b.spec.installer_sha256, None);
        }
        assert_eq!(
            public.batches[1].spec.differences(linux),
            ["installer_sha256", "proxy_url", "tags"]
        );

        // The report and the saved plan carry the batches as the executor reads them.
        let json = serde_json::to_value(&plan.batches[4]).unwrap();
        assert_eq!(json["document"], "AWS-RunPowerShellScript");
        assert_eq!(json["installer_sha256"], SHA_WINDOWS);
        assert_eq!(json["instance_ids"].as_array().unwrap().len(), 3);
        let back: AgentBatch = serde_json::from_value(json).unwrap();
        assert_eq!(back, plan.batches[4]);
    }

    #[tokio::test]
    async fn repairs_get_their_own_batches_and_steps_that_take_actions_away_prune_them() {
        let aws = fleet();
        let cfg = config("");
        let mut plan = plan_of(&aws, &cfg).await;
        // Two Linux rows of us-east-1 become repairs: their own batch, reconnect on.
        for row in plan
            .instances
            .iter_mut()
            .filter(|r| ["i-lin000", "i-lin001"].contains(&r.instance_id.as_str()))
        {
            row.actions = vec![InstanceAction::ReconnectAgent];
        }
        plan.batches = plan_batches(&plan.instances, plan.resource_group.as_deref(), &cfg);
        let repairs: Vec<&AgentBatch> = plan.batches.iter().filter(|b| b.spec.reconnect).collect();
        assert_eq!(repairs.len(), 1);
        assert_eq!(repairs[0].instance_ids, ["i-lin000", "i-lin001"]);
        assert_eq!(plan.batch_of("us-east-1", "i-lin002").unwrap().0, 1);

        // The IAM-only scope installs nothing: no batch is left.
        assert!(plan
            .clone()
            .scoped(Scope {
                iam: true,
                install: false
            })
            .batches
            .is_empty());
        // A row that no longer runs the script leaves its batch; a batch left empty goes.
        let mut held = plan.clone();
        for row in held
            .instances
            .iter_mut()
            .filter(|r| r.region == "eu-west-1")
        {
            row.actions.clear();
            row.status = Status::Failed;
        }
        held.prune_batches();
        assert!(held.batches.iter().all(|b| b.region == "us-east-1"));
        assert_eq!(held.batches.len(), plan.batches.len() - 1);

        // Without [azure] there is nothing to connect to: no batch.
        let bare = Config::parse(
            "[aws]\nregions = [\"us-east-1\", \"eu-west-1\"]\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert!(plan_of(&aws, &bare).await.batches.is_empty());
    }
}
