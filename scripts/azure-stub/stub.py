"""Local Azure stub for arc-onboard tests: Entra token endpoint, ARM, simulated agent connect.

One threaded HTTP server serves, on a single port,

* the Entra (Azure AD) client-credentials token endpoint ``POST /{tenant}/oauth2/v2.0/token``, with a
  client secret or a client assertion (certificate or federated; see identity.py),
* managed identity endpoints: Azure VM IMDS style ``GET /metadata/identity/oauth2/token`` and Azure Arc
  style ``GET /arc/metadata/identity/oauth2/token`` (401 + challenge file, then Basic auth),
* a test OIDC issuer ``/oidc`` (discovery + JWKS) whose tokens the control API mints,
* the few Azure Resource Manager calls arc-onboard makes (resource groups, Arc machines, and
  the Resource Graph query of graph.py), behind bearer-token checks with ARM's error shapes,
* ``POST /_stub/agent/connect``, the AWS emulator's ``on_success_webhook`` target: it parses the
  ``ARC_*`` assignment block of the install script that "ran" and does what ``azcmagent connect``
  would (checks the access token, subscription and resource group, then creates the machine); with a
  form body and a bearer token it is the fake agent's own connect (the emulator's ``execute_scripts``
  mode, where the real script runs); each machine remembers whose token connected it,
* a JSON control API under ``/_stub/`` (config, request log, connect attempts, seeding).

Usage::

    python stub.py --host 127.0.0.1 --port 0 [--verbose]

prints ``LISTENING http://HOST:PORT`` on stdout once bound; logs go to stderr.
Secrets and tokens never reach the request log or the connect log. See README.md.
"""

import argparse
import json
import logging
import re
import secrets
import shlex
import signal
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler
from werkzeug.wrappers import Request, Response

import graph
import identity

CONTROL_PREFIX = "/_stub/"
DEFAULT_CONFIG: dict[str, Any] = {
    "tenant_id": "00000000-0000-0000-0000-000000000001",
    "subscription_id": "00000000-0000-0000-0000-000000000002",
    "client_id": "00000000-0000-0000-0000-000000000003",
    "client_secret": "stub-secret",
    # A second app: the onboarding identity. Its tokens connect machines and are refused for every
    # Resource Manager call, as a principal with only "Azure Connected Machine Onboarding" would be.
    "onboarding_client_id": "00000000-0000-0000-0000-000000000004",
    "onboarding_client_secret": "stub-onboarding-secret",
    "token_lifetime_seconds": 3600,
    "token_lifetime_sequence": [],
    "fail_token": False,
    "connect_delay_seconds": 0,
    "machine_status": {},
    "mi_system_assigned": True,
    "mi_client_ids": [],
    "arc_token_dir": None,
    "graph_page_size": 1000,
    "graph_denied": False,
    "fail_delete": None,
}
MACHINE_STATUSES = ("Connected", "Disconnected", "Error", "AwaitingConnection", "Expired")
AGENT_VERSION = "1.50"
CLOUDS = ("AzureCloud", "AzureUSGovernment", "AzureChinaCloud")
ARC_VARIABLES = ("ARC_SUBSCRIPTION_ID", "ARC_RESOURCE_GROUP", "ARC_LOCATION", "ARC_TENANT_ID",
                 "ARC_CLOUD", "ARC_CORRELATION_ID", "ARC_TAGS", "ARC_ACCESS_TOKEN",
                 "ARC_PROXY_URL", "ARC_INSTALLER_URL", "ARC_GATEWAY_ID", "ARC_PRIVATE_LINK_SCOPE",
                 "ARC_AUTOMATIC_UPGRADE")
# `azcmagent connect` flags -> the script variables the stub checks them as.
AGENT_FLAGS = {"subscription-id": "ARC_SUBSCRIPTION_ID", "resource-group": "ARC_RESOURCE_GROUP",
               "location": "ARC_LOCATION", "tenant-id": "ARC_TENANT_ID", "cloud": "ARC_CLOUD",
               "tags": "ARC_TAGS", "correlation-id": "ARC_CORRELATION_ID",
               "gateway-id": "ARC_GATEWAY_ID", "private-link-scope": "ARC_PRIVATE_LINK_SCOPE",
               "enable-automatic-upgrade": "ARC_AUTOMATIC_UPGRADE"}
REQUIRED_VARIABLES = ("ARC_SUBSCRIPTION_ID", "ARC_RESOURCE_GROUP", "ARC_LOCATION",
                      "ARC_TENANT_ID", "ARC_ACCESS_TOKEN")
REDACTED = "<redacted>"

_TOKEN_PATH = re.compile(r"^/([^/]+)/oauth2/v2\.0/token/?$", re.IGNORECASE)
_MI_PATHS = {"/metadata/identity/oauth2/token": "imds",
             "/arc/metadata/identity/oauth2/token": "arc"}
OIDC_PREFIX = "/oidc"
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
_RG_NAME = re.compile(r"^[\w\-.()]{1,90}$")  # \w: Unicode letters, digits and _ (like Azure)
_MACHINE_NAME = re.compile(r"^[a-zA-Z0-9\-_.]{1,54}$")
_TAG_NAME_FORBIDDEN = set("<>%&\\?/")
# The install scripts' line that appends the per-instance ownership tag (Linux, then Windows).
_INSTANCE_TAG_LINE = re.compile(
    r'AwsInstanceId=\$INSTANCE_ID"|\$tags = \'AwsInstanceId=\' \+ \$instanceId')
_SENSITIVE_KEY = re.compile(r"token|secret|assertion|password|signature|sig$|code$", re.IGNORECASE)

# The install script's assignment block (see parse_assignments).
_BASH_START = re.compile(r"(ARC_[A-Z0-9_]*)=")
# One POSIX shell word that bash assigns verbatim (no expansion of any kind): single-quoted
# segments, backslash escapes (not of a newline), double-quoted segments without $ ` \ and
# unquoted characters that are never special.
_BASH_WORD = re.compile(r"(?:'[^']*'|\\[^\n]|\"[^\"$`\\]*\"|[A-Za-z0-9_@%+=:,./#-])*")
_BASH_REST = re.compile(r"(?:[ \t]+(?:#[^\n]*)?)?(?:\n|\Z)")
_PS_START = re.compile(r"\$(ARC_[A-Z0-9_]*)[ \t]*=[ \t]*")
_PS_REST = re.compile(r"[ \t\r]*(?:#[^\n]*)?(?:\n|\Z)")
# PowerShell treats all of these as single quotes inside and around single-quoted strings.
_PS_QUOTES = "'\u2018\u2019\u201a\u201b"
_SKIPPABLE = re.compile(r"[ \t\r]*(?:#[^\n]*)?(?:\n|\Z)")


class ControlError(Exception):
    """A control-API request that cannot be served (rendered as ``{"error": ...}``)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class ArmError(Exception):
    """An ARM-style failure: ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


class ScriptError(ValueError):
    """The install script's ARC_* assignment block cannot be parsed."""


# ----- install-script parsing --------------------------------------------------------------

def _ps_string(text: str, pos: int, name: str) -> tuple[str, int]:
    """Decode a PowerShell single-quoted string starting at ``pos``: (value, end)."""
    if pos >= len(text) or text[pos] not in _PS_QUOTES:
        raise ScriptError(f"${name}: value is not a single-quoted PowerShell string")
    out, i = [], pos + 1
    while True:
        if i >= len(text):
            raise ScriptError(f"${name}: unterminated single-quoted string")
        char = text[i]
        if char in _PS_QUOTES:
            if i + 1 < len(text) and text[i + 1] in _PS_QUOTES:
                out.append(text[i + 1])
                i += 2
                continue
            return "".join(out), i + 1
        out.append(char)
        i += 1


