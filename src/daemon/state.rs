//! Durable daemon state in SQLite: per account, region and instance the last status, the install command in
//! flight, attempts, the last error and when the next attempt is due; plus a log of passes.
//!
//! # Guarantees
//! - The adapter of [`crate::ports::memory::Memory`]: the intent of an install (its instances and its
//!   comment) is committed before it is sent, and its command id before the daemon waits for it, so a
//!   restart resumes tracking it (or finds it by its comment) instead of sending another one.
//! - Every write is one transaction with `synchronous = FULL` in WAL mode: a crash (even `kill -9`) loses
//!   at most the write in progress, never a committed one.
//! - SQLite runs on the blocking thread pool, never on the async workers: a write waiting for its fsync (or
//!   for a lock) does not stall the daemon's other work. Each method resolves once SQLite is done.
//! - The schema is versioned with `PRAGMA user_version`; [`StateDb::open`] runs migrations in order.
//!   [`StateDb::open_read_only`] (for `status`) never writes: it refuses a file of another version.
//! - [`StateDb::close`] checkpoints the write-ahead log into the file, so that a file left by a daemon that
//!   stopped cleanly is complete on its own and readable where no `-wal`/`-shm` file can be created.
//!
//! # Caveats
//! - A read-only open of a file without a `-wal` file (no daemon has it open) reads the file as immutable.
//!   A daemon that starts meanwhile writes to a new log, not to the file, until it checkpoints; only a
//!   checkpoint during that read could make it fail (then run `status` again).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};
use serde::Serialize;

use crate::model::{Failure, FailureStep, Status};
pub use crate::ports::memory::{unix, DeletionRecord, InstanceRecord};
use crate::ports::memory::{Memory, MemoryError};
use futures::future::BoxFuture;

/// Schema migrations, in order; `user_version` counts how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: instances and passes.
    "CREATE TABLE instances (
        account_id      TEXT NOT NULL,
        region          TEXT NOT NULL,
        instance_id     TEXT NOT NULL,
        status          TEXT NOT NULL,
        detail          TEXT NOT NULL DEFAULT '',
        command_id      TEXT,
        command_sent_at INTEGER,
        attempts        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        next_attempt_at INTEGER,
        last_seen_at    INTEGER NOT NULL,
        PRIMARY KEY (account_id, region, instance_id)
     );
     CREATE TABLE passes (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        kind        TEXT NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        ok          INTEGER NOT NULL,
        summary     TEXT NOT NULL
     );",
    // 2: deletions of our Arc machines whose instance is gone, pending their grace (`delete_after`).
    "CREATE TABLE deletions (
        account_id     TEXT NOT NULL,
        region         TEXT NOT NULL,
        instance_id    TEXT NOT NULL,
        resource_group TEXT NOT NULL,
        machine        TEXT NOT NULL,
        first_seen_at  INTEGER NOT NULL,
        delete_at      INTEGER NOT NULL,
        PRIMARY KEY (account_id, region, instance_id)
     );",
    // 3: the install about to be sent (its comment), recorded before `SendCommand`.
    "ALTER TABLE instances ADD COLUMN intent TEXT;",
];

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite failed.
    #[error("state file {path}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The file was written by a newer arc-onboard.
    #[error("state file {path} has schema version {found}; this arc-onboard knows up to {known}")]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// A read-only open found an older schema (or an empty file); only the daemon migrates.
    #[error(
        "state file {path} has schema version {found}; this arc-onboard reads version {known} and does not \
         change the file here: start this version's daemon on it once to migrate it"
    )]
    TooOld {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// A new state file could not be moved into place.
    #[error("cannot create state file {path}")]
    Create {
        /// The file.
        path: PathBuf,
        /// The rename's error.
        #[source]
        source: std::io::Error,
    },
    /// The database was closed ([`StateDb::close`]) before this call.
    #[error("state file {path} is closed")]
    Closed {
        /// The file.
        path: PathBuf,
    },
    /// The runtime shut down before the call could run.
    #[error("state file {path}: the runtime stopped before the call ran")]
    Interrupted {
        /// The file.
        path: PathBuf,
    },
}

/// One pass in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PassRecord {
    /// `iam` or `onboarding`.
    pub kind: String,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds.
    pub finished_at: i64,
    /// Whether it completed.
    pub ok: bool,
    /// Counts by status, as JSON.
    pub summary: String,
}

