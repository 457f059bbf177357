"""Client assertions and managed identity for the Azure stub: what Entra checks locally.

* Certificate assertions (``x5t`` / ``x5t#S256`` header): the certificate registered for the client,
  RS256 signature, ``aud`` = the token endpoint, ``iss`` = ``sub`` = client id, time range.
* Federated assertions (no thumbprint header): a federated credential of the client matching the
  token's issuer, subject and audience, and the signature against the issuer's JWKS, fetched from
  ``{issuer}/.well-known/openid-configuration`` -> ``jwks_uri`` (loopback issuers only: the stub never
  reaches the internet).
* A test OIDC issuer of its own (``{stub}/oidc``, Kubernetes style) that mints service account tokens.
* Self-signed certificate generation for tests.

Failures are ``AssertionRejected(status, error, aadsts, text)`` in Entra's shape.
"""

import base64
import hashlib
import ipaddress
import json
import secrets
import threading
import time
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
LEEWAY_SECONDS = 300  # Entra tolerates some clock skew


class AssertionRejected(Exception):
    """An assertion Entra would refuse: HTTP status, OAuth error, AADSTS number and text."""

    def __init__(self, status: int, error: str, aadsts: int, text: str):
        super().__init__(text)
        self.status, self.error, self.aadsts, self.text = status, error, aadsts, text


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprints(cert: x509.Certificate) -> dict[str, str]:
    """``x5t`` (SHA-1) and ``x5t#S256`` (SHA-256) of the certificate's DER, base64url."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return {"x5t": b64url(hashlib.sha1(der).digest()),
            "x5t#S256": b64url(hashlib.sha256(der).digest())}


def generate_certificate(subject: str, not_before: datetime, not_after: datetime,
                         key_size: int = 2048) -> tuple[str, x509.Certificate]:
    """A new RSA key and self-signed certificate: (PEM with key then certificate, certificate)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    pem += cert.public_bytes(serialization.Encoding.PEM).decode()
    return pem, cert


