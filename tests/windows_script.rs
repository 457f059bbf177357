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
    download_protocols, render_windows, tags_arg, Delivery, InstallParams, SealedToken,
    EXIT_AGENT_STATE, EXIT_DOWNLOAD, EXIT_IMDS, EXIT_INSTALL, EXIT_UNSUPPORTED,
};
use serde::Deserialize;

const TOKEN: &str = "eyJ0eXAiOiJKV1Qi.fake-arm-token.sig";

/// A sealed token as the install command carries it (its bytes do not matter to the parse).
static SEALED: std::sync::LazyLock<SealedToken> = std::sync::LazyLock::new(|| SealedToken {
    key_id: "0f0e0d0c-0b0a-4908-8706-050403020100".into(),
    ciphertext: b"Salted__\x01\x02\x03\x04\x05\x06\x07\x08sealed bytes, 32 of them....".to_vec(),
    wrapped: BTreeMap::from([
        ("i-0123456789abcdef0".to_owned(), vec![0xab; 256]),
        ("i-0fedcba9876543210".to_owned(), vec![0x01; 256]),
    ]),
});
const SHA256: &str = "0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789abcdef";

/// The parameter variables, in the order the assignment block sets them.
const NAMES: [&str; 22] = [
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
    "ARC_MSI_URL",
    "ARC_MSI_SHA256",
    "ARC_MSI_DOWNLOAD_PROTOCOLS",
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
        delivery: Delivery::Sealed(&SEALED),
        proxy_url: proxy,
        installer_url,
        installer_sha256: Some(SHA256),
        msi_url: "https://gbl.his.arc.azure.com/azcmagent/latest/AzureConnectedMachineAgent.msi",
        msi_sha256: Some(SHA256),
        gateway_id: Some(GATEWAY),
        private_link_scope: None,
        automatic_upgrade: true,
        reconnect: false,
    }
}

const GATEWAY: &str = "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/net/providers/Microsoft.HybridCompute/gateways/gw1";

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

/// `v` in every parameter.
fn every_parameter<'a>(v: &'a str, tags: &'a BTreeMap<String, String>) -> InstallParams<'a> {
    InstallParams {
        subscription_id: v,
        resource_group: v,
        location: v,
        tenant_id: v,
        cloud: v,
        correlation_id: v,
        tags,
        delivery: Delivery::KeyExchange { key_id: v },
        proxy_url: Some(v),
        installer_url: v,
        installer_sha256: Some(v),
        msi_url: v,
        msi_sha256: Some(v),
        gateway_id: Some(v),
        private_link_scope: Some(v),
        automatic_upgrade: true,
        reconnect: true,
    }
}

/// The values the script must receive, by variable name.
fn expected_values(p: &InstallParams) -> [String; 22] {
    let (mode, key_id, config, keys) = match p.delivery {
        Delivery::KeyExchange { key_id } => ("key-exchange", key_id, String::new(), String::new()),
        Delivery::Sealed(sealed) => (
            "install",
            sealed.key_id.as_str(),
            hex::encode(&sealed.ciphertext),
            sealed
                .wrapped
                .iter()
                .map(|(id, k)| format!("{id}:{}", hex::encode(k)))
                .collect::<Vec<_>>()
                .join(" "),
        ),
    };
    [
        p.subscription_id.to_owned(),
        p.resource_group.to_owned(),
        p.location.to_owned(),
        p.tenant_id.to_owned(),
        p.cloud.to_owned(),
        p.correlation_id.to_owned(),
        tags_arg(p.tags),
        mode.to_owned(),
        key_id.to_owned(),
        config,
        keys,
        p.proxy_url.unwrap_or_default().to_owned(),
        p.installer_url.to_owned(),
        p.installer_sha256.unwrap_or_default().to_owned(),
        download_protocols(p.installer_url).to_owned(),
        p.gateway_id.unwrap_or_default().to_owned(),
        p.private_link_scope.unwrap_or_default().to_owned(),
        if p.automatic_upgrade { "true" } else { "" }.to_owned(),
        if p.reconnect { "1" } else { "" }.to_owned(),
        p.msi_url.to_owned(),
        p.msi_sha256.unwrap_or_default().to_owned(),
        download_protocols(p.msi_url).to_owned(),
    ]
}

