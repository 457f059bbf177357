//! The one-shot commands: `plan`, `run` (one pass and its report) and `template`.

use std::time::Duration;

use super::wire::{
    attach_web_identity, azure_adapter, home_region, load_credential, session_name, Adapters,
};
use super::{exit, Cli, CliError, Output, PlanArgs, TemplateCommand, DEFAULT_CONFIG};
use crate::adapters::aws;
use crate::config::{Config, Shard};
use crate::output::TableStyle;
use crate::ports::progress::ProgressPort;
use crate::ports::MutationToken;
use crate::reconcile::accounts::run_accounts;
use crate::reconcile::apply::ApplyOptions;
use crate::reconcile::onboard::InstallOptions;
use crate::reconcile::pass::{PassOptions, Scope};
use crate::reconcile::plan::Status;

/// The waits of a pass shown on stderr (`output::progress`).
fn stderr_progress() -> ProgressPort {
    ProgressPort(std::sync::Arc::new(crate::output::progress::Stderr))
}

/// Pass bounds from the command line.
pub(super) fn pass_options(
    wait_for_ssm: Duration,
    command_timeout: Duration,
    verify_timeout: Duration,
) -> PassOptions {
    PassOptions {
        apply: ApplyOptions {
            wait_for_ssm,
            progress: stderr_progress(),
            ..ApplyOptions::default()
        },
        install: InstallOptions {
            command_timeout,
            verify_timeout,
            progress: stderr_progress(),
            ..InstallOptions::default()
        },
        scope: Scope::default(),
        saved: None,
        leases: None,
    }
}

/// What `plan` does with its report besides printing it.
#[derive(Debug, Clone, Copy, Default)]
struct PlanOutputs<'a> {
    /// `--out FILE`.
    out: Option<&'a std::path::Path>,
    /// `--detailed-exitcode`.
    detailed_exitcode: bool,
}

/// `plan`, with the daemon's memory when a state file is given.
pub(super) async fn plan_command(
    cli: &Cli,
    config: &Config,
    db: Option<&crate::daemon::state::StateDb>,
    args: &PlanArgs,
    wide: bool,
) -> Result<u8, CliError> {
    let durable = db.map(|db| crate::reconcile::pass::Durable {
        memory: db,
        retry_base: Duration::from_secs(15 * 60),
        retry_max: Duration::from_secs(24 * 3600),
    });
    let opts = PassOptions::default();
    let outputs = PlanOutputs {
        out: args.out.as_deref(),
        detailed_exitcode: args.detailed_exitcode,
    };
    let pass = (None, opts, durable.as_ref(), args.shard, wide);
    pass_and_report(cli, config, pass, outputs).await
}

pub(super) async fn one_pass(
    cli: &Cli,
    config: &Config,
    token: Option<&MutationToken>,
    opts: PassOptions,
    shard: Option<Shard>,
    wide: bool,
) -> Result<u8, CliError> {
    let pass = (token, opts, None, shard, wide);
    pass_and_report(cli, config, pass, PlanOutputs::default()).await
}

/// What a pass runs with: its token, bounds, the daemon's memory, the shard, and `--wide`.
type PassInputs<'a> = (
    Option<&'a MutationToken>,
    PassOptions,
    Option<&'a crate::reconcile::pass::Durable<'a>>,
    Option<Shard>,
    bool,
);

