//! `arc-onboard status` reads the daemon's state file without changing it: never migrates, refuses a schema
//! it does not read, works while a daemon writes the file, and on a file and directory it cannot write.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use arc_onboard::daemon::state::{InstanceRecord, PassRecord, StateDb};
use serde_json::Value;

fn record(id: &str) -> InstanceRecord {
    InstanceRecord {
        account_id: "123456789012".into(),
        region: "us-east-1".into(),
        instance_id: id.into(),
        status: arc_onboard::model::Status::Onboarded,
        detail: "done".into(),
        command_id: None,
        command_sent_at: None,
        attempts: 0,
        last_error: None,
        next_attempt_at: None,
        last_seen_at: 1_700_000_000,
        intent: None,
    }
}

/// `status --output json` on `file`. When the tests run as root, who may write anything, it runs as
/// `nobody`, so that file permissions apply to it.
fn status(file: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arc-onboard"));
    cmd.args(["status", "--output", "json", "--state-file"])
        .arg(file)
        .env_remove("ARC_ONBOARD_STATE_FILE");
    if running_as_root(file.parent().unwrap()) {
        cmd.uid(65534).gid(65534);
    }
    cmd.output().expect("run arc-onboard status")
}

/// Whether this process is root: it owns `dir`, which it created.
fn running_as_root(dir: &Path) -> bool {
    std::fs::metadata(dir).unwrap().uid() == 0
}

fn instance_ids(out: &Output) -> Vec<String> {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_string())
        .collect()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Leaves `dir`'s contents to the current process again, so that the temporary directory can be removed.
struct Writable<'a>(&'a Path);

impl Drop for Writable<'_> {
    fn drop(&mut self) {
        chmod(self.0, 0o755);
    }
}

#[tokio::test]
async fn status_reads_a_state_file_it_cannot_write_after_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.db");
    let db = StateDb::open(&file).await.unwrap();
    db.put(vec![record("i-1"), record("i-2")]).await.unwrap();
    db.record_pass(PassRecord {
        kind: "onboarding".into(),
        started_at: 1_700_000_000,
        finished_at: 1_700_000_010,
        ok: true,
        summary: "{\"onboarded\":2}".into(),
    })
    .await
    .unwrap();
    db.close().await.unwrap();
    let before = std::fs::read(&file).unwrap();
    chmod(&file, 0o444);
    chmod(dir.path(), 0o555);
    let _restore = Writable(dir.path());

    let out = status(&file);
    assert_eq!(instance_ids(&out), ["i-1", "i-2"]);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the file is unchanged"
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["state.db"], "no -wal or -shm file was left");
}

#[tokio::test]
async fn status_reads_a_state_file_while_a_daemon_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.db");
    // The daemon's connection stays open; its last write is still in the write-ahead log.
    let daemon = StateDb::open(&file).await.unwrap();
    daemon.put(vec![record("i-1")]).await.unwrap();
    // Readable by all, writable only by the daemon (when the tests run as root, `status` runs as nobody).
    chmod(dir.path(), 0o755);
    assert_eq!(instance_ids(&status(&file)), ["i-1"]);
    daemon.put(vec![record("i-2")]).await.unwrap();
    assert_eq!(instance_ids(&status(&file)), ["i-1", "i-2"]);
    assert_eq!(daemon.schema_version().await.unwrap(), 3);
    daemon.put(vec![record("i-3")]).await.unwrap();
    daemon.close().await.unwrap();
}

#[test]
fn status_refuses_an_older_schema_and_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.db");
    // A SQLite file at schema version 0 (what a daemon's very first open starts from).
    let conn = rusqlite::Connection::open(&file).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    drop(conn);
    // Writable by anyone: status could migrate it, and must not.
    chmod(&file, 0o666);
    chmod(dir.path(), 0o777);
    let out = status(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("schema version 0"), "{stderr}");
    assert!(stderr.contains("start this version's daemon"), "{stderr}");
    let conn = rusqlite::Connection::open(&file).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 0, "status migrated the file");
    let tables: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 0, "status created tables");
}
