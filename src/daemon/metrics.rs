//! Prometheus metrics of the daemon's passes, and the HTTP endpoint serving them and a health check.
//!
//! The metrics live in a `prometheus-client` registry and are encoded in the Prometheus text format 0.0.4.
//! The endpoint is an axum router served by hyper's HTTP/1 connections, with bounds a public port needs:
//! at most [`Limits::max_connections`] connections open at once (further clients wait in the listen
//! backlog), a deadline for every request head, a cap on request head size and on a connection's age.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};

use crate::daemon::PassKind;
use crate::reconcile::plan::Status;

/// The `Content-Type` of the Prometheus text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the pass duration histogram's buckets: a pass over a small fleet takes
/// seconds; one that waits for SSM registration or install commands takes minutes, up to the command
/// timeout (30 minutes by default) and beyond.
const PASS_DURATION_BUCKETS: [f64; 12] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
];

/// The results of `arc_onboard_repairs_total`, exported at 0 from the start.
const REPAIR_RESULTS: [RepairResult; 3] = [
    RepairResult::Reconnected,
    RepairResult::Failed,
    RepairResult::Pending,
];

/// How a `reconnect-agent` row ended its pass: the `result` label of `arc_onboard_repairs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RepairResult {
    /// The agent is connected again (`reconnected`).
    Reconnected,
    /// The repair failed (`failed`).
    Failed,
    /// Not finished in the pass (`pending`).
    Pending,
}

impl RepairResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RepairResult::Reconnected => "reconnected",
            RepairResult::Failed => "failed",
            RepairResult::Pending => "pending",
        }
    }
}

/// The result of a `reconnect-agent` row that ended the pass with `status`.
pub fn repair_result(status: Status) -> RepairResult {
    match status {
        Status::Onboarded | Status::AlreadyOnboarded => RepairResult::Reconnected,
        Status::Failed | Status::ConnectedElsewhere => RepairResult::Failed,
        _ => RepairResult::Pending,
    }
}

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The `kind` label: [`PassKind::as_str`], written only when the text is rendered.
impl EncodeLabelValue for PassKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Labels of the per-kind series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: PassKind,
}

/// Labels of `arc_onboard_passes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    kind: PassKind,
    result: String,
}

/// Labels of `arc_onboard_instances`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    kind: PassKind,
    status: String,
}

/// Labels of `arc_onboard_account_instances`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountInstanceLabels {
    kind: PassKind,
    account: String,
    status: String,
}

/// Labels of `arc_onboard_account_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountCodeLabels {
    account: String,
    code: String,
}

/// One account's part of a pass, for the per-account series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountCounts {
    /// Instances by report status (named only when rendered, as the `status` label).
    pub statuses: BTreeMap<Status, u64>,
    /// Errors by code (`errors[]` entries of the account, failed instances by failure code).
    pub errors: BTreeMap<String, u64>,
}

/// Labels of `arc_onboard_api_calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

/// Labels of `arc_onboard_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

/// Labels of `arc_onboard_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// A histogram with [`PASS_DURATION_BUCKETS`].
fn pass_duration_histogram() -> Histogram {
    Histogram::new(PASS_DURATION_BUCKETS)
}

/// Counters, gauges and the pass duration histogram of the daemon's passes; shared (`Arc<Metrics>`)
/// between the passes that record and the endpoint that renders.
pub struct Metrics {
    /// Consecutive failures of one kind that make the process unhealthy (at least 1).
    unhealthy_after: u32,
    /// Every family below, in the order they are rendered.
    registry: Registry,
    /// `arc_onboard_healthy`: the /healthz answer as a gauge.
    healthy: Gauge,
    /// `arc_onboard_passes_total{kind,result}`.
    passes: Family<PassLabels, Counter>,
    /// `arc_onboard_consecutive_failed_passes{kind}`.
    consecutive_failures: Family<KindLabels, Gauge>,
    /// `arc_onboard_pass_duration_seconds{kind}` (histogram).
    pass_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    /// `arc_onboard_last_pass_timestamp_seconds{kind}`.
    last_pass: Family<KindLabels, Gauge<f64, AtomicU64>>,
    /// `arc_onboard_instances{kind,status}`.
    instances: Family<InstanceLabels, Gauge>,
    /// `arc_onboard_api_calls_total{operation}`.
    api_calls: Family<OperationLabels, Counter>,
    /// `arc_onboard_errors_total{code}`.
    errors: Family<CodeLabels, Counter>,
    /// `arc_onboard_account_instances{kind,account,status}`.
    account_instances: Family<AccountInstanceLabels, Gauge>,
    /// `arc_onboard_account_errors_total{account,code}`.
    account_errors: Family<AccountCodeLabels, Counter>,
    /// What the families cannot answer (health streaks, statuses seen); its lock also makes a recorded
    /// pass appear in a scrape all at once.
    kinds: Mutex<BTreeMap<PassKind, KindState>>,
    /// `arc_onboard_events_total{result}`: queue messages by what became of them.
    events: Family<ResultLabels, Counter>,
    /// `arc_onboard_repairs_total{result}`: `reconnect-agent` rows by result ([`repair_result`]).
    repairs: Family<ResultLabels, Counter>,
    /// `arc_onboard_event_queue_failing`: 1 while the event queue cannot be read.
    queue_failing: Gauge,
    /// `arc_onboard_event_instances_watched`: instances the event path waits on to come Online in SSM.
    watched: Gauge,
    /// `arc_onboard_arc_machines_deleted_total`: Arc machines of gone instances deleted (passes and
    /// events).
    deleted: Counter,
    /// Why the event queue cannot be read, while it cannot (`/healthz` says so).
    queue_problem: Mutex<Option<String>>,
}

/// What is tracked per pass kind beside the exported series.
#[derive(Default)]
struct KindState {
    /// Failed passes since the last successful one.
    consecutive_failures: u32,
    /// Every status this kind's instance gauge has held, so a status that vanished is set to 0.
    statuses: BTreeSet<String>,
    /// Every (account, status) this kind's per-account gauge has held, likewise.
    account_statuses: BTreeSet<(String, Status)>,
}

