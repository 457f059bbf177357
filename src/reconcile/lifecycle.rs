//! The Arc side follows the EC2 side: our Arc machines whose instance is gone are found (observation),
//! planned as `terminated` rows with `delete-arc-machine` once `[lifecycle] delete_after` has passed (the
//! pure planner's part), and deleted (execution, with a mutation token).
//!
//! # Guarantees
//! - A machine is a candidate only when it is in the account's configured resource group (the only group
//!   observed) and carries every ownership tag ([`crate::model::ownership`]) naming this account and a
//!   region of the pass; a machine without them is never deleted, whatever its name.
//! - Only regions observed successfully count: a region whose listing failed, or whose lookup of the
//!   missing instances failed, yields no candidate (and an entry in `errors[]`).
//! - An instance is gone when EC2 says `terminated` or `shutting-down`, or no longer knows it. An instance
//!   merely outside the tag filter, stopped or running is not gone: the lookup ignores the tag filter.
//! - The grace counts from when the termination was first seen: the state file's memory, else the
//!   instance's state transition time, else the machine's `lastStatusChange`, else now.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use serde::Serialize;
use tracing::{info, warn};

use crate::config::Config;
use crate::model::{ArcMachine, AwsError, InstanceState, Platform};
use crate::output::report::timestamp;
use crate::ports::{Arm, Ec2, MutationToken};
use crate::reconcile::observe::{ArcObservation, RegionObservation};
use crate::reconcile::outcome::AccountOutcome;
use crate::reconcile::plan::{
    AccountPlan, Failure, FailureStep, InstanceAction, InstancePlan, Memory, Status,
};

/// One of our Arc machines whose instance is gone.
#[derive(Debug, Clone, PartialEq)]
pub struct GoneMachine {
    /// The instance's region (from the machine's tags, a region of the pass).
    pub region: String,
    /// The instance (from the machine's tags).
    pub instance_id: String,
    /// The account's resource group, where the machine is.
    pub resource_group: String,
    /// The machine.
    pub machine: ArcMachine,
    /// EC2's state (`terminated`, `shutting-down`); `None` when EC2 no longer knows the instance.
    pub state: Option<InstanceState>,
    /// When the instance entered that state, when EC2 says.
    pub changed_at: Option<SystemTime>,
}

/// What the lifecycle part of an observation found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GoneObservation {
    /// Our machines whose instance is gone.
    pub machines: Vec<GoneMachine>,
    /// Regions whose missing instances could not be looked up: no candidate there.
    pub errors: Vec<(String, AwsError)>,
}

/// The report's view of a `terminated` or `offboarded` row: which machine, and when it may go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Termination {
    /// The machine's resource group.
    pub resource_group: String,
    /// The machine's resource name.
    pub machine: String,
    /// When the termination was first seen, RFC 3339.
    pub first_seen_at: String,
    /// When `delete_after` has passed, RFC 3339.
    pub delete_at: String,
    /// `first_seen_at` as Unix seconds (what the state file keeps).
    #[serde(skip)]
    pub first_seen_unix: i64,
    /// `delete_at` as Unix seconds.
    #[serde(skip)]
    pub delete_at_unix: i64,
}

/// Finds our machines in `arc` whose instance is gone, in the regions of `regions` that were observed
/// (only the machines of `only` when given: the event path observes a few instances, not a region).
/// Costs one `DescribeInstances` per region that has such machines, none otherwise.
pub async fn observe_gone(
    account_id: &str,
    regions: &[RegionObservation],
    arc: &ArcObservation,
    ec2: &impl Ec2,
    only: Option<&[String]>,
) -> GoneObservation {
    let mut out = GoneObservation::default();
    let ArcObservation::Checked {
        resource_group,
        machines,
        ..
    } = arc
    else {
        return out;
    };
    for region in regions.iter().filter(|r| r.error.is_none()) {
        let listed: BTreeSet<&str> = region
            .instances
            .iter()
            .map(|i| i.ec2.instance_id.as_str())
            .collect();
        let mut missing: BTreeMap<String, Vec<&ArcMachine>> = BTreeMap::new();
        for m in machines.values() {
            let Some(owner) = m.owner() else { continue };
            if owner.account_id != account_id
                || owner.region != region.region
                || listed.contains(owner.instance_id.as_str())
                || only.is_some_and(|ids| !ids.contains(&owner.instance_id))
            {
                continue;
            }
            missing.entry(owner.instance_id).or_default().push(m);
        }
        if missing.is_empty() {
            continue;
        }
        let ids: Vec<String> = missing.keys().cloned().collect();
        let fates = match ec2.instance_fates(&region.region, &ids).await {
            Ok(f) => f,
            Err(e) => {
                warn!(region = %region.region, error = %e, "cannot look up the instances of our Arc machines; none is deleted in this region");
                out.errors.push((region.region.clone(), e));
                continue;
            }
        };
        for (id, ms) in missing {
            let fate = fates.iter().find(|f| f.instance_id == id);
            if fate.is_some_and(|f| !f.state.is_gone()) {
                // It exists (outside the tag filter, or it changed since the listing): not gone.
                continue;
            }
            for m in ms {
                out.machines.push(GoneMachine {
                    region: region.region.clone(),
                    instance_id: id.clone(),
                    resource_group: resource_group.clone(),
                    machine: m.clone(),
                    state: fate.map(|f| f.state),
                    changed_at: fate.and_then(|f| f.changed_at),
                });
            }
        }
    }
    out.machines
        .sort_by(|a, b| (&a.instance_id, &a.machine.name).cmp(&(&b.instance_id, &b.machine.name)));
    out
}

