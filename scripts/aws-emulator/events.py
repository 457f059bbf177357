"""EventBridge-shaped EC2 events on an SQS queue, as an EventBridge rule with an SQS target delivers them.

moto serves SQS but EC2 in moto emits no events. The emulator's control API launches and tags
instances (``POST /_emulator/launch``, ``POST /_emulator/instances/<id>/tags``) and, when a queue is
configured (``POST /_emulator/events``), puts on it the event EventBridge would deliver:

* ``EC2 Instance State-change Notification`` (``source`` ``aws.ec2``) with ``detail.instance-id`` and
  ``detail.state``, for each launched instance (``running``; ``pending`` first when asked);
* ``Tag Change on Resource`` (``source`` ``aws.tag``) with ``detail.changed-tag-keys``, ``service``
  ``ec2``, ``resource-type`` ``instance`` and every current tag, for a tag change.

The messages go straight into moto's SQS backend, so they are received through the ordinary SQS API.
"""

import datetime
import json
import threading
import uuid
from typing import Any

from moto.sqs.models import sqs_backends

import fleet

STATE_CHANGE = "EC2 Instance State-change Notification"
TAG_CHANGE = "Tag Change on Resource"


class EventError(Exception):
    """A control request about events that cannot be served (HTTP 400/404/409)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _envelope(detail_type: str, source: str, region: str, instance_id: str,
              detail: dict[str, Any], account: str | None = None) -> dict[str, Any]:
    account = account or fleet.ACCOUNT_ID
    return {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": detail_type, "source": source,
        "account": account, "time": _now(), "region": region,
        "resources": [f"arn:aws:ec2:{region}:{account}:instance/{instance_id}"],
        "detail": detail,
    }


def state_change_event(region: str, instance_id: str, state: str,
                       account: str | None = None) -> dict[str, Any]:
    """The event of an instance reaching ``state`` (in ``account``; default the emulator's own), as a
    member account's rule forwards it to the central bus: ``account`` is the member's."""
    return _envelope(STATE_CHANGE, "aws.ec2", region, instance_id,
                     {"instance-id": instance_id, "state": state}, account)


def tag_change_event(region: str, instance_id: str, changed: list[str],
                     tags: dict[str, str], account: str | None = None) -> dict[str, Any]:
    """The event of an instance's tags changing (``tags`` holds every current tag), in ``account``."""
    return _envelope(TAG_CHANGE, "aws.tag", region, instance_id,
                     {"changed-tag-keys": changed, "service": "ec2", "resource-type": "instance",
                      "version": 1, "tags": tags}, account)


class EventSink:
    """The queue events are delivered to, and what was delivered."""

    def __init__(self) -> None:
        self.region: str | None = None
        self.name: str | None = None
        self.url: str | None = None
        self.sent = 0
        self.lock = threading.Lock()

    def view(self) -> dict[str, Any]:
        """The queue, how many messages were put on it since it was configured, and how many are
        still on it (not deleted, visible or not); ``messages`` is null once the queue is gone."""
        messages = None
        if self.name is not None and self.region is not None:
            queue = sqs_backends[fleet.ACCOUNT_ID][self.region].queues.get(self.name)
            if queue is not None:
                messages = len(queue._messages)
        return {"queue_url": self.url, "region": self.region, "sent": self.sent,
                "messages": messages}

    @staticmethod
    def _find(name: str) -> str | None:
        """The region whose SQS backend holds a queue called ``name``."""
        backends = sqs_backends[fleet.ACCOUNT_ID]
        for region in list(dict.keys(backends)):
            if name in backends[region].queues:
                return region
        return None

    def configure(self, body: Any, base_url: str) -> dict[str, Any]:
        """``{"create_queue": NAME, "region": R}`` creates the queue and delivers to it;
        ``{"queue_url": URL}`` delivers to an existing queue; ``{"queue_url": null}`` stops delivering."""
        if not isinstance(body, dict):
            raise EventError('body must be {"create_queue": NAME, "region": R} or {"queue_url": URL}')
        if "create_queue" in body:
            name, region = body["create_queue"], body.get("region", "us-east-1")
            if not isinstance(name, str) or not name:
                raise EventError("create_queue must be a queue name")
            if not isinstance(region, str):
                raise EventError("region must be a string")
            attributes = {"VisibilityTimeout": str(body.get("visibility_timeout", 60))}
            sqs_backends[fleet.ACCOUNT_ID][region].create_queue(name, **attributes)
            self.region, self.name, self.sent = region, name, 0
            self.url = f"{base_url}/{fleet.ACCOUNT_ID}/{name}"
            return self.view()
        if "queue_url" not in body:
            raise EventError('body must be {"create_queue": NAME, "region": R} or {"queue_url": URL}')
        url = body["queue_url"]
        if url is None:
            self.region = self.name = self.url = None
            return self.view()
        if not isinstance(url, str) or "/" not in url:
            raise EventError("queue_url must be a queue URL or null")
        name = url.rstrip("/").rsplit("/", 1)[-1]
        region = self._find(name)
        if region is None:
            raise EventError(f"no queue {name}", 404)
        self.region, self.name, self.url, self.sent = region, name, url, 0
        return self.view()

    def delete_queue(self) -> dict[str, Any]:
        """Deletes the configured queue (as someone deleting it in the console would)."""
        if self.name is None or self.region is None:
            raise EventError("no queue is configured", 409)
        backend = sqs_backends[fleet.ACCOUNT_ID][self.region]
        if self.name in backend.queues:
            backend.delete_queue(self.name)
        return {"deleted": self.url}

    def deliver(self, event: Any) -> bool:
        """Puts one message on the queue (an event object, or a raw string body); False when none is
        configured or the queue is gone."""
        if self.name is None or self.region is None:
            return False
        body = event if isinstance(event, str) else json.dumps(event)
        backend = sqs_backends[fleet.ACCOUNT_ID][self.region]
        if self.name not in backend.queues:
            return False
        with self.lock:
            backend.send_message(self.name, body)
            self.sent += 1
        return True

    def send(self, body: Any) -> dict[str, Any]:
        """``{"body": "raw text"}`` or ``{"event": {...}}``: one message as given (for malformed and
        out-of-scope events)."""
        if not isinstance(body, dict) or ("body" not in body and "event" not in body):
            raise EventError('body must be {"body": "text"} or {"event": {...}}')
        raw = body["body"] if "body" in body else json.dumps(body["event"])
        if not isinstance(raw, str):
            raise EventError("body must be a string")
        if not self.deliver(raw):
            raise EventError("no queue is configured (or it was deleted)", 409)
        return {"sent": 1}


def launch(sink: EventSink, body: Any) -> dict[str, Any]:
    """Launches instances (a seed ``instances`` entry, running) and delivers their events:
    ``"events": ["running"]`` by default, ``["pending", "running"]`` to also send the pending one.
    ``"account_id"`` launches them in that account (events name it, as a member account's rule
    forwarding to the central bus would deliver them)."""
    if not isinstance(body, dict):
        raise EventError("body must be an instances entry of a seed")
    account = body.get("account_id", fleet.ACCOUNT_ID)
    if not isinstance(account, str) or len(account) != 12 or not account.isdigit():
        raise EventError("account_id must be a 12-digit account id")
    item = {k: v for k, v in body.items() if k not in ("events", "account_id")}
    item.setdefault("state", "running")
    if item["state"] != "running":
        raise EventError("launch starts running instances; use the seed for others")
    states = body.get("events", ["running"])
    if not isinstance(states, list) or not all(s in ("pending", "running") for s in states):
        raise EventError('events must be a list of "pending" and "running"')
    created = fleet.seed({"account_id": account, "instances": [item]})["instances"]
    delivered = 0
    for instance in created:
        for state in states:
            delivered += sink.deliver(
                state_change_event(instance["region"], instance["instance_id"], state, account))
    return {"instances": created, "events": delivered}


# The state-change events EC2 emits on the way to each state the control API sets.
_TRANSITIONS = {"running": ("pending", "running"), "stopped": ("stopping", "stopped"),
                "terminated": ("shutting-down", "terminated")}


def state_changed(sink: EventSink, result: dict[str, Any]) -> int:
    """Delivers the events of an instance moved to ``result["state"]`` by the control API (as EC2
    does: ``shutting-down`` then ``terminated`` for a termination), when a queue is configured;
    returns how many were delivered."""
    found = fleet.locate(result["instance_id"])
    account = found[0] if found else None
    return sum(int(sink.deliver(state_change_event(result["region"], result["instance_id"], state,
                                                   account)))
               for state in _TRANSITIONS.get(result["state"], ()))


def set_tags(sink: EventSink, instance_id: str, body: Any) -> dict[str, Any]:
    """``{"tags": {K: V}}`` sets these tags on the instance (``{"remove": [K]}`` removes tags) and
    delivers the Tag Change event."""
    if not isinstance(body, dict) or not isinstance(body.get("tags", {}), dict) \
            or not isinstance(body.get("remove", []), list):
        raise EventError('body must be {"tags": {"K": "V"}, "remove": ["K2"]}')
    found = fleet.locate(instance_id)
    if found is None:
        raise EventError(f"instance {instance_id} not found", 404)
    account, region, instance = found
    backend = fleet.ec2(region, account)
    tags = {str(k): str(v) for k, v in body.get("tags", {}).items()}
    remove = [str(k) for k in body.get("remove", [])]
    if tags:
        backend.create_tags([instance_id], tags)
    if remove:
        backend.delete_tags([instance_id], {k: None for k in remove})
    current = {t["key"]: t["value"] for t in backend.describe_tags(
        filters={"resource-id": [instance_id]})}
    delivered = sink.deliver(tag_change_event(region, instance_id, sorted(set(tags) | set(remove)),
                                              current, account))
    return {"instance_id": instance_id, "region": region, "tags": current, "events": int(delivered)}
