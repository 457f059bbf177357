//! Saved plans: what `plan --out FILE` keeps of a reviewed plan (each row's actions and the observed facts
//! they rest on), and the pure restriction `run --plan FILE` lays over the plan it makes anew, so that it
//! executes that reviewed plan and nothing else.
//!
//! # Guarantees
//! - The restricted plan never holds an action the saved plan did not hold for that instance or account:
//!   an instance the saved plan does not name is `skipped` with no action (left for the next run).
//! - A row whose basis changed (EC2 state, instance profile, SSM ping, Arc machine) or whose actions now
//!   differ is `skipped` with the difference in its detail; it is never applied on stale facts.
//! - Account-level actions (`create-ssm-role` steps, `create-resource-group`) are kept only when the saved
//!   plan had them and a row that is still applied needs them.
//! - The agent script goes out in the saved plan's batches, with their saved document and script
//!   parameters: a row whose batch spec (document, installer and checksum, resource group, location,
//!   tags, ...) differs from the saved one is `skipped`, and the batches are the saved ones less the rows
//!   no longer applied. A `delete-arc-machine` row keeps the resource group and machine it was saved with.
//!
//! The file's checks (format, tool version, configuration fingerprint, age) are the command's, in
//! `cli::saved_plan`; this module is pure.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::reconcile::batches::{AgentBatch, AgentSpec};
use crate::reconcile::observe::ArcObservation;
use crate::reconcile::plan::{AccountPlan, InstanceAction, InstancePlan, SsmRoleSteps, Status};

/// The format version of the saved plan file; a file with another is refused. 2: the accounts keep
/// their resource group and install batches, `delete-arc-machine` its resource group and machine (a
/// format 1 file, which has neither, is refused and made anew).
pub const FORMAT: u32 = 2;

/// What Azure showed of an instance's Arc machine when it was planned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "seen", rename_all = "kebab-case")]
pub enum ArcSeen {
    /// Azure was not asked (no `[azure]`, no credential, or it did not answer).
    #[default]
    NotChecked,
    /// The resource group holds no machine for the instance.
    Absent,
    /// The machine, with its status.
    Present {
        /// Resource name.
        name: String,
        /// `Connected`, `Disconnected`, ...
        status: String,
    },
}

impl ArcSeen {
    /// What `arc` says of `instance_id`'s machine.
    pub fn of(arc: &ArcObservation, instance_id: &str) -> ArcSeen {
        match arc {
            ArcObservation::Checked { machines, .. } => match machines.get(instance_id) {
                Some(m) => ArcSeen::Present {
                    name: m.name.clone(),
                    status: m.status.as_str().to_string(),
                },
                None => ArcSeen::Absent,
            },
            _ => ArcSeen::NotChecked,
        }
    }

    fn describe(&self) -> String {
        match self {
            ArcSeen::NotChecked => "not checked".into(),
            ArcSeen::Absent => "absent".into(),
            ArcSeen::Present { name, status } => format!("{name} {status}"),
        }
    }
}

/// The observed facts a row's plan rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Basis {
    /// EC2 state.
    pub state: String,
    /// Instance profile ARN, or null.
    pub instance_profile: Option<String>,
    /// SSM ping status, or null when not registered.
    pub ssm_ping: Option<String>,
    /// The Arc machine.
    pub arc_machine: ArcSeen,
}

impl Basis {
    /// The basis of a planned row.
    pub fn of(row: &InstancePlan) -> Basis {
        Basis {
            state: row.state.as_str().to_string(),
            instance_profile: row.instance_profile.clone(),
            ssm_ping: row.ssm_ping.map(|p| p.as_str().to_string()),
            arc_machine: row.arc.clone(),
        }
    }

    /// What changed from `self` (saved) to `now`, in words; empty when nothing did.
    pub fn changes(&self, now: &Basis) -> Vec<String> {
        let opt = |v: &Option<String>, none: &str| v.clone().unwrap_or_else(|| none.to_string());
        let mut out = Vec::new();
        if self.state != now.state {
            out.push(format!("state {} -> {}", self.state, now.state));
        }
        if self.instance_profile != now.instance_profile {
            out.push(format!(
                "instance profile {} -> {}",
                opt(&self.instance_profile, "none"),
                opt(&now.instance_profile, "none")
            ));
        }
        if self.ssm_ping != now.ssm_ping {
            out.push(format!(
                "SSM {} -> {}",
                opt(&self.ssm_ping, "not registered"),
                opt(&now.ssm_ping, "not registered")
            ));
        }
        if self.arc_machine != now.arc_machine {
            out.push(format!(
                "Arc machine {} -> {}",
                self.arc_machine.describe(),
                now.arc_machine.describe()
            ));
        }
        out
    }
}

