"""Authentication of the WebSocket and gRPC APIs: bearer tokens, static or JWT (docs/security.md).

Theory of operation
-------------------
A client presents one bearer token (RFC 6750): in an ``Authorization: Bearer <token>`` header (WebSocket
handshake, gRPC ``authorization`` metadata) or, for browsers that cannot set handshake headers, in the
WebSocket URL's ``access_token`` query parameter (§2.3; can be turned off). The transports hand what they
received to :meth:`TokenAuthenticator.authenticate` before any audio is read; it returns a
:class:`Principal` or raises :class:`AuthError`, whose ``reason`` is one of a closed set (:class:`AuthFailure`,
the ``reason`` label of ``xlgate_auth_failures_total``) and whose message is safe to send to the peer.

A token is accepted when it is one of the static tokens (compared by SHA-256 digest, so the lookup time
says nothing about the stored tokens), or, with a JWT key configured, when it is a JWT that PyJWT verifies
with that key under the configured algorithms only (the token's ``alg`` header never chooses the
algorithm), with an ``exp`` claim that has not passed, and the configured audience and issuer. Tokens
never reach a log line: the handshake logger of ``websockets`` is filtered by :class:`CredentialFilter`.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from gateway.config import ConfigError, ServeSettings, parse_jwt_algorithms
from protocols.errors import GatewayError
from protocols.sip.digest import DigestPolicy

__all__ = [
    "AuthError",
    "AuthFailure",
    "CredentialFilter",
    "JwtPolicy",
    "Principal",
    "TokenAuthenticator",
    "build_authenticator",
    "build_sip_digest",
]

log = logging.getLogger("xlgate.auth")

BEARER_REALM: Final = "xlgate"
QUERY_PARAMETER: Final = "access_token"
MIN_STATIC_TOKEN_CHARS: Final = 16
MIN_RSA_KEY_BITS: Final = 2048
# RFC 6750 §2.1 b64token: what may follow "Bearer ".
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_BEARER: Final = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +(\S+) *")
_MIN_HMAC_KEY_BYTES: Final = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 §3.2: at least the hash size
_CURVES: Final = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


class AuthFailure(enum.StrEnum):
    """Why a request was refused: the closed set of ``xlgate_auth_failures_total``'s ``reason`` label."""

    MISSING = "missing"  # no credentials at all
    MALFORMED = "malformed"  # not a bearer token, several of them, or a JWT that does not parse
    INVALID = "invalid"  # unknown token, bad signature, wrong audience/issuer/algorithm, not yet valid
    EXPIRED = "expired"  # a JWT whose exp has passed
    ADDRESS = "address"  # SIP/MRCP: the peer's address is not on the allow-list


