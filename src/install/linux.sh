#!/bin/bash
# arc-onboard: installs the Azure Connected Machine agent and connects this machine to Azure Arc.
# Sent through SSM Run Command (AWS-RunShellScript), twice per batch: first as the key exchange
# (ARC_MODE=key-exchange: checks, then an ephemeral RSA key pair whose public half is printed), then as the
# install (ARC_MODE=install), which carries the access token sealed to each instance's key. One text serves a
# whole batch of instances: the instance id is read from IMDSv2 and picks this instance's sealed key.
# The parameters are filled in by arc-onboard.
#@ARC_ONBOARD_PARAMETERS@
# End of parameters.

# SSM runs the file through `sh -c`; make sure bash interprets the rest even if the shebang was bypassed.
if [ -z "${BASH_VERSION:-}" ]; then
    if [ -f "$0" ]; then exec bash "$0" "$@"; fi
    echo 'ARC_ONBOARD_RESULT {"outcome":"failed","exit_code":6,"step":"platform","code":"no-bash","message":"bash is required"}'
    exit 6
fi

# Remove the copy SSM saved in its orchestration directory (the text holds only a sealed token, but nothing
# of it needs to stay). bash keeps reading the open (now unlinked) file, so the rest of the script still runs.
if [ -f "$0" ] && head -n 2 -- "$0" 2>/dev/null | grep -q '^# arc-onboard: installs the Azure Connected Machine agent'; then
    rm -f -- "$0"
fi

# Test hooks only: SSM never sets these, so the real endpoints and paths are used on EC2.
IMDS_ENDPOINT="${ARC_ONBOARD_IMDS:-http://169.254.169.254}"
SYSTEMD_DIR="${ARC_ONBOARD_SYSTEMD_DIR:-/run/systemd/system}"
LOG_DIR="${ARC_ONBOARD_LOG_DIR:-/var/log/arc-onboard}"
# What arc-onboard itself set on this machine (root only), e.g. the agent's proxy.url.
STATE_DIR="${ARC_ONBOARD_STATE_DIR:-/var/lib/arc-onboard}"
# Where Microsoft's installer makes its own `mktemp -d /tmp/azcmagent.XXXXXXXXXX` directory.
INSTALLER_TMP_ROOT="${ARC_ONBOARD_INSTALLER_TMP_ROOT:-/tmp}"
KEY_DIR="${ARC_ONBOARD_KEY_DIR:-/var/lib/arc-onboard/keys}"

# The script's own exit codes. Numbers collide with the agent's (1 to 6, AZCM codes) and the installer's
# (1, 127 to 255), so arc-onboard reads every code together with the step of the result line.
EXIT_IMDS=3
EXIT_DOWNLOAD=4
EXIT_INSTALL=5
EXIT_UNSUPPORTED=6
EXIT_AGENT_STATE=8
EXIT_REBOOT_CODE=9

WORK_DIR=''
AGENT=''
CONNECT_CONFIG=''
# The private key of this batch's key exchange; the install deletes it however it ends.
KEY_FILE="$KEY_DIR/$ARC_KEY_ID.pem"
DROP_KEY=''
RECONNECTED_FROM=''

# Removes the temporary directory (installer, token file) however the script ends.
trap 'if [ -n "$CONNECT_CONFIG" ]; then rm -f -- "$CONNECT_CONFIG"; fi; if [ -n "$WORK_DIR" ]; then rm -rf -- "$WORK_DIR"; fi; if [ -n "$DROP_KEY" ]; then rm -f -- "$DROP_KEY"; fi' EXIT

log() {
    printf 'arc-onboard: %s\n' "$1"
}

# Escapes a string for a JSON string literal.
json_escape() {
    local s="$1"
    s="${s//\\/\\\\}"
    s="${s//\"/\\\"}"
    s="${s//$'\n'/\\n}"
    s="${s//$'\r'/\\r}"
    s="${s//$'\t'/\\t}"
    s="${s//[[:cntrl:]]/ }"
    printf '%s' "$s"
}

