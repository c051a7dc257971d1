"""SIP digest authentication (protocols/sip/digest.py, RFC 3261 §22, RFC 7616, RFC 8760): the computation
against RFC 7616's worked example, parsing and verification, the SIP core's 401 challenge (bytes in, bytes
out) and ``xlgate serve --sip-digest-users-file`` with xlgate's own MRCP client over loopback."""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from gateway.cli import build_parser
from gateway.mrcp_client import CallRefused, MrcpClient, recognize_file
from protocols.sip.codec import parse_message
from protocols.sip.connection import SipServerConfig, SipServerCore
from protocols.sip.digest import (
    DigestFailure,
    DigestPolicy,
    challenges,
    make_nonce,
    parse_credentials,
    response_digest,
    verify,
)
from protocols.sip.events import Flow, InviteReceived, RequestRefused, SipTransport
from tests.wsharness import Running, free_port, running_server, settings_for

pytestmark = pytest.mark.timeout(120)

POLICY = DigestPolicy(
    realm="xlgate", users={"pbx1": "correct horse"}, nonce_secret=b"s" * 32, nonce_lifetime_s=30
)
URI = "sip:127.0.0.1:5060"
FLOW = Flow(SipTransport.UDP, ("127.0.0.1", 5099))


def test_rfc7616_worked_example() -> None:
    """RFC 7616 §3.9.1: the same credentials with MD5 and SHA-256."""
    common = {
        "username": "Mufasa",
        "realm": "http-auth@example.org",
        "password": "Circle of Life",
        "method": "GET",
        "uri": "/dir/index.html",
        "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        "qop": "auth",
        "nc": "00000001",
        "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    }
    assert response_digest(algorithm="MD5", **common) == "8ca523f5e9506fed4657c9700eebdbec"
    assert response_digest(algorithm="SHA-256", **common) == (
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    )


def authorization(
    *,
    algorithm: str = "SHA-256",
    password: str = "correct horse",
    username: str = "pbx1",
    nonce: str | None = None,
    uri: str = URI,
    realm: str = "xlgate",
    qop: str | None = "auth",
    now: float = 100.0,
) -> str:
    nonce = nonce or make_nonce(POLICY, now)
    response = response_digest(
        algorithm=algorithm,
        username=username,
        realm=realm,
        password=password,
        method="INVITE",
        uri=uri,
        nonce=nonce,
        qop=qop,
        nc="00000001",
        cnonce="c0ffee",
    )
    text = (
        f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm={algorithm}'
    )
    return text + (f', qop={qop}, nc=00000001, cnonce="c0ffee"' if qop else "")


def test_verify() -> None:
    for algorithm in ("SHA-256", "MD5"):
        for qop in ("auth", None):
            credentials = parse_credentials(authorization(algorithm=algorithm, qop=qop))
            assert verify(POLICY, credentials, method="INVITE", request_uri=URI, now=110.0) == "pbx1"
    cases = {
        "invalid": [
            authorization(password="wrong"),
            authorization(username="nobody"),
            authorization(realm="elsewhere"),
            authorization(nonce="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            authorization(uri="sip:other@127.0.0.1"),
        ],
        "malformed": [
            authorization(algorithm="SHA-256", qop="auth").replace("qop=auth", "qop=auth-int"),
            authorization().replace("algorithm=SHA-256", "algorithm=SHA-512-256"),
        ],
    }
    for reason, headers in cases.items():
        for header in headers:
            with pytest.raises(DigestFailure) as caught:
                verify(POLICY, parse_credentials(header), method="INVITE", request_uri=URI, now=110.0)
            assert caught.value.reason == reason, header
    with pytest.raises(DigestFailure) as stale:  # right answer, old nonce
        verify(POLICY, parse_credentials(authorization(now=0.0)), method="INVITE", request_uri=URI, now=31.0)
    assert stale.value.reason == "expired"


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNz",
        'Digest username="a", realm="b"',
        'Digest username="a", username="a", realm="b", nonce="c", uri="d", response="e"',
        'Digest username="a" realm="b", nonce="c", uri="d", response="e"',
        'Digest username="a", realm="b", nonce="c", uri="d", response="e", qop=auth',
        'Digest "junk"',
    ],
)
def test_malformed_credentials(header: str) -> None:
    with pytest.raises(DigestFailure) as caught:
        parse_credentials(header)
    assert caught.value.reason == "malformed"


def test_challenges_offer_sha256_first() -> None:
    sha, md5 = challenges(POLICY, 5.0)
    assert sha.startswith('Digest realm="xlgate", nonce="') and sha.endswith('algorithm=SHA-256, qop="auth"')
    assert md5.endswith('algorithm=MD5, qop="auth"')
    assert all(c.endswith("stale=true") for c in challenges(POLICY, 5.0, stale=True))


# ------------------------------------------------------------------------------------ the SIP core, sans-I/O


