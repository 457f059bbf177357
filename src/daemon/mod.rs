//! Scheduled onboarding: the IAM auto-assignment pass and the onboarding pass, each on its own interval, in
//! one process, until SIGINT/SIGTERM.
//!
//! # Guarantees
//! - Passes run one at a time: they never overlap with themselves or each other.
//! - A pass that overruns its interval delays that schedule's next start instead of stacking runs.
//! - SIGHUP runs the passes now. Any number of SIGHUPs during a pass cause one extra round after it, not
//!   one round each. SIGINT/SIGTERM stop taking new work; a pass in progress gets
//!   `shutdown_grace` to finish tracking its commands; anything still in flight is in the state file and
//!   is resumed, not re-sent, at the next start.
//!
//! # Caveats
//! - Intervals are measured from when a pass was due, plus a small jitter (at most a tenth of the interval,
//!   30 s at most) so that many daemons do not start together.

mod assembly;
pub mod event_accounts;
pub mod event_message;
pub mod events;
pub mod iam_cache;
pub mod metrics;
pub mod state;

pub use assembly::{run, DaemonDeps, DaemonSettings, EventDeps, PassPorts};

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, info_span, warn, Instrument};

use crate::config::Config;

/// The two kinds of pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PassKind {
    /// IAM auto-assignment (`EC2SSMIAMRoleAutoAssignmentSchedule`).
    Iam,
    /// Agent install on eligible instances (periodic sync).
    Onboarding,
}

impl PassKind {
    /// Every kind, in order: the metrics export each one's series from the start.
    pub const ALL: [PassKind; 2] = [PassKind::Iam, PassKind::Onboarding];

    /// What this kind of pass executes: IAM only, or installs only (IAM is the IAM pass's job).
    pub fn scope(self) -> crate::reconcile::pass::Scope {
        match self {
            PassKind::Iam => crate::reconcile::pass::Scope {
                iam: true,
                install: false,
            },
            PassKind::Onboarding => crate::reconcile::pass::Scope {
                iam: false,
                install: true,
            },
        }
    }

    /// Name in logs, the state file and the `kind` label of the metrics (written only when rendered).
    pub fn as_str(self) -> &'static str {
        match self {
            PassKind::Iam => "iam",
            PassKind::Onboarding => "onboarding",
        }
    }
}

/// When each pass runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// `None`: no IAM pass at all (`auto_assignment = false`). `Some(None)`: once at start
    /// (`auto_assignment_schedule = "disable"`). `Some(Some(d))`: every `d`.
    pub iam: Option<Option<Duration>>,
    /// `None`: once at start (`periodic_sync = false`). `Some(d)`: every `d`.
    pub onboarding: Option<Duration>,
}

impl Schedule {
    /// The schedule the configuration asks for.
    pub fn from_config(config: &Config) -> Schedule {
        let iam = config
            .iam
            .auto_assignment
            .then(|| config.iam.schedule_enabled.then_some(config.iam.interval));
        let onboarding = config
            .onboarding
            .periodic_sync
            .then_some(config.onboarding.sync_interval);
        Schedule { iam, onboarding }
    }

    /// Intervals below 15 minutes are for tests and demos; say so.
    pub fn warnings(&self) -> Vec<String> {
        let short = Duration::from_secs(15 * 60);
        let mut out = Vec::new();
        if let Some(Some(d)) = self.iam {
            if d < short {
                out.push(format!(
                    "iam.auto_assignment_interval is {}s (below 15 minutes)",
                    d.as_secs()
                ));
            }
        }
        if let Some(d) = self.onboarding {
            if d < short {
                out.push(format!(
                    "onboarding.sync_interval is {}s (below 15 minutes)",
                    d.as_secs()
                ));
            }
        }
        out
    }
}

/// A random delay in `[0, min(interval / 10, 30 s)]`.
pub fn default_jitter(interval: Duration) -> Duration {
    let cap = (interval / 10).min(Duration::from_secs(30));
    if cap.is_zero() {
        return Duration::ZERO;
    }
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    Duration::from_millis(random % (cap.as_millis() as u64 + 1))
}

