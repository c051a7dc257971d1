"""TLS with throwaway certificates on 127.0.0.1: SIP over TLS + MRCPv2 over TLS (a full recognition with the
bundled model through xlgate's own client), the handshake refused with the wrong CA on SIP-TLS, MRCP-TLS and
gRPC, and ``xlgate serve`` wiring the TLS listeners from --tls-cert/--tls-key."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path

import grpc
import jiwer
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.grpc_api import asr_pb2_grpc
from gateway.models import load_model
from gateway.mrcp_adapter import MrcpSettings
from gateway.mrcp_client import CallRefused, MrcpClient
from protocols.mrcp.codec import parse_message as parse_mrcp
from protocols.mrcp.codec import serialize as serialize_mrcp
from protocols.mrcp.events import MrcpRequest, MrcpResponse
from protocols.sdp.codec import parse_sdp
from tests.grpcharness import audio_requests, config, grpc_settings_for, requests
from tests.test_limits import Served, no_errors, serve_mrcp
from tests.test_mrcp_e2e import ANY_CONFIDENCE, TRANSCRIBE, complete, noise, recognize, speech
from tests.wsharness import free_port, noise_pcm, running_server

pytestmark = pytest.mark.timeout(180)


def certificate(tmp: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost`` and 127.0.0.1 (its own CA), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(names, critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / f"{name}-cert.pem", tmp / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    return context


def tls_settings(cert: Path, key: Path) -> MrcpSettings:
    return MrcpSettings(
        sip_port=0, mrcp_port=0, tls=server_context(cert, key), sips_port=free_port(), mrcp_tls_port=0
    )


@pytest.fixture(scope="module")
def bundled():  # type: ignore[no-untyped-def]
    return load_model("bundled", "cpu", warn=False)


def test_recognition_over_sip_tls_and_mrcp_tls_with_the_bundled_model(
    bundled, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    cert, key = certificate(tmp_path, "server")

    async def body(srv: Served) -> None:
        assert srv.gateway.sip.tls_port and srv.gateway.mrcp.tls_port
        client = MrcpClient(
            f"sips:127.0.0.1:{srv.gateway.sip.tls_port}",
            ssl_context=ssl.create_default_context(cafile=str(cert)),
        )
        await client.connect()
        ok = client.invite_response
        assert ok is not None and ok.status == 200
        assert ok.header("Contact") == f"<sip:127.0.0.1:{srv.gateway.sip.tls_port};transport=tls>"
        application = next(m for m in parse_sdp(ok.body).media if m.media == "application")
        assert (application.proto, application.port) == ("TCP/TLS/MRCPv2", srv.gateway.mrcp.tls_port)
        assert client._writer is not None and client._writer.get_extra_info("ssl_object") is not None
        await recognize(client)
        await client.send_audio(speech("i want to pay my bill", 4))
        names, done = await complete(client)
        assert names == ["START-OF-INPUT"]
        assert done.header("Completion-Cause") == "000 success", done.body
        text = done.body.decode().split('<input mode="speech">', 1)[1].split("<", 1)[0]
        assert jiwer.cer("i want to pay my bill", text) < 0.2, text
        await client.bye()

    asyncio.run(serve_mrcp(lambda: bundled, tls_settings(cert, key), body))
    no_errors(caplog)


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])  # uvloop: what `xlgate serve` runs on
def test_sip_tls_and_mrcp_tls_refuse_the_wrong_ca_and_serve_the_right_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, event_loop: str
) -> None:
    cert, key = certificate(tmp_path, "server")
    other, _ = certificate(tmp_path, "other")
    wrong = ssl.create_default_context(cafile=str(other))
    right = ssl.create_default_context(cafile=str(cert))

    async def body(srv: Served) -> None:
        for port in (srv.gateway.sip.tls_port, srv.gateway.mrcp.tls_port):
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.open_connection("127.0.0.1", port, ssl=wrong)
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=right)  # the handshake completes
            writer.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await MrcpClient(f"sips:127.0.0.1:{srv.gateway.sip.tls_port}", ssl_context=wrong).connect()
        client = MrcpClient(f"sips:127.0.0.1:{srv.gateway.sip.tls_port}", ssl_context=right)
        await client.connect()
        await recognize(
            client,
            TRANSCRIBE,
            ("Speech-Complete-Timeout", "300"),
            ("Speech-Incomplete-Timeout", "300"),
            ANY_CONFIDENCE,
        )
        # The channel was negotiated over TLS: the plain MRCP port does not serve it.
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.gateway.mrcp.port)
        writer.write(
            serialize_mrcp(MrcpRequest("GET-PARAMS", 1, (("Channel-Identifier", client.channel_id),)))
        )
        refused = parse_mrcp(await reader.read(4096))
        assert isinstance(refused, MrcpResponse) and (refused.request_id, refused.status_code) == (1, 405)
        writer.close()
        await client.send_audio(noise(1.0), realtime=0)
        _, done = await complete(client)
        assert done.header("Completion-Cause") is not None
        await client.bye()
        # A plain-TCP client offering TCP/MRCPv2 still gets the plain MRCP port from the same server.
        plain = MrcpClient(f"sip:127.0.0.1:{srv.gateway.sip.port}")
        await plain.connect()
        assert plain.answer is not None and plain.answer.mrcp_port == srv.gateway.mrcp.port
        await plain.bye()

    if event_loop == "uvloop":
        import uvloop

        uvloop.run(serve_mrcp(None, tls_settings(cert, key), body))
    else:
        asyncio.run(serve_mrcp(None, tls_settings(cert, key), body))
    no_errors(caplog)


class _TlsOfferOverPlainSip(MrcpClient):
    @property
    def _mrcp_proto(self) -> str:
        return "TCP/TLS/MRCPv2"


def test_a_tls_offer_to_a_server_without_tls_is_refused_488(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        client = _TlsOfferOverPlainSip(f"sip:127.0.0.1:{srv.gateway.sip.port}")
        with pytest.raises(CallRefused) as caught:
            await client.connect()
        assert caught.value.status == 488
        await client.close()

    asyncio.run(serve_mrcp(None, MrcpSettings(sip_port=0, mrcp_port=0), body))
    no_errors(caplog)


def test_serve_starts_sip_tls_mrcp_tls_and_grpc_tls_from_the_certificate(
    chatty_checkpoint: str, tmp_path: Path
) -> None:
    cert, key = certificate(tmp_path, "server")
    other, _ = certificate(tmp_path, "other")

    async def main() -> None:
        settings = grpc_settings_for(
            chatty_checkpoint,
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
            "--sip-port",
            str(free_port()),
            "--mrcp-port",
            "0",
            "--sips-port",
            str(free_port()),
            "--mrcp-tls-port",
            "0",
            "--rtp-ports",
            "31000-31099",
        )
        async with running_server(settings) as srv:
            ports = srv.ports
            assert ports is not None and ports.sips_port and ports.mrcp_tls_port
            for port in (ports.sips_port, ports.mrcp_tls_port):
                with pytest.raises(ssl.SSLCertVerificationError):
                    await asyncio.open_connection(
                        "127.0.0.1", port, ssl=ssl.create_default_context(cafile=str(other))
                    )
            client = MrcpClient(
                f"sips:localhost:{ports.sips_port}", ssl_context=ssl.create_default_context(cafile=str(cert))
            )
            await client.connect()
            await client.bye()
            # gRPC: the wrong CA fails the handshake (UNAVAILABLE); the right one streams.
            wrong = grpc.ssl_channel_credentials(root_certificates=other.read_bytes())
            async with grpc.aio.secure_channel(f"localhost:{settings.grpc_port}", wrong) as channel:
                call = asr_pb2_grpc.RecognizerStub(channel).StreamingRecognize(
                    requests(config(interim=False), audio_requests(noise_pcm(0.2))), timeout=10
                )
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    _ = [r async for r in call]
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            right = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
            async with grpc.aio.secure_channel(f"localhost:{settings.grpc_port}", right) as channel:
                call = asr_pb2_grpc.RecognizerStub(channel).StreamingRecognize(
                    requests(config(interim=False), audio_requests(noise_pcm(0.5))), timeout=30
                )
                _ = [r async for r in call]
                assert await call.code() == grpc.StatusCode.OK

    asyncio.run(main())