def invite(authorization_value: str | None = None, *, branch: str = "z9hG4bK-d1") -> bytes:
    sdp = b"v=0\r\n"
    lines = [
        f"INVITE {URI} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5099;branch={branch};rport",
        "From: <sip:pbx@127.0.0.1>;tag=f1",
        f"To: <{URI}>",
        "Call-ID: digest-1",
        "CSeq: 1 INVITE",
        "Max-Forwards: 70",
        "Content-Type: application/sdp",
    ]
    if authorization_value:
        lines.append(f"Authorization: {authorization_value}")
    lines.append(f"Content-Length: {len(sdp)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + sdp


def test_core_challenges_then_accepts() -> None:
    sip = SipServerCore(SipServerConfig(advertise_host="127.0.0.1", digest=POLICY), new_tag=lambda: "t")
    sip.receive_datagram(invite(), FLOW, now=100.0)
    (out,) = sip.data_to_send()
    response = parse_message(out.data)
    assert out.data.startswith(b"SIP/2.0 401 Unauthorized\r\n")
    offered = [value for key, value in response.headers if key == "WWW-Authenticate"]
    assert [re.search(r"algorithm=([\w-]+)", v)[1] for v in offered] == ["SHA-256", "MD5"]  # type: ignore[index]
    assert sip.next_event() == RequestRefused(FLOW, "INVITE", "missing") and sip.dialog_count == 0

    sip.receive_datagram(invite(authorization(password="wrong"), branch="z9hG4bK-d2"), FLOW, now=101.0)
    assert sip.data_to_send()[0].data.startswith(b"SIP/2.0 401 ")
    assert sip.next_event() == RequestRefused(FLOW, "INVITE", "invalid")

    sip.receive_datagram(invite(authorization(now=10.0), branch="z9hG4bK-d3"), FLOW, now=100.0)
    (out,) = sip.data_to_send()
    assert out.data.startswith(b"SIP/2.0 401 ") and b"stale=true" in out.data
    assert sip.next_event() == RequestRefused(FLOW, "INVITE", "expired")

    sip.receive_datagram(invite(authorization(now=100.0), branch="z9hG4bK-d4"), FLOW, now=105.0)
    assert sip.data_to_send()[0].data.startswith(b"SIP/2.0 100 Trying\r\n")
    assert isinstance(sip.next_event(), InviteReceived) and sip.dialog_count == 1


# ------------------------------------------------------------------------------- xlgate serve, over sockets


def counters(srv: Running) -> dict[str, float]:
    _, body = srv.http_get("/metrics")
    found = re.findall(
        r'^xlgate_auth_failures_total{protocol="sip",reason="(\w+)"} (\S+)$', body, re.MULTILINE
    )
    return {reason: float(value) for reason, value in found}


def test_serve_with_digest_users(
    chatty_checkpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = tmp_path / "sip-users"
    users.write_text("# PBXs\npbx1:correct horse:with a colon\n")
    sip_port = free_port()
    low = random.randrange(30000, 60000, 2)
    settings = settings_for(
        chatty_checkpoint,
        "--sip-port",
        str(sip_port),
        "--mrcp-port",
        "0",
        "--rtp-ports",
        f"{low}-{low + 19}",
        "--sip-digest-users-file",
        str(users),
        "--sip-digest-realm",
        "contact-centre",
    )
    uri = f"sip:127.0.0.1:{sip_port}"

    async def main() -> None:
        async with running_server(settings) as srv:
            for credentials in (None, ("pbx1", "correct horse"), ("pbx2", "correct horse:with a colon")):
                client = MrcpClient(uri, credentials=credentials)
                with pytest.raises(CallRefused) as refused:
                    await client.connect()
                assert refused.value.status == 401
                await client.close()
            assert counters(srv) == {"address": 0.0, "malformed": 0.0, "invalid": 2.0, "expired": 0.0}
            pcm = (np.random.default_rng(0).standard_normal(8000) * 3000).astype(np.int16)
            pcm = np.concatenate([pcm, np.zeros(8000, dtype=np.int16)])
            event = await recognize_file(
                uri, pcm, realtime=4.0, credentials=("pbx1", "correct horse:with a colon")
            )
            assert event is not None and event.event_name == "RECOGNITION-COMPLETE"
            # The first, credential-less INVITE of a call is not counted.
            assert counters(srv)["invalid"] == 2.0

            # xlgate stream --mrcp --sip-credentials-file (its own event loop: in a thread).
            parser = build_parser()
            for line, status in (("pbx1:correct horse:with a colon", 0), ("pbx1:wrong", 1)):
                credentials_file.write_text(line + "\n")
                args = parser.parse_args(
                    [
                        "stream",
                        "--mrcp",
                        uri,
                        str(wav),
                        "--speed",
                        "4",
                        "--sip-credentials-file",
                        str(credentials_file),
                    ]
                )
                assert await asyncio.to_thread(args.func, args, parser) == status
            assert counters(srv)["invalid"] == 3.0

    wav = tmp_path / "noise.wav"
    sf.write(wav, np.random.default_rng(1).standard_normal(8000) * 0.1, 8000, subtype="PCM_16")
    credentials_file = tmp_path / "credentials"
    asyncio.run(main())
    out, err = capsys.readouterr()
    assert "Completion-Cause: 0" in err and out.startswith("<?xml")
    assert "INVITE refused: 401 Unauthorized" in err