/// Reads a record from a row of `SELECT account_id, region, instance_id, status, detail, command_id,
/// command_sent_at, attempts, last_error, next_attempt_at, last_seen_at, intent`.
fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InstanceRecord> {
    let status: String = r.get(3)?;
    let status = status.parse::<Status>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
    })?;
    let last_error: Option<String> = r.get(8)?;
    Ok(InstanceRecord {
        account_id: r.get(0)?,
        region: r.get(1)?,
        instance_id: r.get(2)?,
        status,
        detail: r.get(4)?,
        command_id: r.get(5)?,
        command_sent_at: r.get(6)?,
        attempts: r.get(7)?,
        last_error: last_error.as_deref().map(stored_failure),
        next_attempt_at: r.get(9)?,
        last_seen_at: r.get(10)?,
        intent: r.get(11)?,
    })
}

/// A record's last failure as the state file keeps it: the failure as JSON (files before the typed
/// failure kept prose, read back as an install failure with code `earlier-failure`).
fn stored_failure(text: &str) -> Failure {
    serde_json::from_str(text)
        .unwrap_or_else(|_| Failure::new(FailureStep::Install, "earlier-failure", text.to_string()))
}

/// A record's last failure as the state file writes it (JSON).
fn failure_text(failure: &Failure) -> String {
    serde_json::to_string(failure).unwrap_or_else(|_| failure.to_string())
}

/// How a SQLite failure on `path` becomes a [`StateError`].
fn sqlite_error(path: &Path) -> impl Fn(rusqlite::Error) -> StateError + '_ {
    move |source| StateError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens (creating if needed) and migrates the file, for the daemon. A new file is built beside the path
/// and renamed into place once migrated, so a reader (`status`) never sees it half-created.
fn open_read_write(path: &Path) -> Result<Connection, StateError> {
    if !path.exists() {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".creating-{}", std::process::id()));
        let fresh = path.with_file_name(name);
        let _ = std::fs::remove_file(&fresh);
        // Closing the only connection checkpoints the write-ahead log into the file.
        drop(migrated(&fresh)?);
        std::fs::rename(&fresh, path).map_err(|source| StateError::Create {
            path: path.to_path_buf(),
            source,
        })?;
    }
    migrated(path)
}

/// Opens `path` (creating it if needed) in WAL mode with full sync and applies the pending migrations.
fn migrated(path: &Path) -> Result<Connection, StateError> {
    let err = sqlite_error(path);
    let conn = Connection::open(path).map_err(&err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(&err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(&err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(&err)?;
    let version = user_version(&conn).map_err(&err)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StateError::TooNew {
            path: path.to_path_buf(),
            found: version,
            known,
        });
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction().map_err(&err)?;
        tx.execute_batch(sql).map_err(&err)?;
        tx.pragma_update(None, "user_version", (n + 1) as i64)
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
    }
    Ok(conn)
}

/// Opens the file read-only, for `status`: no migration, no write, and only the current schema version.
fn open_read_only(path: &Path) -> Result<Connection, StateError> {
    let err = sqlite_error(path);
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = if wal_path(path).exists() {
        // A daemon has the file open (or stopped without closing it): read through its log and the log's
        // index (`-shm`), which exist already.
        Connection::open_with_flags(path, flags)
    } else {
        // No log: no process has the file open, and a clean stop checkpointed everything into it. Read it
        // as immutable, which creates no `-wal` or `-shm` file: none is left behind, owned by whoever ran
        // `status`, and none is needed where this process may not create one.
        Connection::open_with_flags(immutable_uri(path), flags | OpenFlags::SQLITE_OPEN_URI)
    }
    .map_err(&err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(&err)?;
    let version = user_version(&conn).map_err(&err)?;
    let known = MIGRATIONS.len() as i64;
    let (path, found) = (path.to_path_buf(), version);
    match version.cmp(&known) {
        std::cmp::Ordering::Equal => Ok(conn),
        std::cmp::Ordering::Greater => Err(StateError::TooNew { path, found, known }),
        std::cmp::Ordering::Less => Err(StateError::TooOld { path, found, known }),
    }
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// `<path>-wal`.
fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// A SQLite URI opening `path` as immutable (no locks, no `-shm`, no `-wal`).
fn immutable_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // `file:///abs` or `file:rel`; an absolute path gets an empty authority so that `//x` stays a path.
    let mut uri = String::from(if bytes.starts_with(b"/") {
        "file://"
    } else {
        "file:"
    });
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?immutable=1");
    uri
}

/// The connection and the file it is for, shared with the blocking threads that use it.
struct Shared {
    path: PathBuf,
    read_only: bool,
    /// `None` once closed.
    conn: Mutex<Option<Connection>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Option<Connection>> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs `f` on the blocking thread pool and waits for it; a panic in `f` is the caller's panic.
async fn off_the_runtime<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(StateError::Interrupted {
                path: path.to_path_buf(),
            }),
        },
    }
}

