//! The agent install: renders one script per account, region and platform, sends it through SSM Run
//! Command in batches of at most 50 instances, tracks the commands with as few calls as possible, and
//! verifies every reported success in Azure.
//!
//! # Guarantees
//! - An instance is in at most one command per pass, and an instance with an arc-onboard command still in
//!   flight (from any run) is never sent another one (the planner marks it `in-progress`).
//! - The service principal secret never leaves this process: scripts carry a short-lived Resource Manager
//!   access token instead.
//! - Every instance handed in ends `onboarded`, `already-onboarded` or `failed` with a reason.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::azure::{Arm, Secret};
use crate::config::{AzureConfig, Connectivity, OnboardingConfig};
use crate::install::{self, InstallParams, ScriptOutcome};
use crate::model::Platform;
use crate::plan::{AccountPlan, InstancePlan, Status};
use crate::ports::{
    CommandRequest, CommandSummary, Invocation, MutationToken, Ssm, LINUX_DOCUMENT,
    WINDOWS_DOCUMENT,
};

/// SendCommand accepts at most 50 instance ids.
pub const BATCH: usize = 50;

/// Bounds and identity of the install step.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The document's `executionTimeout` (`--command-timeout`).
    pub command_timeout: Duration,
    /// `TimeoutSeconds`: how long SSM tries to deliver the command.
    pub delivery_timeout: Duration,
    /// How long to wait for Azure to show a machine `Connected` after the script succeeded.
    pub verify_timeout: Duration,
    /// Longest pause between two polls.
    pub max_poll: Duration,
    /// `--correlation-id` passed to `azcmagent connect`; one per run.
    pub correlation_id: String,
}

impl InstallOptions {
    /// How far back an install command can still be running.
    pub fn in_flight_window(&self) -> Duration {
        self.command_timeout + self.delivery_timeout + Duration::from_secs(300)
    }

    /// The `Comment` of this run's commands.
    pub fn comment(&self) -> String {
        let mut c = format!(
            "{} run {}",
            crate::observe::COMMENT_PREFIX,
            self.correlation_id
        );
        c.truncate(100);
        c
    }
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            command_timeout: Duration::from_secs(30 * 60),
            delivery_timeout: Duration::from_secs(10 * 60),
            verify_timeout: Duration::from_secs(5 * 60),
            max_poll: Duration::from_secs(20),
            correlation_id: uuid::Uuid::new_v4().to_string(),
        }
    }
}

/// Commands sent by an earlier process: (region, command id, plan rows it targets).
pub type Resumed = (String, String, Vec<usize>);

/// Records a sent command before it is waited for: (region, command id, instance ids). The returned future
/// resolves once the record is durable.
pub type Journal<'a> =
    &'a (dyn Fn(&str, &str, &[String]) -> futures::future::BoxFuture<'a, ()> + Sync);

/// What to install: rows ready for a new command, commands to resume tracking, and where to note sends.
pub struct InstallWork<'a> {
    /// Rows Online in SSM and not onboarded.
    pub ready: &'a [usize],
    /// Commands sent before (by a process that stopped) to track instead of sending again.
    pub resume: Vec<Resumed>,
    /// Called right after each successful `SendCommand`.
    pub journal: Option<Journal<'a>>,
}

/// A command in flight and the plan rows it targets.
struct Sent {
    region: String,
    command_id: String,
    rows: Vec<usize>,
}

fn output_tail(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("ARC_ONBOARD_RESULT"))
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    let chars: Vec<char> = tail.chars().collect();
    if chars.len() > 400 {
        format!(
            "...{}",
            chars[chars.len() - 400..].iter().collect::<String>()
        )
    } else {
        tail
    }
}

/// Words for a failed invocation.
fn failure_detail(inv: &Invocation, opts: &InstallOptions) -> String {
    let result = install::parse_result(&inv.output);
    let code = result.as_ref().map_or(inv.response_code, |r| r.exit_code);
    let reason = install::exit_code_reason(code)
        .map(str::to_string)
        .or_else(|| {
            result
                .as_ref()
                .map(|r| r.message.clone())
                .filter(|m| !m.is_empty())
        });
    let what = match (inv.status.as_str(), inv.status_details.as_str()) {
        (_, "Undeliverable") => "install command could not be delivered (Undeliverable: the instance's SSM agent did not take it)".to_string(),
        (_, "Delivery Timed Out") => "install command was not delivered in time (Delivery Timed Out)".to_string(),
        (_, "Execution Timed Out") | ("TimedOut", _) => format!(
            "install timed out (Execution Timed Out after {})",
            crate::duration::format_duration(opts.command_timeout)
        ),
        ("Cancelled", _) => "install command was cancelled".to_string(),
        (status, details) => format!("install failed ({status}: {details})"),
    };
    let mut detail = what;
    if code >= 0 {
        detail.push_str(&format!("; exit code {code}"));
        if let Some(r) = reason {
            detail.push_str(&format!(": {r}"));
        }
    }
    let tail = output_tail(&inv.output);
    if !tail.is_empty() {
        detail.push_str(&format!("; output: {tail}"));
    }
    detail
}

