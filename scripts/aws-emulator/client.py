"""Stdlib-only client for the emulator's control API (``/_emulator/...``).

As a library::

    from client import EmulatorClient
    emu = EmulatorClient("http://127.0.0.1:PORT")
    emu.seed({"instances": [{"count": 2}]})

As a CLI (prints the JSON answer)::

    python client.py --endpoint URL seed FILE.json
    python client.py --endpoint URL calls [--reset]
    python client.py --endpoint URL config [KEY=VALUE ...]
    python client.py --endpoint URL faults FILE.json
    python client.py --endpoint URL outcomes FILE.json
    python client.py --endpoint URL commands
    python client.py --endpoint URL state INSTANCE_ID running|stopped|terminated

``--endpoint`` defaults to ``$AWS_ENDPOINT_URL``.
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any


class EmulatorError(Exception):
    """The control API answered with an error status."""


class EmulatorClient:
    """Thin wrapper over the control API; every method returns the decoded JSON answer."""

    def __init__(self, endpoint: str, timeout: float = 30.0):
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.endpoint}/_emulator/{path}", data=data,
                                         method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise EmulatorError(f"{method} {path}: {exc.code} {exc.read().decode()}") from exc

    def health(self) -> Any:
        return self._call("GET", "health")

    def organization(self, spec: dict[str, Any]) -> Any:
        """Creates an organization with the given account ids and OU tree (see orgs.py)."""
        return self._call("POST", "organization", spec)

    def deny_assume_role(self, denied: list[str]) -> Any:
        """sts:AssumeRole into these account ids or role ARNs answers AccessDenied."""
        return self._call("POST", "assume-role-denied", {"denied": denied})

    def seed(self, spec: dict[str, Any]) -> Any:
        return self._call("POST", "seed", spec)

    def calls(self) -> Any:
        return self._call("GET", "calls")

    def reset_calls(self) -> Any:
        return self._call("POST", "calls/reset", {})

    def config(self, **values: Any) -> Any:
        """Change config values, or (without arguments) read the config."""
        return self._call("POST", "config", values) if values else self._call("GET", "config")

    def sandboxes(self) -> Any:
        """execute_scripts: ``{"root", "instances": {instance id: sandbox directory}}``."""
        return self._call("GET", "sandboxes")

    def faults(self, faults: list[dict[str, Any]] | None = None, seed: int = 0) -> Any:
        """Replace the fault list, or (without arguments) read it with fired counts."""
        if faults is None:
            return self._call("GET", "faults")
        return self._call("POST", "faults", {"faults": faults, "seed": seed})

    def outcomes(self, outcomes: dict[str, Any] | None = None) -> Any:
        """Merge scripted outcomes (null removes one), or (without arguments) read them."""
        if outcomes is None:
            return self._call("GET", "outcomes")
        return self._call("POST", "outcomes", outcomes)

    def commands(self) -> Any:
        return self._call("GET", "commands")

    def set_state(self, instance_id: str, state: str) -> Any:
        return self._call("POST", f"instances/{instance_id}/state", {"state": state})

    def events(self, **body: Any) -> Any:
        """Configures the event queue: ``create_queue=NAME, region=R``, ``queue_url=URL`` or
        ``queue_url=None``; without arguments, what is configured."""
        return self._call("POST", "events", body) if body else self._call("GET", "events")

    def launch(self, **item: Any) -> Any:
        """Launches running instances (a seed ``instances`` entry) and delivers their events."""
        return self._call("POST", "launch", item)

    def set_tags(self, instance_id: str, tags: dict[str, str],
                 remove: list[str] | None = None) -> Any:
        return self._call("POST", f"instances/{instance_id}/tags",
                          {"tags": tags, "remove": remove or []})

    def send_event(self, body: Any) -> Any:
        """One message on the event queue: a raw string, or an event object."""
        return self._call("POST", "events/send",
                          {"body": body} if isinstance(body, str) else {"event": body})

    def delete_queue(self) -> Any:
        return self._call("POST", "events/delete-queue", {})


def _config_value(text: str) -> Any:
    """``KEY=VALUE`` values are JSON when they parse as JSON (numbers, null), else strings."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _load(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Control the arc-onboard AWS emulator.")
    parser.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("seed").add_argument("file")
    sub.add_parser("calls").add_argument("--reset", action="store_true")
    sub.add_parser("config").add_argument("pairs", nargs="*", metavar="KEY=VALUE")
    faults = sub.add_parser("faults")
    faults.add_argument("file", help='{"faults": [...], "seed": N}')
    sub.add_parser("outcomes").add_argument("file")
    sub.add_parser("commands")
    state = sub.add_parser("state")
    state.add_argument("instance_id")
    state.add_argument("state", choices=["running", "stopped", "terminated"])
    queue = sub.add_parser("events", help="deliver EC2 events to a queue (created when missing)")
    queue.add_argument("--create-queue", metavar="NAME")
    queue.add_argument("--region", default="us-east-1")
    launch = sub.add_parser("launch", help="launch running instances and deliver their events")
    launch.add_argument("--region", default="us-east-1")
    launch.add_argument("--count", type=int, default=1)
    launch.add_argument("--platform", default="linux", choices=["linux", "windows"])
    launch.add_argument("--profile", help="instance profile to launch with")
    launch.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if not args.endpoint:
        parser.error("--endpoint or AWS_ENDPOINT_URL is required")

    client = EmulatorClient(args.endpoint)
    if args.command == "seed":
        result = client.seed(_load(args.file))
    elif args.command == "calls":
        result = client.reset_calls() if args.reset else client.calls()
    elif args.command == "config":
        pairs = [pair.split("=", 1) for pair in args.pairs]
        if any(len(pair) != 2 for pair in pairs):
            parser.error("config arguments must be KEY=VALUE")
        result = client.config(**{key: _config_value(value) for key, value in pairs})
    elif args.command == "faults":
        spec = _load(args.file)
        result = client.faults(spec.get("faults", []), spec.get("seed", 0))
    elif args.command == "outcomes":
        result = client.outcomes(_load(args.file))
    elif args.command == "commands":
        result = client.commands()
    elif args.command == "events":
        result = (client.events(create_queue=args.create_queue, region=args.region)
                  if args.create_queue else client.events())
    elif args.command == "launch":
        tags = dict(pair.split("=", 1) for pair in args.tag)
        item = {"region": args.region, "count": args.count, "platform": args.platform,
                "tags": tags}
        if args.profile:
            item["instance_profile"] = args.profile
        result = client.launch(**item)
    else:
        result = client.set_state(args.instance_id, args.state)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    try:
        main()
    except EmulatorError as error:
        sys.exit(f"error: {error}")