/// One action of a saved row, with its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedAction {
    /// The report's spelling (`associate-instance-profile`, ...).
    pub action: String,
    /// The instance profile it names, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The role it names, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `delete-arc-machine`: the machine's resource group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    /// `delete-arc-machine`: the machine's resource name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
}

impl From<&InstanceAction> for SavedAction {
    fn from(a: &InstanceAction) -> SavedAction {
        let mut saved = SavedAction {
            action: a.as_str().to_string(),
            profile: None,
            role: None,
            resource_group: None,
            machine: None,
        };
        match a {
            InstanceAction::AssociateInstanceProfile { profile } => {
                saved.profile = Some(profile.clone())
            }
            InstanceAction::AddRoleToInstanceProfile { profile, role } => {
                saved.profile = Some(profile.clone());
                saved.role = Some(role.clone());
            }
            InstanceAction::AttachRolePolicy { role } => saved.role = Some(role.clone()),
            InstanceAction::DeleteArcMachine {
                resource_group,
                machine,
            } => {
                saved.resource_group = Some(resource_group.clone());
                saved.machine = Some(machine.clone());
            }
            // Their batch (the account's `batches`) says how.
            InstanceAction::InstallAgent | InstanceAction::ReconnectAgent => {}
        }
        saved
    }
}

fn saved_actions(actions: &[InstanceAction]) -> Vec<SavedAction> {
    actions.iter().map(SavedAction::from).collect()
}

fn names(actions: &[SavedAction]) -> String {
    if actions.is_empty() {
        return "none".into();
    }
    let names: Vec<&str> = actions.iter().map(|a| a.action.as_str()).collect();
    names.join(", ")
}

/// One instance of a saved plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRow {
    /// Account.
    pub account_id: String,
    /// Region.
    pub region: String,
    /// `i-...`.
    pub instance_id: String,
    /// `Name` tag.
    pub name: Option<String>,
    /// The planned actions, in execution order.
    pub actions: Vec<SavedAction>,
    /// The planned status.
    pub status: String,
    /// The planned detail.
    pub detail: String,
    /// The observed facts the plan rests on.
    pub basis: Basis,
}

/// One account of a saved plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedAccount {
    /// 12-digit id.
    pub account_id: String,
    /// Account-level actions (`create-ssm-role`, `create-resource-group`).
    pub actions: Vec<String>,
    /// The steps behind `create-ssm-role`, when planned.
    #[serde(default)]
    pub ssm_role_steps: Option<SsmRoleSteps>,
    /// The account's Azure resource group, when Azure is configured.
    #[serde(default)]
    pub resource_group: Option<String>,
    /// The agent script's batches, as planned.
    #[serde(default)]
    pub batches: Vec<AgentBatch>,
}

/// Where a saved plan came from: what `run --plan` checks before using it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The version of arc-onboard that made it; another version refuses it.
    pub tool_version: String,
    /// When observation began, RFC 3339 (the plan's age counts from here).
    pub created_at: String,
    /// `sha256:` of the effective configuration it was made from.
    pub config_fingerprint: String,
    /// `--shard` it was made with; `run --plan` uses the same.
    pub shard: Option<String>,
    /// The configured regions (`all-enabled` for `all_regions = true`).
    pub regions: Vec<String>,
}

/// The saved plan file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPlan {
    /// [`FORMAT`].
    pub format: u32,
    /// Where it came from (flattened into the file's top level).
    #[serde(flatten)]
    pub from: Provenance,
    /// The accounts in scope and their account-level actions.
    pub accounts: Vec<SavedAccount>,
    /// Every instance of the plan, with its actions and basis.
    pub instances: Vec<SavedRow>,
}

