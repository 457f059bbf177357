//! `status`: what the daemon's state file says, rendered as a table or JSON, without any AWS call.

use std::fmt::Write as _;
use std::time::Duration;

use crate::output::table::wrap;
use crate::output::TableStyle;

use super::{exit, Cli, CliError, Output, StatusArgs};

pub(super) async fn status_command(cli: &Cli, args: &StatusArgs) -> Result<u8, CliError> {
    if !args.state_file.exists() {
        return Err(CliError::NoStateFile(args.state_file.clone()));
    }
    let db = crate::daemon::state::StateDb::open_read_only(&args.state_file).await?;
    let records = db.all().await?;
    let passes = db.last_passes().await?;
    let deletions = db.deletions().await?;
    let mut by_status: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in &records {
        *by_status.entry(r.status.as_str()).or_default() += 1;
    }
    let stamp = |t: i64| {
        crate::model::timestamp(std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64))
    };
    let text = match cli.output {
        Output::Json => {
            let value = serde_json::json!({
                "state_file": args.state_file,
                "summary": { "instances": records.len(), "by_status": by_status },
                "last_passes": passes.iter().map(|p| serde_json::json!({
                    "kind": p.kind, "started_at": stamp(p.started_at), "finished_at": stamp(p.finished_at),
                    "ok": p.ok, "by_status": serde_json::from_str::<serde_json::Value>(&p.summary).unwrap_or_default(),
                })).collect::<Vec<_>>(),
                "instances": records.iter().map(|r| serde_json::json!({
                    "account_id": r.account_id, "region": r.region, "instance_id": r.instance_id,
                    "status": r.status, "detail": r.detail, "command_id": r.command_id,
                    "attempts": r.attempts,
                    "last_error": r.last_error.as_ref().map(|f| f.to_string()),
                    "failure": r.last_error,
                    "next_attempt_at": r.next_attempt_at.map(stamp), "last_seen_at": stamp(r.last_seen_at),
                })).collect::<Vec<_>>(),
                "pending_deletions": deletions.iter().map(|d| serde_json::json!({
                    "account_id": d.account_id, "region": d.region, "instance_id": d.instance_id,
                    "resource_group": d.resource_group, "machine": d.machine,
                    "first_seen_at": stamp(d.first_seen_at), "delete_at": stamp(d.delete_at),
                })).collect::<Vec<_>>(),
            });
            format!(
                "{}\n",
                serde_json::to_string_pretty(&value).expect("serializes")
            )
        }
        Output::Table => {
            let style = TableStyle::for_stdout(args.wide);
            let fits = |line: &str| wrap(line, style.width, 2);
            let mut out = String::new();
            let _ = writeln!(
                out,
                "{}",
                fits(&format!("state file {}", args.state_file.display()))
            );
            for p in &passes {
                let line = format!(
                    "last {} pass: {} .. {} {}",
                    p.kind,
                    stamp(p.started_at),
                    stamp(p.finished_at),
                    if p.ok { "ok" } else { "FAILED" }
                );
                let _ = writeln!(out, "{}", fits(&line));
            }
            out.push('\n');
            // (header, shown in the narrow layout)
            let columns = [
                ("ACCOUNT", true),
                ("REGION", true),
                ("INSTANCE", true),
                ("STATUS", true),
                ("ATTEMPTS", false),
                ("NEXT ATTEMPT", true),
                ("DETAIL", true),
            ];
            let keep: Vec<usize> = (0..columns.len())
                .filter(|n| !style.narrow || columns[*n].1)
                .collect();
            let headers: Vec<&str> = keep.iter().map(|n| columns[*n].0).collect();
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|r| {
                    let all = [
                        r.account_id.clone(),
                        r.region.clone(),
                        r.instance_id.clone(),
                        r.status.to_string(),
                        r.attempts.to_string(),
                        r.next_attempt_at.map(stamp).unwrap_or_else(|| "-".into()),
                        r.detail.clone(),
                    ];
                    keep.iter().map(|n| all[*n].clone()).collect()
                })
                .collect();
            let order = [
                ("DETAIL", 16),
                ("NEXT ATTEMPT", 10),
                ("REGION", 9),
                ("ACCOUNT", 6),
                ("INSTANCE", 10),
            ];
            out.push_str(&style.render(&headers, &rows, &order));
            let counts: Vec<String> = by_status.iter().map(|(s, n)| format!("{s}={n}")).collect();
            let line = format!("{} instances: {}", records.len(), counts.join(" "));
            let _ = writeln!(out, "\n{}", fits(&line));
            if !deletions.is_empty() {
                let rows: Vec<Vec<String>> = deletions
                    .iter()
                    .map(|d| {
                        vec![
                            d.account_id.clone(),
                            d.region.clone(),
                            d.instance_id.clone(),
                            format!("{}/{}", d.resource_group, d.machine),
                            stamp(d.first_seen_at),
                            stamp(d.delete_at),
                        ]
                    })
                    .collect();
                let headers = [
                    "ACCOUNT",
                    "REGION",
                    "GONE INSTANCE",
                    "ARC MACHINE",
                    "FIRST SEEN",
                    "DELETE AT",
                ];
                let _ = writeln!(out, "\npending deletions of gone instances' Arc machines:");
                out.push_str(&crate::output::table::render(&headers, &rows));
            }
            out
        }
    };
    crate::output::stdout::print(&text).map_err(CliError::Stdout)?;
    Ok(exit::OK)
}