# Text about to be printed or kept. The token is never in a variable of this script (it is decrypted straight
# into the private --config file), so there is nothing to take out; everything shown still passes here.
redact() {
    printf '%s' "$1"
}

lower() {
    printf '%s' "$1" | tr '[:upper:]' '[:lower:]'
}

# Prints the last lines of a log file (without the access token), indented and cut short, so that the
# whole output stays small; the full log stays in $LOG_DIR.
show_tail() {
    local text
    if [ -s "$1" ]; then
        text="$(tail -n 15 -- "$1")"
        redact "$text" | cut -c 1-200 | sed 's/^/    /'
        printf '\n'
    fi
}

# remember_proxy URL: records in $STATE_DIR (root only) the proxy.url arc-onboard set.
remember_proxy() {
    if [ -L "$STATE_DIR" ] || ! mkdir -p -- "$STATE_DIR" 2>/dev/null; then return 1; fi
    chmod 700 -- "$STATE_DIR" 2>/dev/null
    rm -f -- "$STATE_DIR/proxy.url"
    (umask 077 && printf '%s' "$1" >"$STATE_DIR/proxy.url") 2>/dev/null
}

# Keeps a step's log in $LOG_DIR (root only), without the access token.
keep_log() {
    local text
    if [ -n "$LOG_DIR" ] && [ -f "$1" ] && mkdir -p -- "$LOG_DIR" 2>/dev/null; then
        chmod 700 -- "$LOG_DIR" 2>/dev/null
        text="$(cat -- "$1")"
        redact "$text" >"$LOG_DIR/$(basename -- "$1")" 2>/dev/null
    fi
}

# finish OUTCOME EXIT_CODE STEP CODE MESSAGE [RESOURCE_ID]: prints the result line (always last) and exits.
# SSM reboots the instance and runs the command again when a script exits 194: a step's command that
# exited 194 keeps its code in the result line, and the script exits $EXIT_REBOOT_CODE instead.
finish() {
    local status="$2"
    printf 'ARC_ONBOARD_RESULT {"outcome":"%s","exit_code":%d,"step":"%s","code":"%s","message":"%s","resource_id":"%s"}\n' \
        "$1" "$2" "$(json_escape "$3")" "$(json_escape "$4")" "$(json_escape "$(redact "$5")")" "$(json_escape "${6:-}")"
    if [ "$status" -eq 194 ]; then status="$EXIT_REBOOT_CODE"; fi
    exit "$status"
}

find_agent() {
    AGENT="$(command -v azcmagent 2>/dev/null || true)"
    if [ -z "$AGENT" ] && [ -x /opt/azcmagent/bin/azcmagent ]; then
        AGENT=/opt/azcmagent/bin/azcmagent
    fi
}

# top_level_strings: reads one JSON object on standard input (anything before its first `{` is skipped) and
# prints `KEY<TAB>VALUE` for each of its own string members, in order. Members of nested objects and
# arrays (the services' own "status" in `azcmagent show -j`) are skipped, so a key means the top-level
# property only, as ConvertFrom-Json reads it on Windows. Plain awk: stock images may lack jq and python.
top_level_strings() {
    awk '
        { text = text $0 "\n" }
        END {
            depth = 0; instr = 0; started = 0; pending = 0; haskey = 0
            n = length(text)
            for (i = 1; i <= n; i++) {
                c = substr(text, i, 1)
                if (instr) {
                    if (c == "\\") {
                        i++; e = substr(text, i, 1)
                        if (e == "n" || e == "t" || e == "r" || e == "b" || e == "f") e = " "
                        buf = buf e
                    } else if (c == "\"") {
                        instr = 0
                        if (depth == 1 && haskey) { gsub(/[\t\n\r]/, " ", buf); print key "\t" buf; haskey = 0 }
                        else if (depth == 1) { key = buf; pending = 1 }
                    } else {
                        buf = buf c
                    }
                    continue
                }
                if (!started) { if (c == "{") { started = 1; depth = 1 }; continue }
                if (c == "\"") { instr = 1; buf = "" }
                else if (c == ":" && depth == 1 && pending) { haskey = 1; pending = 0 }
                else if (c == "{" || c == "[") { depth++; haskey = 0; pending = 0 }
                else if (c == "}" || c == "]") { depth--; if (depth == 0) exit }
                else if (c == "," && depth == 1) { haskey = 0; pending = 0 }
            }
        }'
}

