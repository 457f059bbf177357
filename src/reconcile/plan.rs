//! The planner: a pure function from an account's observed state, the configuration and the daemon's memory
//! (the state file's records) to what a pass would do to each machine, and why. `plan` renders this plan;
//! `run` and the daemon execute the same plan. The plan is complete: its rows carry their actions with
//! their targets, holds and resumes; its batches ([`crate::reconcile::batches`]) say which SSM commands
//! carry the agent script where, and with what; a pass's scope and the event path's stages are steps of
//! the planner too ([`AccountPlan::scoped`], [`AccountPlan::for_event`]), so the executor only realizes
//! it (it may skip work after a failure or a race, and says so in the row's outcome).
//!
//! # The memory
//! With a state file, an instance whose earlier install failed is held until its next attempt is due
//! (`failed`, no install, `next_attempt_at`), and one whose install command this daemon sent and has not
//! seen end is `in-progress` with that command, which the pass tracks instead of sending another: so
//! `arc-onboard plan --state-file` shows what the daemon's next onboarding pass will do.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::{Config, SqlServerLicense, SSM_POLICY_ARN};
use crate::model::{ArcMachine, ArcStatus, AwsError, InstanceState, PingStatus, Platform};
use crate::reconcile::observe::{
    profile_name_from_arn, AccountObservation, ArcObservation, Lookup, ObservedInstance,
    RegionObservation,
};

pub use crate::model::{Failure, FailureStep, Status};

/// What `create-ssm-role` has to do in one account. Each step is needed only when its object is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SsmRoleSteps {
    /// `iam:CreateRole` (trust `ec2.amazonaws.com`, tagged as ours).
    pub create_role: bool,
    /// `iam:AttachRolePolicy` of `AmazonSSMManagedInstanceCore` to the SSM role.
    pub attach_policy: bool,
    /// `iam:CreateInstanceProfile` (tagged as ours).
    pub create_profile: bool,
    /// `iam:AddRoleToInstanceProfile` of the SSM role into the SSM profile.
    pub add_role_to_profile: bool,
}

impl SsmRoleSteps {
    fn any(&self) -> bool {
        self.create_role || self.attach_policy || self.create_profile || self.add_role_to_profile
    }

    fn merge(&mut self, other: &SsmRoleSteps) {
        self.create_role |= other.create_role;
        self.attach_policy |= other.attach_policy;
        self.create_profile |= other.create_profile;
        self.add_role_to_profile |= other.add_role_to_profile;
    }
}

/// How `install-agent` is carried out, as the plan says it: the batch's two commands.
pub const TWO_STEP: &str =
    "(a key exchange first, then the install command with the access token sealed to the instance's key)";

/// One per-instance action, with its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceAction {
    /// Associate the SSM instance profile with an instance that has none.
    AssociateInstanceProfile {
        /// Profile name.
        profile: String,
    },
    /// Put the SSM role into the instance's profile, which holds no role.
    AddRoleToInstanceProfile {
        /// The instance's profile.
        profile: String,
        /// The SSM role.
        role: String,
    },
    /// Attach `AmazonSSMManagedInstanceCore` to the instance's role.
    AttachRolePolicy {
        /// The instance's role.
        role: String,
    },
    /// Install and connect the Azure Connected Machine agent through SSM.
    InstallAgent,
    /// Delete the Arc machine of an instance that is gone (the machine carries our ownership tags).
    DeleteArcMachine {
        /// The machine's resource group.
        resource_group: String,
        /// The machine's resource name.
        machine: String,
    },
    /// Repair (`[lifecycle] repair`): disconnect the instance's Expired, long-Disconnected or cloned agent
    /// locally (`azcmagent disconnect --force-local-only`), then connect it as a fresh install would,
    /// under the instance's own name. Sent in its own batches, with the script's reconnect switch on.
    ReconnectAgent,
}

impl InstanceAction {
    /// Report spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            InstanceAction::AssociateInstanceProfile { .. } => "associate-instance-profile",
            InstanceAction::AddRoleToInstanceProfile { .. } => "add-role-to-instance-profile",
            InstanceAction::AttachRolePolicy { .. } => "attach-role-policy",
            InstanceAction::InstallAgent => "install-agent",
            InstanceAction::DeleteArcMachine { .. } => "delete-arc-machine",
            InstanceAction::ReconnectAgent => "reconnect-agent",
        }
    }

    /// Whether the action changes IAM or EC2 (as opposed to installing the agent or changing Azure).
    pub fn is_iam(&self) -> bool {
        matches!(
            self,
            InstanceAction::AssociateInstanceProfile { .. }
                | InstanceAction::AddRoleToInstanceProfile { .. }
                | InstanceAction::AttachRolePolicy { .. }
        )
    }

    /// Whether the action runs the install script on the instance (`install-agent`, `reconnect-agent`).
    pub fn is_agent(&self) -> bool {
        matches!(
            self,
            InstanceAction::InstallAgent | InstanceAction::ReconnectAgent
        )
    }
}

impl fmt::Display for InstanceAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for InstanceAction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The plan for one instance. Execution never changes it; what happened is its
/// [`InstanceOutcome`](crate::reconcile::outcome::InstanceOutcome), which the report lays over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstancePlan {
    /// Owning account.
    pub account_id: String,
    /// Region.
    pub region: String,
    /// `i-...`.
    pub instance_id: String,
    /// `Name` tag.
    pub name: Option<String>,
    /// Platform.
    pub platform: Platform,
    /// EC2 state.
    pub state: InstanceState,
    /// Instance profile ARN at observation time.
    pub instance_profile: Option<String>,
    /// SSM ping status at observation time.
    pub ssm_ping: Option<PingStatus>,
    /// Actions in execution order.
    pub actions: Vec<InstanceAction>,
    /// Outcome (or, for `plan`, the planned state).
    pub status: Status,
    /// Why, in words.
    pub detail: String,
    /// The install command in flight or resumed, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// After a failed install (daemon): when the next attempt is due, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// `failed` only: in which step, with which code, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// `connected-elsewhere` (and `already-onboarded` when the agent said so): the Arc resource the
    /// agent is connected to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arc_resource_id: Option<String>,
    /// The agent version Azure reports for the instance's Arc machine in our resource group
    /// (`properties.agentVersion`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Rows that install the agent: the Azure location the machine is connected in (`[azure.locations]`,
    /// else `[azure] location`, else with `auto` the AWS region's row of the table). The planner decides
    /// it; the executor renders each batch's script with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_location: Option<String>,
    /// In a `run` report: the plan's status and detail, beside the outcome in `status` and `detail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned: Option<Planned>,
    /// `terminated` and `offboarded`: the Arc machine of the gone instance, and when it may be deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination: Option<crate::reconcile::lifecycle::Termination>,
    /// Whether the instance's actions depend on the account-level `create-ssm-role`.
    #[serde(skip)]
    pub needs_ssm_role: bool,
    /// `in-progress` with a command this daemon sent (from its memory): the pass tracks it to its end.
    #[serde(skip)]
    pub resume: bool,
    /// What Azure showed of the instance's Arc machine: part of the basis a saved plan keeps.
    #[serde(skip)]
    pub arc: crate::reconcile::saved::ArcSeen,
    /// With a retry policy (the daemon): rows that install or resume an install, which attempt this is
    /// and when the next is due should it fail. The planner decides it; the executor records it.
    #[serde(skip)]
    pub retry: Option<Retry>,
}

/// The daemon's backoff after failed installs: the first retry after `base`, doubling per failure, at
/// most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First retry delay after a failed install.
    pub base: Duration,
    /// Longest retry delay.
    pub max: Duration,
}

impl RetryPolicy {
    /// Delay before attempt `attempts + 1` after `attempts` failures.
    pub fn delay(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// A planned install attempt: the failures in a row it makes if it fails, and when the next is due then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Failed attempts in a row, this one included, should it fail.
    pub attempts: u32,
    /// When the next attempt is due should it fail.
    pub next_attempt_at: SystemTime,
}

impl InstancePlan {
    /// Whether the plan runs the install script on the instance (`install-agent` or `reconnect-agent`).
    pub fn runs_agent_script(&self) -> bool {
        self.actions.iter().any(InstanceAction::is_agent)
    }

    /// Marks the instance failed; the detail is rendered from the failure.
    pub fn fail(&mut self, failure: Failure) {
        self.status = Status::Failed;
        self.detail = failure.to_string();
        self.failure = Some(failure);
    }
}

/// The plan's view of an instance in a `run` report: what was planned, beside what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    /// The planned status.
    pub status: Status,
    /// The planned detail.
    pub detail: String,
}

/// A region that could not be observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionError {
    /// Account.
    pub account_id: String,
    /// Region.
    pub region: String,
    /// The failing call.
    pub operation: String,
    /// AWS error code.
    pub code: String,
    /// AWS error message.
    pub message: String,
}

impl RegionError {
    fn new(account_id: &str, region: &str, e: &AwsError) -> RegionError {
        RegionError {
            account_id: account_id.to_string(),
            region: region.to_string(),
            operation: e.operation.clone(),
            code: e.code.clone(),
            message: e.message.clone(),
        }
    }
}