def parse_assignments(script: str) -> tuple[str, dict[str, str]]:
    """Parse the ARC_* assignment block at the top of an install script.

    Returns ``("bash" | "powershell", {name: value})``. Lines before the first assignment
    (shebang, comments, ``set -e``...) are skipped; the block ends at the first line that is
    neither an assignment nor blank nor a comment. Raises ScriptError for anything that the real
    shell would read differently from what this parser decodes.
    """
    form: str | None = None
    values: dict[str, str] = {}
    pos = 0
    while pos < len(script):
        bash, ps = _BASH_START.match(script, pos), _PS_START.match(script, pos)
        if bash or ps:
            this = "bash" if bash else "powershell"
            if form is not None and form != this:
                raise ScriptError("the assignment block mixes bash and PowerShell forms")
            form = this
            if bash:
                name = bash.group(1)
                word = _BASH_WORD.match(script, bash.end())
                rest = _BASH_REST.match(script, word.end())
                if rest is None:
                    raise ScriptError(f"{name}: value is not one expansion-free POSIX word "
                                      f"(use '...' with '\\'' for a quote)")
                raw = word.group(0)
                if len(raw) >= 2 and raw[0] == raw[-1] == "'" and "'" not in raw[1:-1]:
                    # One single-quoted word: the shell takes its text as it is. (shlex reads a
                    # character at a time: a sealed token of 50 instances took it 30 ms.)
                    value = raw[1:-1]
                else:
                    value = "".join(shlex.split(raw, posix=True)) if raw else ""
                end = rest.end()
            else:
                name = ps.group(1)
                value, after = _ps_string(script, ps.end(), name)
                rest = _PS_REST.match(script, after)
                if rest is None:
                    raise ScriptError(f"${name}: unexpected text after the closing quote")
                end = rest.end()
            if name in values:
                raise ScriptError(f"{name} is assigned twice")
            values[name] = value
            pos = end
            continue
        line_end = script.find("\n", pos)
        line_end = len(script) if line_end < 0 else line_end + 1
        if form is not None and not _SKIPPABLE.fullmatch(script, pos, line_end):
            break  # the first statement after the block
        pos = line_end
    if form is None:
        raise ScriptError("no ARC_* assignment block found")
    return form, values


def parse_tags(text: str) -> dict[str, str]:
    """``K=V,K2='V 2'`` as azcmagent's ``--tags`` reads it (empty text: no tags): comma-separated
    ``NAME=VALUE`` pairs; a name or value that starts with a single quote runs to the next single
    quote (as azcmagent documents for spaces) and may hold ``=``, ``,``, spaces and ``"``. An unquoted
    name ends at the first ``=``, an unquoted value at the next comma."""
    tags: dict[str, str] = {}
    if text == "":
        return tags
    n = len(text)

    def read_part(i: int, stop: str) -> tuple[str, int]:
        if i < n and text[i] == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ValueError(f"tags {text!r} have an unclosed single quote")
            return text[i + 1:end], end + 1
        j = i
        while j < n and text[j] not in stop:
            j += 1
        return text[i:j], j

    i = 0
    while True:
        key, i = read_part(i, "=,")
        if i >= n or text[i] != "=":
            raise ValueError(f"tag {key!r} is not KEY=VALUE")
        value, i = read_part(i + 1, ",")
        if key == "":
            raise ValueError(f"tag ={value!r} has an empty name")
        tags[key] = value
        if i >= n:
            return tags
        if text[i] != ",":
            raise ValueError(f"tags {text!r}: text after a quoted part")
        i += 1


# ----- validation helpers ------------------------------------------------------------------

def normalize_location(location: str) -> str:
    """Azure's canonical location spelling: 'East US' -> 'eastus'."""
    return re.sub(r"\s+", "", location).lower()


