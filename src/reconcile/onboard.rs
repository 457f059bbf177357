//! The agent install: sends the plan's batches ([`crate::reconcile::batches`]) through SSM Run Command,
//! each rendered from its own spec, two commands per batch (a key exchange, then the install with the
//! token sealed to the keys it returned), tracks the commands with as few calls as possible (every second
//! for their first [`STEADY_POLL`], then less and less often), and verifies every reported success in
//! Azure.
//!
//! # Guarantees
//! - An instance is in at most one install command per pass, and an instance with an arc-onboard command
//!   still in flight (from any run) is never sent another one (the planner marks it `in-progress`).
//! - The service principal secret never leaves this process. The short-lived Resource Manager token the
//!   install needs is minted only after the batch's key exchange, and leaves this process only sealed to
//!   the instances' ephemeral keys ([`crate::install::seal`]): no command parameter holds it in plain text.
//! - Key exchanges are not journaled: a process that stops between a batch's two commands leaves only
//!   unused private keys behind (removed by a later exchange after a day), and the next pass exchanges
//!   keys anew. The install command is journaled and resumed: it carries everything it needs.
//! - Nothing is sent that a restart could not find again: with a [`Journal`], each install command's
//!   intent (its instances and a comment with a fresh marker) is durable before `SendCommand`; a batch
//!   whose intent cannot be recorded is not sent and its rows fail (`ssm`, [`JOURNAL_FAILED`]). The
//!   command id is recorded after the send; a process stopped in between leaves the intent, by which the
//!   next pass finds the command (`ListCommands`, its comment) and tracks it instead of sending again.
//! - Every instance handed in ends `onboarded`, `already-onboarded` or `failed` with a reason.
//! - Only the plan's batches are sent, each with its planned document and script parameters, to the
//!   planned instances that are ready (a row not ready is left out, never one added); nothing here reads
//!   the configuration.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::BoxFuture;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::install::{self, seal, Delivery, InstallParams, ScriptOutcome, ScriptResult};
use crate::model::{ArcStatus, CommandStatus};
use crate::ports::clock::ClockPort;
use crate::ports::memory::MemoryError;
use crate::ports::progress::ProgressPort;
use crate::ports::{Arm, CommandRequest, CommandSummary, Invocation, MutationToken, Ssm};
use crate::reconcile::batches::{AgentSpec, Document};
use crate::reconcile::observe::InFlightWindow;
use crate::reconcile::outcome::{AccountOutcome, InstanceOutcome};
use crate::reconcile::plan::{AccountPlan, Failure, FailureStep, InstanceAction, Status};

pub use crate::reconcile::batches::BATCH;

/// The key exchange's `executionTimeout`: checks and one RSA key pair take seconds.
pub const KEY_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(300);

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
    /// Where the waits for install commands and for verification in Azure are reported.
    pub progress: ProgressPort,
    /// The pass's clock: the `since` of command listings, the report's timestamps.
    pub clock: ClockPort,
}

impl InstallOptions {
    /// How far back an install command can still be running, read from the pass's clock now.
    pub fn in_flight_window(&self) -> InFlightWindow {
        InFlightWindow::ending_at(
            self.clock.now(),
            self.script_token_validity() + Duration::from_secs(300),
        )
    }

    /// How long the token an install script carries must stay valid: SSM may take the whole delivery
    /// timeout to hand the command over, and the script may run for the whole execution timeout.
    pub fn script_token_validity(&self) -> Duration {
        self.delivery_timeout + self.command_timeout
    }

    /// The `Comment` of one install command: this run's [`InstallOptions::comment`] (a prefix of it) and a
    /// fresh marker, so that a restart finds the command by it when its id was never recorded.
    pub fn install_comment(&self) -> String {
        let mut c = format!(
            "{} install {}",
            self.comment(),
            uuid::Uuid::new_v4().simple()
        );
        c.truncate(100);
        c
    }

    /// The `Comment` of this run's commands.
    pub fn comment(&self) -> String {
        let mut c = format!(
            "{} run {}",
            crate::reconcile::observe::COMMENT_PREFIX,
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
            progress: ProgressPort::default(),
            clock: ClockPort::default(),
        }
    }
}

/// Commands sent by an earlier process: (region, command id, plan rows it targets).
pub type Resumed = (String, String, Vec<usize>);

/// Journals the install commands of a pass in the daemon's durable memory, around `SendCommand`.
pub trait Journal: Sync {
    /// Records that an install command with `comment` is about to be sent to `instance_ids` in `region`;
    /// resolves once the record is durable. An error means the command must not be sent: a restart could
    /// not find it again.
    fn intend<'a>(
        &'a self,
        region: &'a str,
        instance_ids: &'a [String],
        comment: &'a str,
    ) -> BoxFuture<'a, Result<(), MemoryError>>;

    /// Records the id of the command sent after [`Journal::intend`]; resolves once durable. An error leaves
    /// the intent recorded, by which a restart finds the command.
    fn sent<'a>(
        &'a self,
        region: &'a str,
        instance_ids: &'a [String],
        comment: &'a str,
        command_id: &'a str,
    ) -> BoxFuture<'a, Result<(), MemoryError>>;
}

/// The code of a row whose install was not sent because its intent could not be recorded.
pub const JOURNAL_FAILED: &str = "state-write-failed";

/// What to install: rows ready for a new command, commands to resume tracking, and where to note sends.
pub struct InstallWork<'a> {
    /// Rows Online in SSM and not onboarded.
    pub ready: &'a [usize],
    /// Commands sent before (by a process that stopped) to track instead of sending again.
    pub resume: Vec<Resumed>,
    /// Told before each install `SendCommand` (which it can stop) and after it.
    pub journal: Option<&'a dyn Journal>,
}