/// The plan for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountPlan {
    /// 12-digit id.
    pub account_id: String,
    /// SSM role name from the config.
    pub role_name: String,
    /// SSM instance profile name from the config.
    pub profile_name: String,
    /// `create-ssm-role`, when some instance needs the SSM role or profile and they are incomplete.
    pub create_ssm_role: Option<SsmRoleSteps>,
    /// The account's Azure resource group, when Azure is configured.
    pub resource_group: Option<String>,
    /// `create-resource-group`, when the group is missing and some instance will get the agent.
    pub create_resource_group: bool,
    /// Where `create-resource-group` creates the group (`[azure] resource_group_location`).
    pub resource_group_location: Option<String>,
    /// The agent script's SSM commands, in sending order (see [`crate::reconcile::batches`]): the
    /// executor sends these and no other.
    pub batches: Vec<crate::reconcile::batches::AgentBatch>,
    /// Regions that could not be observed.
    pub region_errors: Vec<RegionError>,
    /// Per-instance plans, by region then instance id.
    pub instances: Vec<InstancePlan>,
}

impl AccountPlan {
    /// Account-level action names in execution order.
    pub fn action_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.create_ssm_role.is_some() {
            names.push("create-ssm-role");
        }
        if self.create_resource_group {
            names.push("create-resource-group");
        }
        names
    }
}

/// What a mutating pass does: `run` does both; the daemon's IAM pass only IAM, its onboarding pass only
/// installs (IAM changes then wait for the IAM pass, as the connector's schedule parameters say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// Execute IAM actions (`create-ssm-role`, associations, policy attachments).
    pub iam: bool,
    /// Install and verify the agent.
    pub install: bool,
}

impl Default for Scope {
    fn default() -> Self {
        Scope {
            iam: true,
            install: true,
        }
    }
}

impl AccountPlan {
    /// The plan as a dry run shows it when Azure was not checked (`arc` not `Checked`): a row that would
    /// get the agent is `unverified` rather than `planned` (its actions kept: what `run` does unless Azure
    /// shows the machine Connected). Pure, like the planner.
    pub fn unverified_unless_checked(mut self, arc: &ArcObservation) -> AccountPlan {
        if matches!(arc, ArcObservation::Checked { .. }) {
            return self;
        }
        for row in &mut self.instances {
            if row.status == Status::Planned && row.actions.contains(&InstanceAction::InstallAgent)
            {
                row.status = Status::Unverified;
            }
        }
        self
    }

    /// The plan of a pass that does only part of the work: without `iam`, no IAM action (they are left to
    /// the IAM pass); without `install`, no resource group and no agent install. Pure, like the planner.
    pub fn scoped(mut self, scope: Scope) -> AccountPlan {
        if !scope.iam {
            self.create_ssm_role = None;
            for row in &mut self.instances {
                if row.actions.iter().any(InstanceAction::is_iam) {
                    row.actions.retain(|a| !a.is_iam());
                    row.needs_ssm_role = false;
                    if row.status == Status::NotRunning {
                        row.detail =
                            format!("{}; IAM changes are left to the IAM pass", row.detail);
                    } else if row.status == Status::Planned && row.actions.is_empty() {
                        row.status = Status::WaitingForSsm;
                        row.detail =
                            format!("{}; IAM changes are left to the IAM pass", row.detail);
                    }
                }
            }
        }
        if !scope.install {
            self.create_resource_group = false;
            for row in &mut self.instances {
                let before = row.actions.len();
                row.actions
                    .retain(|a| !matches!(a, InstanceAction::DeleteArcMachine { .. }));
                if row.actions.len() < before {
                    row.detail = format!("{}; the onboarding pass deletes it", row.detail);
                }
            }
            for row in &mut self.instances {
                // Commands in flight are tracked by the onboarding pass, not by this one.
                row.resume = false;
                if row.runs_agent_script() {
                    row.actions.retain(|a| !a.is_agent());
                    if row.status == Status::Planned && row.actions.is_empty() {
                        row.status = Status::WaitingForSsm;
                        row.detail = "IAM in place; the onboarding pass installs the agent".into();
                    } else if row.status == Status::Planned {
                        // The IAM changes are this pass's; what the row ends as when they succeed is
                        // said here, not by the executor.
                        row.status = Status::WaitingForSsm;
                        row.detail = format!(
                            "{}; this pass makes the IAM changes, the onboarding pass installs the agent",
                            row.detail
                        );
                    }
                }
            }
        }
        self.prune_batches();
        self
    }

    /// The event path's plan for one of its stages (pure, after [`AccountPlan::scoped`]): which rows it
    /// holds, and what the rows it hands on to its watcher and installer say. The event path executes
    /// and records exactly these rows, as they are.
    pub fn for_event(mut self, stage: EventStage<'_>) -> AccountPlan {
        match stage {
            EventStage::Intake => {
                for row in &mut self.instances {
                    if row.status == Status::WaitingForSsm && row.state == InstanceState::Running {
                        row.detail = if row.ssm_ping == Some(PingStatus::Online) {
                            "event: Online in SSM; the agent install is queued".into()
                        } else {
                            "event: IAM in place; waiting for SSM registration, then the agent is installed"
                                .into()
                        };
                    }
                }
            }
            EventStage::Install => self
                .instances
                .retain(|row| row.status == Status::Planned && row.runs_agent_script()),
            EventStage::Offboard(ids) => self
                .instances
                .retain(|row| row.termination.is_some() && ids.contains(&row.instance_id)),
        }
        self.prune_batches();
        self
    }
}

/// The stages of the event path (see [`AccountPlan::for_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStage<'a> {
    /// Intake (IAM-only scope): every observed instance; those left waiting for the agent say that the
    /// event path follows them (queued when Online in SSM, watched otherwise).
    Intake,
    /// Install (install-only scope): only the rows whose agent script runs now.
    Install,
    /// Deletions: only the gone instances named, whose Arc machine is ours.
    Offboard(&'a [String]),
}

/// What an instance needs from IAM.
enum IamNeed {
    /// IAM is in place.
    Ready,
    /// Changes make it ready: instance actions, account steps, and the reason.
    Change(Vec<InstanceAction>, SsmRoleSteps, String),
    /// The configuration forbids the change it needs.
    Manual(String),
    /// State needed to decide could not be read.
    Failed(String),
    /// No profile, and none is needed: SSM's Default Host Management Configuration registers the
    /// instance. The reason.
    Dhmc(String),
}

/// Readiness of the configured SSM role or profile.
enum Readiness {
    Steps(SsmRoleSteps),
    Manual(String),
    Failed(String),
}

/// What the daemon's state file remembers of one instance: an input of the planner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remembered {
    /// Failed install attempts in a row.
    pub attempts: u32,
    /// The last failure.
    pub last_failure: Option<Failure>,
    /// The install is not tried again before then.
    pub next_attempt_at: Option<SystemTime>,
    /// An install command this daemon sent and has not seen end.
    pub command_id: Option<String>,
}

/// The daemon's memory of an account's instances, by (region, instance id), and the time the pass plans
/// for. Empty for `run` and for `plan` without `--state-file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    /// What is remembered, by (region, instance id).
    pub instances: HashMap<(String, String), Remembered>,
    /// Now, as the pass sees it (backoff holds end at `next_attempt_at`).
    pub now: SystemTime,
    /// When the termination of an instance whose Arc machine is ours was first seen, by (region,
    /// instance id): the grace of `delete_after` counts from then.
    pub terminations: HashMap<(String, String), SystemTime>,
    /// The backoff after failed installs (the daemon's `--retry-base`, `--retry-max`); `None`: no retry
    /// is planned (a one-shot run).
    pub retry: Option<RetryPolicy>,
}

impl Memory {
    /// No memory (a one-shot run).
    pub fn none() -> Memory {
        Memory {
            instances: HashMap::new(),
            now: UNIX_EPOCH,
            terminations: HashMap::new(),
            retry: None,
        }
    }

    fn get(&self, region: &str, instance_id: &str) -> Option<&Remembered> {
        self.instances
            .get(&(region.to_string(), instance_id.to_string()))
    }
}

struct Planner<'a> {
    obs: &'a AccountObservation,
    config: &'a Config,
    memory: &'a Memory,
}

/// Plans one account. Pure: no I/O, no clock (`memory.now` is the time it plans for).
pub fn plan_account(obs: &AccountObservation, config: &Config, memory: &Memory) -> AccountPlan {
    let planner = Planner {
        obs,
        config,
        memory,
    };
    let mut account_steps = SsmRoleSteps::default();
    let mut instances = Vec::new();
    let mut region_errors = Vec::new();
    for region in &obs.regions {
        if let Some(e) = &region.error {
            region_errors.push(RegionError::new(&obs.account_id, &region.region, e));
        }
        for inst in &region.instances {
            let (mut plan, steps) = planner.instance(region, inst);
            planner.remember(&mut plan);
            planner.retry(&mut plan);
            if let Some(steps) = steps {
                account_steps.merge(&steps);
            }
            instances.push(plan);
        }
        instances.extend(crate::reconcile::lifecycle::plan_gone(
            obs, region, config, memory,
        ));
    }
    for (region, e) in &obs.gone.errors {
        region_errors.push(RegionError::new(&obs.account_id, region, e));
    }
    let installs = instances.iter().any(InstancePlan::runs_agent_script);
    let (resource_group, create_resource_group) = match &obs.arc {
        ArcObservation::Checked {
            resource_group,
            group_exists,
            ..
        } => (Some(resource_group.clone()), installs && !group_exists),
        _ => (
            config
                .azure
                .as_ref()
                .map(|a| a.resource_group_for(&obs.account_id)),
            false,
        ),
    };
    let batches =
        crate::reconcile::batches::plan_batches(&instances, resource_group.as_deref(), config);
    AccountPlan {
        account_id: obs.account_id.clone(),
        role_name: config.iam.role_name.clone(),
        profile_name: config.iam.instance_profile_name.clone(),
        create_ssm_role: account_steps.any().then_some(account_steps),
        resource_group,
        create_resource_group,
        resource_group_location: config
            .azure
            .as_ref()
            .map(|a| a.resource_group_location.clone()),
        batches,
        region_errors,
        instances,
    }
}

