"""Bearer-token authentication (gateway/auth.py): static tokens, JWTs verified with PyJWT, the settings that
build them, and the log filter that keeps tokens out of the handshake log. The transports that use it are
tested over real sockets in tests/test_auth_e2e.py."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth import (
    AuthError,
    AuthFailure,
    CredentialFilter,
    JwtPolicy,
    TokenAuthenticator,
    build_authenticator,
    build_sip_digest,
)
from gateway.config import ConfigError, ServeSettings, add_serve_arguments, resolve_serve_settings

STATIC = "s3cret-token-0123456789"
SECRET = b"k" * 32
AUDIENCE = "xlgate-test"


def settings(*argv: str, environ: dict[str, str] | None = None) -> ServeSettings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return resolve_serve_settings(parser.parse_args(list(argv)), environ or {})


def pem(public_key: Any) -> bytes:
    data: bytes = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "agent-7", "aud": AUDIENCE, "exp": int(time.time()) + 300, **extra}


def refused(auth: TokenAuthenticator, **credentials: Any) -> AuthError:
    with pytest.raises(AuthError) as caught:
        auth.authenticate(**credentials)
    return caught.value


def bearer(token: str) -> list[str]:
    return [f"Bearer {token}"]


# ------------------------------------------------------------------------------------------- static tokens


def test_static_tokens() -> None:
    auth = TokenAuthenticator(static_tokens=[STATIC, "other-token-abcdefgh"])
    assert str(auth.authenticate(authorization=bearer(STATIC))) == "static token"
    assert auth.authenticate(authorization=[f"bearer   {STATIC}"]).kind == "static token"  # scheme: any case
    assert auth.authenticate(query_tokens=[STATIC]).kind == "static token"
    cases = {
        AuthFailure.MISSING: {},
        AuthFailure.INVALID: {"authorization": bearer(STATIC + "x")},
        AuthFailure.MALFORMED: {"authorization": [f"Basic {base64.b64encode(b'u:p').decode()}"]},
    }
    for reason, credentials in cases.items():
        assert refused(auth, **credentials).reason is reason, credentials
    for credentials in (
        {"authorization": ["Bearer"]},
        {"authorization": ["Bearer a b"]},
        {"authorization": [STATIC]},
        {"authorization": bearer("tok\u00e9n")},
        {"authorization": bearer(STATIC) * 2},
        {"authorization": bearer(STATIC), "query_tokens": [STATIC]},
        {"query_tokens": [""]},
        {"query_tokens": [STATIC, STATIC]},
    ):
        assert refused(auth, **credentials).reason is AuthFailure.MALFORMED, credentials


def test_query_tokens_can_be_turned_off() -> None:
    auth = TokenAuthenticator(static_tokens=[STATIC], allow_query_token=False)
    assert refused(auth, query_tokens=[STATIC]).reason is AuthFailure.MALFORMED
    assert auth.authenticate(authorization=bearer(STATIC)).kind == "static token"
    assert "query" not in auth.describe()


def test_errors_carry_their_wire_replies_and_never_the_token() -> None:
    auth = TokenAuthenticator(static_tokens=[STATIC])
    missing = refused(auth)
    assert (missing.http_status, missing.grpc_status, missing.code) == (
        401,
        "UNAUTHENTICATED",
        "unauthenticated",
    )
    assert missing.www_authenticate == 'Bearer realm="xlgate"'
    wrong = refused(auth, authorization=bearer(STATIC + "x"))
    assert wrong.www_authenticate == 'Bearer realm="xlgate", error="invalid_token"'
    assert STATIC not in str(wrong)
    malformed = refused(auth, authorization=["Basic abc"])
    assert malformed.www_authenticate == 'Bearer realm="xlgate", error="invalid_request"'


def test_an_authenticator_that_accepts_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="static tokens or a JWT policy"):
        TokenAuthenticator()


# -------------------------------------------------------------------------------------------------- JWT


def test_jwt_hs256() -> None:
    auth = TokenAuthenticator(jwt_policy=JwtPolicy(SECRET, ("HS256",), audience=AUDIENCE))
    principal = auth.authenticate(authorization=bearer(jwt.encode(claims(), SECRET, "HS256")))
    assert (principal.kind, principal.subject) == ("jwt", "agent-7")
    assert str(principal) == "jwt sub='agent-7'"
    past = int(time.time()) - 60
    cases = {
        AuthFailure.EXPIRED: jwt.encode(claims(exp=past), SECRET, "HS256"),
        AuthFailure.INVALID: jwt.encode(claims(), b"x" * 32, "HS256"),  # another key
        AuthFailure.MALFORMED: "not-a.jwt.at-all",
    }
    for reason, token in cases.items():
        assert refused(auth, authorization=bearer(token)).reason is reason, token
    no_exp = {k: v for k, v in claims().items() if k != "exp"}
    for token in (
        jwt.encode(no_exp, SECRET, "HS256"),  # exp is required
        jwt.encode(claims(aud="someone-else"), SECRET, "HS256"),
        jwt.encode(claims(nbf=int(time.time()) + 600), SECRET, "HS256"),
        jwt.encode(claims(), SECRET * 2, "HS512"),
    ):  # an algorithm not configured
        assert refused(auth, authorization=bearer(token)).reason is AuthFailure.INVALID, (
            jwt.get_unverified_header(token)
        )


def test_jwt_alg_none_and_key_confusion_are_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth = TokenAuthenticator(jwt_policy=JwtPolicy(key.public_key(), ("RS256",), audience=AUDIENCE))
    assert auth.authenticate(authorization=bearer(jwt.encode(claims(), key, "RS256"))).subject == "agent-7"
    unsigned = jwt.encode(claims(), None, "none")
    assert refused(auth, authorization=bearer(unsigned)).reason is AuthFailure.INVALID
    # The public key's PEM used as an HMAC secret: the classic confusion; HS256 is not configured, so no.
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    import hashlib
    import hmac

    signature = hmac.new(pem(key.public_key()), header + b"." + body, hashlib.sha256).digest()
    forged = (header + b"." + body + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()
    assert refused(auth, authorization=bearer(forged)).reason is AuthFailure.INVALID


def test_jwt_issuer_leeway_and_static_tokens_beside() -> None:
    policy = JwtPolicy(SECRET, ("HS256",), audience=AUDIENCE, issuer="https://idp.example", leeway_s=30)
    auth = TokenAuthenticator(static_tokens=[STATIC], jwt_policy=policy)
    good = jwt.encode(claims(iss="https://idp.example", exp=int(time.time()) - 10), SECRET, "HS256")
    assert auth.authenticate(authorization=bearer(good)).kind == "jwt"  # within the leeway
    assert auth.authenticate(authorization=bearer(STATIC)).kind == "static token"
    assert (
        refused(
            auth, authorization=bearer(jwt.encode(claims(iss="https://evil.example"), SECRET, "HS256"))
        ).reason
        is AuthFailure.INVALID
    )
    assert (
        refused(auth, authorization=bearer(jwt.encode(claims(), SECRET, "HS256"))).reason
        is AuthFailure.INVALID
    )
    # With static tokens configured, a wrong token that is no JWT is a wrong token, not a malformed JWT.
    assert refused(auth, authorization=bearer("wrong-token-0123456789")).reason is AuthFailure.INVALID


def test_a_token_with_an_audience_is_refused_when_none_is_configured() -> None:
    auth = TokenAuthenticator(jwt_policy=JwtPolicy(SECRET, ("HS256",)))
    assert (
        refused(auth, authorization=bearer(jwt.encode(claims(), SECRET, "HS256"))).reason
        is AuthFailure.INVALID
    )
    no_aud = {k: v for k, v in claims().items() if k != "aud"}
    assert auth.authenticate(authorization=bearer(jwt.encode(no_aud, SECRET, "HS256"))).kind == "jwt"


# ------------------------------------------------------------------------------------------ from settings


def test_off_unless_configured() -> None:
    assert build_authenticator(settings()) is None


def test_static_tokens_from_environment_and_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text(f"# agents\n{STATIC}\n\n  other-token-abcdefgh  \n")
    auth = build_authenticator(
        settings(
            "--auth-tokens-file",
            str(path),
            environ={"XLGATE_AUTH_TOKENS": "env-token-0123456789, more-token-0123456"},
        )
    )
    assert auth is not None
    for token in (STATIC, "other-token-abcdefgh", "env-token-0123456789", "more-token-0123456"):
        assert auth.authenticate(authorization=bearer(token)).kind == "static token"
    assert auth.describe().startswith("4 static token(s)")
    assert STATIC not in repr(settings(environ={"XLGATE_AUTH_TOKENS": STATIC}))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("short\n", "line 1: expected a token of at least 16 characters, got 5 characters"),
        ("# nothing\n", "expected at least one token, got none"),
        ("has space in it 0123456789\n", "line 1: expected a bearer token"),
    ],
)
def test_bad_token_files_are_config_errors_that_do_not_echo_tokens(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as caught:
        build_authenticator(settings("--auth-tokens-file", str(path)))
    assert content.strip() not in str(caught.value) or content.startswith("#")


def test_jwt_keys_from_files(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pem").write_bytes(pem(ec_key.public_key()))
    auth = build_authenticator(
        settings(
            "--auth-jwt-key",
            str(tmp_path / "ec.pem"),
            "--auth-jwt-algorithms",
            "ES256",
            "--auth-jwt-audience",
            AUDIENCE,
            "--auth-jwt-leeway-ms",
            "5000",
        )
    )
    assert auth is not None and auth.jwt_policy is not None
    assert auth.jwt_policy.leeway_s == 5.0
    assert auth.authenticate(authorization=bearer(jwt.encode(claims(), ec_key, "ES256"))).kind == "jwt"
    assert auth.describe() == (
        "JWT ES256, audience 'xlgate-test'; from the Authorization header or "
        "access_token query parameter (WebSocket)"
    )

    (tmp_path / "secret").write_bytes(SECRET + b"\n")  # the line break an editor leaves is not the secret's
    auth = build_authenticator(
        settings("--auth-jwt-key", str(tmp_path / "secret"), "--auth-jwt-algorithms", "HS256")
    )
    assert auth is not None
    no_aud = {k: v for k, v in claims().items() if k != "aud"}
    assert auth.authenticate(authorization=bearer(jwt.encode(no_aud, SECRET, "HS256"))).kind == "jwt"

    ed_key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "ed.pem").write_bytes(pem(ed_key.public_key()))
    auth = build_authenticator(
        settings("--auth-jwt-key", str(tmp_path / "ed.pem"), "--auth-jwt-algorithms", "EdDSA")
    )
    assert auth is not None
    assert auth.authenticate(authorization=bearer(jwt.encode(no_aud, ed_key, "EdDSA"))).kind == "jwt"


def test_jwt_key_mistakes_are_config_errors(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    files = {
        "ec.pem": pem(ec_key.public_key()),
        "private.pem": ec_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "small.pem": pem(rsa_small.public_key()),
        "short": b"k" * 31,
        "junk.pem": b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    cases = [
        ("ec.pem", "RS256", "expected an RSA key for RS256, got an EC key \\(secp256r1\\)"),
        ("ec.pem", "ES384", "expected a secp384r1 key for ES384, got a secp256r1 key"),
        ("ec.pem", "HS256", "expected an HMAC secret for HS256, got a PEM key"),
        ("private.pem", "ES256", "got a private key"),
        ("small.pem", "RS256", "expected an RSA key of at least 2048 bits, got 1024 bits"),
        ("short", "HS256", "expected a secret of at least 32 bytes"),
        ("junk.pem", "ES256", "expected a PEM public key or certificate, got something else"),
    ]
    for name, algorithms, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_authenticator(
                settings("--auth-jwt-key", str(tmp_path / name), "--auth-jwt-algorithms", algorithms)
            )


def test_sip_digest_users_file(tmp_path: Path) -> None:
    assert build_sip_digest(settings()) is None
    path = tmp_path / "users"
    path.write_text("# PBXs\npbx1:pass:word\n\npbx2:other\n")
    policy = build_sip_digest(settings("--sip-digest-users-file", str(path), "--sip-digest-realm", "cc"))
    assert policy is not None and policy.realm == "cc"
    assert dict(policy.users) == {"pbx1": "pass:word", "pbx2": "other"}
    assert "pass:word" not in repr(policy)
    for content, message in (
        ("pbx1\n", "line 1: expected 'username:password'"),
        (":x\n", "line 1"),
        ("a b:x\n", "line 1"),
        ("a:x\na:y\n", "line 2: expected each username once"),
        ("# none\n", "at least one"),
    ):
        path.write_text(content)
        with pytest.raises(ConfigError, match=message) as caught:
            build_sip_digest(settings("--sip-digest-users-file", str(path)))
        assert ":x" not in str(caught.value) and ":y" not in str(caught.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--auth-jwt-algorithms", "RS256"], "expected auth_jwt_key to be set as well"),
        (["--auth-jwt-audience", "x"], "expected auth_jwt_key and auth_jwt_algorithms to be set"),
        (["--auth-jwt-algorithms", "none"], "JWT algorithms of one family"),
        (["--auth-jwt-algorithms", "HS256,RS256"], "JWT algorithms of one family"),
        (["--mrcp-allowed-networks", "10.0.0.1/8"], "CIDR networks"),
        (["--mrcp-allowed-networks", "localhost"], "CIDR networks"),
        (["--metrics-host", "a b"], "empty or a host name or IP address"),
        (["--sip-digest-realm", 'a"b'], "printable text without quotes"),
    ],
)
def test_settings_validation(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(*argv)


def test_key_without_algorithms_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(SECRET)
    with pytest.raises(ConfigError, match="expected auth_jwt_algorithms to be set as well"):
        settings("--auth-jwt-key", str(tmp_path / "k"))


# -------------------------------------------------------------------------------------------------- logs


def test_credential_filter_redacts_the_handshake_log(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("websockets.server.test-auth")
    logger.addFilter(CredentialFilter())
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        logger.debug("< %s %s %s", "GET", f"/v1/stream?x=1&access_token={STATIC}&y=2", "HTTP/1.1")
        logger.debug("< %s: %s", "Authorization", f"Bearer {STATIC}")
        logger.debug("< %s: %s", "Host", "127.0.0.1")
    text = caplog.text
    assert STATIC not in text
    assert "access_token=[redacted]&y=2" in text and "Authorization: [redacted]" in text
    assert "Host: 127.0.0.1" in text
