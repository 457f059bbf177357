//! Agent install scripts for SSM Run Command: rendering with per-shell quoting, and parsing their result.
//!
//! The scripts are templates kept beside this file (`linux.sh` for `AWS-RunShellScript`, `windows.ps1` for
//! `AWS-RunPowerShellScript`). Rendering only fills in the assignment block at the top: one quoted
//! assignment per parameter, so every value reaches the script verbatim, whatever it contains. One rendered
//! text serves a whole batch of instances of one account, region and platform: nothing in it is
//! per-instance; the scripts read the instance id from IMDSv2 and use it as the Arc resource name.
//!
//! # Two commands per batch: the token is sealed
//! No access token appears in plain text in any command parameter (so none is in SSM's command history,
//! CloudTrail, the SSM agent's log or PowerShell's script block log). Each batch gets two commands built
//! from the same template ([`Delivery`]):
//! - the **key exchange** ([`Delivery::KeyExchange`], `ARC_MODE=key-exchange`) runs steps 1 to 3 below as a
//!   preflight, then makes an ephemeral RSA-2048 key pair (`openssl genpkey`; .NET's RSA provider on
//!   Windows), keeps the private key in a root-only file (`/var/lib/arc-onboard/keys/<key id>.pem`,
//!   `%ProgramData%\arc-onboard\keys\<key id>.xml` for SYSTEM and Administrators only) and prints only
//!   the public key on a [`seal::KEY_MARKER`] line. An instance the preflight settles (already connected,
//!   connected elsewhere, unsupported) prints its result line instead and gets no token;
//! - only then is the token minted, and the **install** ([`Delivery::Sealed`], `ARC_MODE=install`) carries
//!   the connect configuration sealed to those keys ([`seal`]): each instance picks its own wrapped key by
//!   the instance id it reads from IMDSv2, opens the configuration straight into the private `--config`
//!   file right before `connect`, deletes that file right after, and deletes the private key however the
//!   script ends.
//!
//! What a script does, on both platforms:
//! 1. Deletes its own file from SSM's orchestration directory.
//! 2. Reads the instance id through IMDSv2, never through the proxy.
//! 3. If an agent is installed, compares the resource `azcmagent show -j` names with ours, reading only the
//!    top-level members of its JSON on both platforms (Linux: an awk reader; Windows: `ConvertFrom-Json`):
//!    ours and `Connected` is outcome `already-connected`; another resource is `connected-elsewhere` (left
//!    alone); `Disconnected` or `Expired` is a failure of step `check` (the owner must reconnect or
//!    disconnect it).
//! 3. If an agent is installed, compares the resource `azcmagent show -j` names with ours: ours and
//!    `Connected` is outcome `already-connected`; another resource is `connected-elsewhere` (left alone);
//!    `Disconnected` or `Expired` is a failure of step `check` (the owner must reconnect or disconnect it).
//!    The key exchange ends here with the public key.
//! 4. Downloads the installer (https only, redirects too, except on loopback hosts for tests) into a
//!    private temporary directory that is removed on exit, checks its pinned SHA-256, runs it (`--proxy` /
//!    `-Proxy` when set) with `--output` / `-OutFile`, whose `AZCM0xxx` code becomes the failure's code
//!    (the installers exit 1 whatever failed). Linux: `--tempdir` in the private directory, and the empty
//!    `/tmp/azcmagent.*` the installer always makes is removed. Windows: the script downloads the MSI
//!    itself, checks its pin and its Authenticode signer (Microsoft Corporation), and passes the local file
//!    (`-AltDownload`), with the installer's `TEMP` in the private directory; every wait is bounded. Then
//!    sets `proxy.url` (proxy mode) and records that it did; in public mode clears it only when it is the
//!    recorded one, and names one someone else set in the result message.
//! 5. `azcmagent connect ... --resource-name <instance id> --config <0600 file holding the token>` (plus
//!    `--gateway-id`, `--private-link-scope`, `--enable-automatic-upgrade` when set); the file is deleted
//!    right after. Exit 67 (already connected) is checked with `azcmagent show` as in 3.
//!    `-Proxy` when set), then sets `proxy.url` (proxy mode) or clears a stale one (public mode).
//! 5. `azcmagent connect ... --resource-name <instance id> --tags <tags>,AwsInstanceId=<instance id>
//!    --config <0600 file holding the token>` (the last tag is the per-instance ownership tag, see
//!    [`crate::model::ownership`]); the file is deleted right after. Exit 67 (already connected) is checked with `azcmagent show` as in 3.
//! 5. `azcmagent connect ... --resource-name <instance id> --config <0600 file holding the token>`, the
//!    file opened from the sealed token right before; it and the private key are deleted right after. Exit 67 (already connected) is checked with `azcmagent show` as in 3.
//! 6. Prints a few log lines and the [`RESULT_MARKER`] line last (well under the 2,500 characters
//!    `ListCommandInvocations` returns); the installer's and agent's full logs stay on the instance.
//!
//! Exit codes mean something only together with the step that produced them ([`failure_reason`]): the
//! scripts' own codes ([`EXIT_IMDS`] ...) collide with the agent's (1 to 6, and the AZCM numbers) and the
//! Linux installer's (1, and 127 to 255). A script never exits with a code SSM takes as "reboot and run
//! again" ([`SSM_REBOOT_CODES`]): the result line keeps it, the script exits [`EXIT_REBOOT_CODE`]. The
//! Windows template holds none of PowerShell's script-block-logging signature words (tested against the
//! list in `tests/fixtures/powershell-signature-words.txt`). The access token is a short-lived ARM token (never the client
//! secret); the scripts never print it. Test hooks (never set by SSM): the Linux script reads the IMDS
//! endpoint from `ARC_ONBOARD_IMDS`, the systemd runtime directory it checks from
//! `ARC_ONBOARD_SYSTEMD_DIR`, its log directory from `ARC_ONBOARD_LOG_DIR`, its state directory (the
//! `proxy.url` it set) from `ARC_ONBOARD_STATE_DIR` and the directory the installer makes its own
//! temporary directory in from `ARC_ONBOARD_INSTALLER_TMP_ROOT`; the Windows script reads
//! `ARC_ONBOARD_IMDS` and `ARC_ONBOARD_LOG_DIR`.
//! Linux installer's (1, and 127 to 255). The access token is a short-lived ARM token (never the client
//! secret); the scripts never hold it outside the private `--config` file and never print it. Test hooks
//! (never set by SSM): the Linux script reads the IMDS endpoint from `ARC_ONBOARD_IMDS`, the systemd
//! runtime directory it checks from `ARC_ONBOARD_SYSTEMD_DIR`, its log directory from
//! `ARC_ONBOARD_LOG_DIR` and its key directory from `ARC_ONBOARD_KEY_DIR`; the Windows script reads
//! `ARC_ONBOARD_IMDS`, `ARC_ONBOARD_LOG_DIR` and `ARC_ONBOARD_KEY_DIR`.