# Reads the agent's status and the resource it is connected to from the top-level properties of
# `azcmagent show -j` (the first value of a key wins).
read_agent_state() {
    local key value
    AGENT_STATUS=''
    AGENT_SUBSCRIPTION=''
    AGENT_RESOURCE_GROUP=''
    AGENT_RESOURCE_NAME=''
    while IFS=$'\t' read -r key value; do
        case "$key" in
            status) AGENT_STATUS="${AGENT_STATUS:-$value}" ;;
            subscriptionId) AGENT_SUBSCRIPTION="${AGENT_SUBSCRIPTION:-$value}" ;;
            resourceGroup) AGENT_RESOURCE_GROUP="${AGENT_RESOURCE_GROUP:-$value}" ;;
            resourceName) AGENT_RESOURCE_NAME="${AGENT_RESOURCE_NAME:-$value}" ;;
        esac
    done < <("$AGENT" show -j 2>/dev/null | top_level_strings)
}

agent_resource_id() {
    printf '/subscriptions/%s/resourceGroups/%s/providers/Microsoft.HybridCompute/machines/%s' \
        "$AGENT_SUBSCRIPTION" "$AGENT_RESOURCE_GROUP" "$AGENT_RESOURCE_NAME"
}

# Whether the agent's resource is in our subscription and resource group (Azure compares case-insensitively).
agent_in_our_group() {
    [ "$(lower "$AGENT_SUBSCRIPTION")" = "$(lower "$ARC_SUBSCRIPTION_ID")" ] &&
        [ "$(lower "$AGENT_RESOURCE_GROUP")" = "$(lower "$ARC_RESOURCE_GROUP")" ]
}

# Whether the agent's resource is the one this run onboards.
agent_is_ours() {
    agent_in_our_group && [ "$(lower "$AGENT_RESOURCE_NAME")" = "$(lower "$INSTANCE_ID")" ]
}

# reconnect-agent (ARC_RECONNECT=1): whether the agent may be disconnected locally and connected anew:
# only in our subscription and resource group, and only Expired, Disconnected, or Connected under another
# instance's name (a clone). Never an agent connected elsewhere.
agent_needs_reconnect() {
    if [ "$ARC_RECONNECT" != 1 ] || ! agent_in_our_group; then
        return 1
    fi
    case "$AGENT_STATUS" in
        Expired | Disconnected) [ -n "$AGENT_RESOURCE_NAME" ] ;;
        Connected) [ -n "$AGENT_RESOURCE_NAME" ] && ! agent_is_ours ;;
        *) return 1 ;;
    esac
}

# Disconnects the agent locally only (its Arc resource stays: it may belong to the instance this one was
# cloned from); the script then connects as a fresh install would.
disconnect_locally() {
    local out rc
    log "reconnect: the agent is $AGENT_STATUS as $(agent_resource_id); disconnecting it locally"
    out="$("$AGENT" disconnect --force-local-only 2>&1)"
    rc=$?
    if [ "$rc" -ne 0 ]; then
        redact "$out" | tail -n 5 | cut -c 1-200 | sed 's/^/    /'
        finish failed "$rc" connect disconnect-failed "azcmagent disconnect --force-local-only exited with $rc" "$(agent_resource_id)"
    fi
    RECONNECTED_FROM="$(agent_resource_id)"
}

