"""SSM behaviour the emulator implements itself instead of moto.

Managed-instance rule: an EC2 instance is SSM-managed and ``Online`` once it has been
running, with an instance profile whose role carries ``AmazonSSMManagedInstanceCore``,
continuously for ``registration_delay_seconds``. An instance that was Online and loses
that condition while running is listed as ``ConnectionLost``; stopped and terminated
instances are not listed. ``refresh()`` re-evaluates the condition; the emulator calls it
after every mutating EC2/IAM call, every control-API change and before every SSM call,
so "continuously" is tracked exactly.

Commands: ``SendCommand`` creates one invocation per target instance. Each invocation is
``InProgress`` until its duration has elapsed and then shows its outcome (scripted per
instance through the control API, otherwise Success / exit 0 / DEFAULT_SUCCESS_STDOUT). States are derived
lazily from timestamps; only the success webhook runs on a timer thread.

arc-onboard's two commands per batch (``ARC_MODE`` in the script's assignment block): a key exchange
makes an RSA key pair per instance, keeps the private key and answers with the public key as the real
script prints it (``key_exchange_duration_seconds``; scripted outcomes do not apply to it); an install
opens the instance's sealed token with that key (as the script does, and the key is then gone) and
hands the token to the success webhook. An install the instance cannot open fails as the script would.
The webhook stands for ``azcmagent connect``, which returns once Azure has the machine: an invocation
that calls it shows its success only after the webhook returned (or failed, after at most 5 s).
A real instance makes its key pair on its own CPU, in parallel with the others; the emulator makes them
all on one machine, at about 0.1 s each, and inside ``SendCommand`` (under the state lock) that would
stall every other call for seconds per batch. ``key_pool_size`` (control API ``config``) has a background
thread make that many key pairs ahead, outside the lock; each key exchange takes fresh ones from the pool
(never one twice) and makes its own only when the pool is empty.

With ``execute_scripts`` on, Linux instances without a scripted outcome really run every
``AWS-RunShellScript`` command with bash in their sandbox (sandbox.py): the invocation is InProgress
until the script ends and then shows its exit code and output; the fake agent connects itself, so no
webhook is sent for them. Windows instances stay simulated.

All public methods expect the caller to hold the emulator's state lock.
"""

import base64
import hashlib
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import fleet
import sandbox
from cryptography.hazmat.primitives import hashes, padding as sym_padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

AGENT_VERSION = "3.3.0.0"
# What arc-onboard's install script prints when it connects the agent (its last line is machine-readable).
DEFAULT_SUCCESS_STDOUT = ("arc-onboard: reading the instance id from IMDSv2\n"
                          "arc-onboard: agent installed: /usr/bin/azcmagent\n"
                          "arc-onboard: connecting to Azure Arc\n"
                          'ARC_ONBOARD_RESULT {"outcome":"connected","exit_code":0,"step":"connect",'
                          '"code":"connected","message":"connected","resource_id":""}')

# A success whose result line says this connected nothing (see arc-onboard's install scripts).
CONNECTED_ELSEWHERE = '"outcome":"connected-elsewhere"'

DOCUMENT_PLUGINS = {
    "AWS-RunShellScript": ("aws:runShellScript", "linux"),
    "AWS-RunPowerShellScript": ("aws:runPowerShellScript", "windows"),
}
SEND_COMMAND_MAX_TARGETS = 50
STDOUT_CAP, STDERR_CAP, PLUGIN_OUTPUT_CAP = 24000, 8000, 2500
DOCUMENT_PARAMETERS = {"commands", "executionTimeout", "workingDirectory"}
# The success webhook is tried this many times, waiting WEBHOOK_BACKOFF_SECONDS * 2**n between tries:
# a burst of a thousand connects can find the receiver's backlog full, and a lost webhook is a machine
# that never appears in Azure (the tool then reports an install that worked as failed).
WEBHOOK_ATTEMPTS, WEBHOOK_BACKOFF_SECONDS = 5, 0.2
# Each attempt waits this long for the answer: the stub answers 50 webhooks of a batch at once, slowly on a
# loaded machine, and a timed-out attempt (retried) is a second delivery of what the stub is still handling.
WEBHOOK_TIMEOUT_SECONDS = 30

# Scripted outcome kind -> (Status, default StatusDetails, default ResponseCode).
OUTCOME_KINDS = {
    "Success": ("Success", "Success", 0),
    "Failed": ("Failed", "Failed", 1),
    "TimedOut": ("TimedOut", "Execution Timed Out", -1),
    "DeliveryTimedOut": ("TimedOut", "Delivery Timed Out", -1),
    "Undeliverable": ("Failed", "Undeliverable", -1),
    "Cancelled": ("Cancelled", "Cancelled", -1),
}
_MAX_ERRORS_RE = re.compile(r"^([1-9][0-9]*|0|[1-9][0-9]%|[0-9]%|100%)$")
_MAX_CONCURRENCY_RE = re.compile(r"^([1-9][0-9]*|[1-9][0-9]%|[1-9]%|100%)$")

# Default Host Management Configuration: the role instances without a profile register with.
DHMC_SETTING = "/ssm/managed-instance/default-ec2-instance-management-role"
# Service settings known to the emulator and their AWS defaults.
SERVICE_SETTING_DEFAULTS = {
    "/ssm/managed-instance/default-ec2-instance-management-role": "$None",
    "/ssm/managed-instance/activation-tier": "standard",
    "/ssm/parameter-store/default-parameter-tier": "Standard",
    "/ssm/parameter-store/high-throughput-enabled": "false",
    "/ssm/documents/console/public-sharing-permission": "Enable",
}