/// Parses the rendered script and checks its top-level assignments: first the 22 parameters, in order,
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
    loopback.gateway_id = None;
    loopback.private_link_scope = Some(
        "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/net/providers/Microsoft.HybridCompute/privateLinkScopes/pls1",
    );
    loopback.automatic_upgrade = false;
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
        let p = every_parameter(v, &tags);
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
            delivery: Delivery::KeyExchange { key_id: v(7) },
            proxy_url: Some(v(8)),
            installer_url: v(9),
            installer_sha256: Some(v(10)),
            msi_url: v(12),
            msi_sha256: Some(v(13)),
            gateway_id: Some(v(12)),
            private_link_scope: Some(v(13)),
            automatic_upgrade: rotation % 2 == 1,
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
        "if ($SsmRebootCodes -contains $exitCode) {",
        "if ($SsmRebootCodes -contains $exitCode {",
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
    assert!(!script.contains(TOKEN), "a plain token in the script");
    assert!(!script.contains("ARC_ACCESS_TOKEN"));
    assert!(script.contains(&format!(
        "\n$ARC_SEALED_CONFIG = '{}'\n",
        hex::encode(&SEALED.ciphertext)
    )));
    assert!(!script.contains("--access-token"));
    assert!(script.contains("'--config'"));
    // The connect half of issue 19: each flag only when its parameter is set.
    for line in [
        "if ($ARC_GATEWAY_ID) { $connect += @('--gateway-id', $ARC_GATEWAY_ID) }",
        "if ($ARC_PRIVATE_LINK_SCOPE) { $connect += @('--private-link-scope', $ARC_PRIVATE_LINK_SCOPE) }",
        "if ($ARC_AUTOMATIC_UPGRADE -eq 'true') { $connect += @('--enable-automatic-upgrade') }",
    ] {
        assert!(script.contains(line), "{line}");
    }
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

/// PowerShell's script-block-logging signature words and their hashes, from the fixture copied out of
/// PowerShell's `CompiledScriptBlock.cs` (its header says where from and when).
fn signature_words() -> Vec<(u32, String)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/powershell-signature-words.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (hash, word) = l.split_once(' ').unwrap();
            (hash.parse().unwrap(), word.to_owned())
        })
        .collect()
}

/// PowerShell's pattern hash (`HashNewPattern`): h = 31 * h + the ASCII-lowercased character.
fn powershell_hash(word: &str) -> u32 {
    word.encode_utf16().fold(0u32, |h, c| {
        let c = if (u16::from(b'A')..=u16::from(b'Z')).contains(&c) {
            c | 0x20
        } else {
            c
        };
        h.wrapping_mul(31).wrapping_add(u32::from(c))
    })
}

/// `SuspiciousContentChecker.Match` as PowerShell runs it on a script block's text: a rolling hash over
/// each run of ASCII letters and `-` (case-insensitive), checked against the words' hashes at every
/// position, and once more over the last 29 letters at the end. Returns the word it finds.
fn powershell_match(text: &str, words: &[(u32, String)]) -> Option<String> {
    let lookup = |h: u32| words.iter().find(|(w, _)| *w == h).map(|(_, s)| s.clone());
    let check = |running: &[u32; 29], up_to: usize| {
        let up_to = if up_to == 0 || up_to > 29 { 29 } else { up_to };
        running[..up_to].iter().find_map(|h| lookup(*h))
    };
    let mut running = [0u32; 29];
    let mut longest = 0usize;
    for (i, c) in text.encode_utf16().enumerate() {
        let mut h = u32::from(c);
        if (u32::from(b'A')..=u32::from(b'Z')).contains(&h) {
            h |= 0x20;
        } else if !((u32::from(b'a')..=u32::from(b'z')).contains(&h) || h == u32::from(b'-')) {
            longest = 0;
            continue;
        }
        for j in (1..=i.min(28)).rev() {
            running[j] = running[j - 1].wrapping_mul(31).wrapping_add(h);
        }
        running[0] = h;
        longest += 1;
        if longest >= 4 {
            if let Some(found) = check(&running, longest) {
                return Some(found);
            }
        }
    }
    check(&running, 0)
}

