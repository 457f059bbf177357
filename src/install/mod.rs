//! Agent install scripts for SSM Run Command: rendering with per-shell quoting, and parsing their result.
//!
//! The scripts are templates kept beside this file (`linux.sh` for `AWS-RunShellScript`, `windows.ps1` for
//! `AWS-RunPowerShellScript`). Rendering only fills in the assignment block at the top: one quoted
//! assignment per parameter, so every value reaches the script verbatim, whatever it contains. One rendered
//! text serves a whole batch of instances of one account, region and platform: nothing in it is
//! per-instance; the scripts read the instance id from IMDSv2 and use it as the Arc resource name.
//!
//! What a script does, on both platforms:
//! 1. Deletes its own file from SSM's orchestration directory (the text holds the access token).
//! 2. Reads the instance id through IMDSv2, never through the proxy.
//! 3. If an agent is installed, compares the resource `azcmagent show -j` names with ours: ours and
//!    `Connected` is outcome `already-connected`; another resource is `connected-elsewhere` (left alone);
//!    `Disconnected` or `Expired` is a failure of step `check` (the owner must reconnect or disconnect it).
//! 4. Downloads the installer (https only, redirects too, except on loopback hosts for tests) into a
//!    private temporary directory that is removed on exit, checks its pinned SHA-256, runs it (`--proxy` /
//!    `-Proxy` when set), then sets `proxy.url` (proxy mode) or clears a stale one (public mode).
//! 5. `azcmagent connect ... --resource-name <instance id> --config <0600 file holding the token>`; the
//!    file is deleted right after. Exit 67 (already connected) is checked with `azcmagent show` as in 3.
//! 6. Prints a few log lines and the [`RESULT_MARKER`] line last (well under the 2,500 characters
//!    `ListCommandInvocations` returns); the installer's and agent's full logs stay on the instance.
//!
//! Exit codes mean something only together with the step that produced them ([`failure_reason`]): the
//! scripts' own codes ([`EXIT_IMDS`] ...) collide with the agent's (1 to 6, and the AZCM numbers) and the
//! Linux installer's (1, and 127 to 255). The access token is a short-lived ARM token (never the client
//! secret); the scripts never print it. Test hooks (never set by SSM): the Linux script reads the IMDS
//! endpoint from `ARC_ONBOARD_IMDS`, the systemd runtime directory it checks from
//! `ARC_ONBOARD_SYSTEMD_DIR` and its log directory from `ARC_ONBOARD_LOG_DIR`; the Windows script reads
//! `ARC_ONBOARD_IMDS` and `ARC_ONBOARD_LOG_DIR`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The Linux template (bash).
const LINUX_TEMPLATE: &str = include_str!("linux.sh");
/// The Windows template (64-bit PowerShell).
const WINDOWS_TEMPLATE: &str = include_str!("windows.ps1");
/// The template line the assignment block replaces.
const PARAMETERS_PLACEHOLDER: &str = "#@ARC_ONBOARD_PARAMETERS@\n";

/// The marker that starts the machine-readable result line the scripts print last.
pub const RESULT_MARKER: &str = "ARC_ONBOARD_RESULT";

/// Script exit code (step `imds`): the instance id could not be read from IMDSv2.
pub const EXIT_IMDS: i32 = 3;
/// Script exit code (step `download`): the installer could not be downloaded, or failed its SHA-256 pin.
pub const EXIT_DOWNLOAD: i32 = 4;
/// Script exit code (step `install` or `connect`): no agent after the installer, or the private connect
/// configuration file could not be written.
pub const EXIT_INSTALL: i32 = 5;
/// Script exit code (step `platform`): unsupported platform (Linux: no systemd, or not x86_64/aarch64, or
/// no curl; Windows: not 64-bit PowerShell).
pub const EXIT_UNSUPPORTED: i32 = 6;
/// Script exit code (step `check`): the agent belongs to a resource and is `Disconnected` or `Expired`.
pub const EXIT_AGENT_STATE: i32 = 8;

