//! The report: the same structure for `plan` and `run`, rendered as JSON (the interface's schema) or as a
//! table for people. Results go to stdout; logs never do.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use serde::Serialize;

use crate::model::ApiCounts;
use crate::output::table::wrap;
use crate::output::TableStyle;
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

/// RFC 3339 timestamp with second precision.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Report {
    /// Builds the report from account plans and, for `run`, what executing each did.
    pub fn new(
        mode: Mode,
        started: SystemTime,
        accounts: Vec<(AccountPlan, Option<AccountOutcome>)>,
        api_calls: ApiCounts,
    ) -> Report {
        let mut account_reports = Vec::new();
        let mut instances = Vec::new();
        let mut errors = Vec::new();
        for (plan, outcome) in accounts {
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
            finished_at: timestamp(SystemTime::now()),
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
        started: SystemTime,
        reports: Vec<Report>,
        unhandled: Vec<AccountReport>,
        errors: Vec<ReportError>,
        api_calls: ApiCounts,
    ) -> Report {
        let mut merged = Report::new(mode, started, Vec::new(), api_calls);
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
        merged.finished_at = timestamp(SystemTime::now());
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

    /// JSON, pretty-printed.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serializes")
    }

    /// A table for people, every column and every cell whole (the output scripts read).
    pub fn to_table(&self) -> String {
        self.to_table_styled(&TableStyle::plain(), &[])
    }

    /// A table for people shaped by `style` (see [`TableStyle`]), with `banner` lines above it (what
    /// matters before the rows, e.g. that Azure was not asked).
    pub fn to_table_styled(&self, style: &TableStyle, banner: &[String]) -> String {
        let multi_account = self
            .instances
            .iter()
            .any(|i| i.account_id != self.instances[0].account_id);
        // (header, shown in the narrow layout)
        let columns: [(&str, bool); 12] = [
            ("ACCOUNT", multi_account),
            ("REGION", true),
            ("LOCATION", false),
            ("INSTANCE", true),
            ("NAME", true),
            ("PLATFORM", false),
            ("STATE", false),
            ("SSM", false),
            ("AGENT", false),
            ("ACTIONS", true),
            ("STATUS", true),
            ("DETAIL", true),
        ];
        let keep: Vec<usize> = (0..columns.len())
            .filter(|n| !style.narrow || columns[*n].1)
            .collect();
        let headers: Vec<&str> = keep.iter().map(|n| columns[*n].0).collect();
        let rows: Vec<Vec<String>> = self
            .instances
            .iter()
            .map(|i| {
                let all = [
                    i.account_id.clone(),
                    i.region.clone(),
                    i.azure_location.clone().unwrap_or_else(|| "-".into()),
                    i.instance_id.clone(),
                    i.name.clone().unwrap_or_else(|| "-".into()),
                    i.platform.as_str().into(),
                    i.state.as_str().into(),
                    i.ssm_ping.map_or("-", |p| p.as_str()).into(),
                    i.agent_version.clone().unwrap_or_else(|| "-".into()),
                    if i.actions.is_empty() {
                        "-".into()
                    } else {
                        i.actions
                            .iter()
                            .map(|a| a.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                    i.status.as_str().into(),
                    i.detail.clone(),
                ];
                keep.iter().map(|n| all[*n].clone()).collect()
            })
            .collect();
        // DETAIL gives way first, then NAME and ACTIONS, then DETAIL again, then the ids.
        let order = [
            ("DETAIL", 24),
            ("NAME", 12),
            ("ACTIONS", 20),
            ("DETAIL", 10),
            ("NAME", 6),
            ("ACTIONS", 8),
            ("REGION", 9),
            ("ACCOUNT", 6),
            ("INSTANCE", 10),
        ];
        let fits = |text: &str, indent: usize| wrap(text, style.width, indent);
        let mut out = String::new();
        for line in banner {
            let line = fits(line, 2);
            match style.colour {
                true => {
                    let _ = writeln!(out, "\x1b[33m{line}{}", crate::output::table::RESET);
                }
                false => {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
        if !banner.is_empty() {
            out.push('\n');
        }
        let mode = match self.mode {
            Mode::Plan => "plan (dry run: nothing was changed)",
            Mode::Run => "run",
        };
        let title = format!(
            "arc-onboard {mode}, {} .. {}",
            self.started_at, self.finished_at
        );
        let _ = writeln!(out, "{}", fits(&title, 2));
        for a in &self.accounts {
            let actions = if a.actions.is_empty() {
                "none".to_string()
            } else {
                a.actions.join(", ")
            };
            let mut line = format!("account {}: account actions: {actions}", a.account_id);
            if let Some(d) = &a.detail {
                let _ = write!(line, " ({d})");
            }
            let _ = writeln!(out, "{}", fits(&line, 2));
        }
        out.push('\n');
        out.push_str(&style.render(&headers, &rows, &order));
        if !self.errors.is_empty() {
            out.push_str("\nnot observed or entered:\n");
            for e in &self.errors {
                let line = format!(
                    "  {} {}: {} {}: {}",
                    e.account_id,
                    e.region.as_deref().unwrap_or("(account)"),
                    e.operation,
                    e.code,
                    e.message
                );
                let _ = writeln!(out, "{}", fits(&line, 4));
            }
        }
        let statuses: Vec<String> = self
            .summary
            .by_status
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect();
        let line = format!(
            "{} instances: {}",
            self.summary.instances,
            statuses.join(" ")
        );
        let _ = writeln!(out, "\n{}", fits(&line, 2));
        let mut failures: BTreeMap<String, usize> = BTreeMap::new();
        for f in self.instances.iter().filter_map(|i| i.failure.as_ref()) {
            *failures
                .entry(format!("{}/{}", f.step.as_str(), f.code))
                .or_default() += 1;
        }
        if !failures.is_empty() {
            let counts: Vec<String> = failures.iter().map(|(k, n)| format!("{k}={n}")).collect();
            let line = format!("failures: {}", counts.join(" "));
            let _ = writeln!(out, "{}", fits(&line, 2));
        }
        let calls: Vec<String> = self
            .summary
            .api_calls
            .iter()
            .map(|(op, n)| format!("{op}={n}"))
            .collect();
        let line = format!(
            "API calls: {}",
            if calls.is_empty() {
                "none".into()
            } else {
                calls.join(" ")
            }
        );
        let _ = writeln!(out, "{}", fits(&line, 2));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;
    use crate::reconcile::plan::{Failure, FailureStep, Planned};
    use crate::reconcile::saved::tests::{fleet, plan_of};

    /// Every object key in `v`, except the keys of maps whose keys are data (statuses, operations).
    fn keys(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    out.insert(k.clone());
                    if k != "by_status" && k != "api_calls" {
                        keys(child, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| keys(i, out)),
            _ => {}
        }
    }

    #[tokio::test]
    async fn every_field_of_the_json_report_is_documented_in_the_readme() {
        let plan = plan_of(&fleet()).await;
        let mut report = Report::new(
            Mode::Run,
            SystemTime::now(),
            vec![(plan, None)],
            ApiCounts::new(),
        );
        // Every optional field set, on one row and one account.
        let row = &mut report.instances[0];
        row.command_id = Some("c-1".into());
        row.next_attempt_at = Some("2026-01-01T00:00:00Z".into());
        row.arc_resource_id =
            Some("/subscriptions/s/resourceGroups/g/providers/x/machines/m".into());
        row.failure = Some(Failure {
            exit_code: Some(41),
            ..Failure::new(FailureStep::Connect, "AZCM0041", "rejected")
        });
        row.planned = Some(Planned {
            status: Status::Planned,
            detail: "planned".into(),
        });
        let account = &mut report.accounts[0];
        account.detail = Some("done".into());
        assert!(
            account.ssm_role_steps.is_some(),
            "the fixture plans create-ssm-role"
        );
        report.errors.push(ReportError {
            account_id: "1".into(),
            region: None,
            operation: "sts:AssumeRole".into(),
            code: "AccessDenied".into(),
            message: "no".into(),
        });
        let mut found = BTreeSet::new();
        keys(&serde_json::to_value(&report).unwrap(), &mut found);

        let readme = include_str!("../../README.md");
        let start = readme.find("\n## Report\n").expect("a Report section");
        let section = &readme[start + 1..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
        let undocumented: Vec<&String> = found
            .iter()
            .filter(|k| {
                !section.contains(&format!("`{k}`")) && !section.contains(&format!("\"{k}\""))
            })
            .collect();
        assert!(
            undocumented.is_empty(),
            "not in the README's Report section: {undocumented:?}"
        );
    }
}
