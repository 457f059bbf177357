//! Test support: starts the AWS emulator on an ephemeral 127.0.0.1 port, talks to its control API, and
//! runs the real `arc-onboard` binary against it with an isolated AWS environment.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// The emulator's account id.
pub const ACCOUNT: &str = "123456789012";
/// The managed policy SSM needs.
pub const SSM_POLICY: &str = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore";

/// A seed with the tests' IAM fixture and `instances`: `AppRole` in `AppProfile` (has the SSM policy),
/// `LegacyRole` in `LegacyProfile` (only ReadOnlyAccess), `EmptyProfile` (no role).
pub fn fleet_with(instances: Value) -> Value {
    json!({
        "roles": [
            {"name": "AppRole", "policies": [SSM_POLICY], "instance_profile": "AppProfile"},
            {"name": "LegacyRole", "policies": ["arn:aws:iam::aws:policy/ReadOnlyAccess"], "instance_profile": "LegacyProfile"}
        ],
        "instance_profiles": [{"name": "EmptyProfile"}],
        "instances": instances
    })
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python interpreter of the emulator's virtual environment.
fn python() -> PathBuf {
    std::env::var_os("ARC_ONBOARD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"))
}

/// A running emulator; stopped on drop.
pub struct Emulator {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    port: u16,
}

impl Emulator {
    /// Starts a fresh emulator.
    pub fn start() -> Emulator {
        let (child, endpoint, port) = start_server("scripts/aws-emulator/emulator.py");
        Emulator {
            child,
            endpoint,
            port,
        }
    }

