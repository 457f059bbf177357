//! Command-line interface: argument parsing, logging setup and the commands. This is the only module that
//! mints a [`MutationToken`], and only for `run`.
//!
//! Here: the clap types, `main`, logging, dispatch, exit codes and [`CliError`]. The commands live beside it:
//! `commands` (`plan`, `run`, `template`), `daemon` (the daemon, its signals and event path), `status`
//! (the state file rendered), `wire` (building the real adapters a command runs on), `usage` (flags that
//! a command would ignore, refused; completions, the man page, `--version`), `interrupt` (Ctrl-C during
//! `run`), and `saved_plan` (the file of `plan --out` and `run --plan`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::adapters::credential::{Credential, CredentialError};
use crate::config::duration::parse_duration;
use crate::config::env::process_env;
use crate::config::{Config, ConfigError, Shard};
use crate::ports::MutationToken;
use crate::reconcile::pass::PassError;

mod commands;
mod daemon;
mod interrupt;
mod saved_plan;
mod status;
mod usage;
mod wire;

use commands::{one_pass, pass_options, plan_command, template_command};
use daemon::daemon_command;
use status::status_command;

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

/// `--version`: the package version, the git commit it was built from and the target triple.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ARC_ONBOARD_GIT_COMMIT"),
    ", ",
    env!("ARC_ONBOARD_TARGET"),
    ")"
);

