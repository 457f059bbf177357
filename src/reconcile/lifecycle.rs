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
use crate::model::{timestamp, ArcMachine, AwsError, InstanceState, Platform};
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
    crate::ports::memory::unix(t)
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
                agent_version: g.machine.agent_version.clone(),
                azure_location: None,
                planned: None,
                needs_ssm_role: false,
                resume: false,
                retry: None,
                arc: crate::reconcile::saved::ArcSeen::Present {
                    name: g.machine.name.clone(),
                    status: g.machine.status.as_str().to_string(),
                },
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::path::Path;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::model::{ArcStatus, Ec2Instance};
    use crate::reconcile::observe::{AccountObservation, Lookup, ObservedInstance};

    const ACCOUNT: &str = "123456789012";
    const RG: &str = "aws_123456789012";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn config(lifecycle: &str) -> Config {
        let text = format!("[aws]\nregions = [\"us-east-1\"]\n[lifecycle]\n{lifecycle}\n");
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    fn tagged(name: &str, tags: &[(&str, &str)], changed: Option<u64>) -> ArcMachine {
        ArcMachine {
            name: name.into(),
            status: ArcStatus::Disconnected,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            last_status_change: changed.map(at),
            ..ArcMachine::default()
        }
    }

    fn ours(id: &str, region: &str) -> Vec<(&'static str, String)> {
        vec![
            ("ManagedBy", "arc-onboard".into()),
            ("AwsAccountId", ACCOUNT.into()),
            ("AwsRegion", region.into()),
            ("AwsInstanceId", id.into()),
        ]
    }

    fn machine(name: &str, tags: Vec<(&'static str, String)>, changed: Option<u64>) -> ArcMachine {
        let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (*k, v.as_str())).collect();
        tagged(name, &tags, changed)
    }

    fn region(name: &str, live: &[&str], error: bool) -> RegionObservation {
        RegionObservation {
            region: name.into(),
            instances: live
                .iter()
                .map(|id| ObservedInstance {
                    ec2: Ec2Instance {
                        instance_id: id.to_string(),
                        name: None,
                        platform: Platform::Linux,
                        state: InstanceState::Running,
                        profile_arn: None,
                        sql_server_included: None,
                    },
                    ssm: None,
                })
                .collect(),
            error: error.then(|| AwsError::from_code("ec2:DescribeInstances", "Throttling", "x")),
            ssm_error: None,
            in_flight: HashMap::new(),
            dhmc_role: None,
        }
    }

    fn arc(machines: Vec<ArcMachine>) -> ArcObservation {
        ArcObservation::Checked {
            resource_group: RG.into(),
            group_exists: true,
            machines: machines.into_iter().map(|m| (m.name.clone(), m)).collect(),
        }
    }

    /// Observation of gone machines through the fake EC2.
    #[tokio::test]
    async fn only_our_tagged_machines_of_gone_instances_in_observed_regions_are_candidates() {
        let aws = crate::fake::FakeAws::new(&["us-east-1", "eu-west-1"]);
        for (id, state) in [
            ("i-terminated", InstanceState::Terminated),
            ("i-stopping", InstanceState::ShuttingDown),
            ("i-untagged-live", InstanceState::Running),
        ] {
            aws.add_instance("us-east-1", id, Platform::Linux, state, None, &[]);
        }
        let regions = vec![
            region("us-east-1", &["i-live"], false),
            region("eu-west-1", &[], true),
        ];
        let arc = arc(vec![
            machine("i-live", ours("i-live", "us-east-1"), None),
            machine("i-terminated", ours("i-terminated", "us-east-1"), None),
            machine("i-stopping", ours("i-stopping", "us-east-1"), None),
            machine("i-forgotten", ours("i-forgotten", "us-east-1"), None),
            // Outside the tag filter but running: not gone.
            machine(
                "i-untagged-live",
                ours("i-untagged-live", "us-east-1"),
                None,
            ),
            // No ownership tags, another account, a region that failed.
            tagged("i-foreign", &[("Owner", "me")], None),
            machine(
                "i-other-account",
                {
                    let mut t = ours("i-other-account", "us-east-1");
                    t[1].1 = "999999999999".into();
                    t
                },
                None,
            ),
            machine("i-west", ours("i-west", "eu-west-1"), None),
        ]);
        let gone = observe_gone(ACCOUNT, &regions, &arc, &aws, None).await;
        let found: Vec<(&str, Option<InstanceState>)> = gone
            .machines
            .iter()
            .map(|g| (g.instance_id.as_str(), g.state))
            .collect();
        assert_eq!(
            found,
            [
                ("i-forgotten", None),
                ("i-stopping", Some(InstanceState::ShuttingDown)),
                ("i-terminated", Some(InstanceState::Terminated)),
            ]
        );
        assert_eq!(
            aws.calls.count("ec2:DescribeInstances"),
            1,
            "one lookup for the region"
        );
        // The event path looks only at the instances it names.
        let only = ["i-terminated".to_string()];
        let gone = observe_gone(ACCOUNT, &regions, &arc, &aws, Some(&only)).await;
        assert_eq!(gone.machines.len(), 1);
        // A failed lookup makes no candidate and is reported.
        aws.fail(
            "ec2:DescribeInstances",
            "us-east-1",
            "UnauthorizedOperation",
        );
        let gone = observe_gone(ACCOUNT, &regions, &arc, &aws, None).await;
        assert!(gone.machines.is_empty());
        assert_eq!(gone.errors.len(), 1);
    }

    fn observation(gone: Vec<GoneMachine>) -> AccountObservation {
        AccountObservation {
            account_id: ACCOUNT.into(),
            regions: vec![region("us-east-1", &[], false)],
            profiles: BTreeMap::new(),
            role_policies: BTreeMap::new(),
            ssm_role: Lookup::Missing,
            arc: ArcObservation::NotConfigured,
            gone: GoneObservation {
                machines: gone,
                errors: Vec::new(),
            },
            elsewhere: HashMap::new(),
        }
    }

    fn gone(id: &str, changed_at: Option<u64>, last_status_change: Option<u64>) -> GoneMachine {
        GoneMachine {
            region: "us-east-1".into(),
            instance_id: id.into(),
            resource_group: RG.into(),
            machine: machine(id, ours(id, "us-east-1"), last_status_change),
            state: changed_at.map(|_| InstanceState::Terminated),
            changed_at: changed_at.map(at),
        }
    }

    #[test]
    fn the_grace_counts_from_the_first_sighting_and_deletion_can_be_turned_off() {
        let now = 10_000;
        let obs = observation(vec![
            gone("i-old", Some(now - 3_600), None),
            gone("i-recent", Some(now - 60), None),
            gone("i-unknown-old", None, Some(now - 7_200)),
            gone("i-remembered", Some(now - 10), None),
            gone("i-no-time", None, None),
        ]);
        let memory = Memory {
            instances: HashMap::new(),
            now: at(now),
            terminations: HashMap::from([(
                ("us-east-1".to_string(), "i-remembered".to_string()),
                at(now - 4_000),
            )]),
            retry: None,
        };
        let plan = |cfg: &Config| -> Vec<(String, Vec<&'static str>)> {
            plan_gone(&obs, &obs.regions[0], cfg, &memory)
                .iter()
                .map(|r| {
                    assert_eq!(r.status, Status::Terminated);
                    (
                        r.instance_id.clone(),
                        r.actions.iter().map(InstanceAction::as_str).collect(),
                    )
                })
                .collect()
        };
        let due = vec!["delete-arc-machine"];
        let none: Vec<&str> = Vec::new();
        assert_eq!(
            plan(&config("")),
            [
                ("i-old".to_string(), due.clone()),
                ("i-recent".to_string(), none.clone()),
                ("i-unknown-old".to_string(), due.clone()),
                ("i-remembered".to_string(), due.clone()),
                ("i-no-time".to_string(), none.clone()),
            ]
        );
        let rows = plan_gone(&obs, &obs.regions[0], &config(""), &memory);
        assert!(rows[1].detail.contains("not before"), "{}", rows[1].detail);
        let t = rows[1].termination.as_ref().unwrap();
        assert_eq!(t.delete_at_unix - t.first_seen_unix, 3_600);
        assert!(plan(&config("delete_after = \"0s\""))
            .iter()
            .all(|(_, a)| *a == due));
        let off = plan_gone(
            &obs,
            &obs.regions[0],
            &config("delete_terminated = false\ndelete_after = \"0s\""),
            &memory,
        );
        assert!(off
            .iter()
            .all(|r| r.actions.is_empty() && r.detail.contains("delete_terminated = false")));
    }

    #[test]
    fn a_scoped_pass_without_installs_leaves_deletions_to_the_onboarding_pass() {
        let obs = observation(vec![gone("i-old", Some(0), None)]);
        let memory = Memory {
            now: at(100_000),
            ..Memory::none()
        };
        let plan = crate::reconcile::plan::plan_account(&obs, &config(""), &memory);
        assert_eq!(plan.instances[0].actions.len(), 1);
        let iam_only = plan.scoped(crate::reconcile::plan::Scope {
            iam: true,
            install: false,
        });
        assert!(iam_only.instances[0].actions.is_empty());
        assert!(iam_only.instances[0]
            .detail
            .ends_with("the onboarding pass deletes it"));
    }
}