    /// A control API call; panics on a non-2xx answer.
    pub fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        control(self.port, method, path, body)
    }

    /// Seeds a fleet; returns the created instances in seed order.
    pub fn seed(&self, fleet: &Value) -> Vec<Value> {
        self.control("POST", "/_emulator/seed", Some(fleet))["instances"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Seeds `fleet`, then forgets the seeding's calls: the new instances' ids, in seed order.
    pub fn seed_ids(&self, fleet: &Value) -> Vec<String> {
        let ids = self
            .seed(fleet)
            .iter()
            .map(|i| i["instance_id"].as_str().unwrap().to_string())
            .collect();
        self.reset_calls();
        ids
    }

    /// The SSM commands sent so far, as the emulator records them.
    pub fn sent_commands(&self) -> Vec<Value> {
        self.control("GET", "/_emulator/commands", None)["commands"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The install commands sent: each batch's second command (its first is the key exchange).
    pub fn install_commands(&self) -> Vec<Value> {
        self.sent_commands()
            .into_iter()
            .filter(|c| {
                let script = script_of(c);
                script.contains("\nARC_MODE='install'\n")
                    || script.contains("\n$ARC_MODE = 'install'\n")
            })
            .collect()
    }

    /// `execute_scripts`: each instance's sandbox directory (its "disk"), by instance id.
    pub fn sandboxes(&self) -> Vec<(String, PathBuf)> {
        let view = self.control("GET", "/_emulator/sandboxes", None);
        view["instances"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(id, dir)| (id.clone(), PathBuf::from(dir.as_str().unwrap())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every AWS call so far.
    pub fn calls(&self) -> Vec<Value> {
        self.control("GET", "/_emulator/calls", None)["calls"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Calls by operation.
    pub fn counts(&self) -> serde_json::Map<String, Value> {
        self.control("GET", "/_emulator/calls", None)["counts"]
            .as_object()
            .unwrap()
            .clone()
    }

    /// Clears the call log.
    pub fn reset_calls(&self) {
        self.control("POST", "/_emulator/calls/reset", Some(&json!({})));
    }

    /// Calls that change something.
    pub fn mutating_calls(&self) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c["mutating"] == true)
            .collect()
    }

    /// Partial config update.
    pub fn configure(&self, config: Value) {
        self.control("POST", "/_emulator/config", Some(&config));
    }

    /// Replaces the fault list.
    pub fn faults(&self, faults: Value) {
        self.control(
            "POST",
            "/_emulator/faults",
            Some(&json!({"faults": faults, "seed": 7})),
        );
    }

    /// Runs the binary against this emulator.
    pub fn run(&self, args: &[&str], config: &str) -> Outcome {
        run_binary(
            args,
            config,
            &[("AWS_ENDPOINT_URL", self.endpoint.as_str())],
        )
    }

    /// Runs the binary with extra environment.
    pub fn run_env(&self, args: &[&str], config: &str, env: &[(&str, &str)]) -> Outcome {
        let mut all = vec![("AWS_ENDPOINT_URL", self.endpoint.as_str())];
        all.extend_from_slice(env);
        run_binary(args, config, &all)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts one of the Python test servers; returns the child, its endpoint and port.
fn start_server(script: &str) -> (Child, String, u16) {
    let py = python();
    assert!(
        py.exists(),
        "{} not found: run scripts/test (it creates .venv with the test servers' requirements)",
        py.display()
    );
    let mut child = Command::new(py)
        .arg(repo().join(script))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {script}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read LISTENING line");
    let endpoint = line
        .trim()
        .strip_prefix("LISTENING ")
        .unwrap_or_else(|| panic!("unexpected output of {script}: {line:?}"))
        .to_string();
    let port = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    (child, endpoint, port)
}

/// The Azure stub (Entra token endpoint + Resource Manager + simulated `azcmagent connect`).
pub struct AzureStub {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    port: u16,
}

/// The stub's service principal secret.
pub const STUB_SECRET: &str = "stub-secret-Zq9";

/// `run` with the JSON report, waiting up to 30 s for SSM and 20 s for Azure.
pub const RUN_JSON: [&str; 7] = [
    "run",
    "--output",
    "json",
    "--wait-for-ssm",
    "30s",
    "--verify-timeout",
    "20s",
];

impl AzureStub {
    /// Starts a fresh stub with a known secret.
    pub fn start() -> AzureStub {
        let (child, endpoint, port) = start_server("scripts/azure-stub/stub.py");
        let stub = AzureStub {
            child,
            endpoint,
            port,
        };
        stub.control(
            "POST",
            "/_stub/config",
            Some(&json!({"client_secret": STUB_SECRET})),
        );
        stub
    }

    /// A control API call; panics on a non-2xx answer.
    pub fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        control(self.port, method, path, body)
    }

    /// Machines the stub knows, with their resource group.
    pub fn machines(&self) -> Vec<Value> {
        let v = self.control("GET", "/_stub/machines", None);
        v.get("machines")
            .unwrap_or(&v)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Token and ARM requests so far.
    pub fn requests(&self) -> Vec<Value> {
        self.control("GET", "/_stub/requests", None)["requests"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Every access token the stub issued so far, in the clear (to look for where they must not be).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.control("GET", "/_stub/tokens/issued", None)["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    }

    /// Connect attempts so far.
    pub fn connects(&self) -> Vec<Value> {
        let v = self.control("GET", "/_stub/connects", None);
        v.get("connects")
            .unwrap_or(&v)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for AzureStub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The AWS emulator and the Azure stub, wired so that a successful install connects the machine.
pub struct World {
    /// AWS.
    pub aws: Emulator,
    /// Azure.
    pub azure: AzureStub,
}

impl World {
    /// Starts both and wires the emulator's success webhook to the stub.
    pub fn start() -> World {
        let aws = Emulator::start();
        let azure = AzureStub::start();
        aws.configure(
            json!({"on_success_webhook": format!("{}/_stub/agent/connect", azure.endpoint)}),
        );
        World { aws, azure }
    }

    /// The `[azure]` section pointing at the stub.
    pub fn azure_section(&self) -> String {
        format!(
            "[azure]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\nsubscription_id = \"00000000-0000-0000-0000-000000000002\"\nclient_id = \"00000000-0000-0000-0000-000000000003\"\nlocation = \"eastus\"\nauthority_host = \"{0}\"\nresource_manager = \"{0}\"\n",
            self.azure.endpoint
        )
    }

    /// A config: `aws_and_more` (the `[aws]` section and any other sections) plus the stub's `[azure]`.
    pub fn config(&self, aws_and_more: &str) -> String {
        format!("{aws_and_more}\n{}", self.azure_section())
    }

    /// Runs the binary against both, with the stub's secret in the environment.
    pub fn run(&self, args: &[&str], config: &str) -> Outcome {
        self.run_env(args, config, &[])
    }

    /// Runs the binary with extra environment.
    pub fn run_env(&self, args: &[&str], config: &str, env: &[(&str, &str)]) -> Outcome {
        let mut all = vec![("ARC_ONBOARD_CLIENT_SECRET", STUB_SECRET)];
        all.extend_from_slice(env);
        self.aws.run_env(args, config, &all)
    }

    /// Runs the binary with only `env` added to the isolated AWS environment: no client secret, for the
    /// other credential kinds.
    pub fn run_without_secret(&self, args: &[&str], config: &str, env: &[(&str, &str)]) -> Outcome {
        self.aws.run_env(args, config, env)
    }

    /// The `[azure]` section pointing at the stub, with `credential_lines` (`credential = ...` and its
    /// keys) and without `client_id` when `client_id` is false.
    pub fn azure_section_with(&self, credential_lines: &str, client_id: bool) -> String {
        let section = self.azure_section();
        let section = if client_id {
            section
        } else {
            section.replace("client_id = \"00000000-0000-0000-0000-000000000003\"\n", "")
        };
        format!("{section}{credential_lines}\n")
    }
}

/// A control API call to the server on `port`; panics on a non-2xx answer.
fn control(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    let (status, value) = http(port, method, path, body);
    assert!(
        (200..300).contains(&status),
        "{method} {path} -> {status}: {value}"
    );
    value
}

/// Minimal HTTP/1.1 client for the control API.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the emulator");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let value = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
    (status, value)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// What a run of the binary produced.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code.
    pub code: i32,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

impl Outcome {
    /// The JSON report of a command that must have exited 0 (else fails, showing both streams).
    pub fn json_of_success(&self) -> Value {
        assert_eq!(
            self.code, 0,
            "stderr:\n{}\nstdout:\n{}",
            self.stderr, self.stdout
        );
        self.json()
    }

    /// stdout parsed as the JSON report.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Gives `cmd` an AWS environment isolated from the machine's: no profiles or files of the user (empty ones
/// in `dir`), no instance metadata, dummy credentials, one attempt per call.
pub fn isolate(cmd: &mut Command, dir: &Path) {
    std::fs::write(dir.join("aws-config"), "").unwrap();
    std::fs::write(dir.join("aws-credentials"), "").unwrap();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("AWS_CONFIG_FILE", dir.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("aws-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_MAX_ATTEMPTS", "1");
}

/// Runs `arc-onboard` with `config` written to a temporary file, in an AWS environment isolated from the
/// machine's (no profiles, no instance metadata, dummy credentials, one attempt per call).
pub fn run_binary(args: &[&str], config: &str, env: &[(&str, &str)]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("arc-onboard.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arc-onboard"));
    cmd.args(args).arg("--config").arg(&config_path);
    isolate(&mut cmd, dir.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run arc-onboard");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Actions a policy document in the repository allows (every statement, `Allow` only).
pub fn allowed_actions(path: &str) -> Vec<String> {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_file(path)).unwrap()).unwrap();
    let mut out = Vec::new();
    for st in doc["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow");
        match &st["Action"] {
            Value::String(a) => out.push(a.clone()),
            Value::Array(list) => out.extend(list.iter().map(|a| a.as_str().unwrap().to_string())),
            other => panic!("unexpected Action {other}"),
        }
    }
    out
}

/// Path of a file in the repository.
pub fn repo_file(rel: &str) -> PathBuf {
    repo().join(rel)
}

/// The report row of one instance.
pub fn row<'a>(report: &'a Value, instance_id: &str) -> &'a Value {
    report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance_id"] == instance_id)
        .unwrap_or_else(|| panic!("{instance_id} not in report"))
}

/// Action names of a row.
pub fn actions(row: &Value) -> Vec<String> {
    row["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// A long-running `arc-onboard` (the daemon), with its own temporary directory for config and state.
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// Its temporary directory (config, state file, logs).
    pub dir: tempfile::TempDir,
}

impl World {
    /// Starts `arc-onboard daemon` with `config` (an `[aws]`... text; the stub's `[azure]` is appended) and
    /// extra daemon flags; the state file is `state.db` in `dir` (reused when `dir` is given).
    pub fn daemon(&self, config: &str, flags: &[&str], dir: Option<tempfile::TempDir>) -> Daemon {
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let config_path = dir.path().join("arc-onboard.toml");
        std::fs::write(&config_path, self.config(config)).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("daemon.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_arc-onboard"));
        cmd.args(["--log-format", "json", "daemon", "--state-file"])
            .arg(dir.path().join("state.db"))
            .args(flags)
            .arg("--config")
            .arg(&config_path);
        isolate(&mut cmd, dir.path());
        let child = cmd
            .env("AWS_ENDPOINT_URL", &self.aws.endpoint)
            .env("ARC_ONBOARD_CLIENT_SECRET", STUB_SECRET)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the daemon");
        Daemon { child, dir }
    }
}

/// `arc-onboard status --output json` on the state file in `dir`.
pub fn status_in(dir: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_arc-onboard"))
        .args(["status", "--output", "json", "--state-file"])
        .arg(dir.join("state.db"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

impl Daemon {
    /// `arc-onboard status --output json` on this daemon's state file.
    pub fn status(&self) -> Value {
        status_in(self.dir.path())
    }

    /// Takes the directory (config, state file) for a restart, leaving an empty one behind.
    pub fn take_dir(&mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Sends a signal (`TERM`, `HUP`, `KILL`) with the shell's builtin `kill` (no procps needed).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -{name} {}", self.child.id())])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Waits for the process to exit (bounded); returns its exit code.
    pub fn wait(&mut self, within: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls `cond` on the status output until it holds (bounded).
    pub fn wait_for(&self, what: &str, within: Duration, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.dir.path().join("state.db").exists() {
                let status = self.status();
                if cond(&status) {
                    return status;
                }
                if std::time::Instant::now() >= deadline {
                    panic!(
                        "timed out waiting for {what}; status: {status:#}\nlog:\n{}",
                        self.log()
                    );
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status of one instance in `status --output json`.
pub fn status_of<'a>(status: &'a Value, instance_id: &str) -> Option<&'a Value> {
    status["instances"]
        .as_array()?
        .iter()
        .find(|i| i["instance_id"] == instance_id)
}

/// A fake `az` in `dir` signed in to the stub's tenant: its `account get-access-token` prints a token the
/// stub minted for the orchestrator's app. Returns the PATH that finds it first, and the token.
pub fn signed_in_az(azure: &AzureStub, dir: &Path) -> (String, String) {
    let minted = azure.control(
        "POST",
        "/_stub/tokens",
        Some(&json!({"lifetime_seconds": 3600})),
    );
    let az_json = json!({
        "accessToken": minted["access_token"],
        "expiresOn": "2099-01-01 00:00:00.000000",
        "expires_on": minted["expires_on"],
        "subscription": "00000000-0000-0000-0000-000000000002",
        "tenant": "00000000-0000-0000-0000-000000000001",
        "tokenType": "Bearer",
    });
    let token = minted["access_token"].as_str().unwrap().to_string();
    (fake_az(dir, &az_json.to_string(), 0), token)
}

/// A fake `az` in a directory of its own: records its arguments, prints `stdout`, exits `code`.
pub fn fake_az(dir: &Path, stdout: &str, code: i32) -> String {
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> '{}/az-args'\ncat <<'EOF'\n{stdout}\nEOF\nexit {code}\n",
        dir.display()
    );
    let path = dir.join("az");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(
        &path,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The script text of a sent command (its `commands` lines joined).
pub fn script_of(command: &Value) -> String {
    command["parameters"]["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which of `needles` occur in which files under `root` (walked without following symbolic links):
/// `(path, index of the needle)` for each hit, so that a failure names the file and the needle's position
/// in the list without printing a secret.
pub fn files_containing(root: &Path, needles: &[String]) -> Vec<(PathBuf, usize)> {
    let mut hits = Vec::new();
    for rel in files_under(root) {
        let path = root.join(rel);
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
        for (i, needle) in needles.iter().enumerate() {
            if !needle.is_empty() && text.contains(needle.as_str()) {
                hits.push((path.clone(), i));
            }
        }
    }
    hits
}

/// Every file under `root` (recursively, not following symbolic links), relative to it.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => pending.push(path),
                Ok(meta) if meta.is_file() => {
                    files.push(path.strip_prefix(root).unwrap().to_path_buf());
                }
                _ => {}
            }
        }
    }
    files.sort();
    files
}
