//! Event-driven onboarding: the daemon long-polls the SQS queue EventBridge feeds, and onboards each
//! instance an event names at once instead of at the next scheduled pass.
//!
//! Three loops share one task:
//! - **intake**: `ReceiveMessage` (20 s long polls, 10 messages; after a full answer, up to 100 messages
//!   are taken at once, and their regions prepared in parallel); each instance named by an in-scope event
//!   is observed by id (the tag filter still decides), planned by the same pure planner, given its IAM at
//!   once where `[iam]` allows, and recorded in the state file; only then is its message deleted. The
//!   intake and the installer read IAM through [`IamCache`]: an account's profiles, roles and their
//!   policies are reused for [`EVENT_IAM_TTL`], so a burst costs a few IAM chains, not one per batch.
//! - **watcher**: instances not Online in SSM yet are polled together per account and region with
//!   `DescribeInstanceInformation` filtered by their ids, every [`poll_interval`] (1 s at first, backing off
//!   to 30 s; in rounds, see [`POLL_ALIGN`]), for at most [`EventOptions::watch_bound`] (15 minutes by
//!   default); after that the periodic onboarding pass takes over.
//! - **installer**: instances that come Online are batched per account and region (every full 50 go at
//!   once; the rest after [`EventOptions::batch_quiet`] without a newcomer, or only
//!   [`EventOptions::batch_linger`] when nothing else is being watched there, and at the latest
//!   [`EventOptions::batch_max_wait`] after the first) and installed with the pass's own install code,
//!   then verified in Azure.
//!
//! # Guarantees
//! - A message is deleted only after its instance is recorded in the state file; a crash before that
//!   means SQS redelivers it. Malformed messages, other events, and accounts, regions or instances out of
//!   scope are deleted, counted in `arc_onboard_events_total{result}` and logged; none is fatal.
//! - Never a second install while one is in flight: an instance already being watched or installed here
//!   is not taken again; the planner sees commands in flight in the state file (journalled before they
//!   are sent) and in SSM; and an event install shares the lease of its account and region
//!   ([`Leases`]) from planning to its end, while a scheduled pass holds its account's alone, so a pass
//!   and an event install never plan the same instance at once.
//! - At most [`EventOptions::max_installs`] event installs run at once; batches beyond it wait on the
//!   tracker (and keep gathering instances) until one ends.
//! - A queue that cannot be read (deleted, access denied) is reported by `/healthz` and retried with
//!   backoff; the schedules keep running.
//!
//! # Caveats
//! - An event install waits for a scheduled pass of its own account in progress to end (and that pass
//!   waits for the account's event installs in progress); other accounts' installs and passes do not
//!   wait. During a long onboarding pass of an account, its events are received and given their IAM at
//!   once, but installed after the pass.
//!
//! # Accounts
//! Every account in scope (`[aws.accounts]`, `--shard`) is handled, each in its own account: the list
//! and the entered accounts' clients live in [`EventAccounts`]. What becomes of a message by its account:
//! - in scope and this daemon's shard: handled in that account (entered once; `sts:AssumeRole` for a
//!   member account);
//! - in scope but another shard's: left on the queue, untouched, for the daemon of that shard (counted
//!   `other-shard`); it comes back when its visibility timeout ends;
//! - excluded, or outside the source: deleted (`out-of-scope`);
//! - not in the list while the organization could not be listed: left for redelivery (`retry`);
//! - its member role refused (access denied, no such role): deleted (`account-unreachable`) and logged
//!   with the AWS code; the scheduled passes report the account in `errors[]` and onboard the instance
//!   once the role can be assumed. Other failures to enter (throttling, network) leave it (`retry`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::Config;
use crate::config::Shard;
use crate::daemon::event_accounts::{is_unreachable, EventAccounts, Judgement, ScopeTimes};
use crate::daemon::event_message::{in_scope, parse, result, EventKind, Parsed};
use crate::daemon::iam_cache::{CachedIam, IamCache, EVENT_IAM_TTL};
use crate::daemon::metrics::Metrics;
use crate::model::PingStatus;
use crate::ports::accounts::{AccountClients, Accounts, Caller, KnownAccount};
use crate::ports::memory::{unix, InstanceRecord};
use crate::ports::{Arm, Ec2, Iam, MutationToken, Queue, QueueMessage, Ssm, Sts};
use crate::reconcile::leases::Leases;
use crate::reconcile::observe::{
    observe_arc, observe_elsewhere, observe_instances, AccountObservation, ArcObservation,
};
use crate::reconcile::pass::{execute_observed, AwsPorts, Durable, PassOptions, Scope};
use crate::reconcile::plan::{AccountPlan, EventStage, Status};

/// The most ids one `DescribeInstanceInformation` call (and one `SendCommand`) carries here.
const IDS_PER_CALL: usize = 50;
/// The most messages taken from the queue for one intake (ten receives of ten).
const INTAKE_MAX: usize = 100;
/// A registration poll round of an account and region also asks about the instances due within this
/// long, so that the instances of a burst (taken in by many intakes) are asked about together, in one
/// round a second, instead of in a round per intake.
pub const POLL_ALIGN: Duration = Duration::from_secs(1);
/// How many (account, region) groups of one intake are prepared at once.
const INTAKE_CONCURRENCY: usize = 4;
/// The longest the deletion timer sleeps: pending deletions that could not be handled are retried then.
const DELETION_RECHECK: Duration = Duration::from_secs(60);

