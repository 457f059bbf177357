//! Command-line interface: argument parsing, logging setup and the commands. This is the only module that
//! mints a [`MutationToken`], and only for `run`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::adapters::aws;
use crate::adapters::azure::RestArm;
use crate::adapters::credential::{process_env, Credential, CredentialError};
use crate::adapters::organizations::SdkAccounts;
use crate::config::duration::parse_duration;
use crate::config::{Config, ConfigError, RegionSelection, Shard};
use crate::ports::{ApiCounter, MutationToken};
use crate::reconcile::accounts::run_accounts;
use crate::reconcile::apply::ApplyOptions;
use crate::reconcile::onboard::InstallOptions;
use crate::reconcile::pass::{PassError, PassOptions, Scope};

/// Report format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// The interface's JSON schema.
    Json,
}

/// Log format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Onboards AWS EC2 instances to Azure Arc through SSM Run Command.
#[derive(Debug, Parser)]
#[command(name = "arc-onboard", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "ARC_ONBOARD_CONFIG",
        default_value = DEFAULT_CONFIG
    )]
    pub config: PathBuf,
    /// Report format on stdout.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dry run: observe and print what `run` would do to each machine. Changes nothing.
    Plan(PlanArgs),
    /// One-shot onboarding: apply the plan, wait within bounds, print the report.
    Run(RunArgs),
    /// Check the configuration file and print the effective configuration (no AWS call).
    Validate,
    /// Scheduled onboarding: the IAM pass and the onboarding pass at their intervals until SIGINT/SIGTERM.
    Daemon(DaemonArgs),
    /// Print the fleet's state from the daemon's state file (no AWS call).
    Status(StatusArgs),
    /// Print a deployable template (CloudFormation or IAM policy JSON) on stdout (no AWS call).
    Template(TemplateCommand),
}

/// `template NAME` and its options.
#[derive(Debug, clap::Args)]
pub struct TemplateCommand {
    /// Which template.
    #[arg(value_enum)]
    pub name: crate::template::TemplateName,
    /// Values beyond the configuration file.
    #[command(flatten)]
    pub args: crate::template::TemplateArgs,
}

/// Options of `daemon`.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// SQLite state file (created on first start).
    #[arg(
        long,
        env = "ARC_ONBOARD_STATE_FILE",
        default_value = "./arc-onboard.db"
    )]
    pub state_file: PathBuf,
    /// Serve Prometheus metrics (/metrics) and health (/healthz) on this address, e.g. 127.0.0.1:9464.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How long an onboarding pass waits for instances to come Online in SSM (later passes pick them up).
    #[arg(long, value_parser = parse_cli_duration, default_value = "0s")]
    pub wait_for_ssm: Duration,
    /// Execution timeout of the agent install command.
    #[arg(long, value_parser = parse_cli_duration, default_value = "30m")]
    pub command_timeout: Duration,
    /// How long to wait for Azure to show a machine Connected after its install succeeded.
    #[arg(long, value_parser = parse_cli_duration, default_value = "5m")]
    pub verify_timeout: Duration,
    /// Retry delay after an instance's first failed install; doubles with each failure.
    #[arg(long, value_parser = parse_cli_duration, default_value = "15m")]
    pub retry_base: Duration,
    /// Longest retry delay.
    #[arg(long, value_parser = parse_cli_duration, default_value = "1d")]
    pub retry_max: Duration,
    /// On SIGINT/SIGTERM, how long a pass in progress may go on tracking its commands.
    #[arg(long, value_parser = parse_cli_duration, default_value = "2m")]
    pub shutdown_grace: Duration,
    /// Consecutive failed passes after which /healthz reports unhealthy.
    #[arg(long, default_value_t = 3)]
    pub unhealthy_after: u32,
    /// Only the accounts whose 12-digit id, read as an integer, modulo COUNT equals INDEX (e.g. `2/8`).
    #[arg(long, value_name = "INDEX/COUNT")]
    pub shard: Option<Shard>,
}

/// Options of `plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Plan as the daemon's next pass would, with this state file's memory: instances held in retry
    /// backoff are `failed` with their `next_attempt_at`, commands still tracked are `in-progress`. The
    /// file is opened read-only.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// Only the accounts whose 12-digit id, read as an integer, modulo COUNT equals INDEX (e.g. `2/8`).
    #[arg(long, value_name = "INDEX/COUNT")]
    pub shard: Option<Shard>,
}

