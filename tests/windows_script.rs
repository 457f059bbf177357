//! Parses the rendered Windows script with tree-sitter-powershell (`scripts/check-powershell.py`), since
//! PowerShell itself cannot be installed here: the template must parse, and no parameter value, however
//! hostile, may change the parse, add a statement or end its string literal early. The checker also applies
//! PowerShell's rule that U+2018, U+2019, U+201A and U+201B end a single-quoted string (the grammar does
//! not know it).
//!
//! Needs `ARC_ONBOARD_PYTHON`: a Python with the pinned `tree-sitter` and `tree-sitter-powershell` of
//! `scripts/requirements-emulator.txt` (scripts/test sets it to `.venv/bin/python`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use arc_onboard::install::{
    download_protocols, render_windows, tags_arg, InstallParams, EXIT_AGENT_STATE, EXIT_DOWNLOAD,
    EXIT_IMDS, EXIT_INSTALL, EXIT_UNSUPPORTED,
};
use serde::Deserialize;

const TOKEN: &str = "eyJ0eXAiOiJKV1Qi.fake-arm-token.sig";
const SHA256: &str = "0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789abcdef";

/// The parameter variables, in the order the assignment block sets them.
const NAMES: [&str; 13] = [
    "ARC_SUBSCRIPTION_ID",
    "ARC_RESOURCE_GROUP",
    "ARC_LOCATION",
    "ARC_TENANT_ID",
    "ARC_CLOUD",
    "ARC_CORRELATION_ID",
    "ARC_TAGS",
    "ARC_ACCESS_TOKEN",
    "ARC_PROXY_URL",
    "ARC_INSTALLER_URL",
    "ARC_INSTALLER_SHA256",
    "ARC_DOWNLOAD_PROTOCOLS",
    "ARC_RECONNECT",
];

/// One top-level assignment statement as `check-powershell.py --assignments` describes it.
#[derive(Debug, Deserialize)]
struct Assignment {
    line: usize,
    variable: Option<String>,
    operator: Option<String>,
    literal: bool,
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Assignments {
    assignments: Vec<Assignment>,
}

struct Checked {
    success: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Checked {
    fn report(&self) -> String {
        format!(
            "check-powershell exited {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The `--assignments` line (the last line of stdout).
    fn assignments(&self) -> Vec<Assignment> {
        let last = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str::<Assignments>(last)
            .unwrap_or_else(|e| panic!("no assignments line ({e}):\n{}", self.report()))
            .assignments
    }
}

fn python() -> String {
    match std::env::var("ARC_ONBOARD_PYTHON") {
        Ok(python) if !python.is_empty() => python,
        _ => panic!(
            "ARC_ONBOARD_PYTHON is not set: point it to a Python with the pinned tree-sitter and \
             tree-sitter-powershell, e.g. `python3 -m venv .venv && .venv/bin/pip install -r \
             scripts/requirements-emulator.txt && export ARC_ONBOARD_PYTHON=$PWD/.venv/bin/python` \
             (scripts/test does this)"
        ),
    }
}

/// Runs `scripts/check-powershell.py` on a script given on standard input.
fn check(script: &str, assignments: bool) -> Checked {
    let checker = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/check-powershell.py");
    let python = python();
    let mut command = Command::new(&python);
    command.arg(&checker);
    if assignments {
        command.arg("--assignments");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python} (ARC_ONBOARD_PYTHON): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let checked = Checked {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_ne!(
        checked.code,
        Some(2),
        "the checker cannot run (modules missing?):\n{}",
        checked.report()
    );
    checked
}

fn realistic_tags() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("AwsAccountId".to_owned(), "123456789012".to_owned()),
        ("AwsRegion".to_owned(), "eu-west-1".to_owned()),
        ("Owner".to_owned(), "platform team".to_owned()),
    ])
}

fn realistic<'a>(
    tags: &'a BTreeMap<String, String>,
    proxy: Option<&'a str>,
    installer_url: &'a str,
) -> InstallParams<'a> {
    InstallParams {
        subscription_id: "00000000-1111-2222-3333-444444444444",
        resource_group: "aws_123456789012",
        location: "westeurope",
        tenant_id: "55555555-6666-7777-8888-999999999999",
        cloud: "AzureCloud",
        correlation_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        tags,
        access_token: TOKEN,
        proxy_url: proxy,
        installer_url,
        installer_sha256: Some(SHA256),
        reconnect: false,
    }
}