/// Installs the agent on `ready` rows (Online in SSM, not onboarded) and verifies them in Azure.
pub async fn install_agents(
    token: &MutationToken,
    plan: &mut AccountPlan,
    work: InstallWork<'_>,
    ssm: &impl Ssm,
    arm: &impl Arm,
    (azure, onboarding): (&AzureConfig, &OnboardingConfig),
    opts: &InstallOptions,
) {
    let InstallWork {
        ready,
        resume,
        journal,
    } = work;
    // Every command this call sends goes out after this (a minute's slack for clock skew).
    let since = std::time::SystemTime::now() - Duration::from_secs(60);
    let resource_group = azure.resource_group_for(&plan.account_id);
    let mut sent: Vec<Sent> = resume
        .into_iter()
        .map(|(region, command_id, rows)| {
            for n in &rows {
                plan.instances[*n].detail =
                    format!("resumed tracking install command {command_id}");
            }
            Sent {
                region,
                command_id,
                rows,
            }
        })
        .collect();
    if !ready.is_empty() {
        match arm.token().await {
            Ok(access_token) => {
                let mut groups: BTreeMap<(String, Platform), Vec<usize>> = BTreeMap::new();
                for n in ready {
                    let row = &plan.instances[*n];
                    groups
                        .entry((row.region.clone(), row.platform))
                        .or_default()
                        .push(*n);
                }
                let scripts = Scripts {
                    azure,
                    onboarding,
                    resource_group: &resource_group,
                    access_token: &access_token,
                };
                sent.extend(send(token, plan, groups, ssm, &scripts, journal, opts).await);
            }
            Err(e) => {
                // Commands already in flight (resumed) are still tracked below.
                for n in ready {
                    let detail = format!("cannot get an Azure access token for the install: {e}");
                    set(&mut plan.instances[*n], Status::Failed, detail);
                }
            }
        }
    }
    if sent.is_empty() {
        return;
    }
    let succeeded = track(token, plan, sent, ssm, opts, since).await;
    verify(plan, &succeeded, arm, &resource_group, opts).await;
}

/// What every script of one call shares.
struct Scripts<'a> {
    azure: &'a AzureConfig,
    onboarding: &'a OnboardingConfig,
    resource_group: &'a str,
    access_token: &'a Secret,
}

/// Sends one script per (region, platform) group in batches of at most [`BATCH`]; returns the commands sent.
/// A batch SSM refuses fails its rows with SSM's reason.
async fn send(
    token: &MutationToken,
    plan: &mut AccountPlan,
    groups: BTreeMap<(String, Platform), Vec<usize>>,
    ssm: &impl Ssm,
    scripts: &Scripts<'_>,
    journal: Option<Journal<'_>>,
    opts: &InstallOptions,
) -> Vec<Sent> {
    let mut sent = Vec::new();
    for ((region, platform), rows) in groups {
        let script = render(scripts, &plan.account_id, &region, platform, opts);
        for chunk in rows.chunks(BATCH) {
            let request = CommandRequest {
                document: if platform == Platform::Windows {
                    WINDOWS_DOCUMENT
                } else {
                    LINUX_DOCUMENT
                },
                instance_ids: chunk
                    .iter()
                    .map(|n| plan.instances[*n].instance_id.clone())
                    .collect(),
                script: script.clone(),
                execution_timeout: opts.command_timeout,
                delivery_timeout: opts.delivery_timeout,
                comment: opts.comment(),
            };
            match ssm.send_command(token, &region, &request).await {
                Ok(command_id) => {
                    info!(%region, %command_id, instances = chunk.len(), "install command sent");
                    if let Some(journal) = journal {
                        journal(&region, &command_id, &request.instance_ids).await;
                    }
                    for n in chunk {
                        plan.instances[*n].detail = format!("install command {command_id} sent");
                    }
                    sent.push(Sent {
                        region: region.clone(),
                        command_id,
                        rows: chunk.to_vec(),
                    });
                }
                Err(e) => {
                    warn!(%region, error = %e, "install command not sent");
                    for n in chunk {
                        set(
                            &mut plan.instances[*n],
                            Status::Failed,
                            format!("install command not sent: {}: {}", e.code, e.message),
                        );
                    }
                }
            }
        }
    }
    sent
}

