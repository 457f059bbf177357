//! One pass of observe -> plan -> apply over one account, the same code for `plan`, `run` and (later) each
//! daemon tick. Without a mutation token the pass stops after planning.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{info, info_span, warn, Instrument};

use crate::config::Config;
use crate::model::{AwsError, AzureError};
use crate::ports::memory::{unix, DeletionRecord, InstanceRecord, Memory as Store, MemoryError};
use crate::ports::{ApiCounter, Arm, Ec2, Iam, MutationToken, Ssm, Sts};
use crate::reconcile::apply::{apply_iam, settle_after_iam, ApplyOptions};
use crate::reconcile::observe::{
    observe_account, observe_arc, observe_elsewhere, resolve_regions, ArcObservation,
    ArcUnavailable,
};
use crate::reconcile::onboard::{install_agents, InstallOptions, InstallWork, Journal};
use crate::reconcile::outcome::AccountOutcome;
use crate::reconcile::plan::{
    plan_account, AccountPlan, Failure, FailureStep, Memory, Remembered, RetryPolicy, Status,
};
use crate::reconcile::report::{Mode, Report};
use futures::future::BoxFuture;

/// A failure before any instance could be handled.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// STS did not answer: usually no or expired credentials.
    #[error("cannot identify the AWS account (check credentials, AWS_PROFILE and AWS_REGION)")]
    Account(#[source] AwsError),
    /// `all_regions = true` and `DescribeRegions` failed.
    #[error("cannot list the regions enabled for the account")]
    Regions(#[source] AwsError),
    /// `run` needs Azure and could not get a token; nothing was changed.
    #[error("cannot get an Azure Resource Manager token; nothing was changed")]
    Azure(#[source] AzureError),
    /// `run` needs the `[azure]` section and a credential.
    #[error("run needs the [azure] section and its credential (with the default credential = \"client-secret\": ARC_ONBOARD_CLIENT_SECRET); nothing was changed")]
    AzureMissing,
}

/// The AWS ports of one account.
pub struct AwsPorts<'a, T, E, I, S> {
    /// STS.
    pub sts: &'a T,
    /// EC2.
    pub ec2: &'a E,
    /// IAM.
    pub iam: &'a I,
    /// SSM.
    pub ssm: &'a S,
    /// Counts of the calls these ports (and the Azure port) made.
    pub counter: &'a ApiCounter,
}

/// Bounds of a pass.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    /// IAM and SSM registration.
    pub apply: ApplyOptions,
    /// Agent install and verification.
    pub install: InstallOptions,
    /// What a mutating pass does.
    pub scope: Scope,
    /// `run --plan`: the saved plan the pass's plan is restricted to (nothing beyond it is executed).
    pub saved: Option<std::sync::Arc<crate::reconcile::saved::SavedPlan>>,
    /// The daemon's leases: the pass holds its account's regions exclusively from observing to its end.
    pub leases: Option<std::sync::Arc<crate::reconcile::leases::Leases>>,
}

pub use crate::reconcile::plan::Scope;

/// The daemon's durable memory and its retry policy.
pub struct Durable<'a> {
    /// The memory (the state file).
    pub memory: &'a dyn Store,
    /// First retry delay after a failed install; doubles per failure.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl Durable<'_> {
    /// The backoff the planner gives failed installs.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            base: self.retry_base,
            max: self.retry_max,
        }
    }
}

/// Everything `execute` needs besides the plan and the AWS ports.
struct Exec<'a, A> {
    token: &'a MutationToken,
    arm: &'a A,
    opts: &'a PassOptions,
    durable: Option<&'a Durable<'a>>,
    /// The regions this pass looked at (those that failed are in the plan's `region_errors`).
    regions: &'a [String],
    /// The state file's records of this account, read before planning.
    records: &'a HashMap<(String, String), InstanceRecord>,
    /// The pass's clock.
    now: SystemTime,
}

/// Executes a plan, which it never changes: resource group, IAM, SSM registration wait, agent install,
/// verification; with durable state, tracks the commands the planner marked for resuming and records every
/// outcome. Returns what happened, beside the plan.
async fn execute<T: Sts, E: Ec2, I: Iam, S: Ssm, A: Arm>(
    ctx: &Exec<'_, A>,
    plan: &AccountPlan,
    ports: &AwsPorts<'_, T, E, I, S>,
) -> AccountOutcome {
    let mut out = AccountOutcome::start(plan);
    execute_until_interrupted(ctx, plan, ports, &mut out).await;
    if crate::reconcile::interrupt::requested() {
        for o in out.instances.iter_mut().filter(|o| o.pending()) {
            o.detail = format!(
                "not done: the run was interrupted before this instance was handled (planned: {})",
                o.detail
            );
        }
    }
    out
}

/// The steps of [`execute`]; none starts once the pass is interrupted (see
/// [`crate::reconcile::interrupt`]).
async fn execute_until_interrupted<T: Sts, E: Ec2, I: Iam, S: Ssm, A: Arm>(
    ctx: &Exec<'_, A>,
    plan: &AccountPlan,
    ports: &AwsPorts<'_, T, E, I, S>,
    out: &mut AccountOutcome,
) {
    use crate::reconcile::interrupt::requested;
    if requested() {
        return;
    }
    crate::reconcile::lifecycle::delete_gone(ctx.token, plan, out, ctx.arm).await;
    if let Some(d) = ctx.durable {
        record_deletions(d, plan, out, ctx.regions).await;
    }
    if plan.create_resource_group {
        let note = create_resource_group(ctx.token, plan, out, ctx.arm).await;
        out.notes.push(note);
    }
    if requested() {
        return;
    }
    if let Some(d) = apply_iam(ctx.token, plan, out, ports.ec2, ports.iam, &ctx.opts.apply).await {
        out.notes.push(d);
    }
    if !ctx.opts.scope.install {
        // The IAM pass: its plan holds no install and no resume, and gave every row the status it ends
        // with once its IAM changes are made; it records nothing in the state file.
        return;
    }
    let mut ready = settle_after_iam(plan, out, ports.ssm, &ctx.opts.apply).await;
    if requested() {
        return;
    }
    let now = ctx.now;
    let records = ctx.records;
    // Commands this daemon sent before it stopped (the planner marked them): track them, never send again.
    let mut resume: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (n, row) in plan.instances.iter().enumerate() {
        if let (true, Some(command)) = (row.resume, &row.command_id) {
            resume
                .entry((row.region.clone(), command.clone()))
                .or_default()
                .push(n);
        }
    }
    let resumed: HashSet<usize> = resume.values().flatten().copied().collect();
    ready.retain(|n| !resumed.contains(n));
    let attempted: HashSet<usize> = ready.iter().chain(resumed.iter()).copied().collect();
    let journal = ctx.durable.map(|d| StateJournal {
        memory: d.memory,
        account_id: &plan.account_id,
        records,
        now,
    });
    let work = InstallWork {
        ready: &ready,
        resume: resume
            .into_iter()
            .map(|((region, command), rows)| (region, command, rows))
            .collect(),
        journal: journal.as_ref().map(|j| j as &dyn Journal),
    };
    install_agents(
        ctx.token,
        (plan, &mut *out),
        work,
        ports.ssm,
        ctx.arm,
        &ctx.opts.install,
    )
    .await;
    if let Some(d) = ctx.durable {
        record_outcomes(d, plan, out, records, &attempted, now).await;
        forget_unseen(d, plan, ctx.regions).await;
    }
}

/// Removes from the state file the instances of this account that the pass no longer sees (terminated,
/// untagged, out of scope) in the regions it observed; a region that failed to observe keeps its records.
async fn forget_unseen(d: &Durable<'_>, plan: &AccountPlan, regions: &[String]) {
    let failed: HashSet<&str> = plan
        .region_errors
        .iter()
        .map(|e| e.region.as_str())
        .collect();
    let mut seen: BTreeMap<String, BTreeSet<String>> = regions
        .iter()
        .filter(|r| !failed.contains(r.as_str()))
        .map(|r| (r.clone(), BTreeSet::new()))
        .collect();
    for row in &plan.instances {
        if let Some(ids) = seen.get_mut(&row.region) {
            ids.insert(row.instance_id.clone());
        }
    }
    match d.memory.forget_unseen(&plan.account_id, seen).await {
        Ok(removed) if removed.is_empty() => {}
        Ok(removed) => {
            let ids: Vec<String> = removed
                .iter()
                .map(|(region, id)| format!("{region}/{id}"))
                .collect();
            info!(
                removed = removed.len(),
                instances = %ids.join(", "),
                "removed from the state file: no longer seen (terminated, untagged or out of scope)"
            );
        }
        Err(e) => {
            warn!(error = %crate::error::chain(&e), "cannot remove instances no longer seen from the state file")
        }
    }
}

/// Remembers in the state file when each gone instance's termination was first seen (its grace counts from
/// then, across restarts) and forgets the deletions done. `regions`: the regions this pass saw whole (those
/// observed without error lose their other records); empty for the event path, which sees a few instances.
async fn record_deletions(
    d: &Durable<'_>,
    plan: &AccountPlan,
    out: &AccountOutcome,
    regions: &[String],
) {
    let failed: HashSet<&str> = plan
        .region_errors
        .iter()
        .map(|e| e.region.as_str())
        .collect();
    let wipe: Vec<String> = regions
        .iter()
        .filter(|r| !failed.contains(r.as_str()))
        .cloned()
        .collect();
    let mut done = Vec::new();
    let mut pending = Vec::new();
    for (row, o) in plan.instances.iter().zip(&out.instances) {
        let Some(t) = &row.termination else { continue };
        if o.status == Status::Offboarded {
            done.push((row.region.clone(), row.instance_id.clone()));
        } else {
            pending.push(DeletionRecord {
                account_id: plan.account_id.clone(),
                region: row.region.clone(),
                instance_id: row.instance_id.clone(),
                resource_group: t.resource_group.clone(),
                machine: t.machine.clone(),
                first_seen_at: t.first_seen_unix,
                delete_at: t.delete_at_unix,
            });
        }
    }
    if wipe.is_empty() && done.is_empty() && pending.is_empty() {
        return;
    }
    if let Err(e) = d
        .memory
        .record_deletions(&plan.account_id, wipe, done, pending)
        .await
    {
        warn!(error = %crate::error::chain(&e), "cannot record the pending deletions in the state file");
    }
}

