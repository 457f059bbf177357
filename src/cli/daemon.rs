//! `daemon`: the schedules, the signals that stop it, and the event path when `[events]` is configured.

use super::commands::pass_options;
use super::wire::{
    attach_web_identity, azure_adapter, home_region, load_credential, session_name, Adapters,
};
use super::{exit, CliError, DaemonArgs};
use crate::adapters::aws;
use crate::adapters::azure::RestArm;
use crate::adapters::organizations::SdkAccounts;
use crate::config::Config;
use crate::ports::{ApiCounter, MutationToken};
use crate::reconcile::accounts::run_accounts;
use crate::reconcile::pass::{PassError, PassOptions};

pub(super) async fn daemon_command(config: &Config, args: &DaemonArgs) -> Result<u8, CliError> {
    use crate::daemon::{
        default_jitter, observed_pass, schedule_loop, PassKind, PassSummary, Schedule,
    };
    use crate::reconcile::pass::Durable;
    use std::sync::Arc;

    let Some(credential) = load_credential(config)? else {
        return Err(PassError::AzureMissing.into());
    };
    let arm = azure_adapter(config, Some(credential), true)?;
    let db = crate::daemon::state::StateDb::open(&args.state_file).await?;
    let metrics = Arc::new(crate::daemon::metrics::Metrics::new(args.unhealthy_after));
    let schedule = Schedule::from_config(config);
    for w in schedule.warnings() {
        tracing::warn!("{w}; fine for tests and demos, heavy for a real fleet");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Every task spawned here is joined before the daemon returns.
    let mut server = None;
    if let Some(addr) = args.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| CliError::Start {
                what: format!("listen on {addr} for metrics"),
                source,
            })?;
        let mut rx = stop_rx.clone();
        let shutdown = async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        server = Some(tokio::spawn(crate::daemon::metrics::serve(
            listener,
            metrics.clone(),
            shutdown,
        )));
        tracing::info!(%addr, "serving /metrics and /healthz");
    }
    let signal_err = |source| CliError::Start {
        what: "install signal handlers".into(),
        source,
    };
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(signal_err)?;
    let mut term = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_err)?;
    // One stored permit at most: HUPs during a pass coalesce into one extra round.
    let trigger = Arc::new(tokio::sync::Notify::new());
    let hup_trigger = trigger.clone();
    let hups = tokio::spawn(async move {
        while hup.recv().await.is_some() {
            hup_trigger.notify_one();
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    };

    let sdk = aws::load_sdk_config().await;
    let home = home_region(&sdk, config);
    attach_web_identity(arm.as_ref(), &sdk, &home);
    let token = MutationToken::mint();
    let durable = Durable {
        memory: &db,
        retry_base: args.retry_base,
        retry_max: args.retry_max,
    };
    let base = pass_options(args.wait_for_ssm, args.command_timeout, args.verify_timeout);
    tracing::info!(
        state_file = %args.state_file.display(),
        "{}",
        start_line(&schedule, args, config.events.is_some())
    );
    // A scheduled pass holds its account's regions alone, event installs share theirs: they never plan
    // the same instance at once, and unrelated accounts never wait for each other.
    let leases = Arc::new(crate::reconcile::leases::Leases::new());
    let session = session_name("daemon");
    let entered = SdkAccounts::new(
        &sdk,
        &home,
        &config.aws.accounts,
        &session,
        ApiCounter::default(),
    );
    let shard = args.shard;
    let run = |kind: PassKind| {
        let adapters = Adapters::for_pass(&entered, arm.as_ref(), ApiCounter::default());
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
                    std::time::SystemTime::now(),
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
    let events = daemon_events(
        config,
        args,
        &sdk,
        &home,
        arm.as_ref(),
        (&token, &durable, &metrics, &leases),
        &base,
        events_stopped,
    );
    tokio::join!(
        schedule_loop(
            &schedule,
            default_jitter,
            run,
            &trigger,
            shutdown,
            args.shutdown_grace,
        ),
        events
    );
    let _ = stop_tx.send(true);
    hups.abort();
    let _ = hups.await;
    if let Some(server) = server {
        let _ = server.await;
    }
    if let Err(e) = db.close().await {
        tracing::warn!(error = %crate::error::chain(&e), "cannot checkpoint and close the state file");
    }
    tracing::info!("daemon stopped");
    Ok(exit::OK)
}

/// The daemon's event path when `[events]` is configured (else nothing), until `stopped` says so.
#[allow(clippy::too_many_arguments)]
async fn daemon_events(
    config: &Config,
    args: &DaemonArgs,
    sdk: &aws_config::SdkConfig,
    home: &str,
    arm: Option<&RestArm>,
    (token, durable, metrics, leases): (
        &MutationToken,
        &crate::reconcile::pass::Durable<'_>,
        &crate::daemon::metrics::Metrics,
        &crate::reconcile::leases::Leases,
    ),
    base: &PassOptions,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    use crate::daemon::events::{run, EventContext, EventOptions, EventPorts};
    let (Some(events), Some(arm)) = (&config.events, arm) else {
        return;
    };
    let adapters = Adapters::new(sdk, home, config, &session_name("events"), Some(arm));
    let region = events.region().unwrap_or_else(|| home.to_string());
    let queue = crate::adapters::sqs::SdkQueue::new(
        sdk,
        &events.queue_url,
        &region,
        adapters.counter.clone(),
    );
    tracing::info!(queue_url = %events.queue_url, %region, "event-driven onboarding on");
    let ctx = EventContext {
        config,
        token,
        durable,
        metrics,
        leases,
    };
    let Some(arm) = adapters.arm.as_ref() else {
        return;
    };
    // Every account in scope: the event path lists them as the passes do, and enters each (AssumeRole
    // into members) the first time one of its events comes, keeping its clients.
    let ports = EventPorts {
        accounts: &adapters.accounts,
        arm,
        queue: &queue,
    };
    let opts = EventOptions {
        pass: base.clone(),
        shutdown_grace: args.shutdown_grace,
        shard: args.shard,
        ..EventOptions::default()
    };
    run(&ctx, &ports, &opts, async move {
        let _ = stopped.wait_for(|s| *s).await;
    })
    .await;
}

/// The daemon's start line in words: what runs when, where it keeps its state, and how to drive it.
fn start_line(schedule: &crate::daemon::Schedule, args: &DaemonArgs, events: bool) -> String {
    use crate::config::duration::format_duration;
    let iam = match schedule.iam {
        None => "no IAM pass (auto_assignment = false)".to_string(),
        Some(None) => "the IAM pass once now".to_string(),
        Some(Some(every)) => format!("the IAM pass every {}", format_duration(every)),
    };
    let onboarding = match schedule.onboarding {
        None => "the onboarding pass once now".to_string(),
        Some(every) => format!("the onboarding pass every {}", format_duration(every)),
    };
    let events = if events {
        "event-driven onboarding on"
    } else {
        "no event queue"
    };
    format!(
        "daemon started: {iam}, {onboarding}, {events}; state file {}; SIGHUP runs the passes now, SIGINT/SIGTERM stop",
        args.state_file.display()
    )
}