/// The note on a license-included SQL Server instance: AWS already bills its SQL Server license, so the
/// `ArcSQLServerExtensionDeployment` tag it gets matters.
fn sql_server_note(details: &str, config: &Config) -> String {
    let license = config.onboarding.sql_server_license;
    let consequence = match license {
        SqlServerLicense::Disabled => "the Arc SQL Server extension is not deployed",
        SqlServerLicense::Payg => "Azure would bill SQL Server pay-as-you-go on top of AWS",
        SqlServerLicense::Paid | SqlServerLicense::LicenseOnly => {
            "it declares a license AWS already provides"
        }
    };
    format!(
        "; {details}: AWS bills its SQL Server license; sql_server_license = {:?} ({} = {}): {consequence}",
        license.as_str(),
        SqlServerLicense::TAG,
        license.tag_value()
    )
}

fn has_ssm_policy(policies: &[String]) -> bool {
    policies.iter().any(|p| p == SSM_POLICY_ARN)
}

impl Planner<'_> {
    /// Steps that make the SSM role usable (exists, has the SSM policy).
    fn role_readiness(&self) -> Readiness {
        let iam = &self.config.iam;
        match &self.obs.ssm_role {
            Lookup::Failed(e) => Readiness::Failed(format!("cannot read SSM role {}: {e}", iam.role_name)),
            Lookup::Missing => Readiness::Steps(SsmRoleSteps {
                create_role: true,
                attach_policy: true,
                ..SsmRoleSteps::default()
            }),
            Lookup::Found(role) => match self.obs.role_policies.get(&role.name) {
                Some(Lookup::Found(p)) if has_ssm_policy(p) => Readiness::Steps(SsmRoleSteps::default()),
                Some(Lookup::Found(_)) if role.managed_by_us || iam.policy_update_allowed => {
                    Readiness::Steps(SsmRoleSteps {
                        attach_policy: true,
                        ..SsmRoleSteps::default()
                    })
                }
                Some(Lookup::Found(_)) => Readiness::Manual(format!(
                    "SSM role {} lacks AmazonSSMManagedInstanceCore and policy_update_allowed = false",
                    role.name
                )),
                Some(Lookup::Failed(e)) => {
                    Readiness::Failed(format!("cannot read policies of SSM role {}: {e}", role.name))
                }
                Some(Lookup::Missing) | None => {
                    Readiness::Failed(format!("policies of SSM role {} were not observed", role.name))
                }
            },
        }
    }

    /// Steps that make the SSM instance profile usable (exists, holds the SSM role), on top of the role's.
    fn profile_readiness(&self) -> Readiness {
        let iam = &self.config.iam;
        let mut steps = match self.role_readiness() {
            Readiness::Steps(s) => s,
            other => return other,
        };
        match self.obs.profiles.get(&iam.instance_profile_name) {
            Some(Lookup::Failed(e)) => {
                return Readiness::Failed(format!(
                    "cannot read SSM instance profile {}: {e}",
                    iam.instance_profile_name
                ))
            }
            Some(Lookup::Missing) | None => {
                steps.create_profile = true;
                steps.add_role_to_profile = true;
            }
            Some(Lookup::Found(p)) if p.roles.contains(&iam.role_name) => {}
            Some(Lookup::Found(p)) if p.roles.is_empty() => {
                if p.managed_by_us || iam.policy_update_allowed {
                    steps.add_role_to_profile = true;
                } else {
                    return Readiness::Manual(format!(
                        "SSM instance profile {} holds no role and policy_update_allowed = false",
                        p.name
                    ));
                }
            }
            Some(Lookup::Found(p)) => {
                return Readiness::Manual(format!(
                    "SSM instance profile {} holds role {}, not {}; fix the profile or the config",
                    p.name,
                    p.roles.join(","),
                    iam.role_name
                ))
            }
        }
        Readiness::Steps(steps)
    }

    fn iam_need(&self, inst: &ObservedInstance) -> IamNeed {
        let iam = &self.config.iam;
        let Some(arn) = inst.ec2.profile_arn.as_deref() else {
            if !iam.auto_assignment {
                return IamNeed::Manual("no instance profile and auto_assignment = false".into());
            }
            return match self.profile_readiness() {
                Readiness::Steps(steps) => IamNeed::Change(
                    vec![InstanceAction::AssociateInstanceProfile {
                        profile: iam.instance_profile_name.clone(),
                    }],
                    steps,
                    format!(
                        "no instance profile; {} will be associated",
                        iam.instance_profile_name
                    ),
                ),
                Readiness::Manual(r) => IamNeed::Manual(format!("no instance profile; {r}")),
                Readiness::Failed(r) => IamNeed::Failed(r),
            };
        };
        let profile_name = profile_name_from_arn(arn);
        let profile = match self.obs.profiles.get(profile_name) {
            Some(Lookup::Found(p)) => p,
            Some(Lookup::Missing) => {
                return IamNeed::Manual(format!(
                "instance profile {profile_name} no longer exists; replace the association by hand"
            ))
            }
            Some(Lookup::Failed(e)) => {
                return IamNeed::Failed(format!("cannot read instance profile {profile_name}: {e}"))
            }
            None => {
                return IamNeed::Failed(format!("instance profile {profile_name} was not observed"))
            }
        };
        let Some(role) = profile.roles.first() else {
            if !iam.auto_assignment {
                return IamNeed::Manual(format!(
                    "instance profile {profile_name} holds no role and auto_assignment = false"
                ));
            }
            if !(iam.policy_update_allowed || profile.managed_by_us) {
                return IamNeed::Manual(format!(
                    "instance profile {profile_name} holds no role and policy_update_allowed = false"
                ));
            }
            return match self.role_readiness() {
                Readiness::Steps(steps) => IamNeed::Change(
                    vec![InstanceAction::AddRoleToInstanceProfile {
                        profile: profile_name.to_string(),
                        role: iam.role_name.clone(),
                    }],
                    steps,
                    format!(
                        "instance profile {profile_name} holds no role; {} will be added",
                        iam.role_name
                    ),
                ),
                Readiness::Manual(r) => IamNeed::Manual(format!(
                    "instance profile {profile_name} holds no role; {r}"
                )),
                Readiness::Failed(r) => IamNeed::Failed(r),
            };
        };
        match self.obs.role_policies.get(role) {
            Some(Lookup::Found(p)) if has_ssm_policy(p) => IamNeed::Ready,
            Some(Lookup::Found(_)) => {
                let reason = format!("role {role} lacks AmazonSSMManagedInstanceCore");
                if !iam.auto_assignment {
                    IamNeed::Manual(format!("{reason} and auto_assignment = false"))
                } else if *role == iam.role_name {
                    // The SSM role itself: completing it is the account-level create-ssm-role.
                    match self.role_readiness() {
                        Readiness::Steps(steps) => IamNeed::Change(
                            Vec::new(),
                            steps,
                            format!("{reason}; it will be attached"),
                        ),
                        Readiness::Manual(r) => IamNeed::Manual(r),
                        Readiness::Failed(r) => IamNeed::Failed(r),
                    }
                } else if iam.policy_update_allowed {
                    IamNeed::Change(
                        vec![InstanceAction::AttachRolePolicy { role: role.clone() }],
                        SsmRoleSteps::default(),
                        format!("{reason}; it will be attached"),
                    )
                } else {
                    IamNeed::Manual(format!("{reason} and policy_update_allowed = false"))
                }
            }
            Some(Lookup::Failed(e)) => {
                IamNeed::Failed(format!("cannot read policies of role {role}: {e}"))
            }
            Some(Lookup::Missing) | None => {
                IamNeed::Failed(format!("policies of role {role} were not observed"))
            }
        }
    }

    /// Applies the daemon's memory to a planned instance: a command it sent and has not seen end is tracked
    /// (`in-progress`, no new install); a failed install is held until its next attempt is due.
    fn remember(&self, plan: &mut InstancePlan) {
        let Some(memory) = self.memory.get(&plan.region, &plan.instance_id) else {
            return;
        };
        let trackable = plan.state == InstanceState::Running
            && matches!(plan.status, Status::Planned | Status::InProgress);
        if let (true, Some(command)) = (trackable, &memory.command_id) {
            plan.actions.retain(|a| !a.is_agent());
            plan.status = Status::InProgress;
            plan.resume = true;
            plan.detail = format!(
                "install command {command}, sent by an earlier pass, is tracked to its end; not sent again"
            );
            plan.command_id = Some(command.clone());
            return;
        }
        let held = memory
            .next_attempt_at
            .filter(|due| *due > self.memory.now && plan.runs_agent_script());
        if let Some(due) = held {
            let next = crate::model::timestamp(due);
            let mut failure = memory.last_failure.clone().unwrap_or_else(|| {
                Failure::new(FailureStep::Install, "earlier-failure", "unknown")
            });
            failure.reason = format!(
                "{} (failed {} time(s); next attempt not before {next})",
                failure.reason, memory.attempts
            );
            plan.actions.retain(|a| !a.is_agent());
            plan.fail(failure);
            plan.next_attempt_at = Some(next);
        }
    }

    /// With a retry policy, an install attempt (a new one, or one in flight resumed) gets its backoff
    /// should it fail: one more failure in a row, and the next attempt `delay(attempts)` from now.
    fn retry(&self, plan: &mut InstancePlan) {
        let Some(policy) = self.memory.retry else {
            return;
        };
        if !(plan.runs_agent_script() || plan.resume) {
            return;
        }
        let before = self
            .memory
            .get(&plan.region, &plan.instance_id)
            .map_or(0, |m| m.attempts);
        let attempts = before.saturating_add(1);
        plan.retry = Some(Retry {
            attempts,
            next_attempt_at: self.memory.now + policy.delay(attempts),
        });
    }

    /// `connected-elsewhere` when Resource Graph shows an Arc machine for the instance outside our
    /// resource group: no action at all (the machine is someone else's to manage). Returns whether it was.
    fn elsewhere(&self, plan: &mut InstancePlan) -> bool {
        let Some(m) = self.obs.elsewhere.get(&plan.instance_id) else {
            return false;
        };
        let how = if m.name.eq_ignore_ascii_case(&plan.instance_id) {
            "named after it"
        } else {
            "tagged InstanceId with it"
        };
        plan.status = Status::ConnectedElsewhere;
        plan.detail = format!(
            "Azure Resource Graph shows Arc machine {} ({how}, status {}) in subscription {}, resource group {}; left alone, no agent is installed",
            m.name,
            m.status.as_deref().unwrap_or("unknown"),
            m.subscription_id,
            m.resource_group
        );
        plan.arc_resource_id = Some(m.id.clone());
        plan.agent_version = None;
        true
    }

    /// Plans one instance; also returns the account steps it depends on.
    fn instance(
        &self,
        region: &RegionObservation,
        inst: &ObservedInstance,
    ) -> (InstancePlan, Option<SsmRoleSteps>) {
        let mut plan = InstancePlan {
            account_id: self.obs.account_id.clone(),
            region: region.region.clone(),
            instance_id: inst.ec2.instance_id.clone(),
            name: inst.ec2.name.clone(),
            platform: inst.ec2.platform,
            state: inst.ec2.state,
            instance_profile: inst.ec2.profile_arn.clone(),
            ssm_ping: inst.ssm.as_ref().map(|s| s.ping),
            actions: Vec::new(),
            status: Status::Planned,
            detail: String::new(),
            planned: None,
            needs_ssm_role: false,
            command_id: None,
            next_attempt_at: None,
            failure: None,
            arc_resource_id: None,
            agent_version: None,
            azure_location: None,
            resume: false,
            termination: None,
            arc: crate::reconcile::saved::ArcSeen::of(&self.obs.arc, &inst.ec2.instance_id),
            retry: None,
        };
        if plan.platform == Platform::Unknown {
            plan.status = Status::Unsupported;
            plan.detail =
                "the Connected Machine agent supports Linux (x86_64, arm64) and Windows (x86_64) only".into();
            return (plan, None);
        }
        let running = inst.ec2.state == InstanceState::Running;
        if let (true, Some(command)) = (running, region.in_flight.get(&inst.ec2.instance_id)) {
            plan.status = Status::InProgress;
            plan.command_id = Some(command.clone());
            plan.detail = format!(
                "install command {command} from an earlier run is still running; not sent again"
            );
            return (plan, None);
        }
        let mut arc_note = String::new();
        let mut broken = None;
        match &self.obs.arc {
            ArcObservation::Checked {
                resource_group,
                machines,
                ..
            } => match machines.get(&inst.ec2.instance_id) {
                Some(m) if m.status == ArcStatus::Connected => {
                    plan.agent_version = m.agent_version.clone();
                    plan.status = Status::AlreadyOnboarded;
                    plan.detail = format!("Arc machine {resource_group}/{} is Connected", m.name);
                    return (plan, None);
                }
                own => {
                    if let Some(m) = own {
                        plan.agent_version = m.agent_version.clone();
                    }
                    if self.elsewhere(&mut plan) {
                        return (plan, None);
                    }
                    if let Some(m) = own {
                        arc_note = format!(
                            "; Arc machine {resource_group}/{} is {}",
                            m.name,
                            m.status.as_str()
                        );
                    }
                    broken =
                        self.broken_agent(resource_group, machines, &inst.ec2.instance_id, own);
                }
            },
            ArcObservation::Unavailable(why) => arc_note = format!("; Azure not checked: {why}"),
            ArcObservation::NotConfigured => {
                arc_note = "; Azure not checked: no [azure] section".into()
            }
        }
        let need = match (&inst.ec2.profile_arn, &region.dhmc_role) {
            (None, Some(role)) => IamNeed::Dhmc(format!(
                "no instance profile, and none is associated: SSM's Default Host Management Configuration is on in {} (role {role}), so the instance registers with SSM without one",
                region.region
            )),
            _ => self.iam_need(inst),
        };
        let (iam_actions, steps, iam_text) = match need {
            IamNeed::Ready => (Vec::new(), None, None),
            IamNeed::Change(actions, steps, why) => {
                plan.needs_ssm_role = steps.any();
                (actions, Some(steps), Some(Ok(why)))
            }
            IamNeed::Manual(why) => (Vec::new(), None, Some(Err((Status::NeedsManualIam, why)))),
            IamNeed::Failed(why) => (Vec::new(), None, Some(Err((Status::Failed, why)))),
            IamNeed::Dhmc(why) => (Vec::new(), None, Some(Ok(why))),
        };
        let iam_sentence = match &iam_text {
            Some(Ok(s)) | Some(Err((_, s))) => format!("{s}; "),
            None => String::new(),
        };
        if inst.ec2.state != InstanceState::Running {
            plan.status = Status::NotRunning;
            plan.detail = format!(
                "{iam_sentence}instance is {}; the agent is installed once it runs",
                inst.ec2.state.as_str()
            );
            plan.actions = iam_actions;
            return (plan, steps);
        }
        let online = plan.ssm_ping == Some(PingStatus::Online);
        if let Some(e) = &region.ssm_error {
            plan.fail(Failure::new(
                FailureStep::Ssm,
                e.code.clone(),
                format!("{iam_sentence}cannot read SSM state: {e}"),
            ));
            plan.actions = iam_actions;
            return (plan, steps);
        }
        match iam_text {
            Some(Err((Status::Failed, why))) if !online => {
                plan.fail(Failure::new(FailureStep::Iam, "iam-unreadable", why));
                return (plan, None);
            }
            Some(Err((status, why))) if !online => {
                plan.status = status;
                plan.detail = why;
                return (plan, None);
            }
            Some(Err((_, why))) => {
                plan.detail = format!(
                    "{why}; registered with SSM anyway, so the agent will be installed {TWO_STEP}"
                );
            }
            Some(Ok(why)) => {
                plan.detail =
                    format!("{why}; the agent is installed once the instance is Online in SSM");
            }
            None if online => {
                plan.detail = format!(
                    "IAM in place and Online in SSM; the agent will be installed {TWO_STEP}"
                )
            }
            None => {
                let ping = plan.ssm_ping.map_or("not registered", PingStatus::as_str);
                plan.detail =
                    format!("IAM in place; SSM: {ping}; the agent is installed once it is Online");
            }
        }
        plan.detail.push_str(&arc_note);
        plan.actions = iam_actions;
        if let Some(azure) = &self.config.azure {
            match azure.location_for(&plan.region) {
                Some(location) => plan.azure_location = Some(location),
                None => {
                    // Only `location = "auto"` with a region the table does not know (all_regions).
                    plan.fail(Failure::new(
                        FailureStep::Connect,
                        "no-azure-location",
                        format!(
                            "location = \"auto\" does not know AWS region {}; map it in [azure.locations]",
                            plan.region
                        ),
                    ));
                    return (plan, steps);
                }
            }
        }
        if let Some(details) = &inst.ec2.sql_server_included {
            plan.detail.push_str(&sql_server_note(details, self.config));
        }
        match broken {
            Some(Broken::Repair(why)) if !self.config.lifecycle.repair => {
                plan.actions.clear();
                plan.fail(Failure::new(
                    FailureStep::Connect,
                    "agent-needs-repair",
                    format!(
                        "{why}; [lifecycle] repair = false, so it is left as it is (set repair = true \
                         to reconnect it)"
                    ),
                ));
            }
            Some(Broken::Repair(why)) => {
                let when = if online {
                    ""
                } else {
                    " once the instance is Online in SSM"
                };
                plan.detail = format!(
                    "{iam_sentence}{why}; the agent will be disconnected locally and connected anew as {}{when}",
                    inst.ec2.instance_id
                );
                plan.actions.push(InstanceAction::ReconnectAgent);
            }
            Some(Broken::NotYet(why)) => {
                plan.detail.push_str(&format!("; {why}"));
                plan.actions.push(InstanceAction::InstallAgent);
            }
            None => plan.actions.push(InstanceAction::InstallAgent),
        }
        (plan, steps)
    }

    /// What is wrong with the agent of `instance_id` as Azure shows it, when it needs a repair: its own
    /// machine (`own`) is `Expired`, or `Disconnected` longer than `repair_after` (ARM's
    /// `lastStatusChange`), or another machine of our resource group reports this instance's id
    /// (`detectedProperties["AWS-instanceId"]`): the instance carries that machine's identity (a clone).
    /// Machines in other resource groups or subscriptions are not observed here: such an agent's
    /// install finds it `connected-elsewhere` and leaves it alone.
    fn broken_agent(
        &self,
        resource_group: &str,
        machines: &HashMap<String, ArcMachine>,
        instance_id: &str,
        own: Option<&ArcMachine>,
    ) -> Option<Broken> {
        let lifecycle = &self.config.lifecycle;
        let repair = |why: String| Some(Broken::Repair(why));
        if let Some(m) = own {
            match m.status {
                ArcStatus::Expired => {
                    return repair(format!(
                        "Arc machine {resource_group}/{} is Expired",
                        m.name
                    ))
                }
                ArcStatus::Disconnected => {
                    let since = m.last_status_change;
                    let age = since.and_then(|t| self.memory.now.duration_since(t).ok());
                    let at = since
                        .map_or_else(|| "an unknown time".to_string(), crate::model::timestamp);
                    let after = crate::config::duration::format_duration(lifecycle.repair_after);
                    return match age {
                        Some(age) if age >= lifecycle.repair_after => repair(format!(
                            "Arc machine {resource_group}/{} is Disconnected since {at}, longer than repair_after = {after}",
                            m.name
                        )),
                        _ => Some(Broken::NotYet(format!(
                            "Disconnected since {at}, for less than repair_after = {after}; no repair yet"
                        ))),
                    };
                }
                _ => {}
            }
        }
        let clone_of = machines.values().find(|m| {
            !m.name.eq_ignore_ascii_case(instance_id)
                && m.detected_instance_id
                    .as_deref()
                    .is_some_and(|d| d.eq_ignore_ascii_case(instance_id))
        })?;
        repair(format!(
            "the agent reports as Arc machine {resource_group}/{} (a clone of that instance); that machine is left to its instance",
            clone_of.name
        ))
    }
}

