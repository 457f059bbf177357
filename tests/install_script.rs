//! Runs the rendered Linux install script with bash against fakes on 127.0.0.1: an HTTP server that serves
//! IMDSv2 and a fake agent installer, a forward proxy, and the fake `azcmagent` that installer writes, which
//! records every invocation's argv. No root and no network beyond 127.0.0.1. Every run is a batch's two
//! commands: the key exchange (the real `openssl` makes the key pair), then the install carrying the token
//! sealed to the key it printed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use arc_onboard::install::seal::{self, SealedToken};
use arc_onboard::install::{
    parse_result, render_linux, tags_arg, Delivery, InstallParams, ScriptOutcome, ScriptResult,
    EXIT_AGENT_STATE, EXIT_DOWNLOAD, EXIT_IMDS, EXIT_INSTALL, EXIT_REBOOT_CODE, EXIT_UNSUPPORTED,
};

const INSTANCE_ID: &str = "i-0123456789abcdef0";
const IMDS_TOKEN: &str = "imds-session-token-42";
const ACCESS_TOKEN: &str = "arm.access.token-DO-NOT-PRINT";
const KEY_ID: &str = "5d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

/// The fake `azcmagent` (shared with the AWS emulator's `execute_scripts` mode; its header says what it
/// records and how the `FAKE_*` variables drive it): records argv and environment, answers `show -j` from
/// `$FAKE_AGENT_*`, and from `connect` records the `--config` file's content (`FAKE_RECORD_CONNECT_CONFIG`,
/// set by [`Sandbox::run_script`]) and mode, then exits with `$FAKE_CONNECT_EXIT`.
const FAKE_AGENT: &str = include_str!("../scripts/aws-emulator/fakes/azcmagent.sh");

/// The fake installer served at /azcmagent-linux (shared with the emulator): like Microsoft's, makes its
/// own `mktemp -d $FAKE_INSTALLER_TMP_ROOT/azcmagent.XXXXXXXXXX` before reading its arguments, downloads
/// into `--tempdir`, and writes its result to `--output`; installs the fake agent into `$FAKE_BIN` and
/// exits with `$FAKE_INSTALLER_EXIT`.
fn fake_installer() -> String {
    include_str!("../scripts/aws-emulator/fakes/azcmagent-installer.sh")
        .replace("@FAKE_AGENT@\n", FAKE_AGENT)
}

