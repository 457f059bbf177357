"""AWS wire-format helpers for the emulator: decoding requests, rendering errors.

Requests are classified the way AWS routes them: the service and region come from
the SigV4 ``Authorization`` header (``Credential=AKID/DATE/REGION/SERVICE/aws4_request``),
the operation from the ``Action`` form field (EC2 query / awsQuery protocols) or from
``X-Amz-Target: AmazonSSM.<Op>`` / ``AmazonSQS.<Op>`` (awsJson1.1 / awsJson1.0 protocols).

Errors are rendered in each service's own format so that AWS SDK error parsers
(botocore, the AWS SDK for Rust) see the right error code.
"""

import io
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
DEFAULT_REGION = "us-east-1"

CREDENTIAL_RE = _CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request")
# ReceiveMessage only hides a message for a while: not a change anyone asked for.
_READ_ONLY_PREFIXES = ("Describe", "Get", "List", "Receive")
# Services speaking awsJson1.1, whose errors are JSON.
_JSON_SERVICES = {"ssm", "organizations"}

# Error codes whose HTTP status differs from the service's default of 400.
_STATUS_BY_CODE = {
    "ec2": {"RequestLimitExceeded": 503, "UnauthorizedOperation": 403, "InternalError": 500,
            "Unavailable": 503},
    "iam": {"AccessDenied": 403, "NoSuchEntity": 404, "ServiceFailure": 500},
    "sts": {"AccessDenied": 403, "OutboundWebIdentityFederationDisabledException": 403},
    "organizations": {"AccessDeniedException": 400},
    "ssm": {"InternalServerError": 500},
    "sqs": {"InternalError": 500},
}
# awsJson1.0 error types of SQS for the awsQuery codes faults are given in.
_SQS_TYPES = {"AWS.SimpleQueueService.NonExistentQueue": "QueueDoesNotExist"}


@dataclass
class AwsRequest:
    """An AWS API request, decoded enough to log, fault-inject and route it."""

    service: str
    region: str
    action: str
    params: dict[str, Any]
    # The SigV4 access key id; the emulator derives the account the request acts in from it.
    access_key: str = ""
    account: str = "123456789012"

    @property
    def operation(self) -> str:
        return f"{self.service}:{self.action}"

    @property
    def mutating(self) -> bool:
        return not self.action.startswith(_READ_ONLY_PREFIXES)


def read_body(environ: dict[str, Any]) -> bytes:
    """Read the whole request body and put an equivalent, re-readable stream back."""
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        body = environ["wsgi.input"].read()
        del environ["HTTP_TRANSFER_ENCODING"]
    else:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def parse_request(environ: dict[str, Any], body: bytes) -> AwsRequest:
    """Classify a request by service, region and action, and decode its parameters."""
    service, region, access_key = "unknown", DEFAULT_REGION, ""
    match = _CREDENTIAL_RE.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match:
        access_key, region, service = match.group(1), match.group(3), match.group(4).lower()
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    content_type = environ.get("CONTENT_TYPE", "")
    if target or content_type.startswith("application/x-amz-json"):
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            params = {}
        if not isinstance(params, dict):
            params = {}
        action = target.split(".", 1)[1] if "." in target else target
        if not match and target.startswith("AmazonSSM."):
            service = "ssm"
        return AwsRequest(service, region, action or "Unknown", params, access_key)
    pairs = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    if content_type.startswith("application/x-www-form-urlencoded"):
        pairs += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    params = dict(pairs)
    return AwsRequest(service, region, params.get("Action", "Unknown"), params, access_key)


def request_id() -> str:
    return str(uuid.uuid4())


def error_status(service: str, code: str) -> int:
    """The HTTP status AWS uses for this error code (400 unless known otherwise)."""
    return _STATUS_BY_CODE.get(service, {}).get(code, 400)


def error_response(service: str, code: str, message: str,
                   status: int | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    """Render an error as (status, headers, body) in the service's wire format.

    ec2 uses ``<Response><Errors>``, iam/sts the awsQuery ``<ErrorResponse>``,
    ssm (and any other JSON service) ``{"__type", "message"}`` plus ``x-amzn-ErrorType``.
    """
    status = status or error_status(service, code)
    rid = request_id()
    if service in _JSON_SERVICES:
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = [("Content-Type", JSON_CONTENT_TYPE), ("x-amzn-ErrorType", code),
                   ("x-amzn-RequestId", rid)]
        return status, headers, body
    if service == "sqs":
        # awsJson1.0 with the awsQuery code in x-amzn-query-error, as SQS answers.
        error_type = _SQS_TYPES.get(code, code)
        body = json.dumps({"__type": f"com.amazonaws.sqs#{error_type}", "message": message}).encode()
        headers = [("Content-Type", "application/x-amz-json-1.0"),
                   ("x-amzn-query-error", f"{code};Sender"), ("x-amzn-RequestId", rid)]
        return status, headers, body
    code_x, message_x = escape(code), escape(message)
    if service == "ec2":
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
               f"<Code>{code_x}</Code><Message>{message_x}</Message></Error></Errors>"
               f"<RequestID>{rid}</RequestID></Response>")
    else:
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse><Error>'
               f"<Type>Sender</Type><Code>{code_x}</Code><Message>{message_x}</Message>"
               f"</Error><RequestId>{rid}</RequestId></ErrorResponse>")
    headers = [("Content-Type", "text/xml"), ("x-amzn-RequestId", rid)]
    return status, headers, xml.encode()


def json_response(payload: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    """A successful awsJson1.1 response."""
    headers = [("Content-Type", JSON_CONTENT_TYPE), ("x-amzn-RequestId", request_id())]
    return 200, headers, json.dumps(payload).encode()