/// A command in flight and the plan rows it targets.
struct Sent {
    region: String,
    command_id: String,
    rows: Vec<usize>,
}

/// The last few log lines of a script's output (without the result line), for the detail.
fn output_tail(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(install::RESULT_MARKER))
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

/// The interface's step for a script step: the script's prerequisites belong to the step they serve
/// (`platform` to `install`; `imds`, which names the resource, and `check`, the agent's connection state,
/// to `connect`).
fn interface_step(script_step: &str) -> FailureStep {
    match script_step {
        "download" => FailureStep::Download,
        "proxy-config" => FailureStep::ProxyConfig,
        "imds" | "check" | "connect" => FailureStep::Connect,
        _ => FailureStep::Install,
    }
}

/// The failure a script reported in its result line. An exit code is read together with its step: the
/// codes of the installer and the agent get their documented meaning, the script's own codes come with
/// the script's message.
fn script_failure(r: &ScriptResult) -> Failure {
    let foreign = matches!(
        r.code.as_str(),
        "" | "installer-failed" | "agent-config-failed"
    ) || r.code.starts_with("AZCM")
        || r.code.starts_with("exit-");
    // The installers' AZCM codes say more than their exit code, which is 1 whatever failed.
    let meaning = install::installer_reason(&r.code)
        .filter(|_| r.step == "install")
        .or_else(|| install::failure_reason(&r.step, r.exit_code));
    let reason = match meaning {
        Some(meaning) if foreign && !r.message.is_empty() => format!("{meaning} ({})", r.message),
        Some(meaning) if foreign => meaning.to_string(),
        _ if !r.message.is_empty() => r.message.clone(),
        _ => format!("the {} step failed", r.step),
    };
    let code = if r.code.is_empty() {
        format!("exit-{}", r.exit_code)
    } else {
        r.code.clone()
    };
    Failure {
        step: interface_step(&r.step),
        code,
        exit_code: Some(r.exit_code),
        reason,
    }
}

/// The failure of an invocation that did not succeed: the script's own word when its result line is
/// there, SSM's status otherwise.
fn invocation_failure(inv: &Invocation, opts: &InstallOptions) -> Failure {
    if let Some(r) = install::parse_result(&inv.output).filter(|r| !r.succeeded()) {
        return script_failure(&r);
    }
    let exit_code = (inv.response_code >= 0).then_some(inv.response_code);
    let (step, code, reason) = match (&inv.status, inv.status_details.as_str()) {
        (_, "Undeliverable") => (
            FailureStep::Ssm,
            "undeliverable".to_string(),
            "the install command could not be delivered (the instance's SSM agent did not take it)"
                .to_string(),
        ),
        (_, "Delivery Timed Out") => (
            FailureStep::Ssm,
            "delivery-timed-out".to_string(),
            "the install command was not delivered in time".to_string(),
        ),
        (_, "Execution Timed Out") | (CommandStatus::TimedOut, _) => (
            FailureStep::Install,
            "execution-timed-out".to_string(),
            format!(
                "the install did not finish within --command-timeout {}",
                crate::config::duration::format_duration(opts.command_timeout)
            ),
        ),
        (CommandStatus::Cancelled, _) => (
            FailureStep::Ssm,
            "cancelled".to_string(),
            "the install command was cancelled".to_string(),
        ),
        (status, details) => (
            FailureStep::Install,
            exit_code.map_or_else(|| "no-result".to_string(), |c| format!("exit-{c}")),
            format!(
                "the install script ended {} ({details}) without a result line",
                status.as_str()
            ),
        ),
    };
    Failure {
        step,
        code,
        exit_code,
        reason,
    }
}

/// Marks a row failed; its detail adds the tail of the script's output, when there is one.
fn fail_with_output(row: &mut InstanceOutcome, failure: Failure, output: &str) {
    row.fail(failure);
    let tail = output_tail(output);
    if !tail.is_empty() {
        row.detail.push_str(&format!("; output: {tail}"));
    }
}

/// Installs the agent on `ready` rows (Online in SSM, not onboarded), in the plan's batches, and verifies
/// them in Azure.
pub async fn install_agents(
    token: &MutationToken,
    (plan, out): (&AccountPlan, &mut AccountOutcome),
    work: InstallWork<'_>,
    ssm: &impl Ssm,
    arm: &impl Arm,
    opts: &InstallOptions,
) {
    let InstallWork {
        ready,
        resume,
        journal,
    } = work;
    // Every command this call sends goes out after this (a minute's slack for clock skew).
    let since = opts.clock.now() - Duration::from_secs(60);
    let mut sent: Vec<Sent> = resume
        .into_iter()
        .map(|(region, command_id, rows)| {
            for n in &rows {
                let o = &mut out.instances[*n];
                o.detail = format!("resumed tracking install command {command_id}");
                o.command_id = Some(command_id.clone());
            }
            Sent {
                region,
                command_id,
                rows,
            }
        })
        .collect();
    let mut settled = Vec::new();
    if !ready.is_empty() {
        let batches = ready_batches(plan, out, ready);
        let (sent_now, settled_now) =
            send(token, plan, out, batches, ssm, arm, journal, opts).await;
        sent.extend(sent_now);
        settled = settled_now;
    }
    let mut succeeded = if sent.is_empty() {
        Vec::new()
    } else {
        track(token, plan, out, sent, ssm, opts, since).await
    };
    succeeded.extend(settled);
    verify(plan, out, &succeeded, arm, opts).await;
}

