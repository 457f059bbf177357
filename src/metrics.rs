//! Prometheus metrics of the daemon's passes, and a minimal HTTP endpoint serving them and a health check.
//!
//! No HTTP framework: [`serve`] answers exactly one request per connection (HTTP/1.0 and 1.1) and closes
//! it, which is all a Prometheus scraper or a liveness probe needs. The text is the Prometheus exposition
//! format 0.0.4, rendered in a deterministic order.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// The `Content-Type` of the Prometheus text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The pass kinds the daemon runs: their pass counters are exported (at 0) before their first pass, so
/// `rate()` and `increase()` see the series from the start.
const KNOWN_KINDS: [&str; 2] = ["iam", "onboarding"];
/// The largest request head (request line and headers) accepted.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to read the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the response, how long the client may take to close its side (so that unread request bytes do
/// not turn our close into a reset that could destroy the response).
const LINGER: Duration = Duration::from_secs(2);
/// After `shutdown` resolves, how long responses being written may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Counters and gauges of the daemon's passes; shared (`Arc<Metrics>`) between the passes that record
/// and the endpoint that renders.
pub struct Metrics {
    unhealthy_after: u32,
    state: Mutex<State>,
}

/// Everything recorded so far.
#[derive(Default)]
struct State {
    kinds: BTreeMap<String, KindState>,
    api_calls: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

/// What was recorded for one pass kind.
#[derive(Default)]
struct KindState {
    passes_ok: u64,
    passes_failed: u64,
    consecutive_failures: u32,
    last: Option<LastPass>,
    instances: BTreeMap<String, u64>,
}

/// The last finished pass of one kind.
#[derive(Clone, Copy)]
struct LastPass {
    duration_seconds: f64,
    finished_at_seconds: f64,
}

impl Metrics {
    /// Metrics with no pass recorded yet (healthy). Health turns unhealthy once some pass kind has failed
    /// `unhealthy_after` times in a row (0 is taken as 1), and healthy again at that kind's next success.
    /// Kinds count separately, so a daily IAM pass that keeps failing is not hidden by hourly onboarding
    /// passes that succeed.
    pub fn new(unhealthy_after: u32) -> Metrics {
        let kinds = KNOWN_KINDS
            .iter()
            .map(|kind| (kind.to_string(), KindState::default()))
            .collect();
        Metrics {
            unhealthy_after: unhealthy_after.max(1),
            state: Mutex::new(State {
                kinds,
                ..State::default()
            }),
        }
    }

    /// Records one finished pass.
    ///
    /// - `kind`: `"iam"` or `"onboarding"` (any other name gets its own series).
    /// - `ok`: whether the pass completed (`false`: it failed before handling instances).
    /// - `duration`: how long the pass took.
    /// - `statuses`: instances by report status at the end of the pass; replaces the kind's instance
    ///   gauge. A status reported by an earlier pass and absent now is exported as 0 rather than dropped.
    /// - `api_calls`: calls made during this pass by `"service:Operation"`; added to the counters.
    /// - `errors`: error codes seen in this pass (e.g. `"UnauthorizedOperation"`, `"exit-41"`) with their
    ///   counts; added to the counters.
    pub fn record_pass(
        &self,
        kind: &str,
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
        kind: &str,
        ok: bool,
        duration: Duration,
        statuses: &BTreeMap<String, u64>,
        api_calls: &BTreeMap<String, u64>,
        errors: &BTreeMap<String, u64>,
    ) {
        let mut state = self.lock();
        let entry = state.kinds.entry(kind.to_string()).or_default();
        if ok {
            entry.passes_ok += 1;
            entry.consecutive_failures = 0;
        } else {
            entry.passes_failed += 1;
            entry.consecutive_failures = entry.consecutive_failures.saturating_add(1);
        }
        entry.last = Some(LastPass {
            duration_seconds: duration.as_secs_f64(),
            finished_at_seconds: finished_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        });
        for count in entry.instances.values_mut() {
            *count = 0;
        }
        for (status, count) in statuses {
            entry.instances.insert(status.clone(), *count);
        }
        for (operation, count) in api_calls {
            let total = state.api_calls.entry(operation.clone()).or_default();
            *total = total.saturating_add(*count);
        }
        for (code, count) in errors {
            let total = state.errors.entry(code.clone()).or_default();
            *total = total.saturating_add(*count);
        }
    }

