//! What executing a plan did: one outcome per planned instance, kept beside the plan, which execution never
//! changes. The report renders both.

use crate::model::PingStatus;
use crate::reconcile::plan::{AccountPlan, Failure, InstancePlan, Planned, Status};

/// What execution did to one instance. Starts as the plan's status and detail; each step of the pass moves
/// it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceOutcome {
    /// Where the instance ended (`planned` only while execution has not reached it).
    pub status: Status,
    /// Why, in words.
    pub detail: String,
    /// `failed` only: in which step, with which code, and why.
    pub failure: Option<Failure>,
    /// The Arc resource the agent is connected to, when the agent said so.
    pub arc_resource_id: Option<String>,
    /// The install command sent, or resumed, for this instance.
    pub command_id: Option<String>,
    /// After a failed install (daemon): when the next attempt is due, RFC 3339.
    pub next_attempt_at: Option<String>,
    /// SSM ping status as last seen during execution.
    pub ssm_ping: Option<PingStatus>,
    /// Instance profile ARN as last seen during execution.
    pub instance_profile: Option<String>,
    /// The agent version Azure reported for the machine, as last seen (verification refreshes it).
    pub agent_version: Option<String>,
}

impl InstanceOutcome {
    /// An outcome with only a status and a detail.
    pub fn new(status: Status, detail: impl Into<String>) -> InstanceOutcome {
        InstanceOutcome {
            status,
            detail: detail.into(),
            failure: None,
            arc_resource_id: None,
            command_id: None,
            next_attempt_at: None,
            ssm_ping: None,
            instance_profile: None,
            agent_version: None,
        }
    }

    /// Marks the instance failed; the detail is rendered from the failure.
    pub fn fail(&mut self, failure: Failure) {
        self.status = Status::Failed;
        self.detail = failure.to_string();
        self.failure = Some(failure);
    }

    /// The planned row with this outcome laid over it, the plan's status and detail kept in `planned`:
    /// a row of a `run` report.
    pub fn laid_over(self, mut row: InstancePlan) -> InstancePlan {
        row.planned = Some(Planned {
            status: row.status,
            detail: std::mem::take(&mut row.detail),
        });
        row.status = self.status;
        row.detail = self.detail;
        row.failure = self.failure;
        row.arc_resource_id = self.arc_resource_id;
        row.command_id = self.command_id;
        row.next_attempt_at = self.next_attempt_at;
        row.ssm_ping = self.ssm_ping;
        row.instance_profile = self.instance_profile;
        row.agent_version = self.agent_version;
        row
    }

    /// Whether execution has not settled this instance yet.
    pub fn pending(&self) -> bool {
        self.status == Status::Planned
    }
}

/// What executing one account's plan did: `instances[n]` belongs to `plan.instances[n]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountOutcome {
    /// Per planned instance, same order as the plan.
    pub instances: Vec<InstanceOutcome>,
    /// What happened to the account-level actions, in words.
    pub notes: Vec<String>,
}

impl AccountOutcome {
    /// The outcome before anything ran: every instance where the plan left it.
    pub fn start(plan: &AccountPlan) -> AccountOutcome {
        AccountOutcome {
            instances: plan
                .instances
                .iter()
                .map(|p| InstanceOutcome {
                    status: p.status,
                    detail: p.detail.clone(),
                    failure: p.failure.clone(),
                    arc_resource_id: p.arc_resource_id.clone(),
                    command_id: p.command_id.clone(),
                    next_attempt_at: p.next_attempt_at.clone(),
                    ssm_ping: p.ssm_ping,
                    instance_profile: p.instance_profile.clone(),
                    agent_version: p.agent_version.clone(),
                })
                .collect(),
            notes: Vec::new(),
        }
    }

    /// The plan's rows with this outcome laid over them (see [`InstanceOutcome::laid_over`]).
    pub fn laid_over(self, mut plan: AccountPlan) -> AccountPlan {
        plan.instances = plan
            .instances
            .into_iter()
            .zip(self.instances)
            .map(|(row, o)| o.laid_over(row))
            .collect();
        plan
    }

    /// The account-level notes as one line, when there are any.
    pub fn note(&self) -> Option<String> {
        (!self.notes.is_empty()).then(|| self.notes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::plan::FailureStep;

    #[test]
    fn failing_an_outcome_renders_the_detail_from_the_failure() {
        let mut o = InstanceOutcome::new(Status::Planned, "planned");
        assert!(o.pending());
        o.fail(Failure::new(FailureStep::Ssm, "AccessDenied", "no"));
        assert_eq!(o.status, Status::Failed);
        assert_eq!(o.detail, "ssm failed (AccessDenied): no");
        assert!(!o.pending());
    }
}