/// Pacing and bounds of the event path.
#[derive(Debug, Clone)]
pub struct EventOptions {
    /// `WaitTimeSeconds` of each `ReceiveMessage` (SQS allows at most 20 s).
    pub receive_wait: Duration,
    /// `MaxNumberOfMessages` of each `ReceiveMessage` (SQS allows at most 10).
    pub receive_max: i32,
    /// How long an instance is watched for SSM registration before it is left to the periodic passes.
    /// The SSM agent retries registration on its own backoff (5 minutes, growing to an hour), so a longer
    /// watch would mostly poll for nothing.
    pub watch_bound: Duration,
    /// An install batch closes once no instance has joined it for this long.
    pub batch_quiet: Duration,
    /// An install batch closes at the latest this long after its first instance joined: during a burst
    /// of fewer than 10 instances a second per region, batches close here, smaller than 50. The event
    /// path's bound on SendCommand (1.5 times the minimum) leaves room to trade a few more commands for the
    /// first instances' wait: 5 s gives batches of about 40 at 8 a second (1.25 times the minimum) where
    /// 10 s gave full ones and half of them waited over 3 s.
    pub batch_max_wait: Duration,
    /// With nothing else being watched for SSM in its account and region, an install batch closes once
    /// no instance has joined it for this long (short: the intake may be handing in more of a burst).
    pub batch_linger: Duration,
    /// Longest pause between two attempts to read a queue that cannot be read.
    pub queue_retry_max: Duration,
    /// Install and verification bounds, as the daemon's passes use them.
    pub pass: PassOptions,
    /// On shutdown, how long event installs in progress may go on tracking their commands.
    pub shutdown_grace: Duration,
    /// The daemon's `--shard`: events of the other shards' accounts are left on the queue for them.
    pub shard: Option<Shard>,
    /// When the accounts in scope are listed again, and how long a refused role is remembered.
    pub scope: ScopeTimes,
    /// The most event installs (one batch of up to 50 instances each) running at once
    /// ([`EVENT_INSTALLS_MAX`] by default); more batches wait for one to end.
    pub max_installs: usize,
}

/// How many event installs run at once by default: 32 batches, up to 1,600 instances tracked together,
/// while each batch costs a few SSM calls per poll.
pub const EVENT_INSTALLS_MAX: usize = 32;

impl Default for EventOptions {
    fn default() -> Self {
        EventOptions {
            receive_wait: Duration::from_secs(20),
            receive_max: 10,
            watch_bound: Duration::from_secs(15 * 60),
            batch_quiet: Duration::from_secs(3),
            batch_max_wait: Duration::from_secs(5),
            batch_linger: Duration::from_secs(1),
            queue_retry_max: Duration::from_secs(60),
            pass: PassOptions::default(),
            shutdown_grace: Duration::from_secs(120),
            shard: None,
            scope: ScopeTimes::default(),
            max_installs: EVENT_INSTALLS_MAX,
        }
    }
}

/// How long to wait before polling SSM again for an instance that has waited `age`: 1 s in its first
/// 30 s and 2 s up to a minute (registration usually takes seconds once the agent has credentials),
/// 10 s up to 5 minutes, then 30 s. The polls of an account and region go in rounds (see
/// [`POLL_ALIGN`]), so this is at most one round, of one call per 50 instances, a second per region.
pub fn poll_interval(age: Duration) -> Duration {
    if age < Duration::from_secs(30) {
        Duration::from_secs(1)
    } else if age < Duration::from_secs(60) {
        Duration::from_secs(2)
    } else if age < Duration::from_secs(5 * 60) {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(30)
    }
}

/// What the event path works with besides its ports.
pub struct EventContext<'a> {
    /// The configuration.
    pub config: &'a Config,
    /// The daemon's mutation token.
    pub token: &'a MutationToken,
    /// The state file and its retry policy.
    pub durable: &'a Durable<'a>,
    /// Where results, API calls and the queue's health go.
    pub metrics: &'a Metrics,
    /// Leases per (account, region): event installs share theirs, scheduled passes hold theirs alone.
    pub leases: &'a Leases,
}

/// The ports of the event path: the accounts (and through them each account's AWS ports), Azure, and
/// the queue.
pub struct EventPorts<'a, X, A, Q> {
    /// The accounts port: who the caller is, the accounts in scope, entering one.
    pub accounts: &'a X,
    /// Azure Resource Manager.
    pub arm: &'a A,
    /// The event queue.
    pub queue: &'a Q,
}

/// An instance waiting to come Online in SSM.
#[derive(Debug, Clone, Copy)]
struct Watch {
    /// When the event path took it.
    since: Instant,
    /// When to ask SSM next.
    next: Instant,
}

/// Instances Online and waiting for an install command.
#[derive(Debug, Clone)]
struct Ready {
    /// When the first joined.
    first: Instant,
    /// When the last joined.
    last: Instant,
    ids: BTreeSet<String>,
}

/// (account, region).
type Key = (String, String);
/// Ids to ask SSM about, per (account, region).
type PollWork = Vec<(Key, Vec<String>)>;

/// Which instances the event path holds, and where.
#[derive(Debug, Default)]
struct Tracker {
    watching: BTreeMap<Key, BTreeMap<String, Watch>>,
    ready: BTreeMap<Key, Ready>,
    installing: HashSet<(Key, String)>,
}

impl Tracker {
    fn in_hand(&self, key: &Key, id: &str) -> bool {
        self.watching.get(key).is_some_and(|w| w.contains_key(id))
            || self.ready.get(key).is_some_and(|r| r.ids.contains(id))
            || self.installing.contains(&(key.clone(), id.to_string()))
    }

    fn watch(&mut self, key: &Key, id: &str, now: Instant) {
        self.watching.entry(key.clone()).or_default().insert(
            id.to_string(),
            Watch {
                since: now,
                next: now + poll_interval(Duration::ZERO),
            },
        );
    }

