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
//!
//! The file's checks (format, tool version, configuration fingerprint, age) are the command's, in
//! `cli::saved_plan`; this module is pure.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::reconcile::observe::ArcObservation;
use crate::reconcile::plan::{AccountPlan, InstanceAction, InstancePlan, SsmRoleSteps, Status};

/// The format version of the saved plan file; a file with another is refused.
pub const FORMAT: u32 = 1;

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
}

impl From<&InstanceAction> for SavedAction {
    fn from(a: &InstanceAction) -> SavedAction {
        let (profile, role) = match a {
            InstanceAction::AssociateInstanceProfile { profile } => (Some(profile.clone()), None),
            InstanceAction::AddRoleToInstanceProfile { profile, role } => {
                (Some(profile.clone()), Some(role.clone()))
            }
            InstanceAction::AttachRolePolicy { role } => (None, Some(role.clone())),
            // The action's name says it all: the machine of a gone instance is named after it, in the
            // account's resource group.
            InstanceAction::InstallAgent
            | InstanceAction::ReconnectAgent
            | InstanceAction::DeleteArcMachine { .. } => (None, None),
        };
        SavedAction {
            action: a.as_str().to_string(),
            profile,
            role,
        }
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
    /// The saved form of a plan: `accounts` as (id, account-level action names, `create-ssm-role` steps),
    /// and every row.
    pub fn new<'a>(
        from: Provenance,
        accounts: impl IntoIterator<Item = (&'a str, &'a [&'static str], Option<&'a SsmRoleSteps>)>,
        rows: &[InstancePlan],
    ) -> SavedPlan {
        SavedPlan {
            format: FORMAT,
            from,
            accounts: accounts
                .into_iter()
                .map(|(id, actions, steps)| SavedAccount {
                    account_id: id.to_string(),
                    actions: actions.iter().map(|a| a.to_string()).collect(),
                    ssm_role_steps: steps.cloned(),
                })
                .collect(),
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
        let cfg = config();
        let regions = ["us-east-1".to_string()];
        let obs = observe_account(
            "123456789012",
            &regions,
            &cfg,
            (aws, aws, aws),
            Duration::from_secs(60),
            ArcObservation::NotConfigured,
        )
        .await;
        plan_account(&obs, &cfg, &Memory::none())
    }

    fn saved(plan: &AccountPlan) -> SavedPlan {
        let from = Provenance {
            tool_version: "0".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            config_fingerprint: "sha256:0".into(),
            shard: None,
            regions: vec!["us-east-1".into()],
        };
        let actions = plan.action_names();
        let accounts = [(
            plan.account_id.as_str(),
            actions.as_slice(),
            plan.create_ssm_role.as_ref(),
        )];
        SavedPlan::new(from, accounts, &plan.instances)
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
