//! arc-onboard: onboards AWS EC2 instances to Azure Arc through SSM Run Command.
//!
//! It does the job of the "Arc onboarding" solution of Azure's multicloud connector as a standalone
//! orchestrator: discover instances, give them a working SSM role, install and connect the Azure Connected
//! Machine agent, and report what was (or would be) done to each machine.
//!
//! # Layout
//! The folders follow the data: configuration in, the reconcile core (observe -> plan -> apply) over the
//! ports, the adapters behind the ports, the scripts sent to instances, the daemon around the core, and the
//! output people read. They form layers, and each uses only the layers below it (`tests/layering.rs` fails
//! on an import that does not, naming file, line and rule):
//! ```text
//! cli        parses and wires (the real adapters, signals); mints mutation tokens
//! template   CloudFormation and policies from the configuration
//! daemon     daemon::run(deps, settings, shutdown): schedules, event path, state file, metrics
//! output     renders what the core built (report, tables); progress on stderr
//! adapters   implement the ports (AWS SDK, Organizations, SQS, Azure, credentials)
//! reconcile  the core: observe -> plan -> apply over the ports; the report's data
//! install    the scripts sent to instances
//! config     plain data + validation; environment variable names
//! ports      one trait per external system, accounts, progress, clock; MutationToken
//! model      domain types, statuses, failures, timestamp
//! error      how errors are shown
//! ```
//! `fake` and `bench` are the test kit: they may use anything, and only test code may use them.
//! - [`cli`]: command-line parsing and the commands; the only place mutation tokens are minted (`cli/mod.rs`:
//!   clap types, dispatch, exit codes; `commands`: `plan`, `run`, `template`; `daemon`: the daemon, its signals
//!   and event path; `status`: the state file rendered; `wire`: building the real adapters; `usage`: flags
//!   a command would ignore refused, completions, the man page, `--help` examples; `interrupt`: Ctrl-C
//!   during `run`; `saved_plan`: the file of `plan --out` / `run --plan` and the checks that refuse it).
//!   `build.rs` puts the git commit and the target triple in `--version`. `cli/daemon.rs` only wires the
//!   daemon's adapters and signals into [`daemon::run`].
//! - [`config`]: the TOML configuration, validated once into typed values before any AWS call (`mod.rs`:
//!   the types and `Config::load`; `validate`: the validator and its checks; `effective`: the effective
//!   configuration `validate` prints; [`config::env`]: the environment variables read and how
//!   ([`config::env::EnvLookup`]); [`config::duration`]: the human durations the interface accepts;
//!   [`config::accounts`]: `[aws.accounts]` and `--shard`; [`config::events`]: `[events]`;
//!   [`config::locations`]: the AWS region -> Azure location table of `location = "auto"`).
//! - [`model`]: domain types shared by every layer; no SDK type crosses a port; [`model::timestamp`]: how
//!   every layer writes a time (RFC 3339, seconds).
//! - [`ports`]: one trait per AWS service and Azure Resource Manager, and the [`ports::MutationToken`]
//!   capability; [`ports::accounts`]: the accounts port ([`ports::accounts::Accounts`]: the caller, the
//!   organization, entering an account); [`ports::progress`]: where the core reports its long waits;
//!   [`ports::memory`]: the daemon's durable memory (what the planner reads, what the executor journals),
//!   whose adapter is [`daemon::state`]; [`ports::clock`]: the time the core reads (report timestamps,
//!   the `since` of command listings; the core never reads the wall clock, `tests/core_clock.rs`).
//! - [`reconcile`]: the core.
//!   - [`reconcile::observe`]: gathers one account's state through the ports (or just some instances').
//!   - [`reconcile::plan`]: the pure planner: observation + config + the daemon's memory -> per-instance
//!     actions, statuses and reasons.
//!   - [`reconcile::batches`]: the planner's install step: the agent script's SSM batches (instances,
//!     document, installer and checksum, resource group, location, tags) the executor sends as they are.
//!   - [`reconcile::apply`]: executes the IAM part of a plan (requires a mutation token).
//!   - [`reconcile::lifecycle`]: our Arc machines whose instance is gone: found (ownership tags, observed
//!     regions), planned as `terminated` rows with `delete-arc-machine` after `delete_after`, deleted.
//!   - [`reconcile::onboard`]: the agent install through SSM Run Command, tracking, verification in Azure.
//!   - [`reconcile::pass`]: one observe -> plan -> apply pass, shared by every command.
//!   - [`reconcile::interrupt`]: interrupting a pass (Ctrl-C during `run`): no new change, waits end.
//!   - [`reconcile::leases`]: leases per (account, region): a daemon's passes hold theirs alone, event
//!     installs share theirs.
//!   - [`reconcile::saved`]: saved plans: the rows and the facts they rest on, and the pure restriction
//!     of a plan made anew to a saved one (`run --plan`).
//!   - [`reconcile::accounts`]: the accounts in scope, entering each, one pass per account (bounded
//!     concurrency) and one merged report, over the [`ports::accounts::Accounts`] port.
//!   - [`reconcile::report`]: the report's data, built from the plans and outcomes (rendered by
//!     [`output::report`]).
//! - [`adapters`]: the real systems behind the ports.
//!   - [`adapters::aws`]: the official AWS SDK (credential chain, retries, call counting).
//!   - [`adapters::organizations`]: the accounts port over the SDK (Organizations, `sts:AssumeRole`).
//!   - [`adapters::azure`]: the REST adapter of the Azure port (Resource Manager and its token);
//!     `azure/graph.rs`: the Resource Graph query for machines elsewhere, its KQL quoted.
//!   - [`adapters::credential`]: the six ways to get that token, each proof checked before any AWS call.
//!   - [`adapters::sqs`]: the event queue (`aws-sdk-sqs`: long polls, batch deletes).
//! - [`install`]: the Linux and Windows agent install scripts, rendered with per-shell quoting.
//! - [`daemon`]: the two schedules of scheduled onboarding and per-pass bookkeeping; [`daemon::run`]: the
//!   daemon assembled from the ports it is given (metrics server, schedules, event path) until shutdown.
//!   - [`daemon::events`]: event-driven onboarding: the SQS intake, the SSM watcher, batched installs.
//!   - [`daemon::event_message`]: EventBridge events as the queue delivers them, and the scope check.
//!   - [`daemon::event_accounts`]: the event path's accounts in scope (refreshed on a clock, `--shard`)
//!     and the entered accounts' clients.
//!   - [`daemon::iam_cache`]: the event path's IAM answers, reused for a short TTL.
//!   - [`daemon::state`]: the daemon's durable state (SQLite, versioned schema): the adapter of
//!     [`ports::memory::Memory`].
//!   - [`daemon::metrics`]: Prometheus metrics and the `/metrics` + `/healthz` endpoint.
//! - [`output`]: what people read.
//!   - [`output::report`]: the report rendered as JSON or a table (its data is [`reconcile::report`]'s).
//!   - [`output::table`]: the one table renderer (display-width aware; fitted to a terminal, painted).
//!   - [`output::progress`]: progress of long waits on stderr (elapsed time and bound);
//!     [`output::progress::Stderr`] is the progress port's adapter.
//!   - [`output::stdout`]: results on stdout; a closed stdout ends the program as SIGPIPE would.
//!   - `output` itself: [`output::TableStyle`], the shape of the table on a terminal or off it.
//! - [`template`]: `arc-onboard template NAME`: the member-account role and event set-up as
//!   CloudFormation, the orchestrator's IAM policy and its Azure custom role, built from the configuration.
//! - [`error`]: how errors are shown: the message and every cause, once each.
//! - `bench`: in-process benchmarks on the fakes under simulated AWS throttling (`scripts/bench-org`;
//!   feature `fakes` only).
//! - `fake`: stateful in-memory fakes of the ports, for tests (compiled for `cargo test` or with the
//!   `fakes` feature only; never in the release binary); `fake::accounts`: an organization of fakes;
//!   `fake::FakeArm`: an in-memory Azure Resource Manager; `fake::memory`: the durable memory, whose
//!   writes can be made to fail.

pub mod adapters;
#[cfg(any(test, feature = "fakes"))]
pub mod bench;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod error;
#[cfg(any(test, feature = "fakes"))]
pub mod fake;
pub mod install;
pub mod model;
pub mod output;
pub mod ports;
pub mod reconcile;
pub mod template;