    fn make_ready(&mut self, key: &Key, id: &str, now: Instant) {
        let batch = self.ready.entry(key.clone()).or_insert_with(|| Ready {
            first: now,
            last: now,
            ids: BTreeSet::new(),
        });
        batch.last = now;
        batch.ids.insert(id.to_string());
    }

    fn watched(&self) -> usize {
        self.watching.values().map(BTreeMap::len).sum()
    }

    fn next_poll(&self) -> Option<Instant> {
        self.watching
            .values()
            .flat_map(|w| w.values().map(|w| w.next))
            .min()
    }

    /// Per group, the ids to ask SSM about now: those due (or due within [`POLL_ALIGN`]), topped up
    /// with the group's next due ones to fill the calls they need anyway. Drops the instances past
    /// `bound`.
    fn due(&mut self, now: Instant, bound: Duration) -> (PollWork, Vec<(Key, String)>) {
        let soon = now + POLL_ALIGN;
        let mut work = Vec::new();
        let mut given_up = Vec::new();
        for (key, group) in &mut self.watching {
            group.retain(|id, w| {
                let keep = now.duration_since(w.since) <= bound;
                if !keep {
                    given_up.push((key.clone(), id.clone()));
                }
                keep
            });
            let mut by_next: Vec<(&String, &Watch)> = group.iter().collect();
            by_next.sort_by_key(|(_, w)| w.next);
            let due = by_next.iter().filter(|(_, w)| w.next <= soon).count();
            if due == 0 {
                continue;
            }
            let take = due.div_ceil(IDS_PER_CALL) * IDS_PER_CALL;
            let ids = by_next
                .iter()
                .take(take)
                .map(|(id, _)| (*id).clone())
                .collect();
            work.push((key.clone(), ids));
        }
        self.watching.retain(|_, g| !g.is_empty());
        (work, given_up)
    }

    /// Install batches that may close now, and when the next one may. Every full 50 goes at once (what
    /// is left starts a fresh window); the rest closes [`EventOptions::batch_quiet`] after its last
    /// newcomer, or [`EventOptions::batch_linger`] after it when nothing else is being watched for SSM
    /// there (the intake may be about to hand in more: a burst fills one command instead of splitting),
    /// and at the latest [`EventOptions::batch_max_wait`] after its first.
    #[cfg(test)]
    fn closable(
        &mut self,
        now: Instant,
        opts: &EventOptions,
    ) -> (Vec<(Key, Vec<String>)>, Option<Instant>) {
        self.closable_at_most(now, opts, usize::MAX)
    }

    /// At most `limit` install batches that may close now, and when the next one may (`None` when the
    /// limit left some closable: the end of a running install wakes the installer).
    fn closable_at_most(
        &mut self,
        now: Instant,
        opts: &EventOptions,
        limit: usize,
    ) -> (Vec<(Key, Vec<String>)>, Option<Instant>) {
        let mut out = Vec::new();
        let mut next: Option<Instant> = None;
        let keys: Vec<Key> = self.ready.keys().cloned().collect();
        for key in keys {
            if out.len() >= limit {
                break;
            }
            let nothing_coming = self.watching.get(&key).is_none_or(BTreeMap::is_empty);
            let batch = self.ready.get_mut(&key).expect("listed above");
            if batch.ids.len() >= IDS_PER_CALL {
                let full = batch.ids.len() / IDS_PER_CALL * IDS_PER_CALL;
                let ids: Vec<String> = batch.ids.iter().take(full).cloned().collect();
                for id in &ids {
                    batch.ids.remove(id);
                    self.installing.insert((key.clone(), id.clone()));
                }
                debug!(region = %key.1, instances = ids.len(), waited_ms = now.duration_since(batch.first).as_millis() as u64, "install batch full");
                out.push((key.clone(), ids));
                if batch.ids.is_empty() {
                    self.ready.remove(&key);
                    continue;
                }
                if out.len() >= limit {
                    // The rest waits for a free install slot (the end of a running install wakes us).
                    batch.first = now;
                    batch.last = now;
                    break;
                }
                batch.first = now;
                batch.last = now;
            }
            let batch = &self.ready[&key];
            let pause = if nothing_coming {
                opts.batch_linger
            } else {
                opts.batch_quiet
            };
            let close_at = (batch.last + pause).min(batch.first + opts.batch_max_wait);
            if close_at <= now {
                let batch = self.ready.remove(&key).expect("listed above");
                debug!(region = %key.1, instances = batch.ids.len(), waited_ms = now.duration_since(batch.first).as_millis() as u64, nothing_coming, "install batch closed");
                for id in &batch.ids {
                    self.installing.insert((key.clone(), id.clone()));
                }
                out.push((key, batch.ids.into_iter().collect()));
            } else {
                next = Some(next.map_or(close_at, |n| n.min(close_at)));
            }
        }
        (out, next)
    }
}

/// The intake's scope: the IAM changes only (installs wait for SSM registration).
const IAM_ONLY: Scope = Scope {
    iam: true,
    install: false,
};

/// The installer's and the offboarding's scope: no IAM change.
const INSTALL_ONLY: Scope = Scope {
    iam: false,
    install: true,
};

/// The event path of one daemon.
struct EventLoop<'a, X: Accounts, A, Q> {
    ctx: &'a EventContext<'a>,
    ports: &'a EventPorts<'a, X, A, Q>,
    opts: &'a EventOptions,
    accounts: EventAccounts<'a, X>,
    tracker: Mutex<Tracker>,
    /// Wakes the watcher when an instance is added.
    watch_wake: Notify,
    /// Wakes the installer when an instance is ready.
    install_wake: Notify,
    /// API calls already added to the metrics.
    flushed: Mutex<BTreeMap<String, u64>>,
    /// Wakes the deletion timer when a deletion was recorded.
    deletion_wake: Notify,
    /// Each account's IAM answers, reused for [`EVENT_IAM_TTL`] by the intake and the installer.
    iam: Mutex<HashMap<String, Arc<IamCache>>>,
}