/// One HTTP request as received.
#[derive(Debug, Clone)]
struct Request {
    line: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn method(&self) -> &str {
        self.line.split(' ').next().unwrap_or_default()
    }
    fn target(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or_default()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a request line and headers (no body: the script sends none).
fn read_head(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let line = line.trim_end().to_owned();
    if line.is_empty() {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Some(Request { line, headers })
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

/// Starts a listener on 127.0.0.1:0 whose connections are handled by `handle`, each on its own thread.
fn listen(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = Arc::new(handle);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handle = Arc::clone(&handle);
            thread::spawn(move || handle(stream));
        }
    });
    port
}

/// The fake IMDSv2 and installer server.
struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    /// `installer`: the body of /azcmagent-linux, or `None` for a 404.
    fn start(installer: Option<String>) -> Server {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        let port = listen(move |mut stream| {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let Some(req) = read_head(&mut BufReader::new(stream.try_clone().unwrap())) else {
                return;
            };
            log.lock().unwrap().push(req.clone());
            match (req.method(), req.target()) {
                ("PUT", "/latest/api/token") => {
                    if req.header("X-aws-ec2-metadata-token-ttl-seconds") == Some("300") {
                        respond(&mut stream, "200 OK", IMDS_TOKEN);
                    } else {
                        respond(&mut stream, "400 Bad Request", "missing ttl");
                    }
                }
                ("GET", "/latest/meta-data/instance-id") => {
                    if req.header("X-aws-ec2-metadata-token") == Some(IMDS_TOKEN) {
                        respond(&mut stream, "200 OK", INSTANCE_ID);
                    } else {
                        respond(&mut stream, "401 Unauthorized", "");
                    }
                }
                ("GET", "/azcmagent-linux") => match &installer {
                    Some(body) => respond(&mut stream, "200 OK", body),
                    None => respond(&mut stream, "404 Not Found", "not here"),
                },
                // curl follows a redirect to ftp:// by default; the script's --proto/--proto-redir must refuse it.
                ("GET", "/redirect-to-ftp") => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 302 Found\r\nLocation: ftp://127.0.0.1:1/azcmagent-linux\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
                _ => respond(&mut stream, "404 Not Found", "unknown"),
            }
        });
        Server { port, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn targets(&self) -> Vec<String> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .map(|r| format!("{} {}", r.method(), r.target()))
            .collect()
    }
}

/// A forward HTTP proxy for absolute-form requests; records each request line.
struct Proxy {
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    fn start() -> Proxy {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&lines);
        let port = listen(move |mut client| {
            client
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let Some(req) = read_head(&mut BufReader::new(client.try_clone().unwrap())) else {
                return;
            };
            log.lock().unwrap().push(req.line.clone());
            let Some(rest) = req.target().strip_prefix("http://") else {
                respond(&mut client, "405 Method Not Allowed", "absolute http only");
                return;
            };
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let Ok(mut upstream) = TcpStream::connect(authority) else {
                respond(&mut client, "502 Bad Gateway", "");
                return;
            };
            let mut head = format!("{} {path} HTTP/1.1\r\n", req.method());
            for (name, value) in &req.headers {
                if !name.eq_ignore_ascii_case("proxy-connection")
                    && !name.eq_ignore_ascii_case("connection")
                {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
            }
            head.push_str("Connection: close\r\n\r\n");
            upstream.write_all(head.as_bytes()).unwrap();
            let _ = std::io::copy(&mut upstream, &mut client);
        });
        Proxy { port, lines }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// The script's parameters, owned.
struct Params {
    subscription_id: String,
    resource_group: String,
    location: String,
    tenant_id: String,
    cloud: String,
    correlation_id: String,
    tags: BTreeMap<String, String>,
    access_token: String,
    proxy_url: Option<String>,
    installer_url: String,
    installer_sha256: Option<String>,
    gateway_id: Option<String>,
    private_link_scope: Option<String>,
    automatic_upgrade: bool,
    reconnect: bool,
}

impl Params {
    fn new(server: &Server) -> Params {
        Params {
            subscription_id: "00000000-1111-2222-3333-444444444444".into(),
            resource_group: "aws_123456789012".into(),
            location: "westeurope".into(),
            tenant_id: "55555555-6666-7777-8888-999999999999".into(),
            cloud: "AzureCloud".into(),
            correlation_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
            tags: BTreeMap::from([
                ("AwsAccountId".into(), "123456789012".into()),
                ("AwsRegion".into(), "eu-west-1".into()),
                ("Env".into(), "prod".into()),
            ]),
            access_token: ACCESS_TOKEN.into(),
            proxy_url: None,
            installer_url: server.url("/azcmagent-linux"),
            installer_sha256: None,
            gateway_id: None,
            private_link_scope: None,
            automatic_upgrade: false,
            reconnect: false,
        }
    }

    fn install<'a>(&'a self, delivery: Delivery<'a>) -> InstallParams<'a> {
        InstallParams {
            subscription_id: &self.subscription_id,
            resource_group: &self.resource_group,
            location: &self.location,
            tenant_id: &self.tenant_id,
            cloud: &self.cloud,
            correlation_id: &self.correlation_id,
            tags: &self.tags,
            delivery,
            proxy_url: self.proxy_url.as_deref(),
            installer_url: &self.installer_url,
            installer_sha256: self.installer_sha256.as_deref(),
            msi_url: "",
            msi_sha256: None,
            gateway_id: self.gateway_id.as_deref(),
            private_link_scope: self.private_link_scope.as_deref(),
            automatic_upgrade: self.automatic_upgrade,
            reconnect: self.reconnect,
        }
    }

    /// The argv `azcmagent connect` must get, up to the `--config` file's path (random, checked apart).
    fn expected_connect(&self) -> Vec<String> {
        let mut argv: Vec<String> = [
            "connect",
            "--subscription-id",
            &self.subscription_id,
            "--resource-group",
            &self.resource_group,
            "--location",
            &self.location,
            "--tenant-id",
            &self.tenant_id,
            "--cloud",
            &self.cloud,
            "--correlation-id",
            &self.correlation_id,
        ]
        .map(String::from)
        .to_vec();
        if let Some(id) = &self.gateway_id {
            argv.extend(["--gateway-id".to_owned(), id.clone()]);
        }
        if let Some(id) = &self.private_link_scope {
            argv.extend(["--private-link-scope".to_owned(), id.clone()]);
        }
        if self.automatic_upgrade {
            argv.push("--enable-automatic-upgrade".to_owned());
        }
        // The script appends the per-instance ownership tag to the batch's tags.
        let tags = format!("{},AwsInstanceId={INSTANCE_ID}", tags_arg(&self.tags));
        argv.extend(["--tags".to_owned(), tags]);
        argv.extend(["--resource-name", INSTANCE_ID, "--config"].map(String::from));
        argv
    }

    /// The Arc resource id of this instance in these parameters' group.
    fn resource_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.HybridCompute/machines/{INSTANCE_ID}",
            self.subscription_id, self.resource_group
        )
    }
}

/// A sandbox: a bin dir on PATH for the fake agent, a state dir for recordings, a TMPDIR to check cleanup,
/// a log dir for the logs the script keeps.
struct Sandbox {
    dir: tempfile::TempDir,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    result: Option<ScriptResult>,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        for sub in [
            "bin",
            "state",
            "tmp",
            "systemd",
            "installer-tmp-root",
            "keys",
        ] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        Sandbox { dir }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// Puts the fake agent on PATH before the script runs (an agent installed earlier).
    fn preinstall_agent(&self) {
        let agent = self.path("bin").join("azcmagent");
        fs::write(&agent, FAKE_AGENT).unwrap();
        let status = Command::new("chmod")
            .arg("+x")
            .arg(&agent)
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Runs a batch's two commands as arc-onboard sends them: the key exchange, then (when it printed a
    /// key) the install with `params.access_token` sealed to that key. Returns the run arc-onboard reads
    /// the result of: the install's, or the exchange's when the exchange settled the instance. When the
    /// install runs, the fakes' recordings of the exchange are moved aside (`exchange-agent-calls`), so
    /// those left are the install's. Checks, besides what [`Sandbox::run_script`] checks, that the install leaves no private
    /// key behind.
    fn run(&self, params: &Params, imds: &str, env: &[(&str, &str)]) -> Run {
        let exchange = self.exchange(params, imds, env);
        let Some(sealed) = exchange.1 else {
            return exchange.0;
        };
        let text = render_linux(&params.install(Delivery::Sealed(&sealed)));
        assert!(
            !text.contains(&params.access_token),
            "the install command carries the token in plain text"
        );
        let run = self.run_script(&text, params, imds, env);
        let keys: Vec<_> = fs::read_dir(self.path("keys"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(keys.is_empty(), "the install left keys behind: {keys:?}");
        run
    }

    /// Runs the key exchange; with the key it printed, seals the token to it and moves the fakes'
    /// recordings of the exchange aside (an exchange that settled the instance keeps them).
    fn exchange(
        &self,
        params: &Params,
        imds: &str,
        env: &[(&str, &str)],
    ) -> (Run, Option<SealedToken>) {
        let script = render_linux(&params.install(Delivery::KeyExchange { key_id: KEY_ID }));
        let run = self.run_script(&script, params, imds, env);
        if run.result.is_some() {
            // Settled by the exchange: its recordings are the ones arc-onboard's outcome rests on.
            return (run, None);
        }
        for entry in fs::read_dir(self.path("state")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("agent-") {
                fs::rename(&path, self.path("state").join(format!("exchange-{name}"))).unwrap();
            }
        }
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        let key = seal::parse_key(&run.stdout, INSTANCE_ID, KEY_ID)
            .unwrap_or_else(|e| panic!("{e}:\n{}\n{}", run.stdout, run.stderr));
        let config = seal::connect_config(&params.access_token);
        let sealed = seal::seal(config.as_bytes(), KEY_ID, &[key]).unwrap();
        (run, Some(sealed))
    }

    /// Runs one rendered script with bash (umask 022, as SSM's agent has); `imds` is the IMDS endpoint.
    /// Checks what every run must leave: no token anywhere it could be read, no script file, no
    /// temporary directory, the result line (or the exchange's key line) last.
    fn run_script(&self, text: &str, params: &Params, imds: &str, env: &[(&str, &str)]) -> Run {
        let script = self.path("_script.sh");
        fs::write(&script, text).unwrap();
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let (out_path, err_path) = (self.path("stdout"), self.path("stderr"));
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg("umask 0022 && exec bash \"$0\"")
            .arg(&script)
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env("FAKE_BIN", self.path("bin"))
            .env("FAKE_STATE", self.path("state"))
            .env("FAKE_RECORD_CONNECT_CONFIG", "1")
            .env("TMPDIR", self.path("tmp"))
            .env("ARC_ONBOARD_IMDS", imds)
            .env("ARC_ONBOARD_SYSTEMD_DIR", self.path("systemd"))
            .env("ARC_ONBOARD_LOG_DIR", self.path("logs"))
            .env("ARC_ONBOARD_STATE_DIR", self.path("arc-state"))
            .env(
                "ARC_ONBOARD_INSTALLER_TMP_ROOT",
                self.path("installer-tmp-root"),
            )
            .env("FAKE_INSTALLER_TMP_ROOT", self.path("installer-tmp-root"))
            .env("ARC_ONBOARD_KEY_DIR", self.path("keys"))
            .stdin(Stdio::null())
            .stdout(File::create(&out_path).unwrap())
            .stderr(File::create(&err_path).unwrap());
        for var in [
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
            "no_proxy",
            "NO_PROXY",
        ] {
            cmd.env_remove(var);
        }
        for (k, _) in std::env::vars() {
            if k.starts_with("FAKE_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let installer_tmp_before = entries(&self.path("installer-tmp-root"));
        let mut child = cmd.spawn().expect("run bash");
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the install script did not finish in time");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stdout = fs::read_to_string(&out_path).unwrap();
        let stderr = fs::read_to_string(&err_path).unwrap();
        assert!(
            !stdout.contains(&params.access_token) && !stderr.contains(&params.access_token),
            "the access token was printed:\n{stdout}\n{stderr}"
        );
        // Every recording of the installer and the agent (argv, environment), every kept log and key file:
        // no token.
        for dir in [self.path("state"), self.path("logs"), self.path("keys")] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.file_name().unwrap() == "connect-config" {
                    continue;
                }
                let bytes = fs::read(&path).unwrap();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(&params.access_token),
                    "the access token is in {}",
                    path.display()
                );
            }
        }
        assert!(
            !script.exists(),
            "the script (which holds the sealed token) was left in SSM's directory"
        );
        assert!(
            fs::read_dir(self.path("tmp")).unwrap().next().is_none(),
            "the temporary directory was left behind"
        );
        let left = entries(&self.path("installer-tmp-root"));
        assert_eq!(
            left, installer_tmp_before,
            "the installer's own temporary directory was left behind"
        );
        let last = stdout.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("ARC_ONBOARD_RESULT {") || last.starts_with("ARC_ONBOARD_KEY {"),
            "the result line is not last:\n{stdout}\n{stderr}"
        );
        Run {
            code: status.code().expect("exit code"),
            result: parse_result(&stdout),
            stdout,
            stderr,
        }
    }

    /// Every recorded `azcmagent` invocation, in order.
    fn agent_calls(&self) -> Vec<Vec<String>> {
        read_calls(&self.path("state").join("agent-calls"))
    }

    /// The installer's argv, if it ran.
    fn installer_argv(&self) -> Option<Vec<String>> {
        let path = self.path("state").join("installer-argv");
        path.exists().then(|| read_calls(&path).concat())
    }

    /// The installer's argv without the `--output FILE --tempdir DIR` the script always passes last, which
    /// are checked to lie in the script's private temporary directory.
    fn installer_flags(&self) -> Vec<String> {
        let mut argv = self.installer_argv().expect("the installer ran");
        assert!(argv.len() >= 4, "{argv:?}");
        let tail = argv.split_off(argv.len() - 4);
        let tmp = self.path("tmp");
        let tmp = tmp.to_str().unwrap();
        assert!(
            tail[0] == "--output"
                && tail[1].starts_with(tmp)
                && tail[1].ends_with("/installer-result.json")
                && tail[2] == "--tempdir"
                && tail[3].starts_with(tmp)
                && tail[3].ends_with("/installer-tmp"),
            "{tail:?}"
        );
        argv
    }

    /// A recording of the fakes, if made.
    fn state(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.path("state").join(name)).ok()
    }

