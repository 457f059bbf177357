//! The report's data: the same structure for `plan` and `run`, built from the account plans and what
//! executing them did. Rendering it (JSON, the table) is `output::report`'s.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use crate::model::{timestamp, ApiCounts};
use crate::reconcile::outcome::AccountOutcome;
use crate::reconcile::plan::{AccountPlan, InstancePlan, RegionError, SsmRoleSteps, Status};

/// Which command produced the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Dry run.
    Plan,
    /// One-shot onboarding.
    Run,
}

/// One account's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct AccountReport {
    /// 12-digit id.
    pub account_id: String,
    /// Account-level actions in execution order.
    pub actions: Vec<&'static str>,
    /// The steps behind `create-ssm-role`, when planned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssm_role_steps: Option<SsmRoleSteps>,
    /// What happened to the account-level actions (run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The account's Azure resource group, when Azure is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    /// The agent script's SSM commands as planned: region, instances, document and script parameters.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<crate::reconcile::batches::AgentBatch>,
}

/// One entry of `errors[]`: an account, a region of an account, or the organization that could not be
/// observed or entered. The rest of the pass went on without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportError {
    /// The account concerned (for the organization's listing: the caller's account).
    pub account_id: String,
    /// The region, or null for an account-level failure (`sts:AssumeRole`, `organizations:ListAccounts`).
    pub region: Option<String>,
    /// The failing call, `service:Operation`.
    pub operation: String,
    /// AWS error code.
    pub code: String,
    /// AWS error message.
    pub message: String,
}

impl ReportError {
    /// An account-level failure (no region).
    pub fn account(account_id: &str, e: &crate::model::AwsError) -> ReportError {
        ReportError {
            account_id: account_id.to_string(),
            region: None,
            operation: e.operation.clone(),
            code: e.code.clone(),
            message: e.message.clone(),
        }
    }
}

impl From<RegionError> for ReportError {
    fn from(e: RegionError) -> ReportError {
        ReportError {
            account_id: e.account_id,
            region: Some(e.region),
            operation: e.operation,
            code: e.code,
            message: e.message,
        }
    }
}

/// Totals.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Number of instances reported.
    pub instances: usize,
    /// Instances per status.
    pub by_status: BTreeMap<Status, usize>,
    /// API calls by `service:Operation` (every HTTP attempt, retries included).
    pub api_calls: ApiCounts,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `plan` or `run`.
    pub mode: Mode,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// RFC 3339, UTC.
    pub finished_at: String,
    /// Accounts and their account-level actions.
    pub accounts: Vec<AccountReport>,
    /// Every instance that passed the filters.
    /// Every instance that passed the filters: for `plan` as planned; for `run` what happened, with the
    /// plan's status and detail in `planned`.
    pub instances: Vec<InstancePlan>,
    /// What could not be observed or entered: accounts, regions, the organization.
    pub errors: Vec<ReportError>,
    /// Totals.
    pub summary: Summary,
}

impl Report {
    /// Builds the report from account plans and, for `run`, what executing each did; the pass ran from
    /// `started` to `finished` (both read from the pass's clock).
    pub fn new(
        mode: Mode,
        (started, finished): (SystemTime, SystemTime),
        accounts: Vec<(AccountPlan, Option<AccountOutcome>)>,
        api_calls: ApiCounts,
    ) -> Report {
        let mut account_reports = Vec::new();
        let mut instances = Vec::new();
        let mut errors = Vec::new();
        for (mut plan, outcome) in accounts {
            let (outcomes, detail) = match outcome {
                Some(o) => {
                    let detail = o.note();
                    (o.instances.into_iter().map(Some).collect(), detail)
                }
                None => (vec![None; plan.instances.len()], None),
            };
            account_reports.push(AccountReport {
                account_id: plan.account_id.clone(),
                actions: plan.action_names(),
                ssm_role_steps: plan.create_ssm_role.clone(),
                detail,
                resource_group: plan.resource_group.clone(),
                batches: std::mem::take(&mut plan.batches),
            });
            instances.extend(
                plan.instances
                    .into_iter()
                    .zip(outcomes)
                    .map(|(p, o)| match o {
                        Some(o) => o.laid_over(p),
                        None => p,
                    }),
            );
            errors.extend(plan.region_errors.into_iter().map(ReportError::from));
        }
        let mut by_status = BTreeMap::new();
        for i in &instances {
            *by_status.entry(i.status).or_insert(0) += 1;
        }
        Report {
            mode,
            started_at: timestamp(started),
            finished_at: timestamp(finished),
            accounts: account_reports,
            summary: Summary {
                instances: instances.len(),
                by_status,
                api_calls,
            },
            instances,
            errors,
        }
    }

    /// Merges the reports of several accounts' passes into one, in the order given (each account's
    /// instances keep their pass's order; `accounts[]` is sorted by id), with `errors` (accounts or the
    /// organization that could not be entered or listed) and `unhandled` (accounts in scope that produced
    /// no report, listed in `accounts[]` with their reason) added. `api_calls` as given, since the passes
    /// may share one counter.
    pub fn merge(
        mode: Mode,
        (started, finished): (SystemTime, SystemTime),
        reports: Vec<Report>,
        unhandled: Vec<AccountReport>,
        errors: Vec<ReportError>,
        api_calls: ApiCounts,
    ) -> Report {
        let mut merged = Report::new(mode, (started, finished), Vec::new(), api_calls);
        // One allocation of the exact size: growing by doubling left up to 1.6 times the rows' room, and
        // the old buffer beside the new at each growth (19.4 MiB of a 20,000-instance pass's peak heap).
        merged
            .instances
            .reserve_exact(reports.iter().map(|r| r.instances.len()).sum());
        for r in reports {
            merged.accounts.extend(r.accounts);
            merged.instances.extend(r.instances);
            merged.errors.extend(r.errors);
        }
        merged.accounts.extend(unhandled);
        merged.errors.extend(errors);
        merged
            .accounts
            .sort_by(|a, b| a.account_id.cmp(&b.account_id));
        merged.summary.instances = merged.instances.len();
        for i in &merged.instances {
            *merged.summary.by_status.entry(i.status).or_insert(0) += 1;
        }
        merged
    }

    /// Whether anything failed: an instance, or a region that could not be observed.
    pub fn has_failures(&self) -> bool {
        !self.errors.is_empty() || self.instances.iter().any(|i| i.status == Status::Failed)
    }

    /// Whether any instance or account has an action to take (`plan --detailed-exitcode`).
    pub fn has_changes(&self) -> bool {
        self.instances.iter().any(|i| !i.actions.is_empty())
            || self.accounts.iter().any(|a| !a.actions.is_empty())
    }

    /// Whether nothing was onboarded while some instance still waits for SSM (`run`'s exit code 4).
    pub fn still_waiting(&self) -> bool {
        let count = |s: Status| self.summary.by_status.get(&s).copied().unwrap_or(0);
        count(Status::Onboarded) == 0 && count(Status::WaitingForSsm) > 0
    }
}