/// Runs `run` for each due pass until `shutdown` resolves. `trigger` (SIGHUP, with `notify_one`) makes every
/// configured pass due now; triggers that arrive while passes run coalesce into one round after them.
/// Returns when shut down; a pass in progress gets `grace` to finish.
pub async fn schedule_loop<F, Fut>(
    schedule: &Schedule,
    jitter: impl Fn(Duration) -> Duration,
    mut run: F,
    trigger: &Notify,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    F: FnMut(PassKind) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut shutdown = pin!(shutdown);
    let start = Instant::now();
    let mut next: BTreeMap<PassKind, Instant> = BTreeMap::new();
    if schedule.iam.is_some() {
        next.insert(PassKind::Iam, start);
    }
    next.insert(PassKind::Onboarding, start);
    let interval = |kind: PassKind| match kind {
        PassKind::Iam => schedule.iam.flatten(),
        PassKind::Onboarding => schedule.onboarding,
    };
    loop {
        let now = Instant::now();
        let due: Vec<PassKind> = next
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| *k)
            .collect();
        if !due.is_empty() {
            for kind in due {
                let was_due = next[&kind];
                let mut pass = pin!(run(kind));
                tokio::select! {
                    _ = &mut pass => {}
                    _ = &mut shutdown => {
                        info!(kind = kind.as_str(), grace_s = grace.as_secs(), "shutting down; letting the pass finish");
                        if tokio::time::timeout(grace, &mut pass).await.is_err() {
                            warn!(kind = kind.as_str(), "pass cut short; commands in flight resume at the next start");
                        }
                        return;
                    }
                }
                match interval(kind) {
                    Some(every) => {
                        let mut at = was_due + every + jitter(every);
                        let finished = Instant::now();
                        if at <= finished {
                            // Overran: the next one starts a full interval after this one ended.
                            at = finished + every;
                        }
                        next.insert(kind, at);
                    }
                    None => {
                        next.remove(&kind);
                    }
                }
            }
            continue;
        }
        let wake = next.values().min().copied();
        tokio::select! {
            _ = async { match wake { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
            () = trigger.notified() => {
                info!("pass requested (SIGHUP)");
                let now = Instant::now();
                if schedule.iam.is_some() {
                    next.insert(PassKind::Iam, now);
                }
                next.insert(PassKind::Onboarding, now);
            }
            _ = &mut shutdown => return,
        }
    }
}

/// What one pass produced, for metrics and the pass log.
#[derive(Debug, Clone, Default)]
pub struct PassSummary {
    /// Whether the pass completed.
    pub ok: bool,
    /// Instances by status (strings only at Prometheus and the state file: [`PassSummary::status_labels`]).
    pub statuses: BTreeMap<crate::reconcile::plan::Status, u64>,
    /// API calls made.
    pub api_calls: BTreeMap<String, u64>,
    /// Error codes seen.
    pub errors: BTreeMap<String, u64>,
    /// Per AWS account: instances by status and error codes (metrics label `account`).
    pub accounts: BTreeMap<String, crate::daemon::metrics::AccountCounts>,
    /// `reconnect-agent` rows by result (see [`crate::daemon::metrics::repair_result`]).
    pub repairs: BTreeMap<crate::daemon::metrics::RepairResult, u64>,
}

impl PassSummary {
    /// The instances by status as the metrics and the state file name them (`onboarded`, `failed`, ...).
    pub fn status_labels(&self) -> BTreeMap<String, u64> {
        self.statuses
            .iter()
            .map(|(s, n)| (s.as_str().to_string(), *n))
            .collect()
    }

    /// The summary of a pass that completed: statuses, calls, and error codes (regions that could not be
    /// observed by their AWS code, failed instances by their failure's code: `AZCM0041`, `exit-4`,
    /// `checksum-mismatch`, ...).
    pub fn from_outcome(outcome: &crate::reconcile::pass::PassOutcome) -> PassSummary {
        let r = &outcome.report;
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut accounts: BTreeMap<String, crate::daemon::metrics::AccountCounts> = r
            .accounts
            .iter()
            .map(|a| (a.account_id.clone(), Default::default()))
            .collect();
        for e in &r.errors {
            *errors.entry(e.code.clone()).or_default() += 1;
            let account = accounts.entry(e.account_id.clone()).or_default();
            *account.errors.entry(e.code.clone()).or_default() += 1;
        }
        for i in &r.instances {
            let account = accounts.entry(i.account_id.clone()).or_default();
            *account.statuses.entry(i.status).or_default() += 1;
            if let (crate::reconcile::plan::Status::Failed, Some(f)) = (i.status, &i.failure) {
                *account.errors.entry(f.code.clone()).or_default() += 1;
            }
        }
        for i in r
            .instances
            .iter()
            .filter(|i| i.status == crate::reconcile::plan::Status::Failed)
        {
            let code = i
                .failure
                .as_ref()
                .map_or_else(|| "instance-failed".to_string(), |f| f.code.clone());
            *errors.entry(code).or_default() += 1;
        }
        let mut repairs = BTreeMap::new();
        for i in r.instances.iter().filter(|i| {
            i.actions
                .contains(&crate::reconcile::plan::InstanceAction::ReconnectAgent)
        }) {
            let result = crate::daemon::metrics::repair_result(i.status);
            *repairs.entry(result).or_default() += 1;
        }
        PassSummary {
            ok: !outcome.no_region_reachable,
            statuses: r
                .summary
                .by_status
                .iter()
                .map(|(s, n)| (*s, *n as u64))
                .collect(),
            api_calls: r.summary.api_calls.clone(),
            errors,
            accounts,
            repairs,
        }
    }
}

/// Runs one pass with logging, the pass log and metrics around it.
pub async fn observed_pass<Fut>(
    kind: PassKind,
    pass: Fut,
    db: &crate::daemon::state::StateDb,
    metrics: &Arc<crate::daemon::metrics::Metrics>,
) where
    Fut: Future<Output = PassSummary>,
{
    let pass_id = uuid::Uuid::new_v4().to_string();
    let span = info_span!("daemon_pass", pass.id = %pass_id, pass.kind = kind.as_str());
    async {
        let started = SystemTime::now();
        let clock = Instant::now();
        info!("pass started");
        let summary = pass.await;
        let took = clock.elapsed();
        let statuses = summary.status_labels();
        metrics.record_pass(kind, summary.ok, took, &statuses, &summary.api_calls, &summary.errors);
        metrics.record_accounts(kind, &summary.accounts);
        metrics.record_repairs(&summary.repairs);
        let record = crate::daemon::state::PassRecord {
            kind: kind.as_str().into(),
            started_at: crate::daemon::state::unix(started),
            finished_at: crate::daemon::state::unix(SystemTime::now()),
            ok: summary.ok,
            summary: serde_json::to_string(&statuses).unwrap_or_default(),
        };
        if let Err(e) = db.record_pass(record).await {
            warn!(error = %crate::error::chain(&e), "cannot record the pass");
        }
        info!(ok = summary.ok, duration_ms = took.as_millis() as u64, statuses = ?statuses, "pass finished");
    }
    .instrument(span)
    .await;
    release_freed_memory();
}

/// Hands the memory a pass freed back to the system. A pass allocates its observation, plan, report and
/// clients, then frees them; glibc keeps freed pages in its heaps, so an idle daemon would keep the
/// high-water mark of its largest pass resident until the next one. `malloc_trim(0)` returns the free
/// pages of every arena (a few milliseconds once per pass). No-op off glibc.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own heaps; it may run at any time
    // from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn pass_statuses_are_typed_and_named_only_for_the_metrics_and_the_state_file() {
        use crate::reconcile::plan::Status;
        let summary = PassSummary {
            statuses: [
                (Status::WaitingForSsm, 3),
                (Status::Onboarded, 2),
                (Status::AlreadyOnboarded, 1),
            ]
            .into(),
            ..PassSummary::default()
        };
        // The state file's summary: the report's names, in name order, as before the enum.
        assert_eq!(
            serde_json::to_string(&summary.status_labels()).unwrap(),
            r#"{"already-onboarded":1,"onboarded":2,"waiting-for-ssm":3}"#
        );
    }

    fn schedule(iam: Option<Option<u64>>, onboarding: Option<u64>) -> Schedule {
        Schedule {
            iam: iam.map(|o| o.map(Duration::from_secs)),
            onboarding: onboarding.map(Duration::from_secs),
        }
    }

    /// Runs the loop for `for_secs` of paused time; each pass takes `pass_secs`; a SIGHUP arrives at each
    /// second of `hups_at`. Returns (kind, start second).
    async fn simulate(
        s: Schedule,
        for_secs: u64,
        pass_secs: u64,
        hups_at: &[u64],
    ) -> Vec<(PassKind, u64)> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let hup = Arc::new(Notify::new());
        let sender = hup.clone();
        let hups_at = hups_at.to_vec();
        tokio::spawn(async move {
            for at in hups_at {
                tokio::time::sleep_until(start + Duration::from_secs(at)).await;
                sender.notify_one();
            }
        });
        let run_log = log.clone();
        let run = move |kind: PassKind| {
            let log = run_log.clone();
            async move {
                log.lock().unwrap().push((kind, start.elapsed().as_secs()));
                tokio::time::sleep(Duration::from_secs(pass_secs)).await;
            }
        };
        schedule_loop(
            &s,
            |_| Duration::ZERO,
            run,
            &hup,
            tokio::time::sleep(Duration::from_secs(for_secs)),
            Duration::from_secs(5),
        )
        .await;
        let out = log.lock().unwrap().clone();
        out
    }

    use PassKind::{Iam, Onboarding};

    #[tokio::test(start_paused = true)]
    async fn both_schedules_fire_at_their_intervals() {
        let log = simulate(schedule(Some(Some(60)), Some(20)), 125, 0, &[]).await;
        let iam: Vec<u64> = log
            .iter()
            .filter(|(k, _)| *k == Iam)
            .map(|(_, t)| *t)
            .collect();
        let sync: Vec<u64> = log
            .iter()
            .filter(|(k, _)| *k == Onboarding)
            .map(|(_, t)| *t)
            .collect();
        assert_eq!(iam, [0, 60, 120]);
        assert_eq!(sync, [0, 20, 40, 60, 80, 100, 120]);
        assert_eq!(log[0], (Iam, 0), "IAM first at start");
    }

    #[tokio::test(start_paused = true)]
    async fn disable_and_no_periodic_sync_run_once() {
        let log = simulate(schedule(Some(None), Some(30)), 100, 0, &[]).await;
        assert_eq!(
            log.iter().filter(|(k, _)| *k == Iam).count(),
            1,
            "IAM once at start"
        );
        let log = simulate(schedule(Some(Some(30)), None), 100, 0, &[]).await;
        assert_eq!(
            log.iter().filter(|(k, _)| *k == Onboarding).count(),
            1,
            "onboarding once"
        );
        assert_eq!(
            log.iter().filter(|(k, _)| *k == Iam).count(),
            4,
            "0, 30, 60, 90"
        );
        let log = simulate(schedule(None, Some(50)), 100, 0, &[]).await;
        assert!(
            log.iter().all(|(k, _)| *k == Onboarding),
            "auto_assignment = false: no IAM pass"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_overrunning_pass_delays_the_next_instead_of_stacking() {
        // Every pass takes 25 s, the interval is 10 s.
        let log = simulate(schedule(None, Some(10)), 100, 25, &[]).await;
        let starts: Vec<u64> = log.iter().map(|(_, t)| *t).collect();
        assert_eq!(
            starts,
            [0, 35, 70],
            "each starts an interval after the previous ended"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn passes_never_overlap() {
        let log = simulate(schedule(Some(Some(10)), Some(10)), 60, 7, &[]).await;
        for pair in log.windows(2) {
            assert!(pair[1].1 >= pair[0].1 + 7, "overlap: {log:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sighup_runs_the_passes_now() {
        let log = simulate(schedule(Some(None), None), 100, 0, &[42]).await;
        assert_eq!(
            log,
            [(Iam, 0), (Onboarding, 0), (Iam, 42), (Onboarding, 42)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn many_sighups_during_a_pass_cause_one_extra_round() {
        // Passes take 10 s: IAM 0..10, onboarding 10..20. Ten HUPs arrive meanwhile.
        let hups: Vec<u64> = (1..=10).map(|n| n * 2 - 1).collect();
        let log = simulate(schedule(Some(None), None), 200, 10, &hups).await;
        assert_eq!(
            log,
            [(Iam, 0), (Onboarding, 10), (Iam, 20), (Onboarding, 30)],
            "one extra round for all the HUPs"
        );
        // A HUP during that extra round is a new request: one more round after it.
        let log = simulate(schedule(Some(None), None), 200, 10, &[5, 25, 26]).await;
        assert_eq!(
            log,
            [
                (Iam, 0),
                (Onboarding, 10),
                (Iam, 20),
                (Onboarding, 30),
                (Iam, 40),
                (Onboarding, 50)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_lets_the_pass_in_progress_finish_within_the_grace() {
        let finished = Arc::new(Mutex::new(false));
        let f = finished.clone();
        let start = Instant::now();
        schedule_loop(
            &schedule(None, None),
            |_| Duration::ZERO,
            move |_| {
                let f = f.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    *f.lock().unwrap() = true;
                }
            },
            &Notify::new(),
            tokio::time::sleep(Duration::from_secs(1)),
            Duration::from_secs(5),
        )
        .await;
        assert!(*finished.lock().unwrap(), "the pass finished");
        assert_eq!(start.elapsed().as_secs(), 3);
    }

    #[test]
    fn jitter_is_bounded() {
        for _ in 0..100 {
            assert!(default_jitter(Duration::from_secs(60)) <= Duration::from_secs(6));
            assert!(default_jitter(Duration::from_secs(86_400)) <= Duration::from_secs(30));
        }
        assert!(default_jitter(Duration::from_secs(5)) <= Duration::from_millis(500));
    }

    /// The schedules driving real passes over the stateful fakes, in paused time: a new instance gets the
    /// SSM profile from the next IAM pass and the agent from the onboarding pass after it.
    #[tokio::test(start_paused = true)]
    async fn the_schedules_drive_real_passes_over_the_fakes() {
        use crate::fake::FakeArm;
        use crate::fake::FakeAws;
        use crate::model::{InstanceState, Platform};
        use crate::ports::MutationToken;
        use crate::reconcile::pass::{run_pass, AwsPorts, PassOptions};

        let aws = Arc::new(FakeAws::new(&["us-east-1"]));
        let arm = Arc::new(FakeArm::default());
        aws.link_arm(arm.clone(), "aws_123456789012");
        aws.add_instance(
            "us-east-1",
            "i-1",
            Platform::Linux,
            InstanceState::Running,
            None,
            &[],
        );
        let text = "[aws]\nregions = [\"us-east-1\"]\n[iam]\nauto_assignment_interval = \"60s\"\n[onboarding]\nsync_interval = \"30s\"\n[azure]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\nsubscription_id = \"00000000-0000-0000-0000-000000000002\"\nclient_id = \"00000000-0000-0000-0000-000000000003\"\nlocation = \"eastus\"\n";
        let config = Config::parse(text, std::path::Path::new("t")).unwrap();
        let token = MutationToken::mint();
        let start = Instant::now();
        // (kind, second, status of i-1, status of i-2) per pass.
        type Log = Arc<Mutex<Vec<(PassKind, u64, String, String)>>>;
        let log: Log = Arc::default();
        let late = aws.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(45)).await;
            late.add_instance(
                "us-east-1",
                "i-2",
                Platform::Linux,
                InstanceState::Running,
                None,
                &[],
            );
        });
        let run = |kind: PassKind| {
            let (aws, arm, config, token, log) =
                (aws.clone(), arm.clone(), &config, &token, log.clone());
            async move {
                let ports = AwsPorts {
                    sts: &*aws,
                    ec2: &*aws,
                    iam: &*aws,
                    ssm: &*aws,
                    counter: &aws.calls,
                };
                let mut opts = PassOptions::default();
                opts.apply.wait_for_ssm = Duration::ZERO;
                opts.scope = kind.scope();
                let report = run_pass(
                    config,
                    &ports,
                    Some(&*arm),
                    Some(token),
                    &opts,
                    None,
                    std::time::SystemTime::now(),
                )
                .await
                .unwrap()
                .report;
                let status = |id: &str| {
                    report
                        .instances
                        .iter()
                        .find(|i| i.instance_id == id)
                        .map_or("-".to_string(), |i| i.status.to_string())
                };
                log.lock().unwrap().push((
                    kind,
                    start.elapsed().as_secs(),
                    status("i-1"),
                    status("i-2"),
                ));
            }
        };
        let schedule = Schedule::from_config(&config);
        schedule_loop(
            &schedule,
            |_| Duration::ZERO,
            run,
            &Notify::new(),
            tokio::time::sleep(Duration::from_secs(70)),
            Duration::from_secs(5),
        )
        .await;
        let log = log.lock().unwrap().clone();
        let s = |k: PassKind, t: u64| {
            log.iter()
                .find(|(kind, at, _, _)| *kind == k && *at == t)
                .cloned()
                .unwrap()
        };
        assert_eq!(
            s(Iam, 0).2,
            "waiting-for-ssm",
            "IAM pass prepared i-1: {log:?}"
        );
        assert_eq!(s(Onboarding, 0).2, "onboarded", "{log:?}");
        assert_eq!(s(Onboarding, 30).2, "already-onboarded");
        assert_eq!(s(Onboarding, 30).3, "-", "i-2 does not exist yet");
        assert_eq!(
            s(Iam, 60).3,
            "waiting-for-ssm",
            "i-2 got the SSM profile at the next IAM pass"
        );
        assert_eq!(
            s(Onboarding, 60).3,
            "onboarded",
            "and the agent at the onboarding pass after it"
        );
        assert_eq!(aws.calls.count("ec2:AssociateIamInstanceProfile"), 2);
        assert_eq!(
            aws.calls.count("ssm:SendCommand"),
            4,
            "two batches: a key exchange and an install each"
        );
    }
}