    /// The `connect` call, with its `--config` path checked (in the private temp dir) and cut off.
    fn connect_call(&self) -> Vec<String> {
        let calls = self.agent_calls();
        let mut call = calls
            .into_iter()
            .find(|c| c.first().map(String::as_str) == Some("connect"))
            .expect("azcmagent connect was called");
        let config = call.pop().unwrap();
        assert!(
            config.starts_with(self.path("tmp").to_str().unwrap())
                && config.ends_with("/connect.json"),
            "{config}"
        );
        call
    }
}

/// The names in a directory, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Reads recorded invocations: for each, `argc NUL arg1 NUL ... argN NUL`.
fn read_calls(path: &Path) -> Vec<Vec<String>> {
    let Ok(bytes) = fs::read(path) else {
        return Vec::new();
    };
    let mut fields = bytes
        .split(|b| *b == 0)
        .map(|f| String::from_utf8(f.to_vec()).unwrap());
    let mut calls = Vec::new();
    while let Some(argc) = fields.next().filter(|f| !f.is_empty()) {
        let argc: usize = argc.parse().unwrap();
        let call: Vec<String> = fields.by_ref().take(argc).collect();
        assert_eq!(call.len(), argc, "truncated record in {}", path.display());
        calls.push(call);
    }
    calls
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn assert_result(run: &Run, outcome: ScriptOutcome, exit_code: i32, step: &str, code: &str) {
    let result = run
        .result
        .as_ref()
        .unwrap_or_else(|| panic!("no result line:\n{}\n{}", run.stdout, run.stderr));
    assert_eq!(
        (
            result.outcome,
            result.exit_code,
            result.step.as_str(),
            result.code.as_str()
        ),
        (outcome, exit_code, step, code),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(run.code, exit_code, "{}\n{}", run.stdout, run.stderr);
}

const IMDS_ONLY: [&str; 2] = ["PUT /latest/api/token", "GET /latest/meta-data/instance-id"];

#[test]
fn public_mode_installs_and_connects_with_the_token_in_a_private_file() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    let params = Params::new(&server);
    let run = sandbox.run(&params, &server.url(""), &[]);

    assert_result(&run, ScriptOutcome::Connected, 0, "connect", "connected");
    assert!(run.result.as_ref().unwrap().message.contains(INSTANCE_ID));
    assert_eq!(sandbox.installer_flags(), Vec::<String>::new());
    // Public mode with no proxy.url set: only asked, nothing cleared.
    assert_eq!(
        sandbox.agent_calls()[0],
        strings(&["config", "get", "proxy.url"])
    );
    assert_eq!(sandbox.connect_call(), params.expected_connect());
    // The token reached the agent only through the --config file, which was private.
    let config: serde_json::Value =
        serde_json::from_str(&sandbox.state("connect-config").unwrap()).unwrap();
    assert_eq!(config, serde_json::json!({ "access-token": ACCESS_TOKEN }));
    assert_eq!(sandbox.state("connect-config-mode").unwrap().trim(), "600");
    assert_eq!(
        server.targets(),
        // The key exchange reads the instance id, then the install does.
        [
            IMDS_ONLY[0],
            IMDS_ONLY[1],
            IMDS_ONLY[0],
            IMDS_ONLY[1],
            "GET /azcmagent-linux"
        ]
    );
    // The installer and package manager run with the caller's umask, not a private one.
    assert_eq!(sandbox.state("installer-umask").unwrap().trim(), "0022");
    // Short output (ListCommandInvocations keeps 2,500 characters); the full logs stay on the instance.
    assert!(
        run.stdout.len() < 1_000,
        "{} characters:\n{}",
        run.stdout.len(),
        run.stdout
    );
    let kept: Vec<String> = fs::read_dir(sandbox.path("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for log in ["installer.log", "connect.log"] {
        assert!(kept.contains(&log.to_owned()), "{kept:?}");
    }
    let mode = fs::metadata(sandbox.path("logs")).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
}

#[test]
fn a_token_with_json_and_shell_characters_survives_the_config_file() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    let mut params = Params::new(&server);
    params.access_token = format!("{ACCESS_TOKEN}\"\\'$(id)`id`");
    let run = sandbox.run(&params, &server.url(""), &[]);

    assert_result(&run, ScriptOutcome::Connected, 0, "connect", "connected");
    let config: serde_json::Value =
        serde_json::from_str(&sandbox.state("connect-config").unwrap()).unwrap();
    assert_eq!(config["access-token"], params.access_token.as_str());
}

#[test]
fn proxy_mode_downloads_through_the_proxy_but_not_imds() {
    let server = Server::start(Some(fake_installer()));
    let proxy = Proxy::start();
    let sandbox = Sandbox::new();
    let mut params = Params::new(&server);
    params.proxy_url = Some(proxy.url());
    let run = sandbox.run(&params, &server.url(""), &[]);

    assert_result(&run, ScriptOutcome::Connected, 0, "connect", "connected");
    assert_eq!(
        proxy.lines(),
        [format!(
            "GET http://127.0.0.1:{}/azcmagent-linux HTTP/1.1",
            server.port
        )]
    );
    let targets = server.targets();
    assert!(targets.contains(&IMDS_ONLY[0].to_owned()));
    assert!(targets.contains(&IMDS_ONLY[1].to_owned()));
    assert_eq!(
        sandbox.installer_flags(),
        strings(&["--proxy", &proxy.url()])
    );
    assert_eq!(
        sandbox.agent_calls()[0],
        strings(&["config", "set", "proxy.url", &proxy.url()])
    );
    assert_eq!(sandbox.connect_call(), params.expected_connect());
    assert_eq!(sandbox.state("proxy.url"), Some(proxy.url()));
}

#[test]
fn public_mode_clears_only_a_proxy_url_arc_onboard_set() {
    let server = Server::start(Some(fake_installer()));
    let proxy = Proxy::start();
    // A proxy run records the proxy.url it set (root only)...
    let sandbox = Sandbox::new();
    let mut params = Params::new(&server);
    params.proxy_url = Some(proxy.url());
    let run = sandbox.run(&params, &server.url(""), &[]);
    assert_result(&run, ScriptOutcome::Connected, 0, "connect", "connected");
    let marker = sandbox.path("arc-state").join("proxy.url");
    assert_eq!(fs::read_to_string(&marker).unwrap(), proxy.url());
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(p).unwrap().permissions()) & 0o777
    };
    assert_eq!(
        (mode(&sandbox.path("arc-state")), mode(&marker)),
        (0o700, 0o600)
    );

