"""SIP digest authentication of a UAS (RFC 3261 §22, RFC 7616's computation, RFC 8760's SHA-256), pure.

Theory of operation: the server challenges a request that carries no valid ``Authorization`` with
``401 Unauthorized`` and one ``WWW-Authenticate`` per algorithm, SHA-256 first (RFC 8760 §2.4: in order of
preference), each offering ``qop="auth"``. The nonce is stateless: the issue time and an HMAC of it under
a per-process secret, so the server keeps nothing per challenge; a nonce older than ``nonce_lifetime_s``
is answered with a fresh challenge marked ``stale=true`` (RFC 7616 §3.3), so the client retries without
asking its user. A retry is verified by recomputing the response:

    HA1 = H(username ":" realm ":" password)
    HA2 = H(method ":" digest-uri)
    response = H(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" HA2)     (qop=auth)
    response = H(HA1 ":" nonce ":" HA2)                               (no qop: RFC 2069, MD5 clients)

``H`` is MD5 or SHA-256 (``algorithm`` absent means MD5). ``-sess`` algorithms and ``qop=auth-int`` are not
offered and refused. The digest-uri must equal the Request-URI (RFC 3261 §22.4). What is not done: nonce
counts are not tracked, so within the nonce's lifetime a captured request's credentials can be replayed
for the same method and URI (use SIP over TLS, or a short lifetime, where that matters).

Time is passed in (``now``); nothing here does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "ALGORITHMS",
    "DigestCredentials",
    "DigestFailure",
    "DigestPolicy",
    "challenges",
    "parse_credentials",
    "response_digest",
    "verify",
]

ALGORITHMS = ("SHA-256", "MD5")  # in order of preference (RFC 8760 §2.4)
_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
_NONCE_MAC_BYTES = 16
_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]+)\s*(?:,|$)')


class DigestFailure(ValueError):
    """Credentials that do not authenticate; ``reason`` is ``malformed``, ``invalid`` or ``expired``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DigestPolicy:
    """Who may send requests that need authentication, and how nonces are made.

    Attributes:
        realm: the protection space named in challenges.
        users: username -> password.
        nonce_secret: the HMAC key of nonces (random per process: nonces die with it).
        nonce_lifetime_s: how long a nonce is accepted.
    """

    realm: str
    users: Mapping[str, str] = field(repr=False)
    nonce_secret: bytes = field(repr=False)
    nonce_lifetime_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.users:
            raise ValueError("a digest policy needs at least one user")
        if len(self.nonce_secret) < 16:
            raise ValueError(f"nonce_secret: expected at least 16 bytes, got {len(self.nonce_secret)}")


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """The parameters of an ``Authorization: Digest ...`` header (quoted values unquoted)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None


def _nonce_mac(secret: bytes, issued: bytes) -> bytes:
    return hmac.new(secret, issued, hashlib.sha256).digest()[:_NONCE_MAC_BYTES]


def make_nonce(policy: DigestPolicy, now: float) -> str:
    """A nonce issued at ``now`` (milliseconds, big-endian) and its MAC, base64url."""
    issued = struct.pack(">Q", max(0, int(now * 1000)))
    return base64.urlsafe_b64encode(issued + _nonce_mac(policy.nonce_secret, issued)).decode().rstrip("=")


def _nonce_issued_s(policy: DigestPolicy, nonce: str) -> float | None:
    """When ``nonce`` was issued, or None when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
    except ValueError:
        return None
    if len(raw) != 8 + _NONCE_MAC_BYTES:
        return None
    issued, mac = raw[:8], raw[8:]
    if not hmac.compare_digest(mac, _nonce_mac(policy.nonce_secret, issued)):
        return None
    value: int = struct.unpack(">Q", issued)[0]
    return value / 1000


