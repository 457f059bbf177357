#!/bin/bash
# arc-onboard: installs the Azure Connected Machine agent and connects this machine to Azure Arc.
# Sent through SSM Run Command (AWS-RunShellScript). One text serves a whole batch of instances, so nothing
# per-instance is below: the instance id is read from IMDSv2. The parameters are filled in by arc-onboard.
#@ARC_ONBOARD_PARAMETERS@
# End of parameters.

# SSM runs the file through `sh -c`; make sure bash interprets the rest even if the shebang was bypassed.
if [ -z "${BASH_VERSION:-}" ]; then
    if [ -f "$0" ]; then exec bash "$0" "$@"; fi
    echo 'ARC_ONBOARD_RESULT {"outcome":"failed","exit_code":6,"step":"platform","message":"bash is required"}'
    exit 6
fi

umask 077
# Test hooks only: SSM never sets these, so the real endpoints are used on EC2.
IMDS_ENDPOINT="${ARC_ONBOARD_IMDS:-http://169.254.169.254}"
SYSTEMD_DIR="${ARC_ONBOARD_SYSTEMD_DIR:-/run/systemd/system}"

# The script's own exit codes (the agent's AZCM codes start above 10).
EXIT_IMDS=3
EXIT_DOWNLOAD=4
EXIT_INSTALL=5
EXIT_UNSUPPORTED=6
EXIT_PROXY_CONFIG=7

WORK_DIR=''
AGENT=''

# Removes the temporary directory however the script ends.
trap 'if [ -n "$WORK_DIR" ]; then rm -rf -- "$WORK_DIR"; fi' EXIT

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

# Replaces the access token with a marker in text about to be printed.
redact() {
    local s="$1"
    if [ -n "$ARC_ACCESS_TOKEN" ]; then s="${s//"$ARC_ACCESS_TOKEN"/[redacted]}"; fi
    printf '%s' "$s"
}

# Prints the last lines of a log file (without the access token), indented.
show_tail() {
    local text
    if [ -s "$1" ]; then
        text="$(tail -n 40 -- "$1")"
        redact "$text" | sed 's/^/    /'
        printf '\n'
    fi
}

# finish OUTCOME EXIT_CODE STEP MESSAGE: prints the result line (always last) and exits.
finish() {
    printf 'ARC_ONBOARD_RESULT {"outcome":"%s","exit_code":%d,"step":"%s","message":"%s"}\n' \
        "$1" "$2" "$(json_escape "$3")" "$(json_escape "$(redact "$4")")"
    exit "$2"
}

find_agent() {
    AGENT="$(command -v azcmagent 2>/dev/null || true)"
    if [ -z "$AGENT" ] && [ -x /opt/azcmagent/bin/azcmagent ]; then
        AGENT=/opt/azcmagent/bin/azcmagent
    fi
}

agent_connected() {
    local shown
    shown="$("$AGENT" show -j 2>/dev/null | tr -d '\r\n')" || return 1
    printf '%s' "$shown" | grep -Eq '"status"[[:space:]]*:[[:space:]]*"Connected"'
}

imds() {
    curl -fsS --noproxy '*' --connect-timeout 2 --max-time 10 --retry 3 --retry-delay 1 "$@"
}

# 1. Already connected?
find_agent
if [ -n "$AGENT" ] && agent_connected; then
    log 'the Azure Connected Machine agent is already connected; nothing to do'
    finish already-connected 0 check 'agent already connected'
fi

# Platform prerequisites of the agent.
case "$(uname -m)" in
    x86_64 | aarch64) ;;
    *) finish failed "$EXIT_UNSUPPORTED" platform "unsupported architecture $(uname -m) (x86_64 or aarch64 required)" ;;
esac
if [ ! -d "$SYSTEMD_DIR" ]; then
    finish failed "$EXIT_UNSUPPORTED" platform 'systemd is not running (the agent requires systemd)'
fi
if ! command -v curl >/dev/null 2>&1; then
    finish failed "$EXIT_UNSUPPORTED" platform 'curl is not installed'
fi

# 2. The instance id, from IMDSv2 (never through the proxy).
log 'reading the instance id from IMDSv2'
if ! IMDS_TOKEN="$(imds -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$IMDS_ENDPOINT/latest/api/token")" ||
    [ -z "$IMDS_TOKEN" ]; then
    finish failed "$EXIT_IMDS" imds 'cannot get an IMDSv2 token'