/// Everything a script needs; one script text serves a batch of up to 50 instances of one account, region
/// and platform, so nothing per-instance is in it (the instance id is read on the instance via IMDSv2).
/// Its `Debug` output hides the access token.
#[derive(Clone, PartialEq)]
pub struct InstallParams<'a> {
    /// Azure subscription id.
    pub subscription_id: &'a str,
    /// Resource group of the Arc machines.
    pub resource_group: &'a str,
    /// Azure region of the Arc machines.
    pub location: &'a str,
    /// Entra tenant id.
    pub tenant_id: &'a str,
    /// `AzureCloud` | `AzureUSGovernment` | `AzureChinaCloud`.
    pub cloud: &'a str,
    /// Correlation id passed to `azcmagent connect` (left out when empty).
    pub correlation_id: &'a str,
    /// Tags of the Arc machines; already includes `AwsAccountId` and `AwsRegion`. Keys and values must not
    /// contain `,` or `'`, which `--tags` cannot carry (see [`tags_arg`]).
    pub tags: &'a BTreeMap<String, String>,
    /// Short-lived ARM access token; NEVER the client secret.
    pub access_token: &'a str,
    /// HTTP proxy for the download and the agent, if any.
    pub proxy_url: Option<&'a str>,
    /// Where to download the agent installer from (`https://`, or `http://` on a loopback host).
    pub installer_url: &'a str,
    /// The installer's pinned SHA-256 (64 hex digits), checked on the instance before it runs.
    pub installer_sha256: Option<&'a str>,
    /// `reconnect-agent` (`ARC_RECONNECT=1`): an agent of our subscription and resource group that is
    /// `Expired`, `Disconnected`, or `Connected` under another instance's name (a clone) is disconnected
    /// locally (`azcmagent disconnect --force-local-only`) and connected anew under this instance's id.
    /// Never an agent of another subscription or resource group.
    pub reconnect: bool,
}

impl std::fmt::Debug for InstallParams<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallParams")
            .field("subscription_id", &self.subscription_id)
            .field("resource_group", &self.resource_group)
            .field("location", &self.location)
            .field("tenant_id", &self.tenant_id)
            .field("cloud", &self.cloud)
            .field("correlation_id", &self.correlation_id)
            .field("tags", &self.tags)
            .field("access_token", &"[redacted]")
            .field("proxy_url", &self.proxy_url)
            .field("installer_url", &self.installer_url)
            .field("installer_sha256", &self.installer_sha256)
            .field("reconnect", &self.reconnect)
            .finish()
    }
}

/// What a script reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScriptOutcome {
    /// The machine was connected by this run.
    Connected,
    /// The agent was already connected to our resource (found by `azcmagent show`, also after exit 67).
    AlreadyConnected,
    /// The agent is connected to another Arc resource; it was left alone.
    ConnectedElsewhere,
    /// Something failed; see the step, code, exit code and message.
    Failed,
}

/// The machine-readable last line the scripts print:
/// `ARC_ONBOARD_RESULT {"outcome":"connected"|"already-connected"|"connected-elsewhere"|"failed",
/// "exit_code":N,"step":"...","code":"...","message":"...","resource_id":"..."}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptResult {
    /// The outcome.
    pub outcome: ScriptOutcome,
    /// The exit code of the step's command (the installer's, the agent's) or the script's own code; 0 for
    /// the successes.
    pub exit_code: i32,
    /// The step that decided the outcome: `platform`, `imds`, `check`, `download`, `install`,
    /// `proxy-config`, `connect` (Windows also `unexpected`).
    #[serde(default)]
    pub step: String,
    /// A short machine-readable code: `checksum-mismatch`, `agent-disconnected`, `AZCM0041`, ...
    #[serde(default)]
    pub code: String,
    /// A readable message (never contains the access token).
    #[serde(default)]
    pub message: String,
    /// The Arc resource the agent is connected to, when the script read one (`azcmagent show`).
    #[serde(default)]
    pub resource_id: String,
}

impl ScriptResult {
    /// Whether the run left the machine as it should be (connected to ours, or left alone elsewhere).
    pub fn succeeded(&self) -> bool {
        self.outcome != ScriptOutcome::Failed
    }
}