/// Values that would break out of a badly quoted PowerShell string, start a here-string or a comment, or
/// run a command. NUL is left out: `ps_quote` drops it (no PowerShell string can carry it).
fn hostile_values() -> Vec<String> {
    vec![
        "it's".to_owned(),
        "'".to_owned(),
        "''".to_owned(),
        "'''".to_owned(),
        "\u{2018}".to_owned(),
        "\u{2019}".to_owned(),
        "\u{201A}".to_owned(),
        "\u{201B}".to_owned(),
        "\u{2018}left\u{2019} \u{201A}low\u{201B} \u{201C}double\u{201D}\u{201E}".to_owned(),
        "'\u{2019}\u{2018}'".to_owned(),
        "\u{2019}; Remove-Item -Recurse -Force C:\\; \u{2018}".to_owned(),
        "'; Remove-Item -Recurse -Force C:\\; '".to_owned(),
        "$(Remove-Item -Recurse -Force C:\\)".to_owned(),
        "$env:ARC_ACCESS_TOKEN ${ARC_ACCESS_TOKEN} $ARC_ACCESS_TOKEN @(1) @{a=1} $$ $? $^"
            .to_owned(),
        "`".to_owned(),
        "a`".to_owned(),
        "`'".to_owned(),
        "``n `$(x) `0".to_owned(),
        "a; b".to_owned(),
        ";".to_owned(),
        "first line\nsecond line\n".to_owned(),
        "\n".to_owned(),
        "\r\n".to_owned(),
        "\r".to_owned(),
        "x\n'@\n$(Remove-Item C:\\)\n@'\ny".to_owned(),
        "@'\nhere\n'@".to_owned(),
        "@\"\nhere\n\"@".to_owned(),
        "'@".to_owned(),
        "#>".to_owned(),
        "<#".to_owned(),
        "# not a comment".to_owned(),
        "\"".to_owned(),
        "say \"hi\" \"$(x)\"".to_owned(),
        "} { ) ( ] [ | & && || > 2>&1 --% -Proxy".to_owned(),
        r"C:\trailing\backslash\".to_owned(),
        "\t\u{7}\u{1b}[31m".to_owned(),
        "line\u{2028}sep\u{85}nel".to_owned(),
        "\u{fc}n\u{ef}c\u{f8}d\u{e9} \u{65e5}\u{672c} \u{1f980}".to_owned(),
        String::new(),
        "'\n#>\n@'\n\u{2019}@\n`\n$(x)\n\"\n;".to_owned(),
    ]
}

/// The values the script must receive, by variable name.
fn expected_values(p: &InstallParams) -> [String; 13] {
    [
        p.subscription_id.to_owned(),
        p.resource_group.to_owned(),
        p.location.to_owned(),
        p.tenant_id.to_owned(),
        p.cloud.to_owned(),
        p.correlation_id.to_owned(),
        tags_arg(p.tags),
        p.access_token.to_owned(),
        p.proxy_url.unwrap_or_default().to_owned(),
        p.installer_url.to_owned(),
        p.installer_sha256.unwrap_or_default().to_owned(),
        download_protocols(p.installer_url).to_owned(),
        if p.reconnect { "1" } else { "" }.to_owned(),
    ]
}

/// Parses the rendered script and checks its top-level assignments: first the 13 parameters, in order,
/// each one single-quoted string literal whose content is the value verbatim; then the template's own
/// (`template_assignments` of them; `None` to learn the number), none of which sets a parameter.
fn assert_parses_with_values(p: &InstallParams, template_assignments: Option<usize>) -> usize {
    let script = render_windows(p);
    let checked = check(&script, true);
    assert!(checked.success, "{p:?}\n{}", checked.report());
    let assignments = checked.assignments();
    assert!(assignments.len() >= NAMES.len(), "{}", checked.report());
    let expected = expected_values(p);
    for (i, name) in NAMES.iter().enumerate() {
        let a = &assignments[i];
        assert_eq!(a.variable.as_deref(), Some(*name), "statement {i}: {a:?}");
        assert_eq!(a.operator.as_deref(), Some("="), "{name}: {a:?}");
        assert!(a.literal, "{name} is not one string literal: {a:?}");
        assert_eq!(
            a.value.as_deref(),
            Some(expected[i].as_str()),
            "{name} does not arrive verbatim"
        );
    }
    // The block is contiguous: each assignment starts on the line after the previous one ended.
    let first_line = assignments[0].line;
    let block_lines: usize = expected[..NAMES.len() - 1]
        .iter()
        .map(|v| v.matches('\n').count() + 1)
        .sum();
    assert_eq!(assignments[NAMES.len() - 1].line, first_line + block_lines);
    let rest = &assignments[NAMES.len()..];
    for a in rest {
        assert!(
            !a.variable
                .as_deref()
                .is_some_and(|v| v.to_ascii_uppercase().starts_with("ARC_")),
            "the template assigns a parameter again: {a:?}"
        );
    }
    if let Some(n) = template_assignments {
        assert_eq!(
            rest.len(),
            n,
            "the values changed the template's statements"
        );
    }
    rest.len()
}

#[test]
fn realistic_scripts_parse() {
    let tags = realistic_tags();
    let empty = BTreeMap::new();
    let n = assert_parses_with_values(
        &realistic(&tags, None, "https://aka.ms/azcmagent-windows"),
        None,
    );
    assert!(n > 10, "suspiciously few top-level assignments: {n}");
    assert_parses_with_values(
        &realistic(
            &tags,
            Some("http://proxy.internal:3128"),
            "https://aka.ms/azcmagent-windows",
        ),
        Some(n),
    );
    let mut loopback = realistic(&empty, None, "http://127.0.0.1:8080/azcmagent-windows");
    loopback.installer_sha256 = None;
    loopback.correlation_id = "";
    assert_parses_with_values(&loopback, Some(n));
    assert!(render_windows(&loopback).contains("\n$ARC_DOWNLOAD_PROTOCOLS = '=http,https'\n"));
}