impl SavedPlan {
    /// The saved form of a plan: its accounts and every row.
    pub fn new(from: Provenance, accounts: Vec<SavedAccount>, rows: &[InstancePlan]) -> SavedPlan {
        SavedPlan {
            format: FORMAT,
            from,
            accounts,
            instances: rows
                .iter()
                .map(|r| SavedRow {
                    account_id: r.account_id.clone(),
                    region: r.region.clone(),
                    instance_id: r.instance_id.clone(),
                    name: r.name.clone(),
                    actions: saved_actions(&r.actions),
                    status: r.status.as_str().to_string(),
                    detail: r.detail.clone(),
                    basis: Basis::of(r),
                })
                .collect(),
        }
    }

    /// Restricts a plan made anew to this saved plan (see the module's guarantees). Pure.
    pub fn restrict(&self, mut plan: AccountPlan) -> AccountPlan {
        let account = self
            .accounts
            .iter()
            .find(|a| a.account_id == plan.account_id);
        let rows: HashMap<(&str, &str), &SavedRow> = self
            .instances
            .iter()
            .filter(|r| r.account_id == plan.account_id)
            .map(|r| ((r.region.as_str(), r.instance_id.as_str()), r))
            .collect();
        let role_allowed = match (&plan.create_ssm_role, account) {
            (None, _) => true,
            (Some(now), Some(a)) => a
                .ssm_role_steps
                .as_ref()
                .is_some_and(|saved| covers(saved, now)),
            (Some(_), None) => false,
        };
        let group_allowed = !plan.create_resource_group
            || account.is_some_and(|a| a.actions.iter().any(|x| x == "create-resource-group"));
        for row in &mut plan.instances {
            let Some(saved) = rows.get(&(row.region.as_str(), row.instance_id.as_str())) else {
                skip(
                    row,
                    "not in the saved plan (it appeared after the plan was made); left for the next run"
                        .into(),
                );
                continue;
            };
            let changes = saved.basis.changes(&Basis::of(row));
            let now = saved_actions(&row.actions);
            if !changes.is_empty() {
                skip(
                    row,
                    format!(
                        "changed since the plan was made ({}); not applied: run plan again",
                        changes.join("; ")
                    ),
                );
            } else if now != saved.actions {
                skip(
                    row,
                    format!(
                        "its plan changed since it was saved (saved: {}; now: {}); not applied: run plan again",
                        names(&saved.actions),
                        names(&now)
                    ),
                );
            } else if row.needs_ssm_role && !role_allowed {
                skip(
                    row,
                    "needs create-ssm-role steps the saved plan did not have; not applied: run plan again"
                        .into(),
                );
            } else if row.actions.contains(&InstanceAction::InstallAgent) && !group_allowed {
                skip(
                    row,
                    "needs create-resource-group, which the saved plan did not have; not applied: run plan again"
                        .into(),
                );
            }
        }
        self.restrict_batches(&mut plan, account);
        let role_needed = plan.instances.iter().any(|r| r.needs_ssm_role);
        if !(role_allowed && role_needed) {
            plan.create_ssm_role = None;
        }
        let installs = plan
            .instances
            .iter()
            .any(|r| r.actions.contains(&InstanceAction::InstallAgent));
        plan.create_resource_group &= group_allowed && installs;
        plan
    }
}

impl SavedPlan {
    /// Lays the saved batches over the plan: a row that still runs the agent script goes out in its saved
    /// batch, and only when the batch's spec is the one planned now (otherwise it is skipped, with the
    /// fields that differ); the plan's batches become the saved ones, less the rows no longer applied.
    fn restrict_batches(&self, plan: &mut AccountPlan, account: Option<&SavedAccount>) {
        let saved: &[AgentBatch] = account.map_or(&[], |a| a.batches.as_slice());
        // Each instance's batch spec, by (region, instance id).
        fn specs(batches: &[AgentBatch]) -> HashMap<(&str, &str), &AgentSpec> {
            batches
                .iter()
                .flat_map(|b| {
                    b.instance_ids
                        .iter()
                        .map(move |id| ((b.region.as_str(), id.as_str()), &b.spec))
                })
                .collect()
        }
        let now = std::mem::take(&mut plan.batches);
        let (saved_specs, now_specs) = (specs(saved), specs(&now));
        for row in plan.instances.iter_mut().filter(|r| r.runs_agent_script()) {
            let key = (row.region.as_str(), row.instance_id.as_str());
            let (was, is) = (saved_specs.get(&key).copied(), now_specs.get(&key).copied());
            match (was, is) {
                // Without `[azure]` no plan has batches (and no run starts).
                (None, None) => {}
                (Some(was), Some(is)) if was == is => {}
                (Some(was), Some(is)) => skip(
                    row,
                    format!(
                        "its install changed since the plan was saved ({}); not applied: run plan again",
                        was.differences(is).join(", ")
                    ),
                ),
                (None, Some(_)) => skip(
                    row,
                    "the saved plan holds no install batch for it; not applied: run plan again".into(),
                ),
                (Some(_), None) => skip(
                    row,
                    "no install batch is planned for it now; not applied: run plan again".into(),
                ),
            }
        }
        plan.batches = saved.to_vec();
        plan.prune_batches();
    }
}