/// The signature words `text` holds: PowerShell's own matching, and plain case-insensitive substrings
/// (stricter: also across characters PowerShell skips, and free of hash collisions).
fn signature_words_in(text: &str, words: &[(u32, String)]) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut found: Vec<String> = words
        .iter()
        .filter(|(_, w)| lower.contains(&w.to_lowercase()))
        .map(|(_, w)| w.clone())
        .collect();
    found.extend(powershell_match(text, words));
    found
}

#[test]
fn the_signature_word_fixture_is_powershells_list() {
    let words = signature_words();
    assert_eq!(words.len(), 119, "PowerShell's list has 119 words");
    for (hash, word) in &words {
        assert_eq!(
            powershell_hash(word),
            *hash,
            "{word} is not the word PowerShell hashes"
        );
    }
    // The matcher finds each word the way PowerShell does: inside a longer run, in any case, with the
    // hyphen of Add-Type, and at the very end of the text. (A word that holds a shorter one, such as
    // GetMethods, is reported as the shorter one, found first.) The words with digits (FromBase64String,
    // kernel32, ...) never match there: a digit ends PowerShell's run of letters. The plain substring
    // check of `signature_words_in` still refuses them.
    for (_, word) in &words {
        if !word.chars().all(|c| c.is_ascii_alphabetic() || c == '-') {
            assert_eq!(powershell_match(&format!("# {word}"), &words), None);
            assert_eq!(
                signature_words_in(&format!("# {word}"), &words),
                std::slice::from_ref(word)
            );
            continue;
        }
        for text in [
            format!("$x = 'a{}b'\n", word.to_uppercase()),
            format!("# {word}"),
            format!("Write-Output {}", word.to_lowercase()),
        ] {
            let found = powershell_match(&text, &words).unwrap_or_else(|| panic!("{text}"));
            assert!(
                word.to_lowercase().contains(&found.to_lowercase()),
                "{text}: {found}"
            );
        }
    }
    assert_eq!(powershell_match("Add Type Emi t x", &words), None);
    // PowerShell's last check runs over the final letters with whatever stood between them skipped.
    assert_eq!(
        powershell_match("Add Type Emi t", &words).as_deref(),
        Some("Emit")
    );
    assert_eq!(
        powershell_match("-ExecutionPolicy Bypass -File x", &words).as_deref(),
        Some("Bypass")
    );
}

