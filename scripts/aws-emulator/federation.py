"""AWS IAM outbound identity federation for the emulator (moto has none of it).

* ``iam:EnableOutboundWebIdentityFederation`` / ``DisableOutboundWebIdentityFederation`` /
  ``GetOutboundWebIdentityFederationInfo``: per-emulator switch; the issuer is
  ``http://HOST:PORT/oidc`` (the emulator's own address as the request reached it).
* ``sts:GetWebIdentityToken``: an RS256 JWT signed with an RSA key the emulator holds; ``iss`` the
  issuer above, ``sub`` the caller's ARN as moto's GetCallerIdentity resolves the request's access
  key (an assumed-role session becomes its role ARN, as AWS puts it), ``aud`` as requested, ``exp`` per
  ``DurationSeconds`` (60..3600, default 300). Refused with
  ``OutboundWebIdentityFederationDisabledException`` until enabled.
* ``GET /oidc/.well-known/openid-configuration`` and ``GET /oidc/.well-known/jwks.json``.
"""

import hashlib
import json
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Any
from xml.sax.saxutils import escape

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sts.models import sts_backends

import wire

OIDC_PREFIX = "/oidc"
OPERATIONS = ("iam:EnableOutboundWebIdentityFederation", "iam:DisableOutboundWebIdentityFederation",
              "iam:GetOutboundWebIdentityFederationInfo", "sts:GetWebIdentityToken")
_ASSUMED_ROLE = re.compile(r"^arn:([^:]+):sts::(\d{12}):assumed-role/([^/]+)/.+$")
_IAM_NS = "https://iam.amazonaws.com/doc/2010-05-08/"
_STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"

Response = tuple[int, list[tuple[str, str]], bytes]