/// When each gone instance's termination was first seen, as the state file remembers it.
async fn load_terminations(
    d: &Durable<'_>,
    account_id: &str,
) -> HashMap<(String, String), SystemTime> {
    match d.memory.deletions_of_account(account_id).await {
        Ok(records) => records
            .into_iter()
            .map(|r| {
                let at = UNIX_EPOCH + Duration::from_secs(r.first_seen_at.max(0) as u64);
                ((r.region, r.instance_id), at)
            })
            .collect(),
        Err(e) => {
            warn!(error = %crate::error::chain(&e), "cannot read the pending deletions from the state file");
            HashMap::new()
        }
    }
}

/// The state file's records of one account, by (region, instance id); none when it cannot be read.
async fn load_records(
    d: &Durable<'_>,
    account_id: &str,
) -> HashMap<(String, String), InstanceRecord> {
    match d.memory.of_account(account_id).await {
        Ok(records) => records
            .into_iter()
            .map(|r| ((r.region.clone(), r.instance_id.clone()), r))
            .collect(),
        Err(e) => {
            warn!(error = %crate::error::chain(&e), "cannot read the state file; no retry backoff or resume this pass");
            HashMap::new()
        }
    }
}

/// What the planner reads of the daemon's memory of one account, and the records behind it: the records
/// (their intents resolved, [`resolve_intents`]), the pending deletions, the retry policy.
async fn recall(
    d: &Durable<'_>,
    account_id: &str,
    ssm: &impl Ssm,
    now: SystemTime,
) -> (HashMap<(String, String), InstanceRecord>, Memory) {
    let mut records = load_records(d, account_id).await;
    let unresolved = resolve_intents(ssm, &mut records).await;
    let mut memory = memory_of(&records, &unresolved, now);
    memory.terminations = load_terminations(d, account_id).await;
    memory.retry = Some(d.retry());
    (records, memory)
}

/// Resolves the recorded intents without a command id (a process stopped between recording an install
/// and recording its command id): one `ListCommands` per (region, comment) since the intent was recorded.
/// A command found for the instance is its command (the planner then tracks it, never sends again);
/// none found means the send never happened, and the intent is dropped. Returns the intents SSM could
/// not be asked about, with why: those instances are held this pass.
async fn resolve_intents(
    ssm: &impl Ssm,
    records: &mut HashMap<(String, String), InstanceRecord>,
) -> HashMap<(String, String), Failure> {
    let mut asks: BTreeMap<(String, String), i64> = BTreeMap::new();
    for r in records.values() {
        if let (None, Some(comment)) = (&r.command_id, &r.intent) {
            let at = r.command_sent_at.unwrap_or(0);
            let since = asks
                .entry((r.region.clone(), comment.clone()))
                .or_insert(at);
            *since = (*since).min(at);
        }
    }
    let mut unresolved = HashMap::new();
    for ((region, comment), at) in asks {
        let since = UNIX_EPOCH + Duration::from_secs((at - 60).max(0) as u64);
        let found = ssm.recent_commands(&region, since, &comment).await;
        for r in records.values_mut().filter(|r| {
            r.region == region && r.command_id.is_none() && r.intent.as_ref() == Some(&comment)
        }) {
            match &found {
                Ok(list) => {
                    let command = list
                        .iter()
                        .find(|c| c.instance_ids.contains(&r.instance_id));
                    match command {
                        Some(c) => {
                            info!(instance.id = %r.instance_id, %region, command_id = %c.command_id, "found the install command recorded only as an intent; tracking it");
                            r.command_id = Some(c.command_id.clone());
                        }
                        None => {
                            info!(instance.id = %r.instance_id, %region, "an install recorded as an intent was never sent");
                            r.intent = None;
                        }
                    }
                }
                Err(e) => {
                    warn!(instance.id = %r.instance_id, %region, error = %e, "cannot look up an install recorded as an intent; not installing this pass");
                    let failure = Failure::new(
                        FailureStep::Ssm,
                        "intent-unresolved",
                        format!("an install command may have been sent by a process that stopped before recording its id, and SSM could not be asked for it ({}); not sent again until it can be", e.message),
                    );
                    unresolved.insert((r.region.clone(), r.instance_id.clone()), failure);
                }
            }
        }
    }
    unresolved
}

/// The planner's view of the records; an instance in `held` is held this pass with that failure.
fn memory_of(
    records: &HashMap<(String, String), InstanceRecord>,
    held: &HashMap<(String, String), Failure>,
    now: SystemTime,
) -> Memory {
    let instances = records
        .iter()
        .map(|(key, r)| {
            let mut remembered = Remembered {
                attempts: r.attempts,
                last_failure: r.last_error.clone(),
                next_attempt_at: r
                    .next_attempt_at
                    .map(|t| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)),
                command_id: r.command_id.clone(),
            };
            if let Some(failure) = held.get(key) {
                remembered.last_failure = Some(failure.clone());
                remembered.next_attempt_at = Some(now + Duration::from_secs(1));
            }
            (key.clone(), remembered)
        })
        .collect();
    Memory {
        instances,
        now,
        terminations: HashMap::new(),
        retry: None,
    }
}

/// The [`Journal`] over the daemon's memory: the rows of one account's install commands, keeping what the
/// memory held of each instance before the pass.
struct StateJournal<'a> {
    memory: &'a dyn Store,
    account_id: &'a str,
    /// The records read before planning.
    records: &'a HashMap<(String, String), InstanceRecord>,
    now: SystemTime,
}

impl StateJournal<'_> {
    /// The `in-progress` records of `ids`: the intent (`comment`), and the command id once sent.
    fn rows(
        &self,
        region: &str,
        ids: &[String],
        comment: &str,
        command_id: Option<&str>,
    ) -> Vec<InstanceRecord> {
        let detail = match command_id {
            Some(id) => format!("install command {id} sent"),
            None => format!("install command about to be sent (comment {comment})"),
        };
        ids.iter()
            .map(|id| {
                let prev = self.records.get(&(region.to_string(), id.clone()));
                InstanceRecord {
                    account_id: self.account_id.to_string(),
                    region: region.to_string(),
                    instance_id: id.clone(),
                    status: Status::InProgress,
                    detail: detail.clone(),
                    command_id: command_id.map(str::to_string),
                    command_sent_at: Some(unix(self.now)),
                    attempts: prev.map_or(0, |p| p.attempts),
                    last_error: prev.and_then(|p| p.last_error.clone()),
                    next_attempt_at: None,
                    last_seen_at: unix(self.now),
                    intent: Some(comment.to_string()),
                }
            })
            .collect()
    }
}

impl Journal for StateJournal<'_> {
    fn intend<'a>(
        &'a self,
        region: &'a str,
        instance_ids: &'a [String],
        comment: &'a str,
    ) -> BoxFuture<'a, Result<(), MemoryError>> {
        self.memory
            .put(self.rows(region, instance_ids, comment, None))
    }

    fn sent<'a>(
        &'a self,
        region: &'a str,
        instance_ids: &'a [String],
        comment: &'a str,
        command_id: &'a str,
    ) -> BoxFuture<'a, Result<(), MemoryError>> {
        self.memory
            .put(self.rows(region, instance_ids, comment, Some(command_id)))
    }
}

/// Writes every row's outcome; a failed install gets the attempt count and next attempt its plan gave it.
/// An intent SSM could not be asked about is kept for the next pass ([`InstanceRecord::carried_over`]).
async fn record_outcomes(
    d: &Durable<'_>,
    plan: &AccountPlan,
    out: &mut AccountOutcome,
    previous: &HashMap<(String, String), InstanceRecord>,
    attempted: &HashSet<usize>,
    now: SystemTime,
) {
    let now = unix(now);
    let mut records = Vec::new();
    for (n, (planned, row)) in plan.instances.iter().zip(&mut out.instances).enumerate() {
        let prev = previous.get(&(planned.region.clone(), planned.instance_id.clone()));
        let mut rec = InstanceRecord::carried_over(
            (&planned.account_id, &planned.region, &planned.instance_id),
            (row.status, &row.detail),
            prev,
            now,
        );
        match row.status {
            Status::Onboarded | Status::AlreadyOnboarded => {
                rec.attempts = 0;
                rec.last_error = None;
                rec.next_attempt_at = None;
            }
            Status::Failed if attempted.contains(&n) => {
                rec.last_error = row.failure.clone().or_else(|| {
                    Some(Failure::new(
                        FailureStep::Install,
                        "earlier-failure",
                        row.detail.clone(),
                    ))
                });
                match planned.retry {
                    Some(retry) => {
                        rec.attempts = retry.attempts;
                        rec.next_attempt_at = Some(unix(retry.next_attempt_at));
                        row.next_attempt_at = Some(crate::model::timestamp(retry.next_attempt_at));
                    }
                    None => rec.attempts += 1,
                }
            }
            Status::InProgress => {
                rec.command_id = prev
                    .and_then(|p| p.command_id.clone())
                    .or_else(|| row.command_id.clone());
                rec.command_sent_at = prev.and_then(|p| p.command_sent_at);
                rec.intent = prev.and_then(|p| p.intent.clone());
            }
            _ => {}
        }
        records.push(rec);
    }
    if let Err(e) = d.memory.put(records).await {
        warn!(error = %crate::error::chain(&e), "cannot record the pass's outcomes in the state file");
    }
}