/// Runs the event path until `shutdown` resolves; event installs in progress then get
/// [`EventOptions::shutdown_grace`] to finish (a command still in flight is in the state file, and the
/// next start's pass tracks it).
pub async fn run<X, A, Q>(
    ctx: &EventContext<'_>,
    ports: &EventPorts<'_, X, A, Q>,
    opts: &EventOptions,
    shutdown: impl Future<Output = ()>,
) where
    X: Accounts,
    A: Arm,
    Q: Queue,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let body = async {
        let Some(caller) = caller_account(ports.accounts, opts, stop_rx.clone()).await else {
            return;
        };
        let accounts = EventAccounts::new(
            ports.accounts,
            &ctx.config.aws.accounts,
            caller,
            opts.shard,
            opts.scope,
        );
        accounts.refresh(&[]).await;
        info!(shard = %opts.shard.map_or_else(|| "-".to_string(), |s| s.to_string()), "event path started");
        let event_loop = EventLoop {
            ctx,
            ports,
            opts,
            accounts,
            tracker: Mutex::new(Tracker::default()),
            watch_wake: Notify::new(),
            install_wake: Notify::new(),
            flushed: Mutex::new(BTreeMap::new()),
            deletion_wake: Notify::new(),
            iam: Mutex::new(HashMap::new()),
        };
        tokio::join!(
            event_loop.receive_loop(stop_rx.clone()),
            event_loop.watch_loop(stop_rx.clone()),
            event_loop.install_loop(stop_rx.clone()),
            event_loop.deletion_loop(stop_rx.clone()),
        );
        event_loop.flush_calls();
    };
    tokio::join!(signal, body);
}

/// An entered account's ports with `iam` (its IAM port behind the event path's cache) in place of its
/// own IAM port.
fn cached_ports<'a, E, I, S>(
    clients: &'a AccountClients<E, I, S>,
    iam: &'a CachedIam<'a, I>,
) -> AwsPorts<'a, KnownAccount, E, CachedIam<'a, I>, S> {
    AwsPorts {
        sts: &clients.sts,
        ec2: &clients.ec2,
        iam,
        ssm: &clients.ssm,
        counter: &clients.counter,
    }
}

/// Resolves once `stop` says so.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Who the credentials are, asked of STS until it answers (or shutdown).
async fn caller_account(
    accounts: &impl Accounts,
    opts: &EventOptions,
    stop: watch::Receiver<bool>,
) -> Option<Caller> {
    let mut wait = Duration::from_secs(1);
    loop {
        match accounts.caller().await {
            Ok(caller) => return Some(caller),
            Err(e) => {
                warn!(error = %e, retry_in_s = wait.as_secs(), "event path: cannot identify the account");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stopped(stop.clone()) => return None,
                }
                wait = (wait * 2).min(opts.queue_retry_max);
            }
        }
    }
}