# Ends the script when the agent already belongs to a resource: ours and Connected (nothing to do),
# another one (left alone), or Disconnected/Expired (its owner must reconnect or disconnect it).
# Returns when the agent was never connected.
check_existing_connection() {
    if [ -z "$AGENT_RESOURCE_NAME$AGENT_RESOURCE_GROUP" ] && [ "$AGENT_STATUS" != Connected ]; then
        return 0
    fi
    if [ -z "$RECONNECTED_FROM" ] && agent_needs_reconnect; then
        # The key exchange only checks: the install, which carries the token, disconnects.
        if [ "$ARC_MODE" = install ]; then disconnect_locally; fi
        return 0
    fi
    case "$AGENT_STATUS" in
        Connected)
            if agent_is_ours; then
                log 'the agent is already connected to this resource; nothing to do'
                finish already-connected 0 check already-connected "already connected as $(agent_resource_id)" "$(agent_resource_id)"
            fi
            if [ -z "$AGENT_RESOURCE_NAME" ]; then
                finish connected-elsewhere 0 check connected-elsewhere 'the agent is connected to a resource it does not name; left alone'
            fi
            log "the agent is connected to another resource: $(agent_resource_id); left alone"
            finish connected-elsewhere 0 check connected-elsewhere "connected to another Arc resource: $(agent_resource_id); left alone" "$(agent_resource_id)"
            ;;
        Disconnected | Expired)
            finish failed "$EXIT_AGENT_STATE" check "agent-$(lower "$AGENT_STATUS")" \
                "the agent is $AGENT_STATUS from $(agent_resource_id): run 'azcmagent reconnect' there, or have its owner disconnect it; arc-onboard does neither" \
                "$(agent_resource_id)"
            ;;
        *)
            finish failed "$EXIT_AGENT_STATE" check agent-state "the agent reports status '$AGENT_STATUS' for $(agent_resource_id); left alone" "$(agent_resource_id)"
            ;;
    esac
}

# The `/tmp/azcmagent.*` directories Microsoft's installer makes, one a line.
installer_tmp_dirs() {
    local dir
    for dir in "$INSTALLER_TMP_ROOT"/azcmagent.*; do
        if [ -d "$dir" ] && [ ! -L "$dir" ]; then printf '%s\n' "$dir"; fi
    done
}

# remove_new_installer_tmp_dirs BEFORE: removes the installer's directories that were not there BEFORE,
# only if empty (with --tempdir its downloads went to our own directory).
remove_new_installer_tmp_dirs() {
    local dir
    while IFS= read -r dir; do
        if [ -n "$dir" ] && ! printf '%s\n' "$1" | grep -qxF -- "$dir"; then
            rmdir -- "$dir" 2>/dev/null || log "left the installer's directory $dir (not empty)"
        fi
    done < <(installer_tmp_dirs)
}

# read_installer_result FILE: the installer's --output file, `{"status": "failed", "error": {"code":
# "AZCM0143", "message": "..."}}` (written with printf, so the message is not escaped: read line by line).
read_installer_result() {
    INSTALLER_STATUS=''
    INSTALLER_CODE=''
    INSTALLER_MESSAGE=''
    if [ ! -s "$1" ]; then return 0; fi
    INSTALLER_STATUS="$(sed -n 's/^[[:space:]]*"status"[[:space:]]*:[[:space:]]*"\([a-z]*\)".*/\1/p' -- "$1" | head -n 1)"
    INSTALLER_CODE="$(sed -n 's/^[[:space:]]*"code"[[:space:]]*:[[:space:]]*"\(AZCM[0-9]\{4\}\)".*/\1/p' -- "$1" | head -n 1)"
    INSTALLER_MESSAGE="$(sed -n 's/^[[:space:]]*"message"[[:space:]]*:[[:space:]]*"\(.*\)"[[:space:]]*$/\1/p' -- "$1" | head -n 1 | cut -c 1-300)"
}

imds() {
    curl -fsS --noproxy '*' --connect-timeout 2 --max-time 10 --retry 3 --retry-delay 1 "$@"
}

