#!/bin/bash
# A fake `azcmagent` (the Azure Connected Machine agent's CLI) for tests that run arc-onboard's real Linux
# install script: tests/install_script.rs, and the AWS emulator's `execute_scripts` mode, whose fake
# installer (azcmagent-installer.sh) writes this file into $FAKE_BIN. Never on a real machine.
#
# Records argv as `argc NUL arg NUL ...` in $FAKE_STATE/agent-calls and its environment (`env -0`, one file
# per call); keeps proxy.url in $FAKE_STATE/proxy.url.
# `show -j` answers, in this order: after a `connect` that exited 67, from $FAKE_AGENT_*_AFTER; after a
# `connect` that really connected (below), from $FAKE_STATE/connection; else from $FAKE_AGENT_STATUS,
# $FAKE_AGENT_SUBSCRIPTION, $FAKE_AGENT_RESOURCE_GROUP and $FAKE_AGENT_RESOURCE_NAME. $FAKE_SHOW_PREFIX is
# printed before the JSON and $FAKE_SHOW_NESTED holds more members after its `status`, as the real
# agent's `services`.
# `connect` records the --config file's content (only with $FAKE_RECORD_CONNECT_CONFIG set: it holds the
# access token) and mode. With $FAKE_AZURE_CONNECT_URL set it really connects: it sends the access token
# of the --config file in an Authorization header (never in an argument) and its connect arguments as a
# form to the Azure stub (`POST /_stub/agent/connect`), which checks the token and creates the machine;
# then `show -j` reports the machine. Otherwise it exits with $FAKE_CONNECT_EXIT.
printf '%s\0' "$#" "$@" >>"$FAKE_STATE/agent-calls"
n=0
for f in "$FAKE_STATE"/agent-env-*; do if [ -e "$f" ]; then n=$((n + 1)); fi; done
env -0 >"$FAKE_STATE/agent-env-$n"

# connect_to_azure CONFIG ARGS...: the real connect against the Azure stub; exits like the agent.
connect_to_azure() {
    local config="$1" token flag form=() response code
    shift
    token="$(sed -n 's/.*"access-token"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' -- "$config")"
    if [ -z "$token" ]; then
        echo "FATAL AZCM0016: Missing required parameter: access token"
        exit 16
    fi
    while [ $# -gt 0 ]; do
        flag="${1#--}"
        case "$1" in
            --config) shift 2 ;;
            --enable-automatic-upgrade) form+=(--data-urlencode "$flag=true"); shift ;;
            --*) form+=(--data-urlencode "$flag=$2"); shift 2 ;;
            *) shift ;;
        esac
    done
    form+=(--data-urlencode "instance-id=${FAKE_INSTANCE_ID:-}")
    # The token goes to curl on its standard input (a header file), never on its command line.
    response="$(printf 'Authorization: Bearer %s\n' "$token" |
        curl -sS --noproxy '*' --max-time 30 -H @- "${form[@]}" -w '\n%{http_code}' "$FAKE_AZURE_CONNECT_URL")"
    code="${response##*$'\n'}"
    response="${response%$'\n'*}"
    if [ "$code" != 200 ] || ! printf '%s' "$response" | grep -q '"ok": *true'; then
        echo "FATAL AZCM0041: The credentials supplied are invalid or the resource was not created: $response"
        exit 41
    fi
    printf '%s\n' Connected "$subscription" "$resource_group" "$resource_name" >"$FAKE_STATE/connection"
    echo "INFO Connected machine to Azure"
    exit 0
}

case "$1" in
    show)
        if [ -e "$FAKE_STATE/connected-67" ]; then
            status="${FAKE_AGENT_STATUS_AFTER:-}" sub="${FAKE_AGENT_SUBSCRIPTION_AFTER:-}"
            rg="${FAKE_AGENT_RESOURCE_GROUP_AFTER:-}" name="${FAKE_AGENT_RESOURCE_NAME_AFTER:-}"
        elif [ -f "$FAKE_STATE/connection" ]; then
            { read -r status; read -r sub; read -r rg; read -r name; } <"$FAKE_STATE/connection"
        else
            status="${FAKE_AGENT_STATUS:-Disconnected}" sub="${FAKE_AGENT_SUBSCRIPTION:-}"
            rg="${FAKE_AGENT_RESOURCE_GROUP:-}" name="${FAKE_AGENT_RESOURCE_NAME:-}"
        fi
        printf '%s{\n  "resourceName": "%s",\n  "resourceGroup": "%s",\n  "subscriptionId": "%s",\n  "status": "%s",%s\n  "agentVersion": "1.50.0"\n}\n' "${FAKE_SHOW_PREFIX:-}" "$name" "$rg" "$sub" "$status" "${FAKE_SHOW_NESTED:-}"
        ;;
    config)
        case "$2" in
            set) printf '%s' "$4" >"$FAKE_STATE/proxy.url" ;;
            get) if [ -f "$FAKE_STATE/proxy.url" ]; then printf 'proxy.url: %s\n' "$(cat "$FAKE_STATE/proxy.url")"; fi ;;
            clear) rm -f "$FAKE_STATE/proxy.url" ;;
        esac
        exit "${FAKE_CONFIG_EXIT:-0}"
        ;;
    connect)
        config='' subscription='' resource_group='' resource_name=''
        args=("${@:2}")
        for ((i = 0; i < ${#args[@]}; i++)); do
            value="${args[i + 1]:-}"
            case "${args[i]}" in
                --config)
                    config="$value"
                    if [ -n "${FAKE_RECORD_CONNECT_CONFIG:-}" ]; then cat -- "$config" >"$FAKE_STATE/connect-config"; fi
                    stat -c '%a' -- "$config" >"$FAKE_STATE/connect-config-mode"
                    ;;
                --subscription-id) subscription="$value" ;;
                --resource-group) resource_group="$value" ;;
                --resource-name) resource_name="$value" ;;
            esac
        done
        echo "INFO connecting"
        if [ -n "${FAKE_AZURE_CONNECT_URL:-}" ]; then
            connect_to_azure "$config" "${@:2}"
        fi
        code="${FAKE_CONNECT_EXIT:-0}"
        if [ "$code" = 41 ]; then echo "FATAL AZCM0041: The credentials supplied are invalid"; fi
        if [ "$code" = 194 ]; then echo "FATAL AZCM0194: not a real code"; fi
        if [ "$code" = 67 ]; then : >"$FAKE_STATE/connected-67"; fi
        exit "$code"
        ;;
esac
exit 0