/// The plan's batches with their ready rows (by index), in the plan's order; a batch with no ready row
/// is not sent. A ready row the plan put in no batch is not sent either: it fails, saying so.
fn ready_batches<'p>(
    plan: &'p AccountPlan,
    out: &mut AccountOutcome,
    ready: &[usize],
) -> Vec<(&'p crate::reconcile::batches::AgentBatch, Vec<usize>)> {
    let index: HashMap<(&str, &str), usize> = ready
        .iter()
        .map(|n| {
            let row = &plan.instances[*n];
            ((row.region.as_str(), row.instance_id.as_str()), *n)
        })
        .collect();
    let mut batched = HashSet::new();
    let mut batches = Vec::new();
    for batch in &plan.batches {
        let rows: Vec<usize> = batch
            .instance_ids
            .iter()
            .filter_map(|id| index.get(&(batch.region.as_str(), id.as_str())).copied())
            .collect();
        batched.extend(rows.iter().copied());
        if !rows.is_empty() {
            batches.push((batch, rows));
        }
    }
    for n in ready.iter().filter(|n| !batched.contains(*n)) {
        out.instances[*n].fail(Failure::new(
            FailureStep::Connect,
            "not-batched",
            "the plan puts this instance in no install batch (no Azure location or no [azure]); nothing was sent",
        ));
    }
    batches
}

/// A batch's first command: the key exchange, and the plan rows it targets.
struct Exchange<'p> {
    region: String,
    /// The planned spec the batch's scripts are rendered from.
    spec: &'p AgentSpec,
    key_id: String,
    command_id: String,
    rows: Vec<usize>,
}

/// Sends each planned batch (its ready rows), two commands per batch: the key exchange (every batch's at
/// once, then waited for together), then the install carrying the token sealed to the keys that came
/// back. Returns the install commands sent, and the rows the key exchange already settled as connected
/// (to verify). Every batch's token is minted after its key exchange and outlives its delivery and
/// execution timeouts (a cached token is reused only while it does). A batch SSM refuses, or for which no
/// token can be had, fails its rows.
#[allow(clippy::too_many_arguments)]
async fn send(
    token: &MutationToken,
    plan: &AccountPlan,
    out: &mut AccountOutcome,
    batches: Vec<(&crate::reconcile::batches::AgentBatch, Vec<usize>)>,
    ssm: &impl Ssm,
    arm: &impl Arm,
    journal: Option<&dyn Journal>,
    opts: &InstallOptions,
) -> (Vec<Sent>, Vec<(usize, bool)>) {
    let mut exchanges = Vec::new();
    for (batch, rows) in batches {
        let region = &batch.region;
        let spec = &batch.spec;
        let key_id = uuid::Uuid::new_v4().to_string();
        let request = CommandRequest {
            document: spec.document.as_str(),
            instance_ids: rows
                .iter()
                .map(|n| plan.instances[*n].instance_id.clone())
                .collect(),
            script: render(spec, Delivery::KeyExchange { key_id: &key_id }, opts),
            execution_timeout: KEY_EXCHANGE_TIMEOUT,
            delivery_timeout: opts.delivery_timeout,
            comment: opts.comment(),
        };
        match ssm.send_command(token, region, &request).await {
            Ok(command_id) => {
                info!(%region, %command_id, instances = rows.len(), "key exchange sent");
                exchanges.push(Exchange {
                    region: region.clone(),
                    spec,
                    key_id,
                    command_id,
                    rows,
                });
            }
            Err(e) => {
                warn!(%region, error = %e, "key exchange not sent");
                not_sent(out, &rows, &e, "key exchange command");
            }
        }
    }
    let mut settled = Vec::new();
    let keyed = exchange_keys(token, plan, out, exchanges, ssm, opts, &mut settled).await;
    let mut sent = Vec::new();
    let need = opts.script_token_validity();
    let mut warned = false;
    for (exchange, keys) in keyed {
        let Exchange {
            region,
            spec,
            key_id,
            ..
        } = exchange;
        let rows: Vec<usize> = keys.iter().map(|(n, _)| *n).collect();
        let keys: Vec<seal::InstanceKey> = keys.into_iter().map(|(_, k)| k).collect();
        let sealed = match arm.script_token(need).await {
            Ok((access_token, valid_for)) => {
                if valid_for < need && !warned {
                    warned = true;
                    warn!(
                        valid_for = %crate::config::duration::format_duration(valid_for),
                        needed = %crate::config::duration::format_duration(need),
                        "Entra issues tokens shorter than the delivery timeout plus --command-timeout; \
                         an install that reaches `azcmagent connect` after the token expires fails with \
                         AZCM0012 and is retried by a later pass"
                    );
                }
                let config = seal::connect_config(access_token.expose());
                seal::seal(config.as_bytes(), &key_id, &keys)
                    .map_err(|e| format!("cannot seal the access token: {e}"))
            }
            Err(e) => Err(format!(
                "cannot get an Azure access token for the install: {e}"
            )),
        };
        let sealed = match sealed {
            Ok(sealed) => sealed,
            Err(reason) => {
                warn!(%region, error = %reason, "no token for the install command");
                for n in &rows {
                    out.instances[*n].fail(Failure::new(
                        FailureStep::Connect,
                        "azure-token",
                        reason.clone(),
                    ));
                }
                continue;
            }
        };
        let request = CommandRequest {
            document: spec.document.as_str(),
            instance_ids: rows
                .iter()
                .map(|n| plan.instances[*n].instance_id.clone())
                .collect(),
            script: render(spec, Delivery::Sealed(&sealed), opts),
            execution_timeout: opts.command_timeout,
            delivery_timeout: opts.delivery_timeout,
            comment: opts.install_comment(),
        };
        let (ids, comment) = (&request.instance_ids, &request.comment);
        if let Some(journal) = journal {
            if let Err(e) = journal.intend(&region, ids, comment).await {
                let error = crate::error::chain(&e);
                warn!(%region, %error, instances = rows.len(), "install not sent: cannot record it in the state file first");
                for n in &rows {
                    out.instances[*n].fail(Failure::new(
                        FailureStep::Ssm,
                        JOURNAL_FAILED,
                        format!("install command not sent: cannot record it in the state file first ({error})"),
                    ));
                }
                continue;
            }
        }
        match ssm.send_command(token, &region, &request).await {
            Ok(command_id) => {
                info!(%region, %command_id, instances = rows.len(), "install command sent");
                if let Some(journal) = journal {
                    if let Err(e) = journal.sent(&region, ids, comment, &command_id).await {
                        warn!(%region, %command_id, error = %crate::error::chain(&e), "cannot record the sent command's id in the state file; its recorded intent lets a restart find it by its comment");
                    }
                }
                for n in &rows {
                    let o = &mut out.instances[*n];
                    o.detail = format!("install command {command_id} sent");
                    o.command_id = Some(command_id.clone());
                }
                sent.push(Sent {
                    region,
                    command_id,
                    rows,
                });
            }
            Err(e) => {
                warn!(%region, error = %e, "install command not sent");
                not_sent(out, &rows, &e, "install command");
            }
        }
    }
    (sent, settled)
}