/// The `--tags` value: `K=V,K2=V2`, sorted by key (the map's order); empty for no tags. A name or value
/// holding a space, `=` or `"` is put in single quotes, as `azcmagent connect` documents for spaces
/// (`Owner='Shared Infrastructure Services'`). Commas and single quotes cannot be carried at all; the
/// configuration refuses them.
pub fn tags_arg(tags: &BTreeMap<String, String>) -> String {
    fn quoted(s: &str) -> String {
        if s.chars().any(|c| c.is_whitespace() || c == '=' || c == '"') {
            format!("'{s}'")
        } else {
            s.to_owned()
        }
    }
    tags.iter()
        .map(|(k, v)| format!("{}={}", quoted(k), quoted(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Characters a tag name or value may not hold because `--tags` cannot carry them.
pub const TAG_UNCARRIABLE: &[char] = &[',', '\''];

/// `curl --proto` for the installer download: https only, and plain http too only when the installer URL
/// itself is `http://` (the configuration allows that only on loopback hosts, for tests and demos).
pub fn download_protocols(installer_url: &str) -> &'static str {
    if installer_url.starts_with("http://") {
        "=http,https"
    } else {
        "=https"
    }
}

/// The parameters in assignment order: variable name and value.
fn parameters(p: &InstallParams) -> [(&'static str, String); 13] {
    [
        ("ARC_SUBSCRIPTION_ID", p.subscription_id.to_owned()),
        ("ARC_RESOURCE_GROUP", p.resource_group.to_owned()),
        ("ARC_LOCATION", p.location.to_owned()),
        ("ARC_TENANT_ID", p.tenant_id.to_owned()),
        ("ARC_CLOUD", p.cloud.to_owned()),
        ("ARC_CORRELATION_ID", p.correlation_id.to_owned()),
        ("ARC_TAGS", tags_arg(p.tags)),
        ("ARC_ACCESS_TOKEN", p.access_token.to_owned()),
        ("ARC_PROXY_URL", p.proxy_url.unwrap_or_default().to_owned()),
        ("ARC_INSTALLER_URL", p.installer_url.to_owned()),
        (
            "ARC_INSTALLER_SHA256",
            p.installer_sha256.unwrap_or_default().to_owned(),
        ),
        (
            "ARC_DOWNLOAD_PROTOCOLS",
            download_protocols(p.installer_url).to_owned(),
        ),
        (
            "ARC_RECONNECT",
            if p.reconnect { "1" } else { "" }.to_owned(),
        ),
    ]
}

/// The Linux assignment block: `NAME='value'` lines.
fn linux_assignments(p: &InstallParams) -> String {
    parameters(p)
        .iter()
        .map(|(name, value)| format!("{name}={}\n", sh_quote(value)))
        .collect()
}

/// The Windows assignment block: `$NAME = 'value'` lines.
fn windows_assignments(p: &InstallParams) -> String {
    parameters(p)
        .iter()
        .map(|(name, value)| format!("${name} = {}\n", ps_quote(value)))
        .collect()
}

/// The bash script for `AWS-RunShellScript`.
pub fn render_linux(p: &InstallParams) -> String {
    LINUX_TEMPLATE.replacen(PARAMETERS_PLACEHOLDER, &linux_assignments(p), 1)
}

/// The PowerShell script for `AWS-RunPowerShellScript`.
pub fn render_windows(p: &InstallParams) -> String {
    WINDOWS_TEMPLATE.replacen(PARAMETERS_PLACEHOLDER, &windows_assignments(p), 1)
}

/// POSIX single-quote quoting: `a'b` becomes `'a'\''b'`. NUL characters, which no shell variable can hold,
/// are dropped.
pub fn sh_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("'\\''"),
            '\0' => {}
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// PowerShell single-quote quoting: `a'b` becomes `'a''b'`. PowerShell also treats U+2018, U+2019, U+201A
/// and U+201B as single quotes, so those are doubled too. NUL characters are dropped.
pub fn ps_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' => {
                out.push(c);
                out.push(c);
            }
            '\0' => {}
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Finds the result line in a script's (possibly truncated) standard output: the last line holding a
/// [`RESULT_MARKER`] followed by a complete result object wins. The marker may start anywhere in a line;
/// text after the object is ignored; lines whose object is truncated or garbled are skipped.
pub fn parse_result(stdout: &str) -> Option<ScriptResult> {
    stdout.lines().rev().find_map(parse_line)
}

/// The result on one line, trying the marker's occurrences from the last.
fn parse_line(line: &str) -> Option<ScriptResult> {
    line.rmatch_indices(RESULT_MARKER).find_map(|(at, marker)| {
        let rest = line[at + marker.len()..].trim_start();
        serde_json::Deserializer::from_str(rest)
            .into_iter::<ScriptResult>()
            .next()?
            .ok()
    })
}

/// The Connected Machine agent's own exit codes (its error table), shared by `azcmagent connect` and
/// `azcmagent config`.
fn agent_reason(code: i32) -> Option<&'static str> {
    Some(match code {
        1 => "the agent reported a general failure",
        2 => "the agent does not support this operating system or configuration",
        3 => "the agent's proxy service is not running",
        4 => "the agent could not open its log file",
        5 => "the agent failed to initialise",
        6 => "the agent's configuration could not be read",
        12 => "the access token is invalid or expired",
        16 => "a required parameter is missing",
        20 => "the location is unknown or not supported",
        26 => "network error: Azure endpoints are unreachable",
        41 => "the credentials were rejected",
        42 => "the Azure resource could not be created",
        44 => "a resource with that name already exists",
        62 => "the connection failed",
        67 => "the machine is already connected",
        _ => return None,
    })
}

/// A readable reason for `exit_code` as produced by the script's `step`; `None` when that step does not
/// document the code. The same number means different things in different steps: 4 from `download` is the
/// script's "cannot download", 4 from `connect` is the agent's "cannot open its log file".
pub fn failure_reason(step: &str, exit_code: i32) -> Option<&'static str> {
    match (step, exit_code) {
        ("platform", EXIT_UNSUPPORTED) => Some(
            "unsupported platform (Linux needs systemd and curl on x86_64 or aarch64; Windows needs 64-bit PowerShell)",
        ),
        ("imds", EXIT_IMDS) => Some("cannot read the instance id from IMDSv2"),
        ("download", EXIT_DOWNLOAD) => {
            Some("cannot download the agent installer, or it failed its SHA-256 pin")
        }
        ("install", EXIT_INSTALL) => Some("the agent is missing after the installer ran"),
        ("install", 1) => Some("the agent installer failed"),
        ("install", 127..=255) => Some("the agent installer failed with one of its own codes (127 to 255)"),
        ("check", EXIT_AGENT_STATE) => Some(
            "the agent belongs to an Arc resource but is Disconnected or Expired; its owner must reconnect or disconnect it",
        ),
        ("proxy-config" | "connect", code) => agent_reason(code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    const TOKEN: &str = "eyJ0eXAiOiJKV1Qi.fake-arm-token.sig";

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
            installer_url: "https://gbl.his.arc.azure.com/azcmagent-linux",
            installer_sha256: None,
            reconnect: false,
        }
    }

    fn hostile_values(dir: &std::path::Path) -> Vec<String> {
        let pwned = dir.join("pwned");
        let pwned = pwned.display();
        vec![
            "it's".to_owned(),
            "say \"hi\"".to_owned(),
            format!("$(touch {pwned})"),
            format!("`touch {pwned}`"),
            format!("first line\nsecond line\n$(touch {pwned})\n"),
            format!("a; touch {pwned}; b"),
            r"back\slash\".to_owned(),
            "'$HOME'".to_owned(),
            "\u{2018}left\u{2019} \u{201A}low\u{201B} \u{201C}double\u{201D}".to_owned(),
            String::new(),
            "'".to_owned(),
            "''\\''".to_owned(),
            "\"$HOME\" ${HOME} $HOME $$ $? $1".to_owned(),
            "!! !$ history".to_owned(),
            "\r\ttab\u{7}".to_owned(),
            "*?[a-z] ~ {a,b}".to_owned(),
            "-n".to_owned(),
            format!("' ; touch {pwned} ; '"),
            "ünïcødé 日本 🦀".to_owned(),
        ]
    }

    #[test]
    fn hostile_values_reach_bash_verbatim() {
        let dir = tempfile::tempdir().unwrap();
        let values = hostile_values(dir.path());
        let names: Vec<&str> = parameters(&realistic(&BTreeMap::new(), None))
            .iter()
            .map(|(name, _)| *name)
            .collect();
        let print = format!(
            "printf '%s\\0' {}\n",
            names
                .iter()
                .map(|n| format!("\"${n}\""))
                .collect::<Vec<_>>()
                .join(" ")
        );

        let mut script = String::new();
        let mut expected: Vec<String> = Vec::new();
        for rotation in 0..values.len() {
            let v = |i: usize| values[(i + rotation) % values.len()].as_str();
            let tags = BTreeMap::from([("Name".to_owned(), v(6).to_owned())]);
            let p = InstallParams {
                subscription_id: v(0),
                resource_group: v(1),
                location: v(2),
                tenant_id: v(3),
                cloud: v(4),
                correlation_id: v(5),
                tags: &tags,
                access_token: v(7),
                proxy_url: Some(v(8)).filter(|s| !s.is_empty()),
                installer_url: v(9),
                installer_sha256: Some(v(10)),
                reconnect: rotation % 2 == 1,
            };
            script.push_str(&linux_assignments(&p));
            script.push_str(&print);
            expected.extend(parameters(&p).into_iter().map(|(_, value)| value));
            assert_eq!(expected[expected.len() - 7], tags_arg(&tags));
        }

        let mut child = Command::new("/bin/bash")
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run /bin/bash");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "bash failed: {out:?}"
        );
        let got: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
            .collect();
        // printf ends every value with a NUL, so the split leaves one empty tail.
        assert_eq!(got.len(), expected.len() + 1);
        for (i, (got, want)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(got, want, "value {i} ({})", names[i % names.len()]);
        }
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "a value ran a command"
        );
    }

    #[test]
    fn sh_quote_examples() {
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("abc"), "'abc'");
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        assert_eq!(sh_quote("$(x) `y` \"z\" \\"), r#"'$(x) `y` "z" \'"#);
        assert_eq!(sh_quote("a\0b"), "'ab'");
        assert_eq!(sh_quote("a\nb"), "'a\nb'");
    }

    // pwsh cannot be installed in this build environment, so the PowerShell quoting is checked by its rules:
    // inside '...' only the single-quote characters (', U+2018, U+2019, U+201A, U+201B) are special, and a
    // doubled one stands for itself.
    #[test]
    fn ps_quote_examples() {
        assert_eq!(ps_quote(""), "''");
        assert_eq!(ps_quote("abc"), "'abc'");
        assert_eq!(ps_quote("a'b"), "'a''b'");
        assert_eq!(ps_quote("'"), "''''");
        assert_eq!(
            ps_quote("\u{2018}x\u{2019}"),
            "'\u{2018}\u{2018}x\u{2019}\u{2019}'"
        );
        assert_eq!(
            ps_quote("\u{201A}\u{201B}"),
            "'\u{201A}\u{201A}\u{201B}\u{201B}'"
        );
        // Double quotes (also the curly ones), `$`, backticks, `;` and newlines are literal in '...'.
        assert_eq!(
            ps_quote("\"$(x)\" `n ; \u{201C}\u{201D}\nnext"),
            "'\"$(x)\" `n ; \u{201C}\u{201D}\nnext'"
        );
        assert_eq!(ps_quote("a\0b"), "'ab'");
    }

    /// Undoes `ps_quote` by PowerShell's tokenizer rule for single-quoted strings.
    fn ps_unquote(quoted: &str) -> Option<String> {
        let is_quote =
            |c: char| matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}');
        let mut chars = quoted.chars();
        if !chars.next().is_some_and(is_quote) {
            return None;
        }
        let mut out = String::new();
        while let Some(c) = chars.next() {
            if is_quote(c) {
                match chars.next() {
                    Some(d) if is_quote(d) => out.push(d),
                    // The closing quote must be the very end: anything after it would be code.
                    None => return Some(out),
                    Some(_) => return None,
                }
            } else {
                out.push(c);
            }
        }
        None
    }

    #[test]
    fn ps_quote_round_trips_through_the_tokenizer_rule() {
        let dir = tempfile::tempdir().unwrap();
        for value in hostile_values(dir.path()) {
            assert_eq!(
                ps_unquote(&ps_quote(&value)).as_deref(),
                Some(value.as_str())
            );
        }
    }

    #[test]
    fn parse_result_takes_the_last_complete_line() {
        let out = "installing\n\
            ARC_ONBOARD_RESULT {\"outcome\":\"failed\",\"exit_code\":4,\"step\":\"download\",\"message\":\"x\"}\n\
            noise\n\
            ARC_ONBOARD_RESULT {\"outcome\":\"connected\",\"exit_code\":0,\"step\":\"connect\",\"message\":\"connected as i-1\"}\r\n";
        let r = parse_result(out).unwrap();
        assert_eq!(r.outcome, ScriptOutcome::Connected);
        assert_eq!(r.exit_code, 0);
        assert_eq!(r.step, "connect");
        assert_eq!(r.message, "connected as i-1");
        assert!(r.succeeded());

        let mid_line = "progress...ARC_ONBOARD_RESULT {\"outcome\":\"already-connected\",\"exit_code\":0,\"step\":\"check\",\"message\":\"m\"} trailing";
        let r = parse_result(mid_line).unwrap();
        assert_eq!(r.outcome, ScriptOutcome::AlreadyConnected);

        let escaped = r#"ARC_ONBOARD_RESULT {"outcome":"failed","exit_code":41,"step":"connect","message":"a \"q\" \\ ARC_ONBOARD_RESULT"}"#;
        let r = parse_result(escaped).unwrap();
        assert_eq!(r.exit_code, 41);
        assert_eq!(r.message, r#"a "q" \ ARC_ONBOARD_RESULT"#);
        assert!(!r.succeeded());
    }

    #[test]
    fn parse_result_handles_truncation_garbage_and_absence() {
        // SSM keeps the beginning of long output: the result line may be cut.
        let truncated = "log\nARC_ONBOARD_RESULT {\"outcome\":\"connected\",\"exit_co";
        assert_eq!(parse_result(truncated), None);
        let cut_after_complete = "ARC_ONBOARD_RESULT {\"outcome\":\"failed\",\"exit_code\":5,\"step\":\"install\",\"message\":\"m\"}\nARC_ONBOARD_RESULT {\"outc";
        assert_eq!(parse_result(cut_after_complete).unwrap().exit_code, 5);
        // Output whose beginning was lost still has its last line.
        let head_lost = "ne 12\nARC_ONBOARD_RESULT {\"outcome\":\"failed\",\"exit_code\":12,\"step\":\"connect\",\"message\":\"\"}";
        assert_eq!(parse_result(head_lost).unwrap().exit_code, 12);

        assert_eq!(parse_result(""), None);
        assert_eq!(parse_result("no result here\nat all\n"), None);
        assert_eq!(parse_result("ARC_ONBOARD_RESULT"), None);
        assert_eq!(parse_result("ARC_ONBOARD_RESULT not json"), None);
        assert_eq!(
            parse_result("ARC_ONBOARD_RESULT {\"outcome\":\"exploded\",\"exit_code\":1}"),
            None
        );
        assert_eq!(
            parse_result("ARC_ONBOARD_RESULT {\"outcome\":\"failed\",\"exit_code\":\"x\"}"),
            None
        );
        assert_eq!(parse_result("ARC_ONBOARD_RESULT [1,2]"), None);
        assert_eq!(
            parse_result("\u{0}\u{1}binary ARC_ONBOARD_RESULT {{{"),
            None
        );
        // step and message are optional.
        let minimal =
            parse_result("ARC_ONBOARD_RESULT {\"outcome\":\"failed\",\"exit_code\":62}").unwrap();
        assert_eq!((minimal.step.as_str(), minimal.message.as_str()), ("", ""));
    }

    #[test]
    fn result_line_round_trips() {
        let r = ScriptResult {
            outcome: ScriptOutcome::ConnectedElsewhere,
            exit_code: 0,
            step: "check".into(),
            code: "connected-elsewhere".into(),
            message: "m".into(),
            resource_id: "/subscriptions/s/resourceGroups/other/providers/Microsoft.HybridCompute/machines/i-1".into(),
        };
        let line = format!("{RESULT_MARKER} {}", serde_json::to_string(&r).unwrap());
        assert!(line.contains("\"outcome\":\"connected-elsewhere\""));
        assert_eq!(parse_result(&line), Some(r));
    }

    #[test]
    fn the_same_exit_code_means_what_its_step_says() {
        // 4: the script's download failure, the agent's log file, and nothing in imds.
        assert!(failure_reason("download", 4).unwrap().contains("download"));
        assert!(failure_reason("connect", 4).unwrap().contains("log file"));
        assert!(failure_reason("proxy-config", 4)
            .unwrap()
            .contains("log file"));
        assert_eq!(failure_reason("imds", 4), None);
        // 3: IMDS in imds, the agent's proxy service in connect and proxy-config.
        assert!(failure_reason("imds", 3).unwrap().contains("IMDS"));
        assert!(failure_reason("connect", 3)
            .unwrap()
            .contains("proxy service"));
        // 5 and 6 likewise.
        assert!(failure_reason("install", 5).unwrap().contains("missing"));
        assert!(failure_reason("connect", 5).unwrap().contains("initialise"));
        assert!(failure_reason("platform", 6)
            .unwrap()
            .contains("unsupported"));
        assert!(failure_reason("connect", 6)
            .unwrap()
            .contains("configuration"));
        // The installer: 1 and its own 127 to 255.
        assert!(failure_reason("install", 1)
            .unwrap()
            .contains("installer failed"));
        assert!(failure_reason("install", 200)
            .unwrap()
            .contains("own codes"));
        assert_eq!(failure_reason("install", 41), None);
        // AZCM codes only where the agent produced them.
        for code in [12, 16, 20, 26, 41, 42, 44, 62, 67] {
            assert!(failure_reason("connect", code).is_some(), "{code}");
            assert_eq!(failure_reason("download", code), None, "{code}");
        }
        assert!(failure_reason("connect", 12).unwrap().contains("token"));
        assert!(failure_reason("connect", 44).unwrap().contains("exists"));
        assert!(failure_reason("check", 8)
            .unwrap()
            .contains("Disconnected or Expired"));
        for code in [-1, 0, 9, 43, 255] {
            assert_eq!(failure_reason("connect", code), None, "{code}");
        }
    }

    #[test]
    fn tags_holding_spaces_quotes_or_equals_are_single_quoted() {
        let tags = BTreeMap::from([
            (
                "Owner".to_owned(),
                "Shared Infrastructure Services".to_owned(),
            ),
            ("Note".to_owned(), "say \"hi\" a=b".to_owned()),
            ("Cost Center".to_owned(), "42".to_owned()),
            ("Env".to_owned(), "prod".to_owned()),
        ]);
        assert_eq!(
            tags_arg(&tags),
            "'Cost Center'=42,Env=prod,Note='say \"hi\" a=b',Owner='Shared Infrastructure Services'"
        );
    }

    #[test]
    fn downloads_are_https_only_unless_the_url_itself_is_plain_http() {
        assert_eq!(
            download_protocols("https://gbl.his.arc.azure.com/azcmagent-linux"),
            "=https"
        );
        assert_eq!(
            download_protocols("http://127.0.0.1:8080/azcmagent-linux"),
            "=http,https"
        );
        let tags = BTreeMap::new();
        let linux = render_linux(&realistic(&tags, None));
        assert!(linux.contains("\nARC_DOWNLOAD_PROTOCOLS='=https'\n"));
        assert!(linux.contains(
            "--proto \"$ARC_DOWNLOAD_PROTOCOLS\" --proto-redir \"$ARC_DOWNLOAD_PROTOCOLS\""
        ));
    }

    #[test]
    fn templates_use_the_documented_exit_codes() {
        for (name, code) in [
            ("EXIT_IMDS", EXIT_IMDS),
            ("EXIT_DOWNLOAD", EXIT_DOWNLOAD),
            ("EXIT_INSTALL", EXIT_INSTALL),
            ("EXIT_UNSUPPORTED", EXIT_UNSUPPORTED),
            ("EXIT_AGENT_STATE", EXIT_AGENT_STATE),
        ] {
            assert!(
                LINUX_TEMPLATE.contains(&format!("\n{name}={code}\n")),
                "{name}"
            );
            let ps_name: String = name
                .split('_')
                .map(|w| w[..1].to_owned() + &w[1..].to_lowercase())
                .collect();
            assert!(
                WINDOWS_TEMPLATE.contains(&format!("\n${ps_name} = {code}\n")),
                "{ps_name}"
            );
        }
    }

    #[test]
    fn rendered_scripts_fill_the_assignment_block() {
        let tags = realistic_tags();
        let p = realistic(&tags, Some("http://proxy.internal:3128"));
        let linux = render_linux(&p);
        let windows = render_windows(&p);
        for script in [&linux, &windows] {
            assert!(!script.contains("@ARC_ONBOARD_"), "placeholder left");
            // The token is only assigned, never echoed or logged.
            assert_eq!(script.matches(TOKEN).count(), 1);
        }
        assert!(linux.starts_with("#!/bin/bash\n"));
        assert!(!linux.contains("set -x"));
        assert!(!windows.contains("Set-PSDebug"));
        assert!(linux.contains(&linux_assignments(&p)));
        assert!(windows.contains(&windows_assignments(&p)));
        assert!(linux.contains(
            "\nARC_TAGS='AwsAccountId=123456789012,AwsRegion=eu-west-1,Owner='\\''platform team'\\'''\n"
        ));
        assert!(linux.contains("\nARC_PROXY_URL='http://proxy.internal:3128'\n"));
        assert!(windows.contains("\n$ARC_RESOURCE_GROUP = 'aws_123456789012'\n"));
        assert!(windows.contains("\n$ARC_PROXY_URL = 'http://proxy.internal:3128'\n"));
        assert!(windows.contains(&format!("\n$ARC_ACCESS_TOKEN = '{TOKEN}'\n")));

        let no_proxy = render_linux(&realistic(&tags, None));
        assert!(no_proxy.contains("\nARC_PROXY_URL=''\n"));
        let empty_tags = BTreeMap::new();
        assert!(render_windows(&realistic(&empty_tags, None)).contains("\n$ARC_TAGS = ''\n"));
        // The block sits at the top, right after the header comments, in the documented order.
        let first_assignment = linux.lines().position(|l| l.starts_with("ARC_")).unwrap();
        let names: Vec<&str> = linux
            .lines()
            .skip(first_assignment)
            .take(12)
            .map(|l| l.split('=').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
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
                "ARC_DOWNLOAD_PROTOCOLS"
            ]
        );
        assert!(linux
            .lines()
            .take(first_assignment)
            .all(|l| l.starts_with('#')));
    }

    #[test]
    fn debug_hides_the_access_token() {
        let tags = realistic_tags();
        let shown = format!("{:?}", realistic(&tags, None));
        assert!(
            !shown.contains(TOKEN) && shown.contains("[redacted]"),
            "{shown}"
        );
        assert!(shown.contains("aws_123456789012"));
    }

    #[test]
    fn tags_arg_joins_sorted_pairs() {
        assert_eq!(tags_arg(&BTreeMap::new()), "");
        let tags = BTreeMap::from([
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "1".to_owned()),
        ]);
        assert_eq!(tags_arg(&tags), "a=1,b=2");
    }

    /// Runs `shellcheck -s bash` on a script; missing shellcheck is a failure, not a skip.
    fn shellcheck(script: &str, severity: &str) {
        let mut child = match Command::new("shellcheck")
            .args(["-s", "bash", "-S", severity, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot run shellcheck ({e}); it is required by this test: apt-get install shellcheck"
            ),
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "shellcheck -S {severity} found problems:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn linux_script_passes_shellcheck() {
        let tags = realistic_tags();
        shellcheck(&render_linux(&realistic(&tags, None)), "style");
        shellcheck(
            &render_linux(&realistic(&tags, Some("http://proxy.internal:3128"))),
            "style",
        );
        // Hostile values only draw informational notes (e.g. `$HOME` in single quotes), never warnings.
        // Unicode quotes are left out here: shellcheck warns about any of them (SC1112) even inside '...';
        // that they arrive verbatim is checked with bash above.
        let dir = tempfile::tempdir().unwrap();
        let values = hostile_values(dir.path());
        let hostile_tags = BTreeMap::from([("Name".to_owned(), values[4].clone())]);
        let p = InstallParams {
            subscription_id: &values[0],
            resource_group: &values[1],
            location: &values[2],
            tenant_id: &values[3],
            cloud: &values[7],
            correlation_id: &values[12],
            tags: &hostile_tags,
            access_token: &values[5],
            proxy_url: Some(&values[17]),
            installer_url: &values[13],
            installer_sha256: Some(&values[14]),
            reconnect: true,
        };
        shellcheck(&render_linux(&p), "warning");
    }
}
