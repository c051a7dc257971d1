"""Every limit a peer controls, hit once over real sockets on 127.0.0.1: the protocol's own refusal, the
count in ``xlgate_limit_exceeded_total``, and the server still serving the next client. Plus: a grammar URI
is never fetched by the server (no allow-list is configured), proved with a real HTTP listener that must
see no connection.

The MRCP cases run the gateway in-process on the small random "chatty" model (a real engine, real SIP,
MRCP and RTP sockets); the WebSocket and gRPC cases run ``xlgate serve``'s own ``run_server``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.engine import Engine
from gateway.grpc_api import asr_pb2 as pb
from gateway.metrics import Metrics
from gateway.mrcp_adapter import MrcpGateway, MrcpSettings
from gateway.mrcp_client import CallRefused, MrcpClient
from gateway.runner import ModelRunner, ThreadRunner
from protocols.mrcp.recognizer import RecognizerConfig
from streaming_model.checkpoint import LoadedModel
from tests.grpcharness import audio_requests, config, grpc_settings_for, running_grpc
from tests.test_mrcp_e2e import ANY_CONFIDENCE, TRANSCRIBE, _chatty, complete, noise, recognize, wait_released
from tests.wsharness import noise_pcm, running_server, settings_for

pytestmark = pytest.mark.timeout(120)

MAX_STREAMS = 2


@dataclass
class Served:
    gateway: MrcpGateway
    engine: Engine

    @property
    def uri(self) -> str:
        return f"sip:127.0.0.1:{self.gateway.sip.port}"

    def exceeded(self, limit: str, protocol: str = "mrcp") -> float:
        value = self.engine.metrics.registry.get_sample_value(
            "xlgate_limit_exceeded_total", {"protocol": protocol, "limit": limit}
        )
        return value or 0.0


async def serve_mrcp(
    loaded: Callable[[], LoadedModel] | None,
    settings: MrcpSettings,
    body: Callable[[Served], Awaitable[None]],
) -> None:
    """An engine and an MRCP gateway with ``settings`` on free ports; ``body`` runs against it; then every
    call's resources must be back (no call, channel, stream, slot, RTP port or task left)."""
    runner = ThreadRunner(ModelRunner((loaded or _chatty)(), max_streams=MAX_STREAMS))
    engine = Engine(
        runner,
        metrics=Metrics(),
        max_streams=MAX_STREAMS,
        max_batch_size=MAX_STREAMS,
        max_wait_s=0.002,
        max_pending_chunks=8,
    )
    low = random.randrange(30000, 60000, 2)
    gateway = MrcpGateway(engine, dataclasses.replace(settings, rtp_port_low=low, rtp_port_high=low + 99))
    engine_task = asyncio.create_task(engine.run())
    await gateway.start()
    try:
        async with asyncio.timeout(90):
            await body(Served(gateway, engine))
        await wait_released(gateway, engine, MAX_STREAMS)
    finally:
        await gateway.aclose()
        engine.close()
        await engine_task
        await runner.close()


def no_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


async def a_call_works(uri: str) -> None:
    """A whole call (INVITE, RECOGNIZE, audio, RECOGNITION-COMPLETE, BYE) on a server that refused others."""
    client = MrcpClient(uri)
    await client.connect()
    await recognize(
        client,
        TRANSCRIBE,
        ("Speech-Complete-Timeout", "300"),
        ("Speech-Incomplete-Timeout", "300"),
        ANY_CONFIDENCE,
    )
    await client.send_audio(noise(1.0), realtime=0)
    _, done = await complete(client, timeout_s=15)
    assert done.header("Completion-Cause") is not None
    await client.bye()


# ------------------------------------------------------------------------------------------------- SIP
def options(port: int, *, transport: str = "UDP", headers: int = 0, body: bytes = b"") -> bytes:
    lines = [
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0",
        f"Via: SIP/2.0/{transport} 127.0.0.1:9;rport;branch=z9hG4bK{random.getrandbits(40)}",
        "Max-Forwards: 70",
        "From: <sip:probe@127.0.0.1>;tag=1",
        f"To: <sip:127.0.0.1:{port}>",
        f"Call-ID: {random.getrandbits(64)}",
        "CSeq: 1 OPTIONS",
    ]
    lines += [f"X-Probe-{i}: {i}" for i in range(headers)]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.received.put_nowait(data)


async def udp_exchange(port: int, data: bytes) -> bytes:
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        _Udp, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", port)
    )
    try:
        transport.sendto(data)
        async with asyncio.timeout(5):
            return await protocol.received.get()
    finally:
        transport.close()


async def tcp_exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    async with asyncio.timeout(5):
        answer = await reader.read()  # EOF: the server closed the connection after its answer
    writer.close()
    return answer


