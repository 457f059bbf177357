//! Usage: global flags a command would ignore are refused (exit 2, as clap refuses any bad usage), the
//! Examples of `--help`, shell completions and the man page.

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};

use super::{exit, Cli, CliError, Command, Output};

/// Examples of `plan --help`.
pub(super) const PLAN_EXAMPLES: &str = "\
Examples:
  arc-onboard plan                              what run would do, as a table
  arc-onboard plan --wide                       every column, whole cells (on a terminal)
  arc-onboard plan --output json | jq '.summary.by_status'
  arc-onboard plan --state-file arc-onboard.db  what the daemon's next pass will do
  arc-onboard --config prod.toml plan --shard 0/4";

/// Examples of `run --help`.
pub(super) const RUN_EXAMPLES: &str = "\
Examples:
  arc-onboard run                               onboard what plan shows
  arc-onboard run --wait-for-ssm 0s             do not wait for SSM registration (a later run installs)
  arc-onboard run --output json > report.json
  arc-onboard run --dry-run                     exactly plan
Ctrl-C stops a run cleanly: no new change is started, the partial report is printed, exit code 130.";

/// Examples of `daemon --help`.
pub(super) const DAEMON_EXAMPLES: &str = "\
Examples:
  arc-onboard daemon --state-file /var/lib/arc-onboard/state.db --metrics-addr 127.0.0.1:9464
  arc-onboard --log-format json daemon          logs as JSON lines on stderr
  kill -HUP $(pidof arc-onboard)                run both passes now
  arc-onboard status --state-file /var/lib/arc-onboard/state.db";

/// Examples of `template --help`.
pub(super) const TEMPLATE_EXAMPLES: &str = "\
Examples:
  arc-onboard template member-role --orchestrator-account 111111111111 > member-role.yaml
  arc-onboard template orchestrator-policy > orchestrator-policy.json
  arc-onboard template events --organization-id o-abc123 > events.json
  arc-onboard template azure-role > azure-role.json";

/// A global flag given on the command line to a command that would ignore it: the reason it is refused.
fn ignored_flag(command: &Command, flag: &str) -> Option<&'static str> {
    match (command, flag) {
        (Command::Status(_), "config") => {
            Some("status reads only the daemon's state file (give --state-file)")
        }
        (Command::Completions { .. } | Command::Manpage, "config" | "output") => {
            Some("it prints a fixed text")
        }
        (Command::Daemon(_), "output") => {
            Some("the daemon prints no report (its logs take --log-format)")
        }
        (Command::Template(_), "output") => {
            Some("each template has its own format (CloudFormation or JSON)")
        }
        _ => None,
    }
}

/// The subcommand's name as typed.
fn name(command: &Command) -> &'static str {
    match command {
        Command::Plan(_) => "plan",
        Command::Run(_) => "run",
        Command::Validate => "validate",
        Command::Daemon(_) => "daemon",
        Command::Status(_) => "status",
        Command::Template(_) => "template",
        Command::Completions { .. } => "completions",
        Command::Manpage => "manpage",
    }
}

/// Whether `id` was given on the command line (not by its environment variable or default), before or
/// after the subcommand.
fn given(matches: &ArgMatches, id: &str) -> bool {
    let here = matches.value_source(id) == Some(ValueSource::CommandLine);
    let below = matches
        .subcommand()
        .is_some_and(|(_, sub)| sub.value_source(id) == Some(ValueSource::CommandLine));
    here || below
}

/// The refusal of a flag the command would ignore, as clap words its own usage errors.
fn refusal(matches: &ArgMatches, cli: &Cli) -> Option<String> {
    for flag in ["config", "output"] {
        if given(matches, flag) {
            if let Some(why) = ignored_flag(&cli.command, flag) {
                return Some(format!(
                    "--{flag} does not apply to `{}`: {why}",
                    name(&cli.command)
                ));
            }
        }
    }
    let wide = match &cli.command {
        Command::Plan(a) => a.wide,
        Command::Run(a) => a.wide,
        Command::Status(a) => a.wide,
        _ => false,
    };
    (wide && cli.output == Output::Json)
        .then(|| "--wide shapes the table; --output json always has every field".to_string())
}

/// Exits with clap's usage error (exit code 2) when a flag was given that the command would ignore.
pub(super) fn refuse_ignored_flags(matches: &ArgMatches, cli: &Cli) {
    if let Some(message) = refusal(matches, cli) {
        Cli::command()
            .error(ErrorKind::ArgumentConflict, message)
            .exit();
    }
}

/// `completions SHELL`.
pub(super) fn completions(shell: clap_complete::Shell) -> Result<u8, CliError> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "arc-onboard", &mut out);
    crate::output::stdout::print(&String::from_utf8_lossy(&out)).map_err(CliError::Stdout)?;
    Ok(exit::OK)
}

/// `manpage`: the man page of the command and its subcommands, in one roff document.
pub(super) fn manpage() -> Result<u8, CliError> {
    let command = Cli::command();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(command.clone());
    let written = man.render(&mut out).and_then(|()| {
        for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
            let full = format!("arc-onboard {}", sub.get_name());
            let section =
                clap_mangen::Man::new(sub.clone().name(full.clone()).bin_name(full.clone()));
            // Each subcommand as a part of this page: its synopsis, description, options and examples.
            use std::io::Write;
            writeln!(out, ".SH \"COMMAND: {}\"", full.to_uppercase())?;
            section.render_synopsis_section(&mut out)?;
            section.render_description_section(&mut out)?;
            section.render_options_section(&mut out)?;
            section.render_extra_section(&mut out)?;
        }
        Ok(())
    });
    written.map_err(CliError::Stdout)?;
    crate::output::stdout::print(&String::from_utf8_lossy(&out)).map_err(CliError::Stdout)?;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches;

    fn refused(args: &[&str]) -> Option<String> {
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        refusal(&matches, &cli)
    }

    #[test]
    fn ignored_flags_are_refused_and_used_ones_pass() {
        for args in [
            &["arc-onboard", "daemon", "--output", "json"][..],
            &["arc-onboard", "--output", "json", "daemon"],
            &["arc-onboard", "status", "--config", "x.toml"],
            &["arc-onboard", "--config", "x.toml", "status"],
            &["arc-onboard", "template", "events", "--output", "table"],
            &["arc-onboard", "completions", "bash", "--config", "x.toml"],
            &["arc-onboard", "plan", "--wide", "--output", "json"],
        ] {
            assert!(refused(args).is_some(), "{args:?} is accepted");
        }
        for args in [
            &["arc-onboard", "plan", "--output", "json"][..],
            &["arc-onboard", "validate", "--output", "json"],
            &["arc-onboard", "status", "--output", "json"],
            &["arc-onboard", "--config", "x.toml", "daemon"],
            &["arc-onboard", "template", "events", "--config", "x.toml"],
            &["arc-onboard", "status", "--wide"],
            &["arc-onboard", "completions", "zsh"],
        ] {
            assert_eq!(refused(args), None, "{args:?}");
        }
    }

    #[test]
    fn the_version_names_the_commit_and_the_target() {
        assert!(super::super::VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(super::super::VERSION.contains("(commit "));
        assert!(super::super::VERSION.contains(env!("ARC_ONBOARD_TARGET")));
    }
}