# The key exchange: an ephemeral RSA key pair for this batch, the private key in a root-only file, only
# the public key printed (the ARC_ONBOARD_KEY line). Keys of exchanges older than a day, whose install never
# came, are removed. Exits.
exchange_key() {
    local public
    if ! (umask 077 && mkdir -p -- "$KEY_DIR") || ! chmod 700 -- "$KEY_DIR"; then
        finish failed "$EXIT_INSTALL" key-exchange key-dir "cannot create the private key directory $KEY_DIR"
    fi
    find "$KEY_DIR" -maxdepth 1 -type f -name '*.pem' -mmin +1440 -delete 2>/dev/null
    if ! (umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$KEY_FILE") >/dev/null 2>&1 ||
        ! public="$(openssl pkey -in "$KEY_FILE" -pubout -outform DER | openssl base64 -A)" || [ -z "$public" ]; then
        rm -f -- "$KEY_FILE"
        finish failed "$EXIT_INSTALL" key-exchange key-generation 'openssl cannot make an RSA key pair'
    fi
    log 'key pair made; the install command brings the token sealed to it'
    printf 'ARC_ONBOARD_KEY {"instance_id":"%s","key_id":"%s","public_key":"%s"}\n' "$INSTANCE_ID" "$ARC_KEY_ID" "$public"
    exit 0
}

# Opens the sealed connect configuration with this instance's private key, straight into the private
# --config file $CONNECT_CONFIG: the token is never in a variable, an argument or the output. The wrapped
# passphrase carries the SHA-256 of the sealed text, so a changed text is refused before it is opened.
# Sets SEAL_ERROR and returns 1 on failure.
open_sealed_config() {
    local entry blob='' payload digest
    for entry in $ARC_SEALED_KEYS; do
        if [ "${entry%%:*}" = "$INSTANCE_ID" ]; then blob="${entry#*:}"; fi
    done
    if [ -z "$blob" ]; then
        SEAL_ERROR="this command carries no sealed token for $INSTANCE_ID"
        return 1
    fi
    if [ ! -f "$KEY_FILE" ]; then
        SEAL_ERROR="the private key of key exchange $ARC_KEY_ID is gone"
        return 1
    fi
    printf '%s' "$blob" | openssl base64 -d -A >"$WORK_DIR/wrapped" 2>/dev/null
    printf '%s' "$ARC_SEALED_CONFIG" | openssl base64 -d -A >"$WORK_DIR/sealed" 2>/dev/null
    payload="$(openssl pkeyutl -decrypt -inkey "$KEY_FILE" -pkeyopt rsa_padding_mode:oaep -in "$WORK_DIR/wrapped" 2>/dev/null)"
    digest="$(openssl dgst -sha256 -r <"$WORK_DIR/sealed" 2>/dev/null | cut -d ' ' -f 1)"
    rm -f -- "$WORK_DIR/wrapped"
    if [ "${#payload}" -ne 128 ] || [ "${payload:64}" != "$digest" ]; then
        rm -f -- "$WORK_DIR/sealed"
        SEAL_ERROR='the sealed token does not open with this instance'"'"'s key'
        return 1
    fi
    if ! (umask 077 && printf '%s' "${payload:0:64}" >"$WORK_DIR/passphrase" &&
        openssl enc -d -aes-256-cbc -md sha256 -pass "file:$WORK_DIR/passphrase" -in "$WORK_DIR/sealed" -out "$CONNECT_CONFIG") 2>/dev/null; then
        rm -f -- "$WORK_DIR/passphrase" "$WORK_DIR/sealed" "$CONNECT_CONFIG"
        SEAL_ERROR='the sealed token cannot be decrypted'
        return 1
    fi
    rm -f -- "$WORK_DIR/passphrase" "$WORK_DIR/sealed"
}

# Platform prerequisites of the agent.
case "$(uname -m)" in
    x86_64 | aarch64) ;;
    *) finish failed "$EXIT_UNSUPPORTED" platform unsupported-platform "unsupported architecture $(uname -m) (x86_64 or aarch64 required)" ;;
