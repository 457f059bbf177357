//! The operator's experience of the real binary: tables that fit a terminal (in a pseudo-terminal of 100
//! columns), colour only where it belongs, a closed stdout that ends the program quietly, completions and
//! the man page, flags refused rather than ignored, errors that say what to do, the banner and
//! `unverified` without Azure, an unreachable AWS endpoint in one line, and Ctrl-C during `run`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fleet_with, isolate, row, Emulator, World, STUB_SECRET};
use serde_json::{json, Value};

const ONE_REGION: &str = "[aws]\nregions = [\"us-east-1\"]\n";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_arc-onboard"))
}

fn python() -> PathBuf {
    std::env::var_os("ARC_ONBOARD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo_file(".venv/bin/python"))
}

/// Display width of a line once its ANSI styles are removed (every character one column: the tests' text
/// is ASCII apart from `…`).
fn width(line: &str) -> usize {
    strip_ansi(line).chars().count()
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Instances whose plan rows are long: Name tags of 40 characters, details of 150.
fn long_fleet() -> Value {
    let name = |n: usize| format!("a-name-tag-that-is-rather-long-for-a-table-{n}");
    fleet_with(json!([
        {"region": "us-east-1", "platform": "linux", "tags": {"Name": name(1)}},
        {"region": "us-east-1", "platform": "windows", "tags": {"Name": name(2)}, "instance_profile": "LegacyProfile"},
        {"region": "us-east-1", "platform": "linux", "tags": {"Name": name(3)}, "instance_profile": "AppProfile"},
        {"region": "us-east-1", "platform": "linux", "state": "stopped", "tags": {"Name": name(4)}}
    ]))
}

/// What a run of the binary on a pseudo-terminal drew, and its exit code.
struct Drawn {
    code: i32,
    screen: String,
    stderr: String,
}

/// Runs `arc-onboard args` against `emu` with stdout (and stderr with `stderr_too`) on a pseudo-terminal
/// `cols` wide.
fn on_terminal(
    emu: &Emulator,
    cols: u16,
    args: &[&str],
    config: &str,
    env: &[(&str, &str)],
    stderr_too: bool,
) -> Drawn {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("arc-onboard.toml");
    std::fs::write(&config_path, config).unwrap();
    let stderr_file = dir.path().join("stderr");
    let mut cmd = Command::new(python());
    cmd.arg(common::repo_file("tests/fixtures/pty_run.py"))
        .arg(cols.to_string())
        .arg(&stderr_file);
    if stderr_too {
        cmd.arg("--stderr-too");
    }
    cmd.arg("--")
        .arg(env!("CARGO_BIN_EXE_arc-onboard"))
        .args(args)
        .arg("--config")
        .arg(&config_path);
    isolate(&mut cmd, dir.path());
    cmd.env("AWS_ENDPOINT_URL", &emu.endpoint)
        .env("TERM", "xterm");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the pty helper");
    Drawn {
        code: out.status.code().unwrap_or(-1),
        screen: String::from_utf8_lossy(&out.stdout).replace('\r', ""),
        stderr: std::fs::read_to_string(&stderr_file).unwrap_or_default()
            + &String::from_utf8_lossy(&out.stderr),
    }
}

#[test]
fn on_a_terminal_of_100_columns_no_line_is_wider_and_status_has_colour() {
    let emu = Emulator::start();
    emu.seed(&long_fleet());
    let drawn = on_terminal(&emu, 100, &["plan"], ONE_REGION, &[], false);
    assert_eq!(drawn.code, 0, "{}", drawn.stderr);
    assert!(drawn.screen.contains("INSTANCE"), "{}", drawn.screen);
    for line in drawn.screen.lines() {
        assert!(width(line) <= 100, "{} columns: {line:?}", width(line));
    }
    assert!(
        drawn.screen.contains('…'),
        "long details are cut with an ellipsis:\n{}",
        drawn.screen
    );
    let header = drawn
        .screen
        .lines()
        .find(|l| l.contains("INSTANCE"))
        .unwrap();
    for narrow_out in ["PLATFORM", "STATE", "SSM"] {
        assert!(!header.contains(narrow_out), "narrow default: {header}");
    }
    // unverified (no Azure) is yellow, not-running has no colour.
    assert!(
        drawn.screen.contains("\x1b[33munverified\x1b[0m"),
        "{:?}",
        drawn.screen
    );

    // NO_COLOR: the same table without a single escape sequence.
    let plain = on_terminal(
        &emu,
        100,
        &["plan"],
        ONE_REGION,
        &[("NO_COLOR", "1")],
        false,
    );
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    assert!(!plain.screen.contains('\x1b'), "{:?}", plain.screen);
    assert!(plain.screen.contains("unverified"));

    // --wide: every column, whole cells, wider than the terminal.
    let wide = on_terminal(&emu, 100, &["plan", "--wide"], ONE_REGION, &[], false);
    assert_eq!(wide.code, 0, "{}", wide.stderr);
    let header = wide
        .screen
        .lines()
        .find(|l| l.contains("INSTANCE"))
        .unwrap();
    for column in ["PLATFORM", "STATE", "SSM", "DETAIL"] {
        assert!(header.contains(column), "--wide: {header}");
    }
    assert!(wide.screen.lines().any(|l| width(l) > 100));
    assert!(!wide
        .screen
        .lines()
        .filter(|l| l.contains("i-"))
        .any(|l| l.contains('…')));
}

#[test]
fn off_a_terminal_the_table_is_whole_and_plain() {
    let emu = Emulator::start();
    emu.seed(&long_fleet());
    let out = emu.run_env(&["plan"], ONE_REGION, &[("TERM", "xterm")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains('\x1b'), "no colour in a pipe");
    assert!(!out.stdout.contains('…'), "no cut cell in a pipe");
    let header = out.stdout.lines().find(|l| l.contains("INSTANCE")).unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "ACCOUNT", "REGION", "LOCATION", "INSTANCE", "NAME", "PLATFORM", "STATE", "SSM",
            "AGENT", "ACTIONS", "STATUS", "DETAIL"
        ]
    );
    assert!(out.stdout.lines().any(|l| l.len() > 150), "whole details");
}

/// Starts `arc-onboard args` with its stdout a pipe whose reader is already gone; returns (signal or
/// code, stderr).
fn into_closed_pipe(mut cmd: Command) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (child.wait().unwrap(), stderr)
}

