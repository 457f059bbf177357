//! `daemon`: wires the real adapters, the signals that stop it and the metrics listener into
//! [`crate::daemon::run`], which runs the schedules and the event path.

use super::commands::pass_options;
use super::wire::{
    attach_web_identity, azure_adapter, home_region, load_credential, session_name, Adapters,
};
use super::{exit, CliError, DaemonArgs};
use crate::adapters::aws;
use crate::adapters::azure::RestArm;
use crate::adapters::organizations::SdkAccounts;
use crate::adapters::sqs::SdkQueue;
use crate::config::Config;
use crate::daemon::EventDeps;
use crate::ports::{ApiCounter, MutationToken};
use crate::reconcile::pass::PassError;

pub(super) async fn daemon_command(config: &Config, args: &DaemonArgs) -> Result<u8, CliError> {
    use crate::daemon::{DaemonDeps, DaemonSettings, PassPorts, Schedule};
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
    let metrics_listener = match args.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| CliError::Start {
                    what: format!("listen on {addr} for metrics"),
                    source,
                })?,
        ),
        None => None,
    };
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
    let session = session_name("daemon");
    let entered = SdkAccounts::new(
        &sdk,
        &home,
        &config.aws.accounts,
        &session,
        ApiCounter::default(),
    );
    let pass_ports = || {
        let adapters = Adapters::for_pass(&entered, arm.as_ref(), ApiCounter::default());
        PassPorts {
            accounts: adapters.accounts,
            arm: adapters.arm,
            counter: adapters.counter,
        }
    };
    let settings = DaemonSettings {
        start_line: start_line(&schedule, args, config.events.is_some()),
        schedule,
        base: pass_options(args.wait_for_ssm, args.command_timeout, args.verify_timeout),
        retry_base: args.retry_base,
        retry_max: args.retry_max,
        shard: args.shard,
        shutdown_grace: args.shutdown_grace,
        state_file: args.state_file.clone(),
    };
    let deps = DaemonDeps {
        config,
        db,
        metrics,
        metrics_listener,
        token: MutationToken::mint(),
        pass_ports,
        events: event_ports(config, &sdk, &home, arm.as_ref()),
        trigger,
    };
    crate::daemon::run(deps, settings, shutdown).await;
    // Every task spawned here is joined before the daemon returns.
    hups.abort();
    let _ = hups.await;
    Ok(exit::OK)
}

/// The event path's ports when `[events]` is configured and Azure is there (else none).
fn event_ports(
    config: &Config,
    sdk: &aws_config::SdkConfig,
    home: &str,
    arm: Option<&RestArm>,
) -> Option<EventDeps<SdkAccounts, RestArm, SdkQueue>> {
    let (Some(events), Some(arm)) = (&config.events, arm) else {
        return None;
    };
    let adapters = Adapters::new(sdk, home, config, &session_name("events"), Some(arm));
    let region = events.region().unwrap_or_else(|| home.to_string());
    let queue = SdkQueue::new(sdk, &events.queue_url, &region, adapters.counter.clone());
    Some(EventDeps {
        accounts: adapters.accounts,
        arm: adapters.arm?,
        queue,
        queue_url: events.queue_url.clone(),
        region,
    })
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
