//! The daemon assembled: given its ports and settings (built by whoever starts it: the command line wires
//! the real adapters, tests the fakes), it serves the metrics, runs the two schedules and the event path
//! until `shutdown`, and closes the state file. It builds no adapter and reads no argument itself.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::{Config, Shard};
use crate::daemon::events::{EventContext, EventOptions, EventPorts};
use crate::daemon::metrics::Metrics;
use crate::daemon::state::StateDb;
use crate::daemon::{
    default_jitter, observed_pass, schedule_loop, PassKind, PassSummary, Schedule,
};
use crate::ports::accounts::Accounts;
use crate::ports::{ApiCounter, Arm, MutationToken, Queue};
use crate::reconcile::accounts::run_accounts;
use crate::reconcile::leases::Leases;
use crate::reconcile::pass::{Durable, PassOptions};

/// The ports of one scheduled pass, with the counter of their calls (fresh per pass).
pub struct PassPorts<X, A> {
    /// The accounts port the pass enters accounts through.
    pub accounts: X,
    /// Azure Resource Manager, when `[azure]` is configured.
    pub arm: Option<A>,
    /// Counts the calls of these ports.
    pub counter: ApiCounter,
}

/// The ports of the event path, when `[events]` is configured.
pub struct EventDeps<X, A, Q> {
    /// The accounts port (listing and entering the accounts events come from).
    pub accounts: X,
    /// Azure Resource Manager.
    pub arm: A,
    /// The event queue.
    pub queue: Q,
    /// The queue's URL and region, for the start log.
    pub queue_url: String,
    /// The queue's region.
    pub region: String,
}

/// What the daemon runs on.
pub struct DaemonDeps<'a, X, A, Q, P> {
    /// The validated configuration.
    pub config: &'a Config,
    /// The state file, opened; closed (checkpointed) when the daemon stops.
    pub db: StateDb,
    /// The daemon's metrics.
    pub metrics: Arc<Metrics>,
    /// Where `/metrics` and `/healthz` are served, when asked for (already bound).
    pub metrics_listener: Option<tokio::net::TcpListener>,
    /// The daemon's mutation token.
    pub token: MutationToken,
    /// The ports of one scheduled pass, made anew for each.
    pub pass_ports: P,
    /// The event path's ports, when `[events]` is configured and Azure is there.
    pub events: Option<EventDeps<X, A, Q>>,
    /// Notified to run the passes now (SIGHUP).
    pub trigger: Arc<Notify>,
}

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// When each pass runs.
    pub schedule: Schedule,
    /// The bounds of every pass (the scheduled ones and the event path's).
    pub base: PassOptions,
    /// First retry delay after a failed install; doubles per failure.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// `--shard`.
    pub shard: Option<Shard>,
    /// How long a pass in flight may go on after `shutdown`.
    pub shutdown_grace: Duration,
    /// The state file's path, for the logs.
    pub state_file: PathBuf,
    /// The start line, logged once the daemon is up.
    pub start_line: String,
}

/// Runs the daemon until `shutdown` resolves and the passes in flight end (within the grace period).
pub async fn run<X, A, Q, P>(
    deps: DaemonDeps<'_, X, A, Q, P>,
    settings: DaemonSettings,
    shutdown: impl Future<Output = ()>,
) where
    X: Accounts,
    A: Arm,
    Q: Queue,
    P: Fn() -> PassPorts<X, A>,
{
    let DaemonDeps {
        config,
        db,
        metrics,
        metrics_listener,
        token,
        pass_ports,
        events,
        trigger,
    } = deps;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Every task spawned here is joined before the daemon returns.
    let mut server = None;
    if let Some(listener) = metrics_listener {
        let addr = listener.local_addr().ok();
        let mut rx = stop_rx.clone();
        let shutdown = async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        server = Some(tokio::spawn(crate::daemon::metrics::serve(
            listener,
            metrics.clone(),
            shutdown,
        )));
        if let Some(addr) = addr {
            tracing::info!(%addr, "serving /metrics and /healthz");
        }
    }
    let durable = Durable {
        memory: &db,
        retry_base: settings.retry_base,
        retry_max: settings.retry_max,
    };
    let base = &settings.base;
    tracing::info!(
        state_file = %settings.state_file.display(),
        "{}",
        settings.start_line
    );
    // A scheduled pass holds its account's regions alone, event installs share theirs: they never plan
    // the same instance at once, and unrelated accounts never wait for each other.
    let leases = Arc::new(Leases::new());
    let shard = settings.shard;
    let run = |kind: PassKind| {
        let adapters = pass_ports();
        let mut opts = base.clone();
        opts.install.correlation_id = uuid::Uuid::new_v4().to_string();
        opts.scope = kind.scope();
        opts.leases = Some(leases.clone());
        let (token, durable, db, metrics) = (&token, &durable, &db, &metrics);
        async move {
            let pass = async {
                match run_accounts(
                    config,
                    &adapters.accounts,
                    adapters.arm.as_ref(),
                    Some(token),
                    &opts,
                    Some(durable),
                    shard,
                    opts.install.clock.now(),
                )
                .await
                {
                    Ok(outcome) => PassSummary::from_outcome(&outcome),
                    Err(e) => {
                        tracing::error!(error = %crate::error::chain(&e), "pass failed");
                        PassSummary {
                            ok: false,
                            api_calls: adapters.counter.snapshot(),
                            errors: [("pass-failed".to_string(), 1)].into(),
                            ..PassSummary::default()
                        }
                    }
                }
            };
            observed_pass(kind, pass, db, metrics).await;
        }
    };
    let (events_stop, events_stopped) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = events_stop.send(true);
    };
    let event_path = daemon_events(
        config,
        events,
        (&token, &durable, &metrics, &leases),
        &settings,
        events_stopped,
    );
    tokio::join!(
        schedule_loop(
            &settings.schedule,
            default_jitter,
            run,
            &trigger,
            shutdown,
            settings.shutdown_grace,
        ),
        event_path
    );
    let _ = stop_tx.send(true);
    if let Some(server) = server {
        let _ = server.await;
    }
    if let Err(e) = db.close().await {
        tracing::warn!(error = %crate::error::chain(&e), "cannot checkpoint and close the state file");
    }
    tracing::info!("daemon stopped");
}

/// The daemon's event path when its ports are there (else nothing), until `stopped` says so.
async fn daemon_events<X: Accounts, A: Arm, Q: Queue>(
    config: &Config,
    events: Option<EventDeps<X, A, Q>>,
    (token, durable, metrics, leases): (&MutationToken, &Durable<'_>, &Metrics, &Leases),
    settings: &DaemonSettings,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let Some(events) = events else {
        return;
    };
    tracing::info!(queue_url = %events.queue_url, region = %events.region, "event-driven onboarding on");
    let ctx = EventContext {
        config,
        token,
        durable,
        metrics,
        leases,
    };
    // Every account in scope: the event path lists them as the passes do, and enters each (AssumeRole
    // into members) the first time one of its events comes, keeping its clients.
    let ports = EventPorts {
        accounts: &events.accounts,
        arm: &events.arm,
        queue: &events.queue,
    };
    let opts = EventOptions {
        pass: settings.base.clone(),
        shutdown_grace: settings.shutdown_grace,
        shard: settings.shard,
        ..EventOptions::default()
    };
    crate::daemon::events::run(&ctx, &ports, &opts, async move {
        let _ = stopped.wait_for(|s| *s).await;
    })
    .await;
}