/// The state database. Every method runs SQLite on the blocking thread pool and resolves when it is done
/// (for writes: committed and synced).
pub struct StateDb {
    shared: Arc<Shared>,
}

impl StateDb {
    /// Opens (creating if needed) and migrates the state file: the daemon's open.
    pub async fn open(path: &Path) -> Result<StateDb, StateError> {
        let p = path.to_path_buf();
        let conn = off_the_runtime(path, move || open_read_write(&p)).await?;
        Ok(StateDb::new(path, false, conn))
    }

    /// Opens the state file read-only, as `status` does: never creates, migrates or writes it, works while a
    /// daemon has it open and on a file or directory this process cannot write, and refuses a file whose
    /// schema is not this version's ([`StateError::TooOld`], [`StateError::TooNew`]).
    pub async fn open_read_only(path: &Path) -> Result<StateDb, StateError> {
        let p = path.to_path_buf();
        let conn = off_the_runtime(path, move || open_read_only(&p)).await?;
        Ok(StateDb::new(path, true, conn))
    }

    fn new(path: &Path, read_only: bool, conn: Connection) -> StateDb {
        StateDb {
            shared: Arc::new(Shared {
                path: path.to_path_buf(),
                read_only,
                conn: Mutex::new(Some(conn)),
            }),
        }
    }