    // ...so a later public run clears exactly that one.
    let _ = fs::remove_file(sandbox.path("state").join("agent-calls"));
    params.proxy_url = None;
    let run = sandbox.run(&params, &server.url(""), &[]);
    assert_result(&run, ScriptOutcome::Connected, 0, "connect", "connected");
    // (The agent from the first run is asked first whether it is connected.)
    assert_eq!(
        sandbox.agent_calls()[..3],
        [
            strings(&["show", "-j"]),
            strings(&["config", "get", "proxy.url"]),
            strings(&["config", "clear", "proxy.url"])
        ]
    );
    assert_eq!(sandbox.state("proxy.url"), None);
    assert!(!marker.exists(), "the record goes with the proxy.url");
}

#[test]
fn public_mode_leaves_and_reports_a_proxy_url_an_administrator_set() {
    let server = Server::start(Some(fake_installer()));
    let params = Params::new(&server);
    // No record at all, or a record of another URL (the administrator changed it since).
    for recorded in [None, Some("http://arc-onboard-proxy.internal:3128")] {
        let sandbox = Sandbox::new();
        fs::write(
            sandbox.path("state").join("proxy.url"),
            "http://admin-proxy.internal:8080",
        )
        .unwrap();
        if let Some(url) = recorded {
            fs::create_dir(sandbox.path("arc-state")).unwrap();
            fs::write(sandbox.path("arc-state").join("proxy.url"), url).unwrap();
        }
        let run = sandbox.run(&params, &server.url(""), &[]);

        assert_result(&run, ScriptOutcome::Connected, 0, "connect", "connected");
        assert!(
            !sandbox
                .agent_calls()
                .iter()
                .any(|c| c[..2] == strings(&["config", "clear"])),
            "{:?}",
            sandbox.agent_calls()
        );
        assert_eq!(
            sandbox.state("proxy.url").as_deref(),
            Some("http://admin-proxy.internal:8080")
        );
        let message = &run.result.as_ref().unwrap().message;
        assert!(
            message.contains("keeps proxy.url http://admin-proxy.internal:8080")
                && message.contains("arc-onboard did not set"),
            "{message}"
        );
    }
}

#[test]
fn agent_connected_to_our_resource_is_left_alone() {
    let server = Server::start(Some(fake_installer()));
    let params = Params::new(&server);
    // The real agent lists its services, each with its own "status", after the top-level one; a greedy
    // pattern took the last "status" and called a Connected agent "stopped". Only top-level members count.
    let nested = r#"
  "services": [ {"displayName": "GC Service", "serviceName": "gcad", "status": "stopped"},
                {"displayName": "Agent Service", "serviceName": "himds", "status": "running"} ],
  "extension": {"resourceName": "other", "resourceGroup": "other-rg", "status": "Disconnected", "x": [{"status": "deep"}]},
  "note": "a \"status\": \"quoted\" text, with } and ] inside","#;
    let prefix = "WARN a line the agent printed first: \"status\": \"x\"\n";
    for (prefix, nested) in [("", ""), (prefix, nested)] {
        let sandbox = Sandbox::new();
        sandbox.preinstall_agent();
        // Azure compares names case-insensitively; so does the script.
        let env = [
            ("FAKE_AGENT_STATUS", "Connected"),
            (
                "FAKE_AGENT_SUBSCRIPTION",
                &params.subscription_id.to_uppercase(),
            ),
            ("FAKE_AGENT_RESOURCE_GROUP", "AWS_123456789012"),
            ("FAKE_AGENT_RESOURCE_NAME", INSTANCE_ID),
            ("FAKE_SHOW_PREFIX", prefix),
            ("FAKE_SHOW_NESTED", nested),
        ];
        let run = sandbox.run(&params, &server.url(""), &env);

        assert_result(
            &run,
            ScriptOutcome::AlreadyConnected,
            0,
            "check",
            "already-connected",
        );
        assert_eq!(sandbox.agent_calls(), vec![strings(&["show", "-j"])]);
        assert_eq!(sandbox.installer_argv(), None);
        assert!(run
            .result
            .unwrap()
            .resource_id
            .ends_with(&format!("/machines/{INSTANCE_ID}")));
    }
    assert_eq!(
        server.targets(),
        [IMDS_ONLY, IMDS_ONLY].concat(),
        "IMDS only, no download"
    );
}