impl Metrics {
    /// Metrics with no pass recorded yet (healthy). Health turns unhealthy once some pass kind has failed
    /// `unhealthy_after` times in a row (0 is taken as 1), and healthy again at that kind's next success.
    /// Kinds count separately, so a daily IAM pass that keeps failing is not hidden by hourly onboarding
    /// passes that succeed.
    pub fn new(unhealthy_after: u32) -> Metrics {
        let mut registry = Registry::default();
        let up = Gauge::<i64>::default();
        up.set(1);
        registry.register("arc_onboard_up", "1 while arc-onboard is running", up);
        let healthy = Gauge::default();
        healthy.set(1);
        registry.register(
            "arc_onboard_healthy",
            "1 unless a pass kind has failed too many times in a row (the /healthz answer)",
            healthy.clone(),
        );
        let passes = Family::default();
        registry.register(
            "arc_onboard_passes",
            "Finished passes by kind and result (failed: stopped before handling instances)",
            passes.clone(),
        );
        let consecutive_failures = Family::default();
        registry.register(
            "arc_onboard_consecutive_failed_passes",
            "Failed passes of this kind since its last successful pass",
            consecutive_failures.clone(),
        );
        let pass_duration: Family<KindLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(pass_duration_histogram);
        registry.register_with_unit(
            "arc_onboard_pass_duration",
            "Duration of finished passes of this kind",
            Unit::Seconds,
            pass_duration.clone(),
        );
        let last_pass = Family::default();
        registry.register(
            "arc_onboard_last_pass_timestamp_seconds",
            "When the last pass of this kind finished, in seconds since the Unix epoch",
            last_pass.clone(),
        );
        let instances = Family::default();
        registry.register(
            "arc_onboard_instances",
            "Instances by report status at the end of the last pass of this kind",
            instances.clone(),
        );
        let api_calls = Family::default();
        registry.register(
            "arc_onboard_api_calls",
            "AWS and Azure calls (HTTP attempts, retries included) by service:Operation",
            api_calls.clone(),
        );
        let errors = Family::default();
        registry.register(
            "arc_onboard_errors",
            "Errors seen in passes by code (regions: the AWS error code; failed instances: their failure code, e.g. AZCM0041, exit-4, checksum-mismatch)",
            errors.clone(),
        );
        let events: Family<ResultLabels, Counter> = Family::default();
        registry.register(
            "arc_onboard_events",
            "Event queue messages by result (accepted, malformed, ignored, out-of-scope, retry: left on the queue)",
            events.clone(),
        );
        for result in crate::daemon::event_message::result::ALL {
            let _ = events.get_or_create(&ResultLabels {
                result: result.as_str().to_string(),
            });
        }
        let deleted = Counter::default();
        registry.register(
            "arc_onboard_arc_machines_deleted",
            "Arc machines of gone (terminated) instances deleted, by the passes and the event path",
            deleted.clone(),
        );
        let repairs: Family<ResultLabels, Counter> = Family::default();
        registry.register(
            "arc_onboard_repairs",
            "Agent repairs (reconnect-agent: Expired, long-Disconnected or cloned agents) by result: reconnected, failed, pending (not finished in the pass)",
            repairs.clone(),
        );
        for result in REPAIR_RESULTS {
            let _ = repairs.get_or_create(&ResultLabels {
                result: result.as_str().to_string(),
            });
        }
        let queue_failing = Gauge::default();
        registry.register(
            "arc_onboard_event_queue_failing",
            "1 while the event queue cannot be read (deleted, access denied, unreachable)",
            queue_failing.clone(),
        );
        let watched = Gauge::default();
        registry.register(
            "arc_onboard_event_instances_watched",
            "Instances the event path is waiting on to come Online in SSM",
            watched.clone(),
        );
        let account_instances = Family::default();
        registry.register(
            "arc_onboard_account_instances",
            "Instances by AWS account and report status at the end of the last pass of this kind",
            account_instances.clone(),
        );
        let account_errors = Family::default();
        registry.register(
            "arc_onboard_account_errors",
            "Errors seen in passes by AWS account and code (accounts that could not be entered: sts:AssumeRole's code)",
            account_errors.clone(),
        );
        let metrics = Metrics {
            events,
            deleted,
            repairs,
            queue_failing,
            watched,
            queue_problem: Mutex::new(None),
            account_instances,
            account_errors,
            unhealthy_after: unhealthy_after.max(1),
            registry,
            healthy,
            passes,
            consecutive_failures,
            pass_duration,
            last_pass,
            instances,
            api_calls,
            errors,
            kinds: Mutex::new(BTreeMap::new()),
        };
        {
            let mut kinds = metrics.lock();
            // Every kind's pass counters and duration histogram are exported (at 0) before its first
            // pass, so `rate()` and `increase()` see the series from the start.
            for kind in PassKind::ALL {
                metrics.add_kind(&mut kinds, kind);
            }
        }
        metrics
    }