class SsmError(Exception):
    """An SSM API error: rendered as ``{"__type": code, "message": message}``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _validation(message: str) -> SsmError:
    return SsmError("ValidationException", f"1 validation error detected: {message}")


@dataclass
class Outcome:
    """The final result an invocation reaches after ``duration_seconds``."""

    status: str
    status_details: str
    exit_code: int
    stdout: str
    stderr: str
    duration_seconds: float

    @classmethod
    def from_script(cls, script: dict[str, Any], default_duration: float) -> "Outcome":
        status, details, code = OUTCOME_KINDS[script.get("status", "Success")]
        return cls(status, script.get("status_details", details), script.get("exit_code", code),
                   script.get("stdout", ""), script.get("stderr", ""),
                   script.get("duration_seconds", default_duration))


def validate_outcome(script: Any) -> None:
    """Raise ValueError unless ``script`` is a valid scripted outcome object."""
    if not isinstance(script, dict):
        raise ValueError("an outcome must be an object")
    unknown = set(script) - {"status", "status_details", "exit_code", "stdout", "stderr",
                             "duration_seconds"}
    if unknown:
        raise ValueError(f"unknown outcome fields: {', '.join(sorted(unknown))}")
    if script.get("status", "Success") not in OUTCOME_KINDS:
        raise ValueError(f"status must be one of {', '.join(OUTCOME_KINDS)}")
    if not isinstance(script.get("exit_code", 0), int):
        raise ValueError("exit_code must be an integer")
    duration = script.get("duration_seconds", 0)
    if not isinstance(duration, (int, float)) or duration < 0:
        raise ValueError("duration_seconds must be a non-negative number")
    for key in ("status_details", "stdout", "stderr"):
        if not isinstance(script.get(key, ""), str):
            raise ValueError(f"{key} must be a string")


@dataclass
class Invocation:
    instance_id: str
    instance_name: str
    outcome: Outcome
    cancelled_at: float | None = None
    timer: threading.Timer | None = None
    # The success webhook (the agent's connect) is under way: the script has not printed its result yet.
    connecting: bool = False
    # The access token this instance opened from its sealed configuration (never shown).
    token: str | None = field(default=None, repr=False)
    # execute_scripts: the script is still running on the instance (its outcome is set when it ends).
    running: bool = False

    def view(self, started: float, now: float) -> dict[str, Any]:
        """Status, details, exit code, output and end time as of ``now``."""
        if self.running:
            if self.cancelled_at is not None:
                return {"status": "Cancelled", "details": "Cancelled", "code": -1, "stdout": "",
                        "stderr": "", "end": self.cancelled_at}
            return {"status": "InProgress", "details": "InProgress", "code": -1, "stdout": "",
                    "stderr": "", "end": None}
        finish = started + self.outcome.duration_seconds
        if self.cancelled_at is not None and self.cancelled_at < finish:
            return {"status": "Cancelled", "details": "Cancelled", "code": -1, "stdout": "",
                    "stderr": "", "end": self.cancelled_at}
        if now < finish or self.connecting:
            return {"status": "InProgress", "details": "InProgress", "code": -1, "stdout": "",
                    "stderr": "", "end": None}
        o = self.outcome
        return {"status": o.status, "details": o.status_details, "code": o.exit_code,
                "stdout": o.stdout, "stderr": o.stderr, "end": finish}


_ASSIGNMENT = re.compile(r"^\$?(ARC_[A-Z0-9_]+)[ \t]*=[ \t]*'([^'\n]*)'[ \t]*\r?$", re.MULTILINE)


def script_values(script: str) -> dict[str, str]:
    """The quote-free ``ARC_*`` assignments of a rendered script (``NAME='v'`` or ``$NAME = 'v'``)."""
    return {m.group(1): m.group(2) for m in _ASSIGNMENT.finditer(script)}


def key_line(instance_id: str, key_id: str, key: rsa.RSAPrivateKey, platform: str) -> str:
    """The ARC_ONBOARD_KEY line the real script prints: SubjectPublicKeyInfo (DER, base64) on Linux,
    modulus and exponent (hex) on Windows."""
    line: dict[str, str] = {"instance_id": instance_id, "key_id": key_id}
    public = key.public_key()
    if platform == "windows":
        numbers = public.public_numbers()
        line["modulus"] = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big").hex().upper()
        line["exponent"] = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big").hex().upper()
    else:
        der = public.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        line["public_key"] = base64.b64encode(der).decode()
    return "arc-onboard: key pair made\nARC_ONBOARD_KEY " + json.dumps(line, separators=(",", ":"))


def open_sealed(key: rsa.RSAPrivateKey, wrapped: bytes, sealed: bytes) -> bytes:
    """What the scripts do: RSA-OAEP (SHA-1) opens the passphrase and the sealed text's digest; the
    digest must match; ``openssl enc -d -aes-256-cbc -md sha256`` opens the text. Raises ValueError."""
    payload = key.decrypt(wrapped, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()),
                                                algorithm=hashes.SHA1(), label=None))
    passphrase, digest = payload[:64], payload[64:]
    if len(payload) != 128 or hashlib.sha256(sealed).hexdigest().encode() != digest:
        raise ValueError("the sealed token does not match its digest")
    if sealed[:8] != b"Salted__" or len(sealed) < 32:
        raise ValueError("the sealed token is malformed")
    salt = sealed[8:16]
    aes_key = hashlib.sha256(passphrase + salt).digest()
    iv = hashlib.sha256(aes_key + passphrase + salt).digest()[:16]
    decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(sealed[16:]) + decryptor.finalize()
    unpadder = sym_padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def _sealed_failure(message: str) -> dict[str, Any]:
    """The scripted outcome of an install the instance cannot open (the script's own result line)."""
    line = {"outcome": "failed", "exit_code": 5, "step": "connect", "code": "sealed-token",
            "message": message, "resource_id": ""}
    return {"status": "Failed", "exit_code": 5,
            "stdout": "ARC_ONBOARD_RESULT " + json.dumps(line, separators=(",", ":"))}


@dataclass
class Command:
    command_id: str
    region: str
    account: str
    document_name: str
    parameters: dict[str, list[str]]
    comment: str
    timeout_seconds: int
    max_errors: str
    max_concurrency: str
    requested_at: float
    visible_at: float
    invocations: dict[str, Invocation] = field(default_factory=dict)

    @property
    def plugin_name(self) -> str:
        return DOCUMENT_PLUGINS[self.document_name][0]

    def control_view(self) -> dict[str, Any]:
        """The record shown by ``GET /_emulator/commands``, with each invocation's output as of now
        (what SSM's history keeps)."""
        now = time.time()
        outputs = {iid: {k: v for k, v in inv.view(self.requested_at, now).items()
                         if k in ("status", "stdout", "stderr")}
                   for iid, inv in self.invocations.items()}
        return {"command_id": self.command_id, "account_id": self.account, "region": self.region,
                "document_name": self.document_name, "instance_ids": list(self.invocations),
                "parameters": self.parameters, "comment": self.comment,
                "timeout_seconds": self.timeout_seconds, "max_errors": self.max_errors,
                "max_concurrency": self.max_concurrency, "requested_at": self.requested_at,
                "outputs": outputs}

    def aggregate(self, now: float) -> dict[str, Any]:
        """Command-level Status and counters from its invocations' states."""
        views = [inv.view(self.requested_at, now) for inv in self.invocations.values()]
        statuses = [v["status"] for v in views]
        if now < self.visible_at:
            status = "Pending"
        elif "InProgress" in statuses:
            status = "InProgress"
        else:
            status = next((s for s in ("Failed", "TimedOut", "Cancelled") if s in statuses),
                          "Success")
        return {
            "Status": status, "StatusDetails": status,
            "TargetCount": len(views),
            "CompletedCount": sum(1 for s in statuses if s != "InProgress"),
            "ErrorCount": sum(1 for v in views if v["status"] == "Failed"
                              or v["details"] == "Execution Timed Out"),
            "DeliveryTimedOutCount": sum(1 for v in views if v["details"] == "Delivery Timed Out"),
        }

    def api_view(self, now: float) -> dict[str, Any]:
        """The ``Command`` structure of SendCommand / ListCommands responses."""
        return {
            "CommandId": self.command_id, "DocumentName": self.document_name,
            "DocumentVersion": "$DEFAULT", "Comment": self.comment,
            "ExpiresAfter": self.requested_at + self.timeout_seconds,
            "Parameters": self.parameters, "InstanceIds": list(self.invocations), "Targets": [],
            "RequestedDateTime": self.requested_at, "OutputS3Region": self.region,
            "OutputS3BucketName": "", "OutputS3KeyPrefix": "",
            "MaxConcurrency": self.max_concurrency, "MaxErrors": self.max_errors,
            "ServiceRole": "", "NotificationConfig": {"NotificationArn": "",
                                                      "NotificationEvents": [],
                                                      "NotificationType": ""},
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "",
                                       "CloudWatchOutputEnabled": False},
            "TimeoutSeconds": self.timeout_seconds, **self.aggregate(now),
        }