#[test]
fn no_rendering_holds_a_powershell_signature_word() {
    let words = signature_words();
    let tags = realistic_tags();
    let empty = BTreeMap::new();
    let mut renderings = vec![
        (
            "public",
            render_windows(&realistic(&tags, None, "https://aka.ms/azcmagent-windows")),
        ),
        (
            "proxy",
            render_windows(&realistic(
                &tags,
                Some("http://proxy.internal:3128"),
                "https://aka.ms/azcmagent-windows",
            )),
        ),
    ];
    let mut unpinned = realistic(&empty, None, "http://127.0.0.1:8080/azcmagent-windows");
    unpinned.installer_sha256 = None;
    unpinned.msi_sha256 = None;
    renderings.push(("unpinned loopback", render_windows(&unpinned)));
    let hostile = hostile_values();
    for value in &hostile {
        let v = value.as_str();
        let tags = BTreeMap::from([("Name".to_owned(), value.clone())]);
        let p = every_parameter(v, &tags);
        renderings.push(("hostile", render_windows(&p)));
    }
    for (what, script) in &renderings {
        let found = signature_words_in(script, &words);
        assert!(
            found.is_empty(),
            "the {what} rendering holds {found:?}: PowerShell would log it to event 4104"
        );
        // PowerShell's other two rules: a member named by an expression, and static access on something
        // other than a type literal.
        for pattern in [".$", ".("] {
            assert!(!script.contains(pattern), "{what}: {pattern}");
        }
        for (at, _) in script.match_indices("::") {
            assert!(
                script[..at].ends_with(']'),
                "{what}: static access on a non-type at {}",
                &script[at.saturating_sub(40)..at]
            );
        }
    }
    // The check can fail: the old template said Bypass.
    let old = renderings[0].1.replace("'Unrestricted'", "'Bypass'");
    assert_eq!(signature_words_in(&old, &words), ["Bypass", "Bypass"]);
}

#[test]
fn the_msi_is_checked_and_every_wait_is_bounded() {
    let tags = realistic_tags();
    let script = render_windows(&realistic(
        &tags,
        Some("http://proxy.internal:3128"),
        "https://aka.ms/azcmagent-windows",
    ));
    // The MSI is downloaded by the script, pinned, and must be signed by Microsoft before the installer
    // gets it as a local file (-AltDownload), with its result file (-OutFile) read back.
    for needle in [
        "Get-CheckedDownload $ARC_MSI_URL $msi $ARC_MSI_DOWNLOAD_PROTOCOLS $ARC_MSI_SHA256 'MSI'",
        "$failure = Get-SignatureProblem $msi",
        "Get-AuthenticodeSignature -LiteralPath $Path",
        "$status -ne 'Valid'",
        "O=Microsoft Corporation",
        "'-AltDownload', $msi, '-OutFile', $installerResult",
        "$reported = Read-InstallerResult $installerResult",
        "$install.ExitCode -ne 0 -or $reported.Status -eq 'failed'",
        // The installer's TEMP is the private directory: its MSI copy and msiexec's log go with it.
        "@{ TEMP = $installerTemp; TMP = $installerTemp }",
        "'-ExecutionPolicy', 'Unrestricted'",
    ] {
        assert!(script.contains(needle), "missing: {needle}");
    }
    let signature = script.find("$failure = Get-SignatureProblem $msi").unwrap();
    let run = script.find("$install = Invoke-Process $shell").unwrap();
    assert!(
        signature < run,
        "the signature is checked before the installer runs"
    );
    // Every wait has a bound.
    assert!(!script.contains("WaitForExit()"));
    assert!(script.matches("WaitForExit(").count() >= 2);
    assert!(script.contains("$process.WaitForExit($TimeoutSeconds * 1000)"));
    assert!(script.contains("Invoke-Process $shell $installerArguments $InstallerTimeoutSeconds"));
    // 3010 and 1641 make SSM reboot and rerun: they stay in the result line, the script exits 9.
    assert!(script.contains("\n$SsmRebootCodes = @(3010, 1641)\n"));
    assert!(script.contains("\n$ExitRebootCode = 9\n"));
    assert!(script.trim_end().ends_with(
        "$exitCode = [int]$result.ExitCode\nif ($SsmRebootCodes -contains $exitCode) { $exitCode = $ExitRebootCode }\nexit $exitCode"
    ));
    assert_eq!(
        script.matches("\nexit ").count(),
        1,
        "one exit, the mapped one"
    );
    // show -j: the top-level members only, no regular expression over the text.
    assert!(!script.contains("Get-ShowField"));
    assert!(
        script.contains("$parsed = $shown.Substring($start, $end - $start + 1) | ConvertFrom-Json")
    );
    // Public mode clears only the proxy.url arc-onboard recorded.
    assert!(script.contains("if ($current -and $ours -and $current -ceq $ours) {"));
}