pub mod seal;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use seal::SealedToken;

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
/// Script exit code (any step): the step's command exited with a code SSM Run Command takes as "reboot the
/// instance and run the command again" ([`SSM_REBOOT_CODES`]); the script exits with this instead, and
/// its result line carries the real code.
pub const EXIT_REBOOT_CODE: i32 = 9;
/// Exit codes after which SSM reboots the instance and reruns the command: 194 from a shell script, 3010
/// and 1641 from a PowerShell script. No script exits with them.
pub const SSM_REBOOT_CODES: [i32; 3] = [194, 3010, 1641];

/// Which of a batch's two commands a script is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery<'a> {
    /// The first command: each instance makes its key pair for exchange `key_id` and prints the public key.
    KeyExchange {
        /// Names the private key file on the instances (a UUID).
        key_id: &'a str,
    },
    /// The install: the connect configuration sealed to the keys of exchange `SealedToken::key_id`.
    Sealed(&'a SealedToken),
}

impl Delivery<'_> {
    /// `ARC_MODE`.
    fn mode(&self) -> &'static str {
        match self {
            Delivery::KeyExchange { .. } => "key-exchange",
            Delivery::Sealed(_) => "install",
        }
    }

    fn key_id(&self) -> &str {
        match self {
            Delivery::KeyExchange { key_id } => key_id,
            Delivery::Sealed(sealed) => &sealed.key_id,
        }
    }
}