/// Onboards AWS EC2 instances to Azure Arc through SSM Run Command.
#[derive(Debug, Parser)]
#[command(name = "arc-onboard", version = VERSION, about, long_about = None)]
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
    #[command(after_help = usage::PLAN_EXAMPLES)]
    Plan(PlanArgs),
    /// One-shot onboarding: apply the plan, wait within bounds, print the report.
    #[command(after_help = usage::RUN_EXAMPLES)]
    Run(RunArgs),
    /// Check the configuration file and print the effective configuration (no AWS call). Exits 2 when
    /// `run` would refuse the Azure credential.
    Validate,
    /// Scheduled onboarding: the IAM pass and the onboarding pass at their intervals until SIGINT/SIGTERM.
    #[command(after_help = usage::DAEMON_EXAMPLES)]
    Daemon(DaemonArgs),
    /// Print the fleet's state from the daemon's state file (no AWS call).
    Status(StatusArgs),
    /// Print a deployable template (CloudFormation or IAM policy JSON) on stdout (no AWS call).
    #[command(after_help = usage::TEMPLATE_EXAMPLES)]
    Template(TemplateCommand),
    /// Print shell completions on stdout (e.g. `arc-onboard completions bash > /etc/bash_completion.d/arc-onboard`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout (e.g. `arc-onboard manpage | man -l -`).
    Manpage,
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
    /// On a terminal: every column and whole cells (the table then may be wider than the terminal).
    #[arg(long)]
    pub wide: bool,
    /// Also write the plan, with the facts it rests on, to FILE (JSON) for `run --plan FILE`.
    #[arg(long, value_name = "FILE", conflicts_with = "state_file")]
    pub out: Option<PathBuf>,
    /// Exit 3 when changes are pending (0 when there is nothing to do; 1 and 2 as always, and first).
    #[arg(long)]
    pub detailed_exitcode: bool,
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
    /// On a terminal: every column and whole cells (the table then may be wider than the terminal).
    #[arg(long)]
    pub wide: bool,
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
    #[arg(long, value_name = "INDEX/COUNT", conflicts_with = "plan")]
    pub shard: Option<Shard>,
    /// On a terminal: every column and whole cells (the table then may be wider than the terminal).
    #[arg(long)]
    pub wide: bool,
    /// Apply exactly the plan `plan --out FILE` saved: instances it does not hold are left alone, rows whose
    /// world changed since are skipped with the reason. Its shard is used.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// The oldest saved plan `--plan` accepts (counted from when its observation began).
    #[arg(long, value_parser = parse_cli_duration, default_value = "1h", requires = "plan")]
    pub plan_max_age: Duration,
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
    /// Install scripts would carry a person's token (`credential = "azure-cli"` without
    /// `[azure.onboarding]`).
    #[error("install scripts would carry the signed-in user's Azure token (credential = \"azure-cli\"), which anyone who can read SSM command history or is root on a target could reuse; nothing was changed. Add an onboarding identity: an app registration with only the \"Azure Connected Machine Onboarding\" role on the resource group, configured as [azure.onboarding] client_id = \"...\" with its secret in ARC_ONBOARD_ONBOARDING_CLIENT_SECRET (README: Credentials on instances)")]
    PersonalTokenForScripts,
    /// No configuration file where `--config` (or its default) points.
    #[error("no configuration file at {}: pass --config PATH (or set ARC_ONBOARD_CONFIG); a minimal one is\n\n    [aws]\n    regions = [\"us-east-1\"]\n\n  (`arc-onboard validate --config PATH` checks it; README: Configuration reference)", .0.display())]
    NoConfig(PathBuf),
    /// `validate`: the configuration is valid but `run` would refuse its Azure credential.
    #[error("run would refuse the Azure credential: {0}")]
    CredentialMissing(String),
    /// AWS could not be reached at all (connection refused, DNS, timeout), said in one line.
    #[error("{0}")]
    Unreachable(String),
    /// stdout could not be written (other than closed: that ends the program as SIGPIPE would).
    #[error("cannot write to stdout")]
    Stdout(#[source] std::io::Error),
    /// `ARC_ONBOARD_LOG` is not a valid filter.
    #[error("ARC_ONBOARD_LOG is not a valid log filter ({0}); e.g. ARC_ONBOARD_LOG=arc_onboard=debug,aws_smithy_runtime=info")]
    LogFilter(String),
    /// `plan --out` / `run --plan`: the saved plan cannot be written, read or used.
    #[error(transparent)]
    SavedPlan(#[from] saved_plan::SavedPlanError),
}

/// Exit codes of the interface.
pub mod exit {
    /// Completed, nothing failed.
    pub const OK: u8 = 0;
    /// Completed, at least one instance (or region) failed.
    pub const FAILURES: u8 = 1;
    /// Usage or configuration error, or nothing could be handled.
    pub const FATAL: u8 = 2;
    /// `plan --detailed-exitcode`: completed, nothing failed, and changes are pending.
    pub const CHANGES_PENDING: u8 = 3;
    /// `run`: completed, nothing failed, nothing was onboarded, and instances still wait for SSM.
    pub const STILL_WAITING: u8 = 4;
    /// A Rust panic (an internal error: a bug); set by the Rust runtime, listed for the README.
    pub const PANIC: u8 = 101;
    /// `run` was interrupted (SIGINT, Ctrl-C) and printed the partial report: 128 + SIGINT.
    pub const INTERRUPTED: u8 = 130;
}

/// The log filter: `ARC_ONBOARD_LOG` when set (an invalid one is an error), else from `-v`/`-q`.
fn log_filter(cli: &Cli, env: Option<String>) -> Result<EnvFilter, CliError> {
    if let Some(text) = env.filter(|t| !t.trim().is_empty()) {
        return EnvFilter::builder()
            .parse(&text)
            .map_err(|e| CliError::LogFilter(e.to_string()));
    }
    let default = match (cli.verbose, cli.quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v > 1 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    Ok(EnvFilter::new(format!("warn,arc_onboard={default}")))
}

fn init_logging(cli: &Cli) -> Result<(), CliError> {
    let filter = log_filter(cli, std::env::var("ARC_ONBOARD_LOG").ok())?;
    crate::output::progress::set_mode(crate::output::progress::choose(
        std::io::stderr().is_terminal(),
        cli.log_format == LogFormat::Text,
        filter.max_level_hint(),
    ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::output::progress::log_writer);
    let ansi =
        std::io::stderr().is_terminal() && crate::output::colour_allowed(|k| std::env::var_os(k));
    match cli.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(ansi).init(),
    }
    Ok(())
}

/// Prints an error and its chain of causes.
fn report_error(e: &dyn std::error::Error) {
    crate::output::stdout::eprint_line(&format!("error: {}", crate::error::chain(e)));
}

/// Entry point of the binary.
pub async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    usage::refuse_ignored_flags(&matches, &cli);
    if let Err(e) = init_logging(&cli) {
        report_error(&e);
        return ExitCode::from(exit::FATAL);
    }
    match dispatch(&cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report_error(&e);
            ExitCode::from(exit::FATAL)
        }
    }
}

