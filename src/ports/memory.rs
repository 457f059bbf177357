//! The daemon's durable memory as a port: what the planner reads (per instance: the last status, the
//! install command in flight or about to be sent, failed attempts and when the next is due; the pending
//! deletions of gone instances' Arc machines) and what the executor journals. The SQLite state file
//! (`daemon::state`) is its adapter; `fake::FakeMemory` its in-memory fake.
//!
//! # Guarantees (of every adapter)
//! - A write resolves `Ok` only once it is durable: a restart reads it back.
//! - A write that fails changes nothing a reader can see, and says so with a [`MemoryError`]; the caller
//!   decides what the failure stops (an install whose intent cannot be recorded is not sent).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::Serialize;

use crate::model::{Failure, Status};

/// Why the memory could not be read or written: the adapter's own error, kept whole as the source.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct MemoryError(pub Box<dyn std::error::Error + Send + Sync + 'static>);

/// The daemon's durable memory of instances and pending deletions, per account.
///
/// Object-safe (`&dyn Memory`): the reconcile core holds it beside its other inputs without a type
/// parameter.
pub trait Memory: Send + Sync {
    /// The records of one account, by region and instance.
    fn of_account<'a>(
        &'a self,
        account_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<InstanceRecord>, MemoryError>>;

    /// Inserts or replaces records, all or none.
    fn put(&self, records: Vec<InstanceRecord>) -> BoxFuture<'_, Result<(), MemoryError>>;

    /// Deletes the records of `account_id` in each region of `seen` whose instance is not in that
    /// region's set; returns the deleted (region, instance id) pairs. Other regions and accounts are
    /// left alone.
    fn forget_unseen<'a>(
        &'a self,
        account_id: &'a str,
        seen: BTreeMap<String, BTreeSet<String>>,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, MemoryError>>;

    /// Records the pending deletions of one account: every record of each region of `wipe` is dropped
    /// first, then those of `done`, then `pending` are inserted or replaced; all or none.
    fn record_deletions<'a>(
        &'a self,
        account_id: &'a str,
        wipe: Vec<String>,
        done: Vec<(String, String)>,
        pending: Vec<DeletionRecord>,
    ) -> BoxFuture<'a, Result<(), MemoryError>>;

    /// Every pending deletion.
    fn deletions(&self) -> BoxFuture<'_, Result<Vec<DeletionRecord>, MemoryError>>;

    /// The pending deletions of one account.
    fn deletions_of_account<'a>(
        &'a self,
        account_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeletionRecord>, MemoryError>>;
}

/// What the daemon knows of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceRecord {
    /// Account.
    pub account_id: String,
    /// Region.
    pub region: String,
    /// Instance.
    pub instance_id: String,
    /// Last report status (its report spelling only in the state file).
    pub status: Status,
    /// Last detail.
    pub detail: String,
    /// Install command in flight, if any.
    pub command_id: Option<String>,
    /// When it was sent (Unix seconds).
    pub command_sent_at: Option<i64>,
    /// Failed install attempts in a row.
    pub attempts: u32,
    /// Last failure (JSON only in the state file).
    pub last_error: Option<Failure>,
    /// When the next install attempt is due (Unix seconds), after a failure.
    pub next_attempt_at: Option<i64>,
    /// Last pass that saw it (Unix seconds).
    pub last_seen_at: i64,
    /// The `Comment` of an install command about to be sent to it (recorded before `SendCommand`): with no
    /// `command_id`, the send may or may not have happened, and the next pass looks the command up by it.
    pub intent: Option<String>,
}

impl InstanceRecord {
    /// A pass's record of an instance that keeps what `prev` remembers of it (attempts, the last failure,
    /// the next attempt, and an intent whose command was not found yet); no command in flight.
    pub fn carried_over(
        (account_id, region, instance_id): (&str, &str, &str),
        (status, detail): (Status, &str),
        prev: Option<&InstanceRecord>,
        now: i64,
    ) -> InstanceRecord {
        let intent = prev
            .filter(|p| p.command_id.is_none())
            .and_then(|p| p.intent.as_ref());
        InstanceRecord {
            account_id: account_id.into(),
            region: region.into(),
            instance_id: instance_id.into(),
            status,
            detail: detail.into(),
            command_id: None,
            command_sent_at: intent.and(prev.and_then(|p| p.command_sent_at)),
            attempts: prev.map_or(0, |p| p.attempts),
            last_error: prev.and_then(|p| p.last_error.clone()),
            next_attempt_at: prev.and_then(|p| p.next_attempt_at),
            last_seen_at: now,
            intent: intent.cloned(),
        }
    }
}

/// A deletion the daemon remembers: an instance of ours is gone, and its Arc machine is deleted once
/// `delete_at` has come (or was found gone, and the deletion failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeletionRecord {
    /// Account.
    pub account_id: String,
    /// Region.
    pub region: String,
    /// The gone instance.
    pub instance_id: String,
    /// The machine's resource group.
    pub resource_group: String,
    /// The machine's name.
    pub machine: String,
    /// When the termination was first seen (Unix seconds): the grace counts from then.
    pub first_seen_at: i64,
    /// When the machine may be deleted (Unix seconds).
    pub delete_at: i64,
}

/// Unix seconds.
pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