fn unix(t: SystemTime) -> i64 {
    crate::daemon::state::unix(t)
}

/// The `terminated` rows of one region: one per gone machine. Pure.
pub fn plan_gone(
    obs: &crate::reconcile::observe::AccountObservation,
    region: &RegionObservation,
    config: &Config,
    memory: &Memory,
) -> Vec<InstancePlan> {
    let lifecycle = &config.lifecycle;
    obs.gone
        .machines
        .iter()
        .filter(|g| g.region == region.region)
        .map(|g| {
            let key = (g.region.clone(), g.instance_id.clone());
            let first_seen = memory
                .terminations
                .get(&key)
                .copied()
                .or(g.changed_at)
                .or(g.machine.last_status_change)
                .unwrap_or(memory.now);
            let due = first_seen + lifecycle.delete_after;
            let state = g.state.unwrap_or(InstanceState::Terminated);
            let gone = match g.state {
                Some(s) => format!("instance is {}", s.as_str()),
                None => "EC2 no longer knows the instance".to_string(),
            };
            let machine = format!("{}/{}", g.resource_group, g.machine.name);
            let (actions, detail) = if !lifecycle.delete_terminated {
                (
                    Vec::new(),
                    format!("{gone}; Arc machine {machine} is ours but delete_terminated = false, so it is left alone"),
                )
            } else if due <= memory.now {
                (
                    vec![InstanceAction::DeleteArcMachine {
                        resource_group: g.resource_group.clone(),
                        machine: g.machine.name.clone(),
                    }],
                    format!("{gone}; Arc machine {machine} carries arc-onboard's ownership tags and will be deleted"),
                )
            } else {
                (
                    Vec::new(),
                    format!(
                        "{gone}; Arc machine {machine} is ours and will be deleted once delete_after has passed, not before {}",
                        timestamp(due)
                    ),
                )
            };
            InstancePlan {
                account_id: obs.account_id.clone(),
                region: g.region.clone(),
                instance_id: g.instance_id.clone(),
                name: None,
                platform: Platform::Unknown,
                state,
                instance_profile: None,
                ssm_ping: None,
                actions,
                status: Status::Terminated,
                detail,
                command_id: None,
                next_attempt_at: None,
                failure: None,
                arc_resource_id: None,
                planned: None,
                needs_ssm_role: false,
                resume: false,
                termination: Some(Termination {
                    resource_group: g.resource_group.clone(),
                    machine: g.machine.name.clone(),
                    first_seen_at: timestamp(first_seen),
                    delete_at: timestamp(due),
                    first_seen_unix: unix(first_seen),
                    delete_at_unix: unix(due),
                }),
            }
        })
        .collect()
}

/// Deletes the machines the plan says to delete: `offboarded`, or `failed` with step `offboard`.
pub async fn delete_gone(
    token: &MutationToken,
    plan: &AccountPlan,
    out: &mut AccountOutcome,
    arm: &impl Arm,
) {
    for (row, o) in plan.instances.iter().zip(&mut out.instances) {
        for action in &row.actions {
            let InstanceAction::DeleteArcMachine {
                resource_group,
                machine,
            } = action
            else {
                continue;
            };
            match arm.delete_machine(token, resource_group, machine).await {
                Ok(()) => {
                    info!(instance.id = %row.instance_id, region = %row.region, resource_group = %resource_group, machine = %machine, "Arc machine of a gone instance deleted");
                    o.status = Status::Offboarded;
                    o.detail = format!(
                        "Arc machine {resource_group}/{machine} deleted (its instance is gone)"
                    );
                }
                Err(e) => {
                    warn!(instance.id = %row.instance_id, region = %row.region, machine = %machine, error = %e, "cannot delete the Arc machine of a gone instance");
                    o.fail(Failure::new(
                        FailureStep::Offboard,
                        e.code(),
                        format!("cannot delete Arc machine {resource_group}/{machine}: {e}"),
                    ));
                }
            }
        }
    }
}
