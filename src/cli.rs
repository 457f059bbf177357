//! Command-line interface: argument parsing, logging setup and the commands. This is the only module that
//! mints a [`MutationToken`], and only for `run`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::apply::ApplyOptions;
use crate::aws::{self, SdkEc2, SdkIam, SdkSsm, SdkSts};
use crate::azure::{RestArm, Secret};
use crate::config::{Config, ConfigError, RegionSelection, CLIENT_SECRET_ENV};
use crate::duration::parse_duration;
use crate::onboard::InstallOptions;
use crate::pass::{run_pass, AwsPorts, PassError, PassOptions};
use crate::ports::{ApiCounter, MutationToken};

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
        default_value = "./arc-onboard.toml"
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
    Plan,
    /// One-shot onboarding: apply the plan, wait within bounds, print the report.
    Run(RunArgs),
    /// Check the configuration file and print the effective configuration (no AWS call).
    Validate,
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
    /// AWS could not be reached or identified.
    #[error(transparent)]
    Pass(#[from] PassError),
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == LogFormat::Json || cli.quiet > 0 {
        crate::progress::disable_live();
    }
    match cli.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Prints an error and its chain of causes.
fn report_error(e: &dyn std::error::Error) {
    let mut text = format!("error: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    eprintln!("{text}");
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
    let config = Config::load(&cli.config)?;
    match &cli.command {
        Command::Validate => {
            let secret = std::env::var(CLIENT_SECRET_ENV).is_ok_and(|s| !s.is_empty());
            print!("{}", config.to_effective_toml(secret));
            Ok(exit::OK)
        }
        Command::Plan => one_pass(cli, &config, None, PassOptions::default()).await,
        Command::Run(args) => {
            let opts = PassOptions {
                apply: ApplyOptions {
                    wait_for_ssm: args.wait_for_ssm,
                    ..ApplyOptions::default()
                },
                install: InstallOptions {
                    command_timeout: args.command_timeout,
                    verify_timeout: args.verify_timeout,
                    ..InstallOptions::default()
                },
            };
            if args.dry_run {
                one_pass(cli, &config, None, opts).await
            } else {
                let token = MutationToken::mint();
                one_pass(cli, &config, Some(&token), opts).await
            }
        }
    }
}

async fn one_pass(
    cli: &Cli,
    config: &Config,
    token: Option<&MutationToken>,
    opts: PassOptions,
) -> Result<u8, CliError> {
    let sdk = aws::load_sdk_config().await;
    let first = match &config.aws.regions {
        RegionSelection::List(list) => list.first().map(String::as_str),
        RegionSelection::AllEnabled => None,
    };
    let home = aws::home_region(&sdk, first);
    let counter = ApiCounter::default();
    let sts = SdkSts::new(&sdk, &home, counter.clone());
    let ec2 = SdkEc2::new(&sdk, &home, counter.clone());
    let iam = SdkIam::new(&sdk, &home, counter.clone());
    let ssm = SdkSsm::new(&sdk, counter.clone());
    let ports = AwsPorts {
        sts: &sts,
        ec2: &ec2,
        iam: &iam,
        ssm: &ssm,
        counter: &counter,
    };
    let secret = std::env::var(CLIENT_SECRET_ENV)
        .ok()
        .filter(|s| !s.is_empty());
    let arm = match (&config.azure, secret) {
        (Some(azure), Some(secret)) => {
            Some(RestArm::new(azure, Secret::new(secret), counter.clone()))
        }
        _ => None,
    };
    let outcome = run_pass(config, &ports, arm.as_ref(), token, &opts).await?;
    let report = outcome.report;
    match cli.output {
        Output::Json => println!("{}", report.to_json()),
        Output::Table => print!("{}", report.to_table()),
    }
    Ok(if outcome.no_region_reachable {
        eprintln!("error: no configured region could be observed");
        exit::FATAL
    } else if report.has_failures() {
        exit::FAILURES
    } else {
        exit::OK
    })
}