    /// `false` once some pass kind has failed `unhealthy_after` times in a row, until it succeeds again.
    pub fn healthy(&self) -> bool {
        self.failing_kind().is_none()
    }

    /// The kind with the longest run of consecutive failures, when that run makes the process unhealthy.
    fn failing_kind(&self) -> Option<(String, u32)> {
        self.failing_kind_in(&self.lock())
    }

    /// [`Metrics::failing_kind`] over a locked state.
    fn failing_kind_in(&self, state: &State) -> Option<(String, u32)> {
        state
            .kinds
            .iter()
            .filter(|(_, k)| k.consecutive_failures >= self.unhealthy_after)
            .max_by_key(|(_, k)| k.consecutive_failures)
            .map(|(kind, k)| (kind.clone(), k.consecutive_failures))
    }

    /// The metrics in the Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let state = self.lock();
        let healthy = self.failing_kind_in(&state).is_none();
        let mut out = String::new();

        family(
            &mut out,
            "arc_onboard_up",
            "gauge",
            "1 while arc-onboard is running.",
        );
        sample(&mut out, "arc_onboard_up", &[], 1);

        family(
            &mut out,
            "arc_onboard_healthy",
            "gauge",
            "1 unless a pass kind has failed too many times in a row (the /healthz answer).",
        );
        sample(&mut out, "arc_onboard_healthy", &[], u8::from(healthy));

        family(
            &mut out,
            "arc_onboard_passes_total",
            "counter",
            "Finished passes by kind and result (failed: stopped before handling instances).",
        );
        for (kind, k) in &state.kinds {
            for (result, count) in [("ok", k.passes_ok), ("failed", k.passes_failed)] {
                sample(
                    &mut out,
                    "arc_onboard_passes_total",
                    &[("kind", kind), ("result", result)],
                    count,
                );
            }
        }

        family(
            &mut out,
            "arc_onboard_consecutive_failed_passes",
            "gauge",
            "Failed passes of this kind since its last successful pass.",
        );
        for (kind, k) in &state.kinds {
            sample(
                &mut out,
                "arc_onboard_consecutive_failed_passes",
                &[("kind", kind)],
                k.consecutive_failures,
            );
        }

        family(
            &mut out,
            "arc_onboard_pass_duration_seconds",
            "gauge",
            "Duration of the last finished pass of this kind.",
        );
        for (kind, last) in last_passes(&state) {
            sample(
                &mut out,
                "arc_onboard_pass_duration_seconds",
                &[("kind", kind)],
                last.duration_seconds,
            );
        }

        family(
            &mut out,
            "arc_onboard_last_pass_timestamp_seconds",
            "gauge",
            "When the last pass of this kind finished, in seconds since the Unix epoch.",
        );
        for (kind, last) in last_passes(&state) {
            sample(
                &mut out,
                "arc_onboard_last_pass_timestamp_seconds",
                &[("kind", kind)],
                last.finished_at_seconds,
            );
        }

        family(
            &mut out,
            "arc_onboard_instances",
            "gauge",
            "Instances by report status at the end of the last pass of this kind.",
        );
        for (kind, k) in &state.kinds {
            for (status, count) in &k.instances {
                sample(
                    &mut out,
                    "arc_onboard_instances",
                    &[("kind", kind), ("status", status)],
                    count,
                );
            }
        }

        family(
            &mut out,
            "arc_onboard_api_calls_total",
            "counter",
            "AWS and Azure calls (HTTP attempts, retries included) by service:Operation.",
        );
        for (operation, count) in &state.api_calls {
            sample(
                &mut out,
                "arc_onboard_api_calls_total",
                &[("operation", operation)],
                count,
            );
        }

