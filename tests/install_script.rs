//! Runs the rendered Linux install script with bash against fakes on 127.0.0.1: an HTTP server that serves
//! IMDSv2 and a fake agent installer, a forward proxy, and the fake `azcmagent` that installer writes, which
//! records every invocation's argv. No root and no network beyond 127.0.0.1.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use arc_onboard::install::{
    parse_result, render_linux, InstallParams, ScriptOutcome, ScriptResult,
};

const INSTANCE_ID: &str = "i-0123456789abcdef0";
const IMDS_TOKEN: &str = "imds-session-token-42";
const ACCESS_TOKEN: &str = "arm.access.token-DO-NOT-PRINT";

/// The fake `azcmagent`: records argv as `argc NUL arg NUL ...`, answers `show -j` with the status in
/// `$FAKE_AGENT_STATUS`, and exits from `connect` with `$FAKE_CONNECT_EXIT`.
const FAKE_AGENT: &str = r#"#!/bin/bash
printf '%s\0' "$#" "$@" >>"$FAKE_STATE/agent-calls"
case "$1" in
    show)
        printf '{\n  "resourceName": "",\n  "status": "%s",\n  "agentVersion": "1.50.0"\n}\n' "${FAKE_AGENT_STATUS:-Disconnected}"
        ;;
    connect)
        code="${FAKE_CONNECT_EXIT:-0}"
        echo "INFO connecting"
        if [ "$code" = 41 ]; then echo "FATAL AZCM0041: The credentials supplied are invalid"; fi
        exit "$code"
        ;;
esac
exit 0
"#;

/// The fake installer served at /azcmagent-linux: records its argv (like the agent does), installs the fake agent into `$FAKE_BIN`
/// and exits with `$FAKE_INSTALLER_EXIT`.
fn fake_installer() -> String {
    format!(
        "#!/bin/bash\n\
         printf '%s\\0' \"$#\" \"$@\" >\"$FAKE_STATE/installer-argv\"\n\
         cat >\"$FAKE_BIN/azcmagent\" <<'FAKE_AGENT_EOF'\n{FAKE_AGENT}FAKE_AGENT_EOF\n\
         chmod +x \"$FAKE_BIN/azcmagent\"\n\
         echo 'fake installer: done'\n\
         exit \"${{FAKE_INSTALLER_EXIT:-0}}\"\n"
    )
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
        }
    }

    fn install(&self) -> InstallParams<'_> {
        InstallParams {
            subscription_id: &self.subscription_id,
            resource_group: &self.resource_group,
            location: &self.location,
            tenant_id: &self.tenant_id,
            cloud: &self.cloud,
            correlation_id: &self.correlation_id,
            tags: &self.tags,
            access_token: &self.access_token,
            proxy_url: self.proxy_url.as_deref(),
            installer_url: &self.installer_url,
        }
    }

    /// The argv `azcmagent connect` must get.
    fn expected_connect(&self) -> Vec<String> {
        let tags: Vec<String> = self.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        [
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
            "--tags",
            &tags.join(","),
            "--resource-name",
            INSTANCE_ID,
            "--access-token",
            &self.access_token,
        ]
        .map(String::from)
        .to_vec()
    }
}