/// Fails the rows of a command SSM refused.
fn not_sent(out: &mut AccountOutcome, rows: &[usize], e: &crate::model::AwsError, what: &str) {
    for n in rows {
        out.instances[*n].fail(Failure::new(
            FailureStep::Ssm,
            e.code.clone(),
            format!("{what} not sent: {}", e.message),
        ));
    }
}

/// Waits (bounded) for the key exchanges to end and reads each row's public key. A row the exchange
/// settled (its result line: already connected, connected elsewhere, a failed check) is resolved as an
/// install's result would be; a row without a usable key fails. Returns, per exchange, the rows ready for
/// a token with their keys.
async fn exchange_keys<'p>(
    token: &MutationToken,
    plan: &AccountPlan,
    out: &mut AccountOutcome,
    mut pending: Vec<Exchange<'p>>,
    ssm: &impl Ssm,
    opts: &InstallOptions,
    settled: &mut Vec<(usize, bool)>,
) -> Vec<(Exchange<'p>, Vec<(usize, seal::InstanceKey)>)> {
    let mut poll = Poll::new(
        opts.delivery_timeout + KEY_EXCHANGE_TIMEOUT + Duration::from_secs(60),
        opts.max_poll,
        1.5,
    )
    .steady(STEADY_POLL);
    let since = opts.clock.now() - Duration::from_secs(60);
    let mut done = Vec::new();
    while !pending.is_empty() {
        // One ListCommands per region (this run's comment) for every exchange in it; one call each
        // only for what that list misses.
        let mut listed =
            list_run_commands(ssm, pending.iter().map(|x| x.region.as_str()), since, opts).await;
        let mut still = Vec::new();
        for x in pending {
            let status = command_status(ssm, &mut listed, &x.region, &x.command_id).await;
            let finished = match status {
                Ok(Some(c)) if c.is_done() => {
                    match ssm.command_invocations(&x.region, &x.command_id).await {
                        Ok(list) if !list.is_empty() => Some(list),
                        Ok(_) => None,
                        Err(e) => {
                            warn!(command_id = %x.command_id, error = %e, "cannot list the key exchange's invocations; asking per instance");
                            Some(Vec::new())
                        }
                    }
                }
                Ok(_) => None,
                Err(e) => {
                    warn!(command_id = %x.command_id, error = %e, "cannot read the key exchange's status; will ask again");
                    None
                }
            };
            match finished {
                Some(list) => {
                    let keys = read_keys(plan, out, &x, list, ssm, opts, settled).await;
                    done.push((x, keys));
                }
                None => still.push(x),
            }
        }
        pending = still;
        if pending.is_empty() || !poll.wait().await {
            break;
        }
    }
    for x in pending {
        if let Err(e) = ssm.cancel_command(token, &x.region, &x.command_id).await {
            warn!(command_id = %x.command_id, error = %e, "cannot cancel the key exchange");
        }
        for n in &x.rows {
            out.instances[*n].fail(Failure::new(
                FailureStep::Ssm,
                "key-exchange-timeout",
                format!(
                    "key exchange {} did not finish in time; it was cancelled and no token was sent",
                    x.command_id
                ),
            ));
        }
    }
    done.retain(|(_, keys)| !keys.is_empty());
    done
}

/// This run's commands in `regions`, by id: one ListCommands per region, filtered by this run's comment,
/// whatever the number of commands. A region that cannot be listed is warned; its commands are then asked
/// one by one ([`command_status`]).
async fn list_run_commands<'a>(
    ssm: &impl Ssm,
    regions: impl Iterator<Item = &'a str>,
    since: std::time::SystemTime,
    opts: &InstallOptions,
) -> HashMap<String, CommandSummary> {
    let mut listed = HashMap::new();
    for region in regions.collect::<BTreeSet<_>>() {
        match ssm.recent_commands(region, since, &opts.comment()).await {
            Ok(list) => listed.extend(list.into_iter().map(|c| (c.command_id.clone(), c))),
            Err(e) => {
                warn!(%region, error = %e, "cannot list this run's commands; asking one by one")
            }
        }
    }
    listed
}

/// A command's status: from `listed` when the listing holds it (taken out), else one GetCommand-style
/// call (commands of earlier runs, resumed).
async fn command_status(
    ssm: &impl Ssm,
    listed: &mut HashMap<String, CommandSummary>,
    region: &str,
    command_id: &str,
) -> Result<Option<CommandSummary>, crate::model::AwsError> {
    match listed.remove(command_id) {
        Some(c) => Ok(Some(c)),
        None => ssm.command_status(region, command_id).await,
    }
}

