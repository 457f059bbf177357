//! A stateful in-memory fake of the [`Memory`] port: what is written is read back, and writes can be
//! made to fail (all of them, or all after a number that succeed) to test what a failed state write stops.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use futures::future::BoxFuture;

use crate::ports::memory::{DeletionRecord, InstanceRecord, Memory, MemoryError};

/// The error of a write the fake was told to fail.
#[derive(Debug, thiserror::Error)]
#[error("fake memory: write refused (disk full)")]
pub struct WriteRefused;

#[derive(Debug, Default)]
struct State {
    /// By (account, region, instance).
    instances: BTreeMap<(String, String, String), InstanceRecord>,
    deletions: BTreeMap<(String, String, String), DeletionRecord>,
    /// Writes that may still succeed; `None`: all.
    writes_left: Option<usize>,
    /// Refuse the writes that record a command id (a process killed between sending and recording).
    refuse_command_ids: bool,
    /// Writes refused so far.
    refused: usize,
}

/// An in-memory [`Memory`].
#[derive(Debug, Default)]
pub struct FakeMemory {
    state: Mutex<State>,
}

impl FakeMemory {
    /// Empty, every write succeeding.
    pub fn new() -> FakeMemory {
        FakeMemory::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every write from now on fails (`true`) or succeeds (`false`).
    pub fn fail_writes(&self, fail: bool) {
        self.lock().writes_left = fail.then_some(0);
    }

    /// The next `n` writes succeed, every later one fails.
    pub fn fail_writes_after(&self, n: usize) {
        self.lock().writes_left = Some(n);
    }

    /// Refuses (`true`) every write of a record that carries a command id, as if the process died after
    /// `SendCommand` and before recording its id; other writes go on.
    pub fn fail_command_id_writes(&self, fail: bool) {
        self.lock().refuse_command_ids = fail;
    }

    /// How many writes were refused.
    pub fn refused(&self) -> usize {
        self.lock().refused
    }

    /// Every instance record, ordered by account, region, instance.
    pub fn records(&self) -> Vec<InstanceRecord> {
        self.lock().instances.values().cloned().collect()
    }

    /// The record of one instance.
    pub fn record(&self, region: &str, instance_id: &str) -> Option<InstanceRecord> {
        self.lock()
            .instances
            .values()
            .find(|r| r.region == region && r.instance_id == instance_id)
            .cloned()
    }

    /// Takes one write: the state when it may go on, the refusal when not.
    fn write(&self) -> Result<MutexGuard<'_, State>, MemoryError> {
        let mut state = self.lock();
        match &mut state.writes_left {
            Some(0) => {
                state.refused += 1;
                Err(MemoryError(Box::new(WriteRefused)))
            }
            Some(n) => {
                *n -= 1;
                Ok(state)
            }
            None => Ok(state),
        }
    }
}

fn key(account: &str, region: &str, id: &str) -> (String, String, String) {
    (account.to_string(), region.to_string(), id.to_string())
}

impl Memory for FakeMemory {
    fn of_account<'a>(
        &'a self,
        account_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<InstanceRecord>, MemoryError>> {
        let records = self
            .lock()
            .instances
            .values()
            .filter(|r| r.account_id == account_id)
            .cloned()
            .collect();
        Box::pin(async move { Ok(records) })
    }

    fn put(&self, records: Vec<InstanceRecord>) -> BoxFuture<'_, Result<(), MemoryError>> {
        if self.lock().refuse_command_ids && records.iter().any(|r| r.command_id.is_some()) {
            self.lock().refused += 1;
            return Box::pin(async { Err(MemoryError(Box::new(WriteRefused))) });
        }
        let result = self.write().map(|mut state| {
            for r in records {
                let k = key(&r.account_id, &r.region, &r.instance_id);
                state.instances.insert(k, r);
            }
        });
        Box::pin(async move { result })
    }

    fn forget_unseen<'a>(
        &'a self,
        account_id: &'a str,
        seen: BTreeMap<String, BTreeSet<String>>,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, MemoryError>> {
        let result = self.write().map(|mut state| {
            let gone: Vec<(String, String, String)> = state
                .instances
                .keys()
                .filter(|(a, r, i)| {
                    a == account_id && seen.get(r).is_some_and(|ids| !ids.contains(i))
                })
                .cloned()
                .collect();
            for k in &gone {
                state.instances.remove(k);
            }
            gone.into_iter().map(|(_, r, i)| (r, i)).collect()
        });
        Box::pin(async move { result })
    }

    fn record_deletions<'a>(
        &'a self,
        account_id: &'a str,
        wipe: Vec<String>,
        done: Vec<(String, String)>,
        pending: Vec<DeletionRecord>,
    ) -> BoxFuture<'a, Result<(), MemoryError>> {
        let result = self.write().map(|mut state| {
            state
                .deletions
                .retain(|(a, r, _), _| a != account_id || !wipe.contains(r));
            for (region, id) in &done {
                state.deletions.remove(&key(account_id, region, id));
            }
            for d in pending {
                let k = key(&d.account_id, &d.region, &d.instance_id);
                state.deletions.insert(k, d);
            }
        });
        Box::pin(async move { result })
    }

    fn deletions(&self) -> BoxFuture<'_, Result<Vec<DeletionRecord>, MemoryError>> {
        let all = self.lock().deletions.values().cloned().collect();
        Box::pin(async move { Ok(all) })
    }

    fn deletions_of_account<'a>(
        &'a self,
        account_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeletionRecord>, MemoryError>> {
        let of = self
            .lock()
            .deletions
            .values()
            .filter(|d| d.account_id == account_id)
            .cloned()
            .collect();
        Box::pin(async move { Ok(of) })
    }
}