/// A sandbox: a bin dir on PATH for the fake agent, a state dir for recordings, a TMPDIR to check cleanup.
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
        for sub in ["bin", "state", "tmp", "systemd"] {
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

    /// Renders the script for `params` and runs it with bash; `imds` is the IMDS endpoint.
    fn run(&self, params: &Params, imds: &str, env: &[(&str, &str)]) -> Run {
        let script = self.path("script.sh");
        fs::write(&script, render_linux(&params.install())).unwrap();
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let (out_path, err_path) = (self.path("stdout"), self.path("stderr"));
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env("FAKE_BIN", self.path("bin"))
            .env("FAKE_STATE", self.path("state"))
            .env("TMPDIR", self.path("tmp"))
            .env("ARC_ONBOARD_IMDS", imds)
            .env("ARC_ONBOARD_SYSTEMD_DIR", self.path("systemd"))
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
            "FAKE_AGENT_STATUS",
            "FAKE_CONNECT_EXIT",
            "FAKE_INSTALLER_EXIT",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
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
            !stdout.contains(ACCESS_TOKEN) && !stderr.contains(ACCESS_TOKEN),
            "the access token was printed:\n{stdout}\n{stderr}"
        );
        assert!(
            fs::read_dir(self.path("tmp")).unwrap().next().is_none(),
            "the temporary directory was left behind"
        );
        let last = stdout.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("ARC_ONBOARD_RESULT {"),
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

fn assert_result(run: &Run, outcome: ScriptOutcome, exit_code: i32, step: &str) {
    let result = run
        .result
        .as_ref()
        .unwrap_or_else(|| panic!("no result line:\n{}\n{}", run.stdout, run.stderr));
    assert_eq!(
        (result.outcome, result.exit_code, result.step.as_str()),
        (outcome, exit_code, step),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(run.code, exit_code, "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn public_mode_installs_and_connects_as_the_instance_id() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    let params = Params::new(&server);
    let run = sandbox.run(&params, &server.url(""), &[]);

    assert_result(&run, ScriptOutcome::Connected, 0, "connect");
    assert!(run.result.as_ref().unwrap().message.contains(INSTANCE_ID));
    assert_eq!(sandbox.installer_argv(), Some(Vec::new()));
    assert_eq!(sandbox.agent_calls(), vec![params.expected_connect()]);
    assert_eq!(
        server.targets(),
        [
            "PUT /latest/api/token",
            "GET /latest/meta-data/instance-id",
            "GET /azcmagent-linux"
        ]
    );
}

#[test]
fn proxy_mode_downloads_through_the_proxy_but_not_imds() {
    let server = Server::start(Some(fake_installer()));
    let proxy = Proxy::start();
    let sandbox = Sandbox::new();
    let mut params = Params::new(&server);
    params.proxy_url = Some(proxy.url());
    let run = sandbox.run(&params, &server.url(""), &[]);

    assert_result(&run, ScriptOutcome::Connected, 0, "connect");
    assert_eq!(
        proxy.lines(),
        [format!(
            "GET http://127.0.0.1:{}/azcmagent-linux HTTP/1.1",
            server.port
        )]
    );
    let targets = server.targets();
    assert!(targets.contains(&"PUT /latest/api/token".to_owned()));
    assert!(targets.contains(&"GET /latest/meta-data/instance-id".to_owned()));
    assert_eq!(
        sandbox.installer_argv(),
        Some(strings(&["--proxy", &proxy.url()]))
    );
    assert_eq!(
        sandbox.agent_calls(),
        vec![
            strings(&["config", "set", "proxy.url", &proxy.url()]),
            params.expected_connect()
        ]
    );
}

#[test]
fn already_connected_agent_is_left_alone() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    sandbox.preinstall_agent();
    let params = Params::new(&server);
    let run = sandbox.run(
        &params,
        &server.url(""),
        &[("FAKE_AGENT_STATUS", "Connected")],
    );

    assert_result(&run, ScriptOutcome::AlreadyConnected, 0, "check");
    assert_eq!(sandbox.agent_calls(), vec![strings(&["show", "-j"])]);
    assert_eq!(
        server.targets(),
        Vec::<String>::new(),
        "no IMDS, no download"
    );
    assert_eq!(sandbox.installer_argv(), None);
}

#[test]
fn connect_failure_exits_with_the_agent_code() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    let params = Params::new(&server);
    let run = sandbox.run(&params, &server.url(""), &[("FAKE_CONNECT_EXIT", "41")]);

    assert_result(&run, ScriptOutcome::Failed, 41, "connect");
    let message = &run.result.as_ref().unwrap().message;
    assert!(
        message.contains("41") && message.contains("AZCM0041"),
        "{message}"
    );
}

#[test]
fn connect_exit_67_counts_as_already_connected() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    // An agent is installed but reports Disconnected; connect then says already connected.
    sandbox.preinstall_agent();
    let params = Params::new(&server);
    let run = sandbox.run(&params, &server.url(""), &[("FAKE_CONNECT_EXIT", "67")]);

    assert_result(&run, ScriptOutcome::AlreadyConnected, 0, "connect");
    assert_eq!(
        sandbox.agent_calls(),
        vec![strings(&["show", "-j"]), params.expected_connect()]
    );
}

#[test]
fn installer_download_404_fails_with_code_4() {
    let server = Server::start(None);
    let sandbox = Sandbox::new();
    let params = Params::new(&server);
    let run = sandbox.run(&params, &server.url(""), &[]);

    assert_result(&run, ScriptOutcome::Failed, 4, "download");
    assert_eq!(sandbox.installer_argv(), None);
    assert!(sandbox.agent_calls().is_empty());
}

#[test]
fn failing_installer_fails_with_code_5() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    let params = Params::new(&server);
    let run = sandbox.run(&params, &server.url(""), &[("FAKE_INSTALLER_EXIT", "1")]);

    assert_result(&run, ScriptOutcome::Failed, 5, "install");
    assert!(
        run.stdout.contains("fake installer: done"),
        "installer log shown"
    );
    assert!(sandbox.agent_calls().is_empty());
}

#[test]
fn unreachable_imds_fails_with_code_3() {
    let server = Server::start(Some(fake_installer()));
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let sandbox = Sandbox::new();
    let params = Params::new(&server);
    let run = sandbox.run(&params, &closed_url, &[]);

    assert_result(&run, ScriptOutcome::Failed, 3, "imds");
    assert!(server.targets().is_empty(), "nothing downloaded");
}

#[test]
fn missing_systemd_fails_with_code_6() {
    let server = Server::start(Some(fake_installer()));
    let sandbox = Sandbox::new();
    let params = Params::new(&server);
    let missing = sandbox.path("no-systemd");
    let run = sandbox.run(
        &params,
        &server.url(""),
        &[("ARC_ONBOARD_SYSTEMD_DIR", missing.to_str().unwrap())],
    );

    assert_result(&run, ScriptOutcome::Failed, 6, "platform");
    assert!(server.targets().is_empty());
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
        format!("it's \"ours\" $(touch {pwned}) \\ $HOME"),
    );
    params
        .tags
        .insert("Note".into(), "line1\nline2 ; `id`".into());
    params.access_token = format!("{ACCESS_TOKEN}'$(touch {pwned})");
    let run = sandbox.run(&params, &server.url(""), &[]);

    assert_result(&run, ScriptOutcome::Connected, 0, "connect");
    assert_eq!(sandbox.agent_calls(), vec![params.expected_connect()]);
    assert!(!sandbox.path("pwned").exists(), "a value ran a command");
}