def _is_loopback_url(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Issuer:
    """An OIDC issuer the stub runs itself (e.g. a Kubernetes cluster's service account issuer)."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = b64url(hashlib.sha256(self.key.public_key().public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo)).digest())[:32]

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def discovery(self, issuer: str) -> dict[str, Any]:
        return {"issuer": issuer, "jwks_uri": f"{issuer}/openid/v1/jwks",
                "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"]}

    def mint(self, issuer: str, subject: str, audience: str, lifetime: int) -> str:
        now = int(time.time())
        claims = {"iss": issuer, "sub": subject, "aud": [audience], "iat": now, "nbf": now,
                  "exp": now + lifetime, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})


class Verifier:
    """Registered certificates and federated credentials per client, and the checks Entra makes."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.certificates: list[dict[str, Any]] = []  # {"client_id", "certificate", thumbprints}
        self.federated: list[dict[str, Any]] = []  # {"client_id", "issuer", "subject", "audiences"}
        self.jwks_cache: dict[str, dict[str, Any]] = {}

    # ----- registration (control API) ----------------------------------------------------------

    def register_certificate(self, client_id: str, pem: str) -> dict[str, Any]:
        cert = x509.load_pem_x509_certificate(pem.encode())
        entry = {"client_id": client_id.lower(), "certificate": cert, **thumbprints(cert)}
        with self.lock:
            self.certificates.append(entry)
        return self.certificate_view(entry)

    @staticmethod
    def certificate_view(entry: dict[str, Any]) -> dict[str, Any]:
        cert = entry["certificate"]
        return {"client_id": entry["client_id"], "x5t": entry["x5t"],
                "x5t_s256": entry["x5t#S256"], "subject": cert.subject.rfc4514_string(),
                "not_after": cert.not_valid_after_utc.isoformat()}

    def add_federated(self, client_id: str, issuer: str, subject: str,
                      audiences: list[str]) -> dict[str, Any]:
        entry = {"client_id": client_id.lower(), "issuer": issuer, "subject": subject,
                 "audiences": list(audiences)}
        with self.lock:
            self.federated.append(entry)
        return dict(entry)

    def reset(self) -> None:
        with self.lock:
            self.certificates.clear()
            self.federated.clear()
            self.jwks_cache.clear()

    # ----- verification ------------------------------------------------------------------------

    def verify(self, assertion: str, client_id: str, token_endpoint: str,
               extra: dict[str, Any]) -> str:
        """Checks a client assertion; returns its kind ("certificate" | "federated") or raises
        AssertionRejected."""
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AssertionRejected(401, "invalid_client", 50027,
                                    f"JWT token is invalid or malformed. ({exc})") from exc
        extra["assertion"] = {key: claims.get(key) for key in ("iss", "sub", "aud")}
        if "x5t#S256" in header or "x5t" in header:
            extra["assertion"]["x5t_s256"] = header.get("x5t#S256")
            extra["assertion"]["x5t"] = header.get("x5t")
            self._verify_certificate(assertion, header, claims, client_id, token_endpoint)
            return "certificate"
        self._verify_federated(assertion, header, claims, client_id)
        return "federated"

    def _verify_certificate(self, assertion: str, header: dict[str, Any], claims: dict[str, Any],
                            client_id: str, token_endpoint: str) -> None:
        if header.get("alg") not in ("RS256", "PS256"):
            raise AssertionRejected(401, "invalid_client", 700027,
                                    f"Client assertion contains an invalid signature algorithm "
                                    f"'{header.get('alg')}'.")
        with self.lock:
            mine = [c for c in self.certificates if c["client_id"] == client_id.lower()]
        match = None
        for entry in mine:
            s256, s1 = header.get("x5t#S256"), header.get("x5t")
            if (s256 is not None and s256 == entry["x5t#S256"]) or (
                    s256 is None and s1 == entry["x5t"]):
                match = entry
                break
        if match is None:
            shown = header.get("x5t#S256") or header.get("x5t")
            raise AssertionRejected(401, "invalid_client", 700027,
                                    "The certificate with identifier used to sign the client "
                                    "assertion is not registered on application. [Reason - The key "
                                    f"was not found., Thumbprint of key used by client: '{shown}']")
        try:
            jwt.decode(assertion, match["certificate"].public_key(), algorithms=[header["alg"]],
                       options={"verify_aud": False, "verify_exp": False, "verify_nbf": False,
                                "verify_iat": False})
        except jwt.InvalidSignatureError as exc:
            raise AssertionRejected(401, "invalid_client", 700027,
                                    "Client assertion failed signature validation.") from exc
        except jwt.PyJWTError as exc:
            raise AssertionRejected(401, "invalid_client", 50027,
                                    f"JWT token is invalid or malformed. ({exc})") from exc
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(a, str) and a.lower() == token_endpoint.lower() for a in auds):
            raise AssertionRejected(401, "invalid_client", 700023,
                                    f"Client assertion audience claim does not match Realm issuer. "
                                    f"Expected '{token_endpoint}', got '{aud}'.")
        if claims.get("iss") != claims.get("sub") or str(claims.get("iss", "")).lower() != \
                client_id.lower():
            raise AssertionRejected(401, "invalid_client", 700021,
                                    "Client assertion application identifier doesn't match "
                                    "'client_id' parameter.")
        self._check_time(claims)
        cert = match["certificate"]
        now = datetime.now(timezone.utc)
        if now > cert.not_valid_after_utc:
            raise AssertionRejected(401, "invalid_client", 7000274,
                                    "The certificate used to sign the client assertion has "
                                    f"expired ({cert.not_valid_after_utc.isoformat()}).")

    @staticmethod
    def _check_time(claims: dict[str, Any]) -> None:
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
        if not isinstance(exp, (int, float)) or now > exp + LEEWAY_SECONDS or (
                isinstance(nbf, (int, float)) and now + LEEWAY_SECONDS < nbf):
            raise AssertionRejected(401, "invalid_client", 700024,
                                    f"Client assertion is not within its valid time range. Current "
                                    f"time: {int(now)}, assertion valid from {nbf}, expiry time of "
                                    f"assertion {exp}.")

    def _verify_federated(self, assertion: str, header: dict[str, Any], claims: dict[str, Any],
                          client_id: str) -> None:
        issuer, subject = claims.get("iss"), claims.get("sub")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        with self.lock:
            mine = [f for f in self.federated if f["client_id"] == client_id.lower()]
        by_issuer = [f for f in mine if f["issuer"] == issuer]
        if not by_issuer:
            raise AssertionRejected(400, "invalid_client", 700211,
                                    "No matching federated identity record found for presented "
                                    f"assertion issuer '{issuer}'. Please check your federated "
                                    "identity credential Subject, Audience and Issuer against the "
                                    "presented assertion.")
        by_subject = [f for f in by_issuer if f["subject"] == subject]
        if not by_subject:
            raise AssertionRejected(400, "invalid_client", 700213,
                                    "No matching federated identity record found for presented "
                                    f"assertion subject '{subject}'. Please check your federated "
                                    "identity credential Subject, Audience and Issuer against the "
                                    "presented assertion.")
        if not any(a in f["audiences"] for f in by_subject for a in auds):
            raise AssertionRejected(400, "invalid_client", 700212,
                                    "No matching federated identity record found for presented "
                                    f"assertion audience '{aud}'. Please check your federated "
                                    "identity credential Subject, Audience and Issuer against the "
                                    "presented assertion.")
        key = self._issuer_key(issuer, header.get("kid"))
        try:
            jwt.decode(assertion, key, algorithms=["RS256", "ES384"],
                       options={"verify_aud": False, "verify_exp": False, "verify_nbf": False,
                                "verify_iat": False})
        except jwt.InvalidSignatureError as exc:
            raise AssertionRejected(401, "invalid_client", 700027,
                                    "Client assertion failed signature validation.") from exc
        except jwt.PyJWTError as exc:
            raise AssertionRejected(401, "invalid_client", 50027,
                                    f"JWT token is invalid or malformed. ({exc})") from exc
        self._check_time(claims)

    def _issuer_key(self, issuer: str, kid: str | None) -> Any:
        """The issuer's signing key ``kid`` (JWKS fetched once, again for an unknown kid)."""
        for refresh in (False, True):
            jwks = self._jwks(issuer, refresh)
            for jwk in jwks.get("keys", []):
                if kid is None or jwk.get("kid") == kid:
                    return jwt.PyJWK(jwk).key
        raise AssertionRejected(401, "invalid_client", 700027,
                                f"Client assertion failed signature validation: no key '{kid}' "
                                f"in the JWKS of issuer '{issuer}'.")

    def _jwks(self, issuer: str, refresh: bool) -> dict[str, Any]:
        with self.lock:
            if not refresh and issuer in self.jwks_cache:
                return self.jwks_cache[issuer]
        if not _is_loopback_url(issuer):
            raise AssertionRejected(400, "invalid_request", 50166,
                                    f"Request to External OIDC endpoint failed: azure-stub only "
                                    f"fetches loopback issuers, not '{issuer}'.")
        try:
            config = _get_json(f"{issuer.rstrip('/')}/.well-known/openid-configuration")
            jwks_uri = config["jwks_uri"]
            if not _is_loopback_url(jwks_uri):
                raise ValueError(f"jwks_uri {jwks_uri} is not on a loopback host")
            jwks = _get_json(jwks_uri)
        except Exception as exc:  # noqa: BLE001 - any failure is Entra's 50166
            raise AssertionRejected(400, "invalid_request", 50166,
                                    f"Request to External OIDC endpoint failed: {exc}") from exc
        with self.lock:
            self.jwks_cache[issuer] = jwks
        return jwks


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
        return json.loads(response.read())


class ManagedIdentityChallenges:
    """The Azure Arc agent's challenge files: one random secret per 401, in ``token_dir``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[str, str] = {}  # secret -> file path

    def issue(self, token_dir: str) -> str:
        import os
        secret = secrets.token_urlsafe(24)
        path = os.path.join(token_dir, f"{uuid.uuid4()}.key")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(secret)
        with self.lock:
            self.pending[secret] = path
        return path

    def redeem(self, secret: str) -> bool:
        import os
        with self.lock:
            path = self.pending.pop(secret, None)
        if path is None:
            return False
        try:
            os.remove(path)
        except OSError:
            pass
        return True

    def reset(self) -> None:
        with self.lock:
            self.pending.clear()


def certificate_window(body: dict[str, Any]) -> tuple[datetime, datetime]:
    now = datetime.now(timezone.utc)
    start = body.get("not_before_offset_seconds", -60)
    end = body.get("not_after_offset_seconds", 86400)
    for name, value in (("not_before_offset_seconds", start), ("not_after_offset_seconds", end)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer")
    if end <= start:
        raise ValueError("not_after_offset_seconds must be after not_before_offset_seconds")
    return now + timedelta(seconds=start), now + timedelta(seconds=end)