esac
if [ ! -d "$SYSTEMD_DIR" ]; then
    finish failed "$EXIT_UNSUPPORTED" platform unsupported-platform 'systemd is not running (the agent requires systemd)'
fi
if ! command -v curl >/dev/null 2>&1; then
    finish failed "$EXIT_UNSUPPORTED" platform unsupported-platform 'curl is not installed'
fi
if ! command -v openssl >/dev/null 2>&1; then
    finish failed "$EXIT_UNSUPPORTED" platform unsupported-platform 'openssl is not installed (it receives the sealed access token)'
fi
if ! [[ "$ARC_KEY_ID" =~ ^[0-9a-f-]{36}$ ]]; then
    finish failed "$EXIT_INSTALL" key-exchange key-id 'the key exchange id is malformed'
fi
if [ "$ARC_MODE" = install ]; then DROP_KEY="$KEY_FILE"; fi

# 1. The instance id (the Arc resource name), from IMDSv2, never through the proxy.
log 'reading the instance id from IMDSv2'
if ! IMDS_TOKEN="$(imds -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$IMDS_ENDPOINT/latest/api/token")" ||
    [ -z "$IMDS_TOKEN" ]; then
    finish failed "$EXIT_IMDS" imds imds-unavailable 'cannot get an IMDSv2 token'
fi
if ! INSTANCE_ID="$(imds -H "X-aws-ec2-metadata-token: $IMDS_TOKEN" "$IMDS_ENDPOINT/latest/meta-data/instance-id")"; then
    finish failed "$EXIT_IMDS" imds imds-unavailable 'cannot read the instance id from IMDSv2'
fi
if ! [[ "$INSTANCE_ID" =~ ^i-[0-9a-f]{8,17}$ ]]; then
    finish failed "$EXIT_IMDS" imds imds-unavailable 'IMDSv2 returned an invalid instance id'
fi
log "instance id: $INSTANCE_ID"

# 2. Already connected? Only to our resource counts; another one is left alone.
find_agent
if [ -n "$AGENT" ]; then
    read_agent_state
    check_existing_connection
fi

# The first command of the batch ends here, with the public key.
if [ "$ARC_MODE" = key-exchange ]; then
    exchange_key
fi

# 3. Download the installer (checked against its pin) and run it.
if ! WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/arc-onboard.XXXXXXXX")"; then
    WORK_DIR=''
    finish failed "$EXIT_DOWNLOAD" download download-failed 'cannot create a temporary directory'
fi
INSTALLER="$WORK_DIR/install_linux_azcmagent.sh"
PROXY_ARGS=()
if [ -n "$ARC_PROXY_URL" ]; then
    PROXY_ARGS=(--proxy "$ARC_PROXY_URL")
    log "using proxy $ARC_PROXY_URL"
fi
log "downloading the agent installer from $ARC_INSTALLER_URL"
if ! curl -fsSL --proto "$ARC_DOWNLOAD_PROTOCOLS" --proto-redir "$ARC_DOWNLOAD_PROTOCOLS" \
    --connect-timeout 20 --max-time 900 --retry 5 --retry-delay 3 "${PROXY_ARGS[@]}" \
    -o "$INSTALLER" "$ARC_INSTALLER_URL" 2>"$WORK_DIR/download.log"; then
    show_tail "$WORK_DIR/download.log"
    keep_log "$WORK_DIR/download.log"
    finish failed "$EXIT_DOWNLOAD" download download-failed "cannot download the agent installer from $ARC_INSTALLER_URL"