async fn dispatch(cli: &Cli) -> Result<u8, CliError> {
    match &cli.command {
        Command::Status(args) => return status_command(cli, args).await,
        Command::Template(t) => return template_command(cli, t),
        Command::Completions { shell } => return usage::completions(*shell),
        Command::Manpage => return usage::manpage(),
        _ => {}
    }
    let config = load_config(&cli.config)?;
    for w in &config.warnings {
        tracing::warn!(key = %w.key, "configuration: {}", w.problem);
    }
    match &cli.command {
        Command::Validate => validate_command(cli, &config),
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
            plan_command(cli, &config, memory.as_ref(), args, args.wide).await
        }
        Command::Daemon(args) => daemon_command(&config, args).await,
        Command::Status(_)
        | Command::Template(_)
        | Command::Completions { .. }
        | Command::Manpage => {
            unreachable!("handled before the configuration is read")
        }
        Command::Run(args) => {
            let mut opts =
                pass_options(args.wait_for_ssm, args.command_timeout, args.verify_timeout);
            let mut shard = args.shard;
            if let Some(path) = &args.plan {
                let saved = saved_plan::load(path, &config, args.plan_max_age)?;
                shard = saved_plan::shard_of(path, &saved)?;
                opts.saved = Some(std::sync::Arc::new(saved));
            }
            if args.dry_run {
                one_pass(cli, &config, None, opts, shard, args.wide).await
            } else {
                let token = MutationToken::mint();
                interrupt::interruptible_run(|| {
                    one_pass(cli, &config, Some(&token), opts, shard, args.wide)
                })
                .await
            }
        }
    }
}

/// Reads and validates the configuration file; a missing file's error says how to give one.
pub(super) fn load_config(path: &std::path::Path) -> Result<Config, CliError> {
    Config::load(path).map_err(|e| match e {
        ConfigError::Read { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
            CliError::NoConfig(path)
        }
        e => CliError::Config(e),
    })
}

/// `validate`: the effective configuration (TOML, or JSON with `--output json`) on stdout; exit 2 when
/// `run` would refuse the Azure credential (the same local checks `run` makes before any call).
fn validate_command(cli: &Cli, config: &Config) -> Result<u8, CliError> {
    let mut refused = None;
    let description = match &config.azure {
        None => "none ([azure] is not configured)".to_string(),
        Some(azure) => match Credential::load(azure, &process_env).map_err(CliError::Credential)? {
            Some(c) => c.describe(),
            None => {
                let text = format!(
                    "client-secret: {} is not set",
                    crate::config::CLIENT_SECRET_ENV
                );
                refused = Some(text.clone());
                text
            }
        },
    };
    let text = match cli.output {
        Output::Table => config.to_effective_toml(&description),
        Output::Json => {
            let value = serde_json::json!({
                "config_file": cli.config,
                "credential": description,
                "notes": config.effective_notes(),
                "effective": config.effective_table(),
            });
            format!(
                "{}\n",
                serde_json::to_string_pretty(&value).expect("serializes")
            )
        }
    };
    crate::output::stdout::print(&text).map_err(CliError::Stdout)?;
    if config.azure.is_none() {
        tracing::warn!(
            "no [azure] section: plan and template work; run and daemon refuse to start"
        );
    }
    if let Some(why) = refused {
        return Err(CliError::CredentialMissing(why));
    }
    let Some(azure) = &config.azure else {
        return Ok(exit::OK);
    };
    if let Some(onboarding) = &azure.onboarding {
        let c =
            Credential::load_onboarding(onboarding, &process_env).map_err(CliError::Credential)?;
        tracing::info!(credential = %c.describe(), "onboarding identity");
    }
    wire::check_script_identity(azure).map(|()| exit::OK)
}

/// The default of `--config`; `template` goes on without a file only when this one is missing.
const DEFAULT_CONFIG: &str = "./arc-onboard.toml";
