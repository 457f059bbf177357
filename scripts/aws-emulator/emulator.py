"""Local AWS emulator for arc-onboard tests: moto plus the behaviour moto lacks.

One threaded HTTP server on 127.0.0.1 serves EC2, IAM, STS, SSM and SQS for every region.
A WSGI middleware sits in front of moto's own server app and

* records every AWS request in a call log (``GET /_emulator/calls``),
* injects configured faults in each service's wire format (``/_emulator/faults``),
* answers ``AssociateIamInstanceProfile`` / ``ReplaceIamInstanceProfileAssociation``
  like AWS for unknown and freshly created instance profiles,
* serves the SSM operations moto lacks or gets wrong (see ssm_sim.py),
* serves AWS IAM outbound identity federation (``sts:GetWebIdentityToken``, its OIDC issuer at
  ``/oidc``; see federation.py),
* puts EventBridge-shaped EC2 events on an SQS queue when it launches or tags instances (see
  events.py),
* exposes a JSON control API under ``/_emulator/`` (seed, config, outcomes, ...).

Usage::

    python emulator.py --host 127.0.0.1 --port 0 [--seed FILE.json] [--verbose]

prints ``LISTENING http://HOST:PORT`` on stdout once bound; logs go to stderr.
See README.md for the control API.
"""

import os

# moto reads this when it builds the IAM backend: set it before moto is imported.
os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections import Counter  # noqa: E402
from http import HTTPStatus  # noqa: E402
from typing import Any, Callable, Iterable  # noqa: E402

from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import ThreadedWSGIServer  # noqa: E402

import events  # noqa: E402
import federation  # noqa: E402
import fleet  # noqa: E402
import orgs  # noqa: E402
import sandbox  # noqa: E402
import ssm_sim  # noqa: E402
import wire  # noqa: E402

CONTROL_PREFIX = "/_emulator/"
DEFAULT_CONFIG: dict[str, Any] = {
    "registration_delay_seconds": 0,
    "profile_propagation_seconds": 0,
    "command_duration_seconds": 1.0,
    "key_exchange_duration_seconds": 0,
    "key_pool_size": 0,
    "invocation_visibility_delay_seconds": 0,
    "on_success_webhook": None,
    # Linux instances really run their commands in a sandbox each (sandbox.py); off by default.
    "execute_scripts": False,
    # Where the sandboxes go (null: a temporary directory of the emulator's, removed when it stops).
    "sandbox_root": None,
}
_PROFILE_OPERATIONS = ("ec2:AssociateIamInstanceProfile", "ec2:ReplaceIamInstanceProfileAssociation")
_STATE_PATH = re.compile(r"^/_emulator/instances/([^/]+)/state$")
_TAGS_PATH = re.compile(r"^/_emulator/instances/([^/]+)/tags$")
# Long polls wait inside moto: served without the emulator's lock, so they hold up no other request.
_UNLOCKED_OPERATIONS = ("sqs:ReceiveMessage",)

Response = tuple[int, list[tuple[str, str]], bytes]


class ControlError(Exception):
    """A control-API request that cannot be served (rendered as ``{"error": ...}``)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _moto_app_factory(service: Any) -> Any:
    """moto's per-service Flask app, letting unhandled errors reach our middleware."""
    app = create_backend_app(service)
    app.config["PROPAGATE_EXCEPTIONS"] = True
    return app