def test_sip_message_size_and_header_count(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        port = srv.gateway.sip.port
        assert (await udp_exchange(port, options(port, headers=5))).startswith(b"SIP/2.0 200 ")
        big = await udp_exchange(port, options(port, body=b"x" * 5000))
        assert big.startswith(b"SIP/2.0 513 Message Too Large\r\n"), big[:80]
        many = await udp_exchange(port, options(port, headers=25))
        assert many.startswith(b"SIP/2.0 400 Too Many Headers\r\n"), many[:80]
        over_tcp = await tcp_exchange(port, options(port, transport="TCP", headers=25))
        assert over_tcp.startswith(b"SIP/2.0 400 Too Many Headers\r\n"), over_tcp[:80]
        big_tcp = await tcp_exchange(port, options(port, transport="TCP", body=b"x" * 5000))
        assert big_tcp.startswith(b"SIP/2.0 513 Message Too Large\r\n"), big_tcp[:80]
        assert srv.exceeded("sip_message_bytes") == 2 and srv.exceeded("sip_headers") == 2
        await a_call_works(srv.uri)

    asyncio.run(
        serve_mrcp(
            None, MrcpSettings(sip_port=0, mrcp_port=0, sip_max_message_bytes=4096, sip_max_headers=20), body
        )
    )
    no_errors(caplog)


class _BigOffer(MrcpClient):
    def _offer(self, rtp_port: int) -> bytes:
        return super()._offer(rtp_port) + b"".join(b"a=x-pad:%d\r\n" % i for i in range(200))


def test_sdp_size(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        with pytest.raises(CallRefused) as caught:
            await _BigOffer(srv.uri).connect()
        assert (caught.value.status, caught.value.reason) == (413, "Request Entity Too Large")
        assert srv.exceeded("sdp_bytes") == 1
        await a_call_works(srv.uri)

    asyncio.run(serve_mrcp(None, MrcpSettings(sip_port=0, mrcp_port=0, max_sdp_bytes=1024), body))
    no_errors(caplog)


def test_sessions_per_address_over_sip(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        first = MrcpClient(srv.uri)
        await first.connect()
        with pytest.raises(CallRefused) as caught:
            await MrcpClient(srv.uri).connect()
        assert caught.value.status == 503 and caught.value.retry_after is not None
        assert srv.exceeded("sessions_per_address") == 1
        await first.bye()
        await wait_released(srv.gateway, srv.engine, MAX_STREAMS)
        await a_call_works(srv.uri)

    asyncio.run(serve_mrcp(None, MrcpSettings(sip_port=0, mrcp_port=0, max_sessions_per_address=1), body))
    no_errors(caplog)


# ------------------------------------------------------------------------------------------------ MRCP
def test_mrcp_message_size_and_header_count(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        many = await client.request("GET-PARAMS", *[(f"X-Probe-{i}", "1") for i in range(25)])
        assert many.status_code == 504
        assert (await client.request("GET-PARAMS")).status_code == 200  # the connection goes on
        answer = await tcp_exchange(srv.gateway.mrcp.port, b"MRCP/2.0 900000 DEFINE-GRAMMAR 7\r\n")
        assert answer.startswith(b"MRCP/2.0 ") and answer.endswith(b" 7 504 COMPLETE\r\n\r\n"), answer
        assert srv.exceeded("mrcp_headers") == 1 and srv.exceeded("mrcp_message_bytes") == 1
        await client.bye()
        await a_call_works(srv.uri)

    asyncio.run(
        serve_mrcp(
            None,
            MrcpSettings(sip_port=0, mrcp_port=0, mrcp_max_message_bytes=8192, mrcp_max_headers=20),
            body,
        )
    )
    no_errors(caplog)


def srgs(items: list[str], padding: int = 0) -> bytes:
    one_of = "".join(f"<item>{item}</item>" for item in items)
    return (
        f'<?xml version="1.0"?><!-- {"x" * padding} --><grammar xmlns="http://www.w3.org/2001/06/grammar" '
        f'version="1.0" root="r"><rule id="r"><one-of>{one_of}</one-of></rule></grammar>'
    ).encode()


def test_grammar_bytes_and_phrases(caplog: pytest.LogCaptureFixture) -> None:
    async def define(client: MrcpClient, grammar: bytes) -> tuple[int, str | None]:
        response = await client.request(
            "DEFINE-GRAMMAR", ("Content-Type", "application/srgs+xml"), ("Content-Id", "<menu>"), body=grammar
        )
        return response.status_code, response.header("Completion-Cause")

    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        words = [f"option {n}" for n in ("one", "two", "three", "four", "five", "six")]
        assert await define(client, srgs(words[:3], padding=3000)) == (407, "005 grammar-compilation-failure")
        assert await define(client, srgs(words)) == (407, "005 grammar-compilation-failure")
        assert await define(client, srgs(words[:3])) == (200, "000 success")
        assert srv.exceeded("grammar_bytes") == 1 and srv.exceeded("grammar_phrases") == 1
        await client.bye()

    recognizer = RecognizerConfig(max_grammar_bytes=2048, max_grammar_phrases=5)
    asyncio.run(serve_mrcp(None, MrcpSettings(sip_port=0, mrcp_port=0, recognizer=recognizer), body))
    no_errors(caplog)


def test_grammar_uris_are_never_fetched(caplog: pytest.LogCaptureFixture) -> None:
    """No allow-list is configured: an http: grammar (pointing at a real listener) completes with 009 and
    the listener sees no connection; file: and a cloud metadata address likewise."""
    connections: list[object] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer.get_extra_info("peername"))
        writer.close()

    async def body(srv: Served) -> None:
        listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        try:
            client = MrcpClient(srv.uri)
            await client.connect()
            for uri in (
                f"http://127.0.0.1:{port}/menu.grxml",
                "file:///etc/passwd",
                "http://169.254.169.254/latest/meta-data",
            ):
                await recognize(client, uri.encode())
                _, done = await complete(client, timeout_s=5)
                assert done.header("Completion-Cause") == "009 uri-failure", uri
            await client.bye()
            await asyncio.sleep(0.2)
        finally:
            listener.close()
            await listener.wait_closed()
        assert connections == []

    asyncio.run(serve_mrcp(None, MrcpSettings(sip_port=0, mrcp_port=0), body))
    no_errors(caplog)


# ------------------------------------------------------------------------------------------------- RTP
def test_rtp_packet_rate(caplog: pytest.LogCaptureFixture) -> None:
    """A burst far over the rate: the excess is dropped and counted, the call's recognition goes on."""

    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        await recognize(
            client,
            TRANSCRIBE,
            ("Speech-Complete-Timeout", "300"),
            ("Speech-Incomplete-Timeout", "300"),
            ANY_CONFIDENCE,
        )
        await client.send_audio(noise(4.0), realtime=0)  # 200 packets at once against a bucket of 100
        await client.send_audio(noise(0.6), realtime=1.0)  # then at the real rate: admitted
        _, done = await complete(client, timeout_s=15)
        assert done.header("Completion-Cause") is not None
        await client.bye()
        await wait_released(srv.gateway, srv.engine, MAX_STREAMS)
        assert 50 <= srv.exceeded("rtp_packet_rate") <= 110, srv.exceeded("rtp_packet_rate")

    asyncio.run(serve_mrcp(None, MrcpSettings(sip_port=0, mrcp_port=0, rtp_max_packets_per_s=100), body))
    no_errors(caplog)


# ------------------------------------------------------------------------------------ WebSocket, gRPC
def test_sessions_per_address_over_websocket(
    chatty_checkpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    start = json.dumps({"type": "start", "sample_rate_hz": 8000, "encoding": "pcm_s16le", "channels": 1})

    async def main() -> None:
        async with running_server(settings_for(chatty_checkpoint, "--max-sessions-per-address", "1")) as srv:
            async with connect(srv.ws_url, compression=None) as first:
                with pytest.raises(InvalidStatus) as caught:
                    async with connect(srv.ws_url, compression=None):
                        pass
                assert caught.value.response.status_code == 429
                assert caught.value.response.headers["Retry-After"]
                await first.send(start)
                assert json.loads(await first.recv())["type"] == "ready"
            _, metrics = srv.http_get("/metrics")
            assert (
                'xlgate_limit_exceeded_total{limit="sessions_per_address",protocol="websocket"} 1.0'
                in metrics
            )
            # The first session is released when its handler returns, a moment after the client closed.
            for _ in range(100):
                try:
                    async with connect(srv.ws_url, compression=None) as again:
                        await again.send(start)
                        assert json.loads(await again.recv())["type"] == "ready"
                        break
                except InvalidStatus as refused:
                    assert refused.response.status_code == 429
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("no session admitted after the first closed")

    asyncio.run(main())
    no_errors(caplog)


def test_sessions_per_address_over_grpc(chatty_checkpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        settings = grpc_settings_for(chatty_checkpoint, "--max-sessions-per-address", "1")
        async with running_grpc(settings) as g:
            hold = asyncio.Event()

            async def held() -> AsyncIterator[pb.StreamingRecognizeRequest]:
                yield config(interim=False)
                await hold.wait()

            first = g.stub.StreamingRecognize(held(), timeout=30)
            await asyncio.sleep(0.5)  # the first call is being served
            second = g.stub.Recognize(
                pb.RecognizeRequest(
                    config=config(interim=False).streaming_config.config,
                    audio_content=noise_pcm(0.2).tobytes(),
                ),
                timeout=10,
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await second
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert g.metric('xlgate_limit_exceeded_total{limit="sessions_per_address",protocol="grpc"}') == 1
            hold.set()
            _ = [r async for r in first]
            assert await first.code() == grpc.StatusCode.OK
            third = g.stub.StreamingRecognize(
                iter([config(interim=False), *audio_requests(noise_pcm(0.3))]), timeout=30
            )
            _ = [r async for r in third]
            assert await third.code() == grpc.StatusCode.OK

    asyncio.run(main())
    no_errors(caplog)