/// Fails fast, before any AWS call, when a mutating pass (`token`) could not complete onboarding: no
/// `[azure]` section or credential, or no Resource Manager token.
pub(crate) async fn require_azure<A: Arm>(
    config: &Config,
    arm: Option<&A>,
    token: Option<&MutationToken>,
) -> Result<(), PassError> {
    if token.is_none() {
        return Ok(());
    }
    let (Some(arm), Some(_)) = (arm, &config.azure) else {
        return Err(PassError::AzureMissing);
    };
    arm.token().await.map_err(PassError::Azure)?;
    Ok(())
}

/// What a pass produced.
pub struct PassOutcome {
    /// The report.
    pub report: Report,
    /// True when regions were configured but none could be observed.
    pub no_region_reachable: bool,
}

/// Runs one pass. With `token`, the plan is executed (IAM, then agent install and verification); without,
/// nothing is changed. `arm` is `None` when no Azure credential is available.
pub async fn run_pass<T: Sts, E: Ec2, I: Iam, S: Ssm, A: Arm>(
    config: &Config,
    ports: &AwsPorts<'_, T, E, I, S>,
    arm: Option<&A>,
    token: Option<&MutationToken>,
    opts: &PassOptions,
    durable: Option<&Durable<'_>>,
    now: SystemTime,
) -> Result<PassOutcome, PassError> {
    let started = now;
    require_azure(config, arm, token).await?;
    let account = ports.sts.account_id().await.map_err(PassError::Account)?;
    let regions = resolve_regions(ports.ec2, &config.aws.regions)
        .await
        .map_err(PassError::Regions)?;
    let span =
        info_span!("pass", account = %account, mode = if token.is_some() { "run" } else { "plan" });
    async {
        let _lease = match &opts.leases {
            Some(leases) => Some(leases.exclusive(&account, &regions).await),
            None => None,
        };
        info!(regions = regions.len(), "observing");
        let arc = match (&config.azure, arm) {
            (None, _) => ArcObservation::NotConfigured,
            (Some(_), None) => ArcObservation::Unavailable(ArcUnavailable::NoCredential),
            (Some(az), Some(arm)) => observe_arc(arm, &az.resource_group_for(&account)).await,
        };
        let aws = (ports.ec2, ports.iam, ports.ssm);
        let mut obs = observe_account(
            &account,
            &regions,
            config,
            aws,
            opts.install.in_flight_window(),
            arc,
        )
        .await;
        if let (Some(az), Some(arm)) = (&config.azure, arm) {
            let rg = az.resource_group_for(&account);
            obs.elsewhere = observe_elsewhere(arm, &az.subscription_id, &rg, &obs).await;
        }
        let no_region_reachable =
            !obs.regions.is_empty() && obs.regions.iter().all(|r| r.error.is_some());
        let (records, memory) = match durable {
            Some(d) => recall(d, &account, ports.ssm, now).await,
            None => (
                HashMap::new(),
                memory_of(&HashMap::new(), &HashMap::new(), now),
            ),
        };
        let plan = plan_account(&obs, config, &memory);
        let plan = if token.is_some() {
            plan.scoped(opts.scope)
        } else {
            plan.unverified_unless_checked(&obs.arc)
        };
        let plan = match &opts.saved {
            Some(saved) => saved.restrict(plan),
            None => plan,
        };
        info!(instances = plan.instances.len(), "planned");
        let (mode, outcome) = match (token, arm, &config.azure) {
            (Some(token), Some(arm), Some(_)) => {
                let ctx = Exec {
                    token,
                    arm,
                    opts,
                    durable,
                    regions: &regions,
                    records: &records,
                    now,
                };
                (Mode::Run, Some(execute(&ctx, &plan, ports).await))
            }
            _ => (Mode::Plan, None),
        };
        let report = Report::new(
            mode,
            (started, opts.install.clock.now()),
            vec![(plan, outcome)],
            ports.counter.snapshot(),
        );
        Ok(PassOutcome {
            report,
            no_region_reachable,
        })
    }
    .instrument(span)
    .await
}

/// The event path's pass over a few instances: plans `obs` (instances observed by id, see
/// [`crate::reconcile::observe::observe_instances`]) with the state file's memory, in `opts.scope` and
/// for the event `stage` (the planner's [`AccountPlan::for_event`]: which rows, and what they say), and
/// executes that plan exactly as a pass would; instances the observation does not hold are left alone in
/// the state file (it is not the whole fleet). Without `[azure]` nothing is executed. Returns the plan's
/// rows with what happened laid over them.
#[allow(clippy::too_many_arguments)]
pub async fn execute_observed<T: Sts, E: Ec2, I: Iam, S: Ssm, A: Arm>(
    config: &Config,
    obs: &crate::reconcile::observe::AccountObservation,
    ports: &AwsPorts<'_, T, E, I, S>,
    arm: &A,
    token: &MutationToken,
    opts: &PassOptions,
    durable: &Durable<'_>,
    now: SystemTime,
    stage: crate::reconcile::plan::EventStage<'_>,
) -> AccountPlan {
    let (records, memory) = recall(durable, &obs.account_id, ports.ssm, now).await;
    let plan = plan_account(obs, config, &memory)
        .scoped(opts.scope)
        .for_event(stage);
    if config.azure.is_some() {
        let ctx = Exec {
            token,
            arm,
            opts,
            durable: Some(durable),
            regions: &[],
            records: &records,
            now,
        };
        let outcome = execute(&ctx, &plan, ports).await;
        if let Some(note) = outcome.note() {
            info!(account = %plan.account_id, %note, "account-level changes");
        }
        return outcome.laid_over(plan);
    }
    plan
}