#[test]
fn hostile_values_in_every_parameter_stay_string_literals() {
    let tags = realistic_tags();
    let n = assert_parses_with_values(
        &realistic(&tags, None, "https://aka.ms/azcmagent-windows"),
        None,
    );
    for value in hostile_values() {
        let v = value.as_str();
        let tags = BTreeMap::from([
            ("Name".to_owned(), value.clone()),
            (value.clone(), value.clone()),
        ]);
        let p = InstallParams {
            subscription_id: v,
            resource_group: v,
            location: v,
            tenant_id: v,
            cloud: v,
            correlation_id: v,
            tags: &tags,
            access_token: v,
            proxy_url: Some(v),
            installer_url: v,
            installer_sha256: Some(v),
            reconnect: true,
        };
        assert_parses_with_values(&p, Some(n));
    }
    // All of them at once, a different one in each parameter.
    let values = hostile_values();
    for rotation in 0..values.len() {
        let v = |i: usize| values[(i + rotation) % values.len()].as_str();
        let tags = BTreeMap::from([(v(6).to_owned(), v(11).to_owned())]);
        let p = InstallParams {
            subscription_id: v(0),
            resource_group: v(1),
            location: v(2),
            tenant_id: v(3),
            cloud: v(4),
            correlation_id: v(5),
            tags: &tags,
            access_token: v(7),
            proxy_url: Some(v(8)),
            installer_url: v(9),
            installer_sha256: Some(v(10)),
            reconnect: rotation % 2 == 0,
        };
        assert_parses_with_values(&p, Some(n));
    }
}

#[test]
fn broken_scripts_are_rejected() {
    let tags = realistic_tags();
    let good = render_windows(&realistic(&tags, None, "https://aka.ms/azcmagent-windows"));
    assert!(check(&good, false).success);

    let unterminated = format!("{good}$x = 'unterminated\n");
    let unclosed = format!("{good}function Broken {{\n    if ($x) {{ 1 }}\n");
    // A quoting that forgot the Unicode single quotes: the grammar alone would accept it, PowerShell
    // would run the Remove-Item.
    let unicode_breakout = good.replacen(
        "\n$ARC_TAGS = '",
        "\n$ARC_TAGS = '\u{2019}; Remove-Item -Recurse C:\\; \u{2018}",
        1,
    );
    let plain_breakout = good.replacen("\n$ARC_TAGS = '", "\n$ARC_TAGS = 'it's ", 1);
    let missing_paren = good.replacen(
        "exit ([int]$result.ExitCode)",
        "exit ([int]$result.ExitCode",
        1,
    );
    for (what, script) in [
        ("unterminated string", &unterminated),
        ("unclosed brace", &unclosed),
        ("Unicode quote breakout", &unicode_breakout),
        ("ASCII quote breakout", &plain_breakout),
        ("missing parenthesis", &missing_paren),
    ] {
        assert_ne!(script, &good, "{what}: the corruption did not apply");
        let checked = check(script, false);
        assert!(
            !checked.success && checked.code == Some(1),
            "{what} was not rejected:\n{}",
            checked.report()
        );
        assert!(
            checked.stdout.lines().any(|l| l.starts_with("<stdin>:")),
            "{what}: no located problem:\n{}",
            checked.report()
        );
    }
}

#[test]
fn template_keeps_the_token_off_command_lines_and_uses_the_exit_codes() {
    let tags = realistic_tags();
    let script = render_windows(&realistic(
        &tags,
        Some("http://proxy.internal:3128"),
        "https://aka.ms/azcmagent-windows",
    ));
    assert_eq!(
        script.matches(TOKEN).count(),
        1,
        "the token appears outside its assignment"
    );
    assert!(!script.contains("--access-token"));
    assert!(script.contains("'--config'"));
    assert!(!script.contains("Set-PSDebug"));
    for (name, code) in [
        ("ExitImds", EXIT_IMDS),
        ("ExitDownload", EXIT_DOWNLOAD),
        ("ExitInstall", EXIT_INSTALL),
        ("ExitUnsupported", EXIT_UNSUPPORTED),
        ("ExitAgentState", EXIT_AGENT_STATE),
    ] {
        assert!(script.contains(&format!("\n${name} = {code}\n")), "{name}");
    }
    // The template itself is ASCII: Windows PowerShell 5.1 reads a file without a byte order mark in the
    // ANSI code page, and Unicode quotes in code would be quotes to PowerShell.
    let template: String = script
        .lines()
        .filter(|l| !l.starts_with("$ARC_"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(template.is_ascii());
}
