//! The one-shot commands: `plan`, `run` (one pass and its report) and `template`.

use std::time::Duration;

use super::wire::{
    attach_web_identity, azure_adapter, home_region, load_credential, session_name, Adapters,
};
use super::{exit, Cli, CliError, Output, TemplateCommand, DEFAULT_CONFIG};
use crate::adapters::aws;
use crate::config::{Config, Shard};
use crate::ports::MutationToken;
use crate::reconcile::accounts::run_accounts;
use crate::reconcile::apply::ApplyOptions;
use crate::reconcile::onboard::InstallOptions;
use crate::reconcile::pass::{PassOptions, Scope};

/// Pass bounds from the command line.
pub(super) fn pass_options(
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
pub(super) async fn plan_command(
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

pub(super) async fn one_pass(
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
    let arm = azure_adapter(config, load_credential(config)?, token.is_some())?;
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

/// `template NAME`: the configuration file is optional (the default path may be missing; an explicitly
/// given file must exist and be valid), and no AWS call is made.
pub(super) fn template_command(cli: &Cli, t: &TemplateCommand) -> Result<u8, CliError> {
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