/// `create-resource-group`, of the group and in the location the plan names; on failure every instance
/// waiting for the agent fails with the reason.
async fn create_resource_group(
    token: &MutationToken,
    plan: &AccountPlan,
    out: &mut AccountOutcome,
    arm: &impl Arm,
) -> String {
    let (Some(rg), Some(location)) = (&plan.resource_group, &plan.resource_group_location) else {
        return "create-resource-group not done: the plan names no resource group".into();
    };
    let tags = BTreeMap::from([
        ("AwsAccountId".to_string(), plan.account_id.clone()),
        ("CreatedBy".to_string(), "arc-onboard".to_string()),
    ]);
    match arm.create_resource_group(token, rg, location, &tags).await {
        Ok(()) => {
            info!(resource_group = %rg, "resource group created");
            format!("create-resource-group done: {rg} in {location}")
        }
        Err(e) => {
            warn!(resource_group = %rg, error = %e, "create-resource-group failed");
            for (row, o) in plan.instances.iter().zip(&mut out.instances) {
                if row.runs_agent_script() && o.pending() {
                    o.fail(Failure::new(
                        FailureStep::Connect,
                        e.code(),
                        format!("create-resource-group {rg}: {e}"),
                    ));
                }
            }
            format!("create-resource-group failed: {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::SSM_POLICY_ARN;
    use crate::fake::{FakeArm, FakeAws, FakeMemory};
    use crate::model::{InstanceState, Platform};
    use crate::reconcile::onboard::InstallOptions;

    const READ_ONLY: &str = "arn:aws:iam::aws:policy/ReadOnlyAccess";

    fn config(iam: &str) -> Config {
        let text =
            format!("[aws]\nregions = [\"us-east-1\", \"eu-west-1\"]\n[iam]\n{iam}\n{AZURE}");
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    fn opts() -> ApplyOptions {
        ApplyOptions {
            wait_for_ssm: Duration::ZERO,
            propagation_timeout: Duration::from_secs(1),
            ..ApplyOptions::default()
        }
    }

    const AZURE: &str = "[azure]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\nsubscription_id = \"00000000-0000-0000-0000-000000000002\"\nclient_id = \"00000000-0000-0000-0000-000000000003\"\nlocation = \"eastus\"\n";

    /// The fleet of the IAM issue: no profile, role lacking the policy, correct profile, profile without
    /// role, stopped instance; across two regions.
    fn fleet() -> FakeAws {
        let aws = FakeAws::new(&["us-east-1", "eu-west-1"]);
        aws.add_role("AppRole", &[SSM_POLICY_ARN], Some("AppProfile"));
        aws.add_role("LegacyRole", &[READ_ONLY], Some("LegacyProfile"));
        aws.add_empty_profile("EmptyProfile");
        let running = InstanceState::Running;
        aws.add_instance("us-east-1", "i-none", Platform::Linux, running, None, &[]);
        aws.add_instance(
            "us-east-1",
            "i-legacy1",
            Platform::Linux,
            running,
            Some("LegacyProfile"),
            &[],
        );
        aws.add_instance(
            "eu-west-1",
            "i-legacy2",
            Platform::Windows,
            running,
            Some("LegacyProfile"),
            &[],
        );
        aws.add_instance(
            "eu-west-1",
            "i-good",
            Platform::Linux,
            running,
            Some("AppProfile"),
            &[],
        );
        aws.add_instance(
            "eu-west-1",
            "i-empty",
            Platform::Linux,
            running,
            Some("EmptyProfile"),
            &[],
        );
        aws.add_instance(
            "eu-west-1",
            "i-stopped",
            Platform::Linux,
            InstanceState::Stopped,
            None,
            &[],
        );
        aws
    }

    async fn pass(aws: &FakeAws, config: &Config, token: Option<&MutationToken>) -> Report {
        let arm = std::sync::Arc::new(FakeArm::default());
        aws.link_arm(arm.clone(), "aws_123456789012");
        pass_with(aws, &arm, config, token).await.unwrap()
    }

    async fn pass_with(
        aws: &FakeAws,
        arm: &FakeArm,
        config: &Config,
        token: Option<&MutationToken>,
    ) -> Result<Report, PassError> {
        pass_at(aws, arm, config, token, None, SystemTime::now()).await
    }

    /// One pass over the fakes at `now`, with the state file when given.
    async fn pass_at(
        aws: &FakeAws,
        arm: &FakeArm,
        config: &Config,
        token: Option<&MutationToken>,
        durable: Option<&Durable<'_>>,
        now: SystemTime,
    ) -> Result<Report, PassError> {
        let ports = aws.ports();
        let opts = PassOptions {
            apply: opts(),
            install: InstallOptions {
                verify_timeout: Duration::from_secs(2),
                ..InstallOptions::default()
            },
            scope: Scope::default(),
            saved: None,
            leases: None,
        };
        run_pass(config, &ports, Some(arm), token, &opts, durable, now)
            .await
            .map(|o| o.report)
    }

    fn one_region_config() -> Config {
        Config::parse(
            &format!("[aws]\nregions=[\"us-east-1\"]\n{AZURE}"),
            Path::new("t"),
        )
        .unwrap()
    }

    /// An account whose `ids` run in us-east-1 with a working SSM profile (Online at once).
    fn ready_account(ids: &[String]) -> FakeAws {
        let aws = FakeAws::new(&["us-east-1"]);
        aws.add_role("AppRole", &[SSM_POLICY_ARN], Some("AppProfile"));
        for id in ids {
            aws.add_instance(
                "us-east-1",
                id,
                Platform::Linux,
                InstanceState::Running,
                Some("AppProfile"),
                &[],
            );
        }
        aws
    }

    async fn observe_and_plan(aws: &FakeAws, cfg: &Config, regions: &[String]) -> AccountPlan {
        let obs = crate::reconcile::observe::observe_account(
            "123456789012",
            regions,
            cfg,
            (aws, aws, aws),
            crate::reconcile::observe::InFlightWindow::ending_at(
                std::time::SystemTime::now(),
                Duration::from_secs(60),
            ),
            crate::reconcile::observe::ArcObservation::NotConfigured,
        )
        .await;
        crate::reconcile::plan::plan_account(&obs, cfg, &crate::reconcile::plan::Memory::none())
    }

    fn mutating(aws: &FakeAws) -> u64 {
        aws.calls
            .snapshot()
            .iter()
            .filter(|(op, _)| {
                let action = op.split(':').nth(1).unwrap_or_default();
                !["Describe", "Get", "List"]
                    .iter()
                    .any(|p| action.starts_with(p))
            })
            .map(|(_, n)| *n)
            .sum()
    }

    fn status<'a>(r: &'a Report, id: &str) -> &'a str {
        r.instances
            .iter()
            .find(|i| i.instance_id == id)
            .unwrap()
            .status
            .as_str()
    }

    #[tokio::test]
    async fn plan_changes_nothing() {
        let aws = fleet();
        let report = pass(&aws, &config(""), None).await;
        assert_eq!(mutating(&aws), 0);
        assert_eq!(report.summary.by_status[&Status::Planned], 4 + 1);
        assert_eq!(aws.instance_profile("i-none"), None);
    }

    #[tokio::test]
    async fn iam_pass_converges_and_a_second_pass_changes_nothing() {
        let aws = fleet();
        let arm = std::sync::Arc::new(FakeArm::default());
        aws.link_arm(arm.clone(), "aws_123456789012");
        let token = MutationToken::mint();
        let first = pass_with(&aws, &arm, &config(""), Some(&token))
            .await
            .unwrap();
        // Every instance now has working IAM, each role was patched once.
        assert!(aws
            .instance_profile("i-none")
            .unwrap()
            .ends_with("/AzureArcForServerSSMInstanceProfile"));
        assert!(aws
            .instance_profile("i-stopped")
            .unwrap()
            .ends_with("/AzureArcForServerSSMInstanceProfile"));
        assert!(aws
            .role_policies("LegacyRole")
            .contains(&SSM_POLICY_ARN.to_string()));
        assert_eq!(
            aws.profile("EmptyProfile").unwrap().roles,
            ["AzureArcForServerSSM"]
        );
        assert_eq!(
            aws.calls.count("iam:AttachRolePolicy"),
            2,
            "LegacyRole once, the new SSM role once"
        );
        assert_eq!(aws.calls.count("iam:CreateRole"), 1);
        assert_eq!(aws.calls.count("ec2:AssociateIamInstanceProfile"), 2);
        assert_eq!(
            first.accounts[0].actions,
            ["create-ssm-role", "create-resource-group"],
            "{}",
            first.to_json()
        );
        assert!(arm.has_group("aws_123456789012"));
        assert_eq!(status(&first, "i-stopped"), "not-running");
        for id in ["i-none", "i-legacy1", "i-legacy2", "i-good", "i-empty"] {
            assert_eq!(status(&first, id), "onboarded", "{id}");
        }
        assert_eq!(
            aws.calls.count("ssm:SendCommand"),
            6,
            "one batch per region and platform: a key exchange, then the install"
        );
        assert!(
            !first.instances.iter().any(|i| i.status == Status::Planned),
            "run never reports planned"
        );
        // The plan is reported beside the outcome: i-none was planned for IAM and the install.
        let none = row(&first, "i-none");
        let planned = none.planned.as_ref().expect("run rows carry the plan");
        assert_eq!(planned.status, Status::Planned);
        assert!(
            planned.detail.contains("no instance profile"),
            "{}",
            planned.detail
        );
        assert_eq!(
            none.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            ["associate-instance-profile", "install-agent"]
        );
        assert!(none.command_id.is_some(), "the outcome names the command");
        let json: serde_json::Value = serde_json::from_str(&first.to_json()).unwrap();
        let i_none = json["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["instance_id"] == "i-none")
            .unwrap();
        assert_eq!(i_none["status"], "onboarded");
        assert_eq!(i_none["planned"]["status"], "planned");
        assert!(!first.has_failures());

        let before = mutating(&aws);
        let second = pass_with(&aws, &arm, &config(""), Some(&token))
            .await
            .unwrap();
        assert_eq!(
            mutating(&aws),
            before,
            "second pass must not change anything"
        );
        assert!(second.accounts[0].actions.is_empty());
        assert_eq!(status(&second, "i-none"), "already-onboarded");
        for i in &second.instances {
            assert!(
                i.actions.iter().all(|a| !a.is_iam()),
                "{} still plans IAM",
                i.instance_id
            );
        }
    }

    #[tokio::test]
    async fn a_role_shared_by_many_instances_is_patched_once() {
        let aws = FakeAws::new(&["us-east-1"]);
        aws.add_role("LegacyRole", &[READ_ONLY], Some("LegacyProfile"));
        for n in 0..25 {
            let id = format!("i-{n:03}");
            aws.add_instance(
                "us-east-1",
                &id,
                Platform::Linux,
                InstanceState::Running,
                Some("LegacyProfile"),
                &[],
            );
        }
        let cfg = one_region_config();
        pass(&aws, &cfg, Some(&MutationToken::mint())).await;
        assert_eq!(aws.calls.count("iam:AttachRolePolicy"), 1);
        assert_eq!(
            aws.calls.count("iam:ListAttachedRolePolicies"),
            1,
            "role looked up once, not per instance"
        );
        assert_eq!(
            aws.calls.count("iam:GetInstanceProfile"),
            2,
            "LegacyProfile and the SSM profile"
        );
    }

    #[tokio::test]
    async fn forbidden_changes_are_not_made() {
        let aws = fleet();
        let token = MutationToken::mint();
        let report = pass(&aws, &config("policy_update_allowed = false"), Some(&token)).await;
        assert_eq!(status(&report, "i-legacy1"), "needs-manual-iam");
        assert_eq!(status(&report, "i-empty"), "needs-manual-iam");
        assert_eq!(aws.role_policies("LegacyRole"), [READ_ONLY]);
        assert!(aws.profile("EmptyProfile").unwrap().roles.is_empty());
        assert!(
            aws.instance_profile("i-none").is_some(),
            "assigning the SSM profile is still allowed"
        );

        let aws = fleet();
        let report = pass(&aws, &config("auto_assignment = false"), Some(&token)).await;
        assert_eq!(
            mutating(&aws),
            aws.calls.count("ssm:SendCommand"),
            "no IAM change; only installs on instances already Online"
        );
        assert_eq!(status(&report, "i-good"), "onboarded");
        for id in ["i-none", "i-legacy1", "i-empty"] {
            assert_eq!(status(&report, id), "needs-manual-iam", "{id}");
        }
    }

    #[tokio::test]
    async fn one_failure_does_not_stop_the_others() {
        let aws = fleet();
        aws.fail(
            "ec2:AssociateIamInstanceProfile",
            "i-none",
            "UnauthorizedOperation",
        );
        aws.fail("iam:AttachRolePolicy", "LegacyRole", "AccessDenied");
        let report = pass(&aws, &config(""), Some(&MutationToken::mint())).await;
        assert_eq!(status(&report, "i-none"), "failed");
        let none = report
            .instances
            .iter()
            .find(|i| i.instance_id == "i-none")
            .unwrap();
        assert!(
            none.detail.contains("UnauthorizedOperation"),
            "{}",
            none.detail
        );
        assert_eq!(status(&report, "i-legacy1"), "failed");
        assert_eq!(status(&report, "i-legacy2"), "failed");
        assert!(
            aws.instance_profile("i-stopped").is_some(),
            "other instances continue"
        );
        assert_eq!(
            aws.profile("EmptyProfile").unwrap().roles,
            ["AzureArcForServerSSM"]
        );
        assert!(report.has_failures());
    }

    #[tokio::test]
    async fn failing_role_creation_fails_only_the_instances_that_need_it() {
        let aws = fleet();
        aws.fail("iam:CreateRole", "AzureArcForServerSSM", "AccessDenied");
        let report = pass(&aws, &config(""), Some(&MutationToken::mint())).await;
        for id in ["i-none", "i-stopped", "i-empty"] {
            assert_eq!(status(&report, id), "failed", "{id}");
        }
        assert_eq!(
            status(&report, "i-legacy1"),
            "onboarded",
            "its own role was patched"
        );
        assert!(aws
            .role_policies("LegacyRole")
            .contains(&SSM_POLICY_ARN.to_string()));
        assert_eq!(aws.calls.count("ec2:AssociateIamInstanceProfile"), 0);
        assert!(report.accounts[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("AccessDenied"));
    }

    #[tokio::test]
    async fn an_instance_that_gained_a_profile_meanwhile_is_left_alone() {
        let aws = fleet();
        let cfg = config("");
        let token = MutationToken::mint();
        // Observe and plan, then someone else associates a profile before we apply.
        let regions = ["us-east-1".to_string(), "eu-west-1".to_string()];
        let plan = observe_and_plan(&aws, &cfg, &regions).await;
        aws.associate_instance_profile(&token, "us-east-1", "i-none", "AppProfile")
            .await
            .unwrap();
        let before = plan.clone();
        let mut out = AccountOutcome::start(&plan);
        apply_iam(&token, &plan, &mut out, &aws, &aws, &opts()).await;
        assert_eq!(plan, before, "execution leaves the plan as it was");
        let n = plan
            .instances
            .iter()
            .position(|i| i.instance_id == "i-none")
            .unwrap();
        let row = &out.instances[n];
        assert_eq!(row.status, Status::WaitingForSsm);
        assert!(row.detail.contains("AppProfile"), "{}", row.detail);
        assert!(
            aws.instance_profile("i-none")
                .unwrap()
                .ends_with("/AppProfile"),
            "not forced"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_bucket_holds_the_rate() {
        let bucket = crate::reconcile::apply::TokenBucket::new(10, 5.0);
        let start = tokio::time::Instant::now();
        for _ in 0..60 {
            bucket.acquire().await;
        }
        let elapsed = start.elapsed();
        // 10 at once, then 50 at 5 a second.
        assert!(elapsed >= Duration::from_secs(10), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(11), "{elapsed:?}");
    }

    #[tokio::test]
    async fn install_failures_are_per_instance_with_the_agent_reason() {
        let aws = fleet();
        aws.script_outcome("i-good", "Failed", "Failed", 41, "connecting...\nARC_ONBOARD_RESULT {\"outcome\":\"failed\",\"exit_code\":41,\"step\":\"connect\",\"message\":\"azcmagent connect failed\"}");
        let report = pass(&aws, &config(""), Some(&MutationToken::mint())).await;
        let good = report
            .instances
            .iter()
            .find(|i| i.instance_id == "i-good")
            .unwrap();
        assert_eq!(good.status, Status::Failed);
        assert!(good.detail.contains("exit code 41"), "{}", good.detail);
        let failure = good.failure.as_ref().unwrap();
        assert_eq!(
            (failure.step, failure.code.as_str(), failure.exit_code),
            (FailureStep::Connect, "exit-41", Some(41))
        );
        assert!(
            failure.reason.starts_with("the credentials were rejected"),
            "{}",
            failure.reason
        );
        assert!(
            good.detail.contains("connecting..."),
            "output tail: {}",
            good.detail
        );
        assert_eq!(status(&report, "i-none"), "onboarded");
        assert!(report.has_failures());
        // The daemon's metrics count the failure by its code.
        let outcome = PassOutcome {
            report,
            no_region_reachable: false,
        };
        let summary = crate::daemon::PassSummary::from_outcome(&outcome);
        assert_eq!(
            summary.errors.get("exit-41"),
            Some(&1),
            "{:?}",
            summary.errors
        );
        assert!(!summary.errors.contains_key("instance-failed"));
    }

    #[tokio::test]
    async fn an_agent_connected_elsewhere_is_reported_and_not_counted_as_a_failure() {
        let aws = fleet();
        let other = "/subscriptions/00000000-0000-0000-0000-000000000002/resourceGroups/defender/providers/Microsoft.HybridCompute/machines/i-good";
        aws.script_outcome("i-good", "Success", "Success", 0, &format!(
            "ARC_ONBOARD_RESULT {{\"outcome\":\"connected-elsewhere\",\"exit_code\":0,\"step\":\"check\",\"code\":\"connected-elsewhere\",\"message\":\"connected to another Arc resource\",\"resource_id\":\"{other}\"}}"
        ));
        let report = pass(&aws, &config(""), Some(&MutationToken::mint())).await;
        let good = report
            .instances
            .iter()
            .find(|i| i.instance_id == "i-good")
            .unwrap();
        assert_eq!(good.status, Status::ConnectedElsewhere);
        assert_eq!(good.arc_resource_id.as_deref(), Some(other));
        assert_eq!(good.failure, None);
        assert!(!report.has_failures());
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let row = json["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["instance_id"] == "i-good")
            .unwrap();
        assert_eq!(row["status"], "connected-elsewhere");
        assert_eq!(row["arc_resource_id"], other);
        assert_eq!(json["summary"]["by_status"]["connected-elsewhere"], 1);
    }

    #[tokio::test]
    async fn already_connected_is_believed_only_when_azure_shows_our_machine() {
        let aws = fleet();
        // The agent says "ours and Connected", but the FakeArm never sees the machine (not linked).
        let arm = FakeArm::default();
        aws.script_outcome("i-good", "Success", "Success", 0, "ARC_ONBOARD_RESULT {\"outcome\":\"already-connected\",\"exit_code\":0,\"step\":\"check\",\"code\":\"already-connected\",\"message\":\"m\",\"resource_id\":\"\"}");
        let report = pass_with(&aws, &arm, &config(""), Some(&MutationToken::mint()))
            .await
            .unwrap();
        let good = report
            .instances
            .iter()
            .find(|i| i.instance_id == "i-good")
            .unwrap();
        assert_eq!(good.status, Status::Failed);
        let failure = good.failure.as_ref().unwrap();
        assert_eq!(
            (failure.step, failure.code.as_str()),
            (FailureStep::Verify, "arc-machine-missing")
        );
    }

    #[tokio::test]
    async fn batches_hold_at_most_fifty_instances() {
        let ids: Vec<String> = (0..130).map(|n| format!("i-{n:04}")).collect();
        let aws = ready_account(&ids);
        let cfg = one_region_config();
        let report = pass(&aws, &cfg, Some(&MutationToken::mint())).await;
        let sizes: Vec<usize> = aws
            .commands()
            .iter()
            .map(|c| c.request.instance_ids.len())
            .collect();
        assert_eq!(sizes, [50, 50, 30]);
        assert_eq!(report.summary.by_status[&Status::Onboarded], 130);
    }

    /// Why Azure was not checked is typed (the Azure error kept whole), and `plan` shows the same text the
    /// string held before.
    #[tokio::test]
    async fn an_unavailable_azure_is_typed_and_reads_as_before() {
        let arm = FakeArm::default();
        let refused = crate::model::AzureError::Token {
            status: 401,
            code: "invalid_client".into(),
            description: "AADSTS7000215: Invalid client secret provided.".into(),
        };
        arm.fail_token(refused.clone());
        let arc = observe_arc(&arm, "aws_123456789012").await;
        assert_eq!(
            arc,
            ArcObservation::Unavailable(ArcUnavailable::Azure(refused))
        );
        assert_eq!(
            ArcUnavailable::NoCredential.to_string(),
            "ARC_ONBOARD_CLIENT_SECRET is not set"
        );
        let report = pass_with(&fleet(), &arm, &config(""), None).await.unwrap();
        let none = row(&report, "i-none");
        assert!(
            none.detail.ends_with(
                "; Azure not checked: Entra token request failed: HTTP 401: invalid_client: \
                 AADSTS7000215: Invalid client secret provided."
            ),
            "{}",
            none.detail
        );
    }

    #[tokio::test]
    async fn a_refused_azure_token_stops_run_before_any_aws_call() {
        let aws = fleet();
        let arm = FakeArm::default();
        arm.fail_token(crate::model::AzureError::Token {
            status: 401,
            code: "invalid_client".into(),
            description: "AADSTS7000215: Invalid client secret provided.".into(),
        });
        let err = pass_with(&aws, &arm, &config(""), Some(&MutationToken::mint()))
            .await
            .unwrap_err();
        assert!(matches!(err, PassError::Azure(_)), "{err}");
        assert!(
            aws.calls.snapshot().is_empty(),
            "{:?}",
            aws.calls.snapshot()
        );
        // plan still works and says what it could not check.
        let report = pass_with(&aws, &arm, &config(""), None).await.unwrap();
        let none = report
            .instances
            .iter()
            .find(|i| i.instance_id == "i-none")
            .unwrap();
        assert!(none.detail.contains("Azure not checked"), "{}", none.detail);
    }

    #[tokio::test(start_paused = true)]
    async fn invocations_not_listed_yet_are_asked_for_again_not_failed() {
        let aws = fleet();
        aws.hide_invocations(2);
        let report = pass(&aws, &config(""), Some(&MutationToken::mint())).await;
        assert_eq!(status(&report, "i-good"), "onboarded");
        assert!(!report.has_failures());
        assert!(
            aws.calls.count("ssm:ListCommandInvocations") >= 3 + 2,
            "{:?}",
            aws.calls.snapshot()
        );
    }

    /// A daemon pass over the fakes, with the state file, now.
    async fn durable_pass(aws: &FakeAws, config: &Config, durable: &Durable<'_>) -> Report {
        let arm = linked_arm(aws);
        let token = MutationToken::mint();
        durable_pass_at(aws, &arm, config, durable, Some(&token), SystemTime::now()).await
    }

    /// An Azure fake in which the fake AWS's successful installs connect machines.
    fn linked_arm(aws: &FakeAws) -> std::sync::Arc<FakeArm> {
        let arm = std::sync::Arc::new(FakeArm::default());
        aws.link_arm(arm.clone(), "aws_123456789012");
        arm
    }

    /// A pass over the fakes with the state file, at `now`; `plan` without a token.
    async fn durable_pass_at(
        aws: &FakeAws,
        arm: &FakeArm,
        config: &Config,
        durable: &Durable<'_>,
        token: Option<&MutationToken>,
        now: SystemTime,
    ) -> Report {
        pass_at(aws, arm, config, token, Some(durable), now)
            .await
            .unwrap()
    }

    /// The daemon's memory with its default backoff (15 minutes, doubling, at most an hour here).
    fn durable_of(memory: &FakeMemory) -> Durable<'_> {
        Durable {
            memory,
            retry_base: Duration::from_secs(900),
            retry_max: Duration::from_secs(3600),
        }
    }

    /// An empty memory (the port's fake; the SQLite adapter has its own tests).
    async fn temp_state() -> ((), FakeMemory) {
        ((), FakeMemory::new())
    }

    async fn record(db: &FakeMemory, id: &str) -> Option<InstanceRecord> {
        db.records().into_iter().find(|r| r.instance_id == id)
    }

    /// `id` onboarded, by the one install command sent so far.
    fn assert_installed_once(aws: &FakeAws, report: &Report, id: &str) {
        let status = row(report, id).status;
        assert_eq!(status, Status::Onboarded, "{}", report.to_json());
        assert_eq!(aws.commands().len(), 1);
    }

    fn row<'a>(r: &'a Report, id: &str) -> &'a crate::reconcile::plan::InstancePlan {
        r.instances.iter().find(|i| i.instance_id == id).unwrap()
    }

    /// The core reads time only from the clock it is given: with a fake clock far from the wall clock, the
    /// report's `started_at`/`finished_at` and the `since` of every command listing (observation's
    /// in-flight window, the install's waits) come from that clock.
    #[tokio::test(start_paused = true)]
    async fn a_pass_reads_time_from_the_clock_it_is_given() {
        let aws = ready_account(&["i-1".to_string()]);
        let arm = linked_arm(&aws);
        let cfg = one_region_config();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let clock = crate::fake::FakeClock::at(t0);
        let install = InstallOptions {
            verify_timeout: Duration::from_secs(2),
            clock: clock.port(),
            ..InstallOptions::default()
        };
        let window = t0.duration_since(install.in_flight_window().since).unwrap();
        assert_eq!(
            window,
            install.script_token_validity() + Duration::from_secs(300)
        );
        let opts = PassOptions {
            apply: opts(),
            install,
            ..PassOptions::default()
        };
        let token = MutationToken::mint();
        let ports = aws.ports();
        let report = run_pass(&cfg, &ports, Some(&*arm), Some(&token), &opts, None, t0)
            .await
            .unwrap()
            .report;
        assert_eq!(row(&report, "i-1").status, Status::Onboarded);
        assert_eq!(report.started_at, crate::model::timestamp(t0));
        assert_eq!(report.started_at, "2030-03-17T17:46:40Z");
        assert_eq!(report.finished_at, report.started_at);
        let since: Vec<SystemTime> = aws.listed_since().into_iter().map(|(_, s)| s).collect();
        // Observation looks back the in-flight window; the install's listings a minute (clock skew).
        assert_eq!(since.first(), Some(&(t0 - window)));
        assert!(since.len() >= 2, "{since:?}");
        assert!(
            since[1..]
                .iter()
                .all(|s| *s == t0 - Duration::from_secs(60)),
            "{since:?}"
        );

        // A later clock moves both.
        clock.advance(Duration::from_secs(3600));
        let again = run_pass(&cfg, &ports, Some(&*arm), None, &opts, None, t0)
            .await
            .unwrap()
            .report;
        assert_eq!(again.started_at, crate::model::timestamp(t0));
        assert_eq!(
            again.finished_at,
            crate::model::timestamp(t0 + Duration::from_secs(3600))
        );
        let last = aws.listed_since().last().map(|(_, s)| *s);
        assert_eq!(last, Some(t0 + Duration::from_secs(3600) - window));
    }

    const FAILED_41: &str = "ARC_ONBOARD_RESULT {\"outcome\":\"failed\",\"exit_code\":41,\"step\":\"connect\",\"code\":\"AZCM0041\",\"message\":\"azcmagent connect exited with 41\"}";

    #[tokio::test(start_paused = true)]
    async fn a_failed_install_is_recorded_held_until_due_in_plan_and_pass_then_retried() {
        let aws = ready_account(&["i-1".to_string(), "i-2".to_string()]);
        let arm = linked_arm(&aws);
        aws.script_outcome("i-1", "Failed", "Failed", 41, FAILED_41);
        let cfg = one_region_config();
        let (_dir, db) = temp_state().await;
        let durable = durable_of(&db);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = MutationToken::mint();

        // Pass 1 at t0: i-1 fails; the record says so, with the typed failure and the next attempt.
        let first = durable_pass_at(&aws, &arm, &cfg, &durable, Some(&token), t0).await;
        assert_eq!(row(&first, "i-1").status, Status::Failed);
        let rec = record(&db, "i-1").await.unwrap();
        assert_eq!(rec.attempts, 1);
        assert_eq!(rec.next_attempt_at, Some(unix(t0) + 900));
        let kept: Failure = rec.last_error.clone().unwrap();
        assert_eq!(
            (kept.step, kept.code.as_str()),
            (FailureStep::Connect, "AZCM0041")
        );
        assert_eq!(aws.commands().len(), 1);

        // plan with the memory, 5 minutes later: held, no install, its next attempt; nothing sent.
        let t1 = t0 + Duration::from_secs(300);
        let plan = durable_pass_at(&aws, &arm, &cfg, &durable, None, t1).await;
        let held = row(&plan, "i-1");
        assert_eq!(held.status, Status::Failed);
        assert!(held.actions.is_empty(), "{:?}", held.actions);
        assert_eq!(
            held.next_attempt_at.as_deref(),
            Some(crate::model::timestamp(t0 + Duration::from_secs(900)).as_str())
        );
        assert_eq!(held.failure.as_ref().unwrap().code, "AZCM0041");
        assert!(held.detail.contains("failed 1 time(s)"), "{}", held.detail);
        assert_eq!(row(&plan, "i-2").status, Status::AlreadyOnboarded);
        // The daemon's pass at the same time does what plan said: nothing is sent.
        let pass = durable_pass_at(&aws, &arm, &cfg, &durable, Some(&token), t1).await;
        assert_eq!(row(&pass, "i-1").status, Status::Failed);
        assert_eq!(aws.commands().len(), 1, "held: not sent again");
        assert_eq!(record(&db, "i-1").await.unwrap().attempts, 1);

        // Once due, it is tried again; it fails again and the delay doubles.
        let t2 = t0 + Duration::from_secs(901);
        let plan = durable_pass_at(&aws, &arm, &cfg, &durable, None, t2).await;
        assert_eq!(row(&plan, "i-1").status, Status::Planned);
        let again = durable_pass_at(&aws, &arm, &cfg, &durable, Some(&token), t2).await;
        assert_eq!(row(&again, "i-1").status, Status::Failed);
        assert_eq!(aws.commands().len(), 2);
        let rec = record(&db, "i-1").await.unwrap();
        assert_eq!(
            (rec.attempts, rec.next_attempt_at),
            (2, Some(unix(t2) + 1800))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_journaled_command_is_shown_in_progress_by_plan_and_tracked_not_resent_by_the_pass() {
        use crate::ports::{CommandRequest, Ssm, LINUX_DOCUMENT};
        let aws = ready_account(&["i-1".to_string()]);
        let arm = linked_arm(&aws);
        let cfg = one_region_config();
        let (_dir, db) = temp_state().await;
        let durable = durable_of(&db);
        let token = MutationToken::mint();
        // A daemon sent the install, journaled it, and was killed before it saw the end.
        aws.script_outcome("i-1", "InProgress", "InProgress", -1, "");
        let sent = CommandRequest {
            document: LINUX_DOCUMENT,
            instance_ids: vec!["i-1".into()],
            script: "true".into(),
            execution_timeout: Duration::from_secs(60),
            delivery_timeout: Duration::from_secs(60),
            comment: "arc-onboard run killed".into(),
        };
        let command = aws.send_command(&token, "us-east-1", &sent).await.unwrap();
        let now = SystemTime::now();
        db.put(vec![InstanceRecord {
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            instance_id: "i-1".into(),
            status: Status::InProgress,
            detail: String::new(),
            command_id: Some(command.clone()),
            command_sent_at: Some(unix(now)),
            attempts: 0,
            last_error: None,
            next_attempt_at: None,
            last_seen_at: unix(now),
            intent: None,
        }])
        .await
        .unwrap();

        let plan = durable_pass_at(&aws, &arm, &cfg, &durable, None, now).await;
        let r = row(&plan, "i-1");
        assert_eq!(r.status, Status::InProgress);
        assert_eq!(r.command_id.as_deref(), Some(command.as_str()));
        assert!(r.actions.is_empty(), "{:?}", r.actions);

        // The pass at the same moment tracks that command instead of sending another; its script ends.
        aws.script_outcome("i-1", "Failed", "Failed", 41, FAILED_41);
        let pass = durable_pass_at(&aws, &arm, &cfg, &durable, Some(&token), now).await;
        let r = row(&pass, "i-1");
        assert_eq!(r.status, Status::Failed, "{}", pass.to_json());
        assert_eq!(r.failure.as_ref().unwrap().code, "AZCM0041");
        assert_eq!(aws.commands().len(), 1, "tracked, never sent again");
        let rec = record(&db, "i-1").await.unwrap();
        assert_eq!((rec.attempts, rec.command_id), (1, None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sent_command_is_journaled_before_it_is_waited_for() {
        let aws = ready_account(&["i-1".to_string()]);
        let arm = linked_arm(&aws);
        // The command runs for ever (the fake answers InProgress): the journal must already hold it.
        aws.script_outcome("i-1", "InProgress", "InProgress", -1, "");
        let cfg = one_region_config();
        let (_dir, db) = temp_state().await;
        let durable = durable_of(&db);
        let token = MutationToken::mint();
        let pass = durable_pass_at(&aws, &arm, &cfg, &durable, Some(&token), SystemTime::now());
        let watch = async {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if let Some(rec) = record(&db, "i-1").await {
                    if rec.command_id.is_some() {
                        return rec;
                    }
                }
            }
        };
        tokio::select! {
            rec = watch => {
                assert_eq!(rec.status, Status::InProgress);
                assert_eq!(rec.command_id.as_deref(), Some(aws.commands()[0].command_id.as_str()));
            }
            _ = pass => panic!("the pass ended before the journal was checked"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_install_whose_intent_cannot_be_recorded_is_not_sent_and_fails_in_the_report() {
        use crate::reconcile::onboard::JOURNAL_FAILED;
        let aws = ready_account(&["i-1".to_string(), "i-2".to_string()]);
        let arm = linked_arm(&aws);
        let cfg = one_region_config();
        let memory = FakeMemory::new();
        memory.fail_writes(true);
        let durable = durable_of(&memory);
        let token = MutationToken::mint();
        let pass =
            durable_pass_at(&aws, &arm, &cfg, &durable, Some(&token), SystemTime::now()).await;
        assert!(aws.commands().is_empty(), "no install was sent");
        assert!(memory.refused() > 0);
        for id in ["i-1", "i-2"] {
            let r = row(&pass, id);
            assert_eq!(r.status, Status::Failed, "{}", pass.to_json());
            let f = r.failure.as_ref().unwrap();
            assert_eq!(
                (f.step, f.code.as_str()),
                (FailureStep::Ssm, JOURNAL_FAILED)
            );
            assert!(
                r.detail.contains("cannot record it in the state file"),
                "{}",
                r.detail
            );
        }
        let json = pass.to_json();
        assert!(json.contains(JOURNAL_FAILED), "{json}");

        // Once the memory takes writes again, the next pass sends the install, its intent recorded first.
        memory.fail_writes(false);
        let pass =
            durable_pass_at(&aws, &arm, &cfg, &durable, Some(&token), SystemTime::now()).await;
        assert_installed_once(&aws, &pass, "i-1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_kill_between_send_and_record_never_installs_twice_and_the_command_is_tracked_to_its_end(
    ) {
        let aws = ready_account(&["i-1".to_string()]);
        let arm = linked_arm(&aws);
        let cfg = one_region_config();
        let memory = FakeMemory::new();
        let durable = durable_of(&memory);
        let token = MutationToken::mint();
        // The intent is recorded, the command is sent, and the process dies before its id is recorded.
        aws.script_outcome("i-1", "InProgress", "InProgress", -1, "");
        memory.fail_command_id_writes(true);
        let t0 = SystemTime::now();
        let first = durable_pass_at(&aws, &arm, &cfg, &durable, Some(&token), t0);
        let sent = async {
            while aws.commands().is_empty() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::select! {
            () = sent => {}
            _ = first => panic!("the pass ended while its command was running"),
        }
        let rec = record(&memory, "i-1").await.unwrap();
        assert_eq!(rec.command_id, None, "the id was never recorded");
        let intent = rec
            .intent
            .clone()
            .expect("the intent was recorded before the send");
        assert_eq!(aws.commands()[0].request.comment, intent);

        // A fresh pass on the same memory, after the command failed on the instance: it finds the command
        // by its comment, tracks it to its end, and sends nothing.
        memory.fail_command_id_writes(false);
        aws.script_outcome("i-1", "Failed", "Failed", 41, FAILED_41);
        let t1 = t0 + Duration::from_secs(120);
        let plan = durable_pass_at(&aws, &arm, &cfg, &durable, None, t1).await;
        assert_eq!(
            row(&plan, "i-1").status,
            Status::InProgress,
            "{}",
            plan.to_json()
        );
        let second = durable_pass_at(&aws, &arm, &cfg, &durable, Some(&token), t1).await;
        let r = row(&second, "i-1");
        assert_eq!(aws.commands().len(), 1, "never installed twice");
        assert_eq!(r.status, Status::Failed, "{}", second.to_json());
        assert_eq!(r.failure.as_ref().unwrap().code, "AZCM0041");
        assert_eq!(
            r.command_id.as_deref(),
            Some(aws.commands()[0].command_id.as_str())
        );
        let rec = record(&memory, "i-1").await.unwrap();
        assert_eq!((rec.attempts, rec.command_id, rec.intent), (1, None, None));
        assert_eq!(
            rec.next_attempt_at,
            Some(unix(t1) + 900),
            "the planned backoff"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_intent_whose_command_was_never_sent_is_dropped_and_the_install_planned_anew() {
        let aws = ready_account(&["i-1".to_string()]);
        let arm = linked_arm(&aws);
        let cfg = one_region_config();
        let memory = FakeMemory::new();
        let now = SystemTime::now();
        memory
            .put(vec![InstanceRecord {
                intent: Some("arc-onboard run killed install 0".into()),
                command_sent_at: Some(unix(now)),
                ..InstanceRecord::carried_over(
                    ("123456789012", "us-east-1", "i-1"),
                    (Status::InProgress, ""),
                    None,
                    unix(now),
                )
            }])
            .await
            .unwrap();
        let durable = durable_of(&memory);
        let token = MutationToken::mint();
        let pass = durable_pass_at(&aws, &arm, &cfg, &durable, Some(&token), now).await;
        assert_installed_once(&aws, &pass, "i-1");
        assert_eq!(record(&memory, "i-1").await.unwrap().intent, None);
    }

    #[tokio::test]
    async fn instances_no_longer_seen_leave_the_state_file_unless_their_region_failed() {
        let aws = FakeAws::new(&["us-east-1", "eu-west-1"]);
        aws.add_role("AppRole", &[SSM_POLICY_ARN], Some("AppProfile"));
        let tag = [("arc", "onboard")];
        for (region, id) in [
            ("us-east-1", "i-stays"),
            ("us-east-1", "i-terminated"),
            ("us-east-1", "i-untagged"),
            ("eu-west-1", "i-eu"),
        ] {
            let running = InstanceState::Running;
            aws.add_instance(
                region,
                id,
                Platform::Linux,
                running,
                Some("AppProfile"),
                &tag,
            );
        }
        let cfg = Config::parse(
            &format!("[aws]\nregions = [\"us-east-1\", \"eu-west-1\"]\ntag_filter = {{ key = \"arc\", value = \"onboard\" }}\n{AZURE}"),
            Path::new("t"),
        )
        .unwrap();
        let db = FakeMemory::new();
        // Records no pass of this config owns: another account, and a region it does not look at.
        let foreign = |account: &str, region: &str, id: &str| InstanceRecord {
            account_id: account.into(),
            region: region.into(),
            instance_id: id.into(),
            status: Status::Onboarded,
            detail: String::new(),
            command_id: None,
            command_sent_at: None,
            attempts: 0,
            last_error: None,
            next_attempt_at: None,
            last_seen_at: 1,
            intent: None,
        };
        db.put(vec![
            foreign("999999999999", "us-east-1", "i-other-account"),
            foreign("123456789012", "ap-south-1", "i-other-region"),
        ])
        .await
        .unwrap();
        let durable = durable_of(&db);
        let recorded = |all: Vec<InstanceRecord>| -> Vec<String> {
            all.into_iter()
                .map(|r| format!("{}/{}/{}", r.account_id, r.region, r.instance_id))
                .collect()
        };
        let first = durable_pass(&aws, &cfg, &durable).await;
        assert_eq!(
            first.summary.by_status[&Status::Onboarded],
            4,
            "{}",
            first.to_json()
        );
        assert_eq!(db.records().len(), 6);

        aws.set_state("i-terminated", InstanceState::Terminated);
        aws.set_tags("i-untagged", &[]);
        // eu-west-1 cannot be observed: its instance may be gone or not, its record stays.
        aws.set_state("i-eu", InstanceState::Terminated);
        aws.fail(
            "ec2:DescribeInstances",
            "eu-west-1",
            "UnauthorizedOperation",
        );
        let second = durable_pass(&aws, &cfg, &durable).await;
        assert_eq!(second.errors.len(), 1, "{}", second.to_json());
        assert_eq!(
            recorded(db.records()),
            [
                "123456789012/ap-south-1/i-other-region",
                "123456789012/eu-west-1/i-eu",
                "123456789012/us-east-1/i-stays",
                "999999999999/us-east-1/i-other-account",
            ]
        );

        // No region observed at all: nothing is removed.
        aws.fail(
            "ec2:DescribeInstances",
            "us-east-1",
            "UnauthorizedOperation",
        );
        durable_pass(&aws, &cfg, &durable).await;
        assert_eq!(db.records().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_command_is_tracked_even_when_no_new_command_can_be_sent() {
        use crate::ports::{CommandRequest, Ssm, LINUX_DOCUMENT};
        use crate::reconcile::onboard::{install_agents, InstallWork};
        let aws = ready_account(&["i-1".to_string(), "i-2".to_string()]);
        let cfg = one_region_config();
        let token = MutationToken::mint();
        // An earlier process sent the install to i-1 and stopped.
        let earlier = CommandRequest {
            document: LINUX_DOCUMENT,
            instance_ids: vec!["i-1".into()],
            script: "true".into(),
            execution_timeout: Duration::from_secs(60),
            delivery_timeout: Duration::from_secs(60),
            comment: "arc-onboard run earlier".into(),
        };
        let command = aws
            .send_command(&token, "us-east-1", &earlier)
            .await
            .unwrap();
        let regions = ["us-east-1".to_string()];
        let plan = observe_and_plan(&aws, &cfg, &regions).await;
        let arm = FakeArm::default();
        arm.fail_token(crate::model::AzureError::Token {
            status: 503,
            code: "temporarily_unavailable".into(),
            description: "down".into(),
        });
        let work = InstallWork {
            ready: &[1],
            resume: vec![("us-east-1".into(), command, vec![0])],
            journal: None,
        };
        let install = InstallOptions {
            verify_timeout: Duration::from_secs(2),
            ..InstallOptions::default()
        };
        let mut out = AccountOutcome::start(&plan);
        install_agents(&token, (&plan, &mut out), work, &aws, &arm, &install).await;
        let (resumed, new) = (&out.instances[0], &out.instances[1]);
        assert_eq!(new.status, Status::Failed);
        assert!(
            new.detail.contains("cannot get an Azure access token"),
            "{}",
            new.detail
        );
        // The resumed command was still tracked to its end (its script succeeded; Azure could not be read).
        assert!(
            resumed.detail.contains("install script succeeded"),
            "{}",
            resumed.detail
        );
        assert_eq!(aws.commands().len(), 1, "nothing new was sent");
    }

    /// (region, document, instance ids) of commands.
    fn sent(commands: &[crate::fake::FakeCommand]) -> Vec<(String, &'static str, Vec<String>)> {
        commands
            .iter()
            .map(|c| {
                (
                    c.region.clone(),
                    c.request.document,
                    c.request.instance_ids.clone(),
                )
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_executor_sends_exactly_the_planned_batches_with_their_documents_and_parameters() {
        let sha = "3333333333333333333333333333333333333333333333333333333333333333";
        let ids: Vec<String> = (0..55).map(|n| format!("i-{n:03}")).collect();
        let aws = ready_account(&ids);
        for id in ["i-win1", "i-win2"] {
            aws.add_instance(
                "us-east-1",
                id,
                Platform::Windows,
                InstanceState::Running,
                Some("AppProfile"),
                &[],
            );
        }
        let cfg = Config::parse(
            &format!(
                "[aws]\nregions=[\"us-east-1\"]\n[onboarding]\nconnectivity = \"proxy\"\n\
                 proxy_url = \"http://10.0.0.5:3128\"\ninstaller_sha256_linux = \"{sha}\"\n{AZURE}"
            ),
            Path::new("t"),
        )
        .unwrap();
        let arm = std::sync::Arc::new(FakeArm::default());
        aws.link_arm(arm.clone(), "aws_123456789012");
        let planned = pass_with(&aws, &arm, &cfg, None).await.unwrap();
        let batches = planned.accounts[0].batches.clone();
        assert_eq!(batches.len(), 3, "50 + 5 Linux, 2 Windows");
        let expected: Vec<(String, &'static str, Vec<String>)> = batches
            .iter()
            .map(|b| {
                (
                    b.region.clone(),
                    b.spec.document.as_str(),
                    b.instance_ids.clone(),
                )
            })
            .collect();

        let report = pass_with(&aws, &arm, &cfg, Some(&MutationToken::mint()))
            .await
            .unwrap();
        assert_eq!(
            report.accounts[0].batches, batches,
            "run executes the plan shown"
        );
        // Each planned batch is one key exchange and one install, with the planned ids and document.
        assert_eq!(sent(&aws.key_exchanges()), expected);
        assert_eq!(sent(&aws.commands()), expected);
        for (command, batch) in aws.commands().iter().zip(&batches) {
            let value = |name: &str| command.script_value(name).unwrap_or_default();
            let spec = &batch.spec;
            assert_eq!(value("ARC_INSTALLER_URL"), spec.installer_url);
            assert_eq!(
                value("ARC_INSTALLER_SHA256"),
                spec.installer_sha256.clone().unwrap_or_default()
            );
            assert_eq!(value("ARC_PROXY_URL"), "http://10.0.0.5:3128");
            assert_eq!(value("ARC_LOCATION"), spec.azure_location);
            assert_eq!(value("ARC_RESOURCE_GROUP"), spec.resource_group);
            for (k, v) in &spec.tags {
                assert!(
                    value("ARC_TAGS").contains(&format!("{k}={v}")),
                    "{k}={v} in {}",
                    value("ARC_TAGS")
                );
            }
        }
        assert_eq!(
            aws.commands()[0]
                .script_value("ARC_INSTALLER_SHA256")
                .as_deref(),
            Some(sha)
        );
        assert!(report
            .instances
            .iter()
            .all(|r| r.status == Status::Onboarded));
    }

    #[tokio::test(start_paused = true)]
    async fn a_planned_row_that_is_not_ready_is_left_out_of_its_batch_and_none_is_added() {
        use crate::reconcile::onboard::{install_agents, InstallWork};
        let ids: Vec<String> = (1..=3).map(|n| format!("i-{n}")).collect();
        let aws = ready_account(&ids);
        let arm = std::sync::Arc::new(FakeArm::default());
        aws.link_arm(arm.clone(), "aws_123456789012");
        let cfg = one_region_config();
        let plan = observe_and_plan(&aws, &cfg, &["us-east-1".to_string()]).await;
        assert_eq!(plan.batches.len(), 1);
        assert_eq!(plan.batches[0].instance_ids, ids);
        let token = MutationToken::mint();
        let mut out = AccountOutcome::start(&plan);
        // Rows 0 and 2 are ready; row 1 is not (it left SSM meanwhile, say).
        let work = InstallWork {
            ready: &[0, 2],
            resume: Vec::new(),
            journal: None,
        };
        let install = InstallOptions {
            verify_timeout: Duration::from_secs(2),
            ..InstallOptions::default()
        };
        install_agents(&token, (&plan, &mut out), work, &aws, &*arm, &install).await;
        assert_eq!(
            sent(&aws.commands()),
            [(
                "us-east-1".to_string(),
                "AWS-RunShellScript",
                vec!["i-1".to_string(), "i-3".to_string()]
            )]
        );
        assert_eq!(out.instances[1].status, Status::Planned, "not touched");

        // A ready row the plan put in no batch is not sent: it fails, saying so.
        let mut unbatched = plan.clone();
        unbatched.batches.clear();
        let mut out = AccountOutcome::start(&unbatched);
        let before = aws.commands().len();
        let work = InstallWork {
            ready: &[0],
            resume: Vec::new(),
            journal: None,
        };
        install_agents(&token, (&unbatched, &mut out), work, &aws, &*arm, &install).await;
        assert_eq!(aws.commands().len(), before);
        assert_eq!(
            out.instances[0].failure.as_ref().unwrap().code,
            "not-batched"
        );
    }

    #[tokio::test]
    async fn the_iam_pass_ends_each_row_as_the_planner_said() {
        let aws = fleet();
        let cfg = config("");
        let regions = ["us-east-1".to_string(), "eu-west-1".to_string()];
        let plan = observe_and_plan(&aws, &cfg, &regions).await.scoped(Scope {
            iam: true,
            install: false,
        });
        assert!(plan.batches.is_empty());
        let arm = std::sync::Arc::new(FakeArm::default());
        let ports = AwsPorts {
            sts: &aws,
            ec2: &aws,
            iam: &aws,
            ssm: &aws,
            counter: &aws.calls,
        };
        let opts = PassOptions {
            apply: opts(),
            scope: Scope {
                iam: true,
                install: false,
            },
            ..PassOptions::default()
        };
        let token = MutationToken::mint();
        let ctx = Exec {
            token: &token,
            arm: &*arm,
            opts: &opts,
            durable: None,
            regions: &regions,
            records: &HashMap::new(),
            now: SystemTime::now(),
        };
        let out = execute(&ctx, &plan, &ports).await;
        let mut iam_rows = 0;
        for (row, o) in plan.instances.iter().zip(&out.instances) {
            assert!(!row.runs_agent_script(), "{}", row.instance_id);
            if row.actions.iter().any(|a| a.is_iam()) && row.status != Status::NotRunning {
                iam_rows += 1;
                assert_eq!(row.status, Status::WaitingForSsm, "{}", row.instance_id);
                assert!(
                    row.detail.ends_with(
                        "this pass makes the IAM changes, the onboarding pass installs the agent"
                    ),
                    "{}",
                    row.detail
                );
            }
            // What the row ends as is the planner's status and detail, not a rewrite.
            assert_eq!(
                (o.status, &o.detail),
                (row.status, &row.detail),
                "{}",
                row.instance_id
            );
        }
        assert!(iam_rows >= 3, "the fleet has rows with IAM changes");
        assert_eq!(aws.commands().len() + aws.key_exchanges().len(), 0);
    }
}