def challenges(policy: DigestPolicy, now: float, *, stale: bool = False) -> tuple[str, ...]:
    """The ``WWW-Authenticate`` values of a 401, SHA-256 first."""
    nonce = make_nonce(policy, now)
    tail = ", stale=true" if stale else ""
    realm = policy.realm.replace("\\", "\\\\").replace('"', '\\"')
    return tuple(
        f'Digest realm="{realm}", nonce="{nonce}", algorithm={name}, qop="auth"{tail}' for name in ALGORITHMS
    )


def parse_credentials(value: str) -> DigestCredentials:
    """Parse an ``Authorization`` header value.

    Raises:
        DigestFailure: ``malformed``: not the Digest scheme, a parameter missing or repeated, or a syntax
            error.
    """
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestFailure("malformed", f"expected the Digest scheme, got {scheme[:20]!r}")
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None or match.end() == position:
            raise DigestFailure("malformed", "expected name=value parameters")
        name, raw = match[1].lower(), match[2]
        if name in params:
            raise DigestFailure("malformed", f"parameter {name!r} given twice")
        params[name] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        position = match.end()
    for name in ("username", "realm", "nonce", "uri", "response"):
        if name not in params:
            raise DigestFailure("malformed", f"parameter {name!r} missing")
    qop = params.get("qop")
    if qop is not None and ("nc" not in params or "cnonce" not in params):
        raise DigestFailure("malformed", "qop needs nc and cnonce")
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"].lower(),
        algorithm=params.get("algorithm", "MD5"),
        qop=qop,
        nc=params.get("nc"),
        cnonce=params.get("cnonce"),
    )


def response_digest(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The ``response`` parameter a client computes (and the server recomputes).

    Raises:
        KeyError: ``algorithm`` is neither MD5 nor SHA-256.
    """
    hash_function = _HASHES[algorithm]

    def digest(text: str) -> str:
        return hash_function(text.encode()).hexdigest()

    ha1 = digest(f"{username}:{realm}:{password}")
    ha2 = digest(f"{method}:{uri}")
    if qop is None:
        return digest(f"{ha1}:{nonce}:{ha2}")
    return digest(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def verify(
    policy: DigestPolicy, credentials: DigestCredentials, *, method: str, request_uri: str, now: float
) -> str:
    """Check credentials against the policy; returns the authenticated username.

    Raises:
        DigestFailure: ``malformed`` (an algorithm or qop not offered), ``invalid`` (unknown user, other
            realm, a nonce not ours, a digest-uri other than the Request-URI, a wrong response) or
            ``expired`` (a nonce of ours past its lifetime: answer with a stale challenge).
    """
    algorithm = credentials.algorithm.upper()
    if algorithm not in ALGORITHMS:
        raise DigestFailure("malformed", f"algorithm {credentials.algorithm[:20]!r} is not offered")
    if credentials.qop is not None and credentials.qop != "auth":
        raise DigestFailure("malformed", f"qop {credentials.qop[:20]!r} is not offered")
    if credentials.realm != policy.realm:
        raise DigestFailure("invalid", "another realm")
    issued_s = _nonce_issued_s(policy, credentials.nonce)
    if issued_s is None:
        raise DigestFailure("invalid", "a nonce this server did not issue")
    if credentials.uri != request_uri:
        raise DigestFailure("invalid", "the digest-uri is not the Request-URI")
    password = policy.users.get(credentials.username)
    expected = response_digest(
        algorithm=algorithm,
        username=credentials.username,
        realm=policy.realm,
        password=password if password is not None else "",
        method=method,
        uri=credentials.uri,
        nonce=credentials.nonce,
        qop=credentials.qop,
        nc=credentials.nc,
        cnonce=credentials.cnonce,
    )
    if password is None or not hmac.compare_digest(expected, credentials.response):
        raise DigestFailure("invalid", "wrong username or password")
    if not 0 <= now - issued_s <= policy.nonce_lifetime_s:
        raise DigestFailure("expired", "the nonce is stale")
    return credentials.username