fi
if ! INSTANCE_ID="$(imds -H "X-aws-ec2-metadata-token: $IMDS_TOKEN" "$IMDS_ENDPOINT/latest/meta-data/instance-id")"; then
    finish failed "$EXIT_IMDS" imds 'cannot read the instance id from IMDSv2'
fi
if ! [[ "$INSTANCE_ID" =~ ^i-[0-9a-f]{8,17}$ ]]; then
    finish failed "$EXIT_IMDS" imds 'IMDSv2 returned an invalid instance id'
fi
log "instance id: $INSTANCE_ID"

# 3. Download and run the installer.
if ! WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/arc-onboard.XXXXXXXX")"; then
    WORK_DIR=''
    finish failed "$EXIT_DOWNLOAD" download 'cannot create a temporary directory'
fi
INSTALLER="$WORK_DIR/install_linux_azcmagent.sh"
PROXY_ARGS=()
if [ -n "$ARC_PROXY_URL" ]; then
    PROXY_ARGS=(--proxy "$ARC_PROXY_URL")
    log "using proxy $ARC_PROXY_URL"
fi
log "downloading the agent installer from $ARC_INSTALLER_URL"
if ! curl -fsSL --connect-timeout 20 --max-time 900 --retry 5 --retry-delay 3 "${PROXY_ARGS[@]}" \
    -o "$INSTALLER" "$ARC_INSTALLER_URL" 2>"$WORK_DIR/download.log"; then
    show_tail "$WORK_DIR/download.log"
    finish failed "$EXIT_DOWNLOAD" download "cannot download the agent installer from $ARC_INSTALLER_URL"
fi

log 'running the agent installer'
if ! (cd -- "$WORK_DIR" && bash "$INSTALLER" "${PROXY_ARGS[@]}") >"$WORK_DIR/install.log" 2>&1; then
    show_tail "$WORK_DIR/install.log"
    finish failed "$EXIT_INSTALL" install 'the agent installer failed'
fi
find_agent
if [ -z "$AGENT" ]; then
    show_tail "$WORK_DIR/install.log"
    finish failed "$EXIT_INSTALL" install 'azcmagent is missing after the installation'
fi
log "agent installed: $AGENT"

if [ -n "$ARC_PROXY_URL" ]; then
    "$AGENT" config set proxy.url "$ARC_PROXY_URL" >"$WORK_DIR/config.log" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ]; then
        show_tail "$WORK_DIR/config.log"
        finish failed "$EXIT_PROXY_CONFIG" proxy-config "azcmagent config set proxy.url exited with $rc"
    fi
fi

# 4. Connect.
CONNECT_ARGS=(connect
    --subscription-id "$ARC_SUBSCRIPTION_ID"
    --resource-group "$ARC_RESOURCE_GROUP"
    --location "$ARC_LOCATION"
    --tenant-id "$ARC_TENANT_ID"
    --cloud "$ARC_CLOUD")
if [ -n "$ARC_CORRELATION_ID" ]; then CONNECT_ARGS+=(--correlation-id "$ARC_CORRELATION_ID"); fi
if [ -n "$ARC_TAGS" ]; then CONNECT_ARGS+=(--tags "$ARC_TAGS"); fi
CONNECT_ARGS+=(--resource-name "$INSTANCE_ID" --access-token "$ARC_ACCESS_TOKEN")

log "connecting to Azure Arc as $INSTANCE_ID"
"$AGENT" "${CONNECT_ARGS[@]}" >"$WORK_DIR/connect.log" 2>&1
rc=$?
show_tail "$WORK_DIR/connect.log"

# 5. The result line, last.
case "$rc" in
    0) finish connected 0 connect "connected as $INSTANCE_ID" ;;
    67) finish already-connected 0 connect 'azcmagent connect reported the machine already connected (exit 67)' ;;
    *)
        detail="$(grep -Eo 'AZCM[0-9]{4}.*' "$WORK_DIR/connect.log" | tail -n 1 | cut -c 1-300)"
        finish failed "$rc" connect "azcmagent connect exited with $rc${detail:+: $detail}"
        ;;
esac