#[test]
fn a_closed_stdout_ends_the_program_as_sigpipe_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let emu = Emulator::start();
    emu.seed(&long_fleet());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("arc-onboard.toml");
    std::fs::write(&config, ONE_REGION).unwrap();
    for output in ["table", "json"] {
        let mut cmd = bin();
        cmd.args(["plan", "--output", output, "--config"])
            .arg(&config);
        isolate(&mut cmd, dir.path());
        cmd.env("AWS_ENDPOINT_URL", &emu.endpoint);
        let (status, stderr) = into_closed_pipe(cmd);
        assert!(!stderr.contains("panicked"), "{output}: {stderr}");
        assert_eq!(status.signal(), Some(13), "{output}: {status:?} {stderr}");
    }
    let mut cmd = bin();
    cmd.args(["completions", "bash"]);
    let (status, stderr) = into_closed_pipe(cmd);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.signal(), Some(13), "{status:?}");
}

#[test]
fn completions_pass_bash_n_and_every_shell_gets_some() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin().args(["completions", "bash"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let script = dir.path().join("arc-onboard.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["plan", "run", "daemon", "completions", "manpage", "--wide"] {
        assert!(
            text.contains(word),
            "{word} missing from the bash completions"
        );
    }
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let out = bin().args(["completions", shell]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("arc-onboard"),
            "{shell}"
        );
    }
    let bad = bin().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn the_man_page_renders() {
    let out = bin().arg("manpage").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let roff = String::from_utf8_lossy(&out.stdout);
    assert!(roff.starts_with(".ie") || roff.contains(".TH"), "{roff}");
    assert!(
        roff.contains("COMMAND: ARC-ONBOARD PLAN"),
        "subcommands are in the page"
    );
    let has_man = Command::new("sh")
        .args(["-c", "command -v man"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_man {
        eprintln!("man is not installed: the roff is not rendered");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("arc-onboard.1");
    std::fs::write(&page, &out.stdout).unwrap();
    let shown = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .unwrap();
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("arc-onboard"), "{text}");
    assert!(text.contains("--state-file"), "{text}");
}

#[test]
fn version_help_examples() {
    let out = bin().arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!(
            "arc-onboard {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    let target = text
        .trim()
        .rsplit(", ")
        .next()
        .unwrap()
        .trim_end_matches(')');
    assert!(target.contains("linux") || target == "unknown", "{text}");
    for command in ["plan", "run", "daemon", "template"] {
        let out = bin().args([command, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Examples:\n  arc-onboard"),
            "{command}: {help}"
        );
    }
}

/// Runs the binary with `args` and a config file holding `config` (no AWS endpoint: these never call AWS).
fn offline(args: &[&str], config: &str, env: &[(&str, &str)]) -> common::Outcome {
    common::run_binary(args, config, env)
}

#[test]
fn flags_a_command_would_ignore_are_refused() {
    let out = offline(&["daemon", "--output", "json"], ONE_REGION, &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("--output does not apply to `daemon`"),
        "{}",
        out.stderr
    );

    let out = bin()
        .args(["status", "--config", "x.toml", "--state-file", "none.db"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config does not apply to `status`"));

    let out = offline(&["template", "events", "--output", "json"], ONE_REGION, &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);

    let out = offline(&["plan", "--wide", "--output", "json"], ONE_REGION, &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);

    // validate --output json prints JSON of the effective config.
    let out = offline(&["validate", "--output", "json"], ONE_REGION, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = out.json();
    assert_eq!(v["effective"]["aws"]["regions"], json!(["us-east-1"]));
    assert_eq!(v["effective"]["iam"]["role_name"], "AzureArcForServerSSM");
    assert!(v["credential"]
        .as_str()
        .unwrap()
        .contains("[azure] is not configured"));
}

#[test]
fn an_invalid_log_filter_is_an_error() {
    let out = offline(
        &["validate"],
        ONE_REGION,
        &[("ARC_ONBOARD_LOG", "arc_onboard=loud")],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("ARC_ONBOARD_LOG is not a valid log filter"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    let out = offline(
        &["validate"],
        ONE_REGION,
        &[("ARC_ONBOARD_LOG", "arc_onboard=debug")],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn a_misspelt_key_gets_a_did_you_mean() {
    let out = offline(
        &["validate"],
        "[aws]\nregions = [\"us-east-1\"]\ntag_filer = { key = \"arc\" }\n",
        &[],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("aws.tag_filer: unknown key; did you mean `tag_filter`?"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_missing_config_file_says_how_to_give_one() {
    let out = bin()
        .args(["plan", "--config", "/nonexistent/arc-onboard.toml"])
        .env_remove("ARC_ONBOARD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no configuration file at /nonexistent/arc-onboard.toml"),
        "{stderr}"
    );
    assert!(stderr.contains("pass --config PATH"), "{stderr}");
    assert!(stderr.contains("regions = [\"us-east-1\"]"), "{stderr}");
}

fn azure_config(extra: &str) -> String {
    format!(
        "{ONE_REGION}[azure]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\nsubscription_id = \"00000000-0000-0000-0000-000000000002\"\nclient_id = \"00000000-0000-0000-0000-000000000003\"\nlocation = \"eastus\"\n{extra}"
    )
}

#[test]
fn validate_exits_2_when_run_would_refuse_the_credential() {
    // client-secret without its variable: the effective config is printed, and exit 2.
    let out = offline(&["validate"], &azure_config(""), &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stdout.contains("# effective configuration"));
    assert!(
        out.stderr.contains("ARC_ONBOARD_CLIENT_SECRET is not set"),
        "{}",
        out.stderr
    );
    let out = offline(
        &["validate"],
        &azure_config(""),
        &[("ARC_ONBOARD_CLIENT_SECRET", "s")],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("\"s\""));
    // An unreadable certificate and a missing token file: the checks run makes, exit 2.
    let cert =
        "credential = \"client-certificate\"\nclient_certificate_path = \"/nonexistent/sp.pem\"\n";
    let out = offline(&["validate"], &azure_config(cert), &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("/nonexistent/sp.pem"), "{}", out.stderr);
    let token =
        "credential = \"workload-identity\"\nfederated_token_file = \"/nonexistent/token\"\n";
    let out = offline(&["validate"], &azure_config(token), &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("/nonexistent/token"), "{}", out.stderr);
}

#[test]
fn without_azure_the_plan_says_so_first_and_machines_are_unverified() {
    let emu = Emulator::start();
    let seeded = emu.seed(&long_fleet());
    let id = |n: usize| seeded[n]["instance_id"].as_str().unwrap().to_string();
    let out = emu.run(&["plan"], ONE_REGION);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("NOTE: Azure was not asked (no [azure] section in the configuration)"),
        "{}",
        out.stdout
    );
    let out = emu.run(&["plan", "--output", "json"], ONE_REGION);
    let report = out.json();
    assert_eq!(row(&report, &id(0))["status"], "unverified");
    assert_eq!(row(&report, &id(2))["status"], "unverified");
    assert_eq!(
        row(&report, &id(3))["status"],
        "not-running",
        "no install: not unverified"
    );
    assert_eq!(report["summary"]["by_status"]["unverified"], 3);

    // [azure] without its secret: the banner names the variable.
    let out = emu.run(&["plan"], &azure_config(""));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .lines()
            .next()
            .unwrap()
            .contains("ARC_ONBOARD_CLIENT_SECRET is not set"),
        "{}",
        out.stdout
    );
}

#[test]
fn with_azure_checked_nothing_is_unverified_and_there_is_no_banner() {
    let w = World::start();
    w.aws.seed(&fleet_with(
        json!([{"region": "us-east-1", "instance_profile": "AppProfile"}]),
    ));
    let out = w.run(&["plan"], &w.config(ONE_REGION));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("arc-onboard plan"), "{}", out.stdout);
    assert!(out.stdout.contains(" planned "), "{}", out.stdout);
}

/// A port on 127.0.0.1 where nothing listens.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn an_unreachable_aws_endpoint_is_one_line_naming_it() {
    let endpoint = format!("http://127.0.0.1:{}", dead_port());
    let started = Instant::now();
    let out = offline(
        &["plan"],
        ONE_REGION,
        &[("AWS_ENDPOINT_URL", &endpoint), ("AWS_MAX_ATTEMPTS", "2")],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(30));
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    let error = errors[0];
    assert!(error.contains(&endpoint), "{error}");
    assert!(error.contains("from env AWS_ENDPOINT_URL"), "{error}");
    assert!(error.contains("sts:GetCallerIdentity"), "{error}");
    assert!(error.contains("after 2 attempt(s)"), "{error}");
    assert!(error.to_lowercase().contains("refused"), "{error}");
    assert!(error.len() < 400, "one short line: {error}");
    for dump in ["DispatchFailure", "ConnectorError", "source:", "Some("] {
        assert!(!out.stderr.contains(dump), "debug dump: {}", out.stderr);
    }
    // The retries are visible as they happen.
    let tries = out
        .stderr
        .lines()
        .filter(|l| l.contains("no answer from AWS"))
        .count();
    assert_eq!(tries, 2, "{}", out.stderr);
}

#[test]
fn ctrl_c_during_run_stops_and_prints_what_was_done() {
    let w = World::start();
    // No profile: run associates one, then waits for SSM registration, which takes ten minutes here.
    let seeded = w.aws.seed(&fleet_with(
        json!([{"region": "us-east-1", "platform": "linux"}]),
    ));
    let id = seeded[0]["instance_id"].as_str().unwrap().to_string();
    w.aws.configure(json!({"registration_delay_seconds": 600}));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("arc-onboard.toml");
    std::fs::write(&config, w.config(ONE_REGION)).unwrap();
    let mut cmd = bin();
    cmd.args([
        "run",
        "--output",
        "json",
        "--wait-for-ssm",
        "10m",
        "--config",
    ])
    .arg(&config);
    isolate(&mut cmd, dir.path());
    let child = cmd
        .env("AWS_ENDPOINT_URL", &w.aws.endpoint)
        .env("ARC_ONBOARD_CLIENT_SECRET", STUB_SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the association is made and SSM is being polled.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let polls = w
            .aws
            .calls()
            .iter()
            .filter(|c| c["operation"] == "ssm:DescribeInstanceInformation")
            .count();
        if polls >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run never waited: {:#?}",
            w.aws.calls()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        w.aws
            .calls()
            .iter()
            .any(|c| c["operation"] == "ec2:AssociateIamInstanceProfile"),
        "the association was made before the wait"
    );
    let interrupted_at = Instant::now();
    let ok = Command::new("sh")
        .args(["-c", &format!("kill -INT {}", child.id())])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let out = child.wait_with_output().unwrap();
    assert!(
        interrupted_at.elapsed() < Duration::from_secs(20),
        "stopped promptly"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("the partial report");
    assert_eq!(report["mode"], "run");
    let r = row(&report, &id);
    assert_eq!(r["status"], "waiting-for-ssm", "{r}");
    assert!(
        r["detail"].as_str().unwrap().starts_with("IAM prepared"),
        "the association that was made is reported: {r}"
    );
    assert!(
        w.aws
            .calls()
            .iter()
            .all(|c| c["operation"] != "ssm:SendCommand"),
        "no install was started after the interrupt"
    );
}

#[test]
fn the_quiet_live_line_never_wraps_and_shows_time() {
    let w = World::start();
    w.aws.seed(&fleet_with(
        json!([{"region": "us-east-1", "platform": "linux"}]),
    ));
    w.aws.configure(json!({"registration_delay_seconds": 4}));
    let drawn = on_terminal(
        &w.aws,
        40,
        &[
            "-q",
            "run",
            "--wait-for-ssm",
            "30s",
            "--verify-timeout",
            "20s",
        ],
        // With an onboarding identity: no start-up warning about the scripts' token (a log line, not the
        // live line this test is about).
        &format!(
            "{}\n[azure.onboarding]\nclient_id = \"00000000-0000-0000-0000-000000000004\"\n",
            w.config(ONE_REGION)
        ),
        &[
            ("ARC_ONBOARD_CLIENT_SECRET", STUB_SECRET),
            (
                "ARC_ONBOARD_ONBOARDING_CLIENT_SECRET",
                "stub-onboarding-secret",
            ),
        ],
        true,
    );
    assert!(drawn.code == 0 || drawn.code == 1, "{}", drawn.screen);
    let raw = drawn.screen;
    assert!(raw.contains("\x1b[2K"), "a live line was drawn: {raw:?}");
    assert!(
        raw.contains("s/30s] waiting for SSM registration"),
        "elapsed and bound first: {raw:?}"
    );
    // Every redraw of the live line fits the 40 columns (the table below may be narrow too).
    for piece in raw.split(['\n']).flat_map(|l| l.split("\x1b[2K")) {
        assert!(width(piece) <= 40, "{} columns: {piece:?}", width(piece));
    }
}