fn render(
    scripts: &Scripts<'_>,
    account_id: &str,
    region: &str,
    platform: Platform,
    opts: &InstallOptions,
) -> String {
    let Scripts {
        azure,
        onboarding,
        resource_group,
        access_token,
    } = *scripts;
    let mut tags = azure.tags.clone();
    tags.insert("AwsAccountId".into(), account_id.into());
    tags.insert("AwsRegion".into(), region.into());
    let proxy = match &onboarding.connectivity {
        Connectivity::Public => None,
        Connectivity::Proxy(url) => Some(url.as_str().trim_end_matches('/')),
    };
    let installer = if platform == Platform::Windows {
        onboarding.installer_url_windows.as_str()
    } else {
        onboarding.installer_url_linux.as_str()
    };
    let params = InstallParams {
        subscription_id: &azure.subscription_id,
        resource_group,
        location: &azure.location,
        tenant_id: &azure.tenant_id,
        cloud: azure.cloud.as_str(),
        correlation_id: &opts.correlation_id,
        tags: &tags,
        access_token: access_token.expose(),
        proxy_url: proxy,
        installer_url: installer,
    };
    if platform == Platform::Windows {
        install::render_windows(&params)
    } else {
        install::render_linux(&params)
    }
}

fn set(row: &mut InstancePlan, status: Status, detail: String) {
    row.status = status;
    row.detail = detail;
}