/// Whether every step of `now` was also a step of `saved`.
fn covers(saved: &SsmRoleSteps, now: &SsmRoleSteps) -> bool {
    (!now.create_role || saved.create_role)
        && (!now.attach_policy || saved.attach_policy)
        && (!now.create_profile || saved.create_profile)
        && (!now.add_role_to_profile || saved.add_role_to_profile)
}

/// Leaves a row alone: no action, `skipped`, and why.
fn skip(row: &mut InstancePlan, why: String) {
    row.actions.clear();
    row.needs_ssm_role = false;
    row.resume = false;
    row.status = Status::Skipped;
    row.detail = why;
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, SSM_POLICY_ARN};
    use crate::fake::FakeAws;
    use crate::model::{InstanceState, PingStatus, Platform};
    use crate::reconcile::observe::observe_account;
    use crate::reconcile::plan::{plan_account, Memory};

    fn config() -> Config {
        Config::parse("[aws]\nregions = [\"us-east-1\"]\n", Path::new("t.toml")).unwrap()
    }

    /// `i-ready` has the SSM profile (IAM in place); `i-bare` has no profile, and the SSM role and
    /// profile do not exist yet (create-ssm-role, associate-instance-profile).
    pub(crate) fn fleet() -> FakeAws {
        let aws = FakeAws::new(&["us-east-1"]);
        aws.add_role("AppRole", &[SSM_POLICY_ARN], Some("AppProfile"));
        for (id, profile) in [("i-ready", Some("AppProfile")), ("i-bare", None)] {
            let running = InstanceState::Running;
            aws.add_instance("us-east-1", id, Platform::Linux, running, profile, &[]);
        }
        aws
    }

    /// One account's plan of `aws` (us-east-1, Azure not configured).
    pub(crate) async fn plan_of(aws: &FakeAws) -> AccountPlan {
        plan_with(aws, &config()).await
    }

    /// One account's plan of `aws` (us-east-1) under `cfg`.
    async fn plan_with(aws: &FakeAws, cfg: &Config) -> AccountPlan {
        let regions = ["us-east-1".to_string()];
        let obs = observe_account(
            "123456789012",
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

    fn saved(plan: &AccountPlan) -> SavedPlan {
        let from = Provenance {
            tool_version: "0".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            config_fingerprint: "sha256:0".into(),
            shard: None,
            regions: vec!["us-east-1".into()],
        };
        let account = SavedAccount {
            account_id: plan.account_id.clone(),
            actions: plan.action_names().iter().map(|a| a.to_string()).collect(),
            ssm_role_steps: plan.create_ssm_role.clone(),
            resource_group: plan.resource_group.clone(),
            batches: plan.batches.clone(),
        };
        SavedPlan::new(from, vec![account], &plan.instances)
    }

    fn row<'a>(plan: &'a AccountPlan, id: &str) -> &'a InstancePlan {
        plan.instances.iter().find(|r| r.instance_id == id).unwrap()
    }

    fn row_mut<'a>(plan: &'a mut AccountPlan, id: &str) -> &'a mut InstancePlan {
        plan.instances
            .iter_mut()
            .find(|r| r.instance_id == id)
            .unwrap()
    }

    #[tokio::test]
    async fn a_plan_restricted_to_its_own_saved_form_is_unchanged() {
        let plan = plan_of(&fleet()).await;
        assert!(plan.create_ssm_role.is_some(), "the fixture needs the role");
        assert!(!row(&plan, "i-bare").actions.is_empty());
        assert_eq!(saved(&plan).restrict(plan.clone()), plan);
    }

    #[tokio::test]
    async fn an_instance_launched_after_the_plan_is_skipped_with_no_action() {
        let aws = fleet();
        let before = saved(&plan_of(&aws).await);
        aws.add_instance(
            "us-east-1",
            "i-new",
            Platform::Linux,
            InstanceState::Running,
            None,
            &[],
        );
        let now = plan_of(&aws).await;
        assert!(!row(&now, "i-new").actions.is_empty(), "planned anew");
        let restricted = before.restrict(now.clone());
        let new = row(&restricted, "i-new");
        assert_eq!(new.status, Status::Skipped);
        assert!(new.actions.is_empty() && !new.needs_ssm_role);
        assert!(
            new.detail.contains("not in the saved plan"),
            "{}",
            new.detail
        );
        assert_eq!(row(&restricted, "i-bare"), row(&now, "i-bare"));
        assert_eq!(restricted.create_ssm_role, now.create_ssm_role);
    }

    /// A change of the world an instance's plan rests on.
    type Change = fn(&mut InstancePlan);

    #[tokio::test]
    async fn a_row_whose_world_changed_is_skipped_with_what_changed() {
        let plan = plan_of(&fleet()).await;
        let saved = saved(&plan);
        let changes: [(&str, Change, &str); 4] = [
            (
                "profile",
                |r| r.instance_profile = Some("arn:aws:iam::1:instance-profile/Other".into()),
                "instance profile none -> arn:aws:iam::1:instance-profile/Other",
            ),
            (
                "ssm",
                |r| r.ssm_ping = Some(PingStatus::ConnectionLost),
                "SSM not registered -> ConnectionLost",
            ),
            (
                "arc",
                |r| {
                    r.arc = ArcSeen::Present {
                        name: "i-bare".into(),
                        status: "Disconnected".into(),
                    }
                },
                "Arc machine not checked -> i-bare Disconnected",
            ),
            (
                "state",
                |r| r.state = InstanceState::Stopped,
                "state running -> stopped",
            ),
        ];
        for (what, change, expected) in changes {
            let mut now = plan.clone();
            change(row_mut(&mut now, "i-bare"));
            let restricted = saved.restrict(now);
            let r = row(&restricted, "i-bare");
            assert_eq!(r.status, Status::Skipped, "{what}");
            assert!(r.actions.is_empty(), "{what}");
            assert!(r.detail.contains(expected), "{what}: {}", r.detail);
            // The only row that needed the SSM role is skipped: the role is not created either.
            assert_eq!(restricted.create_ssm_role, None, "{what}");
            assert_eq!(row(&restricted, "i-ready"), row(&plan, "i-ready"), "{what}");
        }
    }

    #[tokio::test]
    async fn actions_or_account_steps_beyond_the_saved_plan_are_never_kept() {
        let plan = plan_of(&fleet()).await;
        let saved = saved(&plan);

        // Same facts, other actions (e.g. the role's policy was detached meanwhile).
        let mut now = plan.clone();
        row_mut(&mut now, "i-ready").actions.insert(
            0,
            InstanceAction::AttachRolePolicy {
                role: "AppRole".into(),
            },
        );
        let r = saved.restrict(now);
        let ready = row(&r, "i-ready");
        assert_eq!(ready.status, Status::Skipped);
        assert!(
            ready
                .detail
                .contains("saved: install-agent; now: attach-role-policy, install-agent"),
            "{}",
            ready.detail
        );

        // create-ssm-role steps the saved plan did not hold.
        let mut now = plan.clone();
        now.create_ssm_role.as_mut().unwrap().add_role_to_profile = true;
        let mut narrower = saved.clone();
        narrower.accounts[0].ssm_role_steps = Some(SsmRoleSteps {
            create_role: true,
            ..SsmRoleSteps::default()
        });
        let r = narrower.restrict(now);
        assert_eq!(r.create_ssm_role, None);
        let bare = row(&r, "i-bare");
        assert_eq!(bare.status, Status::Skipped);
        assert!(bare.detail.contains("create-ssm-role"), "{}", bare.detail);

        // create-resource-group the saved plan did not hold: no group, no install.
        let mut now = plan.clone();
        now.create_resource_group = true;
        let r = saved.restrict(now);
        assert!(!r.create_resource_group);
        assert!(r
            .instances
            .iter()
            .all(|i| !i.actions.contains(&InstanceAction::InstallAgent)));

        // Another account's plan: nothing of it was saved.
        let mut other = plan.clone();
        other.account_id = "210987654321".into();
        for i in &mut other.instances {
            i.account_id = other.account_id.clone();
        }
        let r = saved.restrict(other);
        assert_eq!(r.create_ssm_role, None);
        assert!(r.instances.iter().all(|i| i.status == Status::Skipped));
    }

    /// The plan of `aws` with `[azure]` configured (so with install batches).
    async fn plan_with_azure(aws: &FakeAws) -> AccountPlan {
        let cfg = Config::parse(
            "[aws]\nregions = [\"us-east-1\"]\n[azure]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\nsubscription_id = \"00000000-0000-0000-0000-000000000002\"\nclient_id = \"00000000-0000-0000-0000-000000000003\"\nlocation = \"eastus\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        plan_with(aws, &cfg).await
    }

    #[tokio::test]
    async fn installs_go_out_in_the_saved_batches_and_a_changed_install_is_skipped() {
        let aws = fleet();
        let plan = plan_with_azure(&aws).await;
        assert_eq!(plan.batches.len(), 1);
        assert_eq!(plan.batches[0].instance_ids, ["i-bare", "i-ready"]);
        let saved = saved(&plan);
        // The file keeps the batches and round-trips.
        let text = serde_json::to_string(&saved).unwrap();
        assert_eq!(serde_json::from_str::<SavedPlan>(&text).unwrap(), saved);
        assert_eq!(saved.accounts[0].batches, plan.batches);
        assert_eq!(saved.restrict(plan.clone()), plan);

        // A batch planned anew differs from the saved one (another installer, say): its rows are
        // skipped with what differs, and nothing is sent for them.
        let mut now = plan.clone();
        now.batches[0].spec.installer_url = "https://mirror.example/azcmagent".into();
        let r = saved.restrict(now);
        for id in ["i-bare", "i-ready"] {
            let row = row(&r, id);
            assert_eq!(row.status, Status::Skipped, "{id}");
            assert!(
                row.detail.contains("its install changed") && row.detail.contains("installer_url"),
                "{}",
                row.detail
            );
        }
        assert!(r.batches.is_empty());

        // A row newly planned joins no batch: the saved batches, less what is not applied.
        aws.add_instance(
            "us-east-1",
            "i-new",
            Platform::Linux,
            InstanceState::Running,
            Some("AppProfile"),
            &[],
        );
        let now = plan_with_azure(&aws).await;
        assert_eq!(now.batches[0].instance_ids.len(), 3);
        let r = saved.restrict(now);
        assert_eq!(r.batches, plan.batches);
        assert_eq!(row(&r, "i-new").status, Status::Skipped);
    }

    #[test]
    fn a_deletion_is_saved_with_its_resource_group_and_machine_and_checked_against_them() {
        let delete = InstanceAction::DeleteArcMachine {
            resource_group: "aws_123456789012".into(),
            machine: "i-gone".into(),
        };
        let saved = SavedAction::from(&delete);
        assert_eq!(
            serde_json::to_string(&saved).unwrap(),
            r#"{"action":"delete-arc-machine","resource_group":"aws_123456789012","machine":"i-gone"}"#
        );
        let elsewhere = InstanceAction::DeleteArcMachine {
            resource_group: "other".into(),
            machine: "i-gone".into(),
        };
        assert_ne!(
            SavedAction::from(&elsewhere),
            saved,
            "another group is another action"
        );
    }

    #[test]
    fn the_saved_plan_keeps_each_action_with_its_target() {
        let a = SavedAction::from(&InstanceAction::AddRoleToInstanceProfile {
            profile: "P".into(),
            role: "R".into(),
        });
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(
            text,
            r#"{"action":"add-role-to-instance-profile","profile":"P","role":"R"}"#
        );
        assert_eq!(serde_json::from_str::<SavedAction>(&text).unwrap(), a);
        let seen = ArcSeen::Present {
            name: "i-1".into(),
            status: "Connected".into(),
        };
        let text = serde_json::to_string(&seen).unwrap();
        assert_eq!(
            text,
            r#"{"seen":"present","name":"i-1","status":"Connected"}"#
        );
        assert_eq!(serde_json::from_str::<ArcSeen>(&text).unwrap(), seen);
    }
}