fi
if [ -n "$ARC_INSTALLER_SHA256" ]; then
    if ! command -v sha256sum >/dev/null 2>&1; then
        finish failed "$EXIT_DOWNLOAD" download checksum-unavailable 'sha256sum is not installed, so the pinned installer cannot be checked; it was not run'
    fi
    ACTUAL_SHA256="$(sha256sum -- "$INSTALLER" | cut -d ' ' -f 1)"
    if [ "$(lower "$ACTUAL_SHA256")" != "$(lower "$ARC_INSTALLER_SHA256")" ]; then
        finish failed "$EXIT_DOWNLOAD" download checksum-mismatch \
            "the installer's SHA-256 is $ACTUAL_SHA256, not the pinned $ARC_INSTALLER_SHA256; it was not run"
    fi
    log 'installer SHA-256 matches the pin'
fi

# The installer writes its real error code (AZCM0xxx) only to its --output file and always exits 1; its
# downloads go to --tempdir (inside $WORK_DIR, removed on exit). It still makes an empty
# `mktemp -d /tmp/azcmagent.XXXXXXXXXX` of its own before reading its arguments: removed below.
INSTALLER_RESULT="$WORK_DIR/installer-result.json"
INSTALLER_TMP="$WORK_DIR/installer-tmp"
if ! mkdir -- "$INSTALLER_TMP"; then
    finish failed "$EXIT_INSTALL" install installer-tempdir 'cannot create the installer'"'"'s temporary directory'
fi
installer_dirs_before="$(installer_tmp_dirs)"
log 'running the agent installer'
(cd -- "$WORK_DIR" && bash "$INSTALLER" "${PROXY_ARGS[@]}" --output "$INSTALLER_RESULT" --tempdir "$INSTALLER_TMP") \
    >"$WORK_DIR/installer.log" 2>&1
rc=$?
remove_new_installer_tmp_dirs "$installer_dirs_before"
keep_log "$WORK_DIR/installer.log"
read_installer_result "$INSTALLER_RESULT"
if [ "$rc" -ne 0 ] || [ "$INSTALLER_STATUS" = failed ]; then
    show_tail "$WORK_DIR/installer.log"
    if [ "$rc" -eq 0 ]; then rc=1; fi
    finish failed "$rc" install "${INSTALLER_CODE:-installer-failed}" \
        "the agent installer exited with $rc${INSTALLER_CODE:+: $INSTALLER_CODE}${INSTALLER_MESSAGE:+: $INSTALLER_MESSAGE}"
fi
find_agent
if [ -z "$AGENT" ]; then
    show_tail "$WORK_DIR/installer.log"
    finish failed "$EXIT_INSTALL" install agent-missing 'azcmagent is missing after the installation'
fi
log "agent installed: $AGENT"

# The agent's proxy: set it in proxy mode (and remember that arc-onboard set it); in public mode clear
# only a proxy.url arc-onboard itself set earlier. One an administrator set is left and reported.
PROXY_MARKER="$STATE_DIR/proxy.url"
PROXY_NOTE=''
if [ -n "$ARC_PROXY_URL" ]; then
    "$AGENT" config set proxy.url "$ARC_PROXY_URL" >"$WORK_DIR/config.log" 2>&1
    rc=$?
    keep_log "$WORK_DIR/config.log"
    if [ "$rc" -ne 0 ]; then
        show_tail "$WORK_DIR/config.log"
        finish failed "$rc" proxy-config agent-config-failed "azcmagent config set proxy.url exited with $rc"
    fi
    if ! remember_proxy "$ARC_PROXY_URL"; then
        log "cannot record in $PROXY_MARKER that arc-onboard set proxy.url; a later public run will leave it"
    fi