/// Polls the commands until they end or the bound passes; resolves each row. Returns the rows whose script
/// reported success, with whether the agent was already connected.
async fn track(
    token: &MutationToken,
    plan: &mut AccountPlan,
    mut pending: Vec<Sent>,
    ssm: &impl Ssm,
    opts: &InstallOptions,
    since: std::time::SystemTime,
) -> Vec<(usize, bool)> {
    let deadline =
        Instant::now() + opts.command_timeout + opts.delivery_timeout + Duration::from_secs(60);
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(opts.max_poll)
        .with_factor(1.5)
        .without_max_times()
        .build();
    let mut succeeded = Vec::new();
    let total = pending.len();
    let progress = crate::progress::Progress::new("install commands");
    while !pending.is_empty() {
        progress.update(&format!(
            "{} of {total} commands finished",
            total - pending.len()
        ));
        // Command-level status first. This run's commands: one ListCommands per region (filtered by
        // this run's comment), whatever the number of commands; others (resumed): one call each.
        let mut listed: HashMap<String, CommandSummary> = HashMap::new();
        let regions: BTreeSet<&str> = pending.iter().map(|s| s.region.as_str()).collect();
        for region in regions {
            match ssm.recent_commands(region, since, &opts.comment()).await {
                Ok(list) => listed.extend(list.into_iter().map(|c| (c.command_id.clone(), c))),
                Err(e) => {
                    warn!(%region, error = %e, "cannot list this run's commands; asking one by one")
                }
            }
        }
        let mut still = Vec::new();
        for s in pending {
            let status = match listed.remove(&s.command_id) {
                Some(c) => Ok(Some(c)),
                None => ssm.command_status(&s.region, &s.command_id).await,
            };
            match status {
                Ok(Some(c)) if c.is_done() => {
                    // Right after a command ends SSM may not list its invocations yet: ask again later.
                    if !resolve(plan, &s, ssm, opts, &mut succeeded).await {
                        still.push(s);
                    }
                }
                Ok(_) => still.push(s),
                Err(e) => {
                    warn!(command_id = %s.command_id, error = %e, "cannot read command status; will ask again");
                    still.push(s);
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for s in &pending {
                if let Err(e) = ssm.cancel_command(token, &s.region, &s.command_id).await {
                    warn!(command_id = %s.command_id, error = %e, "cannot cancel the command");
                }
                for n in &s.rows {
                    set(
                        &mut plan.instances[*n],
                        Status::Failed,
                        format!(
                            "install command {} did not finish in time; it was cancelled",
                            s.command_id
                        ),
                    );
                }
            }
            break;
        }
        let pause = delays.next().unwrap_or(opts.max_poll);
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    succeeded
}

/// Reads the invocations of a finished command (one paged call) and resolves its rows. Returns false,
/// resolving nothing, when SSM lists no invocation yet.
async fn resolve(
    plan: &mut AccountPlan,
    s: &Sent,
    ssm: &impl Ssm,
    opts: &InstallOptions,
    succeeded: &mut Vec<(usize, bool)>,
) -> bool {
    let listed = match ssm.command_invocations(&s.region, &s.command_id).await {
        Ok(list) if list.is_empty() => return false,
        Ok(list) => list,
        Err(e) => {
            warn!(command_id = %s.command_id, error = %e, "cannot list invocations; asking per instance");
            Vec::new()
        }
    };
    let by_id: HashMap<&str, &Invocation> =
        listed.iter().map(|i| (i.instance_id.as_str(), i)).collect();
    for n in &s.rows {
        let id = plan.instances[*n].instance_id.clone();
        let mut inv = by_id.get(id.as_str()).map(|i| (*i).clone());
        // The list's output is capped at 2,500 characters; the result line is the last one, so look closer
        // when it is missing.
        let needs_detail = match &inv {
            None => true,
            Some(i) => i.is_done() && install::parse_result(&i.output).is_none(),
        };
        if needs_detail {
            match ssm.invocation_detail(&s.region, &s.command_id, &id).await {
                Ok(Some(detail)) => inv = Some(detail),
                Ok(None) => {}
                Err(e) => warn!(instance.id = %id, error = %e, "cannot read the invocation"),
            }
        }
        let row = &mut plan.instances[*n];
        let Some(inv) = inv else {
            set(
                row,
                Status::Failed,
                format!(
                    "SSM reports no invocation of command {} for this instance",
                    s.command_id
                ),
            );
            continue;
        };
        if inv.status == "Success" {
            let already = install::parse_result(&inv.output)
                .is_some_and(|r| r.outcome == ScriptOutcome::AlreadyConnected);
            row.detail = format!("install command {} succeeded", s.command_id);
            succeeded.push((*n, already));
        } else {
            let detail = failure_detail(&inv, opts);
            warn!(instance.id = %id, region = %s.region, %detail, "install failed");
            set(row, Status::Failed, detail);
        }
    }
    true
}

/// Waits (bounded) for Azure to show each succeeded instance `Connected`, listing the group once a round.
async fn verify(
    plan: &mut AccountPlan,
    succeeded: &[(usize, bool)],
    arm: &impl Arm,
    rg: &str,
    opts: &InstallOptions,
) {
    if succeeded.is_empty() {
        return;
    }
    let deadline = Instant::now() + opts.verify_timeout;
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(opts.max_poll)
        .without_max_times()
        .build();
    let mut waiting: HashSet<usize> = succeeded.iter().map(|(n, _)| *n).collect();
    let already: HashSet<usize> = succeeded
        .iter()
        .filter(|(_, a)| *a)
        .map(|(n, _)| *n)
        .collect();
    let mut last_seen: HashMap<usize, String> = HashMap::new();
    let progress = crate::progress::Progress::new("verifying in Azure");
    loop {
        progress.update(&format!(
            "{} of {} machines Connected",
            succeeded.len() - waiting.len(),
            succeeded.len()
        ));
        match arm.list_machines(rg).await {
            Ok(machines) => {
                let by_name: HashMap<&str, _> =
                    machines.iter().map(|m| (m.name.as_str(), m)).collect();
                for n in waiting.clone() {
                    let row = &mut plan.instances[n];
                    match by_name.get(row.instance_id.as_str()) {
                        Some(m) if m.status == "Connected" => {
                            let status = if already.contains(&n) {
                                Status::AlreadyOnboarded
                            } else {
                                Status::Onboarded
                            };
                            let how = if already.contains(&n) {
                                "agent was already connected"
                            } else {
                                "agent installed and connected"
                            };
                            set(
                                row,
                                status,
                                format!("{how}; Arc machine {rg}/{} is Connected", m.name),
                            );
                            waiting.remove(&n);
                        }
                        Some(m) => {
                            let errors = if m.errors.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", m.errors.join("; "))
                            };
                            last_seen.insert(n, format!("Arc machine is {}{errors}", m.status));
                        }
                        None => {
                            last_seen.insert(n, format!("no Arc machine {rg}/{}", row.instance_id));
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot list Arc machines; will ask again"),
        }
        if waiting.is_empty() || Instant::now() >= deadline {
            break;
        }
        let pause = delays.next().unwrap_or(opts.max_poll);
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    for n in waiting {
        let row = &mut plan.instances[n];
        if already.contains(&n) {
            set(row, Status::AlreadyOnboarded, format!(
                "agent reports it is already connected, but not to {rg}: connected elsewhere (another tool or subscription); left as it is"
            ));
        } else {
            let seen = last_seen
                .remove(&n)
                .unwrap_or_else(|| "Azure could not be read".into());
            set(row, Status::Failed, format!(
                "the install script succeeded but Azure does not show the machine Connected after {}: {seen}",
                crate::duration::format_duration(opts.verify_timeout)
            ));
        }
    }
}