#[test]
fn agent_connected_to_another_resource_is_reported_and_left_alone() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    sandbox.preinstall_agent();
    let params = Params::new(&server);
    let cases = [
        // A cloned image: same subscription and group, another machine's name.
        (params.resource_group.as_str(), "i-0aaaaaaaaaaaaaaaa"),
        // Another tool (Defender for Cloud) onboarded it into its own group.
        ("defender-rg", INSTANCE_ID),
    ];
    for (rg, name) in cases {
        let _ = fs::remove_file(sandbox.path("state").join("agent-calls"));
        let env = [
            ("FAKE_AGENT_STATUS", "Connected"),
            ("FAKE_AGENT_SUBSCRIPTION", params.subscription_id.as_str()),
            ("FAKE_AGENT_RESOURCE_GROUP", rg),
            ("FAKE_AGENT_RESOURCE_NAME", name),
        ];
        let run = sandbox.run(&params, &server.url(""), &env);

        assert_result(
            &run,
            ScriptOutcome::ConnectedElsewhere,
            0,
            "check",
            "connected-elsewhere",
        );
        let result = run.result.unwrap();
        assert_eq!(
            result.resource_id,
            format!(
                "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.HybridCompute/machines/{name}",
                params.subscription_id
            )
        );
        assert_eq!(
            sandbox.agent_calls(),
            vec![strings(&["show", "-j"])],
            "never disconnected"
        );
        assert_eq!(sandbox.installer_argv(), None);
    }
}

#[test]
fn disconnected_or_expired_agent_fails_with_a_reason_and_is_not_touched() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    sandbox.preinstall_agent();
    let params = Params::new(&server);
    for (status, code) in [
        ("Disconnected", "agent-disconnected"),
        ("Expired", "agent-expired"),
    ] {
        let _ = fs::remove_file(sandbox.path("state").join("agent-calls"));
        let env = [
            ("FAKE_AGENT_STATUS", status),
            ("FAKE_AGENT_SUBSCRIPTION", params.subscription_id.as_str()),
            ("FAKE_AGENT_RESOURCE_GROUP", params.resource_group.as_str()),
            ("FAKE_AGENT_RESOURCE_NAME", INSTANCE_ID),
        ];
        let run = sandbox.run(&params, &server.url(""), &env);

        assert_result(&run, ScriptOutcome::Failed, EXIT_AGENT_STATE, "check", code);
        let result = run.result.unwrap();
        assert!(result.message.contains(status) && result.message.contains("azcmagent reconnect"));
        assert_eq!(result.resource_id, params.resource_id());
        assert_eq!(sandbox.agent_calls(), vec![strings(&["show", "-j"])]);
    }
}

/// The fake agent's `show -j` answer: status, subscription, resource group, resource name.
fn agent_env<'a>(
    status: &'a str,
    sub: &'a str,
    rg: &'a str,
    name: &'a str,
) -> [(&'a str, &'a str); 4] {
    [
        ("FAKE_AGENT_STATUS", status),
        ("FAKE_AGENT_SUBSCRIPTION", sub),
        ("FAKE_AGENT_RESOURCE_GROUP", rg),
        ("FAKE_AGENT_RESOURCE_NAME", name),
    ]
}

/// The agent calls of a reconnect: `show -j`, then `disconnect --force-local-only`, then (after the
/// installer ran again) `connect` under the instance's own name.
fn assert_reconnected(sandbox: &Sandbox, params: &Params) {
    let calls = sandbox.agent_calls();
    assert_eq!(calls[0], strings(&["show", "-j"]));
    assert_eq!(calls[1], strings(&["disconnect", "--force-local-only"]));
    let connect = calls
        .iter()
        .position(|c| c[0] == "connect")
        .expect("connect after the disconnect");
    assert!(connect > 1, "{calls:?}");
    assert_eq!(
        calls.iter().filter(|c| c[0] == "disconnect").count(),
        1,
        "{calls:?}"
    );
    assert_eq!(sandbox.connect_call(), params.expected_connect());
    assert!(
        sandbox.installer_argv().is_some(),
        "installed as a fresh install"
    );
}

#[test]
fn with_the_reconnect_switch_an_expired_disconnected_or_cloned_agent_of_our_group_is_reconnected() {
    let server = Server::start(Some(fake_installer()));
    let mut params = Params::new(&server);
    params.reconnect = true;
    let clone_of = "i-0fedcba9876543210";
    for (status, name) in [
        ("Expired", INSTANCE_ID),
        ("Disconnected", INSTANCE_ID),
        ("Connected", clone_of),
    ] {
        let sandbox = Sandbox::new();
        sandbox.preinstall_agent();
        // Azure spells the group as it likes; the comparison ignores case.
        let group = params.resource_group.to_uppercase();
        let env = agent_env(status, &params.subscription_id, &group, name);
        let run = sandbox.run(&params, &server.url(""), &env);

        assert_result(&run, ScriptOutcome::Connected, 0, "connect", "reconnected");
        let result = run.result.as_ref().unwrap();
        assert!(
            result
                .message
                .contains(&format!("reconnected as {INSTANCE_ID}"))
                && result.message.contains(name),
            "{status}: {}",
            result.message
        );
        assert_reconnected(&sandbox, &params);
    }
}

#[test]
fn the_reconnect_switch_never_touches_an_agent_of_another_group_or_subscription() {
    let server = Server::start(Some(fake_installer()));
    let mut params = Params::new(&server);
    params.reconnect = true;
    let other_sub = "99999999-1111-2222-3333-444444444444";
    let cases = [
        // (status, subscription, group, name, outcome, exit, code)
        (
            "Connected",
            params.subscription_id.as_str(),
            "other-rg",
            INSTANCE_ID,
            ScriptOutcome::ConnectedElsewhere,
            0,
            "connected-elsewhere",
        ),
        (
            "Connected",
            other_sub,
            params.resource_group.as_str(),
            "i-0fedcba9876543210",
            ScriptOutcome::ConnectedElsewhere,
            0,
            "connected-elsewhere",
        ),
        (
            "Expired",
            other_sub,
            params.resource_group.as_str(),
            INSTANCE_ID,
            ScriptOutcome::Failed,
            EXIT_AGENT_STATE,
            "agent-expired",
        ),
        (
            "Disconnected",
            params.subscription_id.as_str(),
            "other-rg",
            INSTANCE_ID,
            ScriptOutcome::Failed,
            EXIT_AGENT_STATE,
            "agent-disconnected",
        ),
    ];
    for (status, sub, rg, name, outcome, exit, code) in cases {
        let sandbox = Sandbox::new();
        sandbox.preinstall_agent();
        let run = sandbox.run(&params, &server.url(""), &agent_env(status, sub, rg, name));
        assert_result(&run, outcome, exit, "check", code);
        assert_eq!(
            sandbox.agent_calls(),
            vec![strings(&["show", "-j"])],
            "{status} in {sub}/{rg}: never disconnected"
        );
    }
}

#[test]
fn an_installed_agent_that_was_never_connected_is_connected() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    sandbox.preinstall_agent();
    let params = Params::new(&server);
    let run = sandbox.run(
        &params,
        &server.url(""),
        &[("FAKE_AGENT_STATUS", "Disconnected")],
    );

    assert_result(&run, ScriptOutcome::Connected, 0, "connect", "connected");
    assert_eq!(sandbox.agent_calls()[0], strings(&["show", "-j"]));
    assert_eq!(sandbox.connect_call(), params.expected_connect());
}