def check_tags(tags: Any) -> dict[str, str]:
    """ARM's tag rules; raises ArmError(400)."""
    if not isinstance(tags, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise ArmError(400, "InvalidRequestContent", "tags must be an object of string values")
    if len(tags) > 50:
        raise ArmError(400, "InvalidTag", f"At most 50 tags are allowed; got {len(tags)}.")
    for key, value in tags.items():
        if not key or len(key) > 512:
            raise ArmError(400, "InvalidTagNameLength",
                           f"The tag name '{key}' must be 1 to 512 characters long.")
        if _TAG_NAME_FORBIDDEN & set(key):
            raise ArmError(400, "InvalidTagNameCharacters",
                           f"The tag names '{key}' have reserved characters '<,>,%,&,\\,?,/' "
                           "or control characters.")
        if len(value) > 256:
            raise ArmError(400, "InvalidTagValueLength",
                           f"The value of tag '{key}' is longer than 256 characters.")
    return dict(tags)


def check_rg_name(name: str) -> None:
    if not _RG_NAME.match(name) or name.endswith("."):
        raise ArmError(400, "InvalidResourceGroup",
                       f"The provided resource group name '{name}' has these invalid characters: "
                       "resource group names must be 1-90 letters, digits, '_', '-', '.', '(' "
                       "or ')' and must not end in '.'.")


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _validate_machine_status(instance_id: str, value: Any) -> dict[str, Any]:
    """A machine_status entry: "Error" or {"status": "Error", "code": .., "message": ..}."""
    if isinstance(value, str):
        value = {"status": value}
    if not isinstance(value, dict) or value.get("status") not in MACHINE_STATUSES:
        raise ControlError(f"machine_status[{instance_id}] must be one of "
                           f"{', '.join(MACHINE_STATUSES)} or {{\"status\", \"code\", \"message\"}}")
    unknown = set(value) - {"status", "code", "message"}
    if unknown:
        raise ControlError(f"machine_status[{instance_id}]: unknown fields "
                           f"{', '.join(sorted(unknown))}")
    return value


def _validate_config(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ControlError("config must be a JSON object")
    clean: dict[str, Any] = {}
    for key, value in body.items():
        if key not in DEFAULT_CONFIG:
            raise ControlError(f"unknown config key {key}")
        if key in ("tenant_id", "subscription_id", "client_id", "client_secret",
                   "onboarding_client_id", "onboarding_client_secret"):
            if not isinstance(value, str) or not value:
                raise ControlError(f"{key} must be a non-empty string")
        elif key in ("fail_token", "graph_denied"):
            if not isinstance(value, bool):
                raise ControlError(f"{key} must be true or false")
        elif key == "graph_page_size":
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
                raise ControlError("graph_page_size must be an integer from 1 to 1000")
        elif key == "token_lifetime_seconds":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ControlError("token_lifetime_seconds must be a non-negative integer")
        elif key == "token_lifetime_sequence":
            if not isinstance(value, list) or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
                raise ControlError("token_lifetime_sequence must be a list of non-negative integers")
        elif key == "mi_system_assigned":
            if not isinstance(value, bool):
                raise ControlError("mi_system_assigned must be true or false")
        elif key == "mi_client_ids":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ControlError("mi_client_ids must be a list of client ids")
        elif key == "arc_token_dir":
            if value is not None and not (isinstance(value, str) and value.startswith("/")):
                raise ControlError("arc_token_dir must be an absolute directory path or null")
        elif key == "connect_delay_seconds":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ControlError("connect_delay_seconds must be a non-negative number")
        elif key == "fail_delete":
            if value is not None and not (
                    isinstance(value, dict) and set(value) <= {"status", "code", "message"}
                    and isinstance(value.get("status"), int) and 400 <= value["status"] <= 599):
                raise ControlError('fail_delete must be null or {"status": 4xx|5xx, "code", '
                                   '"message"}')
        elif key == "machine_status":
            if not isinstance(value, dict):
                raise ControlError("machine_status must be an object keyed by instance id")
            for iid, entry in value.items():
                _validate_machine_status(iid, entry)
        clean[key] = value
    return clean


def _default_error_details(instance_id: str) -> list[dict[str, str]]:
    return [{"code": "AZCM0000",
             "message": f"Simulated agent error on {instance_id} (azure-stub machine_status)."}]


# ----- the application ---------------------------------------------------------------------

class AzureStub:
    """The WSGI application: token endpoint, ARM, agent connect and the control API."""

    def __init__(self, verbose: bool = False):
        # The stub's own address (set by main once bound); the OIDC issuer URL is built from it.
        self.base_url = "http://127.0.0.1"
        self.lock = threading.RLock()
        self.verbose = verbose
        self.timers: list[threading.Timer] = []
        self._reset_state()
        self.routes: dict[tuple[str, str], Callable[[Any], Any]] = {
            ("GET", "health"): lambda _: {"ok": True},
            ("POST", "reset"): lambda _: self._reset_all(),
            ("GET", "config"): lambda _: self._config_view(),
            ("POST", "config"): self._set_config,
            ("GET", "requests"): lambda _: {"requests": list(self.requests)},
            ("POST", "requests/reset"): lambda _: self._clear(self.requests),
            ("GET", "connects"): lambda _: {"connects": list(self.connects)},
            ("POST", "connects/reset"): lambda _: self._clear(self.connects),
            ("GET", "resource-groups"): lambda _: {"resource_groups": [
                self._rg_control_view(rg) for rg in self.groups.values()]},
            ("POST", "resource-groups"): self._seed_group,
            ("GET", "machines"): lambda _: {"machines": [
                self._machine_control_view(m) for m in self.machines.values()]},
            ("POST", "machines"): self._seed_machine,
            ("POST", "machines/elsewhere"): self._seed_elsewhere,
            ("POST", "machines/defender"): self._seed_defender,
            ("GET", "certificates"): lambda _: {"certificates": [
                self.verifier.certificate_view(c) for c in self.verifier.certificates]},
            ("POST", "certificates"): self._register_certificate,
            ("POST", "certificates/generate"): self._generate_certificate,
            ("GET", "federated-credentials"): lambda _: {"federated_credentials": [
                dict(f) for f in self.verifier.federated]},
            ("POST", "federated-credentials"): self._add_federated,
            ("POST", "oidc/token"): self._mint_oidc_token,
            ("POST", "tokens"): self._mint_access_token,
            # Every access token issued so far, in the clear: for tests that look for them where they
            # must not be (command parameters, outputs, files left on instances).
            ("GET", "tokens/issued"): lambda _: {"tokens": list(self.tokens)},
        }

    def _reset_state(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers = []
        self.generation = getattr(self, "generation", 0) + 1
        self.config: dict[str, Any] = json.loads(json.dumps(DEFAULT_CONFIG))
        self.tokens: dict[str, dict[str, Any]] = {}  # token -> {"expires_at", "tenant", ...}
        self.groups: dict[str, dict[str, Any]] = {}  # lower-case name -> group
        self.machines: dict[tuple[str, str], dict[str, Any]] = {}  # (rg key, name key)
        # Machines in other subscriptions: only Resource Graph sees them.
        self.foreign_machines: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.connects: list[dict[str, Any]] = []
        self.seq = 0
        self.verifier = identity.Verifier()
        self.issuer = identity.Issuer()
        self.challenges = identity.ManagedIdentityChallenges()

    def cancel_timers(self) -> None:
        with self.lock:
            for timer in self.timers:
                timer.cancel()

    # ----- WSGI entry ----------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        request = Request(environ)
        path = request.path
        if path.startswith(CONTROL_PREFIX) and path.rstrip("/") != "/_stub/agent/connect":
            response = self._control(request)
        else:
            if path.rstrip("/") == "/_stub/agent/connect":
                kind, handler = "connect", self._connect
            elif _TOKEN_PATH.match(path):
                kind, handler = "token", self._token
            elif path.rstrip("/") in _MI_PATHS:
                kind, handler = "managed-identity", self._managed_identity
            elif path == OIDC_PREFIX or path.startswith(OIDC_PREFIX + "/"):
                kind, handler = "oidc", self._oidc
            else:
                kind, handler = "arm", self._arm
            extra: dict[str, Any] = {}
            try:
                response = handler(request, extra)
            except Exception as exc:  # never let a bug hang the client
                logging.getLogger("azure-stub").exception("internal error")
                response = _arm_json(500, {"error": {"code": "InternalServerError",
                                                     "message": f"azure-stub failed: {exc!r}"}})
            self._record(kind, request, response.status_code, extra)
        return response(environ, start_response)

    def _record(self, kind: str, request: Request, status: int, extra: dict[str, Any]) -> None:
        query = {key: (REDACTED if _SENSITIVE_KEY.search(key) else value)
                 for key, value in request.args.items()}
        with self.lock:
            self.seq += 1
            entry = {"seq": self.seq, "time": time.time(), "method": request.method,
                     "path": request.path, "query": query, "status": status, "kind": kind,
                     **extra}
            self.requests.append(entry)
        if self.verbose:
            print(f"azure-stub: #{entry['seq']} {kind} {request.method} {request.path} -> {status}",
                  file=sys.stderr, flush=True)

    # ----- Entra token endpoint ------------------------------------------------------------

    def _token(self, request: Request, extra: dict[str, Any]) -> Response:
        tenant = _TOKEN_PATH.match(request.path).group(1)
        form = request.form
        extra.update({"client_id": form.get("client_id"), "tenant": tenant,
                      "scope": form.get("scope"), "ok": False})

        def fail(status: int, error: str, aadsts: int, text: str) -> Response:
            extra["error"] = error
            return _token_error(status, error, aadsts, text)

        if request.method != "POST":
            return fail(405, "invalid_request", 900561,
                        "The endpoint only accepts POST, OPTIONS requests. Received a "
                        f"{request.method} request.")
        # Assertions are verified outside the lock: a federated one may make the stub fetch its own
        # OIDC issuer's JWKS. The result is used where Entra's order of checks puts it.
        verdict: str | identity.AssertionRejected | None = None
        if form.get("client_assertion") and form.get("client_id"):
            endpoint = f"{request.host_url.rstrip('/')}{request.path}"
            assertion_extra: dict[str, Any] = {}
            try:
                verdict = self.verifier.verify(form["client_assertion"], form["client_id"],
                                               endpoint, assertion_extra)
            except identity.AssertionRejected as exc:
                verdict = exc
            extra.update(assertion_extra)
        with self.lock:
            config = dict(self.config)
            if config["fail_token"]:
                return fail(503, "temporarily_unavailable", 90033,
                            "A transient error has occurred. Please try again. (azure-stub "
                            "fail_token)")
            if tenant.lower() != config["tenant_id"].lower():
                return fail(400, "invalid_request", 90002,
                            f"Tenant '{tenant}' not found. Check to make sure you have the "
                            "correct tenant ID and are signing into the correct cloud.")
            for name in ("grant_type", "client_id", "scope"):
                if not form.get(name):
                    return fail(400, "invalid_request", 900144,
                                f"The request body must contain the following parameter: "
                                f"'{name}'.")
            if form["grant_type"] != "client_credentials":
                return fail(400, "unsupported_grant_type", 70003,
                            "The app requested an unsupported grant type "
                            f"'{form['grant_type']}'.")
            if form.get("client_assertion"):
                if form.get("client_assertion_type") != identity.JWT_BEARER:
                    return fail(400, "invalid_request", 700025,
                                "client_assertion_type must be "
                                f"'{identity.JWT_BEARER}'.")
                if isinstance(verdict, identity.AssertionRejected):
                    extra["client_auth"] = "assertion"
                    return fail(verdict.status, verdict.error, verdict.aadsts, verdict.text)
                extra["client_auth"] = verdict
            elif not form.get("client_secret"):
                return fail(401, "invalid_client", 7000218,
                            "The request body must contain the following parameter: "
                            "'client_assertion' or 'client_secret'.")
            elif not self._secret_matches(form["client_id"], form["client_secret"]):
                extra["client_auth"] = "secret"
                return fail(401, "invalid_client", 7000215,
                            "Invalid client secret provided. Ensure the secret being sent in the "
                            "request is the client secret value, not the client secret ID, for a "
                            f"secret added to app '{form['client_id']}'.")
            else:
                extra["client_auth"] = "secret"
            scope = form["scope"]
            if not scope.endswith("/.default") or len(scope) <= len("/.default") or " " in scope:
                return fail(400, "invalid_scope", 1002012,
                            f"The provided value for scope {scope} is not valid. Client "
                            "credential flows must have a scope value with /.default suffixed "
                            "to the resource identifier (application ID URI).")
            # The next lifetime of the sequence (consumed), then the configured default.
            token, lifetime = self._issue_token(None, form["client_id"], scope)
        extra["ok"] = True
        return _json(200, {"token_type": "Bearer", "expires_in": lifetime,
                           "ext_expires_in": lifetime, "access_token": token},
                     {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})

    def _issue_token(self, lifetime: int | None, client_id: str, scope: str) -> tuple[str, int]:
        """A new access token (caller holds the lock): the next lifetime of the sequence, else the
        default."""
        if lifetime is None:
            sequence = self.config["token_lifetime_sequence"]
            lifetime = sequence.pop(0) if sequence else self.config["token_lifetime_seconds"]
        token = secrets.token_urlsafe(48)
        self.tokens[token] = {"expires_at": time.time() + lifetime,
                              "tenant": self.config["tenant_id"], "client_id": client_id,
                              "scope": scope}
        return token, lifetime

    # ----- managed identity ------------------------------------------------------------------

    def _managed_identity(self, request: Request, extra: dict[str, Any]) -> Response:
        """IMDS (``/metadata/...``) or the Azure Arc agent (``/arc/metadata/...``)."""
        mode = _MI_PATHS[request.path.rstrip("/")]
        extra.update({"mode": mode, "ok": False, "client_id": request.args.get("client_id")})

        def fail(status: int, error: str, text: str, headers: dict[str, str] | None = None):
            extra["error"] = error
            return _json(status, {"error": error, "error_description": text}, headers)

        if request.method != "GET":
            return fail(405, "invalid_request", "The endpoint only accepts GET requests.")
        if request.headers.get("Metadata", "").lower() != "true":
            return fail(400, "invalid_request", "Required metadata header not specified")
        resource = request.args.get("resource")
        if not request.args.get("api-version") or not resource:
            return fail(400, "invalid_request",
                        "Required query variable 'api-version' or 'resource' is missing")
        with self.lock:
            config = dict(self.config)
            if mode == "arc":
                if request.args.get("client_id") or request.args.get("object_id"):
                    return fail(400, "invalid_request",
                                "User assigned identities are not supported on Azure Arc.")
                header = request.headers.get("Authorization", "")
                if not header:
                    token_dir = config["arc_token_dir"]
                    if token_dir is None:
                        return fail(500, "server_error", "azure-stub: arc_token_dir is not set")
                    path = self.challenges.issue(token_dir)
                    extra["challenge"] = True
                    return fail(401, "unauthorized", "Challenge issued",
                                {"WWW-Authenticate": f"Basic realm={path}"})
                scheme, _, secret = header.partition(" ")
                if scheme != "Basic" or not self.challenges.redeem(secret.strip()):
                    return fail(401, "unauthorized", "Invalid challenge response")
                client_id = config["client_id"]
            else:
                wanted = request.args.get("client_id")
                if wanted is None:
                    if not config["mi_system_assigned"]:
                        return fail(400, "invalid_request", "Identity not found")
                    client_id = config["client_id"]
                elif wanted.lower() in [c.lower() for c in config["mi_client_ids"]]:
                    client_id = wanted
                else:
                    return fail(400, "invalid_request", "Identity not found")
            token, lifetime = self._issue_token(None, client_id, resource)
        extra["ok"] = True
        now = int(time.time())
        return _json(200, {"access_token": token, "client_id": client_id,
                           "expires_in": str(lifetime), "expires_on": str(now + lifetime),
                           "ext_expires_in": str(lifetime), "not_before": str(now),
                           "resource": resource, "token_type": "Bearer"})

    # ----- the stub's own OIDC issuer --------------------------------------------------------

    def issuer_url(self) -> str:
        return f"{self.base_url}{OIDC_PREFIX}"

    def _oidc(self, request: Request, extra: dict[str, Any]) -> Response:
        rest = request.path[len(OIDC_PREFIX):]
        if rest == "/.well-known/openid-configuration":
            return _json(200, self.issuer.discovery(self.issuer_url()))
        if rest == "/openid/v1/jwks":
            return _json(200, self.issuer.jwks())
        extra["error"] = "NotFound"
        return _json(404, {"error": f"no OIDC document at {request.path}"})

    def _mint_access_token(self, body: Any) -> dict[str, Any]:
        """An ARM access token handed out of band (what `az account get-access-token` would print)."""
        lifetime = body.get("lifetime_seconds") if isinstance(body, dict) else None
        if lifetime is not None and (not isinstance(lifetime, int) or isinstance(lifetime, bool)
                                     or lifetime < 0):
            raise ControlError("lifetime_seconds must be a non-negative integer")
        client_id = self._client_of(body) if isinstance(body, dict) else self.config["client_id"]
        token, lifetime = self._issue_token(lifetime, client_id,
                                            "https://management.azure.com/.default")
        return {"access_token": token, "expires_on": int(time.time()) + lifetime,
                "tenant": self.config["tenant_id"]}

    def _mint_oidc_token(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("subject"), str):
            raise ControlError('body must be {"subject", "audience", "lifetime_seconds"}')
        audience = body.get("audience", "api://AzureADTokenExchange")
        lifetime = body.get("lifetime_seconds", 3600)
        if not isinstance(lifetime, int) or isinstance(lifetime, bool):
            raise ControlError("lifetime_seconds must be an integer")
        issuer = self.issuer_url()
        return {"token": self.issuer.mint(issuer, body["subject"], audience, lifetime),
                "issuer": issuer}

    # ----- credentials registered for clients (control API) ----------------------------------

    def _client_of(self, body: dict[str, Any]) -> str:
        client_id = body.get("client_id", self.config["client_id"])
        if not isinstance(client_id, str) or not client_id:
            raise ControlError("client_id must be a non-empty string")
        return client_id

    def _register_certificate(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("pem"), str):
            raise ControlError('body must be {"client_id", "pem"}')
        try:
            return self.verifier.register_certificate(self._client_of(body), body["pem"])
        except ValueError as exc:
            raise ControlError(f"pem holds no usable certificate: {exc}") from exc

    def _generate_certificate(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ControlError("body must be a JSON object")
        try:
            start, end = identity.certificate_window(body)
        except ValueError as exc:
            raise ControlError(str(exc)) from exc
        pem, cert = identity.generate_certificate(body.get("subject", "arc-onboard-test"),
                                                  start, end)
        view: dict[str, Any] = {"pem": pem, **{k.replace("#S256", "_s256"): v for k, v in
                                                identity.thumbprints(cert).items()}}
        if body.get("register", True):
            self.verifier.register_certificate(
                self._client_of(body),
                cert.public_bytes(identity.serialization.Encoding.PEM).decode())
        view["registered"] = bool(body.get("register", True))
        return view

    def _add_federated(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ControlError("body must be a JSON object")
        issuer, subject = body.get("issuer"), body.get("subject")
        audiences = body.get("audiences", ["api://AzureADTokenExchange"])
        if not isinstance(issuer, str) or not isinstance(subject, str) or not issuer or not subject:
            raise ControlError('body must be {"client_id", "issuer", "subject", "audiences"}')
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise ControlError("audiences must be a list of strings")
        return self.verifier.add_federated(self._client_of(body), issuer, subject, audiences)

    def _secret_matches(self, client_id: str, secret: str) -> bool:
        """Whether ``secret`` is the secret of ``client_id``: the orchestrator's app or the onboarding
        identity's (caller holds the lock)."""
        config = self.config
        for app, app_secret in ((config["client_id"], config["client_secret"]),
                                (config["onboarding_client_id"],
                                 config["onboarding_client_secret"])):
            if client_id.lower() == app.lower():
                return secrets.compare_digest(secret.encode(), app_secret.encode())
        return False

    def _is_onboarding_token(self, token: str | None) -> bool:
        """Whether ``token`` was issued to the onboarding identity (caller holds the lock)."""
        info = self.tokens.get(token or "")
        return info is not None and (info["client_id"] or "").lower() == \
            self.config["onboarding_client_id"].lower()

    def _token_state(self, token: str | None) -> str:
        """'live', 'expired' or 'unknown' (caller holds the lock)."""
        info = self.tokens.get(token or "")
        if info is None:
            return "unknown"
        return "live" if time.time() < info["expires_at"] else "expired"

    # ----- Azure Resource Manager ----------------------------------------------------------

    def _arm(self, request: Request, extra: dict[str, Any]) -> Response:
        try:
            payload, status = self._arm_dispatch(request)
        except ArmError as exc:
            extra["error"] = exc.code
            body = {} if request.method == "HEAD" else {
                "error": {"code": exc.code, "message": exc.message}}
            return _arm_json(exc.status, body, exc.headers, head=request.method == "HEAD")
        if request.method == "HEAD":
            return Response(status=204)
        if status == 204:
            return _arm_json(204, None, head=True)
        return _arm_json(status, payload)

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        tenant = self.config["tenant_id"]
        challenge = (f'Bearer authorization_uri="https://login.microsoftonline.com/{tenant}", '
                     'error="invalid_token", error_description="{}"')
        if not header:
            message = "The authentication failed because of missing 'Authorization' header."
            raise ArmError(401, "InvalidAuthenticationToken", message,
                           {"WWW-Authenticate": challenge.format(message)})
        if scheme.lower() != "bearer" or not token.strip():
            message = "The 'Authorization' header is not a Bearer token."
            raise ArmError(401, "InvalidAuthenticationToken", message,
                           {"WWW-Authenticate": challenge.format(message)})
        state = self._token_state(token.strip())
        if state == "expired":
            message = ("The access token expiry UTC time is earlier than current UTC time.")
            raise ArmError(401, "ExpiredAuthenticationToken", message,
                           {"WWW-Authenticate": challenge.format(message)})
        if state != "live":
            message = "The access token is invalid."
            raise ArmError(401, "InvalidAuthenticationToken", message,
                           {"WWW-Authenticate": challenge.format(message)})
        if self._is_onboarding_token(token.strip()):
            client = self.config["onboarding_client_id"]
            raise ArmError(403, "AuthorizationFailed",
                           f"The client '{client}' does not have authorization to perform action "
                           f"'{request.method} {request.path}' (it holds only the Azure Connected "
                           "Machine Onboarding role).")

    def _arm_dispatch(self, request: Request) -> tuple[Any, int]:
        with self.lock:
            self._authenticate(request)
            api_version = request.args.get("api-version")
            if not api_version:
                raise ArmError(400, "MissingApiVersionParameter",
                               "The api-version query parameter (?api-version=) is required for "
                               "all requests.")
            if not _API_VERSION.match(api_version):
                raise ArmError(400, "InvalidApiVersionParameter",
                               f"The api-version '{api_version}' is invalid. The supported "
                               "versions look like 'yyyy-mm-dd' or 'yyyy-mm-dd-preview'.")
            segments = request.path.strip("/").split("/")
            lower = [s.lower() for s in segments]
            method = request.method
            if len(segments) >= 4 and lower[0] == "subscriptions" and lower[2] == "resourcegroups":
                self._check_subscription(segments[1])
                rg = segments[3]
                if len(segments) == 4:
                    if method in ("GET", "HEAD"):
                        return self._rg_view(self._group(rg)), 200
                    if method == "PUT":
                        return self._put_group(rg, request)
                    raise _method_not_allowed(method, request.path)
                if (len(segments) in (7, 8) and lower[4] == "providers"
                        and lower[5] == "microsoft.hybridcompute" and lower[6] == "machines"):
                    if method == "DELETE" and len(segments) == 8:
                        return self._delete_machine(rg, segments[7])
                    if method != "GET":
                        raise _method_not_allowed(method, request.path)
                    group = self._group(rg)
                    if len(segments) == 7:
                        return {"value": [self._machine_view(m) for m in self.machines.values()
                                          if m["rg"] == group["key"]]}, 200
                    machine = self.machines.get((group["key"], segments[7].lower()))
                    if machine is None:
                        raise ArmError(404, "ResourceNotFound",
                                       f"The Resource 'Microsoft.HybridCompute/machines/"
                                       f"{segments[7]}' under resource group '{rg}' was not "
                                       "found. For more details please go to "
                                       "https://aka.ms/ARMResourceNotFoundFix")
                    return self._machine_view(machine), 200
            if lower == ["providers", "microsoft.resourcegraph", "resources"]:
                if method != "POST":
                    raise _method_not_allowed(method, request.path)
                return self._resource_graph(request), 200
            raise ArmError(404, "NotFound",
                           f"azure-stub does not serve {method} {request.path}")

    def _delete_machine(self, rg: str, name: str) -> tuple[Any, int]:
        """As ARM answers ``DELETE .../machines/{name}``: 200 once deleted, 204 when there was no such
        machine, 404 ``ResourceGroupNotFound`` without the group; ``fail_delete`` injects a failure."""
        group = self._group(rg)
        failure = self.config["fail_delete"]
        if failure is not None:
            raise ArmError(failure["status"], failure.get("code", "InternalServerError"),
                           failure.get("message", "azure-stub fail_delete"))
        if self.machines.pop((group["key"], name.lower()), None) is None:
            return None, 204
        return None, 200

    def _check_subscription(self, subscription: str) -> None:
        if subscription.lower() != self.config["subscription_id"].lower():
            raise ArmError(404, "SubscriptionNotFound",
                           f"The subscription '{subscription}' could not be found.")

    def _group(self, name: str) -> dict[str, Any]:
        group = self.groups.get(name.lower())
        if group is None:
            raise ArmError(404, "ResourceGroupNotFound",
                           f"Resource group '{name}' could not be found.")
        return group

    def _put_group(self, name: str, request: Request) -> tuple[Any, int]:
        check_rg_name(name)
        try:
            body = json.loads(request.get_data(as_text=True) or "null")
        except ValueError:
            raise ArmError(400, "InvalidRequestContent",
                           "The request content was invalid and could not be deserialized.")
        if not isinstance(body, dict):
            raise ArmError(400, "InvalidRequestContent",
                           "The request content must be a JSON object.")
        location = body.get("location")
        if not isinstance(location, str) or not normalize_location(location):
            raise ArmError(400, "LocationRequired",
                           "The location property is required for this definition.")
        tags = check_tags(body.get("tags") if body.get("tags") is not None else {})
        return self._upsert_group(name, normalize_location(location), tags)

    def _upsert_group(self, name: str, location: str, tags: dict[str, str]) -> tuple[Any, int]:
        existing = self.groups.get(name.lower())
        if existing is not None:
            if existing["location"] != location:
                raise ArmError(409, "InvalidResourceGroupLocation",
                               f"Invalid resource group location '{location}'. The Resource "
                               f"group already exists in location '{existing['location']}'.")
            existing["tags"] = tags  # PUT replaces the tags
            return self._rg_view(existing), 200
        group = {"key": name.lower(), "name": name, "location": location, "tags": tags}
        self.groups[group["key"]] = group
        return self._rg_view(group), 201

    def _rg_view(self, group: dict[str, Any]) -> dict[str, Any]:
        return {"id": f"/subscriptions/{self.config['subscription_id']}/resourceGroups/"
                      f"{group['name']}",
                "name": group["name"], "type": "Microsoft.Resources/resourceGroups",
                "location": group["location"], "tags": dict(group["tags"]),
                "properties": {"provisioningState": "Succeeded"}}

    def _machine_view(self, machine: dict[str, Any]) -> dict[str, Any]:
        group = self.groups[machine["rg"]]
        properties: dict[str, Any] = {
            "status": machine["status"], "provisioningState": "Succeeded",
            "agentVersion": AGENT_VERSION, "lastStatusChange": machine["last_status_change"],
        }
        if machine["status"] == "Error":
            properties["errorDetails"] = [dict(d) for d in machine["error_details"]]
        properties.update({"vmId": machine["vm_id"], "osName": machine["os_name"]})
        if machine.get("detected_instance_id"):
            # As the agent reports it on EC2: the instance whose agent heartbeats as this machine.
            properties["detectedProperties"] = {"cloudprovider": "AWS",
                                                "AWS-instanceId": machine["detected_instance_id"]}
        return {"id": f"/subscriptions/{self.config['subscription_id']}/resourceGroups/"
                      f"{group['name']}/providers/Microsoft.HybridCompute/machines/"
                      f"{machine['name']}",
                "name": machine["name"], "location": machine["location"],
                "tags": dict(machine["tags"]), "type": "Microsoft.HybridCompute/machines",
                "properties": properties}

    def _upsert_machine(self, rg_key: str, name: str, location: str, tags: dict[str, str],
                        status: str, error_details: list[dict[str, str]] | None,
                        os_name: str, detected_instance_id: str | None = None,
                        last_status_change: str | None = None,
                        connected_with_client_id: str | None = None) -> dict[str, Any]:
        key = (rg_key, name.lower())
        machine = self.machines.get(key)
        if machine is None:
            machine = {"rg": rg_key, "name": name, "vm_id": str(uuid.uuid4())}
            self.machines[key] = machine
        machine.update({"location": location, "tags": tags, "status": status,
                        "error_details": error_details or [], "os_name": os_name,
                        "detected_instance_id": detected_instance_id,
                        "last_status_change": last_status_change or _iso_now(),
                        # The app whose token connected it (None: seeded); control view only.
                        "connected_with_client_id": connected_with_client_id})
        return machine

    # ----- Azure Resource Graph ------------------------------------------------------------

    def _graph_rows(self) -> list[dict[str, Any]]:
        """Every machine as Resource Graph shows it: ours (this subscription), then foreign ones."""
        rows = []
        for machine in self.machines.values():
            view = self._machine_view(machine)
            view.update({"resourceGroup": self.groups[machine["rg"]]["name"],
                         "subscriptionId": self.config["subscription_id"],
                         "type": "microsoft.hybridcompute/machines"})
            rows.append(view)
        for m in self.foreign_machines:
            rows.append({
                "id": f"/subscriptions/{m['subscription_id']}/resourceGroups/"
                      f"{m['resource_group']}/providers/Microsoft.HybridCompute/machines/"
                      f"{m['name']}",
                "name": m["name"], "type": "microsoft.hybridcompute/machines",
                "resourceGroup": m["resource_group"], "subscriptionId": m["subscription_id"],
                "location": m["location"], "tags": dict(m["tags"]),
                "properties": {"status": m["status"], "agentVersion": AGENT_VERSION}})
        return sorted(rows, key=lambda r: r["id"].lower())

    def _resource_graph(self, request: Request) -> dict[str, Any]:
        """``POST /providers/Microsoft.ResourceGraph/resources``: the KQL subset of graph.py, paged."""
        if self.config["graph_denied"]:
            raise ArmError(403, "AuthorizationFailed",
                           "The client does not have authorization to perform action "
                           "'Microsoft.ResourceGraph/resources/read' (azure-stub graph_denied).")
        try:
            body = json.loads(request.get_data(as_text=True) or "null")
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            raise ArmError(400, "BadRequest", 'body must be {"query", "subscriptions", "options"}')
        options = body.get("options") or {}
        subscriptions = body.get("subscriptions")
        if not isinstance(options, dict) or (
                subscriptions is not None and not isinstance(subscriptions, list)):
            raise ArmError(400, "BadRequest", "options must be an object, subscriptions a list")
        every = self._graph_rows()
        if subscriptions is not None:  # without it: every subscription the identity can read
            wanted = {str(sub).lower() for sub in subscriptions}
            every = [r for r in every if r["subscriptionId"].lower() in wanted]
        try:
            rows = graph.evaluate(body["query"], every)
        except graph.QueryError as exc:
            raise ArmError(400, "InvalidQuery", f"Query is invalid: {exc}")
        top = options.get("$top", 1000)
        if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= 1000:
            raise ArmError(400, "BadRequest", "$top must be an integer from 1 to 1000")
        size = min(top, self.config["graph_page_size"])
        token = options.get("$skipToken")
        offset = 0
        if token is not None:
            match = re.fullmatch(r"stub-skip-(\d+)", str(token))
            if match is None:
                raise ArmError(400, "BadRequest", "$skipToken is not one this stub issued")
            offset = int(match.group(1))
        page = rows[offset:offset + size]
        answer: dict[str, Any] = {"totalRecords": len(rows), "count": len(page), "data": page,
                                  "facets": [], "resultTruncated": "false"}
        if offset + size < len(rows):
            answer["$skipToken"] = f"stub-skip-{offset + size}"
        return answer

    # ----- simulated azcmagent connect -----------------------------------------------------

    def _connect(self, request: Request, extra: dict[str, Any]) -> Response:
        if request.mimetype == "application/x-www-form-urlencoded":
            return self._agent_connect(request, extra)
        try:
            body = json.loads(request.get_data(as_text=True) or "null")
        except ValueError:
            body = None
        attempt: dict[str, Any] = {"time": time.time(), "instance_id": None, "region": None,
                                   "account_id": None, "command_id": None, "ok": False,
                                   "error": None, "message": None, "script_form": None,
                                   "os_name": None, "applied": False, "variables": {}}
        valid_payload = (isinstance(body, dict) and isinstance(body.get("instance_id"), str)
                         and body["instance_id"]
                         and isinstance(body.get("commands"), (list, str)))
        if valid_payload:
            for key in ("instance_id", "region", "account_id", "command_id"):
                attempt[key] = body.get(key)
            commands = body["commands"]
            script = commands if isinstance(commands, str) else "\n".join(map(str, commands))
            script = script.removeprefix("\ufeff")  # a byte order mark, if the text kept one
            # The token the instance opened from its sealed configuration (the SSM emulator does what
            # the script does); scripts from before sealing carried it as ARC_ACCESS_TOKEN.
            token = body.get("access_token")
            with self.lock:
                self._attempt_connect(attempt, script,
                                      token if isinstance(token, str) else None)
        else:
            attempt["error"] = "InvalidWebhookPayload"
            attempt["message"] = ('body must be {"instance_id", "region", "account_id", '
                                  '"command_id", "commands": [...]}')
        with self.lock:
            self.connects.append(attempt)
        extra.update({"instance_id": attempt["instance_id"], "ok": attempt["ok"],
                      "error": attempt["error"]})
        if self.verbose or not attempt["ok"]:
            print(f"azure-stub: connect {attempt['instance_id']}: "
                  f"{'ok' if attempt['ok'] else attempt['error'] + ' ' + str(attempt['message'])}",
                  file=sys.stderr, flush=True)
        return _json(200 if valid_payload else 400,
                     {"ok": attempt["ok"], "error": attempt["error"],
                      "message": attempt["message"]})

    def _agent_connect(self, request: Request, extra: dict[str, Any]) -> Response:
        """A fake agent's real ``azcmagent connect`` (the AWS emulator's ``execute_scripts`` mode): the
        access token in ``Authorization: Bearer``, the connect arguments as a form (``subscription-id``,
        ``resource-group``, ``location``, ``tenant-id``, ``cloud``, ``tags``, ``resource-name``, ...,
        ``instance-id``: the instance the agent runs on)."""
        form = request.form
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        values = {variable: form[flag] for flag, variable in AGENT_FLAGS.items() if flag in form}
        if scheme.lower() == "bearer" and token.strip():
            values["ARC_ACCESS_TOKEN"] = token.strip()
        instance_id = form.get("instance-id") or None
        attempt: dict[str, Any] = {"time": time.time(),
                                   "instance_id": form.get("resource-name") or instance_id,
                                   "detected_instance_id": instance_id, "region": None,
                                   "account_id": None, "command_id": None, "ok": False,
                                   "error": None, "message": None, "script_form": "agent",
                                   "os_name": None, "applied": False, "variables": {},
                                   "sealed": False}
        with self.lock:
            if attempt["instance_id"]:
                self._connect_values(attempt, values, "linux", tag_instance=False)
            else:
                attempt["error"], attempt["message"] = ("MissingParameter",
                                                        "neither resource-name nor instance-id")
            self.connects.append(attempt)
        extra.update({"instance_id": attempt["instance_id"], "ok": attempt["ok"],
                      "error": attempt["error"], "form": "agent"})
        if self.verbose or not attempt["ok"]:
            print(f"azure-stub: agent connect {attempt['instance_id']}: "
                  f"{'ok' if attempt['ok'] else attempt['error'] + ' ' + str(attempt['message'])}",
                  file=sys.stderr, flush=True)
        return _json(200, {"ok": attempt["ok"], "error": attempt["error"],
                           "message": attempt["message"]})

    def _attempt_connect(self, attempt: dict[str, Any], script: str,
                         token: str | None = None) -> None:
        """What ``azcmagent connect`` would do with the script's values and ``token`` (the opened
        sealed token; None: the script's own ARC_ACCESS_TOKEN); fills attempt (caller holds the lock)."""
        try:
            form, values = parse_assignments(script)
        except ScriptError as exc:
            attempt["variables"] = {"token_valid": False}
            attempt["error"], attempt["message"] = "ScriptParseError", str(exc)
            return
        attempt["sealed"] = token is not None
        if token is not None:
            values["ARC_ACCESS_TOKEN"] = token
        attempt["script_form"] = form
        self._connect_values(attempt, values, "windows" if form == "powershell" else "linux",
                             tag_instance=bool(_INSTANCE_TAG_LINE.search(script)))

    def _connect_values(self, attempt: dict[str, Any], values: dict[str, str], os_name: str,
                        tag_instance: bool) -> None:
        """``azcmagent connect`` with ``values`` (ARC_* names) on a machine named
        ``attempt["instance_id"]``; ``tag_instance``: the script appends the ownership tag itself."""
        def fail(code: str, message: str) -> None:
            attempt["error"], attempt["message"] = code, message

        attempt["os_name"] = os_name
        state = self._token_state(values.get("ARC_ACCESS_TOKEN"))
        variables = {k: (REDACTED if k == "ARC_ACCESS_TOKEN" else v) for k, v in values.items()}
        variables["token_valid"] = state == "live"
        token_info = self.tokens.get(values.get("ARC_ACCESS_TOKEN") or "")
        if token_info is not None:
            attempt["token_remaining_seconds"] = round(token_info["expires_at"] - time.time(), 1)
            attempt["token_client_id"] = token_info["client_id"]
        attempt["variables"] = variables

        missing = [name for name in REQUIRED_VARIABLES if name not in values]
        if missing:
            return fail("MissingParameter", f"the script does not set {', '.join(missing)}")
        if state == "expired":
            return fail("ExpiredAuthenticationToken", "ARC_ACCESS_TOKEN has expired")
        if state != "live":
            return fail("InvalidAuthenticationToken",
                        "ARC_ACCESS_TOKEN is not a token issued by this stub")
        if values["ARC_TENANT_ID"].lower() != self.tokens[values["ARC_ACCESS_TOKEN"]][
                "tenant"].lower():
            return fail("TenantMismatch", f"ARC_TENANT_ID '{values['ARC_TENANT_ID']}' is not "
                                          "the tenant the access token was issued for")
        cloud = values.get("ARC_CLOUD", "") or "AzureCloud"
        if cloud not in CLOUDS:
            return fail("InvalidCloud", f"ARC_CLOUD '{cloud}' is not one of {', '.join(CLOUDS)}")
        try:
            self._check_subscription(values["ARC_SUBSCRIPTION_ID"])
            group = self._group(values["ARC_RESOURCE_GROUP"])
            location = normalize_location(values["ARC_LOCATION"])
            if not location:
                raise ArmError(400, "LocationRequired", "ARC_LOCATION is empty")
            try:
                tags = parse_tags(values.get("ARC_TAGS", ""))
            except ValueError as exc:
                raise ArmError(400, "InvalidTags", f"ARC_TAGS: {exc}") from exc
            name = attempt["instance_id"]
            if tag_instance:
                # The script appends the per-instance ownership tag to --tags on the instance.
                tags["AwsInstanceId"] = name
            check_tags(tags)
            if not _MACHINE_NAME.match(name):
                raise ArmError(400, "InvalidResourceName",
                               f"Resource name {name} is invalid.")
        except ArmError as exc:
            return fail(exc.code, exc.message)

        override = _validate_machine_status(name, self.config["machine_status"].get(
            name, "Connected"))
        status = override["status"]
        details = None
        if status == "Error":
            details = ([{"code": override.get("code", "AZCM0000"),
                         "message": override.get("message") or _default_error_details(name)[0][
                             "message"]}])
        attempt["ok"] = True

        connected_with = token_info["client_id"] if token_info is not None else None

        def apply() -> None:
            self._upsert_machine(group["key"], name, location, tags, status, details, os_name,
                                 detected_instance_id=attempt.get("detected_instance_id") or name,
                                 connected_with_client_id=connected_with)
            attempt["applied"] = True

        delay = self.config["connect_delay_seconds"]
        if not delay:
            apply()
            return
        generation = self.generation

        def later() -> None:
            with self.lock:
                if self.generation == generation:
                    apply()

        timer = threading.Timer(delay, later)
        timer.daemon = True
        self.timers = [t for t in self.timers if t.is_alive()] + [timer]
        timer.start()

    # ----- control API ---------------------------------------------------------------------

    def _control(self, request: Request) -> Response:
        raw = request.get_data(as_text=True)
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return _json(400, {"error": "request body is not valid JSON"})
        path = request.path[len(CONTROL_PREFIX):].rstrip("/")
        with self.lock:
            route = self.routes.get((request.method, path))
            if route is None:
                return _json(404, {"error": f"no control endpoint {request.method} "
                                            f"{request.path}"})
            try:
                return _json(200, route(body))
            except ControlError as exc:
                return _json(exc.status, {"error": str(exc)})
            except ArmError as exc:
                return _json(409 if exc.status == 409 else 400,
                             {"error": f"{exc.code}: {exc.message}"})

    def _reset_all(self) -> dict[str, Any]:
        self._reset_state()
        return {"ok": True}

    @staticmethod
    def _clear(items: list[Any]) -> dict[str, Any]:
        items.clear()
        return {"ok": True}

    def _config_view(self) -> dict[str, Any]:
        view = json.loads(json.dumps(self.config))
        view["client_secret"] = view["onboarding_client_secret"] = "<set>"
        return view

    def _set_config(self, body: Any) -> dict[str, Any]:
        self.config.update(_validate_config(body))
        return self._config_view()

    def _rg_control_view(self, group: dict[str, Any]) -> dict[str, Any]:
        return {"name": group["name"], "location": group["location"], "tags": dict(group["tags"])}

    def _seed_group(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ControlError('body must be {"name", "location", "tags"}')
        if not isinstance(body.get("location"), str) or not normalize_location(body["location"]):
            raise ControlError("location is required")
        check_rg_name(body["name"])
        self._upsert_group(body["name"], normalize_location(body["location"]),
                           check_tags(body.get("tags") or {}))
        return self._rg_control_view(self.groups[body["name"].lower()])

    def _machine_control_view(self, machine: dict[str, Any]) -> dict[str, Any]:
        return {"resource_group": self.groups[machine["rg"]]["name"],
                "connected_with_client_id": machine.get("connected_with_client_id"),
                **self._machine_view(machine)}

    def _seed_machine(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ControlError("body must be a JSON object")
        unknown = set(body) - {"resource_group", "name", "location", "status", "tags",
                               "os_name", "error_details", "detected_instance_id",
                               "last_status_change"}
        if unknown:
            raise ControlError(f"unknown machine fields: {', '.join(sorted(unknown))}")
        for key in ("resource_group", "name", "location"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise ControlError(f"{key} is required")
        if not _MACHINE_NAME.match(body["name"]):
            raise ControlError(f"machine name {body['name']!r} is invalid")
        status = body.get("status", "Connected")
        if status not in MACHINE_STATUSES:
            raise ControlError(f"status must be one of {', '.join(MACHINE_STATUSES)}")
        os_name = body.get("os_name", "linux")
        if os_name not in ("linux", "windows"):
            raise ControlError("os_name must be linux or windows")
        details = body.get("error_details")
        if details is not None and not (isinstance(details, list) and all(
                isinstance(d, dict) for d in details)):
            raise ControlError("error_details must be a list of {code, message}")
        if status == "Error" and not details:
            details = _default_error_details(body["name"])
        location = normalize_location(body["location"])
        tags = check_tags(body.get("tags") or {})
        group = self.groups.get(body["resource_group"].lower())
        if group is None:
            check_rg_name(body["resource_group"])
            self._upsert_group(body["resource_group"], location, {})
            group = self.groups[body["resource_group"].lower()]
        for key in ("detected_instance_id", "last_status_change"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise ControlError(f"{key} must be a string")
        if body.get("last_status_change"):
            try:
                datetime.fromisoformat(body["last_status_change"].replace("Z", "+00:00"))
            except ValueError as exc:
                raise ControlError("last_status_change must be an ISO 8601 time") from exc
        machine = self._upsert_machine(group["key"], body["name"], location, tags, status,
                                       details, os_name, body.get("detected_instance_id"),
                                       body.get("last_status_change"))
        return self._machine_control_view(machine)

    def _seed_elsewhere(self, body: Any) -> dict[str, Any]:
        """A machine in another resource group, or another subscription (then only Resource Graph
        shows it): {"subscription_id"?, "resource_group", "name", "location"?, "status"?, "tags"?}."""
        if not isinstance(body, dict):
            raise ControlError("body must be a JSON object")
        unknown = set(body) - {"subscription_id", "resource_group", "name", "location", "status",
                               "tags"}
        if unknown:
            raise ControlError(f"unknown machine fields: {', '.join(sorted(unknown))}")
        subscription = body.get("subscription_id", self.config["subscription_id"])
        if not isinstance(subscription, str) or not subscription:
            raise ControlError("subscription_id must be a non-empty string")
        seed = {k: v for k, v in body.items() if k != "subscription_id"}
        seed.setdefault("location", "eastus")
        if subscription.lower() == self.config["subscription_id"].lower():
            return self._seed_machine(seed)
        for key in ("resource_group", "name"):
            if not isinstance(seed.get(key), str) or not seed[key]:
                raise ControlError(f"{key} is required")
        check_rg_name(seed["resource_group"])
        if not _MACHINE_NAME.match(seed["name"]):
            raise ControlError(f"machine name {seed['name']!r} is invalid")
        status = seed.get("status", "Connected")
        if status not in MACHINE_STATUSES:
            raise ControlError(f"status must be one of {', '.join(MACHINE_STATUSES)}")
        machine = {"subscription_id": subscription, "resource_group": seed["resource_group"],
                   "name": seed["name"], "location": normalize_location(seed["location"]),
                   "status": status, "tags": check_tags(seed.get("tags") or {})}
        self.foreign_machines = [m for m in self.foreign_machines if not (
            m["subscription_id"].lower() == subscription.lower()
            and m["resource_group"].lower() == machine["resource_group"].lower()
            and m["name"].lower() == machine["name"].lower())] + [machine]
        return {"subscription_id": subscription, "resource_group": machine["resource_group"],
                "name": machine["name"], "status": status, "tags": dict(machine["tags"])}

    def _seed_defender(self, body: Any) -> dict[str, Any]:
        """A Defender for Cloud-style machine for an EC2 instance: named after the instance, tagged
        InstanceId, AccountId, Cloud and MDFCSecurityConnector: {"instance_id", "account_id",
        "subscription_id"?, "resource_group"?, "name"?, "status"?}."""
        if not isinstance(body, dict):
            raise ControlError("body must be a JSON object")
        unknown = set(body) - {"instance_id", "account_id", "subscription_id", "resource_group",
                               "name", "status"}
        if unknown:
            raise ControlError(f"unknown fields: {', '.join(sorted(unknown))}")
        for key in ("instance_id", "account_id"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise ControlError(f"{key} is required")
        seed = {"resource_group": body.get("resource_group", "defender-aws-connector"),
                "name": body.get("name", body["instance_id"]),
                "status": body.get("status", "Connected"),
                "tags": {"InstanceId": body["instance_id"], "AccountId": body["account_id"],
                         "Cloud": "AWS", "MDFCSecurityConnector": "aws-connector"}}
        if "subscription_id" in body:
            seed["subscription_id"] = body["subscription_id"]
        return self._seed_elsewhere(seed)


def _method_not_allowed(method: str, path: str) -> ArmError:
    return ArmError(405, "MethodNotAllowed", f"azure-stub does not support {method} {path}")


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload), status=status, headers=headers,
                    content_type="application/json; charset=utf-8")


def _arm_json(status: int, payload: Any, headers: dict[str, str] | None = None,
              head: bool = False) -> Response:
    headers = {"x-ms-request-id": str(uuid.uuid4()), **(headers or {})}
    if head:
        return Response(status=status, headers=headers)
    return _json(status, payload, headers)


def _token_error(status: int, error: str, aadsts: int, text: str) -> Response:
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return _json(status, {
        "error": error,
        "error_description": f"AADSTS{aadsts}: {text} Trace ID: {trace} Correlation ID: "
                             f"{correlation} Timestamp: {stamp}",
        "error_codes": [aadsts], "timestamp": stamp, "trace_id": trace,
        "correlation_id": correlation,
    })


class BurstServer(ThreadedWSGIServer):
    """werkzeug's threaded server with a listen backlog that holds a burst: a 1,000-instance benchmark
    fires its success webhooks within a second, and werkzeug's backlog of 128 let the kernel reset the
    rest ("Connection reset by peer"). The kernel caps it at ``net.core.somaxconn``."""

    request_queue_size = 4096


class QuietRequestHandler(WSGIRequestHandler):
    """werkzeug's request handler without the per-request access log."""

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--verbose", action="store_true", help="log each request to stderr")
    args = parser.parse_args(argv)

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = AzureStub(verbose=args.verbose)
    server = BurstServer(args.host, args.port, app, QuietRequestHandler)

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    app.base_url = f"http://{args.host}:{server.socket.getsockname()[1]}"
    print(f"LISTENING {app.base_url}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        app.cancel_timers()


if __name__ == "__main__":
    main()