        family(
            &mut out,
            "arc_onboard_errors_total",
            "counter",
            "Errors seen in passes by code (AWS error codes, exit-N for agent installs).",
        );
        for (code, count) in &state.errors {
            sample(
                &mut out,
                "arc_onboard_errors_total",
                &[("code", code)],
                count,
            );
        }

        out
    }

    /// The state; a panic elsewhere while holding the lock leaves counters that are still worth serving.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The kinds that finished at least one pass, with their last pass.
fn last_passes(state: &State) -> impl Iterator<Item = (&String, LastPass)> {
    state
        .kinds
        .iter()
        .filter_map(|(kind, k)| k.last.map(|last| (kind, last)))
}

/// Writes a family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample line, label values escaped.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, value);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Escapes a label value as the exposition format requires: backslash, double quote and line feed.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Serves `GET /metrics` ([`CONTENT_TYPE`]) and `GET /healthz` (200 `ok`, or 503
/// `unhealthy: N consecutive failed passes (KIND)`) on `listener` until `shutdown` resolves. `HEAD` is
/// answered like `GET` without a body; another method on those paths gets 405, any other path 404, a
/// malformed request 400.
///
/// Each connection is handled in its own task, with HTTP/1.0 or 1.1, and closed after one response. When
/// `shutdown` resolves the listener is closed at once; responses being written get a short grace period.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = joined {
                    warn!(%error, "metrics endpoint: a connection task failed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let metrics = Arc::clone(&metrics);
                    connections.spawn(async move {
                        if let Err(error) = handle_connection(stream, &metrics).await {
                            debug!(%peer, %error, "metrics endpoint: connection ended without a response");
                        }
                    });
                }
                Err(error) => {
                    warn!(%error, "metrics endpoint: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    // Dropping the set aborts whatever is still running.
}

/// Why a connection ended without a complete exchange.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The client closed before sending a whole request head.
    #[error("the client closed the connection before sending a request")]
    Closed,
    /// The client was too slow to send its request or read the response.
    #[error("timed out")]
    Timeout,
}

/// Why a request head could not be read.
enum HeadError {
    /// The head exceeds [`MAX_REQUEST_HEAD`].
    TooLarge,
    /// The connection failed.
    Connection(ConnectionError),
}

/// A parsed request line.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    http_10: bool,
}

/// One response.
struct Response {
    status: &'static str,
    content_type: &'static str,
    allow: bool,
    body: String,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            allow: false,
            body: body.into(),
        }
    }
}

/// Reads one request, writes one response, closes.
async fn handle_connection(
    mut stream: TcpStream,
    metrics: &Metrics,
) -> Result<(), ConnectionError> {
    let (response, http_10, head_only) =
        match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
            Err(_) => return Err(ConnectionError::Timeout),
            Ok(Err(HeadError::Connection(error))) => return Err(error),
            Ok(Err(HeadError::TooLarge)) => (
                Response::text(
                    "431 Request Header Fields Too Large",
                    "request head too large\n",
                ),
                false,
                false,
            ),
            Ok(Ok(head)) => match parse_request(&head) {
                None => (
                    Response::text("400 Bad Request", "bad request\n"),
                    false,
                    false,
                ),
                Some(request) => (
                    route(&request, metrics),
                    request.http_10,
                    request.method == "HEAD",
                ),
            },
        };
    let bytes = encode(&response, http_10, head_only);
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| ConnectionError::Timeout)??;
    // Wait (briefly) for the client to close, discarding anything else it sends.
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}