#[test]
fn connect_exit_67_is_checked_against_the_resource_it_names() {
    let server = Server::start(Some(fake_installer()));
    let params = Params::new(&server);
    let ours = params.resource_group.clone();
    let cases: [(&str, &str, ScriptOutcome, i32, &str, &str); 4] = [
        (
            "Connected",
            ours.as_str(),
            ScriptOutcome::AlreadyConnected,
            0,
            "check",
            "already-connected",
        ),
        (
            "Connected",
            "other-rg",
            ScriptOutcome::ConnectedElsewhere,
            0,
            "check",
            "connected-elsewhere",
        ),
        (
            "Expired",
            ours.as_str(),
            ScriptOutcome::Failed,
            EXIT_AGENT_STATE,
            "check",
            "agent-expired",
        ),
        ("", "", ScriptOutcome::Failed, 67, "connect", "AZCM0067"),
    ];
    for (status, rg, outcome, exit, step, code) in cases {
        let sandbox = Sandbox::new();
        let name = if rg.is_empty() { "" } else { INSTANCE_ID };
        let env = [
            ("FAKE_CONNECT_EXIT", "67"),
            ("FAKE_AGENT_STATUS_AFTER", status),
            (
                "FAKE_AGENT_SUBSCRIPTION_AFTER",
                params.subscription_id.as_str(),
            ),
            ("FAKE_AGENT_RESOURCE_GROUP_AFTER", rg),
            ("FAKE_AGENT_RESOURCE_NAME_AFTER", name),
        ];
        let run = sandbox.run(&params, &server.url(""), &env);
        assert_result(&run, outcome, exit, step, code);
        assert_eq!(
            sandbox.agent_calls().last().unwrap(),
            &strings(&["show", "-j"])
        );
    }
}

#[test]
fn connect_failure_exits_with_the_agent_code_and_its_azcm_detail() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    let params = Params::new(&server);
    let run = sandbox.run(&params, &server.url(""), &[("FAKE_CONNECT_EXIT", "41")]);

    assert_result(&run, ScriptOutcome::Failed, 41, "connect", "AZCM0041");
    let message = &run.result.as_ref().unwrap().message;
    assert!(
        message.contains("41") && message.contains("AZCM0041"),
        "{message}"
    );
}

#[test]
fn agent_exit_codes_equal_to_the_scripts_own_codes_keep_the_connect_step() {
    let server = Server::start(Some(fake_installer()));
    // 4 is the script's "download" code and the agent's "cannot open its log file".
    for code in [EXIT_DOWNLOAD, EXIT_INSTALL, EXIT_UNSUPPORTED] {
        let sandbox = Sandbox::new();
        let params = Params::new(&server);
        let run = sandbox.run(
            &params,
            &server.url(""),
            &[("FAKE_CONNECT_EXIT", &code.to_string())],
        );
        assert_result(
            &run,
            ScriptOutcome::Failed,
            code,
            "connect",
            &format!("exit-{code}"),
        );
    }
}

#[test]
fn installer_download_404_fails_in_the_download_step() {
    let server = Server::start(None);
    let sandbox = Sandbox::new();
    let params = Params::new(&server);
    let run = sandbox.run(&params, &server.url(""), &[]);

    assert_result(
        &run,
        ScriptOutcome::Failed,
        EXIT_DOWNLOAD,
        "download",
        "download-failed",
    );
    assert_eq!(sandbox.installer_argv(), None);
    assert!(sandbox.agent_calls().is_empty());
}

#[test]
fn a_redirect_to_another_protocol_is_refused() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    let mut params = Params::new(&server);
    params.installer_url = server.url("/redirect-to-ftp");
    let run = sandbox.run(&params, &server.url(""), &[]);

    assert_result(
        &run,
        ScriptOutcome::Failed,
        EXIT_DOWNLOAD,
        "download",
        "download-failed",
    );
    assert_eq!(sandbox.installer_argv(), None);
    // Refused by protocol, not merely unreachable (without the protocol flags curl would try the FTP server).
    assert!(
        run.stdout
            .contains("Protocol \"ftp\" not supported or disabled"),
        "{}",
        run.stdout
    );
}

#[test]
fn an_installer_pinned_by_sha256_runs_only_when_it_matches() {
    let server = Server::start(Some(fake_installer()));
    let good = sha256_hex(fake_installer().as_bytes());

    let sandbox = Sandbox::new();
    let mut params = Params::new(&server);
    params.installer_sha256 = Some(good.to_uppercase());
    let run = sandbox.run(&params, &server.url(""), &[]);
    assert_result(&run, ScriptOutcome::Connected, 0, "connect", "connected");

    let sandbox = Sandbox::new();
    params.installer_sha256 = Some("0".repeat(64));
    let run = sandbox.run(&params, &server.url(""), &[]);
    assert_result(
        &run,
        ScriptOutcome::Failed,
        EXIT_DOWNLOAD,
        "download",
        "checksum-mismatch",
    );
    assert!(run.result.unwrap().message.contains(&good));
    assert_eq!(sandbox.installer_argv(), None, "the installer did not run");
    assert!(sandbox.agent_calls().is_empty());
}

#[test]
fn failing_installer_reports_its_own_exit_code_in_the_install_step() {
    let server = Server::start(Some(fake_installer()));
    for code in [1, 130] {
        let sandbox = Sandbox::new();
        let params = Params::new(&server);
        let run = sandbox.run(
            &params,
            &server.url(""),
            &[("FAKE_INSTALLER_EXIT", &code.to_string())],
        );
        assert_result(
            &run,
            ScriptOutcome::Failed,
            code,
            "install",
            "installer-failed",
        );
        assert!(
            run.stdout.contains("fake installer: done"),
            "installer log shown"
        );
        assert!(sandbox.agent_calls().is_empty());
    }
}

#[test]
fn unreachable_imds_fails_in_the_imds_step() {
    let server = Server::start(Some(fake_installer()));
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let sandbox = Sandbox::new();
    let params = Params::new(&server);
    let run = sandbox.run(&params, &closed_url, &[]);

    assert_result(
        &run,
        ScriptOutcome::Failed,
        EXIT_IMDS,
        "imds",
        "imds-unavailable",
    );
    assert!(server.targets().is_empty(), "nothing downloaded");
}

#[test]
fn missing_systemd_fails_in_the_platform_step() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    let params = Params::new(&server);
    let missing = sandbox.path("no-systemd");
    let run = sandbox.run(
        &params,
        &server.url(""),
        &[("ARC_ONBOARD_SYSTEMD_DIR", missing.to_str().unwrap())],
    );

    assert_result(
        &run,
        ScriptOutcome::Failed,
        EXIT_UNSUPPORTED,
        "platform",
        "unsupported-platform",
    );
    assert!(server.targets().is_empty());
}

#[test]
fn tags_with_spaces_quotes_and_equals_reach_the_agent_as_azcmagent_documents() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    let mut params = Params::new(&server);
    params
        .tags
        .insert("Owner".into(), "Shared Infrastructure Services".into());
    params.tags.insert("Note".into(), "say \"hi\" a=b".into());
    params.tags.insert("Cost Center".into(), "42".into());
    let run = sandbox.run(&params, &server.url(""), &[]);

    assert_result(&run, ScriptOutcome::Connected, 0, "connect", "connected");
    let call = sandbox.connect_call();
    let tags = &call[call.iter().position(|a| a == "--tags").unwrap() + 1];
    assert_eq!(
        tags,
        &format!("AwsAccountId=123456789012,AwsRegion=eu-west-1,'Cost Center'=42,Env=prod,Note='say \"hi\" a=b',Owner='Shared Infrastructure Services',AwsInstanceId={INSTANCE_ID}")
    );
}