/// Everything a script needs; one script text serves a batch of up to 50 instances of one account, region
/// and platform (the instance id is read on the instance via IMDSv2; the only per-instance values are the
/// wrapped keys of a sealed token, each of which opens only with that instance's private key).
#[derive(Debug, Clone, PartialEq)]
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
    /// Tags of the Arc machines; already includes the batch's ownership tags (`ManagedBy`, `AwsAccountId`,
    /// `AwsRegion`); the script appends `AwsInstanceId=<instance id>` on the instance. Keys and values must
    /// not contain `,` or `'`, which `--tags` cannot carry (see [`tags_arg`]).
    pub tags: &'a BTreeMap<String, String>,
    /// Which command: the key exchange, or the install with the sealed token.
    pub delivery: Delivery<'a>,
    /// HTTP proxy for the download and the agent, if any.
    pub proxy_url: Option<&'a str>,
    /// Where to download the agent installer from (`https://`, or `http://` on a loopback host).
    pub installer_url: &'a str,
    /// The installer's pinned SHA-256 (64 hex digits), checked on the instance before it runs.
    pub installer_sha256: Option<&'a str>,
    /// Windows only: where the script downloads the agent's MSI itself (`https://`, or `http://` on a
    /// loopback host); it checks the MSI's Authenticode signature and hands Microsoft's installer the
    /// local, checked file. Not used on Linux.
    pub msi_url: &'a str,
    /// Windows only: the MSI's pinned SHA-256 (64 hex digits), checked before anything runs it.
    pub msi_sha256: Option<&'a str>,
    /// ARM id of the Arc gateway to connect through (`--gateway-id`), if any.
    pub gateway_id: Option<&'a str>,
    /// ARM id of the Arc private link scope (`--private-link-scope`), if any.
    pub private_link_scope: Option<&'a str>,
    /// Connect with `--enable-automatic-upgrade`.
    pub automatic_upgrade: bool,
    /// `reconnect-agent` (`ARC_RECONNECT=1`): an agent of our subscription and resource group that is
    /// `Expired`, `Disconnected`, or `Connected` under another instance's name (a clone) is disconnected
    /// locally (`azcmagent disconnect --force-local-only`) and connected anew under this instance's id.
    /// Never an agent of another subscription or resource group.
    pub reconnect: bool,
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

/// The parameters in assignment order: variable name and value. Sealed bytes are base64 for bash (openssl
/// decodes it) and hex for PowerShell (decoding base64 there takes a word PowerShell's log flags).
fn parameters(p: &InstallParams, encode: fn(&[u8]) -> String) -> [(&'static str, String); 19] {
    let (sealed_config, sealed_keys) = match p.delivery {
        Delivery::KeyExchange { .. } => (String::new(), String::new()),
        Delivery::Sealed(sealed) => (
            encode(&sealed.ciphertext),
            sealed
                .wrapped
                .iter()
                .map(|(id, key)| format!("{id}:{}", encode(key)))
                .collect::<Vec<_>>()
                .join(" "),
        ),
    };
    [
        ("ARC_SUBSCRIPTION_ID", p.subscription_id.to_owned()),
        ("ARC_RESOURCE_GROUP", p.resource_group.to_owned()),
        ("ARC_LOCATION", p.location.to_owned()),
        ("ARC_TENANT_ID", p.tenant_id.to_owned()),
        ("ARC_CLOUD", p.cloud.to_owned()),
        ("ARC_CORRELATION_ID", p.correlation_id.to_owned()),
        ("ARC_TAGS", tags_arg(p.tags)),
        ("ARC_MODE", p.delivery.mode().to_owned()),
        ("ARC_KEY_ID", p.delivery.key_id().to_owned()),
        ("ARC_SEALED_CONFIG", sealed_config),
        ("ARC_SEALED_KEYS", sealed_keys),
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
            "ARC_GATEWAY_ID",
            p.gateway_id.unwrap_or_default().to_owned(),
        ),
        (
            "ARC_PRIVATE_LINK_SCOPE",
            p.private_link_scope.unwrap_or_default().to_owned(),
        ),
        (
            "ARC_AUTOMATIC_UPGRADE",
            if p.automatic_upgrade { "true" } else { "" }.to_owned(),
        ),
        (
            "ARC_RECONNECT",
            if p.reconnect { "1" } else { "" }.to_owned(),
        ),
    ]
}

/// Standard base64.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// The Linux assignment block: `NAME='value'` lines.
fn linux_assignments(p: &InstallParams) -> String {
    parameters(p, base64)
        .iter()
        .map(|(name, value)| format!("{name}={}\n", sh_quote(value)))
        .collect()
}