class AuthError(GatewayError):
    """A request without valid credentials.

    Wire mappings: HTTP ``401 Unauthorized`` with ``WWW-Authenticate: Bearer`` at the WebSocket handshake
    (RFC 6750 §3), gRPC ``UNAUTHENTICATED``.
    """

    code: ClassVar[str] = "unauthenticated"
    http_status: ClassVar[int] = 401
    grpc_status: ClassVar[str] = "UNAUTHENTICATED"

    def __init__(self, reason: AuthFailure, message: str) -> None:
        """Args:
        reason: the counted reason.
        message: safe to show the peer (never contains the token).
        """
        super().__init__(message)
        self.reason = reason

    @property
    def www_authenticate(self) -> str:
        """The challenge of a 401 (RFC 6750 §3): no error code when no credentials came at all."""
        if self.reason is AuthFailure.MISSING:
            return f'Bearer realm="{BEARER_REALM}"'
        error = "invalid_request" if self.reason is AuthFailure.MALFORMED else "invalid_token"
        return f'Bearer realm="{BEARER_REALM}", error="{error}"'


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request authenticated as: a static token, or a JWT and its subject (for the logs)."""

    kind: str
    subject: str | None = None

    def __str__(self) -> str:
        if self.subject is None:
            return self.kind
        return f"{self.kind} sub={self.subject[:64]!r}"


@dataclass(frozen=True, slots=True)
class JwtPolicy:
    """How JWTs are verified.

    Attributes:
        key: the HMAC secret (bytes) or the public key (a ``cryptography`` public key object).
        algorithms: accepted ``alg`` values, all of one family.
        audience: the ``aud`` a token must name; None: a token must carry no ``aud``.
        issuer: the ``iss`` a token must carry; None: not checked.
        leeway_s: clock skew allowed on ``exp``, ``nbf`` and ``iat``.
    """

    key: Any
    algorithms: tuple[str, ...]
    audience: str | None = None
    issuer: str | None = None
    leeway_s: float = 0.0


class TokenAuthenticator:
    """Verifies bearer tokens against static tokens and/or a JWT policy (see the module docstring)."""

    def __init__(
        self,
        *,
        static_tokens: Iterable[str] = (),
        jwt_policy: JwtPolicy | None = None,
        allow_query_token: bool = True,
    ) -> None:
        """Raises:
        ValueError: neither static tokens nor a JWT policy (an authenticator that refuses everyone is
            a configuration mistake, not a setting).
        """
        self._digests = frozenset(_digest(token) for token in static_tokens)
        self.jwt_policy = jwt_policy
        self.allow_query_token = allow_query_token
        if not self._digests and jwt_policy is None:
            raise ValueError("an authenticator needs static tokens or a JWT policy")

    def describe(self) -> str:
        """What is accepted, for the start-up log line (no secret in it)."""
        parts = []
        if self._digests:
            parts.append(f"{len(self._digests)} static token(s)")
        if self.jwt_policy is not None:
            policy = self.jwt_policy
            text = "JWT " + ",".join(policy.algorithms)
            text += f", audience {policy.audience!r}" if policy.audience else ", no audience"
            text += f", issuer {policy.issuer!r}" if policy.issuer else ""
            parts.append(text)
        where = "Authorization header" + (
            " or access_token query parameter (WebSocket)" if self.allow_query_token else ""
        )
        return f"{'; '.join(parts)}; from the {where}"

    def authenticate(
        self, *, authorization: Sequence[str] = (), query_tokens: Sequence[str] = ()
    ) -> Principal:
        """Check the credentials a request carried.

        Args:
            authorization: every ``Authorization`` header (or ``authorization`` metadata) value received.
            query_tokens: every ``access_token`` query parameter value received (WebSocket only).

        Returns:
            Who the request authenticated as.

        Raises:
            AuthError: missing, malformed, invalid or expired credentials.
        """
        if query_tokens and not self.allow_query_token:
            raise AuthError(AuthFailure.MALFORMED, "tokens are accepted in the Authorization header only")
        if len(authorization) + len(query_tokens) == 0:
            raise AuthError(AuthFailure.MISSING, "a bearer token is required")
        if len(authorization) + len(query_tokens) > 1:
            raise AuthError(AuthFailure.MALFORMED, "expected one bearer token, got several")
        if authorization:
            match = _BEARER.fullmatch(authorization[0])
            if match is None:
                raise AuthError(AuthFailure.MALFORMED, "expected an Authorization header 'Bearer <token>'")
            token = match[1]
        else:
            token = query_tokens[0]
        if not _B64TOKEN.fullmatch(token):
            raise AuthError(AuthFailure.MALFORMED, "the bearer token has characters a token cannot have")
        if _digest(token) in self._digests:
            return Principal("static token")
        if self.jwt_policy is None:
            raise AuthError(AuthFailure.INVALID, "the token is not valid")
        if token.count(".") != 2:
            reason = AuthFailure.INVALID if self._digests else AuthFailure.MALFORMED
            raise AuthError(reason, "the token is not valid" if self._digests else "the token is not a JWT")
        return self._verify_jwt(token, self.jwt_policy)

    @staticmethod
    def _verify_jwt(token: str, policy: JwtPolicy) -> Principal:
        required = ["exp"] + (["aud"] if policy.audience else []) + (["iss"] if policy.issuer else [])
        try:
            claims = jwt.decode(
                token,
                policy.key,
                algorithms=list(policy.algorithms),
                audience=policy.audience,
                issuer=policy.issuer,
                leeway=policy.leeway_s,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(AuthFailure.EXPIRED, "the token has expired") from None
        except jwt.InvalidSignatureError:  # a DecodeError subclass: caught first
            raise AuthError(AuthFailure.INVALID, "the token's signature is not valid") from None
        except jwt.DecodeError:
            raise AuthError(AuthFailure.MALFORMED, "the token is not a well-formed JWT") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(AuthFailure.INVALID, f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise AuthError(AuthFailure.INVALID, "the token is not for this audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError(AuthFailure.INVALID, "the token is not from the expected issuer") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError(AuthFailure.INVALID, "the token's algorithm is not accepted") from None
        except jwt.ImmatureSignatureError:
            raise AuthError(AuthFailure.INVALID, "the token is not valid yet") from None
        except jwt.InvalidTokenError:
            raise AuthError(AuthFailure.INVALID, "the token is not valid") from None
        subject = claims.get("sub")
        return Principal("jwt", subject if isinstance(subject, str) else None)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


# ------------------------------------------------------------------------------------- from the settings


def build_authenticator(settings: ServeSettings) -> TokenAuthenticator | None:
    """The authenticator the settings ask for, or None when authentication is off (no token, no JWT key).

    Raises:
        ConfigError: a token is too short or not a token, a file cannot be read, or the JWT key does not
            suit the algorithms. Messages name the option or the file line, never the secret.
    """
    tokens = _static_tokens(settings)
    policy = _jwt_policy(settings)
    if not tokens and policy is None:
        return None
    return TokenAuthenticator(
        static_tokens=tokens, jwt_policy=policy, allow_query_token=settings.auth_query_token
    )


def _check_token(token: str, *, source: str) -> str:
    if not _B64TOKEN.fullmatch(token):
        raise ConfigError(
            source=source,
            expected="a bearer token (letters, digits and -._~+/, '=' at the end)",
            actual=f"a token of {len(token)} characters with others in it",
        )
    if len(token) < MIN_STATIC_TOKEN_CHARS:
        raise ConfigError(
            source=source,
            expected=f"a token of at least {MIN_STATIC_TOKEN_CHARS} characters",
            actual=f"{len(token)} characters",
        )
    return token


def _static_tokens(settings: ServeSettings) -> list[str]:
    tokens = [
        _check_token(item.strip(), source=f"auth_tokens item {index + 1}")
        for index, item in enumerate(settings.auth_tokens.split(","))
        if item.strip()
    ]
    path = settings.auth_tokens_file
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                source=f"auth_tokens_file {path}", expected="a readable UTF-8 file", actual=type(exc).__name__
            ) from None
        for number, line in enumerate(text.splitlines(), start=1):
            item = line.strip()
            if item and not item.startswith("#"):
                tokens.append(_check_token(item, source=f"auth_tokens_file {path} line {number}"))
        if not tokens:
            raise ConfigError(source=f"auth_tokens_file {path}", expected="at least one token", actual="none")
    return tokens


def _jwt_policy(settings: ServeSettings) -> JwtPolicy | None:
    path = settings.auth_jwt_key
    if path is None:
        return None
    parsed = parse_jwt_algorithms(settings.auth_jwt_algorithms)
    assert parsed is not None, "validated by the configuration (key and algorithms come together)"
    algorithms, family = parsed
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            source=f"auth_jwt_key {path}", expected="a readable file", actual=exc.strerror or ""
        ) from None
    key = (
        _hmac_key(data, algorithms, path) if family == "hmac" else _public_key(data, algorithms, family, path)
    )
    return JwtPolicy(
        key=key,
        algorithms=algorithms,
        audience=settings.auth_jwt_audience or None,
        issuer=settings.auth_jwt_issuer or None,
        leeway_s=settings.auth_jwt_leeway_s,
    )


def _hmac_key(data: bytes, algorithms: tuple[str, ...], path: Path) -> bytes:
    source = f"auth_jwt_key {path}"
    if b"-----BEGIN" in data:
        raise ConfigError(
            source=source,
            expected=f"an HMAC secret for {','.join(algorithms)}",
            actual="a PEM key (public keys go with RS*, PS*, ES* or EdDSA)",
        )
    secret = data.removesuffix(b"\n").removesuffix(b"\r")  # the line break an editor or echo leaves
    needed = max(_MIN_HMAC_KEY_BYTES[name] for name in algorithms)
    if len(secret) < needed:
        raise ConfigError(
            source=source,
            expected=f"a secret of at least {needed} bytes for {','.join(algorithms)} (RFC 7518 §3.2)",
            actual=f"{len(secret)} bytes",
        )
    return secret


def _public_key(data: bytes, algorithms: tuple[str, ...], family: str, path: Path) -> Any:
    source = f"auth_jwt_key {path}"
    if b"PRIVATE KEY" in data:
        raise ConfigError(
            source=source,
            expected="a PEM public key or certificate",
            actual="a private key (keep it with the issuer)",
        )
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigError(
            source=source, expected="a PEM public key or certificate", actual="something else"
        ) from None
    names = ",".join(algorithms)
    if family == "rsa":
        if not isinstance(key, rsa.RSAPublicKey):
            raise ConfigError(source=source, expected=f"an RSA key for {names}", actual=_key_kind(key))
        if key.key_size < MIN_RSA_KEY_BITS:
            raise ConfigError(
                source=source,
                expected=f"an RSA key of at least {MIN_RSA_KEY_BITS} bits",
                actual=f"{key.key_size} bits",
            )
    elif family == "ec":
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ConfigError(source=source, expected=f"an EC key for {names}", actual=_key_kind(key))
        for name in algorithms:
            if key.curve.name != _CURVES[name]:
                raise ConfigError(
                    source=source,
                    expected=f"a {_CURVES[name]} key for {name}",
                    actual=f"a {key.curve.name} key",
                )
    elif not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise ConfigError(
            source=source, expected=f"an Ed25519 or Ed448 key for {names}", actual=_key_kind(key)
        )
    return key


def _key_kind(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "an RSA key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC key ({key.curve.name})"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "an EdDSA key"
    return f"a {type(key).__name__} key"


def build_sip_digest(settings: ServeSettings) -> DigestPolicy | None:
    """SIP digest authentication from ``sip_digest_users_file``, or None when it is unset.

    Raises:
        ConfigError: the file cannot be read, a line is not ``username:password``, or a user repeats.
    """
    path = settings.sip_digest_users_file
    if path is None:
        return None
    source = f"sip_digest_users_file {path}"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            source=source, expected="a readable UTF-8 file", actual=type(exc).__name__
        ) from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        username, colon, password = line.strip().partition(":")
        where = f"{source} line {number}"
        if not colon or not username or not password or any(c in username for c in '"\\ '):
            raise ConfigError(
                source=where,
                expected="'username:password' (no quotes or spaces in the username)",
                actual="a line of another shape",
            )
        if username in users:
            raise ConfigError(source=where, expected="each username once", actual=f"{username!r} again")
        users[username] = password
    if not users:
        raise ConfigError(source=source, expected="at least one 'username:password' line", actual="none")
    return DigestPolicy(realm=settings.sip_digest_realm, users=users, nonce_secret=secrets.token_bytes(32))


# ------------------------------------------------------------------------------------------------- logs

_REDACTED: Final = "[redacted]"
_QUERY_TOKEN: Final = re.compile(rf"({QUERY_PARAMETER}=)[^&\s]*")


class CredentialFilter(logging.Filter):
    """Redacts credentials from the ``websockets`` handshake log: at DEBUG it logs the request line (whose
    query may hold ``access_token``) and every header (``Authorization`` among them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            args = list(record.args)
            if len(args) == 2 and isinstance(args[0], str) and args[0].lower() in ("authorization", "cookie"):
                args[1] = _REDACTED
            args = [
                _QUERY_TOKEN.sub(rf"\g<1>{_REDACTED}", arg) if isinstance(arg, str) else arg for arg in args
            ]
            record.args = tuple(args)
        return True