#[test]
fn hostile_values_reach_the_agent_verbatim() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    let pwned: &Path = &sandbox.path("pwned");
    let pwned = pwned.display();
    let mut params = Params::new(&server);
    params.resource_group = format!(
        "rg 'single' \"double\" $(touch {pwned}) `touch {pwned}`; touch {pwned}\nsecond line"
    );
    params.correlation_id = format!("'; touch {pwned}; echo '");
    params.tags.insert(
        "Team".into(),
        format!("its \"ours\" $(touch {pwned}) \\ $HOME"),
    );
    params
        .tags
        .insert("Note".into(), "line1\nline2 ; `id`".into());
    params.access_token = format!("{ACCESS_TOKEN}'$(touch {pwned})");
    params.gateway_id = Some(format!(
        "/subscriptions/x/resourceGroups/'$(touch {pwned})'/providers/Microsoft.HybridCompute/gateways/`id` \"q\"\nnext"
    ));
    params.private_link_scope = Some(format!("-- --config ; touch {pwned} | $HOME"));
    let run = sandbox.run(&params, &server.url(""), &[]);

    assert_result(&run, ScriptOutcome::Connected, 0, "connect", "connected");
    assert_eq!(sandbox.connect_call(), params.expected_connect());
    let config: serde_json::Value =
        serde_json::from_str(&sandbox.state("connect-config").unwrap()).unwrap();
    assert_eq!(config["access-token"], params.access_token.as_str());
    assert!(!sandbox.path("pwned").exists(), "a value ran a command");
}

const GATEWAY: &str = "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/net/providers/Microsoft.HybridCompute/gateways/gw1";
const SCOPE: &str = "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/net/providers/Microsoft.HybridCompute/privateLinkScopes/pls1";

/// The config keys of the connect half of issue 19, parsed as `run` parses them, rendered as `run` renders
/// them (tags included), and run through the real script.
fn connect_with_config(onboarding: &str, azure_extra: &str, aws_region: &str) -> (Params, Sandbox) {
    let text = format!(
        "[aws]\nall_regions = true\n[onboarding]\n{onboarding}\n[azure]\ntenant_id = \"55555555-6666-7777-8888-999999999999\"\nsubscription_id = \"00000000-1111-2222-3333-444444444444\"\nclient_id = \"00000000-0000-0000-0000-000000000003\"\n{azure_extra}\n"
    );
    let config = arc_onboard::config::Config::parse(&text, Path::new("t.toml")).unwrap();
    let azure = config.azure.unwrap();
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    let mut params = Params::new(&server);
    params.location = azure.location_for(aws_region).unwrap();
    params.gateway_id = config.onboarding.gateway_id.clone();
    params.private_link_scope = config.onboarding.private_link_scope.clone();
    params.automatic_upgrade = config.onboarding.automatic_upgrade;
    params.tags.insert(
        "ArcSQLServerExtensionDeployment".into(),
        config.onboarding.sql_server_license.tag_value().into(),
    );
    let run = sandbox.run(&params, &server.url(""), &[]);
    assert_result(&run, ScriptOutcome::Connected, 0, "connect", "connected");
    assert_eq!(sandbox.connect_call(), params.expected_connect());
    (params, sandbox)
}

/// The value that follows `flag` in an argv.
fn flag_value<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| a == flag)
        .map(|i| argv[i + 1].as_str())
}

#[test]
fn a_gateway_and_automatic_upgrade_reach_azcmagent_connect() {
    let (_, sandbox) = connect_with_config(
        &format!(
            "gateway_id = \"{GATEWAY}\"\nautomatic_upgrade = true\nsql_server_license = \"payg\""
        ),
        "location = \"eastus\"",
        "us-east-1",
    );
    let call = sandbox.connect_call();
    assert_eq!(flag_value(&call, "--gateway-id"), Some(GATEWAY));
    assert!(call.contains(&"--enable-automatic-upgrade".to_owned()));
    assert!(!call.contains(&"--private-link-scope".to_owned()));
    let tags = flag_value(&call, "--tags").unwrap();
    assert!(
        tags.split(',')
            .any(|t| t == "ArcSQLServerExtensionDeployment=PAYG"),
        "{tags}"
    );
}

#[test]
fn a_private_link_scope_reaches_azcmagent_connect_and_the_sql_tag_defaults_to_disabled() {
    let (_, sandbox) = connect_with_config(
        &format!("private_link_scope = \"{SCOPE}\""),
        "location = \"westeurope\"",
        "eu-west-1",
    );
    let call = sandbox.connect_call();
    assert_eq!(flag_value(&call, "--private-link-scope"), Some(SCOPE));
    assert!(!call.contains(&"--gateway-id".to_owned()));
    assert!(!call.contains(&"--enable-automatic-upgrade".to_owned()));
    let tags = flag_value(&call, "--tags").unwrap();
    assert!(
        tags.split(',')
            .any(|t| t == "ArcSQLServerExtensionDeployment=Disabled"),
        "{tags}"
    );
}

#[test]
fn location_auto_gives_the_script_the_mapped_location_and_an_override_wins() {
    let auto = "location = \"auto\"\nresource_group_location = \"eastus\"";
    let overridden = format!("{auto}\n[azure.locations]\n\"eu-west-1\" = \"northeurope\"");
    for (azure, region, expected) in [
        (auto.to_owned(), "us-east-1", "eastus"),
        (auto.to_owned(), "eu-west-1", "westeurope"),
        (auto.to_owned(), "ap-northeast-1", "southeastasia"),
        (overridden.clone(), "eu-west-1", "northeurope"),
        (overridden, "us-east-1", "eastus"),
    ] {
        let (_, sandbox) = connect_with_config("", &azure, region);
        let call = sandbox.connect_call();
        assert_eq!(flag_value(&call, "--location"), Some(expected), "{region}");
    }
}

/// SHA-256 of some bytes, as lowercase hex, computed by coreutils (what the instance uses too).
fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[test]
fn an_installer_failure_reports_the_azcm_code_from_its_output_file() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    let params = Params::new(&server);
    let run = sandbox.run(
        &params,
        &server.url(""),
        &[("FAKE_INSTALLER_EXIT", "1"), ("FAKE_INSTALLER_AZCM", "143")],
    );

    assert_result(&run, ScriptOutcome::Failed, 1, "install", "AZCM0143");
    let message = &run.result.as_ref().unwrap().message;
    assert!(
        message.starts_with("the agent installer exited with 1: AZCM0143: ")
            && message.contains(
                r#"error installing "azcmagent" (exit code: 100). See 'apt' command logs"#
            ),
        "{message}"
    );
    assert!(sandbox.agent_calls().is_empty());
}