impl<X, A, Q> EventLoop<'_, X, A, Q>
where
    X: Accounts,
    A: Arm,
    Q: Queue,
{
    /// Plans and executes one stage of the event path on an observation (the planner's rows for the stage,
    /// in `scope`, as of `now`): no wait for SSM after IAM (this path watches registration itself), and a correlation id
    /// of its own for any command it sends.
    async fn execute_stage<T: Sts, E: Ec2, I: Iam, S: Ssm>(
        &self,
        obs: &AccountObservation,
        aws: &AwsPorts<'_, T, E, I, S>,
        scope: Scope,
        stage: EventStage<'_>,
        now: SystemTime,
    ) -> AccountPlan {
        let mut opts = self.opts.pass.clone();
        opts.apply.wait_for_ssm = Duration::ZERO;
        opts.scope = scope;
        opts.install.correlation_id = uuid::Uuid::new_v4().to_string();
        execute_observed(
            self.ctx.config,
            obs,
            aws,
            self.ports.arm,
            self.ctx.token,
            &opts,
            self.ctx.durable,
            now,
            stage,
        )
        .await
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the calls made since the last flush to the metrics.
    fn flush_calls(&self) {
        let now = self.accounts.port().api_calls();
        let mut flushed = self.flushed.lock().unwrap_or_else(|e| e.into_inner());
        let delta: BTreeMap<String, u64> = now
            .iter()
            .map(|(op, n)| (op.clone(), n - flushed.get(op).copied().unwrap_or(0)))
            .collect();
        self.ctx.metrics.add_api_calls(&delta);
        *flushed = now;
    }

    // ----- intake ------------------------------------------------------------------------------------

    async fn receive_loop(&self, stop: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        loop {
            let received = tokio::select! {
                r = self.ports.queue.receive(self.opts.receive_wait, self.opts.receive_max) => r,
                () = stopped(stop.clone()) => return,
            };
            match received {
                Ok(mut messages) => {
                    if failures > 0 {
                        info!("the event queue can be read again");
                        self.ctx.metrics.set_queue_problem(None);
                    }
                    failures = 0;
                    // A full answer means more are waiting: take them too (without waiting), so that a
                    // burst is observed and installed in fewer, larger calls.
                    let mut last = messages.len();
                    while last >= self.opts.receive_max as usize && messages.len() < INTAKE_MAX {
                        match self
                            .ports
                            .queue
                            .receive(Duration::ZERO, self.opts.receive_max)
                            .await
                        {
                            Ok(more) => {
                                last = more.len();
                                messages.extend(more);
                            }
                            Err(_) => break,
                        }
                    }
                    if !messages.is_empty() {
                        self.intake(messages).await;
                    }
                }
                Err(e) => {
                    failures += 1;
                    let wait = Duration::from_secs(1)
                        .saturating_mul(2u32.saturating_pow(failures.min(16) - 1))
                        .min(self.opts.queue_retry_max);
                    warn!(error = %e, retry_in_s = wait.as_secs(), "cannot read the event queue; the schedules go on");
                    self.ctx
                        .metrics
                        .set_queue_problem(Some(format!("{}: {}", e.code, e.message)));
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stopped(stop.clone()) => return,
                    }
                }
            }
            self.flush_calls();
        }
    }

    /// Handles one batch of messages: sorts them, prepares the in-scope instances, deletes what is done.
    async fn intake(&self, messages: Vec<QueueMessage>) {
        let regions = &self.ctx.config.aws.regions;
        let mut delete: Vec<String> = Vec::new();
        let mut groups: BTreeMap<Key, Vec<(String, QueueMessage)>> = BTreeMap::new();
        let mut gone: BTreeMap<Key, Vec<(String, QueueMessage)>> = BTreeMap::new();
        let parsed: Vec<(QueueMessage, Parsed)> = messages
            .into_iter()
            .map(|m| {
                let p = parse(&m.body);
                (m, p)
            })
            .collect();
        let named: Vec<&str> = parsed
            .iter()
            .filter_map(|(_, p)| match p {
                Parsed::Instance(ev) => Some(ev.account.as_str()),
                _ => None,
            })
            .collect();
        self.accounts.refresh(&named).await;
        for (m, parsed) in parsed {
            let id = m.message_id.clone();
            match parsed {
                Parsed::Malformed(why) => {
                    warn!(message.id = %id, %why, "malformed event message; deleted");
                    self.ctx.metrics.record_event(result::MALFORMED);
                    delete.push(m.receipt_handle);
                }
                Parsed::Ignored(why) => {
                    debug!(message.id = %id, %why, "event of another kind; deleted");
                    self.ctx.metrics.record_event(result::IGNORED);
                    delete.push(m.receipt_handle);
                }
                Parsed::Instance(ev) => {
                    let judgement = self.accounts.judge(&ev.account).await;
                    match judgement {
                        Judgement::Mine | Judgement::Out => {}
                        Judgement::OtherShard => {
                            debug!(message.id = %id, instance.id = %ev.instance_id, account = %ev.account, "event of another shard's account; left on the queue for it");
                            self.ctx.metrics.record_event(result::OTHER_SHARD);
                            continue;
                        }
                        Judgement::Unconfirmed => {
                            warn!(message.id = %id, instance.id = %ev.instance_id, account = %ev.account, "event of an account the organization's listing could not confirm; left on the queue to be redelivered");
                            self.ctx.metrics.record_event(result::RETRY);
                            continue;
                        }
                    }
                    let mine: BTreeSet<String> = match judgement {
                        Judgement::Mine => [ev.account.clone()].into(),
                        _ => BTreeSet::new(),
                    };
                    if let Err(why) = in_scope(&ev, &mine, regions) {
                        info!(message.id = %id, instance.id = %ev.instance_id, account = %ev.account, region = %ev.region, %why, "event out of scope; deleted");
                        self.ctx.metrics.record_event(result::OUT_OF_SCOPE);
                        delete.push(m.receipt_handle);
                        continue;
                    }
                    let key = (ev.account.clone(), ev.region.clone());
                    if ev.kind == EventKind::Terminated {
                        gone.entry(key).or_default().push((ev.instance_id, m));
                        continue;
                    }
                    if self.tracker().in_hand(&key, &ev.instance_id) {
                        info!(message.id = %id, instance.id = %ev.instance_id, region = %ev.region, "event for an instance already being onboarded; deleted");
                        self.ctx.metrics.record_event(result::ACCEPTED);
                        delete.push(m.receipt_handle);
                        continue;
                    }
                    groups.entry(key).or_default().push((ev.instance_id, m));
                }
            }
        }
        let groups = groups
            .into_iter()
            .map(|(key, items)| (key, items, false))
            .chain(gone.into_iter().map(|(key, items)| (key, items, true)));
        let prepared: Vec<_> = futures::stream::iter(groups)
            .map(|(key, items, gone)| async move {
                let ids: Vec<String> = items
                    .iter()
                    .map(|(id, _)| id.clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let span = info_span!("event_intake", account = %key.0, region = %key.1, instances = ids.len(), gone);
                let outcome = if gone {
                    let outcome = self.offboard(&key, &ids).instrument(span).await;
                    // A deletion left for later is due sooner than the timer may think.
                    self.deletion_wake.notify_one();
                    outcome
                } else {
                    self.prepare(&key, &ids).instrument(span).await
                };
                (key, items, outcome)
            })
            .buffer_unordered(INTAKE_CONCURRENCY)
            .collect()
            .await;
        for (key, items, outcome) in prepared {
            match outcome {
                Ok(present) => {
                    for (id, m) in items {
                        if present.contains(&id) {
                            self.ctx.metrics.record_event(result::ACCEPTED);
                        } else {
                            info!(message.id = %m.message_id, instance.id = %id, region = %key.1, "event names an instance out of scope (tag filter, terminated or unknown, or gone without an Arc machine of ours); deleted");
                            self.ctx.metrics.record_event(result::OUT_OF_SCOPE);
                        }
                        delete.push(m.receipt_handle);
                    }
                }
                Err(Unhandled::Unreachable(e)) => {
                    for (id, m) in items {
                        warn!(message.id = %m.message_id, instance.id = %id, account = %key.0, region = %key.1, operation = %e.operation, code = %e.code,
                            "event of an account whose role cannot be assumed; deleted (the scheduled passes report the account and take the instance once the role works)");
                        self.ctx.metrics.record_event(result::ACCOUNT_UNREACHABLE);
                        delete.push(m.receipt_handle);
                    }
                }
                Err(Unhandled::NotNow(why)) => {
                    for (id, m) in items {
                        warn!(message.id = %m.message_id, instance.id = %id, account = %key.0, region = %key.1, %why, "event not handled now; left on the queue to be redelivered");
                        self.ctx.metrics.record_event(result::RETRY);
                    }
                }
            }
        }
        if delete.is_empty() {
            return;
        }
        match self.ports.queue.delete(self.ctx.token, &delete).await {
            Ok(failed) if failed.is_empty() => {}
            Ok(failed) => {
                warn!(
                    messages = failed.len(),
                    "some event messages were not deleted; their redelivery is harmless"
                )
            }
            Err(e) => {
                warn!(error = %e, "cannot delete event messages; their redelivery is harmless")
            }
        }
    }

    /// Adds to `obs` the Arc machines Resource Graph shows for its instances outside our resource group.
    async fn elsewhere(&self, account: &str, obs: &mut AccountObservation) {
        if let Some(az) = &self.ctx.config.azure {
            let rg = az.resource_group_for(account);
            obs.elsewhere = observe_elsewhere(self.ports.arm, &az.subscription_id, &rg, obs).await;
        }
    }

    /// The account's IAM answers of the last [`EVENT_IAM_TTL`].
    fn iam_cache(&self, account: &str) -> Arc<IamCache> {
        self.iam
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(account.to_string())
            .or_insert_with(|| Arc::new(IamCache::new(EVENT_IAM_TTL)))
            .clone()
    }

    /// What Azure says about the account's Arc machines (two calls).
    async fn arc(&self, account: &str) -> ArcObservation {
        match &self.ctx.config.azure {
            Some(az) => observe_arc(self.ports.arm, &az.resource_group_for(account)).await,
            None => ArcObservation::NotConfigured,
        }
    }

    /// Enters the account (once; a member's role is assumed), or says why its events cannot be handled.
    async fn enter(
        &self,
        account: &str,
    ) -> Result<std::sync::Arc<crate::ports::accounts::Entered<X>>, Unhandled> {
        self.accounts.enter(account).await.map_err(|e| {
            if is_unreachable(&e) {
                Unhandled::Unreachable(e)
            } else {
                Unhandled::NotNow(format!(
                    "cannot enter the account: {} {}: {}",
                    e.operation, e.code, e.message
                ))
            }
        })
    }

    /// Observes the instances, gives them their IAM where `[iam]` allows, records them in the state file
    /// and hands those that need the agent to the watcher or the installer. Returns the instances that
    /// are in scope (the others were filtered out by the tag filter, or are terminated or unknown).
    async fn prepare(&self, key: &Key, ids: &[String]) -> Result<BTreeSet<String>, Unhandled> {
        let (account, region) = key;
        let clients = self.enter(account).await?;
        let cache = self.iam_cache(account);
        let iam = CachedIam::new(&clients.iam, &cache);
        let aws = &cached_ports(&clients, &iam);
        let arc = self.arc(account).await;
        let window = self.opts.pass.install.in_flight_window();
        let mut obs = observe_instances(
            account,
            region,
            ids,
            self.ctx.config,
            (aws.ec2, aws.iam, aws.ssm),
            window,
            arc,
        )
        .await;
        self.elsewhere(account, &mut obs).await;
        if let Some(e) = obs.regions.first().and_then(|r| r.error.as_ref()) {
            return Err(Unhandled::NotNow(e.to_string()));
        }
        let now = SystemTime::now();
        let plan = self
            .execute_stage(&obs, aws, IAM_ONLY, EventStage::Intake, now)
            .await;
        // The rows are the planner's: those left waiting for the agent already say that this path
        // follows them (queued when Online in SSM, watched otherwise).
        let mut follow: Vec<(String, bool)> = Vec::new();
        for row in &plan.instances {
            if row.status == Status::WaitingForSsm
                && row.state == crate::model::InstanceState::Running
            {
                let online = row.ssm_ping == Some(PingStatus::Online);
                follow.push((row.instance_id.clone(), online));
            }
            info!(instance.id = %row.instance_id, status = %row.status, detail = %row.detail, "event: instance observed");
        }
        record_or_redeliver(self.ctx.durable, &plan, now).await?;
        let present: BTreeSet<String> = plan
            .instances
            .iter()
            .map(|r| r.instance_id.clone())
            .collect();
        if !follow.is_empty() {
            let now = Instant::now();
            let mut tracker = self.tracker();
            for (id, online) in follow {
                if online {
                    tracker.make_ready(key, &id, now);
                } else {
                    tracker.watch(key, &id, now);
                }
            }
            self.ctx.metrics.set_watched(tracker.watched());
            drop(tracker);
            self.watch_wake.notify_one();
            self.install_wake.notify_one();
        }
        Ok(present)
    }

    // ----- deletions of gone instances' machines -------------------------------------------------------

    /// Handles instances that are gone (a `shutting-down` or `terminated` event, or a pending deletion
    /// that came due): observes them by id (and which of our Arc machines they leave), plans, deletes the
    /// machines whose `delete_after` has passed and remembers the others in the state file. Returns the
    /// instances that have an Arc machine of ours.
    async fn offboard(&self, key: &Key, ids: &[String]) -> Result<BTreeSet<String>, Unhandled> {
        let (account, region) = key;
        let clients = self.enter(account).await?;
        let aws = &clients.ports();
        let arc = self.arc(account).await;
        if let ArcObservation::Unavailable(why) = &arc {
            return Err(Unhandled::NotNow(format!("Azure: {why}")));
        }
        let obs = observe_instances(
            account,
            region,
            ids,
            self.ctx.config,
            (aws.ec2, aws.iam, aws.ssm),
            self.opts.pass.install.in_flight_window(),
            arc,
        )
        .await;
        if let Some(e) = obs.regions.first().and_then(|r| r.error.as_ref()) {
            return Err(Unhandled::NotNow(e.to_string()));
        }
        if let Some((_, e)) = obs.gone.errors.first() {
            return Err(Unhandled::NotNow(e.to_string()));
        }
        let now = SystemTime::now();
        let plan = self
            .execute_stage(&obs, aws, INSTALL_ONLY, EventStage::Offboard(ids), now)
            .await;
        for row in &plan.instances {
            info!(instance.id = %row.instance_id, status = %row.status, detail = %row.detail, "event: instance gone");
            self.ctx.metrics.record_deletion(row.status);
        }
        record_or_redeliver(self.ctx.durable, &plan, now).await?;
        let ours: BTreeSet<String> = plan
            .instances
            .iter()
            .map(|r| r.instance_id.clone())
            .collect();
        // Pending deletions of these instances that no longer have a machine of ours to delete.
        let settled: Vec<(String, String)> = ids
            .iter()
            .filter(|id| !ours.contains(*id))
            .map(|id| (region.clone(), id.clone()))
            .collect();
        if !settled.is_empty() {
            if let Err(e) = self
                .ctx
                .durable
                .memory
                .record_deletions(account, Vec::new(), settled, Vec::new())
                .await
            {
                warn!(error = %crate::error::chain(&e), "cannot forget settled deletions in the state file");
            }
        }
        Ok(ours)
    }

    /// Deletes the machines of gone instances as their `delete_after` comes due: the pending deletions
    /// are the state file's (recorded by events and by the scheduled passes), so they survive restarts.
    async fn deletion_loop(&self, stop: watch::Receiver<bool>) {
        loop {
            let now = SystemTime::now();
            let pending = match self.ctx.durable.memory.deletions().await {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %crate::error::chain(&e), "cannot read the pending deletions");
                    Vec::new()
                }
            };
            let (due, later): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|d| d.delete_at <= unix(now));
            let mut by_key: BTreeMap<Key, Vec<String>> = BTreeMap::new();
            for d in due {
                by_key
                    .entry((d.account_id, d.region))
                    .or_default()
                    .push(d.instance_id);
            }
            for (key, ids) in by_key {
                let span = info_span!("deletion_due", account = %key.0, region = %key.1, instances = ids.len());
                if let Err(
                    Unhandled::NotNow(why)
                    | Unhandled::Unreachable(crate::model::AwsError { message: why, .. }),
                ) = self.offboard(&key, &ids).instrument(span).await
                {
                    warn!(account = %key.0, region = %key.1, %why, "pending deletions not handled now; retried later");
                }
            }
            self.flush_calls();
            let next = later
                .iter()
                .map(|d| d.delete_at - unix(SystemTime::now()))
                .min()
                .map_or(DELETION_RECHECK, |secs| {
                    Duration::from_secs(secs.max(1) as u64).min(DELETION_RECHECK)
                });
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                () = self.deletion_wake.notified() => {}
                () = stopped(stop.clone()) => return,
            }
        }
    }

    // ----- watcher -----------------------------------------------------------------------------------

    async fn watch_loop(&self, stop: watch::Receiver<bool>) {
        loop {
            let next = self.tracker().next_poll();
            tokio::select! {
                () = async {
                    match next {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
                () = self.watch_wake.notified() => continue,
                () = stopped(stop.clone()) => return,
            }
            self.poll_due().await;
            self.flush_calls();
        }
    }

    /// Asks SSM about the instances due, per account and region; moves those Online to the installer.
    async fn poll_due(&self) {
        let now = Instant::now();
        let (work, given_up) = self.tracker().due(now, self.opts.watch_bound);
        for ((account, region), id) in &given_up {
            info!(instance.id = %id, %account, %region, bound_s = self.opts.watch_bound.as_secs(),
                "not Online in SSM within the watch bound; the periodic onboarding pass takes over");
        }
        let mut any_ready = false;
        for (key, ids) in work {
            let answer = match self.accounts.entered(&key.0) {
                Some(clients) => {
                    clients
                        .ssm
                        .describe_instance_information(&key.1, &ids)
                        .await
                }
                None => Err(crate::model::AwsError::from_code(
                    "sts:AssumeRole",
                    "NotEntered",
                    "the account is not entered",
                )),
            };
            let now = Instant::now();
            let mut tracker = self.tracker();
            let online: HashSet<String> = match &answer {
                Ok(list) => list
                    .iter()
                    .filter(|s| s.ping == PingStatus::Online)
                    .map(|s| s.instance_id.clone())
                    .collect(),
                Err(e) => {
                    warn!(region = %key.1, error = %e, "cannot ask SSM about the instances waiting for it");
                    HashSet::new()
                }
            };
            let mut became_ready = Vec::new();
            if let Some(group) = tracker.watching.get_mut(&key) {
                for id in &ids {
                    if online.contains(id) {
                        if let Some(w) = group.remove(id) {
                            debug!(instance.id = %id, region = %key.1, watched_ms = now.duration_since(w.since).as_millis() as u64, "Online in SSM");
                        }
                        became_ready.push(id.clone());
                    } else if let Some(w) = group.get_mut(id) {
                        let mut wait = poll_interval(now.duration_since(w.since));
                        if answer.is_err() {
                            wait = wait.max(Duration::from_secs(5));
                        }
                        w.next = now + wait;
                    }
                }
            }
            for id in &became_ready {
                tracker.make_ready(&key, id, now);
                any_ready = true;
            }
            tracker.watching.retain(|_, g| !g.is_empty());
        }
        self.ctx.metrics.set_watched(self.tracker().watched());
        if any_ready {
            self.install_wake.notify_one();
        }
    }

    // ----- installer ---------------------------------------------------------------------------------

    async fn install_loop(&self, stop: watch::Receiver<bool>) {
        let mut running = FuturesUnordered::new();
        loop {
            let free = self.opts.max_installs.saturating_sub(running.len());
            let (batches, next) = if free == 0 {
                (Vec::new(), None)
            } else {
                self.tracker()
                    .closable_at_most(Instant::now(), self.opts, free)
            };
            for (key, ids) in batches {
                running.push(self.install(key, ids));
            }
            tokio::select! {
                Some(()) = running.next(), if !running.is_empty() => {}
                () = async {
                    match next {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
                () = self.install_wake.notified() => {}
                () = stopped(stop.clone()) => break,
            }
        }
        if !running.is_empty() {
            let drain = async { while running.next().await.is_some() {} };
            if tokio::time::timeout(self.opts.shutdown_grace, drain)
                .await
                .is_err()
            {
                warn!("event installs still in flight at shutdown; the next start tracks them");
            }
        }
    }

    /// Installs the agent on one batch (one account and region), with the passes' own code.
    async fn install(&self, key: Key, ids: Vec<String>) {
        let span =
            info_span!("event_install", account = %key.0, region = %key.1, instances = ids.len());
        async {
            debug!("event install started");
            {
                let _lease = self.ctx.leases.shared(&key.0, &key.1).await;
                let clients = match self.accounts.enter(&key.0).await {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(operation = %e.operation, code = %e.code, "cannot enter the account to install; the periodic onboarding pass takes over");
                        let mut tracker = self.tracker();
                        for id in &ids {
                            tracker.installing.remove(&(key.clone(), id.clone()));
                        }
                        return;
                    }
                };
                let cache = self.iam_cache(&key.0);
                let iam = CachedIam::new(&clients.iam, &cache);
                let aws = &cached_ports(&clients, &iam);
                let arc = self.arc(&key.0).await;
                let window = self.opts.pass.install.in_flight_window();
                let mut obs = observe_instances(
                    &key.0,
                    &key.1,
                    &ids,
                    self.ctx.config,
                    (aws.ec2, aws.iam, aws.ssm),
                    window,
                    arc,
                )
                .await;
                self.elsewhere(&key.0, &mut obs).await;
                let plan = self
                    .execute_stage(&obs, aws, INSTALL_ONLY, EventStage::Install, SystemTime::now())
                    .await;
                log_installs(&plan, &ids);
            }
            let mut tracker = self.tracker();
            for id in &ids {
                tracker.installing.remove(&(key.clone(), id.clone()));
            }
        }
        .instrument(span)
        .await;
        self.flush_calls();
    }
}

/// Why the instances of one (account, region) group were not handled.
enum Unhandled {
    /// Its account's role cannot be assumed (access denied, no such role): the messages are deleted.
    Unreachable(crate::model::AwsError),
    /// Anything that may pass (AWS, the state file): the messages are left for redelivery.
    NotNow(String),
}

/// Logs what became of an install batch.
fn log_installs(plan: &AccountPlan, ids: &[String]) {
    let handled: HashMap<&str, &crate::reconcile::plan::InstancePlan> = plan
        .instances
        .iter()
        .map(|r| (r.instance_id.as_str(), r))
        .collect();
    for id in ids {
        match handled.get(id.as_str()) {
            Some(row) => {
                info!(instance.id = %id, status = %row.status, detail = %row.detail, "event install finished")
            }
            None => {
                info!(instance.id = %id, "event install not needed (onboarded, in flight, or no longer eligible)")
            }
        }
    }
}

/// [`record`], or the event is left on the queue for redelivery when the state file cannot be written.
async fn record_or_redeliver(
    durable: &Durable<'_>,
    plan: &AccountPlan,
    now: SystemTime,
) -> Result<(), Unhandled> {
    record(durable, plan, now).await.map_err(|e| {
        Unhandled::NotNow(format!(
            "cannot record in the state file: {}",
            crate::error::chain(&e)
        ))
    })
}

/// Records the event path's rows in the state file, keeping what the file remembers (attempts, the
/// last failure, backoff) and never overwriting a command in flight.
async fn record(
    durable: &Durable<'_>,
    plan: &AccountPlan,
    now: SystemTime,
) -> Result<(), crate::ports::memory::MemoryError> {
    let previous: HashMap<(String, String), InstanceRecord> = durable
        .memory
        .of_account(&plan.account_id)
        .await?
        .into_iter()
        .map(|r| ((r.region.clone(), r.instance_id.clone()), r))
        .collect();
    let now = unix(now);
    let records: Vec<InstanceRecord> = plan
        .instances
        .iter()
        .filter_map(|row| {
            let prev = previous.get(&(row.region.clone(), row.instance_id.clone()));
            let in_flight = prev.is_some_and(|p| p.command_id.is_some());
            if in_flight && row.status == Status::InProgress {
                // Recorded already, with its command.
                return None;
            }
            Some(InstanceRecord::carried_over(
                (&row.account_id, &row.region, &row.instance_id),
                (row.status, &row.detail),
                prev,
                now,
            ))
        })
        .collect();
    if records.is_empty() {
        return Ok(());
    }
    durable.memory.put(records).await
}

#[cfg(test)]
mod tests;