class FaultInjector:
    """Seeded, deterministic fault injection over a replaceable list of fault rules."""

    FIELDS = {"operation", "region", "account", "rate", "code", "message", "max", "status"}

    def __init__(self) -> None:
        self.faults: list[dict[str, Any]] = []
        self.fired: list[int] = []
        self.seed: int = 0
        self.rng = random.Random(0)

    def replace(self, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("faults", []), list):
            raise ControlError('body must be {"faults": [...], "seed": N}')
        faults = []
        for raw in body.get("faults", []):
            if not isinstance(raw, dict) or not raw.get("operation") or not raw.get("code"):
                raise ControlError("every fault needs an operation and a code")
            unknown = set(raw) - self.FIELDS
            if unknown:
                raise ControlError(f"unknown fault fields: {', '.join(sorted(unknown))}")
            rate = raw.get("rate", 1.0)
            if not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
                raise ControlError("rate must be a number between 0 and 1")
            if raw.get("max") is not None and (not isinstance(raw["max"], int) or raw["max"] < 0):
                raise ControlError("max must be a non-negative integer or null")
            faults.append({"region": None, "account": None, "rate": 1.0, "message": None,
                           "max": None, "status": None, **raw})
        seed = body.get("seed", 0)
        if not isinstance(seed, int):
            raise ControlError("seed must be an integer")
        self.faults, self.fired, self.seed = faults, [0] * len(faults), seed
        self.rng = random.Random(seed)

    def view(self) -> dict[str, Any]:
        return {"faults": [{**f, "fired": n} for f, n in zip(self.faults, self.fired)],
                "seed": self.seed}

    @staticmethod
    def _matches(pattern: str, req: wire.AwsRequest) -> bool:
        if pattern == "*":
            return True
        if pattern.endswith(":*"):
            return req.service == pattern[:-2]
        return pattern == req.operation

    def draw(self, req: wire.AwsRequest) -> dict[str, Any] | None:
        """The fault to inject into this request, if any (first matching rule that fires)."""
        for index, fault in enumerate(self.faults):
            if not self._matches(fault["operation"], req):
                continue
            if fault["region"] is not None and fault["region"] != req.region:
                continue
            if fault["account"] is not None and fault["account"] != req.account:
                continue
            if fault["max"] is not None and self.fired[index] >= fault["max"]:
                continue
            if self.rng.random() < fault["rate"]:
                self.fired[index] += 1
                return fault
        return None