#[test]
fn the_installers_downloads_and_its_own_temp_dir_are_removed() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    // Another installer's directory from before is not ours to remove.
    let foreign = sandbox
        .path("installer-tmp-root")
        .join("azcmagent.OLDOLDOLD1");
    fs::create_dir(&foreign).unwrap();
    fs::write(foreign.join("keep"), "x").unwrap();
    let params = Params::new(&server);
    // Sandbox::run checks that no directory of the installer's was left beside it.
    let run = sandbox.run(&params, &server.url(""), &[]);
    assert_result(&run, ScriptOutcome::Connected, 0, "connect", "connected");
    assert!(foreign.join("keep").exists());
    // The installer downloaded into the private directory (--tempdir), which is gone.
    let argv = sandbox.installer_argv().unwrap();
    let tempdir = Path::new(&argv[argv.len() - 1]);
    assert!(tempdir.ends_with("installer-tmp") && !tempdir.exists());
    // The same after a failed install.
    let sandbox = Sandbox::new();
    let run = sandbox.run(
        &params,
        &server.url(""),
        &[("FAKE_INSTALLER_EXIT", "1"), ("FAKE_INSTALLER_AZCM", "146")],
    );
    assert_result(&run, ScriptOutcome::Failed, 1, "install", "AZCM0146");
}

#[test]
fn exit_code_194_never_reaches_ssm() {
    let server = Server::start(Some(fake_installer()));
    // From azcmagent connect, and from the installer.
    for (env, step, code) in [
        (("FAKE_CONNECT_EXIT", "194"), "connect", "AZCM0194"),
        (
            ("FAKE_INSTALLER_EXIT", "194"),
            "install",
            "installer-failed",
        ),
    ] {
        let sandbox = Sandbox::new();
        let params = Params::new(&server);
        let run = sandbox.run(&params, &server.url(""), &[env]);
        let result = run.result.as_ref().expect("a result line");
        assert_eq!(
            (
                result.outcome,
                result.exit_code,
                result.step.as_str(),
                result.code.as_str()
            ),
            (ScriptOutcome::Failed, 194, step, code),
            "{}",
            run.stdout
        );
        assert_eq!(
            run.code, EXIT_REBOOT_CODE,
            "SSM would reboot and rerun on 194"
        );
    }
}

/// The mode bits of a path.
fn mode(path: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&fs::metadata(path).unwrap().permissions()) & 0o777
}

#[test]
fn the_key_exchange_prints_only_the_public_key_and_keeps_the_private_key_root_only() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    let params = Params::new(&server);
    let (run, sealed) = sandbox.exchange(&params, &server.url(""), &[]);

    assert!(sealed.is_some(), "{}", run.stdout);
    assert_eq!(run.code, 0);
    assert!(!run.stdout.contains("PRIVATE"), "{}", run.stdout);
    assert!(
        run.stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("ARC_ONBOARD_KEY {"),
        "{}",
        run.stdout
    );
    // Nothing downloaded, installed or connected before a token exists.
    assert_eq!(server.targets(), IMDS_ONLY);
    assert_eq!(sandbox.installer_argv(), None);
    let key = sandbox.path("keys").join(format!("{KEY_ID}.pem"));
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&sandbox.path("keys")), 0o700);
    assert!(fs::read_to_string(&key).unwrap().contains("PRIVATE KEY"));
}

#[test]
fn the_install_opens_the_sealed_token_with_openssl_and_leaves_no_key_token_or_blob() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    let params = Params::new(&server);
    let run = sandbox.run(&params, &server.url(""), &[]);

    assert_result(&run, ScriptOutcome::Connected, 0, "connect", "connected");
    let config: serde_json::Value =
        serde_json::from_str(&sandbox.state("connect-config").unwrap()).unwrap();
    assert_eq!(config, serde_json::json!({ "access-token": ACCESS_TOKEN }));
    // The config file, the wrapped key, the sealed text and the passphrase lived in the private temp
    // dir, which is gone (checked by run, with the key directory's emptiness).
    assert!(fs::read_dir(sandbox.path("tmp")).unwrap().next().is_none());
}

/// Runs the install with `sealed` in `sandbox` and asserts it failed opening the sealed token (step
/// `connect`, code `sealed-token`) without ever running `azcmagent connect`; returns the run.
fn assert_sealed_token_refused(
    sandbox: &Sandbox,
    params: &Params,
    server: &Server,
    sealed: &SealedToken,
) -> Run {
    let text = render_linux(&params.install(Delivery::Sealed(sealed)));
    let run = sandbox.run_script(&text, params, &server.url(""), &[]);
    assert_result(
        &run,
        ScriptOutcome::Failed,
        EXIT_INSTALL,
        "connect",
        "sealed-token",
    );
    assert!(sandbox.agent_calls().iter().all(|c| c[0] != "connect"));
    run
}

#[test]
fn an_install_whose_private_key_is_gone_fails_without_connecting() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    let params = Params::new(&server);
    let (_, sealed) = sandbox.exchange(&params, &server.url(""), &[]);
    fs::remove_file(sandbox.path("keys").join(format!("{KEY_ID}.pem"))).unwrap();
    let run = assert_sealed_token_refused(&sandbox, &params, &server, &sealed.unwrap());
    assert!(
        run.result.unwrap().message.contains("private key"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_sealed_token_for_another_instance_or_a_changed_one_is_refused() {
    let server = Server::start(Some(fake_installer()));
    let params = Params::new(&server);
    // Sealed for another instance id: this instance finds no blob of its own.
    let sandbox = Sandbox::new();
    let (_, sealed) = sandbox.exchange(&params, &server.url(""), &[]);
    let mut other = sealed.unwrap();
    let blob = other.wrapped.remove(INSTANCE_ID).unwrap();
    other.wrapped.insert("i-0fedcba9876543210".into(), blob);
    assert_sealed_token_refused(&sandbox, &params, &server, &other);
    assert!(
        fs::read_dir(sandbox.path("keys")).unwrap().next().is_none(),
        "the key is deleted however the install ends"
    );

    // A changed sealed text: its digest no longer matches the one inside the wrapped key.
    let sandbox = Sandbox::new();
    let (_, sealed) = sandbox.exchange(&params, &server.url(""), &[]);
    let mut changed = sealed.unwrap();
    let last = changed.ciphertext.len() - 1;
    changed.ciphertext[last] ^= 1;
    assert_sealed_token_refused(&sandbox, &params, &server, &changed);
}

#[test]
fn an_agent_already_connected_to_ours_is_settled_by_the_key_exchange_without_a_key() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    sandbox.preinstall_agent();
    let params = Params::new(&server);
    let env = [
        ("FAKE_AGENT_STATUS", "Connected"),
        ("FAKE_AGENT_SUBSCRIPTION", params.subscription_id.as_str()),
        ("FAKE_AGENT_RESOURCE_GROUP", params.resource_group.as_str()),
        ("FAKE_AGENT_RESOURCE_NAME", INSTANCE_ID),
    ];
    let (run, sealed) = sandbox.exchange(&params, &server.url(""), &env);
    assert!(sealed.is_none(), "no token is minted for it");
    assert_result(
        &run,
        ScriptOutcome::AlreadyConnected,
        0,
        "check",
        "already-connected",
    );
    assert!(fs::read_dir(sandbox.path("keys")).unwrap().next().is_none());
}