/// Options of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// SQLite state file written by the daemon.
    #[arg(
        long,
        env = "ARC_ONBOARD_STATE_FILE",
        default_value = "./arc-onboard.db"
    )]
    pub state_file: PathBuf,
}

/// Options of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Behave exactly as `plan`.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for instances to register with SSM after IAM changes (`0s`: do not wait).
    #[arg(long, value_parser = parse_cli_duration, default_value = "15m")]
    pub wait_for_ssm: Duration,
    /// Execution timeout of the agent install command.
    #[arg(long, value_parser = parse_cli_duration, default_value = "30m")]
    pub command_timeout: Duration,
    /// How long to wait for Azure to show a machine Connected after its install succeeded.
    #[arg(long, value_parser = parse_cli_duration, default_value = "5m")]
    pub verify_timeout: Duration,
    /// Only the accounts whose 12-digit id, read as an integer, modulo COUNT equals INDEX (e.g. `2/8`).
    #[arg(long, value_name = "INDEX/COUNT")]
    pub shard: Option<Shard>,
}

fn parse_cli_duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// Errors that end a command before any instance is handled (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state file is unusable.
    #[error(transparent)]
    State(#[from] crate::daemon::state::StateError),
    /// `status` found no state file.
    #[error("no state file at {0} (the daemon creates it; pass --state-file)")]
    NoStateFile(PathBuf),
    /// The daemon could not start.
    #[error("cannot {what}")]
    Start {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// AWS could not be reached or identified.
    #[error(transparent)]
    Pass(#[from] PassError),
    /// A template cannot be built from these values.
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    /// No HTTPS client for Azure could be built on this machine.
    #[error(transparent)]
    AzureClient(#[from] crate::adapters::azure::ClientError),
    /// The Azure credential's proof is unusable (certificate, token file, `az`, endpoint).
    #[error("the Azure credential cannot be used; nothing was changed")]
    Credential(#[source] CredentialError),
}

/// Exit codes of the interface.
pub mod exit {
    /// Completed, nothing failed.
    pub const OK: u8 = 0;
    /// Completed, at least one instance (or region) failed.
    pub const FAILURES: u8 = 1;
    /// Usage or configuration error, or nothing could be handled.
    pub const FATAL: u8 = 2;
}

fn init_logging(cli: &Cli) {
    let default = match (cli.verbose, cli.quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v > 1 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    let filter = EnvFilter::try_from_env("ARC_ONBOARD_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,arc_onboard={default}")));
    crate::output::progress::set_mode(crate::output::progress::choose(
        std::io::stderr().is_terminal(),
        cli.log_format == LogFormat::Text,
        filter.max_level_hint(),
    ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::output::progress::log_writer);
    match cli.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Prints an error and its chain of causes.
fn report_error(e: &dyn std::error::Error) {
    eprintln!("error: {}", crate::error::chain(e));
}

/// Entry point of the binary.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match dispatch(&cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report_error(&e);
            ExitCode::from(exit::FATAL)
        }
    }
}

async fn dispatch(cli: &Cli) -> Result<u8, CliError> {
    if let Command::Status(args) = &cli.command {
        return status_command(cli, args).await;
    }
    if let Command::Template(t) = &cli.command {
        return template_command(cli, t);
    }
    let config = Config::load(&cli.config)?;
    for w in &config.warnings {
        tracing::warn!(key = %w.key, "configuration: {}", w.problem);
    }
    match &cli.command {
        Command::Validate => {
            let description = match &config.azure {
                None => "none ([azure] is not configured)".to_string(),
                Some(azure) => {
                    match Credential::load(azure, &process_env).map_err(CliError::Credential)? {
                        Some(c) => c.describe(),
                        None => format!(
                            "client-secret: {} is not set",
                            crate::config::CLIENT_SECRET_ENV
                        ),
                    }
                }
            };
            print!("{}", config.to_effective_toml(&description));
            Ok(exit::OK)
        }
        Command::Plan(args) => {
            let memory = match &args.state_file {
                Some(path) => {
                    if !path.exists() {
                        return Err(CliError::NoStateFile(path.clone()));
                    }
                    Some(crate::daemon::state::StateDb::open_read_only(path).await?)
                }
                None => None,
            };
            plan_command(cli, &config, memory.as_ref(), args.shard).await
        }
        Command::Daemon(args) => daemon_command(&config, args).await,
        Command::Status(_) | Command::Template(_) => {
            unreachable!("handled before the configuration is read")
        }
        Command::Run(args) => {
            let opts = pass_options(args.wait_for_ssm, args.command_timeout, args.verify_timeout);
            if args.dry_run {
                one_pass(cli, &config, None, opts, args.shard).await
            } else {
                let token = MutationToken::mint();
                one_pass(cli, &config, Some(&token), opts, args.shard).await
            }
        }
    }
}

/// Pass bounds from the command line.
fn pass_options(
    wait_for_ssm: Duration,
    command_timeout: Duration,
    verify_timeout: Duration,
) -> PassOptions {
    PassOptions {
        apply: ApplyOptions {
            wait_for_ssm,
            ..ApplyOptions::default()
        },
        install: InstallOptions {
            command_timeout,
            verify_timeout,
            ..InstallOptions::default()
        },
        scope: Scope::default(),
    }
}

/// `plan`, with the daemon's memory when a state file is given.
async fn plan_command(
    cli: &Cli,
    config: &Config,
    db: Option<&crate::daemon::state::StateDb>,
    shard: Option<Shard>,
) -> Result<u8, CliError> {
    let durable = db.map(|db| crate::reconcile::pass::Durable {
        db,
        retry_base: Duration::from_secs(15 * 60),
        retry_max: Duration::from_secs(24 * 3600),
    });
    let opts = PassOptions::default();
    pass_and_report(cli, config, None, opts, durable.as_ref(), shard).await
}

async fn one_pass(
    cli: &Cli,
    config: &Config,
    token: Option<&MutationToken>,
    opts: PassOptions,
    shard: Option<Shard>,
) -> Result<u8, CliError> {
    pass_and_report(cli, config, token, opts, None, shard).await
}

/// One pass, its report on stdout, and the exit code.
async fn pass_and_report(
    cli: &Cli,
    config: &Config,
    token: Option<&MutationToken>,
    opts: PassOptions,
    durable: Option<&crate::reconcile::pass::Durable<'_>>,
    shard: Option<Shard>,
) -> Result<u8, CliError> {
    let arm = azure_adapter(config, load_credential(config)?)?;
    let sdk = aws::load_sdk_config().await;
    let home = home_region(&sdk, config);
    attach_web_identity(arm.as_ref(), &sdk, &home);
    let mode = if token.is_some() { "run" } else { "plan" };
    let session = session_name(mode);
    let adapters = Adapters::new(&sdk, &home, config, &session, arm.as_ref());
    let outcome = run_accounts(
        config,
        &adapters.accounts,
        adapters.arm.as_ref(),
        token,
        &opts,
        durable,
        shard,
        std::time::SystemTime::now(),
    )
    .await?;
    let report = outcome.report;
    match cli.output {
        Output::Json => println!("{}", report.to_json()),
        Output::Table => print!("{}", report.to_table()),
    }
    Ok(if outcome.no_region_reachable {
        eprintln!("error: nothing could be handled: no account in scope could be entered or observed in any configured region (see errors[] in the report)");
        exit::FATAL
    } else if report.has_failures() {
        exit::FAILURES
    } else {
        exit::OK
    })
}

/// The AWS side of a pass: the accounts port built from the shared SDK configuration with a fresh call
/// counter (it hands out each account's EC2, IAM and SSM adapters).
struct Adapters {
    counter: ApiCounter,
    accounts: SdkAccounts,
    arm: Option<RestArm>,
}

/// `RoleSessionName` of the member accounts' sessions: names the command and this run.
fn session_name(mode: &str) -> String {
    let run = uuid::Uuid::new_v4().simple().to_string();
    format!("arc-onboard-{mode}-{}", &run[..12])
}

/// The Azure credential, when the configuration has `[azure]` (and, for `client-secret`, the secret is
/// set), with its local proof checked: a bad one stops the command before any AWS call.
fn load_credential(config: &Config) -> Result<Option<Credential>, CliError> {
    match &config.azure {
        None => Ok(None),
        Some(azure) => Credential::load(azure, &process_env).map_err(CliError::Credential),
    }
}

/// The Azure adapter over `credential`; built once per command, before the AWS SDK is configured, so that
/// an unusable TLS setup stops the command before any AWS call.
fn azure_adapter(
    config: &Config,
    credential: Option<Credential>,
) -> Result<Option<RestArm>, CliError> {
    let (Some(azure), Some(credential)) = (&config.azure, credential) else {
        return Ok(None);
    };
    tracing::debug!(credential = %credential.describe(), "Azure credential");
    Ok(Some(RestArm::new(
        azure,
        credential,
        ApiCounter::default(),
    )?))
}

/// An `aws-federation` credential gets its STS client (home region) once the SDK is configured.
fn attach_web_identity(arm: Option<&RestArm>, sdk: &aws_config::SdkConfig, home: &str) {
    if let Some(arm) = arm.filter(|a| a.credential().needs_web_identity()) {
        arm.credential()
            .set_web_identity(aws::WebIdentityIssuer::new(sdk, home));
    }
}

impl Adapters {
    /// Adapters for one pass: `arm` is the command's Azure adapter, re-used with this pass's counter.
    fn new(
        sdk: &aws_config::SdkConfig,
        home: &str,
        config: &Config,
        session: &str,
        arm: Option<&RestArm>,
    ) -> Adapters {
        let counter = ApiCounter::default();
        let accounts = SdkAccounts::new(sdk, home, &config.aws.accounts, session, counter.clone());
        Adapters::for_pass(&accounts, arm, counter)
    }

    /// Adapters for a daemon pass: the entered accounts' credentials are kept from pass to pass.
    fn for_pass(accounts: &SdkAccounts, arm: Option<&RestArm>, counter: ApiCounter) -> Adapters {
        Adapters {
            accounts: accounts.for_pass(counter.clone()),
            arm: arm.map(|a| a.for_pass(counter.clone())),
            counter,
        }
    }
}

fn home_region(sdk: &aws_config::SdkConfig, config: &Config) -> String {
    let first = match &config.aws.regions {
        RegionSelection::List(list) => list.first().map(String::as_str),
        RegionSelection::AllEnabled => None,
    };
    aws::home_region(sdk, first)
}

async fn daemon_command(config: &Config, args: &DaemonArgs) -> Result<u8, CliError> {
    use crate::daemon::{
        default_jitter, observed_pass, schedule_loop, PassKind, PassSummary, Schedule,
    };
    use crate::reconcile::pass::Durable;
    use std::sync::Arc;

    let Some(credential) = load_credential(config)? else {
        return Err(PassError::AzureMissing.into());
    };
    let arm = azure_adapter(config, Some(credential))?;
    let db = crate::daemon::state::StateDb::open(&args.state_file).await?;
    let metrics = Arc::new(crate::daemon::metrics::Metrics::new(args.unhealthy_after));
    let schedule = Schedule::from_config(config);
    for w in schedule.warnings() {
        tracing::warn!("{w}; fine for tests and demos, heavy for a real fleet");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
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
        tokio::spawn(crate::daemon::metrics::serve(
            listener,
            metrics.clone(),
            shutdown,
        ));
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
    tokio::spawn(async move {
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
        db: &db,
        retry_base: args.retry_base,
        retry_max: args.retry_max,
    };
    let base = pass_options(args.wait_for_ssm, args.command_timeout, args.verify_timeout);
    tracing::info!(state_file = %args.state_file.display(), ?schedule, "daemon started");
    // Scheduled passes hold it for writing, event installs for reading: they never plan the same
    // instance at once.
    let gate = tokio::sync::RwLock::new(());
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
        let (token, durable, db, metrics, gate) = (&token, &durable, &db, &metrics, &gate);
        async move {
            let _exclusive = gate.write().await;
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
        (&token, &durable, &metrics, &gate),
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
    (token, durable, metrics, gate): (
        &MutationToken,
        &crate::reconcile::pass::Durable<'_>,
        &crate::daemon::metrics::Metrics,
        &tokio::sync::RwLock<()>,
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
        gate,
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

/// The default of `--config`; `template` goes on without a file only when this one is missing.
const DEFAULT_CONFIG: &str = "./arc-onboard.toml";

/// `template NAME`: the configuration file is optional (the default path may be missing; an explicitly
/// given file must exist and be valid), and no AWS call is made.
fn template_command(cli: &Cli, t: &TemplateCommand) -> Result<u8, CliError> {
    let config = if cli.config == std::path::Path::new(DEFAULT_CONFIG) && !cli.config.exists() {
        tracing::debug!("no configuration file; the template uses defaults and parameters");
        None
    } else {
        let config = Config::load(&cli.config)?;
        for w in &config.warnings {
            tracing::warn!(key = %w.key, "configuration: {}", w.problem);
        }
        Some(config)
    };
    print!(
        "{}",
        crate::template::render(t.name, config.as_ref(), &t.args)?
    );
    Ok(exit::OK)
}

/// A state record's last failure in words: the typed failure it keeps, or the prose older files kept.
fn recorded_failure_text(kept: &str) -> String {
    serde_json::from_str::<crate::reconcile::plan::Failure>(kept)
        .map_or_else(|_| kept.to_string(), |f| f.to_string())
}

async fn status_command(cli: &Cli, args: &StatusArgs) -> Result<u8, CliError> {
    if !args.state_file.exists() {
        return Err(CliError::NoStateFile(args.state_file.clone()));
    }
    let db = crate::daemon::state::StateDb::open_read_only(&args.state_file).await?;
    let records = db.all().await?;
    let passes = db.last_passes().await?;
    let mut by_status: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in &records {
        *by_status.entry(r.status.as_str()).or_default() += 1;
    }
    let stamp = |t: i64| {
        crate::output::report::timestamp(
            std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64),
        )
    };
    match cli.output {
        Output::Json => {
            let value = serde_json::json!({
                "state_file": args.state_file,
                "summary": { "instances": records.len(), "by_status": by_status },
                "last_passes": passes.iter().map(|p| serde_json::json!({
                    "kind": p.kind, "started_at": stamp(p.started_at), "finished_at": stamp(p.finished_at),
                    "ok": p.ok, "by_status": serde_json::from_str::<serde_json::Value>(&p.summary).unwrap_or_default(),
                })).collect::<Vec<_>>(),
                "instances": records.iter().map(|r| serde_json::json!({
                    "account_id": r.account_id, "region": r.region, "instance_id": r.instance_id,
                    "status": r.status, "detail": r.detail, "command_id": r.command_id,
                    "attempts": r.attempts,
                    "last_error": r.last_error.as_deref().map(recorded_failure_text),
                    "failure": r.last_error.as_deref().and_then(|e| serde_json::from_str::<crate::reconcile::plan::Failure>(e).ok()),
                    "next_attempt_at": r.next_attempt_at.map(stamp), "last_seen_at": stamp(r.last_seen_at),
                })).collect::<Vec<_>>(),
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&value).expect("serializes")
            );
        }
        Output::Table => {
            println!("state file {}", args.state_file.display());
            for p in &passes {
                println!(
                    "last {} pass: {} .. {} {}",
                    p.kind,
                    stamp(p.started_at),
                    stamp(p.finished_at),
                    if p.ok { "ok" } else { "FAILED" }
                );
            }
            println!();
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|r| {
                    vec![
                        r.account_id.clone(),
                        r.region.clone(),
                        r.instance_id.clone(),
                        r.status.clone(),
                        r.attempts.to_string(),
                        r.next_attempt_at.map(stamp).unwrap_or_else(|| "-".into()),
                        r.detail.clone(),
                    ]
                })
                .collect();
            let headers = [
                "ACCOUNT",
                "REGION",
                "INSTANCE",
                "STATUS",
                "ATTEMPTS",
                "NEXT ATTEMPT",
                "DETAIL",
            ];
            print!("{}", crate::output::table::render(&headers, &rows));
            let counts: Vec<String> = by_status.iter().map(|(s, n)| format!("{s}={n}")).collect();
            println!("\n{} instances: {}", records.len(), counts.join(" "));
        }
    }
    Ok(exit::OK)
}