def _validate_config(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ControlError("config must be a JSON object")
    for key, value in body.items():
        if key not in DEFAULT_CONFIG:
            raise ControlError(f"unknown config key {key}")
        if key == "on_success_webhook":
            if value is not None and not (isinstance(value, str) and value.startswith("http")):
                raise ControlError("on_success_webhook must be an http(s) URL or null")
        elif key == "execute_scripts":
            if not isinstance(value, bool):
                raise ControlError("execute_scripts must be true or false")
        elif key == "sandbox_root":
            if value is not None and not (isinstance(value, str) and os.path.isabs(value)):
                raise ControlError("sandbox_root must be an absolute path or null")
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ControlError(f"{key} must be a non-negative number")
    return body


class Emulator:
    """The WSGI application: control API, call log, faults, fixes, then moto."""

    def __init__(self, verbose: bool = False):
        self.moto = DomainDispatcherApplication(_moto_app_factory)
        self.lock = threading.RLock()
        self.verbose = verbose
        self.config = dict(DEFAULT_CONFIG)
        self.calls: list[dict[str, Any]] = []
        self.seq = 0
        self.faults = FaultInjector()
        self.ssm = ssm_sim.SsmSimulator(self.config, self.lock)
        self.profile_created_at: dict[tuple[str, str], float] = {}
        self.federation = federation.Federation()
        self.events = events.EventSink()
        self.assume_role_gate = orgs.AssumeRoleGate()
        self.routes: dict[tuple[str, str], Callable[[Any], Any]] = {
            ("GET", "health"): lambda _: {"ok": True},
            ("GET", "calls"): lambda _: self._calls_view(),
            ("POST", "calls/reset"): lambda _: self._reset_calls(),
            ("POST", "seed"): self.seed,
            ("GET", "config"): lambda _: dict(self.config),
            ("GET", "key-pool"): lambda _: self.ssm.key_pool.view(),
            ("POST", "config"): self._set_config,
            ("GET", "faults"): lambda _: self.faults.view(),
            ("POST", "faults"): self._set_faults,
            ("GET", "outcomes"): lambda _: dict(self.ssm.outcomes),
            ("POST", "outcomes"): self._set_outcomes,
            ("GET", "commands"): lambda _: {"commands": [
                c.control_view() for c in self.ssm.commands.values()]},
            ("GET", "sandboxes"): lambda _: self.ssm.sandboxes.view(),
            ("GET", "federation"): lambda _: {"enabled": self.federation.enabled,
                                              "issued": list(self.federation.issued)},
            ("POST", "federation"): self._set_federation,
            ("POST", "assume-role"): self._assume_role,
            ("POST", "service-settings"): self._set_service_setting,
            ("GET", "events"): lambda _: self.events.view(),
            ("POST", "events/delete-queue"): lambda _: self.events.delete_queue(),
            ("POST", "events/send"): self.events.send,
            ("POST", "launch"): self._launch,
            ("POST", "organization"): lambda body: orgs.build(body),
            ("GET", "assume-role-denied"): lambda _: self.assume_role_gate.view(),
            ("POST", "assume-role-denied"): self.assume_role_gate.replace,
        }

    # ----- WSGI entry ----------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL_PREFIX):
            status, headers, body = self._control(environ, path)
        elif path.startswith("/moto-api"):
            return self.moto(environ, start_response)
        elif path.startswith(sandbox.IMDS_PREFIX) or path == sandbox.INSTALLER_PATH:
            # The sandboxed instances' IMDSv2 and the fake installer: served without the lock.
            status, headers, body = self.ssm.sandboxes.serve(environ, path)
        elif path == federation.OIDC_PREFIX or path.startswith(federation.OIDC_PREFIX + "/"):
            status, headers, body = self.federation.oidc(environ, path)
        else:
            status, headers, body = self._aws(environ)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {_reason(status)}", headers)
        return [body]

    # ----- AWS requests --------------------------------------------------------------------

    def _aws(self, environ: dict[str, Any]) -> Response:
        body = wire.read_body(environ)
        req = wire.parse_request(environ, body)
        if req.operation in _UNLOCKED_OPERATIONS:
            with self.lock:
                fault = self.faults.draw(req)
            if fault is None:
                response = self._call_moto(environ, req)
            else:
                message = fault["message"] or f"Injected fault {fault['code']} for {req.operation}"
                response = wire.error_response(req.service, fault["code"], message, fault["status"])
            with self.lock:
                self._record(req, response[0], fault["code"] if fault else None)
            return response
        with self.lock:
            req.account = orgs.account_of(req.access_key)
            fault = self.faults.draw(req)
            if fault is not None:
                message = fault["message"] or f"Injected fault {fault['code']} for {req.operation}"
                response = wire.error_response(req.service, fault["code"], message, fault["status"])
            else:
                response = self._serve(environ, req)
                self._after(req, response[0])
            self._record(req, response[0], fault["code"] if fault else None)
        return response

    def _serve(self, environ: dict[str, Any], req: wire.AwsRequest) -> Response:
        if req.operation in _PROFILE_OPERATIONS:
            error = self._check_profile(req)
            if error is not None:
                return error
        if orgs.member_denied(req.service, req.action, req.account):
            return wire.error_response("organizations", "AccessDeniedException",
                                       orgs.MEMBER_DENIED_MESSAGE)
        if req.operation == "sts:AssumeRole":
            role_arn = req.params.get("RoleArn", "")
            if self.assume_role_gate.refuses(role_arn):
                return wire.error_response("sts", "AccessDenied",
                                           orgs.AssumeRoleGate.message(req.account, role_arn))
        if req.operation in federation.OPERATIONS:
            return self.federation.handle(environ, req)
        if req.service == "ssm":
            try:
                payload = self.ssm.handle(req.action, req.region, req.params, req.account)
            except ssm_sim.SsmError as exc:
                return wire.error_response("ssm", exc.code, exc.message)
            if payload is not None:
                return wire.json_response(payload)
        return self._call_moto(environ, req)

    def _check_profile(self, req: wire.AwsRequest) -> Response | None:
        """AWS's answer for unknown or not yet propagated instance profiles (moto's differs)."""
        if "IamInstanceProfile.Arn" in req.params:
            value = req.params["IamInstanceProfile.Arn"]
            name, field, what = value.rsplit("/", 1)[-1], "arn", "ARN"
        else:
            value = req.params.get("IamInstanceProfile.Name", "")
            name, field, what = value, "name", "name"
        created = self.profile_created_at.get((req.account, name))
        fresh = created is not None and (
            time.time() - created < self.config["profile_propagation_seconds"])
        if fleet.profile_exists(name, req.account) and not fresh:
            return None
        message = (f"Value ({value}) for parameter iamInstanceProfile.{field} is invalid. "
                   f"Invalid IAM Instance Profile {what}")
        return wire.error_response("ec2", "InvalidParameterValue", message)

    def _call_moto(self, environ: dict[str, Any], req: wire.AwsRequest) -> Response:
        captured: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
            captured["status"], captured["headers"] = int(status.split()[0]), headers
            return lambda data: None

        try:
            result = self.moto(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                getattr(result, "close", lambda: None)()
        except NotImplementedError:
            return wire.error_response(req.service, "NotImplemented",
                                       f"The emulator (moto 5.2.5) does not implement "
                                       f"{req.operation}", 501)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            return wire.error_response(req.service, "InternalFailure",
                                       f"moto failed on {req.operation}: {exc!r}", 500)
        return captured["status"], captured["headers"], body

    def _after(self, req: wire.AwsRequest, status: int) -> None:
        """Bookkeeping after a request that reached the emulator's handlers or moto."""
        if req.operation == "iam:CreateInstanceProfile" and status == 200:
            self.profile_created_at[(req.account, req.params.get("InstanceProfileName", ""))] = (
                time.time())
        if req.mutating and req.service in ("ec2", "iam"):
            self.ssm.refresh()

    def _record(self, req: wire.AwsRequest, status: int, fault: str | None) -> None:
        self.seq += 1
        self.calls.append({
            "seq": self.seq, "time": time.time(), "operation": req.operation,
            "service": req.service, "action": req.action, "region": req.region,
            "account_id": req.account,
            "mutating": req.mutating, "status": status, "fault": fault, "params": req.params,
        })
        if self.verbose:
            print(f"emulator: #{self.seq} {req.region} {req.operation} -> {status}"
                  f"{' (fault ' + fault + ')' if fault else ''}", file=sys.stderr, flush=True)

    # ----- control API ---------------------------------------------------------------------

    def _control(self, environ: dict[str, Any], path: str) -> Response:
        method = environ.get("REQUEST_METHOD", "GET")
        raw = wire.read_body(environ)
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return _json(400, {"error": "request body is not valid JSON"})
        with self.lock:
            try:
                state = _STATE_PATH.match(path)
                tags = _TAGS_PATH.match(path)
                if state and method == "POST":
                    result = self._set_state(state.group(1), body)
                elif tags and method == "POST":
                    result = events.set_tags(self.events, tags.group(1), body)
                    self.ssm.refresh()
                elif method == "POST" and path.rstrip("/") == CONTROL_PREFIX + "events":
                    result = self.events.configure(body, _base_url(environ))
                else:
                    route = self.routes.get((method, path[len(CONTROL_PREFIX):].rstrip("/")))
                    if route is None:
                        return _json(404, {"error": f"no control endpoint {method} {path}"})
                    result = route(body)
            except (ControlError, fleet.FleetError, events.EventError) as exc:
                return _json(exc.status, {"error": str(exc)})
        return _json(200, result)

    def seed(self, body: Any) -> dict[str, Any]:
        """Apply a seed directly to moto's backends (never logged as AWS calls)."""
        result = fleet.seed(body)
        self.ssm.refresh()
        return result

    def _calls_view(self) -> dict[str, Any]:
        return {"calls": list(self.calls),
                "counts": dict(Counter(call["operation"] for call in self.calls))}

    def _reset_calls(self) -> dict[str, Any]:
        self.calls.clear()
        return {"ok": True}

    def _set_config(self, body: Any) -> dict[str, Any]:
        self.ssm.refresh()
        self.config.update(_validate_config(body))
        if "sandbox_root" in body:
            self.ssm.sandboxes.set_root(self.config["sandbox_root"])
        self.ssm.key_pool.fill(int(self.config["key_pool_size"]))
        return dict(self.config)

    def _set_federation(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            raise ControlError('body must be {"enabled": true | false}')
        self.federation.enabled = body["enabled"]
        return {"enabled": self.federation.enabled}

    def _assume_role(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("role_arn"), str):
            raise ControlError('body must be {"role_arn": "arn:aws:iam::123456789012:role/NAME"}')
        return federation.assume_role(body["role_arn"])

    def _set_service_setting(self, body: Any) -> dict[str, Any]:
        try:
            return self.ssm.set_service_setting(body)
        except ssm_sim.SsmError as exc:
            raise ControlError(str(exc)) from exc

    def _set_faults(self, body: Any) -> dict[str, Any]:
        self.faults.replace(body)
        return self.faults.view()

    def _set_outcomes(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ControlError("outcomes must be an object keyed by instance id")
        for instance_id, script in body.items():
            if script is not None:
                try:
                    ssm_sim.validate_outcome(script)
                except ValueError as exc:
                    raise ControlError(f"{instance_id}: {exc}") from exc
        for instance_id, script in body.items():
            if script is None:
                self.ssm.outcomes.pop(instance_id, None)
            else:
                self.ssm.outcomes[instance_id] = script
        return dict(self.ssm.outcomes)

    def _launch(self, body: Any) -> dict[str, Any]:
        result = events.launch(self.events, body)
        self.ssm.refresh()
        return result

    def _set_state(self, instance_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ControlError('body must be {"state": "running" | "stopped" | "terminated"}')
        result = fleet.set_state(instance_id, body.get("state", ""))
        self.ssm.refresh()
        result["events"] = events.state_changed(self.events, result)
        return result


def _base_url(environ: dict[str, Any]) -> str:
    """This server's own base URL as the client reached it (SQS queue URLs start with it)."""
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME')}:{environ.get('SERVER_PORT')}"
    return f"http://{host}"


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _json(status: int, payload: Any) -> Response:
    return status, [("Content-Type", "application/json")], json.dumps(payload).encode()


class BurstServer(ThreadedWSGIServer):
    """werkzeug's threaded server with a listen backlog that holds a burst: the benchmarks open a
    thousand connections at once (the daemon's calls, the success webhooks), and werkzeug's backlog of
    128 let the kernel drop or reset the rest. The kernel caps it at ``net.core.somaxconn``."""

    request_queue_size = 4096


class QuietRequestHandler(MotoRequestHandler):
    """moto's request handler without werkzeug's per-request access log."""

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", metavar="FILE.json", help="seed to apply before serving")
    parser.add_argument("--verbose", action="store_true", help="log each AWS call to stderr")
    args = parser.parse_args(argv)

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = Emulator(verbose=args.verbose)
    fleet.iam()  # build the IAM backend (loads managed policies) before the first request
    if args.seed:
        try:
            with open(args.seed, encoding="utf-8") as handle:
                app.seed(json.load(handle))
        except (OSError, ValueError, fleet.FleetError) as exc:
            sys.exit(f"emulator: cannot apply seed {args.seed}: {exc}")

    server = BurstServer(args.host, args.port, app, QuietRequestHandler)

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    port = server.socket.getsockname()[1]
    app.ssm.sandboxes.base_url = f"http://{args.host}:{port}"
    print(f"LISTENING http://{args.host}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        app.ssm.cancel_timers()
        app.ssm.sandboxes.cleanup()


if __name__ == "__main__":
    main()