/// The parameters only the Windows script has, assigned after [`parameters`]: the MSI it downloads itself.
fn windows_parameters(p: &InstallParams) -> [(&'static str, String); 3] {
    [
        ("ARC_MSI_URL", p.msi_url.to_owned()),
        (
            "ARC_MSI_SHA256",
            p.msi_sha256.unwrap_or_default().to_owned(),
        ),
        (
            "ARC_MSI_DOWNLOAD_PROTOCOLS",
            download_protocols(p.msi_url).to_owned(),
        ),
    ]
}

/// The Windows assignment block: `$NAME = 'value'` lines.
fn windows_assignments(p: &InstallParams) -> String {
    parameters(p, hex)
        .iter()
        .chain(windows_parameters(p).iter())
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
        (_, 194 | 3010 | 1641) => Some(
            "the step's command exited with a code SSM takes as \"reboot and run again\" (the script exited 9 instead, so the instance was not rebooted)",
        ),
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

/// What an error code of Microsoft's installers means (`AZCM0127` to `AZCM0157`, written to the Linux
/// installer's `--output` file and the Windows installer's `-OutFile`; both exit 1 whatever the code),
/// from the installers' own sources and Microsoft's troubleshooting table.
pub fn installer_reason(code: &str) -> Option<&'static str> {
    Some(match code {
        "AZCM0127" | "AZCM0128" | "AZCM0142" => "the installer's alternative download is unusable",
        "AZCM0129" => "the installer got a bad argument or an unwritable temporary directory",
        "AZCM0130" => "the agent requires systemd (systemctl not found)",
        "AZCM0131" | "AZCM0133" => {
            "the Linux distribution or its version is not supported by the agent"
        }
        "AZCM0132" | "AZCM0153" => "the platform or architecture is not supported by the agent",
        "AZCM0141" => "the installer refuses to run on an Azure virtual machine",
        "AZCM0143" => "the package manager failed to install the agent package",
        "AZCM0145" => "apt or dpkg stayed busy for 5 minutes",
        "AZCM0146" => {
            "the installer could not download Microsoft's package repository configuration"
        }
        "AZCM0147" => "the requested agent version is not in the package repository",
        "AZCM0148" => "the installer could not download the agent package",
        "AZCM0149" => "msiexec failed to install the agent package",
        "AZCM0150" => "the installer failed (generic failure)",
        "AZCM0151" => "the required .NET Framework version is not installed",
        "AZCM0154" => "the PowerShell version is too old for the agent",
        "AZCM0157" => "curl could not write the installer's download (permission error)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    const TOKEN: &str = "eyJ0eXAiOiJKV1Qi.fake-arm-token.sig";
    const KEY_ID: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

    /// A token sealed to a fresh key of instance `i-0123456789abcdef0`.
    fn sealed_token() -> SealedToken {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair as _;
        use base64::Engine;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let line = format!(
            "{} {{\"instance_id\":\"i-0123456789abcdef0\",\"key_id\":\"{KEY_ID}\",\"public_key\":\"{}\"}}",
            seal::KEY_MARKER,
            base64::engine::general_purpose::STANDARD
                .encode(pair.public_key().as_der().unwrap().as_ref())
        );
        let key = seal::parse_key(&line, "i-0123456789abcdef0", KEY_ID).unwrap();
        seal::seal(seal::connect_config(TOKEN).as_bytes(), KEY_ID, &[key]).unwrap()
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
    ) -> InstallParams<'a> {
        InstallParams {
            subscription_id: "00000000-1111-2222-3333-444444444444",
            resource_group: "aws_123456789012",
            location: "westeurope",
            tenant_id: "55555555-6666-7777-8888-999999999999",
            cloud: "AzureCloud",
            correlation_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            tags,
            delivery: Delivery::KeyExchange { key_id: KEY_ID },
            proxy_url: proxy,
            installer_url: "https://gbl.his.arc.azure.com/azcmagent-linux",
            installer_sha256: None,
            msi_url:
                "https://gbl.his.arc.azure.com/azcmagent/latest/AzureConnectedMachineAgent.msi",
            msi_sha256: None,
            gateway_id: None,
            private_link_scope: None,
            automatic_upgrade: false,
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
        let names: Vec<&str> = parameters(&realistic(&BTreeMap::new(), None), base64)
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
                delivery: Delivery::KeyExchange { key_id: v(7) },
                proxy_url: Some(v(8)).filter(|s| !s.is_empty()),
                installer_url: v(9),
                installer_sha256: Some(v(10)),
                msi_url: v(11),
                msi_sha256: Some(v(12)),
                gateway_id: Some(v(11)),
                private_link_scope: Some(v(12)),
                automatic_upgrade: rotation % 2 == 0,
                reconnect: rotation % 2 == 1,
            };
            script.push_str(&linux_assignments(&p));
            script.push_str(&print);
            expected.extend(parameters(&p, base64).into_iter().map(|(_, value)| value));
            assert_eq!(expected[expected.len() - 13], tags_arg(&tags));
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
            assert!(
                !script.contains("ARC_ACCESS_TOKEN"),
                "a plain token variable is back"
            );
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
        assert!(windows.contains("\n$ARC_MODE = 'key-exchange'\n"));
        assert!(linux.contains(&format!("\nARC_KEY_ID='{KEY_ID}'\n")));
        assert!(linux.contains("\nARC_SEALED_CONFIG=''\n"));

        let no_proxy = render_linux(&realistic(&tags, None));
        assert!(no_proxy.contains("\nARC_PROXY_URL=''\n"));
        let empty_tags = BTreeMap::new();
        assert!(render_windows(&realistic(&empty_tags, None)).contains("\n$ARC_TAGS = ''\n"));
        // The block sits at the top, right after the header comments, in the documented order.
        let first_assignment = linux.lines().position(|l| l.starts_with("ARC_")).unwrap();
        let names: Vec<&str> = linux
            .lines()
            .skip(first_assignment)
            .take(19)
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
                "ARC_MODE",
                "ARC_KEY_ID",
                "ARC_SEALED_CONFIG",
                "ARC_SEALED_KEYS",
                "ARC_PROXY_URL",
                "ARC_INSTALLER_URL",
                "ARC_INSTALLER_SHA256",
                "ARC_DOWNLOAD_PROTOCOLS",
                "ARC_GATEWAY_ID",
                "ARC_PRIVATE_LINK_SCOPE",
                "ARC_AUTOMATIC_UPGRADE",
                "ARC_RECONNECT",
            ]
        );
        assert!(linux
            .lines()
            .take(first_assignment)
            .all(|l| l.starts_with('#')));
    }

    #[test]
    fn install_scripts_carry_the_token_sealed_only() {
        let tags = realistic_tags();
        let sealed = sealed_token();
        let p = InstallParams {
            delivery: Delivery::Sealed(&sealed),
            ..realistic(&tags, None)
        };
        let (linux, windows) = (render_linux(&p), render_windows(&p));
        let wrapped = &sealed.wrapped["i-0123456789abcdef0"];
        assert!(linux.contains("\nARC_MODE='install'\n"));
        assert!(linux.contains(&format!(
            "\nARC_SEALED_CONFIG='{}'\n",
            base64(&sealed.ciphertext)
        )));
        assert!(linux.contains(&format!(
            "\nARC_SEALED_KEYS='i-0123456789abcdef0:{}'\n",
            base64(wrapped)
        )));
        assert!(windows.contains(&format!(
            "\n$ARC_SEALED_CONFIG = '{}'\n",
            hex::encode(&sealed.ciphertext)
        )));
        assert!(windows.contains(&format!(
            "\n$ARC_SEALED_KEYS = 'i-0123456789abcdef0:{}'\n",
            hex::encode(wrapped)
        )));
        for shown in [linux, windows, format!("{p:?}")] {
            assert!(!shown.contains(TOKEN), "the token is in plain text");
            assert!(
                !shown.contains("fake-arm-token"),
                "a piece of the token is in plain text"
            );
        }
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
            delivery: Delivery::KeyExchange { key_id: &values[5] },
            proxy_url: Some(&values[17]),
            installer_url: &values[13],
            installer_sha256: Some(&values[14]),
            msi_url: &values[15],
            msi_sha256: None,
            gateway_id: Some(&values[15]),
            private_link_scope: Some(&values[11]),
            automatic_upgrade: true,
            reconnect: true,
        };
        shellcheck(&render_linux(&p), "warning");
    }
}