    /// Creates a kind's series at 0 (pass counters, streak, histogram) unless it has them already, and
    /// returns its state.
    fn add_kind<'k>(
        &self,
        kinds: &'k mut BTreeMap<PassKind, KindState>,
        kind: PassKind,
    ) -> &'k mut KindState {
        kinds.entry(kind).or_insert_with(|| {
            for result in ["ok", "failed"] {
                let _ = self.passes.get_or_create(&PassLabels {
                    kind,
                    result: result.to_string(),
                });
            }
            let labels = KindLabels { kind };
            let _ = self.consecutive_failures.get_or_create(&labels);
            let _ = self.pass_duration.get_or_create(&labels);
            KindState::default()
        })
    }

    /// Records one finished pass.
    ///
    /// - `kind`: the kind of pass (its `kind` label).
    /// - `ok`: whether the pass completed (`false`: it failed before handling instances).
    /// - `duration`: how long the pass took; observed into the kind's duration histogram.
    /// - `statuses`: instances by report status at the end of the pass; replaces the kind's instance
    ///   gauge. A status reported by an earlier pass and absent now is exported as 0 rather than dropped.
    /// - `api_calls`: calls made during this pass by `"service:Operation"`; added to the counters.
    /// - `errors`: error codes seen in this pass (e.g. `"UnauthorizedOperation"`, `"exit-41"`) with their
    ///   counts; added to the counters.
    pub fn record_pass(
        &self,
        kind: PassKind,
        ok: bool,
        duration: Duration,
        statuses: &BTreeMap<String, u64>,
        api_calls: &BTreeMap<String, u64>,
        errors: &BTreeMap<String, u64>,
    ) {
        self.record_pass_at(
            SystemTime::now(),
            kind,
            ok,
            duration,
            statuses,
            api_calls,
            errors,
        );
    }

    /// [`Metrics::record_pass`] with the time the pass finished given (tests need a fixed clock).
    #[allow(clippy::too_many_arguments)]
    fn record_pass_at(
        &self,
        finished_at: SystemTime,
        kind: PassKind,
        ok: bool,
        duration: Duration,
        statuses: &BTreeMap<String, u64>,
        api_calls: &BTreeMap<String, u64>,
        errors: &BTreeMap<String, u64>,
    ) {
        let mut kinds = self.lock();
        let state = self.add_kind(&mut kinds, kind);
        state.consecutive_failures = if ok {
            0
        } else {
            state.consecutive_failures.saturating_add(1)
        };
        let labels = KindLabels { kind };
        self.passes
            .get_or_create(&PassLabels {
                kind,
                result: if ok { "ok" } else { "failed" }.to_string(),
            })
            .inc();
        self.consecutive_failures
            .get_or_create(&labels)
            .set(i64::from(state.consecutive_failures));
        self.pass_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        self.last_pass.get_or_create(&labels).set(
            finished_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        );
        state.statuses.extend(statuses.keys().cloned());
        for status in &state.statuses {
            let count = statuses.get(status).copied().unwrap_or(0);
            self.instances
                .get_or_create(&InstanceLabels {
                    kind,
                    status: status.clone(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.deleted
            .inc_by(statuses.get("offboarded").copied().unwrap_or(0));
        for (operation, count) in api_calls {
            self.api_calls
                .get_or_create(&OperationLabels {
                    operation: operation.clone(),
                })
                .inc_by(*count);
        }
        for (code, count) in errors {
            self.errors
                .get_or_create(&CodeLabels { code: code.clone() })
                .inc_by(*count);
        }
        self.healthy.set(i64::from(
            self.failing_kind_in(&kinds).is_none() && self.queue_problem().is_none(),
        ));
    }

    /// Counts what the event path did to the Arc machine of a gone instance (only `offboarded` counts:
    /// a failed deletion is retried and shows in the logs and the next pass's report).
    pub fn record_deletion(&self, status: crate::reconcile::plan::Status) {
        if status == crate::reconcile::plan::Status::Offboarded {
            self.deleted.inc();
        }
    }

    /// The Arc machines deleted so far.
    pub fn deleted(&self) -> u64 {
        self.deleted.get()
    }

    /// Counts one queue message by its result (see [`crate::daemon::event_message::result`]).
    pub fn record_event(&self, result: crate::daemon::event_message::result::EventResult) {
        self.events
            .get_or_create(&ResultLabels {
                result: result.as_str().to_string(),
            })
            .inc();
    }

    /// Adds a pass's `reconnect-agent` rows, by result, to `arc_onboard_repairs_total`.
    pub fn record_repairs(&self, by_result: &BTreeMap<RepairResult, u64>) {
        for (result, n) in by_result {
            self.repairs
                .get_or_create(&ResultLabels {
                    result: result.as_str().to_string(),
                })
                .inc_by(*n);
        }
    }

    /// Sets (or with `None` clears) why the event queue cannot be read; `/healthz` reports it.
    pub fn set_queue_problem(&self, problem: Option<String>) {
        let kinds = self.lock();
        self.queue_failing.set(i64::from(problem.is_some()));
        let healthy = problem.is_none() && self.failing_kind_in(&kinds).is_none();
        *self
            .queue_problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = problem;
        self.healthy.set(i64::from(healthy));
    }

    /// Why the event queue cannot be read, while it cannot.
    pub fn queue_problem(&self) -> Option<String> {
        self.queue_problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many instances the event path is waiting on.
    pub fn set_watched(&self, n: usize) {
        self.watched.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Adds calls made outside passes (the event path) to `arc_onboard_api_calls_total`.
    pub fn add_api_calls(&self, api_calls: &BTreeMap<String, u64>) {
        let _consistent = self.lock();
        for (operation, count) in api_calls.iter().filter(|(_, n)| **n > 0) {
            self.api_calls
                .get_or_create(&OperationLabels {
                    operation: operation.clone(),
                })
                .inc_by(*count);
        }
    }

    /// Records one finished pass's per-account figures (label `account`): instances by status replace the
    /// kind's per-account gauge (an (account, status) seen before and absent now is set to 0), errors are
    /// added to the counters.
    pub fn record_accounts(&self, kind: PassKind, accounts: &BTreeMap<String, AccountCounts>) {
        let mut kinds = self.lock();
        let state = self.add_kind(&mut kinds, kind);
        for (account, counts) in accounts {
            state.account_statuses.extend(
                counts
                    .statuses
                    .keys()
                    .map(|status| (account.clone(), *status)),
            );
        }
        for (account, status) in &state.account_statuses {
            let count = accounts
                .get(account)
                .and_then(|c| c.statuses.get(status))
                .copied()
                .unwrap_or(0);
            self.account_instances
                .get_or_create(&AccountInstanceLabels {
                    kind,
                    account: account.clone(),
                    status: status.as_str().to_string(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        for (account, counts) in accounts {
            for (code, n) in &counts.errors {
                self.account_errors
                    .get_or_create(&AccountCodeLabels {
                        account: account.clone(),
                        code: code.clone(),
                    })
                    .inc_by(*n);
            }
        }
    }

    /// `false` once some pass kind has failed `unhealthy_after` times in a row, until it succeeds again.
    pub fn healthy(&self) -> bool {
        self.failing_kind().is_none() && self.queue_problem().is_none()
    }

    /// The kind with the longest run of consecutive failures, when that run makes the process unhealthy.
    fn failing_kind(&self) -> Option<(PassKind, u32)> {
        self.failing_kind_in(&self.lock())
    }

    /// [`Metrics::failing_kind`] over the locked kinds.
    fn failing_kind_in(&self, kinds: &BTreeMap<PassKind, KindState>) -> Option<(PassKind, u32)> {
        kinds
            .iter()
            .filter(|(_, k)| k.consecutive_failures >= self.unhealthy_after)
            .max_by_key(|(_, k)| k.consecutive_failures)
            .map(|(kind, k)| (*kind, k.consecutive_failures))
    }

    /// The metrics in the Prometheus text exposition format 0.0.4. Families come in a fixed order; the
    /// series within a family in no particular order.
    pub fn render(&self) -> String {
        let _consistent = self.lock();
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The per-kind state; a panic elsewhere while holding the lock leaves counters still worth serving.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<PassKind, KindState>> {
        self.kinds.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Bounds of the HTTP endpoint: what one client, or many, can hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once. Further clients are not accepted until one closes: they wait in the
    /// listen backlog, costing the process nothing.
    pub max_connections: usize,
    /// How long a client may take to send a request head, counted from when the server starts reading
    /// it; on a kept-alive connection this is also how long it may stay idle between requests.
    pub header_read_timeout: Duration,
    /// The largest request head (request line and headers); a larger one is answered 431.
    pub max_header_bytes: usize,
    /// The longest any connection stays open, whatever it does (e.g. sending requests without reading the
    /// answers, which stalls the server's writes rather than its reads).
    pub max_connection_age: Duration,
    /// After shutdown, how long answers being written may take before their connections are dropped.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    /// 64 connections (a scraper or two and a liveness probe need a handful; the daemon's file
    /// descriptors are better spent on AWS), 10 s for a request head, 8 KiB heads, one minute per
    /// connection, one second of grace.
    fn default() -> Limits {
        Limits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 8 * 1024,
            max_connection_age: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

/// The routes: `GET`/`HEAD /metrics` ([`CONTENT_TYPE`]) and `/healthz` (200 `ok`, or 503
/// `unhealthy: N consecutive failed passes (KIND)`). Another method gets 405, another path 404.
fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(health))
        .with_state(metrics)
}

/// `GET /metrics`.
async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        metrics.render(),
    )
        .into_response()
}

/// `GET /healthz`.
async fn health(State(metrics): State<Arc<Metrics>>) -> Response {
    let (status, body) = match (metrics.failing_kind(), metrics.queue_problem()) {
        (None, None) => (StatusCode::OK, "ok".to_string()),
        (Some((kind, failures)), _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "unhealthy: {failures} consecutive failed passes ({})",
                kind.as_str()
            ),
        ),
        (None, Some(problem)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: event queue: {problem}"),
        ),
    };
    (status, [(header::CACHE_CONTROL, "no-store")], body).into_response()
}

/// Serves `/metrics` and `/healthz` (see [`router`]) on `listener` with the default [`Limits`] until
/// `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_with(listener, metrics, shutdown, Limits::default()).await;
}

/// [`serve`] with the given bounds.
///
/// HTTP/1.0 and 1.1, keep-alive included; a malformed request is answered 400 by hyper, a head over
/// [`Limits::max_header_bytes`] 431. When `shutdown` resolves the listener is closed at once; connections
/// finish the answer in progress (within [`Limits::shutdown_grace`]) and close; returns once every
/// connection is closed.
pub async fn serve_with(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
) {
    let service = TowerToHyperService::new(router(metrics));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes);
    let max = u32::try_from(limits.max_connections)
        .unwrap_or(u32::MAX)
        .max(1);
    let open = Arc::new(Semaphore::new(max as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // A connection is accepted only once it has a slot.
        let (slot, accepted) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = async {
                let slot = Arc::clone(&open).acquire_owned().await;
                (slot, listener.accept().await)
            } => accepted,
        };
        let slot = slot.expect("the semaphore is never closed");
        match accepted {
            Ok((stream, peer)) => {
                let conn = http.serve_connection(TokioIo::new(stream), service.clone());
                let stop = stop_rx.clone();
                tokio::spawn(async move {
                    serve_connection(conn, peer, stop, limits).await;
                    // The slot is free again once the connection is closed.
                    drop(slot);
                });
            }
            Err(error) => {
                warn!(%error, "metrics endpoint: accept failed");
                drop(slot);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every slot back: every connection closed (each is bounded by the grace from now on).
    let _ = open.acquire_many(max).await;
}

/// One HTTP/1 connection of the endpoint.
type Connection = http1::Connection<TokioIo<TcpStream>, TowerToHyperService<Router>>;

/// Drives one connection until it closes, reaches its maximum age, or shutdown plus grace.
async fn serve_connection(
    conn: Connection,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    limits: Limits,
) {
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                debug!(%peer, %error, "metrics endpoint: connection ended with an error");
            }
            return;
        }
        () = tokio::time::sleep(limits.max_connection_age) => {
            debug!(%peer, "metrics endpoint: connection closed at its maximum age");
            return;
        }
        _ = stop.wait_for(|stop| *stop) => conn.as_mut().graceful_shutdown(),
    }
    if tokio::time::timeout(limits.shutdown_grace, conn)
        .await
        .is_err()
    {
        debug!(%peer, "metrics endpoint: connection dropped at the end of the shutdown grace");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn at(millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(millis)
    }

    /// The `kind` label of each kind as the daemon exported it when kinds were strings (the former
    /// `KNOWN_KINDS`): dashboards and alerts match on these values.
    const KIND_LABELS: [(PassKind, &str); 2] =
        [(PassKind::Iam, "iam"), (PassKind::Onboarding, "onboarding")];

    // ---- The exposition format ----

    /// One sample of an exposition.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    fn bad(line: &str) -> ! {
        panic!("not in the Prometheus text format: {line:?}")
    }

    fn is_name(s: &str) -> bool {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// Parses a sample line: `name{label="value",...} value [timestamp]`.
    fn parse_sample(line: &str) -> Sample {
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad(line));
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(mut inner) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = inner.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = inner.find("=\"").unwrap_or_else(|| bad(line));
                let label = &inner[..eq];
                let mut value = String::new();
                let mut chars = inner[eq + 2..].char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            _ => bad(line),
                        },
                        Some((i, '"')) => break eq + 2 + i + 1,
                        Some((_, c)) => value.push(c),
                        None => bad(line),
                    }
                };
                assert!(is_name(label), "label name in {line:?}");
                assert!(
                    labels.insert(label.to_string(), value).is_none(),
                    "{line:?}"
                );
                inner = &inner[end..];
                if let Some(after) = inner.strip_prefix(',') {
                    inner = after;
                } else if !inner.starts_with('}') {
                    bad(line);
                }
            }
        }
        assert!(is_name(name), "metric name in {line:?}");
        let mut fields = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| bad(line))
            .split(' ');
        let value = match fields.next().unwrap_or_else(|| bad(line)) {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| bad(line)),
        };
        if let Some(timestamp) = fields.next() {
            timestamp.parse::<i64>().unwrap_or_else(|_| bad(line));
        }
        assert!(fields.next().is_none(), "{line:?}");
        Sample {
            name: name.to_string(),
            labels,
            value,
        }
    }

    /// Parses `text` as the Prometheus text format 0.0.4, panicking at anything that does not follow it:
    /// `# HELP`/`# TYPE` lines and samples whose family was typed before them (histograms: `_bucket`
    /// with `le`, `_sum`, `_count`). Histograms are checked too: buckets cumulative, `+Inf` = `_count`.
    fn parse_exposition(text: &str) -> Vec<Sample> {
        assert!(text.ends_with('\n'), "the text ends with a line feed");
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (keyword, name) = (parts.next().unwrap(), parts.next().unwrap_or(""));
                if keyword == "HELP" || keyword == "TYPE" {
                    assert!(is_name(name), "metric name in {line:?}");
                }
                if keyword == "TYPE" {
                    let kind = parts.next().unwrap_or_else(|| bad(line));
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "{line:?}"
                    );
                    let before = types.insert(name.to_string(), kind.to_string());
                    assert!(before.is_none(), "one TYPE per family: {line:?}");
                }
                continue;
            }
            let sample = parse_sample(line);
            let typed = types.iter().any(|(family, kind)| {
                sample.name == *family
                    || (kind == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|suffix| sample.name == format!("{family}{suffix}")))
            });
            assert!(typed, "a sample of an undeclared family: {line:?}");
            if sample.name.ends_with("_bucket") {
                assert!(sample.labels.contains_key("le"), "{line:?}");
            }
            samples.push(sample);
        }
        for family in types
            .iter()
            .filter(|(_, k)| *k == "histogram")
            .map(|(f, _)| f)
        {
            for count in samples
                .iter()
                .filter(|s| s.name == format!("{family}_count"))
            {
                let mut buckets: Vec<(f64, f64)> = samples
                    .iter()
                    .filter(|s| s.name == format!("{family}_bucket"))
                    .filter(|s| {
                        s.labels
                            .iter()
                            .all(|(k, v)| k == "le" || count.labels.get(k) == Some(v))
                    })
                    .map(|s| {
                        let le = match s.labels["le"].as_str() {
                            "+Inf" => f64::INFINITY,
                            le => le.parse().unwrap(),
                        };
                        (le, s.value)
                    })
                    .collect();
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                assert!(
                    buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                    "{family} buckets are cumulative: {buckets:?}"
                );
                assert_eq!(
                    buckets.last().copied(),
                    Some((f64::INFINITY, count.value)),
                    "{family}: the +Inf bucket holds every observation"
                );
            }
        }
        samples
    }

    /// The value of the one sample called `name` with exactly `labels`.
    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<f64> = samples
            .iter()
            .filter(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} appears once at most");
        found.first().copied()
    }

    #[test]
    fn the_parser_refuses_what_is_not_the_format() {
        for text in [
            "arc_onboard_up 1\n",                                       // no TYPE
            "# TYPE x gauge\nx{a=\"1\" 1\n",                            // unterminated labels
            "# TYPE x gauge\nx{a=\"1\"} one\n",                         // not a number
            "# TYPE x gauge\nx{a=\"\\q\"} 1\n",                         // bad escape
            "# TYPE x histogram\nx_bucket{le=\"+Inf\"} 2\nx_count 1\n", // +Inf != count
            "GET / HTTP/1.1\n",
        ] {
            assert!(
                std::panic::catch_unwind(|| parse_exposition(text)).is_err(),
                "accepted {text:?}"
            );
        }
        let samples =
            parse_exposition("# HELP x X.\n# TYPE x gauge\nx{a=\"q\\\"\\\\\\n\",b=\"\"} 1.5\n");
        assert_eq!(
            value(&samples, "x", &[("a", "q\"\\\n"), ("b", "")]),
            Some(1.5)
        );
    }

    // ---- Recording and rendering ----

    #[test]
    fn render_after_two_passes() {
        let metrics = Metrics::new(3);
        metrics.record_pass_at(
            at(1_764_244_800_250),
            PassKind::Onboarding,
            true,
            Duration::from_millis(1500),
            &map(&[("onboarded", 2), ("failed", 1)]),
            &map(&[("ec2:DescribeInstances", 2), ("ssm:SendCommand", 1)]),
            &map(&[("exit-41", 1), ("bad\"code\\x\ny", 2)]),
        );
        metrics.record_pass_at(
            at(1_764_248_400_000),
            PassKind::Iam,
            false,
            Duration::from_millis(250),
            &BTreeMap::new(),
            &map(&[("ec2:DescribeInstances", 3)]),
            &map(&[("UnauthorizedOperation", 1), ("exit-41", 1)]),
        );
        let rendered = metrics.render();
        let samples = parse_exposition(&rendered);
        let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);

        // The families, in order, with their types.
        let types: Vec<&str> = rendered
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(
            types,
            [
                "arc_onboard_up gauge",
                "arc_onboard_healthy gauge",
                "arc_onboard_passes_total counter",
                "arc_onboard_consecutive_failed_passes gauge",
                "arc_onboard_pass_duration_seconds histogram",
                "arc_onboard_last_pass_timestamp_seconds gauge",
                "arc_onboard_instances gauge",
                "arc_onboard_api_calls_total counter",
                "arc_onboard_errors_total counter",
                "arc_onboard_events_total counter",
                "arc_onboard_arc_machines_deleted_total counter",
                "arc_onboard_repairs_total counter",
                "arc_onboard_event_queue_failing gauge",
                "arc_onboard_event_instances_watched gauge",
            ]
        );
        assert!(rendered.contains(
            "# HELP arc_onboard_passes_total Finished passes by kind and result (failed: stopped before handling instances).\n"
        ));

        assert_eq!(v("arc_onboard_up", &[]), Some(1.0));
        assert_eq!(v("arc_onboard_healthy", &[]), Some(1.0));
        let passes = "arc_onboard_passes_total";
        assert_eq!(v(passes, &[("kind", "iam"), ("result", "ok")]), Some(0.0));
        assert_eq!(
            v(passes, &[("kind", "iam"), ("result", "failed")]),
            Some(1.0)
        );
        assert_eq!(
            v(passes, &[("kind", "onboarding"), ("result", "ok")]),
            Some(1.0)
        );
        assert_eq!(
            v(passes, &[("kind", "onboarding"), ("result", "failed")]),
            Some(0.0)
        );
        let streak = "arc_onboard_consecutive_failed_passes";
        assert_eq!(v(streak, &[("kind", "iam")]), Some(1.0));
        assert_eq!(v(streak, &[("kind", "onboarding")]), Some(0.0));

        let bucket = "arc_onboard_pass_duration_seconds_bucket";
        let onboarding = |le| [("kind", "onboarding"), ("le", le)];
        assert_eq!(v(bucket, &onboarding("1")), Some(0.0));
        assert_eq!(v(bucket, &onboarding("5")), Some(1.0));
        assert_eq!(v(bucket, &onboarding("+Inf")), Some(1.0));
        assert_eq!(v(bucket, &[("kind", "iam"), ("le", "1")]), Some(1.0));
        assert_eq!(
            v(
                "arc_onboard_pass_duration_seconds_sum",
                &[("kind", "onboarding")]
            ),
            Some(1.5)
        );
        assert_eq!(
            v(
                "arc_onboard_pass_duration_seconds_count",
                &[("kind", "onboarding")]
            ),
            Some(1.0)
        );
        assert_eq!(
            v("arc_onboard_pass_duration_seconds_sum", &[("kind", "iam")]),
            Some(0.25)
        );
        let buckets = samples
            .iter()
            .filter(|s| s.name == bucket && s.labels["kind"] == "iam")
            .count();
        assert_eq!(
            buckets,
            PASS_DURATION_BUCKETS.len() + 1,
            "the buckets and +Inf"
        );

        let last = "arc_onboard_last_pass_timestamp_seconds";
        assert_eq!(v(last, &[("kind", "iam")]), Some(1_764_248_400.0));
        assert_eq!(v(last, &[("kind", "onboarding")]), Some(1_764_244_800.25));
        let instances = "arc_onboard_instances";
        assert_eq!(
            v(
                instances,
                &[("kind", "onboarding"), ("status", "onboarded")]
            ),
            Some(2.0)
        );
        assert_eq!(
            v(instances, &[("kind", "onboarding"), ("status", "failed")]),
            Some(1.0)
        );
        assert_eq!(samples.iter().filter(|s| s.name == instances).count(), 2);
        let calls = "arc_onboard_api_calls_total";
        assert_eq!(
            v(calls, &[("operation", "ec2:DescribeInstances")]),
            Some(5.0)
        );
        assert_eq!(v(calls, &[("operation", "ssm:SendCommand")]), Some(1.0));
        let errors = "arc_onboard_errors_total";
        assert_eq!(v(errors, &[("code", "exit-41")]), Some(2.0));
        assert_eq!(v(errors, &[("code", "UnauthorizedOperation")]), Some(1.0));
        assert_eq!(v(errors, &[("code", "bad\"code\\x\ny")]), Some(2.0));
        assert!(
            rendered.contains("{code=\"bad\\\"code\\\\x\\ny\"} 2\n"),
            "escaped"
        );
    }

    #[test]
    fn per_account_series_carry_the_account_label() {
        let metrics = Metrics::new(3);
        let counts = |statuses: &[(Status, u64)], errors: &[(&str, u64)]| AccountCounts {
            statuses: statuses.iter().copied().collect(),
            errors: map(errors),
        };
        metrics.record_accounts(
            PassKind::Onboarding,
            &BTreeMap::from([
                (
                    "111111111111".to_string(),
                    counts(&[(Status::Onboarded, 2)], &[]),
                ),
                (
                    "222222222222".to_string(),
                    counts(&[], &[("AccessDenied", 1)]),
                ),
            ]),
        );
        metrics.record_accounts(
            PassKind::Onboarding,
            &BTreeMap::from([(
                "222222222222".to_string(),
                counts(&[(Status::AlreadyOnboarded, 3)], &[("AccessDenied", 1)]),
            )]),
        );
        let rendered = metrics.render();
        // The typed status renders as the label it always had.
        assert!(
            rendered.contains(
                "arc_onboard_account_instances{kind=\"onboarding\",account=\"222222222222\",status=\"already-onboarded\"} 3\n"
            ),
            "{rendered}"
        );
        let samples = parse_exposition(&rendered);
        let mut gauges: Vec<(String, f64)> = samples
            .iter()
            .filter(|s| s.name == "arc_onboard_account_instances")
            .map(|s| {
                (
                    format!(
                        "{}/{}/{}",
                        s.labels["kind"], s.labels["account"], s.labels["status"]
                    ),
                    s.value,
                )
            })
            .collect();
        gauges.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            gauges,
            [
                ("onboarding/111111111111/onboarded".to_string(), 0.0),
                ("onboarding/222222222222/already-onboarded".to_string(), 3.0),
            ]
        );
        let errors: Vec<(String, f64)> = samples
            .iter()
            .filter(|s| s.name == "arc_onboard_account_errors_total")
            .map(|s| {
                (
                    format!("{}/{}", s.labels["account"], s.labels["code"]),
                    s.value,
                )
            })
            .collect();
        assert_eq!(errors, [("222222222222/AccessDenied".to_string(), 2.0)]);
    }

    #[test]
    fn instance_gauge_is_replaced_and_vanished_statuses_drop_to_zero() {
        let metrics = Metrics::new(3);
        let none = BTreeMap::new();
        let pass = |statuses: &[(&str, u64)]| {
            metrics.record_pass(
                PassKind::Onboarding,
                true,
                Duration::ZERO,
                &map(statuses),
                &none,
                &none,
            )
        };
        pass(&[("planned", 4), ("failed", 1)]);
        pass(&[("onboarded", 4)]);
        let samples = parse_exposition(&metrics.render());
        let mut lines: Vec<(String, f64)> = samples
            .iter()
            .filter(|s| s.name == "arc_onboard_instances")
            .map(|s| {
                (
                    format!("{}/{}", s.labels["kind"], s.labels["status"]),
                    s.value,
                )
            })
            .collect();
        lines.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            lines,
            [
                ("onboarding/failed".to_string(), 0.0),
                ("onboarding/onboarded".to_string(), 4.0),
                ("onboarding/planned".to_string(), 0.0),
            ]
        );
    }

    #[test]
    fn render_before_any_pass() {
        let rendered = Metrics::new(1).render();
        let samples = parse_exposition(&rendered);
        let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
        assert_eq!(v("arc_onboard_healthy", &[]), Some(1.0));
        for (_, kind) in KIND_LABELS {
            for result in ["ok", "failed"] {
                let labels = [("kind", kind), ("result", result)];
                assert_eq!(v("arc_onboard_passes_total", &labels), Some(0.0));
            }
            let labels = [("kind", kind)];
            assert_eq!(
                v("arc_onboard_pass_duration_seconds_count", &labels),
                Some(0.0)
            );
            assert_eq!(
                v("arc_onboard_consecutive_failed_passes", &labels),
                Some(0.0)
            );
        }
        assert!(!rendered.contains("arc_onboard_last_pass_timestamp_seconds{"));
    }

    #[test]
    fn repairs_are_counted_by_result_from_zero() {
        use crate::reconcile::plan::Status;
        let metrics = Metrics::new(1);
        let v = |m: &Metrics, result: &str| {
            value(
                &parse_exposition(&m.render()),
                "arc_onboard_repairs_total",
                &[("result", result)],
            )
        };
        for result in REPAIR_RESULTS {
            assert_eq!(v(&metrics, result.as_str()), Some(0.0), "{result:?}");
        }
        let pass: BTreeMap<RepairResult, u64> =
            [Status::Onboarded, Status::Onboarded, Status::Failed]
                .into_iter()
                .fold(BTreeMap::new(), |mut m, s| {
                    *m.entry(repair_result(s)).or_default() += 1;
                    m
                });
        metrics.record_repairs(&pass);
        metrics.record_repairs(&pass);
        // The typed result renders as the label it always had.
        let rendered = metrics.render();
        for line in [
            "arc_onboard_repairs_total{result=\"reconnected\"} 4\n",
            "arc_onboard_repairs_total{result=\"failed\"} 2\n",
            "arc_onboard_repairs_total{result=\"pending\"} 0\n",
        ] {
            assert!(rendered.contains(line), "{line}{rendered}");
        }
        assert_eq!(v(&metrics, "reconnected"), Some(4.0));
        assert_eq!(v(&metrics, "failed"), Some(2.0));
        assert_eq!(v(&metrics, "pending"), Some(0.0));
        assert_eq!(repair_result(Status::InProgress), RepairResult::Pending);
    }

    #[test]
    fn every_kind_renders_the_label_it_had_as_a_string() {
        let kinds: Vec<PassKind> = KIND_LABELS.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(
            kinds,
            PassKind::ALL,
            "every kind needs its former label here"
        );
        let metrics = Metrics::new(9);
        // Kind n gets n + 1 passes and n + 1 instances, so a label on the wrong series shows.
        for (n, kind) in (1u64..).zip(PassKind::ALL) {
            for _ in 0..n {
                metrics.record_pass_at(
                    at(1_764_244_800_500),
                    kind,
                    true,
                    Duration::from_secs(2),
                    &map(&[("onboarded", n)]),
                    &BTreeMap::new(),
                    &BTreeMap::new(),
                );
            }
            let none = BTreeMap::new();
            let (finished, zero) = (at(1_764_248_400_000 + 1000 * n), Duration::ZERO);
            metrics.record_pass_at(finished, kind, false, zero, &none, &none, &none);
            let counts = AccountCounts {
                statuses: BTreeMap::from([(Status::Onboarded, n)]),
                errors: BTreeMap::new(),
            };
            metrics.record_accounts(
                kind,
                &BTreeMap::from([("111111111111".to_string(), counts)]),
            );
        }
        let rendered = metrics.render();
        let lines: HashSet<&str> = rendered.lines().collect();
        for (n, (_, label)) in (1u64..).zip(KIND_LABELS) {
            let passes = n + 1;
            let expected = [
                format!("arc_onboard_passes_total{{kind=\"{label}\",result=\"ok\"}} {n}"),
                format!("arc_onboard_passes_total{{kind=\"{label}\",result=\"failed\"}} 1"),
                format!("arc_onboard_consecutive_failed_passes{{kind=\"{label}\"}} 1"),
                format!("arc_onboard_pass_duration_seconds_count{{kind=\"{label}\"}} {passes}"),
                format!("arc_onboard_pass_duration_seconds_sum{{kind=\"{label}\"}} {}.0", 2 * n),
                format!("arc_onboard_last_pass_timestamp_seconds{{kind=\"{label}\"}} {}.0", 1_764_248_400 + n),
                format!("arc_onboard_pass_duration_seconds_bucket{{kind=\"{label}\",le=\"1\"}} 1"),
                format!("arc_onboard_pass_duration_seconds_bucket{{kind=\"{label}\",le=\"5\"}} {passes}"),
                format!("arc_onboard_instances{{kind=\"{label}\",status=\"onboarded\"}} 0"),
                format!(
                    "arc_onboard_account_instances{{kind=\"{label}\",account=\"111111111111\",status=\"onboarded\"}} {n}"
                ),
            ];
            for line in expected {
                assert!(lines.contains(line.as_str()), "{line}\nnot in\n{rendered}");
            }
        }
        // No kind is rendered any other way (e.g. as its Rust name).
        let labels: BTreeSet<&str> = rendered
            .split("kind=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        let before: BTreeSet<&str> = KIND_LABELS.iter().map(|(_, label)| *label).collect();
        assert_eq!(labels, before, "{rendered}");
    }

    #[test]
    fn health_flips_after_consecutive_failures_and_back() {
        let metrics = Metrics::new(3);
        let none = BTreeMap::new();
        let pass = |kind: PassKind, ok: bool| {
            metrics.record_pass(kind, ok, Duration::ZERO, &none, &none, &none)
        };
        let healthy_gauge = || {
            value(
                &parse_exposition(&metrics.render()),
                "arc_onboard_healthy",
                &[],
            )
        };
        assert!(metrics.healthy());
        pass(PassKind::Onboarding, false);
        pass(PassKind::Onboarding, false);
        assert!(metrics.healthy());
        // A success of another kind does not hide the streak.
        pass(PassKind::Iam, true);
        pass(PassKind::Onboarding, false);
        assert!(!metrics.healthy());
        assert_eq!(metrics.failing_kind(), Some((PassKind::Onboarding, 3)));
        assert_eq!(healthy_gauge(), Some(0.0));
        pass(PassKind::Onboarding, false);
        assert_eq!(metrics.failing_kind(), Some((PassKind::Onboarding, 4)));
        pass(PassKind::Onboarding, true);
        assert!(metrics.healthy());
        assert_eq!(healthy_gauge(), Some(1.0));
        // A streak interrupted by a success starts over.
        pass(PassKind::Iam, false);
        pass(PassKind::Iam, false);
        pass(PassKind::Iam, true);
        pass(PassKind::Iam, false);
        assert!(metrics.healthy());
    }

    #[test]
    fn a_lost_event_queue_makes_the_process_unhealthy_until_it_is_back() {
        let metrics = Metrics::new(3);
        use crate::daemon::event_message::result;
        metrics.record_event(result::MALFORMED);
        metrics.record_event(result::MALFORMED);
        metrics.record_event(result::ACCEPTED);
        let samples = parse_exposition(&metrics.render());
        let v = |result: &str| value(&samples, "arc_onboard_events_total", &[("result", result)]);
        assert_eq!(v("malformed"), Some(2.0));
        assert_eq!(v("accepted"), Some(1.0));
        assert_eq!(
            v("out-of-scope"),
            Some(0.0),
            "exported before the first one"
        );
        metrics.set_queue_problem(Some("AWS.SimpleQueueService.NonExistentQueue".into()));
        assert!(!metrics.healthy());
        let samples = parse_exposition(&metrics.render());
        assert_eq!(
            value(&samples, "arc_onboard_event_queue_failing", &[]),
            Some(1.0)
        );
        assert_eq!(value(&samples, "arc_onboard_healthy", &[]), Some(0.0));
        // A pass that succeeds meanwhile does not hide it.
        let none = BTreeMap::new();
        metrics.record_pass(
            PassKind::Onboarding,
            true,
            Duration::ZERO,
            &none,
            &none,
            &none,
        );
        assert!(!metrics.healthy());
        metrics.set_queue_problem(None);
        assert!(metrics.healthy());
        let samples = parse_exposition(&metrics.render());
        assert_eq!(value(&samples, "arc_onboard_healthy", &[]), Some(1.0));
    }

    #[test]
    fn deletions_are_counted_from_passes_and_events() {
        let metrics = Metrics::new(3);
        let none = BTreeMap::new();
        let statuses = map(&[("offboarded", 2), ("terminated", 1), ("onboarded", 4)]);
        metrics.record_pass(
            PassKind::Onboarding,
            true,
            Duration::ZERO,
            &statuses,
            &none,
            &none,
        );
        metrics.record_deletion(crate::reconcile::plan::Status::Offboarded);
        metrics.record_deletion(crate::reconcile::plan::Status::Failed);
        metrics.record_deletion(crate::reconcile::plan::Status::Terminated);
        assert_eq!(metrics.deleted(), 3);
        let samples = parse_exposition(&metrics.render());
        assert_eq!(
            value(&samples, "arc_onboard_arc_machines_deleted_total", &[]),
            Some(3.0)
        );
    }

    #[test]
    fn zero_threshold_means_one() {
        let metrics = Metrics::new(0);
        assert!(metrics.healthy());
        let none = BTreeMap::new();
        metrics.record_pass(PassKind::Iam, false, Duration::ZERO, &none, &none, &none);
        assert!(!metrics.healthy());
    }

    // ---- The endpoint ----

    /// A running endpoint and the means to stop it.
    struct Endpoint {
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        server: tokio::task::JoinHandle<()>,
    }

    impl Endpoint {
        async fn start(limits: Limits) -> Endpoint {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let metrics = Arc::new(Metrics::new(2));
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(serve_with(
                listener,
                Arc::clone(&metrics),
                async {
                    let _ = stopped.await;
                },
                limits,
            ));
            Endpoint {
                addr,
                metrics,
                stop: Some(stop),
                server,
            }
        }

        /// Stops the endpoint; returns how long `serve` took to return.
        async fn stop(mut self) -> Duration {
            let started = std::time::Instant::now();
            self.stop.take().unwrap().send(()).unwrap();
            tokio::time::timeout(WAIT, &mut self.server)
                .await
                .expect("serve stopped in time")
                .unwrap();
            started.elapsed()
        }
    }

    /// Sends `request` raw and reads until the server closes.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        tokio::time::timeout(WAIT, async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(request).await.unwrap();
            let mut response = Vec::new();
            let _ = stream.read_to_end(&mut response).await;
            String::from_utf8_lossy(&response).into_owned()
        })
        .await
        .expect("the server answered in time")
    }

    /// `GET path` with `Connection: close`.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        exchange(addr, request.as_bytes()).await
    }

    fn status_line(response: &str) -> &str {
        response.lines().next().unwrap_or_default()
    }

    fn body(response: &str) -> &str {
        response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
    }

    /// The value of header `name` (any case) in `response`.
    fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
        let head = response.split_once("\r\n\r\n").map_or(response, |(h, _)| h);
        head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Connections accepted on `port` that this process holds open (Linux: its socket descriptors matched
    /// against the kernel's TCP table; the listener and the clients' own ends are not counted).
    fn accepted_on(port: u16) -> usize {
        let inodes: HashSet<String> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter_map(|target| {
                let target = target.to_string_lossy().into_owned();
                Some(
                    target
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .to_string(),
                )
            })
            .collect();
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|table| std::fs::read_to_string(table).ok())
            .flat_map(|table| {
                table
                    .lines()
                    .skip(1)
                    .map(|line| {
                        line.split_whitespace()
                            .map(String::from)
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|fields| {
                let local_port = fields[1]
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                // State 0A is LISTEN.
                local_port == Some(port) && fields[3] != "0A" && inodes.contains(&fields[9])
            })
            // The kernel's table is read in pages; an entry can show up twice while it changes.
            .map(|fields| fields[9].clone())
            .collect::<HashSet<_>>()
            .len()
    }

    /// Waits until `check` holds, for at most `limit`; whether it did.
    async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if check() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        check()
    }

    /// Whether the server closed `stream` (end of file or reset) within `limit`.
    async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
        let mut sink = [0u8; 1024];
        let read_to_close = async {
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(limit, read_to_close).await.is_ok()
    }

    #[tokio::test]
    async fn serve_answers_and_stops_on_shutdown() {
        let endpoint = Endpoint::start(Limits::default()).await;
        let (addr, metrics) = (endpoint.addr, Arc::clone(&endpoint.metrics));

        // A client that connects and sends nothing does not hold up the others.
        let idle = TcpStream::connect(addr).await.unwrap();

        let none = BTreeMap::new();
        metrics.record_pass(
            PassKind::Onboarding,
            true,
            Duration::from_secs(7),
            &none,
            &none,
            &none,
        );
        let response = get(addr, "/metrics").await;
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
        assert_eq!(header(&response, "content-type"), Some(CONTENT_TYPE));
        assert_eq!(header(&response, "cache-control"), Some("no-store"));
        assert_eq!(
            header(&response, "content-length"),
            Some(body(&response).len().to_string().as_str())
        );
        let scraped = body(&response);
        let samples = parse_exposition(scraped);
        assert_eq!(value(&samples, "arc_onboard_up", &[]), Some(1.0));
        for suffix in ["_bucket", "_sum", "_count"] {
            assert!(
                scraped.contains(&format!(
                    "\narc_onboard_pass_duration_seconds{suffix}{{kind=\"onboarding\""
                )),
                "{suffix} in\n{scraped}"
            );
        }
        let labels = [("kind", "onboarding"), ("le", "15")];
        let bucket = "arc_onboard_pass_duration_seconds_bucket";
        assert_eq!(value(&samples, bucket, &labels), Some(1.0));

        let response = exchange(addr, b"GET /healthz HTTP/1.0\r\n\r\n").await;
        assert_eq!(status_line(&response), "HTTP/1.0 200 OK");
        assert_eq!(body(&response), "ok");

        for _ in 0..2 {
            metrics.record_pass(PassKind::Iam, false, Duration::ZERO, &none, &none, &none);
        }
        let response = get(addr, "/healthz").await;
        assert_eq!(status_line(&response), "HTTP/1.1 503 Service Unavailable");
        assert_eq!(
            body(&response),
            "unhealthy: 2 consecutive failed passes (iam)"
        );
        metrics.record_pass(PassKind::Iam, true, Duration::ZERO, &none, &none, &none);
        assert_eq!(status_line(&get(addr, "/healthz").await), "HTTP/1.1 200 OK");

        let response = get(addr, "/nope").await;
        assert_eq!(status_line(&response), "HTTP/1.1 404 Not Found");

        let response = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status_line(&response), "HTTP/1.1 405 Method Not Allowed");
        let allow = header(&response, "allow")
            .unwrap_or_default()
            .replace(' ', "");
        assert_eq!(allow, "GET,HEAD");

        let response = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
        assert_eq!(body(&response), "");

        // Two requests on one kept-alive connection.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        kept.write_all(request).await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut both = String::new();
        tokio::time::timeout(WAIT, kept.read_to_string(&mut both))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(both.matches("HTTP/1.1 200 OK").count(), 2, "{both}");

        let took = endpoint.stop().await;
        assert!(
            took < Duration::from_secs(3),
            "stopped in {took:?} with an idle client"
        );
        drop(idle);
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed after shutdown"
        );
    }

    #[tokio::test]
    async fn garbage_is_refused_and_the_server_goes_on() {
        let endpoint = Endpoint::start(Limits::default()).await;
        let addr = endpoint.addr;

        for junk in [
            &b"garbage\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", // a TLS hello
            b"\x00\xff\xfe\xfd\r\n\r\n",
            b"GET /metrics HTTP/9.9\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nNo colon here\r\n\r\n",
        ] {
            let response = exchange(addr, junk).await;
            assert!(
                response.is_empty() || status_line(&response).starts_with("HTTP/1.1 4"),
                "{junk:?} -> {response:?}"
            );
        }
        let response = exchange(addr, b"garbage\r\n\r\n").await;
        assert_eq!(status_line(&response), "HTTP/1.1 400 Bad Request");

        // A head over the limit, as one long line or as many headers, unfinished or not.
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(10_000));
        let many_headers = format!(
            "GET /metrics HTTP/1.1\r\n{}\r\n",
            "X-Filler: 0123456789012345678901234567890123456789\r\n".repeat(400)
        );
        for request in [long_line, many_headers] {
            let response = exchange(addr, request.as_bytes()).await;
            assert_eq!(
                status_line(&response),
                "HTTP/1.1 431 Request Header Fields Too Large"
            );
        }
        // Half a megabyte of header bytes without a line feed.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let flood = vec![b'x'; 512 * 1024];
        let _ = tokio::time::timeout(WAIT, stream.write_all(&flood)).await;
        assert!(
            closed_within(&mut stream, WAIT).await,
            "closed after the flood"
        );

        let response = get(addr, "/metrics").await;
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
        endpoint.stop().await;
    }

    #[tokio::test]
    async fn slow_clients_are_cut_off_at_the_header_deadline() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(400),
            ..Limits::default()
        };
        let endpoint = Endpoint::start(limits).await;
        let addr = endpoint.addr;
        let started = tokio::time::Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut trickler = TcpStream::connect(addr).await.unwrap();
        let trickle = async {
            for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "
                .iter()
                .cycle()
            {
                if trickler.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        // While both are open, others get answers.
        let others = async {
            for _ in 0..5 {
                assert_eq!(status_line(&get(addr, "/healthz").await), "HTTP/1.1 200 OK");
            }
        };
        let (_, ()) = tokio::time::timeout(WAIT, futures::future::join(trickle, others))
            .await
            .expect("the trickler was cut off");
        let trickler_cut = started.elapsed();
        assert!(
            closed_within(&mut silent, WAIT).await,
            "the silent client is closed"
        );
        assert!(
            trickler_cut < Duration::from_secs(3),
            "cut off after {trickler_cut:?}"
        );
        endpoint.stop().await;
    }

    #[tokio::test]
    async fn open_connections_are_bounded_and_idle_floods_pass() {
        let limits = Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let endpoint = Endpoint::start(limits).await;
        let addr = endpoint.addr;
        let port = addr.port();

        // 40 clients connect and say nothing: 4 are accepted, the rest wait in the backlog.
        let mut idle = Vec::new();
        for _ in 0..40 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        assert!(
            eventually(WAIT, || accepted_on(port) == 4).await,
            "4 connections accepted; {} now",
            accepted_on(port)
        );
        let mut peak = 0;
        for _ in 0..20 {
            peak = peak.max(accepted_on(port));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(peak, 4, "never more than the limit open");

        // A real client behind them is answered once the header deadline has cleared them (10 rounds
        // of 0.3 s), not never.
        let started = tokio::time::Instant::now();
        let response = get(addr, "/healthz").await;
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        drop(idle);
        endpoint.stop().await;
    }

    #[tokio::test]
    async fn many_concurrent_requests_beyond_the_limit_are_all_answered() {
        let limits = Limits {
            max_connections: 8,
            ..Limits::default()
        };
        let endpoint = Endpoint::start(limits).await;
        let (addr, port) = (endpoint.addr, endpoint.addr.port());
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = {
            let sampling = Arc::clone(&sampling);
            tokio::task::spawn_blocking(move || {
                let mut peak = 0;
                while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(accepted_on(port));
                    std::thread::sleep(Duration::from_millis(5));
                }
                peak
            })
        };
        let clients: Vec<_> = (0..500)
            .map(|_| tokio::spawn(async move { get(addr, "/metrics").await }))
            .collect();
        let mut answered = 0;
        for client in clients {
            let response = client.await.unwrap();
            assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
            parse_exposition(body(&response));
            answered += 1;
        }
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        let peak = sampler.await.unwrap();
        assert_eq!(answered, 500);
        assert!(peak <= 8, "{peak} connections open at once");
        endpoint.stop().await;
    }

    #[tokio::test]
    async fn a_connection_is_closed_at_its_maximum_age() {
        let limits = Limits {
            max_connection_age: Duration::from_millis(500),
            ..Limits::default()
        };
        let endpoint = Endpoint::start(limits).await;
        let mut stream = TcpStream::connect(endpoint.addr).await.unwrap();
        let started = tokio::time::Instant::now();
        // Requests keep coming and the answers are never read.
        let pipeline = async {
            loop {
                let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
                if stream.write_all(request).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(WAIT, pipeline)
            .await
            .expect("the server closed the connection");
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        endpoint.stop().await;
    }

    #[tokio::test]
    async fn shutdown_is_not_held_up_by_a_slow_client() {
        let endpoint = Endpoint::start(Limits::default()).await;
        let mut slow = TcpStream::connect(endpoint.addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost:")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let took = endpoint.stop().await;
        assert!(took < Duration::from_secs(3), "stopped in {took:?}");
        assert!(closed_within(&mut slow, WAIT).await);
    }
}
