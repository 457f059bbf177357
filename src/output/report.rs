//! The report rendered: as JSON (the interface's schema) or as a table for people. The report's data is
//! built by the core ([`crate::reconcile::report`]); this module only renders it. Results go to stdout;
//! logs never do.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::output::table::wrap;
use crate::output::TableStyle;
pub use crate::reconcile::report::{AccountReport, Mode, Report, ReportError, Summary};

impl Report {
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
    use std::time::SystemTime;

    use serde_json::Value;

    use super::*;
    use crate::model::ApiCounts;
    use crate::reconcile::plan::{Failure, FailureStep, Planned, Status};
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
            (SystemTime::now(), SystemTime::now()),
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