/// One instance's invocation of a command (`what`: "key exchange" or "command", for the words): the one
/// listed, or its detail when none was listed or the listed one needs a closer look (`look_closer`: the
/// listing's output is capped); none at all fails the row (`ssm`, `no-invocation`).
async fn invocation_of(
    ssm: &impl Ssm,
    (region, command_id, what): (&str, &str, &str),
    instance_id: &str,
    listed: Option<Invocation>,
    look_closer: impl Fn(&Invocation) -> bool,
) -> Result<Invocation, Failure> {
    let mut inv = listed;
    if inv.as_ref().is_none_or(&look_closer) {
        match ssm.invocation_detail(region, command_id, instance_id).await {
            Ok(Some(detail)) => inv = Some(detail),
            Ok(None) => {}
            Err(e) => {
                warn!(instance.id = %instance_id, error = %e, "cannot read the {what}'s invocation")
            }
        }
    }
    inv.ok_or_else(|| {
        Failure::new(
            FailureStep::Ssm,
            "no-invocation",
            format!("SSM reports no invocation of {what} {command_id} for this instance"),
        )
    })
}

/// Reads the public keys of one finished key exchange; settles or fails the rows that have none.
async fn read_keys(
    plan: &AccountPlan,
    out: &mut AccountOutcome,
    x: &Exchange<'_>,
    listed: Vec<Invocation>,
    ssm: &impl Ssm,
    opts: &InstallOptions,
    settled: &mut Vec<(usize, bool)>,
) -> Vec<(usize, seal::InstanceKey)> {
    let by_id: HashMap<&str, &Invocation> =
        listed.iter().map(|i| (i.instance_id.as_str(), i)).collect();
    let mut keys = Vec::new();
    for n in &x.rows {
        let id = plan.instances[*n].instance_id.clone();
        // The list's output is capped at 2,500 characters; the key line is the last one.
        let inv = invocation_of(
            ssm,
            (&x.region, &x.command_id, "key exchange"),
            &id,
            by_id.get(id.as_str()).map(|i| (*i).clone()),
            |i| !i.output.contains(seal::KEY_MARKER) && install::parse_result(&i.output).is_none(),
        )
        .await;
        let row = &mut out.instances[*n];
        let inv = match inv {
            Ok(inv) => inv,
            Err(failure) => {
                row.fail(failure);
                continue;
            }
        };
        if inv.status == CommandStatus::Success {
            match seal::parse_key(&inv.output, &id, &x.key_id) {
                Ok(key) => {
                    keys.push((*n, key));
                    continue;
                }
                Err(seal::SealError::NoKey) => {}
                Err(e) => {
                    row.fail(Failure::new(
                        FailureStep::Install,
                        "key-exchange",
                        format!("key exchange {}: {e}; no token was sent", x.command_id),
                    ));
                    continue;
                }
            }
        }
        if install::parse_result(&inv.output).is_some() {
            settle(row, &id, &inv, &x.command_id, opts, *n, settled);
        } else if inv.status == CommandStatus::Success {
            fail_with_output(
                row,
                Failure::new(
                    FailureStep::Install,
                    "key-exchange",
                    format!(
                        "key exchange {} printed no public key; no token was sent",
                        x.command_id
                    ),
                ),
                &inv.output,
            );
        } else {
            let failure = invocation_failure(&inv, opts);
            warn!(instance.id = %id, step = failure.step.as_str(), code = %failure.code, "key exchange failed");
            fail_with_output(row, failure, &inv.output);
        }
    }
    keys
}

/// The script of one planned batch: its spec as planned, the delivery, and the run's correlation id.
fn render(spec: &AgentSpec, delivery: Delivery<'_>, opts: &InstallOptions) -> String {
    let params = InstallParams {
        subscription_id: &spec.subscription_id,
        resource_group: &spec.resource_group,
        location: &spec.azure_location,
        tenant_id: &spec.tenant_id,
        cloud: &spec.cloud,
        correlation_id: &opts.correlation_id,
        tags: &spec.tags,
        delivery,
        proxy_url: spec.proxy_url.as_deref(),
        installer_url: &spec.installer_url,
        installer_sha256: spec.installer_sha256.as_deref(),
        msi_url: spec.msi_url.as_deref().unwrap_or_default(),
        msi_sha256: spec.msi_sha256.as_deref(),
        gateway_id: spec.gateway_id.as_deref(),
        private_link_scope: spec.private_link_scope.as_deref(),
        automatic_upgrade: spec.automatic_upgrade,
        reconnect: spec.reconnect,
    };
    match spec.document {
        Document::PowerShell => install::render_windows(&params),
        Document::Shell => install::render_linux(&params),
    }
}

