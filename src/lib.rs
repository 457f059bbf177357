//! arc-onboard: onboards AWS EC2 instances to Azure Arc through SSM Run Command.
//!
//! It does the job of the "Arc onboarding" solution of Azure's multicloud connector as a standalone
//! orchestrator: discover instances, give them a working SSM role, install and connect the Azure Connected
//! Machine agent, and report what was (or would be) done to each machine.
//!
//! # Layout
//! - [`config`]: the TOML configuration, validated once into typed values before any AWS call.
//! - [`daemon`]: the two schedules of scheduled onboarding, signals and per-pass bookkeeping.
//! - [`duration`]: the human durations the interface accepts.
//! - [`error`]: how errors are shown: the message and every cause, once each.
//! - [`model`]: domain types shared by every layer; no SDK type crosses a port.
//! - [`ports`]: one trait per external system, and the [`ports::MutationToken`] capability.
//! - [`azure`]: the Azure port (Resource Manager and its token), its REST adapter and a fake.
//! - [`credential`]: the six ways to get that token (secret, certificate, workload identity, AWS
//!   federation, managed identity, Azure CLI), each proof checked before any AWS call.
//! - [`aws`]: real adapters over the official AWS SDK (credential chain, retries, call counting).
//! - [`fake`]: stateful in-memory fakes of the ports, for tests (compiled for `cargo test` or with the
//!   `fakes` feature only; never in the release binary).
//! - [`install`]: the Linux and Windows agent install scripts, rendered with per-shell quoting.
//! - [`observe`]: gathers one account's state through the ports.
//! - [`plan`]: the pure planner: observation + config -> per-instance actions and reasons.
//! - [`apply`]: executes the IAM part of a plan (requires a mutation token).
//! - [`onboard`]: the agent install through SSM Run Command, command tracking, verification in Azure.
//! - [`pass`]: one observe -> plan -> apply pass, shared by every command.
//! - [`progress`]: progress of long waits on stderr.
//! - [`report`]: the report rendered as JSON or a table.
//! - [`table`]: the one table renderer of the human output (display-width aware).
//! - [`state`]: the daemon's durable state (SQLite, versioned schema).
//! - [`metrics`]: Prometheus metrics of the passes and the `/metrics` + `/healthz` HTTP endpoint.
//! - [`cli`]: command-line parsing and the commands; the only place mutation tokens are minted.

pub mod apply;
pub mod aws;
pub mod azure;
pub mod cli;
pub mod config;
pub mod credential;
pub mod daemon;
pub mod duration;
pub mod error;
#[cfg(any(test, feature = "fakes"))]
pub mod fake;
pub mod install;
pub mod metrics;
pub mod model;
pub mod observe;
pub mod onboard;
pub mod pass;
pub mod plan;
pub mod ports;
pub mod progress;
pub mod report;
pub mod state;
pub mod table;
