#!/bin/bash
# arc-onboard: installs the Azure Connected Machine agent and connects this machine to Azure Arc.
# Sent through SSM Run Command (AWS-RunShellScript). One text serves a whole batch of instances, so nothing
# per-instance is below: the instance id is read from IMDSv2. The parameters are filled in by arc-onboard.
#@ARC_ONBOARD_PARAMETERS@
# End of parameters.

# SSM runs the file through `sh -c`; make sure bash interprets the rest even if the shebang was bypassed.
if [ -z "${BASH_VERSION:-}" ]; then
    if [ -f "$0" ]; then exec bash "$0" "$@"; fi
    echo 'ARC_ONBOARD_RESULT {"outcome":"failed","exit_code":6,"step":"platform","code":"no-bash","message":"bash is required"}'
    exit 6
fi

# This text holds the access token: remove the copy SSM saved in its orchestration directory. bash keeps
# reading the open (now unlinked) file, so the rest of the script still runs.
if [ -f "$0" ] && head -n 2 -- "$0" 2>/dev/null | grep -q '^# arc-onboard: installs the Azure Connected Machine agent'; then
    rm -f -- "$0"
fi

# Test hooks only: SSM never sets these, so the real endpoints and paths are used on EC2.
IMDS_ENDPOINT="${ARC_ONBOARD_IMDS:-http://169.254.169.254}"
SYSTEMD_DIR="${ARC_ONBOARD_SYSTEMD_DIR:-/run/systemd/system}"
LOG_DIR="${ARC_ONBOARD_LOG_DIR:-/var/log/arc-onboard}"

# The script's own exit codes. Numbers collide with the agent's (1 to 6, AZCM codes) and the installer's
# (1, 127 to 255), so arc-onboard reads every code together with the step of the result line.
EXIT_IMDS=3
EXIT_DOWNLOAD=4
EXIT_INSTALL=5
EXIT_UNSUPPORTED=6
EXIT_AGENT_STATE=8

WORK_DIR=''
AGENT=''
CONNECT_CONFIG=''
RECONNECTED_FROM=''

# Removes the temporary directory (installer, token file) however the script ends.
trap 'if [ -n "$CONNECT_CONFIG" ]; then rm -f -- "$CONNECT_CONFIG"; fi; if [ -n "$WORK_DIR" ]; then rm -rf -- "$WORK_DIR"; fi' EXIT

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