/// One pass, its report on stdout (and, for `plan --out`, in the saved plan file), and the exit code.
async fn pass_and_report(
    cli: &Cli,
    config: &Config,
    (token, opts, durable, shard, wide): PassInputs<'_>,
    outputs: PlanOutputs<'_>,
) -> Result<u8, CliError> {
    let credential = load_credential(config)?;
    // Why Azure will not be asked at all (plan only: run refuses to start without it).
    let azure_not_asked = match (&config.azure, &credential) {
        (None, _) => Some("no [azure] section in the configuration".to_string()),
        (Some(_), None) => Some(format!("{} is not set", crate::config::CLIENT_SECRET_ENV)),
        _ => None,
    };
    let arm = azure_adapter(config, credential, token.is_some())?;
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
        opts.install.clock.now(),
    )
    .await
    .map_err(|e| unreachable_aws(e, &sdk, &home, &adapters.counter))?;
    let report = outcome.report;
    if let Some(path) = outputs.out.filter(|_| !outcome.no_region_reachable) {
        let saved = super::saved_plan::write(path, &report, config, shard)?;
        if saved
            .instances
            .iter()
            .any(|r| r.basis.arc_machine == crate::reconcile::saved::ArcSeen::NotChecked)
        {
            tracing::warn!(file = %path.display(), "the saved plan was made without Azure's view of the machines; `run --plan` skips every row whose Arc machine it then sees");
        }
        tracing::info!(file = %path.display(), instances = saved.instances.len(), "plan saved; apply it with `arc-onboard run --plan FILE`");
    }
    let text = match cli.output {
        Output::Json => format!("{}\n", report.to_json()),
        Output::Table => {
            let banner = banner(&report, azure_not_asked.as_deref());
            report.to_table_styled(&TableStyle::for_stdout(wide), &banner)
        }
    };
    crate::output::stdout::print(&text).map_err(CliError::Stdout)?;
    Ok(if outcome.no_region_reachable {
        crate::output::stdout::eprint_line("error: nothing could be handled: no account in scope could be entered or observed in any configured region (see errors[] in the report)");
        exit::FATAL
    } else if report.has_failures() {
        exit::FAILURES
    } else if outputs.detailed_exitcode && report.has_changes() {
        exit::CHANGES_PENDING
    } else if token.is_some() && report.still_waiting() {
        let waiting = report.summary.by_status.get(&Status::WaitingForSsm);
        eprintln!(
            "note: nothing was onboarded; {} instance(s) still wait for SSM (exit {}): run again once they are Online",
            waiting.copied().unwrap_or(0),
            exit::STILL_WAITING
        );
        exit::STILL_WAITING
    } else {
        exit::OK
    })
}

/// What the table says before its rows: that Azure was not asked, or could not be read, so some machines
/// are `unverified`.
fn banner(report: &crate::output::report::Report, azure_not_asked: Option<&str>) -> Vec<String> {
    let unverified = report
        .instances
        .iter()
        .filter(|i| i.status == crate::reconcile::plan::Status::Unverified)
        .count();
    let consequence = format!(
        "{unverified} machine(s) that would get the agent are `unverified`: run installs the agent on each unless Azure shows it Connected"
    );
    match azure_not_asked {
        Some(why) => vec![format!(
            "NOTE: Azure was not asked ({why}), so no machine was checked in Azure; {consequence}."
        )],
        None if unverified > 0 => vec![format!(
            "NOTE: Azure could not be read for some accounts (see DETAIL); {consequence}."
        )],
        None => Vec::new(),
    }
}

/// A failure to reach AWS at all (connection refused, DNS, timeout) said in one line: the service, the
/// endpoint and where it came from, and how many attempts were made; other failures as they are.
fn unreachable_aws(
    e: crate::reconcile::pass::PassError,
    sdk: &aws_config::SdkConfig,
    home: &str,
    counter: &crate::ports::ApiCounter,
) -> CliError {
    use crate::model::AwsErrorKind;
    use crate::reconcile::pass::PassError;
    let aws = match &e {
        PassError::Account(aws) | PassError::Regions(aws) => aws,
        _ => return e.into(),
    };
    if aws.kind != AwsErrorKind::Transport {
        return e.into();
    }
    let service = aws.operation.split(':').next().unwrap_or("sts");
    let (endpoint, source) = super::wire::endpoint_of(sdk, service, home);
    let attempts = counter.count(&aws.operation);
    CliError::Unreachable(format!(
        "cannot reach AWS {} at {endpoint} ({source}) after {attempts} attempt(s): {}",
        aws.operation, aws.message
    ))
}

/// `template NAME`: the configuration file is optional (the default path may be missing; an explicitly
/// given file must exist and be valid), and no AWS call is made.
pub(super) fn template_command(cli: &Cli, t: &TemplateCommand) -> Result<u8, CliError> {
    let config = if cli.config == std::path::Path::new(DEFAULT_CONFIG) && !cli.config.exists() {
        tracing::debug!("no configuration file; the template uses defaults and parameters");
        None
    } else {
        let config = super::load_config(&cli.config)?;
        for w in &config.warnings {
            tracing::warn!(key = %w.key, "configuration: {}", w.problem);
        }
        Some(config)
    };
    let text = crate::template::render(t.name, config.as_ref(), &t.args)?;
    crate::output::stdout::print(&text).map_err(CliError::Stdout)?;
    Ok(exit::OK)
}