    /// Runs `f` with the connection, off the runtime.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StateError> {
        let shared = self.shared.clone();
        off_the_runtime(&self.shared.path, move || {
            let slot = shared.lock();
            let conn = slot.as_ref().ok_or_else(|| StateError::Closed {
                path: shared.path.clone(),
            })?;
            f(conn).map_err(sqlite_error(&shared.path))
        })
        .await
    }

    /// Inserts or replaces records, in one transaction.
    pub async fn put(&self, records: Vec<InstanceRecord>) -> Result<(), StateError> {
        self.call(move |conn| {
            let tx = conn.unchecked_transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR REPLACE INTO instances (account_id, region, instance_id, status, detail, command_id,
                        command_sent_at, attempts, last_error, next_attempt_at, last_seen_at, intent)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )?;
                for r in &records {
                    stmt.execute(params![
                        r.account_id,
                        r.region,
                        r.instance_id,
                        r.status.as_str(),
                        r.detail,
                        r.command_id,
                        r.command_sent_at,
                        r.attempts,
                        r.last_error.as_ref().map(failure_text),
                        r.next_attempt_at,
                        r.last_seen_at,
                        r.intent
                    ])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Every record, ordered by account, region, instance.
    pub async fn all(&self) -> Result<Vec<InstanceRecord>, StateError> {
        self.call(|conn| {
            let mut stmt = conn.prepare(
                "SELECT account_id, region, instance_id, status, detail, command_id, command_sent_at, attempts,
                        last_error, next_attempt_at, last_seen_at, intent
                 FROM instances ORDER BY account_id, region, instance_id",
            )?;
            let rows = stmt.query_map([], record_from_row)?;
            rows.collect()
        })
        .await
    }

    /// The records of one account (the primary key's prefix: an index range, not a scan), ordered by
    /// region and instance.
    pub async fn of_account(&self, account_id: &str) -> Result<Vec<InstanceRecord>, StateError> {
        let account_id = account_id.to_string();
        self.call(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT account_id, region, instance_id, status, detail, command_id, command_sent_at, attempts,
                        last_error, next_attempt_at, last_seen_at, intent
                 FROM instances WHERE account_id = ?1 ORDER BY region, instance_id",
            )?;
            let rows = stmt.query_map([&account_id], record_from_row)?;
            rows.collect()
        })
        .await
    }

    /// Deletes the records of `account_id` in each region of `seen` whose instance is not in that region's
    /// set, in one transaction; returns the deleted (region, instance id) pairs in order. Regions absent
    /// from `seen` and other accounts are left alone.
    pub async fn forget_unseen(
        &self,
        account_id: &str,
        seen: BTreeMap<String, BTreeSet<String>>,
    ) -> Result<Vec<(String, String)>, StateError> {
        let account_id = account_id.to_string();
        self.call(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let mut removed = Vec::new();
            {
                let mut ids = tx.prepare(
                    "SELECT instance_id FROM instances WHERE account_id = ?1 AND region = ?2
                     ORDER BY instance_id",
                )?;
                let mut delete = tx.prepare(
                    "DELETE FROM instances WHERE account_id = ?1 AND region = ?2 AND instance_id = ?3",
                )?;
                for (region, present) in &seen {
                    let known: Vec<String> = ids
                        .query_map(params![account_id, region], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    for id in known.into_iter().filter(|id| !present.contains(id)) {
                        delete.execute(params![account_id, region, id])?;
                        removed.push((region.clone(), id));
                    }
                }
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    /// Records the pending deletions of one account: in each region of `wipe` every record is dropped
    /// first (a full pass saw the whole region), then the records of `done` are dropped and `pending` are
    /// inserted or replaced; in one transaction.
    pub async fn record_deletions(
        &self,
        account_id: &str,
        wipe: Vec<String>,
        done: Vec<(String, String)>,
        pending: Vec<DeletionRecord>,
    ) -> Result<(), StateError> {
        let account_id = account_id.to_string();
        self.call(move |conn| {
            let tx = conn.unchecked_transaction()?;
            for region in &wipe {
                tx.execute(
                    "DELETE FROM deletions WHERE account_id = ?1 AND region = ?2",
                    params![account_id, region],
                )?;
            }
            for (region, id) in &done {
                tx.execute(
                    "DELETE FROM deletions WHERE account_id = ?1 AND region = ?2 AND instance_id = ?3",
                    params![account_id, region, id],
                )?;
            }
            for d in &pending {
                tx.execute(
                    "INSERT OR REPLACE INTO deletions (account_id, region, instance_id, resource_group, machine,
                        first_seen_at, delete_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        d.account_id,
                        d.region,
                        d.instance_id,
                        d.resource_group,
                        d.machine,
                        d.first_seen_at,
                        d.delete_at
                    ],
                )?;
            }
            tx.commit()
        })
        .await
    }

    /// Every pending deletion (all accounts), earliest due first.
    pub async fn deletions(&self) -> Result<Vec<DeletionRecord>, StateError> {
        self.deletions_where(None).await
    }

    /// The pending deletions of one account.
    pub async fn deletions_of_account(
        &self,
        account_id: &str,
    ) -> Result<Vec<DeletionRecord>, StateError> {
        self.deletions_where(Some(account_id.to_string())).await
    }

    async fn deletions_where(
        &self,
        account_id: Option<String>,
    ) -> Result<Vec<DeletionRecord>, StateError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT account_id, region, instance_id, resource_group, machine, first_seen_at, delete_at
                 FROM deletions WHERE ?1 IS NULL OR account_id = ?1
                 ORDER BY delete_at, account_id, region, instance_id",
            )?;
            let rows = stmt.query_map([&account_id], |r| {
                Ok(DeletionRecord {
                    account_id: r.get(0)?,
                    region: r.get(1)?,
                    instance_id: r.get(2)?,
                    resource_group: r.get(3)?,
                    machine: r.get(4)?,
                    first_seen_at: r.get(5)?,
                    delete_at: r.get(6)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Appends a pass to the log.
    pub async fn record_pass(&self, pass: PassRecord) -> Result<(), StateError> {
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO passes (kind, started_at, finished_at, ok, summary) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![pass.kind, pass.started_at, pass.finished_at, pass.ok, pass.summary],
            )
            .map(|_| ())
        })
        .await
    }

    /// The most recent pass of each kind.
    pub async fn last_passes(&self) -> Result<Vec<PassRecord>, StateError> {
        self.call(|conn| {
            let mut stmt = conn.prepare(
                "SELECT kind, started_at, finished_at, ok, summary FROM passes
                 WHERE id IN (SELECT MAX(id) FROM passes GROUP BY kind) ORDER BY kind",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(PassRecord {
                    kind: r.get(0)?,
                    started_at: r.get(1)?,
                    finished_at: r.get(2)?,
                    ok: r.get(3)?,
                    summary: r.get(4)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// The schema version of the open file.
    pub async fn schema_version(&self) -> Result<i64, StateError> {
        self.call(user_version).await
    }

    /// Closes the file. A read-write open first checkpoints the write-ahead log into the file and empties
    /// it (waiting up to the busy timeout for readers), so the file is complete on its own. Later calls
    /// fail with [`StateError::Closed`].
    pub async fn close(&self) -> Result<(), StateError> {
        let shared = self.shared.clone();
        off_the_runtime(&self.shared.path, move || {
            let Some(conn) = shared.lock().take() else {
                return Ok(());
            };
            let err = sqlite_error(&shared.path);
            if !shared.read_only {
                let busy: i64 = conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                    .map_err(&err)?;
                if busy != 0 {
                    tracing::warn!(
                        path = %shared.path.display(),
                        "state file: a reader kept the write-ahead log from being checkpointed"
                    );
                }
            }
            conn.close().map_err(|(_, e)| err(e))
        })
        .await
    }
}

/// The state file is the adapter of the [`Memory`] port.
impl Memory for StateDb {
    fn of_account<'a>(
        &'a self,
        account_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<InstanceRecord>, MemoryError>> {
        Box::pin(async move { Ok(StateDb::of_account(self, account_id).await?) })
    }

    fn put(&self, records: Vec<InstanceRecord>) -> BoxFuture<'_, Result<(), MemoryError>> {
        Box::pin(async move { Ok(StateDb::put(self, records).await?) })
    }

    fn forget_unseen<'a>(
        &'a self,
        account_id: &'a str,
        seen: BTreeMap<String, BTreeSet<String>>,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, MemoryError>> {
        Box::pin(async move { Ok(StateDb::forget_unseen(self, account_id, seen).await?) })
    }

    fn record_deletions<'a>(
        &'a self,
        account_id: &'a str,
        wipe: Vec<String>,
        done: Vec<(String, String)>,
        pending: Vec<DeletionRecord>,
    ) -> BoxFuture<'a, Result<(), MemoryError>> {
        Box::pin(async move {
            Ok(StateDb::record_deletions(self, account_id, wipe, done, pending).await?)
        })
    }

    fn deletions(&self) -> BoxFuture<'_, Result<Vec<DeletionRecord>, MemoryError>> {
        Box::pin(async move { Ok(StateDb::deletions(self).await?) })
    }

    fn deletions_of_account<'a>(
        &'a self,
        account_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeletionRecord>, MemoryError>> {
        Box::pin(async move { Ok(StateDb::deletions_of_account(self, account_id).await?) })
    }
}

impl From<StateError> for MemoryError {
    fn from(e: StateError) -> MemoryError {
        MemoryError(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn record(id: &str, status: &str) -> InstanceRecord {
        record_in("123456789012", "us-east-1", id, status)
    }

    #[test]
    fn a_recorded_failure_is_read_back_typed_and_older_prose_still_reads() {
        let kept = Failure {
            step: FailureStep::Download,
            code: "checksum-mismatch".into(),
            exit_code: Some(4),
            reason: "the installer's SHA-256 is x".into(),
        };
        assert_eq!(stored_failure(&serde_json::to_string(&kept).unwrap()), kept);
        let legacy = stored_failure("install failed (Failed: Failed); exit code 41");
        assert_eq!(
            (
                legacy.step,
                legacy.code.as_str(),
                legacy.exit_code,
                legacy.reason.as_str()
            ),
            (
                FailureStep::Install,
                "earlier-failure",
                None,
                "install failed (Failed: Failed); exit code 41"
            )
        );
    }

    fn record_in(account: &str, region: &str, id: &str, status: &str) -> InstanceRecord {
        InstanceRecord {
            account_id: account.into(),
            region: region.into(),
            instance_id: id.into(),
            status: status.parse().unwrap(),
            detail: String::new(),
            command_id: None,
            command_sent_at: None,
            attempts: 0,
            last_error: None,
            next_attempt_at: None,
            last_seen_at: 1,
            intent: None,
        }
    }

    fn ids(records: &[InstanceRecord]) -> Vec<(&str, &str, &str)> {
        records
            .iter()
            .map(|r| {
                (
                    r.account_id.as_str(),
                    r.region.as_str(),
                    r.instance_id.as_str(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn statuses_and_failures_are_typed_in_rust_and_their_report_spelling_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let failure = Failure {
            step: FailureStep::Connect,
            code: "AZCM0041".into(),
            exit_code: Some(41),
            reason: "the token was refused".into(),
        };
        {
            let db = StateDb::open(&path).await.unwrap();
            let mut r = record("i-1", "failed");
            r.last_error = Some(failure.clone());
            db.put(vec![r, record("i-2", "waiting-for-ssm")])
                .await
                .unwrap();
        }
        // On disk: the report's spelling and the failure as JSON, as the columns always held.
        let raw = Connection::open(&path).unwrap();
        let rows: Vec<(String, Option<String>)> = raw
            .prepare("SELECT status, last_error FROM instances ORDER BY instance_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (
                    "failed".to_string(),
                    Some(serde_json::to_string(&failure).unwrap())
                ),
                ("waiting-for-ssm".to_string(), None),
            ]
        );
        // An older file's prose failure reads back typed; an unknown status is an error, not a guess.
        raw.execute(
            "UPDATE instances SET last_error = 'install failed (exit 1)' WHERE instance_id = 'i-1'",
            [],
        )
        .unwrap();
        drop(raw);
        let db = StateDb::open(&path).await.unwrap();
        let all = db.all().await.unwrap();
        assert_eq!(all[0].status, Status::Failed);
        assert_eq!(all[1].status, Status::WaitingForSsm);
        let legacy = all[0].last_error.clone().unwrap();
        assert_eq!(
            (legacy.step, legacy.code.as_str(), legacy.reason.as_str()),
            (
                FailureStep::Install,
                "earlier-failure",
                "install failed (exit 1)"
            )
        );
        let raw = Connection::open(&path).unwrap();
        raw.execute(
            "UPDATE instances SET status = 'half-done' WHERE instance_id = 'i-2'",
            [],
        )
        .unwrap();
        drop(raw);
        let err = db.all().await.unwrap_err();
        assert!(
            crate::error::chain(&err).contains("unknown instance status \"half-done\""),
            "{}",
            crate::error::chain(&err)
        );
    }

    #[tokio::test]
    async fn records_survive_reopening_and_upsert() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let db = StateDb::open(&path).await.unwrap();
            let mut r = record("i-1", "in-progress");
            r.command_id = Some("cmd-1".into());
            r.intent = Some("arc-onboard run x install y".into());
            db.put(vec![r, record("i-2", "failed")]).await.unwrap();
            db.put(vec![record("i-2", "onboarded")]).await.unwrap();
        }
        let db = StateDb::open(&path).await.unwrap();
        assert_eq!(db.schema_version().await.unwrap(), MIGRATIONS.len() as i64);
        let all = db.all().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].command_id.as_deref(), Some("cmd-1"));
        assert_eq!(
            all[0].intent.as_deref(),
            Some("arc-onboard run x install y")
        );
        assert_eq!(all[1].status, Status::Onboarded);
    }

    fn deletion(account: &str, region: &str, id: &str, delete_at: i64) -> DeletionRecord {
        DeletionRecord {
            account_id: account.into(),
            region: region.into(),
            instance_id: id.into(),
            resource_group: "aws_x".into(),
            machine: id.into(),
            first_seen_at: delete_at - 3_600,
            delete_at,
        }
    }

    #[tokio::test]
    async fn pending_deletions_survive_reopening_and_are_wiped_per_region_or_settled_per_instance()
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (a, b) = ("111111111111", "222222222222");
        {
            let db = StateDb::open(&path).await.unwrap();
            db.record_deletions(
                a,
                Vec::new(),
                Vec::new(),
                vec![
                    deletion(a, "us-east-1", "i-1", 300),
                    deletion(a, "us-east-1", "i-2", 100),
                    deletion(a, "eu-west-1", "i-3", 200),
                ],
            )
            .await
            .unwrap();
            db.record_deletions(
                b,
                Vec::new(),
                Vec::new(),
                vec![deletion(b, "us-east-1", "i-9", 50)],
            )
            .await
            .unwrap();
            db.close().await.unwrap();
        }
        let db = StateDb::open(&path).await.unwrap();
        let ids = |d: Vec<DeletionRecord>| -> Vec<String> {
            d.into_iter().map(|d| d.instance_id).collect()
        };
        assert_eq!(
            ids(db.deletions().await.unwrap()),
            ["i-9", "i-2", "i-3", "i-1"],
            "earliest due first"
        );
        // A full pass of a's us-east-1 saw only i-1 pending; an event settled i-3.
        db.record_deletions(
            a,
            vec!["us-east-1".into()],
            vec![("eu-west-1".into(), "i-3".into())],
            vec![deletion(a, "us-east-1", "i-1", 300)],
        )
        .await
        .unwrap();
        assert_eq!(ids(db.deletions_of_account(a).await.unwrap()), ["i-1"]);
        assert_eq!(
            ids(db.deletions_of_account(b).await.unwrap()),
            ["i-9"],
            "other accounts stay"
        );
    }

    #[tokio::test]
    async fn a_version_1_file_is_migrated_with_its_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let raw = Connection::open(&path).unwrap();
        raw.execute_batch(MIGRATIONS[0]).unwrap();
        raw.pragma_update(None, "user_version", 1).unwrap();
        raw.execute(
            "INSERT INTO instances (account_id, region, instance_id, status, last_seen_at)
             VALUES ('111111111111', 'us-east-1', 'i-old', 'onboarded', 1)",
            [],
        )
        .unwrap();
        drop(raw);
        let db = StateDb::open(&path).await.unwrap();
        assert_eq!(db.schema_version().await.unwrap(), 3);
        let old = &db.all().await.unwrap()[0];
        assert_eq!(
            (old.instance_id.as_str(), old.intent.as_deref()),
            ("i-old", None)
        );
        assert!(db.deletions().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_accounts_records_are_read_without_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.db")).await.unwrap();
        db.put(vec![
            record_in("111111111111", "us-east-1", "i-a", "onboarded"),
            record_in("222222222222", "eu-west-1", "i-b", "failed"),
            record_in("222222222222", "us-east-1", "i-c", "onboarded"),
        ])
        .await
        .unwrap();
        let of = |recs: Vec<InstanceRecord>| -> Vec<String> {
            recs.into_iter()
                .map(|r| format!("{}/{}/{}", r.account_id, r.region, r.instance_id))
                .collect()
        };
        assert_eq!(
            of(db.of_account("222222222222").await.unwrap()),
            ["222222222222/eu-west-1/i-b", "222222222222/us-east-1/i-c"]
        );
        assert!(db.of_account("333333333333").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_new_file_appears_only_once_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let db = StateDb::open(&path).await.unwrap();
        // A reader that finds the file at all finds it at this version's schema.
        let reader = StateDb::open_read_only(&path).await.unwrap();
        assert_eq!(
            reader.schema_version().await.unwrap(),
            MIGRATIONS.len() as i64
        );
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".creating-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        db.put(vec![record("i-1", "onboarded")]).await.unwrap();
        assert_eq!(reader.all().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        StateDb::open(&path).await.unwrap();
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            StateDb::open(&path).await,
            Err(StateError::TooNew { found: 99, .. })
        ));
        assert!(matches!(
            StateDb::open_read_only(&path).await,
            Err(StateError::TooNew { found: 99, .. })
        ));
    }

    #[tokio::test]
    async fn a_read_only_open_never_migrates_and_refuses_an_older_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        // A file at schema version 0: empty, as a daemon's first open would find it.
        let raw = Connection::open(&path).unwrap();
        raw.pragma_update(None, "journal_mode", "WAL").unwrap();
        drop(raw);
        let e = StateDb::open_read_only(&path).await.err().expect("refused");
        assert!(
            matches!(
                e,
                StateError::TooOld {
                    found: 0,
                    known: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("daemon"), "says what to do: {e}");
        let raw = Connection::open(&path).unwrap();
        assert_eq!(user_version(&raw).unwrap(), 0, "not migrated");
        let tables: i64 = raw
            .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0, "no table created");
        // A missing file is not created.
        let missing = dir.path().join("missing.db");
        assert!(StateDb::open_read_only(&missing).await.is_err());
        assert!(!missing.exists());
    }

    #[tokio::test]
    async fn a_read_only_open_reads_under_a_running_writer_and_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let writer = StateDb::open(&path).await.unwrap();
        writer.put(vec![record("i-1", "onboarded")]).await.unwrap();
        // The write is in the log, not yet in the file.
        assert!(std::fs::metadata(wal_path(&path)).unwrap().len() > 0);
        let reader = StateDb::open_read_only(&path).await.unwrap();
        assert_eq!(
            ids(&reader.all().await.unwrap()),
            [("123456789012", "us-east-1", "i-1")]
        );
        writer.put(vec![record("i-2", "failed")]).await.unwrap();
        assert_eq!(reader.all().await.unwrap().len(), 2, "sees later commits");
        let refused = reader.put(vec![record("i-3", "failed")]).await.unwrap_err();
        let StateError::Sqlite { source, .. } = &refused else {
            panic!("{refused}")
        };
        assert_eq!(
            source.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ReadOnly),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn a_read_only_open_of_a_stopped_daemons_file_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let db = StateDb::open(&path).await.unwrap();
        db.put(vec![record("i-1", "onboarded")]).await.unwrap();
        db.close().await.unwrap();
        let reader = StateDb::open_read_only(&path).await.unwrap();
        assert_eq!(reader.all().await.unwrap().len(), 1);
        drop(reader);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["state.db"], "no -wal or -shm left by the reader");
    }

    #[tokio::test]
    async fn close_checkpoints_the_log_into_the_file_even_with_a_reader_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let db = StateDb::open(&path).await.unwrap();
        db.put(vec![record("i-1", "onboarded")]).await.unwrap();
        // Another connection (say, a `status`) is open, so closing ours is not the last close.
        let other = Connection::open(&path).unwrap();
        user_version(&other).unwrap();
        db.close().await.unwrap();
        assert_eq!(
            std::fs::metadata(wal_path(&path)).unwrap().len(),
            0,
            "log emptied"
        );
        // Read the file alone, ignoring any log: the record is in it.
        let alone = Connection::open_with_flags(
            immutable_uri(&path),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .unwrap();
        let n: i64 = alone
            .query_row("SELECT COUNT(*) FROM instances", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        assert!(matches!(db.all().await, Err(StateError::Closed { .. })));
    }

    #[tokio::test]
    async fn forget_unseen_touches_only_the_given_account_and_regions() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("s.db")).await.unwrap();
        let us = "us-east-1";
        db.put(vec![
            record_in("123456789012", us, "i-kept", "onboarded"),
            record_in("123456789012", us, "i-gone", "onboarded"),
            record_in("123456789012", us, "i-gone2", "failed"),
            record_in("123456789012", "eu-west-1", "i-eu", "onboarded"),
            record_in("999999999999", us, "i-other-account", "onboarded"),
        ])
        .await
        .unwrap();
        let seen = BTreeMap::from([(us.to_string(), BTreeSet::from(["i-kept".to_string()]))]);
        let removed = db.forget_unseen("123456789012", seen).await.unwrap();
        assert_eq!(
            removed,
            [
                (us.to_string(), "i-gone".to_string()),
                (us.to_string(), "i-gone2".to_string())
            ]
        );
        assert_eq!(
            ids(&db.all().await.unwrap()),
            [
                ("123456789012", "eu-west-1", "i-eu"),
                ("123456789012", us, "i-kept"),
                ("999999999999", us, "i-other-account"),
            ]
        );
    }

    /// A write that waits (here for another connection's lock, as it would for a slow fsync) leaves the
    /// runtime's thread free: on a single-threaded runtime, another task keeps running meanwhile.
    #[tokio::test]
    async fn a_waiting_write_does_not_stall_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let db = StateDb::open(&path).await.unwrap();
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let ticks = Arc::new(AtomicU32::new(0));
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            blocker.execute_batch("COMMIT").unwrap();
        });
        db.put(vec![record("i-1", "onboarded")]).await.unwrap();
        let during = ticks.load(Ordering::SeqCst);
        ticker.abort();
        release.join().unwrap();
        assert!(
            during >= 5,
            "the runtime ran {during} ticks while the write waited"
        );
        assert_eq!(db.all().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_sqlite_failure_names_its_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        // A directory is no database.
        let e = StateDb::open(dir.path())
            .await
            .err()
            .expect("opening a directory fails");
        let cause = std::error::Error::source(&e)
            .expect("the SQLite error is the source")
            .to_string();
        let shown = crate::error::chain(&e);
        assert_eq!(shown.matches(&cause).count(), 1, "{shown}");
        assert!(shown.contains(&dir.path().display().to_string()), "{shown}");
    }

    #[test]
    fn immutable_uris_escape_what_sqlite_would_read_as_syntax() {
        assert_eq!(
            immutable_uri(Path::new("/var/lib/a b/s?#%.db")),
            "file:///var/lib/a%20b/s%3F%23%25.db?immutable=1"
        );
        assert_eq!(immutable_uri(Path::new("s.db")), "file:s.db?immutable=1");
    }

    #[tokio::test]
    async fn passes_keep_the_latest_per_kind() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("s.db")).await.unwrap();
        for (kind, t) in [("iam", 1), ("onboarding", 2), ("iam", 3)] {
            db.record_pass(PassRecord {
                kind: kind.into(),
                started_at: t,
                finished_at: t,
                ok: true,
                summary: "{}".into(),
            })
            .await
            .unwrap();
        }
        let last = db.last_passes().await.unwrap();
        assert_eq!(last.len(), 2);
        assert_eq!(last[0].started_at, 3);
    }
}