@dataclass
class Tracking:
    """Per-instance history of the managed condition."""

    since: float | None = None
    was_online: bool = False
    lost_at: float = 0.0
    role: str = ""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _page(items: list[Any], params: dict[str, Any], kind: str, default: int, low: int,
          high: int) -> tuple[list[Any], str | None]:
    """Slice ``items`` by MaxResults / NextToken; tokens are opaque and tied to ``kind``."""
    max_results = params.get("MaxResults", default)
    if not isinstance(max_results, int) or not low <= max_results <= high:
        raise _validation(f"Value '{max_results}' at 'maxResults' failed to satisfy constraint: "
                          f"Member must have value between {low} and {high}")
    offset = 0
    token = params.get("NextToken")
    if token:
        try:
            decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
            offset = int(decoded["o"]) if decoded["k"] == kind else -1
        except (ValueError, KeyError, TypeError) as exc:
            raise SsmError("InvalidNextToken", "The specified token is not valid.") from exc
        if offset < 0:
            raise SsmError("InvalidNextToken", "The specified token is not valid.")
    end = offset + max_results
    next_token = None
    if end < len(items):
        next_token = base64.urlsafe_b64encode(json.dumps({"k": kind, "o": end}).encode()).decode()
    return items[offset:end], next_token


class KeyPool:
    """RSA key pairs made ahead by a background thread, each handed out once (see the module docs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: list[rsa.RSAPrivateKey] = []
        self._target = 0
        self._filling = False

    def fill(self, target: int) -> None:
        """Keep making key pairs until the pool holds ``target`` (a smaller target stops the filling)."""
        with self._lock:
            self._target = target
            if self._filling or len(self._keys) >= target:
                return
            self._filling = True
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if len(self._keys) >= self._target:
                    self._filling = False
                    return
            # OpenSSL releases the GIL while it searches for primes: the other threads go on meanwhile.
            key = new_key()
            with self._lock:
                self._keys.append(key)

    def take(self) -> rsa.RSAPrivateKey:
        """A key pair no one has had: from the pool, or made now when the pool is empty."""
        with self._lock:
            if self._keys:
                return self._keys.pop()
        return new_key()

    def view(self) -> dict[str, int]:
        with self._lock:
            return {"ready": len(self._keys), "target": self._target}


def new_key() -> rsa.RSAPrivateKey:
    """The key pair an instance's key exchange makes (RSA 2048, as the install scripts do)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class SsmSimulator:
    """State and handlers for the SSM operations the emulator serves itself."""

    def __init__(self, config: dict[str, Any], lock: threading.RLock):
        self.config = config
        self.lock = lock
        # Per (account, region, instance id): SSM is a regional service of each account.
        self.tracking: dict[tuple[str, str, str], Tracking] = {}
        self.commands: dict[str, Command] = {}
        self.outcomes: dict[str, dict[str, Any]] = {}
        # Private keys of key exchanges, per (account, region, instance id, key id), until the install.
        self.keys: dict[tuple[str, str, str, str], rsa.RSAPrivateKey] = {}
        self.key_pool = KeyPool()
        self.settings: dict[tuple[str, str, str], tuple[str, float]] = {}
        # execute_scripts: the Linux instances' sandboxes, their IMDSv2 and the fake installer.
        self.sandboxes = sandbox.Sandboxes()
        # The account of the request being served (set by handle(); the caller holds the lock).
        self.account: str = fleet.ACCOUNT_ID
        self.started_at = time.time()
        self.handlers: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {
            "DescribeInstanceInformation": self.describe_instance_information,
            "SendCommand": self.send_command,
            "GetCommandInvocation": self.get_command_invocation,
            "ListCommandInvocations": self.list_command_invocations,
            "ListCommands": self.list_commands,
            "CancelCommand": self.cancel_command,
            "GetServiceSetting": self.get_service_setting,
            "UpdateServiceSetting": self.update_service_setting,
            "ResetServiceSetting": self.reset_service_setting,
        }

    # ----- managed instances -------------------------------------------------------------

    def refresh(self) -> None:
        """Re-evaluate the managed condition of every instance in every region of every account."""
        for account in fleet.known_accounts():
            self._refresh_account(account)

    def _refresh_account(self, account: str) -> None:
        now = time.time()
        delay = self.config["registration_delay_seconds"]
        roles_by_arn = fleet.ssm_roles_by_profile_arn(account)
        for region in fleet.known_regions(account):
            for instance in fleet.ec2(region, account).all_instances():
                track = self.tracking.setdefault((account, region, instance.id), Tracking())
                role = None
                if instance.state == "running":
                    role = fleet.ssm_role_of(region, instance, roles_by_arn, account)
                    if role is None and not fleet.has_profile(region, instance, account):
                        role = self.dhmc_role(account, region)
                if role:
                    track.role = role
                    if track.since is None:
                        track.since = now
                elif track.since is not None:
                    if now - track.since >= delay:
                        track.was_online, track.lost_at = True, now
                    track.since = None

    def ping_status(self, region: str, instance: Any, now: float) -> str | None:
        """Online / ConnectionLost, or None when SSM would not list the instance.

        Also remembers that an instance was seen Online, so that a later change of
        ``registration_delay_seconds`` cannot hide an earlier Online period.
        """
        track = self.tracking.get((self.account, region, instance.id))
        if track is None or instance.state != "running":
            return None
        if track.since is not None and now - track.since >= self.config["registration_delay_seconds"]:
            track.was_online = True
            return "Online"
        return "ConnectionLost" if track.was_online else None

    def _instance_information(self, region: str, now: float) -> list[dict[str, Any]]:
        items = []
        for instance in sorted(fleet.ec2(region, self.account).all_instances(),
                               key=lambda i: i.id):
            ping = self.ping_status(region, instance, now)
            if ping is None:
                continue
            windows = fleet.platform_of(instance) == "windows"
            track = self.tracking[(self.account, region, instance.id)]
            items.append({
                "InstanceId": instance.id, "PingStatus": ping,
                "LastPingDateTime": now if ping == "Online" else track.lost_at,
                "AgentVersion": AGENT_VERSION, "IsLatestVersion": True,
                "PlatformType": "Windows" if windows else "Linux",
                "PlatformName": ("Microsoft Windows Server 2022 Datacenter" if windows
                                 else "Amazon Linux"),
                "PlatformVersion": "10.0.20348" if windows else "2023",
                "ResourceType": "EC2Instance", "IPAddress": instance.private_ip,
                "ComputerName": (f"EC2AMAZ-{instance.id[-7:].upper()}" if windows
                                 else instance.private_dns_name),
                "IamRole": track.role, "SourceId": instance.id,
                "SourceType": "AWS::EC2::Instance",
            })
        return items

    def online_platform(self, region: str, instance_id: str, now: float) -> str | None:
        """The instance's platform if it is Online in ``region``, else None."""
        for instance in fleet.ec2(region, self.account).all_instances():
            if instance.id == instance_id:
                if self.ping_status(region, instance, now) == "Online":
                    return fleet.platform_of(instance)
                return None
        return None

    # ----- SSM operations ------------------------------------------------------------------

    def handle(self, action: str, region: str, params: dict[str, Any],
               account: str = fleet.ACCOUNT_ID) -> dict[str, Any] | None:
        """Serve ``action`` in ``account`` if the emulator implements it (None: let moto answer)."""
        handler = self.handlers.get(action)
        if handler is None:
            return None
        self.refresh()
        self.account = account
        try:
            return handler(region, params)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise _validation(f"malformed request: {exc}") from exc

    def describe_instance_information(self, region: str, params: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        filters: dict[str, set[str]] = {}
        for f in params.get("Filters", []):
            filters.setdefault(f["Key"], set()).update(f["Values"])
        for f in params.get("InstanceInformationFilterList", []):
            filters.setdefault(f["key"], set()).update(f["valueSet"])
        fields = {"InstanceIds": "InstanceId", "PingStatus": "PingStatus",
                  "PlatformTypes": "PlatformType", "ResourceType": "ResourceType",
                  "AgentVersion": "AgentVersion", "IamRole": "IamRole"}
        for key, values in filters.items():
            if key not in fields:
                raise SsmError("InvalidFilterKey", f"The filter key {key} is not valid.")
            if key == "InstanceIds" and len(values) > 100:
                raise _validation("The InstanceIds filter accepts at most 100 values")
        items = [item for item in self._instance_information(region, now)
                 if all(item[fields[key]] in values for key, values in filters.items())]
        page, token = _page(items, params, "dii", 10, 5, 50)
        result: dict[str, Any] = {"InstanceInformationList": page}
        if token:
            result["NextToken"] = token
        return result

    def _parse_send_command(self, params: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        if params.get("Targets"):
            raise _validation("Targets are not supported by this emulator: use InstanceIds")
        document = params.get("DocumentName", "")
        if document not in DOCUMENT_PLUGINS:
            raise SsmError("InvalidDocument", f"Document {document} does not exist "
                           "(the emulator serves AWS-RunShellScript and AWS-RunPowerShellScript)")
        ids = list(dict.fromkeys(params.get("InstanceIds") or []))
        if not ids:
            raise _validation("InstanceIds must contain at least one instance id")
        if len(ids) > SEND_COMMAND_MAX_TARGETS:
            raise _validation(f"Value at 'instanceIds' failed to satisfy constraint: Member must "
                              f"have length less than or equal to {SEND_COMMAND_MAX_TARGETS}")
        parameters = params.get("Parameters") or {}
        unknown = set(parameters) - DOCUMENT_PARAMETERS
        if unknown:
            raise SsmError("InvalidParameters", f"Unknown document parameters: {sorted(unknown)}")
        for name, values in parameters.items():
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise SsmError("InvalidParameters", f"Parameter {name} must be a list of strings")
        if not parameters.get("commands"):
            raise SsmError("InvalidParameters", 'Parameter "commands" is required')
        if "executionTimeout" in parameters:
            timeout = parameters["executionTimeout"]
            if len(timeout) != 1 or not timeout[0].isdigit() or not 1 <= int(timeout[0]) <= 172800:
                raise SsmError("InvalidParameters",
                               "executionTimeout must be one integer string between 1 and 172800")
        options = {
            "document": document, "parameters": parameters,
            "comment": params.get("Comment", ""),
            "timeout": params.get("TimeoutSeconds", 3600),
            "max_errors": params.get("MaxErrors", "0"),
            "max_concurrency": params.get("MaxConcurrency", "50"),
        }
        if len(options["comment"]) > 100:
            raise _validation("Value at 'comment' failed to satisfy constraint: Member must have "
                              "length less than or equal to 100")
        if not isinstance(options["timeout"], int) or not 30 <= options["timeout"] <= 2592000:
            raise _validation(f"Value '{options['timeout']}' at 'timeoutSeconds' failed to satisfy "
                              "constraint: Member must have value between 30 and 2592000")
        if not _MAX_ERRORS_RE.match(str(options["max_errors"])):
            raise _validation(f"Value '{options['max_errors']}' at 'maxErrors' failed to satisfy "
                              "constraint: Member must satisfy the pattern")
        if not _MAX_CONCURRENCY_RE.match(str(options["max_concurrency"])):
            raise _validation(f"Value '{options['max_concurrency']}' at 'maxConcurrency' failed "
                              "to satisfy constraint: Member must satisfy the pattern")
        return ids, options

    def send_command(self, region: str, params: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        ids, opts = self._parse_send_command(params)
        platforms = {iid: self.online_platform(region, iid, now) for iid in ids}
        invalid = [iid for iid, platform in platforms.items() if platform is None]
        if invalid:
            raise SsmError("InvalidInstanceId", f"Instances {invalid} not in a valid state for "
                           f"account {self.account}")
        wanted = DOCUMENT_PLUGINS[opts["document"]][1]
        if any(platform != wanted for platform in platforms.values()):
            raise SsmError("UnsupportedPlatformType",
                           f"The platform type of the instances is not supported by "
                           f"{opts['document']}")
        command = Command(
            command_id=str(uuid.uuid4()), region=region, account=self.account,
            document_name=opts["document"],
            parameters=opts["parameters"], comment=opts["comment"],
            timeout_seconds=opts["timeout"], max_errors=str(opts["max_errors"]),
            max_concurrency=str(opts["max_concurrency"]), requested_at=now,
            visible_at=now + self.config["invocation_visibility_delay_seconds"])
        default = {"stdout": DEFAULT_SUCCESS_STDOUT}
        values = script_values("\n".join(opts["parameters"].get("commands", [])))
        mode = values.get("ARC_MODE")
        executed = []
        for iid in ids:
            found = fleet.find_instance(iid, self.account)
            name = found[1].private_dns_name if found else iid
            if (self.config.get("execute_scripts") and platforms[iid] == "linux"
                    and iid not in self.outcomes):
                invocation = Invocation(iid, name, Outcome("InProgress", "InProgress", -1, "", "",
                                                           0.0), running=True)
                command.invocations[iid] = invocation
                executed.append(invocation)
                continue
            if mode == "key-exchange":
                key = self.key_pool.take()
                key_id = values.get("ARC_KEY_ID", "")
                self.keys[(self.account, region, iid, key_id)] = key
                stdout = key_line(iid, key_id, key, platforms[iid] or "linux")
                outcome = Outcome("Success", "Success", 0, stdout, "",
                                  self.config["key_exchange_duration_seconds"])
                command.invocations[iid] = Invocation(iid, name, outcome)
                continue
            script = self.outcomes.get(iid, default)
            token = None
            if mode == "install" and OUTCOME_KINDS[script.get("status", "Success")][0] in (
                    "Success", "Failed"):
                token, problem = self._open_token(region, iid, values, platforms[iid] or "linux")
                if token is None:
                    script = _sealed_failure(problem)
            outcome = Outcome.from_script(script, self.config["command_duration_seconds"])
            invocation = Invocation(iid, name, outcome, token=token)
            # The agent connects (and the webhook tells the Azure stub) only when the script did; a
            # script that found the agent connected to another resource leaves it alone.
            if outcome.status == "Success" and CONNECTED_ELSEWHERE not in outcome.stdout:
                invocation.timer = threading.Timer(outcome.duration_seconds, self._notify_success,
                                                   args=(command.command_id, iid))
                invocation.timer.daemon = True
                invocation.connecting = bool(self.config.get("on_success_webhook"))
                invocation.timer.start()
            command.invocations[iid] = invocation
        self.commands[command.command_id] = command
        for invocation in executed:
            self._execute(command, invocation)
        return {"Command": {**command.api_view(now), "Status": "Pending",
                            "StatusDetails": "Pending"}}

    def _execute(self, command: Command, invocation: Invocation) -> None:
        """execute_scripts: runs the command on the instance's sandbox in a thread of its own."""
        timeout = command.parameters.get("executionTimeout", ["3600"])[0]
        working = (command.parameters.get("workingDirectory") or [""])[0] or None
        connect_url = self.config.get("on_success_webhook")

        def run() -> None:
            try:
                result = self.sandboxes.run(invocation.instance_id, command.command_id,
                                            command.parameters["commands"], working,
                                            float(timeout), connect_url)
                if result.timed_out:
                    outcome = ("TimedOut", "Execution Timed Out", -1)
                elif result.exit_code == 0:
                    outcome = ("Success", "Success", 0)
                else:
                    outcome = ("Failed", "Failed", result.exit_code)
                stdout, stderr = result.stdout, result.stderr
            except OSError as exc:
                outcome, stdout, stderr = ("Failed", "Undeliverable", -1), "", str(exc)
            with self.lock:
                invocation.outcome = Outcome(*outcome, stdout, stderr,
                                             time.time() - command.requested_at)
                invocation.running = False

        thread = threading.Thread(target=run, name=f"run-{invocation.instance_id}", daemon=True)
        thread.start()

    def _open_token(self, region: str, instance_id: str, values: dict[str, str],
                    platform: str) -> tuple[str | None, str]:
        """The access token an install's sealed configuration holds for ``instance_id``, opened with the
        key of its exchange (which is then gone, as the script deletes it); or None and why not."""
        key_id = values.get("ARC_KEY_ID", "")
        wrapped = None
        for entry in values.get("ARC_SEALED_KEYS", "").split():
            owner, _, blob = entry.partition(":")
            if owner == instance_id:
                wrapped = blob
        if wrapped is None:
            return None, f"this command carries no sealed token for {instance_id}"
        key = self.keys.pop((self.account, region, instance_id, key_id), None)
        if key is None:
            return None, f"the private key of key exchange {key_id} is gone"
        decode = bytes.fromhex if platform == "windows" else base64.b64decode
        try:
            config = open_sealed(key, decode(wrapped), decode(values.get("ARC_SEALED_CONFIG", "")))
            token = json.loads(config)["access-token"]
        except (ValueError, KeyError, TypeError):
            return None, "the sealed token does not open with this instance's key"
        if not isinstance(token, str):
            return None, "the sealed configuration holds no access token"
        return token, ""

    def _notify_success(self, command_id: str, instance_id: str) -> None:
        """Timer callback: POST the success webhook for one finished invocation. As
        ``azcmagent connect`` returns only once Azure has the machine, the invocation shows its
        success only after the webhook returned (or failed)."""
        with self.lock:
            command = self.commands[command_id]
            url = self.config.get("on_success_webhook")
            invocation = command.invocations[instance_id]
            if not url or invocation.cancelled_at is not None:
                invocation.connecting = False
                return
            payload = {"instance_id": instance_id, "region": command.region,
                       "account_id": command.account, "command_id": command_id,
                       "commands": command.parameters.get("commands", [])}
            if invocation.token is not None:
                payload["access_token"] = invocation.token
        try:
            deliver_webhook(url, json.dumps(payload).encode(), instance_id)
        finally:
            with self.lock:
                invocation.connecting = False

    def _visible_command(self, region: str, command_id: str | None, now: float) -> Command | None:
        command = self.commands.get(command_id or "")
        if (command is None or command.region != region or command.account != self.account
                or now < command.visible_at):
            return None
        return command

    def get_command_invocation(self, region: str, params: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        command = self._visible_command(region, params["CommandId"], now)
        instance_id = params["InstanceId"]
        if command is None or instance_id not in command.invocations:
            raise SsmError("InvocationDoesNotExist",
                           f"Invocation for command {params['CommandId']} on {instance_id} "
                           "does not exist")
        view = command.invocations[instance_id].view(command.requested_at, now)
        end = view["end"]
        return {
            "CommandId": command.command_id, "InstanceId": instance_id,
            "Comment": command.comment, "DocumentName": command.document_name,
            "DocumentVersion": "$DEFAULT", "PluginName": command.plugin_name,
            "ResponseCode": view["code"],
            "ExecutionStartDateTime": _iso(command.requested_at),
            "ExecutionElapsedTime": f"PT{(end or now) - command.requested_at:.3f}S",
            "ExecutionEndDateTime": _iso(end) if end is not None else "",
            "Status": view["status"], "StatusDetails": view["details"],
            "StandardOutputContent": view["stdout"][:STDOUT_CAP], "StandardOutputUrl": "",
            "StandardErrorContent": view["stderr"][:STDERR_CAP], "StandardErrorUrl": "",
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "",
                                       "CloudWatchOutputEnabled": False},
        }

    @staticmethod
    def _command_filter(filters: list[dict[str, str]]) -> Callable[[Command, str], bool]:
        """Predicate over (command, status) for ListCommands / ListCommandInvocations filters."""
        checks = []
        for f in filters:
            key, value = f["key"], f["value"]
            if key == "Status":
                checks.append(lambda c, s, v=value: s == v)
            elif key == "DocumentName":
                checks.append(lambda c, s, v=value: c.document_name == v)
            elif key in ("InvokedAfter", "InvokedBefore"):
                bound = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
                if key == "InvokedAfter":
                    checks.append(lambda c, s, b=bound: c.requested_at >= b)
                else:
                    checks.append(lambda c, s, b=bound: c.requested_at <= b)
            else:
                raise SsmError("InvalidFilterKey", f"The filter key {key} is not valid.")
        return lambda command, status: all(check(command, status) for check in checks)

    def _commands_newest_first(self, region: str, now: float) -> list[Command]:
        return sorted((c for c in self.commands.values()
                       if c.region == region and c.account == self.account
                       and now >= c.visible_at),
                      key=lambda c: c.requested_at, reverse=True)

    def list_command_invocations(self, region: str, params: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        keep = self._command_filter(params.get("Filters", []))
        details = bool(params.get("Details", False))
        items = []
        for command in self._commands_newest_first(region, now):
            if params.get("CommandId") and command.command_id != params["CommandId"]:
                continue
            for iid, invocation in command.invocations.items():
                if params.get("InstanceId") and iid != params["InstanceId"]:
                    continue
                view = invocation.view(command.requested_at, now)
                if not keep(command, view["status"]):
                    continue
                items.append(self._invocation_item(command, invocation, view, details))
        page, token = _page(items, params, "lci", 50, 1, 50)
        result: dict[str, Any] = {"CommandInvocations": page}
        if token:
            result["NextToken"] = token
        return result

    @staticmethod
    def _invocation_item(command: Command, invocation: Invocation, view: dict[str, Any],
                         details: bool) -> dict[str, Any]:
        plugins = []
        if details:
            output = view["stdout"]
            if view["stderr"]:
                output += "\n----------ERROR-------\n" + view["stderr"]
            plugin = {"Name": command.plugin_name, "Status": view["status"],
                      "StatusDetails": view["details"], "ResponseCode": view["code"],
                      "ResponseStartDateTime": command.requested_at,
                      "Output": output[:PLUGIN_OUTPUT_CAP], "StandardOutputUrl": "",
                      "StandardErrorUrl": "", "OutputS3Region": command.region,
                      "OutputS3BucketName": "", "OutputS3KeyPrefix": ""}
            if view["end"] is not None:
                plugin["ResponseFinishDateTime"] = view["end"]
            plugins.append(plugin)
        return {"CommandId": command.command_id, "InstanceId": invocation.instance_id,
                "InstanceName": invocation.instance_name, "Comment": command.comment,
                "DocumentName": command.document_name, "DocumentVersion": "$DEFAULT",
                "RequestedDateTime": command.requested_at, "Status": view["status"],
                "StatusDetails": view["details"], "TraceOutput": "",
                "StandardOutputUrl": "", "StandardErrorUrl": "", "CommandPlugins": plugins,
                "ServiceRole": "",
                "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "",
                                           "CloudWatchOutputEnabled": False}}

    def list_commands(self, region: str, params: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        keep = self._command_filter(params.get("Filters", []))
        items = []
        for command in sorted((c for c in self.commands.values()
                               if c.region == region and c.account == self.account),
                              key=lambda c: c.requested_at, reverse=True):
            if params.get("CommandId") and command.command_id != params["CommandId"]:
                continue
            if params.get("InstanceId") and params["InstanceId"] not in command.invocations:
                continue
            view = command.api_view(now)
            if keep(command, view["Status"]):
                items.append(view)
        page, token = _page(items, params, "lc", 50, 1, 50)
        result: dict[str, Any] = {"Commands": page}
        if token:
            result["NextToken"] = token
        return result

    def cancel_command(self, region: str, params: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        command = self.commands.get(params["CommandId"])
        if command is None or command.region != region or command.account != self.account:
            raise SsmError("InvalidCommandId", f"Command {params['CommandId']} does not exist")
        targets = params.get("InstanceIds") or list(command.invocations)
        for iid in targets:
            invocation = command.invocations.get(iid)
            if invocation is None:
                raise SsmError("InvalidInstanceId", f"Instance {iid} is not a target of "
                               f"command {command.command_id}")
            if invocation.view(command.requested_at, now)["status"] == "InProgress":
                invocation.cancelled_at = now
                if invocation.timer is not None:
                    invocation.timer.cancel()
                if invocation.running:
                    self.sandboxes.cancel(iid, command.command_id)
        return {}

    def cancel_timers(self) -> None:
        """Stop pending webhook timers (on shutdown)."""
        for command in self.commands.values():
            for invocation in command.invocations.values():
                if invocation.timer is not None:
                    invocation.timer.cancel()

    # ----- service settings (moto 5.2.5 does not implement them) --------------------------

    @staticmethod
    def _setting_id(raw: str) -> str:
        setting_id = raw.split(":servicesetting", 1)[1] if ":servicesetting" in raw else raw
        if setting_id not in SERVICE_SETTING_DEFAULTS:
            raise SsmError("ServiceSettingNotFound", f"Service setting {raw} not found")
        return setting_id

    def _setting(self, region: str, setting_id: str) -> dict[str, Any]:
        value, modified = self.settings.get((self.account, region, setting_id),
                                            (None, self.started_at))
        return {"ServiceSetting": {
            "SettingId": setting_id,
            "SettingValue": value if value is not None else SERVICE_SETTING_DEFAULTS[setting_id],
            "LastModifiedDate": modified,
            "LastModifiedUser": (f"arn:aws:iam::{self.account}:root" if value is not None
                                 else "System"),
            "ARN": f"arn:aws:ssm:{region}:{self.account}:servicesetting{setting_id}",
            "Status": "Customized" if value is not None else "Default",
        }}

    def dhmc_role(self, account: str, region: str) -> str | None:
        """The role Default Host Management Configuration gives instances without a profile, or None
        while the setting is ``$None`` (off)."""
        value, _ = self.settings.get((account, region, DHMC_SETTING), (None, 0.0))
        return value if value and value != "$None" else None

    def set_service_setting(self, body: Any) -> dict[str, Any]:
        """Control API: ``{"region", "setting_id", "value", "account_id"?}`` (value null resets)."""
        if not isinstance(body, dict) or not isinstance(body.get("region"), str):
            raise SsmError("ValidationException", 'body must be {"region", "setting_id", "value"}')
        account = body.get("account_id", fleet.ACCOUNT_ID)
        setting_id = self._setting_id(str(body.get("setting_id", DHMC_SETTING)))
        value = body.get("value")
        if value is None:
            self.settings.pop((account, body["region"], setting_id), None)
        else:
            self.settings[(account, body["region"], setting_id)] = (str(value), time.time())
        self._refresh_account(account)
        saved = self.account
        try:
            self.account = account
            return self._setting(body["region"], setting_id)
        finally:
            self.account = saved

    def get_service_setting(self, region: str, params: dict[str, Any]) -> dict[str, Any]:
        return self._setting(region, self._setting_id(params["SettingId"]))

    def update_service_setting(self, region: str, params: dict[str, Any]) -> dict[str, Any]:
        setting_id = self._setting_id(params["SettingId"])
        self.settings[(self.account, region, setting_id)] = (str(params["SettingValue"]),
                                                             time.time())
        self._refresh_account(self.account)
        return {}

    def reset_service_setting(self, region: str, params: dict[str, Any]) -> dict[str, Any]:
        setting_id = self._setting_id(params["SettingId"])
        self.settings.pop((self.account, region, setting_id), None)
        return self._setting(region, setting_id)


def deliver_webhook(url: str, body: bytes, instance_id: str,
                    sleep: Callable[[float], None] = time.sleep) -> bool:
    """POSTs one success webhook, retrying a refused or reset connection, a timeout or a 5xx answer
    (bounded, with exponential backoff, each failure logged to stderr); a 4xx answer is final (the
    receiver read the payload and refused it). True once an attempt was answered 2xx."""
    for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS):
                return True
        except urllib.error.HTTPError as exc:
            final = exc.code < 500
            problem: Exception = exc
        except OSError as exc:  # refused, reset, timed out (URLError is an OSError)
            final, problem = False, exc
        last = final or attempt == WEBHOOK_ATTEMPTS
        print(f"emulator: success webhook {url} failed for {instance_id} "
              f"(attempt {attempt} of {WEBHOOK_ATTEMPTS}{', giving up' if last else ''}): {problem}",
              file=sys.stderr, flush=True)
        if last:
            return False
        sleep(WEBHOOK_BACKOFF_SECONDS * 2 ** (attempt - 1))
    return False