/// Polls the commands until they end or the bound passes; resolves each row. Returns the rows whose script
/// reported success, with whether the agent was already connected.
async fn track(
    token: &MutationToken,
    plan: &AccountPlan,
    out: &mut AccountOutcome,
    mut pending: Vec<Sent>,
    ssm: &impl Ssm,
    opts: &InstallOptions,
    since: std::time::SystemTime,
) -> Vec<(usize, bool)> {
    let mut poll = Poll::new(
        opts.script_token_validity() + Duration::from_secs(60),
        opts.max_poll,
        1.5,
    )
    .steady(STEADY_POLL);
    let mut succeeded = Vec::new();
    let total = pending.len();
    let progress = opts.progress.begin(
        "install commands",
        Some(opts.script_token_validity() + Duration::from_secs(60)),
    );
    while !pending.is_empty() {
        progress.update(&format!(
            "{} of {total} commands finished",
            total - pending.len()
        ));
        // Command-level status first. This run's commands: one ListCommands per region (filtered by
        // this run's comment), whatever the number of commands; others (resumed): one call each.
        let mut listed =
            list_run_commands(ssm, pending.iter().map(|s| s.region.as_str()), since, opts).await;
        let mut still = Vec::new();
        for s in pending {
            let status = command_status(ssm, &mut listed, &s.region, &s.command_id).await;
            match status {
                Ok(Some(c)) if c.is_done() => {
                    // Right after a command ends SSM may not list its invocations yet: ask again later.
                    if !resolve(plan, out, &s, ssm, opts, &mut succeeded).await {
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
        if !poll.wait().await {
            if crate::reconcile::interrupt::requested() {
                // Interrupted: the commands go on running on the instances; a later run sees them in SSM.
                for s in &pending {
                    for n in &s.rows {
                        let row = &mut out.instances[*n];
                        row.status = Status::InProgress;
                        row.command_id = Some(s.command_id.clone());
                        row.detail = format!(
                            "install command {} was still running when the run was interrupted; not cancelled, a later run tracks it",
                            s.command_id
                        );
                    }
                }
                break;
            }
            for s in &pending {
                if let Err(e) = ssm.cancel_command(token, &s.region, &s.command_id).await {
                    warn!(command_id = %s.command_id, error = %e, "cannot cancel the command");
                }
                for n in &s.rows {
                    out.instances[*n].fail(Failure::new(
                        FailureStep::Ssm,
                        "command-timeout",
                        format!(
                            "install command {} did not finish in time; it was cancelled",
                            s.command_id
                        ),
                    ));
                }
            }
            break;
        }
    }
    succeeded
}

/// How long the key exchanges and the install commands are polled every second before the pauses
/// grow: most end within seconds (an install that finds the agent in place, or a small one), and a
/// growing pause would find them ended up to half their run late. It costs at most ten rounds (one
/// `ListCommands` per region each) per call of [`install_agents`].
pub const STEADY_POLL: Duration = Duration::from_secs(10);

/// The poll loop of tracking and verification: pauses of 1 s during the steady phase (if any), then
/// growing from 1 s by `factor` up to `max_pause`; no pause runs past the deadline.
struct Poll {
    deadline: Instant,
    max_pause: Duration,
    steady_until: Instant,
    pauses: backon::ExponentialBackoff,
}

impl Poll {
    fn new(bound: Duration, max_pause: Duration, factor: f32) -> Poll {
        let now = Instant::now();
        Poll {
            deadline: now + bound,
            max_pause,
            steady_until: now,
            pauses: ExponentialBuilder::default()
                .with_min_delay(Duration::from_secs(1))
                .with_max_delay(max_pause)
                .with_factor(factor)
                .without_max_times()
                .build(),
        }
    }

    /// Pauses of 1 s for the first `steady` of the poll, before they grow.
    fn steady(mut self, steady: Duration) -> Poll {
        self.steady_until = Instant::now() + steady;
        self
    }

    /// Waits before the next round; `false`, at once, when the deadline has passed or the pass was
    /// interrupted (see [`crate::reconcile::interrupt`]).
    async fn wait(&mut self) -> bool {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || crate::reconcile::interrupt::requested() {
            return false;
        }
        let pause = if Instant::now() < self.steady_until {
            Duration::from_secs(1)
        } else {
            self.pauses.next().unwrap_or(self.max_pause)
        };
        crate::reconcile::interrupt::sleep(pause.min(left)).await;
        !crate::reconcile::interrupt::requested()
    }
}

/// Reads the invocations of a finished command (one paged call) and resolves its rows. Returns false,
/// resolving nothing, when SSM lists no invocation yet.
async fn resolve(
    plan: &AccountPlan,
    out: &mut AccountOutcome,
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
        // The list's output is capped at 2,500 characters; the result line is the last one, so look closer
        // when it is missing.
        let inv = invocation_of(
            ssm,
            (&s.region, &s.command_id, "command"),
            &id,
            by_id.get(id.as_str()).map(|i| (*i).clone()),
            |i| i.is_done() && install::parse_result(&i.output).is_none(),
        )
        .await;
        let row = &mut out.instances[*n];
        let inv = match inv {
            Ok(inv) => inv,
            Err(failure) => {
                row.fail(failure);
                continue;
            }
        };
        settle(row, &id, &inv, &s.command_id, opts, *n, succeeded);
    }
    true
}

/// Resolves one row from its invocation of `command_id` (an install, or a key exchange that printed a
/// result line): connected elsewhere, succeeded (pushed to `succeeded` with whether the agent was already
/// connected), or failed.
fn settle(
    row: &mut InstanceOutcome,
    id: &str,
    inv: &Invocation,
    command_id: &str,
    opts: &InstallOptions,
    n: usize,
    succeeded: &mut Vec<(usize, bool)>,
) {
    let result = install::parse_result(&inv.output);
    match (&inv.status, result) {
        (CommandStatus::Success, Some(r)) if r.outcome == ScriptOutcome::ConnectedElsewhere => {
            row.status = Status::ConnectedElsewhere;
            row.arc_resource_id = Some(r.resource_id).filter(|id| !id.is_empty());
            row.detail = format!("{}; never disconnected by arc-onboard", r.message);
            info!(instance.id = %id, arc_resource_id = ?row.arc_resource_id, "agent connected elsewhere; left alone");
        }
        (CommandStatus::Success, r) if r.as_ref().is_none_or(ScriptResult::succeeded) => {
            let already = r
                .as_ref()
                .is_some_and(|r| r.outcome == ScriptOutcome::AlreadyConnected);
            row.arc_resource_id = r
                .map(|r| r.resource_id)
                .filter(|id| already && !id.is_empty());
            row.detail = format!("command {command_id} succeeded");
            succeeded.push((n, already));
        }
        _ => {
            let failure = invocation_failure(inv, opts);
            warn!(instance.id = %id, step = failure.step.as_str(), code = %failure.code, reason = %failure.reason, "install failed");
            fail_with_output(row, failure, &inv.output);
        }
    }
}

/// Waits (bounded) for Azure to show each succeeded instance `Connected`, listing the group once a round.
async fn verify(
    plan: &AccountPlan,
    out: &mut AccountOutcome,
    succeeded: &[(usize, bool)],
    arm: &impl Arm,
    opts: &InstallOptions,
) {
    // Every batch of the account shares the plan's resource group.
    let (false, Some(rg)) = (succeeded.is_empty(), plan.resource_group.as_deref()) else {
        return;
    };
    let mut poll = Poll::new(opts.verify_timeout, opts.max_poll, 2.0);
    let mut waiting: HashSet<usize> = succeeded.iter().map(|(n, _)| *n).collect();
    let already: HashSet<usize> = succeeded
        .iter()
        .filter(|(_, a)| *a)
        .map(|(n, _)| *n)
        .collect();
    let mut last_seen: HashMap<usize, (String, String)> = HashMap::new();
    let progress = opts
        .progress
        .begin("verifying in Azure", Some(opts.verify_timeout));
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
                    let id = plan.instances[n].instance_id.as_str();
                    let row = &mut out.instances[n];
                    match by_name.get(id) {
                        Some(m) if m.status == ArcStatus::Connected => {
                            let status = if already.contains(&n) {
                                Status::AlreadyOnboarded
                            } else {
                                Status::Onboarded
                            };
                            let reconnected = plan.instances[n]
                                .actions
                                .contains(&InstanceAction::ReconnectAgent);
                            let how = if already.contains(&n) {
                                "agent was already connected"
                            } else if reconnected {
                                "agent reconnected (disconnected locally, connected anew)"
                            } else {
                                "agent installed and connected"
                            };
                            row.status = status;
                            row.detail = format!("{how}; Arc machine {rg}/{} is Connected", m.name);
                            row.agent_version = m.agent_version.clone();
                            waiting.remove(&n);
                        }
                        Some(m) => {
                            let errors = if m.errors.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", m.errors.join("; "))
                            };
                            last_seen.insert(
                                n,
                                (
                                    format!("arc-{}", m.status.as_str().to_ascii_lowercase()),
                                    format!("Arc machine is {}{errors}", m.status.as_str()),
                                ),
                            );
                        }
                        None => {
                            last_seen.insert(
                                n,
                                (
                                    "arc-machine-missing".into(),
                                    format!("no Arc machine {rg}/{id}"),
                                ),
                            );
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot list Arc machines; will ask again"),
        }
        if waiting.is_empty() || !poll.wait().await {
            break;
        }
    }
    if crate::reconcile::interrupt::requested() {
        for n in waiting {
            let row = &mut out.instances[n];
            row.status = Status::InProgress;
            row.detail = "the install script succeeded; the run was interrupted before Azure showed the machine Connected".into();
        }
        return;
    }
    for n in waiting {
        let (code, seen) = last_seen
            .remove(&n)
            .unwrap_or_else(|| ("azure-unreadable".into(), "Azure could not be read".into()));
        let what = if already.contains(&n) {
            "the agent says it is connected to this resource"
        } else {
            "the install script succeeded"
        };
        out.instances[n].fail(Failure::new(
            FailureStep::Verify,
            code,
            format!(
                "{what} but Azure does not show the machine Connected after {}: {seen}",
                crate::config::duration::format_duration(opts.verify_timeout)
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(step: &str, code: &str, exit_code: i32, message: &str) -> ScriptResult {
        ScriptResult {
            outcome: ScriptOutcome::Failed,
            exit_code,
            step: step.into(),
            code: code.into(),
            message: message.into(),
            resource_id: String::new(),
        }
    }

    fn invocation(status: &str, details: &str, code: i32, output: &str) -> Invocation {
        Invocation {
            instance_id: "i-1".into(),
            status: CommandStatus::parse(status),
            status_details: details.into(),
            response_code: code,
            output: output.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_poll_pauses_grow_to_the_cap_and_never_pass_the_deadline() {
        let start = Instant::now();
        let mut poll = Poll::new(Duration::from_secs(10), Duration::from_secs(4), 2.0);
        let mut waited = Vec::new();
        while poll.wait().await {
            waited.push((Instant::now() - start).as_secs());
        }
        // 1, 2, 4, then 3 (capped by the deadline); then the deadline has passed.
        assert_eq!(waited, [1, 3, 7, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_poll_asks_every_second_before_the_pauses_grow() {
        let start = Instant::now();
        let mut poll = Poll::new(Duration::from_secs(20), Duration::from_secs(8), 2.0)
            .steady(Duration::from_secs(4));
        let mut waited = Vec::new();
        while poll.wait().await {
            waited.push((Instant::now() - start).as_secs());
        }
        // Every second for 4 s, then 1, 2, 4, 8 capped by the deadline.
        assert_eq!(waited, [1, 2, 3, 4, 5, 7, 11, 19, 20]);
    }

    #[test]
    fn an_exit_code_is_read_with_the_step_that_produced_it() {
        // 4: the agent's "cannot open its log file" in connect, the script's download failure in download.
        let connect = script_failure(&result(
            "connect",
            "exit-4",
            4,
            "azcmagent connect exited with 4",
        ));
        assert_eq!(
            (connect.step, connect.code.as_str(), connect.exit_code),
            (FailureStep::Connect, "exit-4", Some(4))
        );
        assert!(connect.reason.contains("log file"), "{}", connect.reason);
        assert!(!connect.reason.contains("download"), "{}", connect.reason);
        let download = script_failure(&result(
            "download",
            "download-failed",
            4,
            "cannot download the agent installer from https://x",
        ));
        assert_eq!(download.step, FailureStep::Download);
        assert_eq!(
            download.reason,
            "cannot download the agent installer from https://x"
        );
        // 5 and 6 likewise.
        let init = script_failure(&result("connect", "exit-5", 5, "m"));
        assert!(
            init.reason.contains("failed to initialise"),
            "{}",
            init.reason
        );
        let platform = script_failure(&result(
            "platform",
            "unsupported-platform",
            6,
            "systemd is not running",
        ));
        assert_eq!(
            (platform.step, platform.reason.as_str()),
            (FailureStep::Install, "systemd is not running")
        );
        // 3: the agent's proxy service in proxy-config, IMDS in imds.
        let proxy = script_failure(&result(
            "proxy-config",
            "agent-config-failed",
            3,
            "azcmagent config set proxy.url exited with 3",
        ));
        assert_eq!(proxy.step, FailureStep::ProxyConfig);
        assert!(
            proxy.reason.contains("proxy service is not running"),
            "{}",
            proxy.reason
        );
        let imds = script_failure(&result(
            "imds",
            "imds-unavailable",
            3,
            "cannot get an IMDSv2 token",
        ));
        assert_eq!(
            (imds.step, imds.reason.as_str()),
            (FailureStep::Connect, "cannot get an IMDSv2 token")
        );
    }

    #[test]
    fn installer_codes_and_azcm_codes_get_their_documented_meaning() {
        let installer = script_failure(&result(
            "install",
            "installer-failed",
            130,
            "the agent installer exited with 130",
        ));
        assert_eq!(
            (installer.step, installer.exit_code),
            (FailureStep::Install, Some(130))
        );
        assert!(
            installer.reason.contains("its own codes"),
            "{}",
            installer.reason
        );
        let azcm = script_failure(&result(
            "connect",
            "AZCM0041",
            41,
            "azcmagent connect exited with 41: AZCM0041: invalid",
        ));
        assert_eq!(azcm.code, "AZCM0041");
        assert!(
            azcm.reason
                .starts_with("the credentials were rejected (azcmagent connect exited with 41"),
            "{}",
            azcm.reason
        );
        let state = script_failure(&result(
            "check",
            "agent-expired",
            install::EXIT_AGENT_STATE,
            "the agent is Expired from /subscriptions/x",
        ));
        assert_eq!(
            (state.step, state.code.as_str()),
            (FailureStep::Connect, "agent-expired")
        );
        assert!(state.reason.contains("Expired"));
    }

    #[test]
    fn installer_azcm_codes_and_reboot_codes_are_explained() {
        // Microsoft's installers exit 1 whatever failed; the AZCM code from their result file says what.
        let installer = script_failure(&result(
            "install",
            "AZCM0143",
            1,
            "the agent installer exited with 1: AZCM0143: error installing azcmagent",
        ));
        assert_eq!(
            (installer.code.as_str(), installer.exit_code),
            ("AZCM0143", Some(1))
        );
        assert!(
            installer.reason.starts_with(
                "the package manager failed to install the agent package (the agent installer exited with 1: AZCM0143"
            ),
            "{}",
            installer.reason
        );
        // A code SSM would have rebooted for keeps its number in the report, with what happened.
        for (step, code) in [
            ("connect", 194),
            ("install", 194),
            ("install", 3010),
            ("connect", 1641),
        ] {
            let f = script_failure(&result(step, &format!("exit-{code}"), code, "m"));
            assert_eq!(f.exit_code, Some(code));
            assert!(f.reason.contains("reboot and run again"), "{}", f.reason);
        }
    }

    #[test]
    fn without_a_result_line_ssm_says_what_happened() {
        let opts = InstallOptions::default();
        let cases = [
            (
                invocation("Failed", "Undeliverable", -1, ""),
                FailureStep::Ssm,
                "undeliverable",
                None,
            ),
            (
                invocation("TimedOut", "Delivery Timed Out", -1, ""),
                FailureStep::Ssm,
                "delivery-timed-out",
                None,
            ),
            (
                invocation("TimedOut", "Execution Timed Out", -1, "half"),
                FailureStep::Install,
                "execution-timed-out",
                None,
            ),
            (
                invocation("Cancelled", "Cancelled", -1, ""),
                FailureStep::Ssm,
                "cancelled",
                None,
            ),
            (
                invocation("Failed", "Failed", 2, "bash: oops"),
                FailureStep::Install,
                "exit-2",
                Some(2),
            ),
        ];
        for (inv, step, code, exit_code) in cases {
            let f = invocation_failure(&inv, &opts);
            assert_eq!(
                (f.step, f.code.as_str(), f.exit_code),
                (step, code, exit_code),
                "{inv:?}"
            );
            assert!(!f.reason.is_empty());
        }
        // With a result line, the script's word wins over SSM's status.
        let with_line = invocation(
            "Failed",
            "Failed",
            4,
            "ARC_ONBOARD_RESULT {\"outcome\":\"failed\",\"exit_code\":4,\"step\":\"download\",\"code\":\"checksum-mismatch\",\"message\":\"the installer's SHA-256 is x\"}",
        );
        let f = invocation_failure(&with_line, &opts);
        assert_eq!(
            (f.step, f.code.as_str()),
            (FailureStep::Download, "checksum-mismatch")
        );
    }

    #[test]
    fn failed_rows_carry_the_failure_and_a_detail_rendered_from_it() {
        let mut row = InstanceOutcome::new(Status::Planned, "");
        let f = script_failure(&result("connect", "AZCM0041", 41, "exited with 41"));
        fail_with_output(&mut row, f.clone(), "log line\nARC_ONBOARD_RESULT {}");
        assert_eq!(row.status, Status::Failed);
        assert_eq!(row.failure.as_ref(), Some(&f));
        assert!(
            row.detail.starts_with(
                "connect failed (AZCM0041, exit code 41): the credentials were rejected"
            ),
            "{}",
            row.detail
        );
        assert!(row.detail.ends_with("; output: log line"), "{}", row.detail);
    }
}