class Federation:
    """The switch, the signing key and the operations."""

    def __init__(self) -> None:
        self.enabled = False
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = hashlib.sha256(der).hexdigest()[:16]
        self.issued: list[dict[str, Any]] = []  # claims of every token issued (no signatures)

    @staticmethod
    def issuer(environ: dict[str, Any]) -> str:
        host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME')}:{environ.get('SERVER_PORT')}"
        return f"http://{host}{OIDC_PREFIX}"

    # ----- OIDC documents ------------------------------------------------------------------

    def oidc(self, environ: dict[str, Any], path: str) -> Response:
        issuer = self.issuer(environ)
        rest = path[len(OIDC_PREFIX):]
        if rest == "/.well-known/openid-configuration":
            body = {"issuer": issuer, "jwks_uri": f"{issuer}/.well-known/jwks.json",
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"]}
        elif rest == "/.well-known/jwks.json":
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
            jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
            body = {"keys": [jwk]}
        else:
            return 404, [("Content-Type", "application/json")], b'{"error": "not found"}'
        return 200, [("Content-Type", "application/json")], json.dumps(body).encode()

    # ----- AWS operations ------------------------------------------------------------------

    def handle(self, environ: dict[str, Any], req: wire.AwsRequest) -> Response:
        if req.operation == "iam:EnableOutboundWebIdentityFederation":
            self.enabled = True
            return _xml("iam", "EnableOutboundWebIdentityFederation",
                        f"<IssuerIdentifier>{escape(self.issuer(environ))}</IssuerIdentifier>")
        if req.operation == "iam:DisableOutboundWebIdentityFederation":
            self.enabled = False
            return _xml("iam", "DisableOutboundWebIdentityFederation", None)
        if req.operation == "iam:GetOutboundWebIdentityFederationInfo":
            if not self.enabled:
                return wire.error_response("iam", "FeatureDisabledException",
                                           "Outbound web identity federation is not enabled.")
            return _xml("iam", "GetOutboundWebIdentityFederationInfo",
                        f"<IssuerIdentifier>{escape(self.issuer(environ))}</IssuerIdentifier>"
                        "<JwtVendingEnabled>true</JwtVendingEnabled>")
        return self.get_web_identity_token(environ, req)

    def get_web_identity_token(self, environ: dict[str, Any], req: wire.AwsRequest) -> Response:
        params = req.params
        audiences = [v for k, v in sorted(params.items()) if re.fullmatch(r"Audience\.member\.\d+", k)]
        if not audiences:
            return wire.error_response("sts", "ValidationError",
                                       "1 validation error detected: Value null at 'audience' "
                                       "failed to satisfy constraint: Member must not be null")
        if len(audiences) > 10:
            return wire.error_response("sts", "ValidationError",
                                       "Audience must have at most 10 members")
        algorithm = params.get("SigningAlgorithm", "")
        if algorithm not in ("RS256", "ES384"):
            return wire.error_response("sts", "ValidationError",
                                       f"SigningAlgorithm '{algorithm}' must be RS256 or ES384")
        if algorithm == "ES384":
            return wire.error_response("sts", "NotImplemented",
                                       "The emulator signs with RS256 only", 501)
        try:
            duration = int(params.get("DurationSeconds", "300"))
        except ValueError:
            duration = -1
        if not 60 <= duration <= 3600:
            return wire.error_response("sts", "ValidationError",
                                       "DurationSeconds must be between 60 and 3600")
        if not self.enabled:
            return wire.error_response("sts", "OutboundWebIdentityFederationDisabledException",
                                       "Outbound web identity federation is disabled for this "
                                       "account; enable it with "
                                       "iam:EnableOutboundWebIdentityFederation.", 403)
        subject = self.caller_arn(environ, req.region)
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer(environ), "sub": subject,
            "aud": audiences[0] if len(audiences) == 1 else audiences,
            "iat": now, "nbf": now, "exp": now + duration, "jti": str(uuid.uuid4()),
            "https://sts.amazonaws.com/": {"aws_account": DEFAULT_ACCOUNT_ID,
                                           "source_region": req.region},
        }
        self.issued.append(dict(claims))
        token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})
        expiration = datetime.fromtimestamp(now + duration, timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        return _xml("sts", "GetWebIdentityToken",
                    f"<WebIdentityToken>{token}</WebIdentityToken>"
                    f"<Expiration>{expiration}</Expiration>")

    @staticmethod
    def caller_arn(environ: dict[str, Any], region: str) -> str:
        """The caller as moto's GetCallerIdentity sees the request's access key; an assumed-role
        session as its role's ARN."""
        match = wire.CREDENTIAL_RE.search(environ.get("HTTP_AUTHORIZATION", ""))
        access_key = match.group(1) if match else ""
        _, arn, _ = sts_backends[DEFAULT_ACCOUNT_ID]["aws"].get_caller_identity(access_key, region)
        role = _ASSUMED_ROLE.match(arn)
        if role:
            return f"arn:{role.group(1)}:iam::{role.group(2)}:role/{role.group(3)}"
        return arn


def assume_role(role_arn: str, region: str = "us-east-1") -> dict[str, str]:
    """Temporary credentials of ``role_arn`` from moto's STS (control API helper for tests)."""
    role = sts_backends[DEFAULT_ACCOUNT_ID]["aws"].assume_role(
        region_name=region, role_session_name="arc-onboard-test", role_arn=role_arn,
        policy="", duration=3600, external_id="")
    return {"access_key_id": role.access_key_id, "secret_access_key": role.secret_access_key,
            "session_token": role.session_token, "arn": role.arn}


def _xml(service: str, action: str, result: str | None) -> Response:
    namespace = _IAM_NS if service == "iam" else _STS_NS
    inner = f"<{action}Result>{result}</{action}Result>" if result is not None else ""
    body = (f'<{action}Response xmlns="{namespace}">{inner}<ResponseMetadata><RequestId>'
            f"{wire.request_id()}</RequestId></ResponseMetadata></{action}Response>")
    return 200, [("Content-Type", "text/xml"), ("x-amzn-RequestId", wire.request_id())], \
        body.encode()