/// Reads up to the blank line that ends the request head.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| HeadError::Connection(e.into()))?;
        if n == 0 {
            return Err(HeadError::Connection(ConnectionError::Closed));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Where the head ends: after `\r\n\r\n`, or `\n\n` from lenient clients.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parses the request line; the headers are not needed.
fn parse_request(head: &[u8]) -> Option<Request<'_>> {
    let line_end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method.is_empty() || !target.starts_with('/') {
        return None;
    }
    let http_10 = match version {
        "HTTP/1.0" => true,
        "HTTP/1.1" => false,
        _ => return None,
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Some(Request {
        method,
        path,
        http_10,
    })
}

/// The response to a request.
fn route(request: &Request<'_>, metrics: &Metrics) -> Response {
    if request.path != "/metrics" && request.path != "/healthz" {
        return Response::text("404 Not Found", "not found\n");
    }
    if request.method != "GET" && request.method != "HEAD" {
        let mut response = Response::text("405 Method Not Allowed", "method not allowed\n");
        response.allow = true;
        return response;
    }
    if request.path == "/metrics" {
        return Response {
            status: "200 OK",
            content_type: CONTENT_TYPE,
            allow: false,
            body: metrics.render(),
        };
    }
    match metrics.failing_kind() {
        None => Response::text("200 OK", "ok"),
        Some((kind, failures)) => Response::text(
            "503 Service Unavailable",
            format!("unhealthy: {failures} consecutive failed passes ({kind})"),
        ),
    }
}

/// The bytes of a response (`Connection: close`, the body left out for `HEAD`).
fn encode(response: &Response, http_10: bool, head_only: bool) -> Vec<u8> {
    let version = if http_10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let mut out = format!(
        "{version} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if response.allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&response.body);
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn at(millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(millis)
    }

    #[test]
    fn render_after_two_passes() {
        let metrics = Metrics::new(3);
        metrics.record_pass_at(
            at(1_764_244_800_250),
            "onboarding",
            true,
            Duration::from_millis(1500),
            &map(&[("onboarded", 2), ("failed", 1)]),
            &map(&[("ec2:DescribeInstances", 2), ("ssm:SendCommand", 1)]),
            &map(&[("exit-41", 1), ("bad\"code\\x\ny", 2)]),
        );
        metrics.record_pass_at(
            at(1_764_248_400_000),
            "iam",
            false,
            Duration::from_millis(250),
            &BTreeMap::new(),
            &map(&[("ec2:DescribeInstances", 3)]),
            &map(&[("UnauthorizedOperation", 1), ("exit-41", 1)]),
        );
        let expected = concat!(
            "# HELP arc_onboard_up 1 while arc-onboard is running.\n",
            "# TYPE arc_onboard_up gauge\n",
            "arc_onboard_up 1\n",
            "# HELP arc_onboard_healthy 1 unless a pass kind has failed too many times in a row (the /healthz answer).\n",
            "# TYPE arc_onboard_healthy gauge\n",
            "arc_onboard_healthy 1\n",
            "# HELP arc_onboard_passes_total Finished passes by kind and result (failed: stopped before handling instances).\n",
            "# TYPE arc_onboard_passes_total counter\n",
            "arc_onboard_passes_total{kind=\"iam\",result=\"ok\"} 0\n",
            "arc_onboard_passes_total{kind=\"iam\",result=\"failed\"} 1\n",
            "arc_onboard_passes_total{kind=\"onboarding\",result=\"ok\"} 1\n",
            "arc_onboard_passes_total{kind=\"onboarding\",result=\"failed\"} 0\n",
            "# HELP arc_onboard_consecutive_failed_passes Failed passes of this kind since its last successful pass.\n",
            "# TYPE arc_onboard_consecutive_failed_passes gauge\n",
            "arc_onboard_consecutive_failed_passes{kind=\"iam\"} 1\n",
            "arc_onboard_consecutive_failed_passes{kind=\"onboarding\"} 0\n",
            "# HELP arc_onboard_pass_duration_seconds Duration of the last finished pass of this kind.\n",
            "# TYPE arc_onboard_pass_duration_seconds gauge\n",
            "arc_onboard_pass_duration_seconds{kind=\"iam\"} 0.25\n",
            "arc_onboard_pass_duration_seconds{kind=\"onboarding\"} 1.5\n",
            "# HELP arc_onboard_last_pass_timestamp_seconds When the last pass of this kind finished, in seconds since the Unix epoch.\n",
            "# TYPE arc_onboard_last_pass_timestamp_seconds gauge\n",
            "arc_onboard_last_pass_timestamp_seconds{kind=\"iam\"} 1764248400\n",
            "arc_onboard_last_pass_timestamp_seconds{kind=\"onboarding\"} 1764244800.25\n",
            "# HELP arc_onboard_instances Instances by report status at the end of the last pass of this kind.\n",
            "# TYPE arc_onboard_instances gauge\n",
            "arc_onboard_instances{kind=\"onboarding\",status=\"failed\"} 1\n",
            "arc_onboard_instances{kind=\"onboarding\",status=\"onboarded\"} 2\n",
            "# HELP arc_onboard_api_calls_total AWS and Azure calls (HTTP attempts, retries included) by service:Operation.\n",
            "# TYPE arc_onboard_api_calls_total counter\n",
            "arc_onboard_api_calls_total{operation=\"ec2:DescribeInstances\"} 5\n",
            "arc_onboard_api_calls_total{operation=\"ssm:SendCommand\"} 1\n",
            "# HELP arc_onboard_errors_total Errors seen in passes by code (AWS error codes, exit-N for agent installs).\n",
            "# TYPE arc_onboard_errors_total counter\n",
            "arc_onboard_errors_total{code=\"UnauthorizedOperation\"} 1\n",
            "arc_onboard_errors_total{code=\"bad\\\"code\\\\x\\ny\"} 2\n",
            "arc_onboard_errors_total{code=\"exit-41\"} 2\n",
        );
        let rendered = metrics.render();
        for (got, want) in rendered.lines().zip(expected.lines()) {
            assert_eq!(got, want);
        }
        assert_eq!(rendered, expected);
    }

    #[test]
    fn instance_gauge_is_replaced_and_vanished_statuses_drop_to_zero() {
        let metrics = Metrics::new(3);
        let none = BTreeMap::new();
        metrics.record_pass(
            "onboarding",
            true,
            Duration::ZERO,
            &map(&[("planned", 4), ("failed", 1)]),
            &none,
            &none,
        );
        metrics.record_pass(
            "onboarding",
            true,
            Duration::ZERO,
            &map(&[("onboarded", 4)]),
            &none,
            &none,
        );
        let rendered = metrics.render();
        let lines: Vec<&str> = rendered
            .lines()
            .filter(|l| l.starts_with("arc_onboard_instances{"))
            .collect();
        assert_eq!(
            lines,
            [
                "arc_onboard_instances{kind=\"onboarding\",status=\"failed\"} 0",
                "arc_onboard_instances{kind=\"onboarding\",status=\"onboarded\"} 4",
                "arc_onboard_instances{kind=\"onboarding\",status=\"planned\"} 0",
            ]
        );
    }

    #[test]
    fn render_before_any_pass() {
        let rendered = Metrics::new(1).render();
        assert!(rendered.contains("\narc_onboard_healthy 1\n"));
        assert!(rendered.contains("arc_onboard_passes_total{kind=\"iam\",result=\"ok\"} 0\n"));
        assert!(!rendered.contains("arc_onboard_pass_duration_seconds{"));
        for line in rendered.lines().filter(|l| l.starts_with("# TYPE")) {
            assert!(
                line.ends_with(" gauge") || line.ends_with(" counter"),
                "{line}"
            );
        }
    }

    #[test]
    fn health_flips_after_consecutive_failures_and_back() {
        let metrics = Metrics::new(3);
        let none = BTreeMap::new();
        let pass = |kind: &str, ok: bool| {
            metrics.record_pass(kind, ok, Duration::ZERO, &none, &none, &none)
        };
        assert!(metrics.healthy());
        pass("onboarding", false);
        pass("onboarding", false);
        assert!(metrics.healthy());
        // A success of another kind does not hide the streak.
        pass("iam", true);
        pass("onboarding", false);
        assert!(!metrics.healthy());
        assert_eq!(metrics.failing_kind(), Some(("onboarding".to_string(), 3)));
        assert!(metrics.render().contains("\narc_onboard_healthy 0\n"));
        pass("onboarding", false);
        assert_eq!(metrics.failing_kind(), Some(("onboarding".to_string(), 4)));
        pass("onboarding", true);
        assert!(metrics.healthy());
        assert!(metrics.render().contains("\narc_onboard_healthy 1\n"));
        // A streak interrupted by a success starts over.
        pass("iam", false);
        pass("iam", false);
        pass("iam", true);
        pass("iam", false);
        assert!(metrics.healthy());
    }

    #[test]
    fn zero_threshold_means_one() {
        let metrics = Metrics::new(0);
        assert!(metrics.healthy());
        let none = BTreeMap::new();
        metrics.record_pass("iam", false, Duration::ZERO, &none, &none, &none);
        assert!(!metrics.healthy());
    }

    #[test]
    fn request_parsing() {
        let request = parse_request(b"GET /metrics?x=1 HTTP/1.0\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(
            (request.method, request.path, request.http_10),
            ("GET", "/metrics", true)
        );
        assert!(parse_request(b"GET /metrics HTTP/2\r\n\r\n").is_none());
        assert!(parse_request(b"GET  /metrics HTTP/1.1\r\n\r\n").is_none());
        assert!(parse_request(b"GET metrics HTTP/1.1\r\n\r\n").is_none());
        assert!(parse_request(b"\r\n\r\n").is_none());
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nrest"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    /// Sends `request` raw and reads until the server closes.
    async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
        tokio::time::timeout(WAIT, async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        })
        .await
        .expect("the server answered in time")
    }

    fn status_line(response: &str) -> &str {
        response.lines().next().unwrap_or_default()
    }

    fn body(response: &str) -> &str {
        response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
    }

    #[tokio::test]
    async fn serve_answers_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new(2));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::clone(&metrics), async {
            let _ = stopped.await;
        }));

        // A client that connects and sends nothing does not hold up the others.
        let idle = TcpStream::connect(addr).await.unwrap();

        let response = exchange(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
        assert!(response.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(response.contains("\r\nConnection: close\r\n"));
        assert_eq!(body(&response), metrics.render());
        assert!(body(&response).contains("\narc_onboard_up 1\n"));
        assert!(response.contains(&format!(
            "\r\nContent-Length: {}\r\n",
            body(&response).len()
        )));

        let response = exchange(addr, "GET /healthz HTTP/1.0\r\n\r\n").await;
        assert_eq!(status_line(&response), "HTTP/1.0 200 OK");
        assert_eq!(body(&response), "ok");

        let none = BTreeMap::new();
        for _ in 0..2 {
            metrics.record_pass("iam", false, Duration::ZERO, &none, &none, &none);
        }
        let response = exchange(addr, "GET /healthz HTTP/1.1\r\n\r\n").await;
        assert_eq!(status_line(&response), "HTTP/1.1 503 Service Unavailable");
        assert_eq!(
            body(&response),
            "unhealthy: 2 consecutive failed passes (iam)"
        );

        let response = exchange(addr, "GET /nope HTTP/1.1\r\n\r\n").await;
        assert_eq!(status_line(&response), "HTTP/1.1 404 Not Found");

        let response = exchange(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(status_line(&response), "HTTP/1.1 405 Method Not Allowed");
        assert!(response.contains("\r\nAllow: GET, HEAD\r\n"));

        let response = exchange(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
        assert_eq!(body(&response), "");

        let response = exchange(addr, "garbage\r\n\r\n").await;
        assert_eq!(status_line(&response), "HTTP/1.1 400 Bad Request");

        let response = exchange(addr, &format!("GET /{} HTTP/1.1\r\n", "a".repeat(10_000))).await;
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );

        drop(idle);
        stop.send(()).unwrap();
        tokio::time::timeout(WAIT, server)
            .await
            .expect("serve stopped in time")
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed after shutdown"
        );
    }
}