else
    current_proxy="$("$AGENT" config get proxy.url 2>/dev/null | grep -Eo 'https?://[^[:space:]"'"'"']+' | head -n 1)"
    ours=''
    if [ -f "$PROXY_MARKER" ] && [ ! -L "$PROXY_MARKER" ]; then ours="$(cat -- "$PROXY_MARKER" 2>/dev/null)"; fi
    if [ -n "$current_proxy" ] && [ -n "$ours" ] && [ "$current_proxy" = "$ours" ]; then
        log 'clearing the proxy.url an earlier arc-onboard proxy install set (connectivity is public)'
        "$AGENT" config clear proxy.url >"$WORK_DIR/config.log" 2>&1
        rc=$?
        keep_log "$WORK_DIR/config.log"
        if [ "$rc" -ne 0 ]; then
            show_tail "$WORK_DIR/config.log"
            finish failed "$rc" proxy-config agent-config-failed "azcmagent config clear proxy.url exited with $rc"
        fi
        rm -f -- "$PROXY_MARKER"
    elif [ -n "$current_proxy" ]; then
        PROXY_NOTE="; the agent keeps proxy.url $current_proxy, which arc-onboard did not set (connectivity is public)"
        log "proxy.url is $current_proxy, set by someone else: left as it is"
    elif [ -n "$ours" ]; then
        rm -f -- "$PROXY_MARKER"
    fi
fi

# 4. Connect. The token goes through a private --config file, never on the command line: the sealed
# configuration is opened into it right before connect and the file is deleted right after.
CONNECT_ARGS=(connect
    --subscription-id "$ARC_SUBSCRIPTION_ID"
    --resource-group "$ARC_RESOURCE_GROUP"
    --location "$ARC_LOCATION"
    --tenant-id "$ARC_TENANT_ID"
    --cloud "$ARC_CLOUD")
if [ -n "$ARC_CORRELATION_ID" ]; then CONNECT_ARGS+=(--correlation-id "$ARC_CORRELATION_ID"); fi
if [ -n "$ARC_GATEWAY_ID" ]; then CONNECT_ARGS+=(--gateway-id "$ARC_GATEWAY_ID"); fi
if [ -n "$ARC_PRIVATE_LINK_SCOPE" ]; then CONNECT_ARGS+=(--private-link-scope "$ARC_PRIVATE_LINK_SCOPE"); fi
if [ "$ARC_AUTOMATIC_UPGRADE" = true ]; then CONNECT_ARGS+=(--enable-automatic-upgrade); fi
# The tags end with the per-instance ownership tag: one script serves a batch, so it is added here.
CONNECT_ARGS+=(--tags "${ARC_TAGS:+$ARC_TAGS,}AwsInstanceId=$INSTANCE_ID")
CONNECT_CONFIG="$WORK_DIR/connect.json"
SEAL_ERROR=''
if ! open_sealed_config; then
    finish failed "$EXIT_INSTALL" connect sealed-token "$SEAL_ERROR"
fi
CONNECT_ARGS+=(--resource-name "$INSTANCE_ID" --config "$CONNECT_CONFIG")

log "connecting to Azure Arc as $INSTANCE_ID"
"$AGENT" "${CONNECT_ARGS[@]}" >"$WORK_DIR/connect.log" 2>&1
rc=$?
rm -f -- "$CONNECT_CONFIG" "$KEY_FILE"
CONNECT_CONFIG=''
keep_log "$WORK_DIR/connect.log"

# 5. The result line, last.
case "$rc" in
    0)
        if [ -n "$RECONNECTED_FROM" ]; then
            finish connected 0 connect reconnected "reconnected as $INSTANCE_ID (the agent was disconnected locally from $RECONNECTED_FROM)"
        fi
        finish connected 0 connect connected "connected as $INSTANCE_ID$PROXY_NOTE"
        ;;
    67)
        # "Already connected": to which resource, and in what state?
        read_agent_state
        check_existing_connection
        finish failed 67 connect AZCM0067 'azcmagent connect says the machine is already connected, but azcmagent show names no resource'
        ;;
    *)
        show_tail "$WORK_DIR/connect.log"
        detail="$(grep -Eo 'AZCM[0-9]{4}.*' "$WORK_DIR/connect.log" | tail -n 1 | cut -c 1-300)"
        azcm="$(printf '%s' "$detail" | grep -Eo '^AZCM[0-9]{4}')"
        finish failed "$rc" connect "${azcm:-exit-$rc}" "azcmagent connect exited with $rc${detail:+: $detail}"
        ;;
esac