/// An agent Azure shows broken (see [`Planner::broken_agent`]).
enum Broken {
    /// Due for `reconnect-agent` (or `failed` without `[lifecycle] repair`); the reason.
    Repair(String),
    /// Disconnected, but not for `repair_after` yet; the reason.
    NotYet(String),
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::model::{AwsErrorKind, Ec2Instance, InstanceProfile, Role, SsmInstance};

    const ACCOUNT: &str = "123456789012";

    fn config(extra_iam: &str) -> Config {
        let text = format!("[aws]\nregions = [\"us-east-1\"]\n[iam]\n{extra_iam}\n");
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    fn profile(name: &str, roles: &[&str], ours: bool) -> InstanceProfile {
        InstanceProfile {
            name: name.into(),
            arn: format!("arn:aws:iam::{ACCOUNT}:instance-profile/{name}"),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            managed_by_us: ours,
        }
    }

    /// A world with: SSM role+profile complete (unless changed), `AppProfile`/`AppRole` with the policy,
    /// `LegacyProfile`/`LegacyRole` without it, `EmptyProfile` with no role.
    struct World {
        obs: AccountObservation,
    }

    impl World {
        fn new() -> World {
            let mut profiles = BTreeMap::new();
            let mut role_policies = BTreeMap::new();
            for (p, r, pol) in [
                (
                    "AzureArcForServerSSMInstanceProfile",
                    "AzureArcForServerSSM",
                    true,
                ),
                ("AppProfile", "AppRole", true),
                ("LegacyProfile", "LegacyRole", false),
            ] {
                profiles.insert(p.to_string(), Lookup::Found(profile(p, &[r], false)));
                let policies = if pol {
                    vec![SSM_POLICY_ARN.to_string()]
                } else {
                    vec!["arn:aws:iam::aws:policy/ReadOnlyAccess".into()]
                };
                role_policies.insert(r.to_string(), Lookup::Found(policies));
            }
            profiles.insert(
                "EmptyProfile".into(),
                Lookup::Found(profile("EmptyProfile", &[], false)),
            );
            World {
                obs: AccountObservation {
                    account_id: ACCOUNT.into(),
                    regions: vec![RegionObservation {
                        region: "us-east-1".into(),
                        instances: Vec::new(),
                        error: None,
                        ssm_error: None,
                        in_flight: Default::default(),
                        dhmc_role: None,
                    }],
                    profiles,
                    role_policies,
                    ssm_role: Lookup::Found(Role {
                        name: "AzureArcForServerSSM".into(),
                        arn: format!("arn:aws:iam::{ACCOUNT}:role/AzureArcForServerSSM"),
                        managed_by_us: true,
                    }),
                    arc: ArcObservation::NotConfigured,
                    elsewhere: HashMap::new(),
                    gone: Default::default(),
                },
            }
        }

        fn without_ssm_role(mut self) -> World {
            self.obs.ssm_role = Lookup::Missing;
            self.obs.role_policies.remove("AzureArcForServerSSM");
            self.obs.profiles.insert(
                "AzureArcForServerSSMInstanceProfile".into(),
                Lookup::Missing,
            );
            self
        }

        fn instance(
            mut self,
            id: &str,
            profile: Option<&str>,
            state: InstanceState,
            ping: Option<PingStatus>,
        ) -> World {
            self.obs.regions[0].instances.push(ObservedInstance {
                ec2: Ec2Instance {
                    instance_id: id.into(),
                    name: None,
                    platform: if id.contains("win") {
                        Platform::Windows
                    } else if id.contains("mac") {
                        Platform::Unknown
                    } else {
                        Platform::Linux
                    },
                    state,
                    profile_arn: profile
                        .map(|p| format!("arn:aws:iam::{ACCOUNT}:instance-profile/{p}")),
                    sql_server_included: id
                        .contains("sql")
                        .then(|| "Windows with SQL Server Standard".to_string()),
                },
                ssm: ping.map(|ping| SsmInstance {
                    instance_id: id.into(),
                    ping,
                    platform_type: None,
                    agent_version: None,
                }),
            });
            self
        }

        fn plan(&self, cfg: &Config) -> AccountPlan {
            plan_account(&self.obs, cfg, &Memory::none())
        }

        fn plan_remembering(
            &self,
            cfg: &Config,
            id: &str,
            remembered: Remembered,
            now: SystemTime,
        ) -> AccountPlan {
            let memory = Memory {
                instances: HashMap::from([(("us-east-1".to_string(), id.to_string()), remembered)]),
                now,
                terminations: HashMap::new(),
                retry: None,
            };
            plan_account(&self.obs, cfg, &memory)
        }
    }

    use InstanceState::{Running, Stopped};
    use PingStatus::Online;

    fn row<'a>(plan: &'a AccountPlan, id: &str) -> &'a InstancePlan {
        plan.instances.iter().find(|i| i.instance_id == id).unwrap()
    }

    fn names(p: &InstancePlan) -> Vec<&'static str> {
        p.actions.iter().map(InstanceAction::as_str).collect()
    }

    fn fleet() -> World {
        World::new()
            .instance("i-noprofile", None, Running, None)
            .instance("i-legacy", Some("LegacyProfile"), Running, None)
            .instance("i-good", Some("AppProfile"), Running, Some(Online))
            .instance("i-good-offline", Some("AppProfile"), Running, None)
            .instance("i-empty", Some("EmptyProfile"), Running, None)
            .instance("i-stopped", None, Stopped, None)
            .instance("i-win", Some("AppProfile"), Running, Some(Online))
            .instance("i-mac", None, Running, None)
            .instance(
                "i-manual-online",
                Some("LegacyProfile"),
                Running,
                Some(Online),
            )
    }

    #[test]
    fn table_of_instance_plans() {
        // (config, instance, actions, status)
        let defaults = config("");
        let no_update = config("policy_update_allowed = false");
        let no_auto = config("auto_assignment = false");
        type Case<'a> = (&'a Config, &'a str, &'a [&'a str], Status);
        let cases: &[Case] = &[
            (
                &defaults,
                "i-noprofile",
                &["associate-instance-profile", "install-agent"],
                Status::Planned,
            ),
            (
                &defaults,
                "i-legacy",
                &["attach-role-policy", "install-agent"],
                Status::Planned,
            ),
            (&defaults, "i-good", &["install-agent"], Status::Planned),
            (
                &defaults,
                "i-good-offline",
                &["install-agent"],
                Status::Planned,
            ),
            (
                &defaults,
                "i-empty",
                &["add-role-to-instance-profile", "install-agent"],
                Status::Planned,
            ),
            (
                &defaults,
                "i-stopped",
                &["associate-instance-profile"],
                Status::NotRunning,
            ),
            (&defaults, "i-win", &["install-agent"], Status::Planned),
            (&defaults, "i-mac", &[], Status::Unsupported),
            (
                &no_update,
                "i-noprofile",
                &["associate-instance-profile", "install-agent"],
                Status::Planned,
            ),
            (&no_update, "i-legacy", &[], Status::NeedsManualIam),
            (&no_update, "i-empty", &[], Status::NeedsManualIam),
            (
                &no_update,
                "i-manual-online",
                &["install-agent"],
                Status::Planned,
            ),
            (&no_update, "i-good", &["install-agent"], Status::Planned),
            (&no_auto, "i-noprofile", &[], Status::NeedsManualIam),
            (&no_auto, "i-legacy", &[], Status::NeedsManualIam),
            (&no_auto, "i-empty", &[], Status::NeedsManualIam),
            (&no_auto, "i-stopped", &[], Status::NotRunning),
            (&no_auto, "i-good", &["install-agent"], Status::Planned),
        ];
        let world = fleet();
        for (cfg, id, actions, status) in cases {
            let plan = world.plan(cfg);
            let r = row(&plan, id);
            assert_eq!(names(r), *actions, "{id} actions; detail: {}", r.detail);
            assert_eq!(r.status, *status, "{id} status; detail: {}", r.detail);
            assert!(!r.detail.is_empty(), "{id} has a reason");
        }
    }

    #[test]
    fn targets_are_carried_in_actions() {
        let plan = fleet().plan(&config(""));
        assert_eq!(
            row(&plan, "i-legacy").actions[0],
            InstanceAction::AttachRolePolicy {
                role: "LegacyRole".into()
            }
        );
        assert_eq!(
            row(&plan, "i-empty").actions[0],
            InstanceAction::AddRoleToInstanceProfile {
                profile: "EmptyProfile".into(),
                role: "AzureArcForServerSSM".into()
            }
        );
        assert!(plan.create_ssm_role.is_none(), "SSM role is complete");
    }

    #[test]
    fn missing_ssm_role_is_an_account_action_only_when_needed() {
        let needed = World::new()
            .without_ssm_role()
            .instance("i-a", None, Running, None)
            .plan(&config(""));
        assert_eq!(needed.action_names(), ["create-ssm-role"]);
        assert_eq!(
            needed.create_ssm_role,
            Some(SsmRoleSteps {
                create_role: true,
                attach_policy: true,
                create_profile: true,
                add_role_to_profile: true
            })
        );
        let not_needed = World::new()
            .without_ssm_role()
            .instance("i-good", Some("AppProfile"), Running, Some(Online))
            .plan(&config(""));
        assert!(not_needed.action_names().is_empty());
        let forbidden = World::new()
            .without_ssm_role()
            .instance("i-a", None, Running, None)
            .plan(&config("auto_assignment = false"));
        assert!(forbidden.action_names().is_empty());
        assert_eq!(forbidden.instances[0].status, Status::NeedsManualIam);
    }

    #[test]
    fn customer_ssm_role_without_policy_needs_permission_to_patch() {
        let mut world = World::new().instance("i-a", None, Running, None);
        world.obs.ssm_role = Lookup::Found(Role {
            name: "AzureArcForServerSSM".into(),
            arn: String::new(),
            managed_by_us: false,
        });
        world
            .obs
            .role_policies
            .insert("AzureArcForServerSSM".into(), Lookup::Found(vec![]));
        let allowed = world.plan(&config(""));
        assert_eq!(
            allowed.create_ssm_role,
            Some(SsmRoleSteps {
                attach_policy: true,
                ..SsmRoleSteps::default()
            })
        );
        let forbidden = world.plan(&config("policy_update_allowed = false"));
        assert_eq!(forbidden.instances[0].status, Status::NeedsManualIam);
        assert!(forbidden.instances[0]
            .detail
            .contains("policy_update_allowed = false"));
    }

    #[test]
    fn ssm_profile_holding_another_role_is_manual() {
        let mut world = World::new().instance("i-a", None, Running, None);
        world.obs.profiles.insert(
            "AzureArcForServerSSMInstanceProfile".into(),
            Lookup::Found(profile(
                "AzureArcForServerSSMInstanceProfile",
                &["Other"],
                false,
            )),
        );
        let plan = world.plan(&config(""));
        assert_eq!(plan.instances[0].status, Status::NeedsManualIam);
        assert!(plan.instances[0].detail.contains("holds role Other"));
    }

    #[test]
    fn failed_lookups_fail_the_instance_with_the_aws_reason() {
        let mut world = World::new().instance("i-legacy", Some("LegacyProfile"), Running, None);
        world.obs.role_policies.insert(
            "LegacyRole".into(),
            Lookup::Failed(AwsError::from_code(
                "iam:ListAttachedRolePolicies",
                "AccessDenied",
                "nope",
            )),
        );
        let plan = world.plan(&config(""));
        assert_eq!(plan.instances[0].status, Status::Failed);
        assert!(plan.instances[0].detail.contains("AccessDenied"));
    }

    #[test]
    fn region_errors_are_carried_and_ssm_errors_fail_running_instances() {
        let mut world = World::new().instance("i-good", Some("AppProfile"), Running, None);
        world.obs.regions[0].ssm_error = Some(AwsError {
            operation: "ssm:DescribeInstanceInformation".into(),
            kind: AwsErrorKind::AccessDenied,
            code: "AccessDeniedException".into(),
            message: "denied".into(),
            origin: None,
        });
        world.obs.regions.push(RegionObservation {
            region: "eu-west-1".into(),
            instances: vec![],
            error: Some(AwsError::from_code(
                "ec2:DescribeInstances",
                "UnauthorizedOperation",
                "denied",
            )),
            ssm_error: None,
            in_flight: Default::default(),
            dhmc_role: None,
        });
        let plan = world.plan(&config(""));
        assert_eq!(plan.instances[0].status, Status::Failed);
        assert_eq!(plan.region_errors.len(), 1);
        assert_eq!(plan.region_errors[0].region, "eu-west-1");
        assert_eq!(plan.region_errors[0].code, "UnauthorizedOperation");
    }

    #[test]
    fn deleted_profile_is_manual() {
        let plan = World::new()
            .instance("i-x", Some("GoneProfile"), Running, None)
            .plan(&config(""));
        // Not observed at all -> failed; observed missing -> manual.
        assert_eq!(plan.instances[0].status, Status::Failed);
        let mut world = World::new().instance("i-x", Some("GoneProfile"), Running, None);
        world
            .obs
            .profiles
            .insert("GoneProfile".into(), Lookup::Missing);
        assert_eq!(
            world.plan(&config("")).instances[0].status,
            Status::NeedsManualIam
        );
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(secs)
    }

    fn failed_before(next: u64, command: Option<&str>) -> Remembered {
        Remembered {
            attempts: 2,
            last_failure: Some(Failure {
                step: FailureStep::Download,
                code: "checksum-mismatch".into(),
                exit_code: Some(4),
                reason: "the installer's SHA-256 is x".into(),
            }),
            next_attempt_at: Some(at(next)),
            command_id: command.map(str::to_string),
        }
    }

    #[test]
    fn an_instance_in_backoff_is_held_failed_with_no_install_until_its_next_attempt() {
        let world = World::new().instance(
            "i-held",
            Some("AppProfile"),
            InstanceState::Running,
            Some(PingStatus::Online),
        );
        let cfg = config("");
        let held = world.plan_remembering(&cfg, "i-held", failed_before(2_000, None), at(1_000));
        let row = &held.instances[0];
        assert_eq!(row.status, Status::Failed);
        assert!(row.actions.is_empty(), "{:?}", row.actions);
        assert_eq!(row.next_attempt_at.as_deref(), Some("1970-01-01T00:33:20Z"));
        let failure = row.failure.as_ref().unwrap();
        assert_eq!(
            (failure.step, failure.code.as_str(), failure.exit_code),
            (FailureStep::Download, "checksum-mismatch", Some(4))
        );
        assert!(
            failure.reason.contains("failed 2 time(s)")
                && failure.reason.contains("1970-01-01T00:33:20Z"),
            "{}",
            failure.reason
        );
        // Due (or past due): planned like any other instance.
        for now in [2_000, 5_000] {
            let due = world.plan_remembering(&cfg, "i-held", failed_before(2_000, None), at(now));
            assert_eq!(due.instances[0].status, Status::Planned);
            assert_eq!(due.instances[0].actions, vec![InstanceAction::InstallAgent]);
            assert_eq!(due.instances[0].failure, None);
        }
    }

    #[test]
    fn the_planner_gives_each_install_its_backoff_should_it_fail() {
        let online = Some(PingStatus::Online);
        let world = World::new()
            .instance("i-new", Some("AppProfile"), Running, online)
            .instance("i-due", Some("AppProfile"), Running, online)
            .instance("i-held", Some("AppProfile"), Running, online)
            .instance("i-sent", Some("AppProfile"), Running, online)
            .instance("i-stopped", Some("AppProfile"), Stopped, None);
        let key = |id: &str| ("us-east-1".to_string(), id.to_string());
        let memory = Memory {
            instances: HashMap::from([
                (key("i-due"), failed_before(2_000, None)),
                (key("i-held"), failed_before(9_000, None)),
                (key("i-sent"), failed_before(2_000, Some("cmd-1"))),
            ]),
            now: at(5_000),
            terminations: HashMap::new(),
            retry: Some(RetryPolicy {
                base: Duration::from_secs(100),
                max: Duration::from_secs(300),
            }),
        };
        let plan = plan_account(&world.obs, &config(""), &memory);
        let retry = |id: &str| {
            row(&plan, id)
                .retry
                .map(|r| (r.attempts, r.next_attempt_at))
        };
        assert_eq!(retry("i-new"), Some((1, at(5_100))), "first failure: base");
        assert_eq!(
            retry("i-due"),
            Some((3, at(5_300))),
            "third: 4 x base, capped at max"
        );
        assert_eq!(
            retry("i-sent"),
            Some((3, at(5_300))),
            "the resumed command is the attempt"
        );
        assert_eq!(retry("i-held"), None, "held: no attempt");
        assert_eq!(retry("i-stopped"), None, "no install");
        // Without a retry policy (a one-shot run) nothing is planned for failures.
        let once = plan_account(
            &world.obs,
            &config(""),
            &Memory {
                retry: None,
                ..memory
            },
        );
        assert!(once.instances.iter().all(|r| r.retry.is_none()));
    }

    #[test]
    fn a_command_the_daemon_sent_is_tracked_not_planned_again() {
        let world = World::new()
            .instance(
                "i-sent",
                Some("AppProfile"),
                InstanceState::Running,
                Some(PingStatus::Online),
            )
            .instance(
                "i-stopped",
                Some("AppProfile"),
                InstanceState::Stopped,
                None,
            );
        let cfg = config("");
        let plan =
            world.plan_remembering(&cfg, "i-sent", failed_before(0, Some("cmd-7")), at(1_000));
        let row = &plan.instances[0];
        assert_eq!(row.status, Status::InProgress);
        assert!(row.resume);
        assert_eq!(row.command_id.as_deref(), Some("cmd-7"));
        assert!(row.actions.is_empty(), "{:?}", row.actions);
        assert!(row.detail.contains("cmd-7"), "{}", row.detail);
        // A stopped instance is not tracked: its command cannot be running.
        let stopped = world.plan_remembering(
            &cfg,
            "i-stopped",
            failed_before(0, Some("cmd-8")),
            at(1_000),
        );
        assert_eq!(stopped.instances[1].status, Status::NotRunning);
        assert!(!stopped.instances[1].resume);
        // Without memory, the same world is simply planned.
        assert_eq!(world.plan(&cfg).instances[0].status, Status::Planned);
    }

    #[test]
    fn a_scoped_plan_says_what_a_partial_pass_does() {
        let world = World::new()
            .without_ssm_role()
            .instance("i-none", None, Running, Some(Online))
            .instance("i-ready", Some("AppProfile"), Running, Some(Online))
            .instance("i-stopped", None, Stopped, None);
        let full = world.plan(&config(""));
        assert!(full.create_ssm_role.is_some());
        let names_of = |p: &AccountPlan, id: &str| names(row(p, id));
        assert_eq!(
            names_of(&full, "i-none"),
            ["associate-instance-profile", "install-agent"]
        );

        // The daemon's onboarding pass: IAM is left to the IAM pass, and the plan says so.
        let install_only = full.clone().scoped(Scope {
            iam: false,
            install: true,
        });
        assert_eq!(install_only.create_ssm_role, None);
        assert_eq!(names_of(&install_only, "i-none"), ["install-agent"]);
        assert!(names_of(&install_only, "i-stopped").is_empty());
        let stopped = row(&install_only, "i-stopped");
        assert!(
            stopped
                .detail
                .ends_with("IAM changes are left to the IAM pass"),
            "{}",
            stopped.detail
        );

        // The IAM pass: no install, no resource group; an instance with nothing left to do waits.
        let iam_only = full.clone().scoped(Scope {
            iam: true,
            install: false,
        });
        assert!(iam_only.create_ssm_role.is_some());
        assert!(!iam_only.create_resource_group);
        assert_eq!(
            names_of(&iam_only, "i-none"),
            ["associate-instance-profile"]
        );
        let ready = row(&iam_only, "i-ready");
        assert!(ready.actions.is_empty());
        assert_eq!(ready.status, Status::WaitingForSsm);

        assert_eq!(
            full.clone().scoped(Scope::default()),
            full,
            "a full pass changes nothing"
        );
    }

    fn checked(world: &mut World, machines: &[(&str, ArcStatus, Option<&str>)]) {
        world.obs.arc = ArcObservation::Checked {
            resource_group: "aws_123456789012".into(),
            group_exists: true,
            machines: machines
                .iter()
                .map(|(name, status, version)| {
                    (
                        name.to_string(),
                        crate::model::ArcMachine {
                            name: name.to_string(),
                            status: status.clone(),
                            errors: vec![],
                            agent_version: version.map(str::to_string),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        };
    }

    fn defender_machine(id: &str) -> crate::model::GraphMachine {
        crate::model::GraphMachine {
            id: format!("/subscriptions/other/resourceGroups/defender/providers/Microsoft.HybridCompute/machines/{id}"),
            name: id.into(),
            subscription_id: "other".into(),
            resource_group: "defender".into(),
            instance_id_tag: Some(id.into()),
            status: Some("Connected".into()),
        }
    }

    #[test]
    fn a_machine_elsewhere_makes_the_instance_connected_elsewhere_with_no_action() {
        let mut world = World::new()
            .instance("i-dup", None, Running, None)
            .instance("i-dup-stopped", None, Stopped, None)
            .instance("i-ours", Some("AppProfile"), Running, Some(Online))
            .instance("i-new", Some("AppProfile"), Running, Some(Online));
        checked(
            &mut world,
            &[("i-ours", ArcStatus::Connected, Some("1.58.03228.2572"))],
        );
        for id in ["i-dup", "i-dup-stopped", "i-ours"] {
            world.obs.elsewhere.insert(id.into(), defender_machine(id));
        }
        let plan = world.plan(&config(""));
        for id in ["i-dup", "i-dup-stopped"] {
            let r = row(&plan, id);
            assert_eq!(r.status, Status::ConnectedElsewhere, "{id}");
            assert!(r.actions.is_empty(), "{id}: {:?}", r.actions);
            assert_eq!(
                r.arc_resource_id.as_deref(),
                Some(defender_machine(id).id.as_str())
            );
            assert!(
                r.detail.contains("Resource Graph") && r.detail.contains("defender"),
                "{}",
                r.detail
            );
        }
        // Our own Connected machine wins: it is already onboarded, with its agent version.
        let ours = row(&plan, "i-ours");
        assert_eq!(ours.status, Status::AlreadyOnboarded);
        assert_eq!(ours.agent_version.as_deref(), Some("1.58.03228.2572"));
        assert_eq!(names(row(&plan, "i-new")), ["install-agent"]);
        // The duplicates need no SSM role, nor a resource group of their own.
        assert!(plan.create_ssm_role.is_none());
        let json = serde_json::to_value(ours).unwrap();
        assert_eq!(json["agent_version"], "1.58.03228.2572");
        assert!(serde_json::to_value(row(&plan, "i-new"))
            .unwrap()
            .get("agent_version")
            .is_none());
    }

    #[test]
    fn with_dhmc_on_an_instance_without_a_profile_gets_no_association_and_says_why() {
        let cfg = config("");
        let world = World::new()
            .without_ssm_role()
            .instance("i-bare", None, Running, None)
            .instance("i-bare-online", None, Running, Some(Online))
            .instance("i-bare-stopped", None, Stopped, None);
        // Off: as today.
        let off = world.plan(&cfg);
        assert_eq!(
            names(row(&off, "i-bare")),
            ["associate-instance-profile", "install-agent"]
        );
        assert!(off.create_ssm_role.is_some());
        let mut world = world;
        world.obs.regions[0].dhmc_role =
            Some("service-role/AWSSystemsManagerDefaultEC2InstanceManagementRole".into());
        let on = world.plan(&cfg);
        for id in ["i-bare", "i-bare-online", "i-bare-stopped"] {
            let r = row(&on, id);
            assert!(
                !r.actions.iter().any(InstanceAction::is_iam),
                "{id}: {:?}",
                r.actions
            );
            assert!(
                r.detail.contains("Default Host Management Configuration"),
                "{id}: {}",
                r.detail
            );
            assert!(!r.needs_ssm_role, "{id}");
        }
        assert_eq!(names(row(&on, "i-bare-online")), ["install-agent"]);
        assert_eq!(row(&on, "i-bare-stopped").status, Status::NotRunning);
        // No instance needs the SSM role any more, so it is not created.
        assert!(on.create_ssm_role.is_none());
        // Even where the config forbids associations, DHMC needs none.
        let manual = world.plan(&config("auto_assignment = false"));
        assert_eq!(row(&manual, "i-bare-online").status, Status::Planned);
    }

    #[test]
    fn install_rows_carry_the_planned_azure_location_and_an_unknown_region_fails_with_a_pointer() {
        let text = "[aws]\nall_regions = true\n[azure]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\nsubscription_id = \"00000000-0000-0000-0000-000000000002\"\nclient_id = \"00000000-0000-0000-0000-000000000003\"\nlocation = \"auto\"\nresource_group_location = \"eastus\"\n[azure.locations]\n\"eu-central-1\" = \"germanywestcentral\"\n";
        let cfg = Config::parse(text, Path::new("t.toml")).unwrap();
        let mut w = World::new()
            .instance(
                "i-0000000000000001",
                Some("AppProfile"),
                InstanceState::Running,
                Some(PingStatus::Online),
            )
            .instance("i-mac0000000000002", None, InstanceState::Running, None);
        for region in ["eu-west-1", "eu-central-1", "xx-east-1"] {
            let mut other = w.obs.regions[0].clone();
            other.region = region.into();
            w.obs.regions.push(other);
        }
        let plan = w.plan(&cfg);
        let rows: Vec<(&str, &str, Option<&str>, Status)> = plan
            .instances
            .iter()
            .map(|r| {
                (
                    r.region.as_str(),
                    r.instance_id.as_str(),
                    r.azure_location.as_deref(),
                    r.status,
                )
            })
            .collect();
        let linux = "i-0000000000000001";
        let mac = "i-mac0000000000002";
        assert_eq!(
            rows,
            [
                ("us-east-1", linux, Some("eastus"), Status::Planned),
                ("us-east-1", mac, None, Status::Unsupported),
                ("eu-west-1", linux, Some("westeurope"), Status::Planned),
                ("eu-west-1", mac, None, Status::Unsupported),
                (
                    "eu-central-1",
                    linux,
                    Some("germanywestcentral"),
                    Status::Planned
                ),
                ("eu-central-1", mac, None, Status::Unsupported),
                ("xx-east-1", linux, None, Status::Failed),
                ("xx-east-1", mac, None, Status::Unsupported),
            ]
        );
        let unknown = &plan.instances[6];
        assert!(unknown.actions.is_empty(), "{unknown:?}");
        let failure = unknown.failure.as_ref().unwrap();
        assert_eq!(failure.code, "no-azure-location");
        assert!(failure.reason.contains("[azure.locations]"), "{failure}");
        // The report shows the location; a row without one leaves the field out.
        let json = serde_json::to_value(&plan.instances[0]).unwrap();
        assert_eq!(json["azure_location"], "eastus");
        assert!(serde_json::to_value(&plan.instances[1])
            .unwrap()
            .get("azure_location")
            .is_none());
    }

    #[test]
    fn the_event_stages_are_the_planners_rows_and_batches() {
        let cfg = Config::parse(
            "[aws]\nregions = [\"us-east-1\"]\n[azure]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\nsubscription_id = \"00000000-0000-0000-0000-000000000002\"\nclient_id = \"00000000-0000-0000-0000-000000000003\"\nlocation = \"eastus\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let world = fleet();
        let plan = world.plan(&cfg);
        // Intake: IAM only; the rows left waiting for the agent say the event path follows them.
        let intake = plan.clone().scoped(Scope {
            iam: true,
            install: false,
        });
        let intake = intake.for_event(EventStage::Intake);
        assert!(intake.batches.is_empty());
        assert_eq!(
            row(&intake, "i-good").detail,
            "event: Online in SSM; the agent install is queued"
        );
        let legacy = row(&intake, "i-legacy");
        assert_eq!(names(legacy), ["attach-role-policy"]);
        assert_eq!(legacy.status, Status::WaitingForSsm);
        assert_eq!(
            legacy.detail,
            "event: IAM in place; waiting for SSM registration, then the agent is installed"
        );
        assert_eq!(row(&intake, "i-stopped").status, Status::NotRunning);
        // Install: only the rows whose agent script runs, in the batches planned for them.
        let install = plan
            .clone()
            .scoped(Scope {
                iam: false,
                install: true,
            })
            .for_event(EventStage::Install);
        let ids: Vec<&str> = install
            .instances
            .iter()
            .map(|r| r.instance_id.as_str())
            .collect();
        assert!(ids.contains(&"i-good") && ids.contains(&"i-win"), "{ids:?}");
        assert!(install
            .instances
            .iter()
            .all(|r| r.status == Status::Planned && r.runs_agent_script()));
        let batched: Vec<&str> = install
            .batches
            .iter()
            .flat_map(|b| b.instance_ids.iter().map(String::as_str))
            .collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        let mut batched_sorted = batched.clone();
        batched_sorted.sort_unstable();
        assert_eq!(batched_sorted, sorted);
        // Offboard: only the gone instances named (none here).
        let gone = plan.for_event(EventStage::Offboard(&["i-good".to_string()]));
        assert!(gone.instances.is_empty() && gone.batches.is_empty());
    }

    #[test]
    fn a_license_included_sql_server_instance_says_what_its_tag_means() {
        let w = World::new().instance(
            "i-winsql00000000001",
            Some("AppProfile"),
            InstanceState::Running,
            Some(PingStatus::Online),
        );
        let plan = w.plan(&config(""));
        let detail = &plan.instances[0].detail;
        assert!(
            detail.contains("Windows with SQL Server Standard: AWS bills its SQL Server license")
                && detail.contains("ArcSQLServerExtensionDeployment = Disabled")
                && detail.contains("not deployed"),
            "{detail}"
        );
        let payg = Config::parse(
            "[aws]\nregions = [\"us-east-1\"]\n[onboarding]\nsql_server_license = \"payg\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let detail = &w.plan(&payg).instances[0].detail;
        assert!(
            detail.contains("PAYG") && detail.contains("on top of AWS"),
            "{detail}"
        );
        // Other instances carry no note.
        let plain = World::new().instance(
            "i-win000000000000001",
            Some("AppProfile"),
            InstanceState::Running,
            Some(PingStatus::Online),
        );
        assert!(!plain.plan(&config("")).instances[0].detail.contains("SQL"));
    }

    fn machine(name: &str, status: &str, since: SystemTime, reports: Option<&str>) -> ArcMachine {
        ArcMachine {
            name: name.into(),
            status: ArcStatus::parse(status),
            errors: vec![],
            last_status_change: Some(since),
            detected_instance_id: reports.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn table_of_repairs() {
        const DAY: u64 = 86_400;
        let now = at(100 * DAY);
        let mut world = World::new();
        for id in [
            "i-expired",
            "i-disc-long",
            "i-disc-short",
            "i-clone",
            "i-origin",
            "i-elsewhere",
            "i-expired-offline",
        ] {
            let ping = (id != "i-expired-offline").then_some(Online);
            world = world.instance(id, Some("AppProfile"), Running, ping);
        }
        world = world.instance("i-expired-stopped", Some("AppProfile"), Stopped, None);
        let machines = [
            machine("i-expired", "Expired", at(10 * DAY), Some("i-expired")),
            machine("i-disc-long", "Disconnected", at(98 * DAY), None),
            machine("i-disc-short", "Disconnected", at(100 * DAY - 3_600), None),
            // The machine named after i-origin is reported by i-clone's agent: i-clone is a clone.
            machine("i-origin", "Connected", at(DAY), Some("i-clone")),
            machine("i-expired-offline", "Expired", at(DAY), None),
            machine("i-expired-stopped", "Expired", at(DAY), None),
        ];
        world.obs.arc = ArcObservation::Checked {
            resource_group: "aws_123456789012".into(),
            group_exists: true,
            machines: machines.into_iter().map(|m| (m.name.clone(), m)).collect(),
        };
        let memory = Memory {
            instances: HashMap::new(),
            now,
            terminations: HashMap::new(),
            retry: None,
        };
        let off = config("");
        let on = config("[lifecycle]\nrepair = true");
        let on_6h = config("[lifecycle]\nrepair = true\nrepair_after = \"6 hours\"");
        let on_3d = config("[lifecycle]\nrepair = true\nrepair_after = \"3 days\"");
        // (config, instance, actions, status, words the detail must hold)
        type Case<'a> = (&'a Config, &'a str, &'a [&'a str], Status, &'a str);
        let cases: &[Case] = &[
            (
                &on,
                "i-expired",
                &["reconnect-agent"],
                Status::Planned,
                "is Expired",
            ),
            (&off, "i-expired", &[], Status::Failed, "repair = false"),
            (
                &on,
                "i-disc-long",
                &["reconnect-agent"],
                Status::Planned,
                "longer than repair_after = 1 day",
            ),
            (
                &off,
                "i-disc-long",
                &[],
                Status::Failed,
                "set repair = true",
            ),
            (
                &on_3d,
                "i-disc-long",
                &["install-agent"],
                Status::Planned,
                "less than repair_after = 3 days",
            ),
            (
                &on,
                "i-disc-short",
                &["install-agent"],
                Status::Planned,
                "less than repair_after = 1 day",
            ),
            (
                &on_6h,
                "i-disc-short",
                &["install-agent"],
                Status::Planned,
                "less than repair_after",
            ),
            (
                &on,
                "i-clone",
                &["reconnect-agent"],
                Status::Planned,
                "reports as Arc machine aws_123456789012/i-origin",
            ),
            (&off, "i-clone", &[], Status::Failed, "a clone"),
            (
                &on,
                "i-origin",
                &[],
                Status::AlreadyOnboarded,
                "is Connected",
            ),
            // An agent connected to another group or subscription is not in our group's machines: a
            // plain install, whose script reports it connected-elsewhere and leaves it alone.
            (
                &on,
                "i-elsewhere",
                &["install-agent"],
                Status::Planned,
                "Online in SSM",
            ),
            (
                &on,
                "i-expired-offline",
                &["reconnect-agent"],
                Status::Planned,
                "once the instance is Online",
            ),
            (&on, "i-expired-stopped", &[], Status::NotRunning, "stopped"),
        ];
        for (cfg, id, actions, status, words) in cases {
            let plan = plan_account(&world.obs, cfg, &memory);
            let r = row(&plan, id);
            assert_eq!(names(r), *actions, "{id} actions; detail: {}", r.detail);
            assert_eq!(r.status, *status, "{id} status; detail: {}", r.detail);
            assert!(
                r.detail.contains(words),
                "{id}: {:?} lacks {words:?}",
                r.detail
            );
            if *status == Status::Failed {
                assert_eq!(r.failure.as_ref().unwrap().code, "agent-needs-repair");
            }
        }
        // A repair makes the resource group's creation no concern (the group exists) and is no IAM.
        let plan = plan_account(&world.obs, &on, &memory);
        assert!(!plan.create_resource_group);
        assert!(!InstanceAction::ReconnectAgent.is_iam());
        // The IAM-only scope of the event intake drops it like an install.
        let iam_only = plan.scoped(Scope {
            iam: true,
            install: false,
        });
        assert!(names(row(&iam_only, "i-expired")).is_empty());
    }
}