# Replaces the access token with a marker in text about to be printed or kept.
redact() {
    local s="$1"
    if [ -n "$ARC_ACCESS_TOKEN" ]; then s="${s//"$ARC_ACCESS_TOKEN"/[redacted]}"; fi
    printf '%s' "$s"
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
finish() {
    printf 'ARC_ONBOARD_RESULT {"outcome":"%s","exit_code":%d,"step":"%s","code":"%s","message":"%s","resource_id":"%s"}\n' \
        "$1" "$2" "$(json_escape "$3")" "$(json_escape "$4")" "$(json_escape "$(redact "$5")")" "$(json_escape "${6:-}")"
    exit "$2"
}

find_agent() {
    AGENT="$(command -v azcmagent 2>/dev/null || true)"
    if [ -z "$AGENT" ] && [ -x /opt/azcmagent/bin/azcmagent ]; then
        AGENT=/opt/azcmagent/bin/azcmagent
    fi
}

# show_field JSON KEY: the string value of KEY in the flattened JSON of `azcmagent show -j`.
show_field() {
    printf '%s' "$1" | sed -n "s/.*\"$2\"[[:space:]]*:[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p" | head -n 1
}

# Reads the agent's status and the resource it is connected to from `azcmagent show -j`.
read_agent_state() {
    local shown
    AGENT_STATUS=''
    AGENT_SUBSCRIPTION=''
    AGENT_RESOURCE_GROUP=''
    AGENT_RESOURCE_NAME=''
    shown="$("$AGENT" show -j 2>/dev/null | tr -d '\r\n')" || true
    AGENT_STATUS="$(show_field "$shown" status)"
    AGENT_SUBSCRIPTION="$(show_field "$shown" subscriptionId)"
    AGENT_RESOURCE_GROUP="$(show_field "$shown" resourceGroup)"
    AGENT_RESOURCE_NAME="$(show_field "$shown" resourceName)"
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
        disconnect_locally
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

imds() {
    curl -fsS --noproxy '*' --connect-timeout 2 --max-time 10 --retry 3 --retry-delay 1 "$@"
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

log 'running the agent installer'
(cd -- "$WORK_DIR" && bash "$INSTALLER" "${PROXY_ARGS[@]}") >"$WORK_DIR/installer.log" 2>&1
rc=$?
keep_log "$WORK_DIR/installer.log"
if [ "$rc" -ne 0 ]; then
    show_tail "$WORK_DIR/installer.log"
    finish failed "$rc" install installer-failed "the agent installer exited with $rc"
fi
find_agent
if [ -z "$AGENT" ]; then
    show_tail "$WORK_DIR/installer.log"
    finish failed "$EXIT_INSTALL" install agent-missing 'azcmagent is missing after the installation'
fi
log "agent installed: $AGENT"

# The agent's proxy: set it in proxy mode; in public mode clear one an earlier proxy install left behind.
if [ -n "$ARC_PROXY_URL" ]; then
    "$AGENT" config set proxy.url "$ARC_PROXY_URL" >"$WORK_DIR/config.log" 2>&1
    rc=$?
    keep_log "$WORK_DIR/config.log"
    if [ "$rc" -ne 0 ]; then
        show_tail "$WORK_DIR/config.log"
        finish failed "$rc" proxy-config agent-config-failed "azcmagent config set proxy.url exited with $rc"
    fi
elif "$AGENT" config get proxy.url 2>/dev/null | grep -Eq 'https?://'; then
    log 'clearing the proxy.url an earlier install left (connectivity is public)'
    "$AGENT" config clear proxy.url >"$WORK_DIR/config.log" 2>&1
    rc=$?
    keep_log "$WORK_DIR/config.log"
    if [ "$rc" -ne 0 ]; then
        show_tail "$WORK_DIR/config.log"
        finish failed "$rc" proxy-config agent-config-failed "azcmagent config clear proxy.url exited with $rc"
    fi
fi

# 4. Connect. The token goes through a private --config file, never on the command line.
CONNECT_ARGS=(connect
    --subscription-id "$ARC_SUBSCRIPTION_ID"
    --resource-group "$ARC_RESOURCE_GROUP"
    --location "$ARC_LOCATION"
    --tenant-id "$ARC_TENANT_ID"
    --cloud "$ARC_CLOUD")
if [ -n "$ARC_CORRELATION_ID" ]; then CONNECT_ARGS+=(--correlation-id "$ARC_CORRELATION_ID"); fi
if [ -n "$ARC_TAGS" ]; then CONNECT_ARGS+=(--tags "$ARC_TAGS"); fi
CONNECT_CONFIG="$WORK_DIR/connect.json"
if ! (umask 077 && printf '{"access-token": "%s"}\n' "$(json_escape "$ARC_ACCESS_TOKEN")" >"$CONNECT_CONFIG"); then
    finish failed "$EXIT_INSTALL" connect connect-config 'cannot write the private connect configuration file'
fi
CONNECT_ARGS+=(--resource-name "$INSTANCE_ID" --config "$CONNECT_CONFIG")

log "connecting to Azure Arc as $INSTANCE_ID"
"$AGENT" "${CONNECT_ARGS[@]}" >"$WORK_DIR/connect.log" 2>&1
rc=$?
rm -f -- "$CONNECT_CONFIG"
CONNECT_CONFIG=''
keep_log "$WORK_DIR/connect.log"

# 5. The result line, last.
case "$rc" in
    0)
        if [ -n "$RECONNECTED_FROM" ]; then
            finish connected 0 connect reconnected "reconnected as $INSTANCE_ID (the agent was disconnected locally from $RECONNECTED_FROM)"
        fi
        finish connected 0 connect connected "connected as $INSTANCE_ID"
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
