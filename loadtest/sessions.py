"""One recognition session per protocol, as a caller makes it, for the fault and soak commands.

Each function streams 8 kHz PCM in real time over one protocol (WebSocket, gRPC StreamingRecognize, or an
MRCPv2 call) and returns a :class:`SessionResult`: the final texts, whether the session ended cleanly (the
protocol's own "done": WebSocket ``end``, gRPC status OK, MRCP RECOGNITION-COMPLETE), and otherwise how it
failed and when the failure was seen. A session can also *vanish* mid-stream (``vanish_after_s``): its TCP
connection is reset (RST, no close handshake, no BYE), as a crashed softphone or a pulled cable does.

Every wait is bounded (``timeout_s``): a session that hangs is reported as ``timeout``, never waited on for
ever. The clients are the repository's own (``websockets``, grpcio stubs, :class:`gateway.mrcp_client.MrcpClient`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from gateway.grpc_api import asr_pb2 as pb
from gateway.grpc_api import asr_pb2_grpc
from gateway.mrcp_client import CallRefused, MrcpClient
from protocols.errors import GatewayError

FRAME_SAMPLES = 160  # 20 ms at 8 kHz
SAMPLE_RATE_HZ = 8000
PROTOCOLS = ("websocket", "grpc", "mrcp")
MRCP_SPEECH_COMPLETE_TIMEOUT_MS = 800


@dataclass(slots=True)
class SessionResult:
    """How one session went. ``failure`` is None for a clean end; times are ``time.monotonic()``."""

    protocol: str
    finals: list[str] = field(default_factory=list)
    clean_end: bool = False
    failure: str | None = None  # e.g. "connect", "timeout", "ws_1011", "grpc_aborted", "mrcp_006"
    started_at: float = 0.0
    ended_at: float = 0.0
    vanished_at: float | None = None
    failed_at: float | None = None  # when the failure was seen
    final_at: list[float] = field(default_factory=list)  # arrival of each final
    audio_sent_s: float = 0.0

    def fail(self, failure: str) -> None:
        """Record ``failure`` (the first one seen wins) and when it was seen."""
        if self.failure is None:
            self.failure = failure
            self.failed_at = time.monotonic()

    def final(self, text: str) -> None:
        self.finals.append(text)
        self.final_at.append(time.monotonic())

    @property
    def text(self) -> str:
        return " ".join(t for t in self.finals if t)


def _set_rst_on_close(sock: socket.socket | None) -> None:
    """SO_LINGER with a zero timeout: the next close() sends RST instead of FIN."""
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _paced(pcm: np.ndarray, *, stop_after_s: float | None) -> AsyncIterator[tuple[int, bytes]]:
    """(index, 20 ms frame) on an absolute real-time schedule; stops early after ``stop_after_s``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index, lo in enumerate(range(0, pcm.shape[0], FRAME_SAMPLES)):
        if stop_after_s is not None and index * FRAME_SAMPLES / SAMPLE_RATE_HZ >= stop_after_s:
            return
        yield index, pcm[lo : lo + FRAME_SAMPLES].astype("<i2").tobytes()
        delay = start + (index + 1) * FRAME_SAMPLES / SAMPLE_RATE_HZ - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


# -- WebSocket ---------------------------------------------------------------------------------------------
async def ws_session(
    url: str,
    pcm: np.ndarray,
    *,
    vanish_after_s: float | None = None,
    timeout_s: float = 60.0,
    on_message: Callable[[dict[str, Any]], None] | None = None,
) -> SessionResult:
    """One WebSocket protocol v1 session: start, real-time audio, stop, results until ``end``."""
    result = SessionResult("websocket", started_at=time.monotonic())
    try:
        async with asyncio.timeout(timeout_s):
            ws = await connect(url, compression=None, max_size=2**22, open_timeout=10, close_timeout=2)
            try:
                await ws.send(
                    json.dumps(
                        {
                            "type": "start",
                            "sample_rate_hz": SAMPLE_RATE_HZ,
                            "encoding": "pcm_s16le",
                            "channels": 1,
                        }
                    )
                )

                async def receive() -> None:
                    async for raw in ws:
                        msg = json.loads(raw)
                        if on_message is not None:
                            on_message(msg)
                        if msg["type"] == "final":
                            result.final(msg["text"])
                        elif msg["type"] == "error" and msg.get("fatal"):
                            result.fail(f"ws_{msg['code']}")
                        elif msg["type"] == "end":
                            result.clean_end = result.failure is None

                receiver = asyncio.create_task(receive())
                try:
                    async for index, frame in _paced(pcm, stop_after_s=vanish_after_s):
                        if receiver.done():
                            break
                        await ws.send(frame)
                        result.audio_sent_s = (index + 1) * FRAME_SAMPLES / SAMPLE_RATE_HZ
                    if vanish_after_s is not None:
                        _set_rst_on_close(ws.transport.get_extra_info("socket"))
                        ws.transport.abort()
                        result.vanished_at = time.monotonic()
                        return result
                    if not receiver.done():
                        await ws.send(json.dumps({"type": "stop"}))
                    await receiver
                finally:
                    receiver.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                        await receiver
            finally:
                if vanish_after_s is None:
                    await ws.close()
            if not result.clean_end and result.failure is None:
                code = ws.close_code
                result.fail(f"ws_close_{code}" if code not in (None, 1000, 1001) else "ws_no_end")
    except ConnectionClosed as exc:
        if not result.clean_end:  # after ``end`` the server may close while audio is still being sent
            result.fail(f"ws_close_{exc.rcvd.code if exc.rcvd else 'abnormal'}")
    except (OSError, InvalidHandshake) as exc:
        result.fail(f"connect_{type(exc).__name__}")
    except TimeoutError:
        result.fail("timeout")
    result.ended_at = time.monotonic()
    return result


# -- gRPC --------------------------------------------------------------------------------------------------
async def grpc_session(
    target: str, pcm: np.ndarray, *, vanish_after_s: float | None = None, timeout_s: float = 60.0
) -> SessionResult:
    """One StreamingRecognize call on its own channel; ``vanish_after_s`` goes through a :class:`TcpRelay`
    whose connection is then reset (grpcio does not hand out its socket)."""
    result = SessionResult("grpc", started_at=time.monotonic())
    relay: TcpRelay | None = None
    if vanish_after_s is not None:
        host, port = target.rsplit(":", 1)
        relay = TcpRelay(host, int(port))
        target = await relay.start()
    channel = grpc.aio.insecure_channel(target)
    try:
        stub = asr_pb2_grpc.RecognizerStub(channel)  # type: ignore[no-untyped-call]
        config = pb.RecognitionConfig(
            encoding=pb.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=SAMPLE_RATE_HZ, audio_channel_count=1
        )

        async def requests() -> AsyncIterator[pb.StreamingRecognizeRequest]:
            yield pb.StreamingRecognizeRequest(
                streaming_config=pb.StreamingRecognitionConfig(config=config, interim_results=False)
            )
            async for index, frame in _paced(pcm, stop_after_s=vanish_after_s):
                result.audio_sent_s = (index + 1) * FRAME_SAMPLES / SAMPLE_RATE_HZ
                yield pb.StreamingRecognizeRequest(audio_content=frame)
            if relay is not None:
                relay.reset()
                result.vanished_at = time.monotonic()
                await asyncio.sleep(timeout_s)  # a vanished caller never half-closes

        call = stub.StreamingRecognize(requests())
        async with asyncio.timeout(timeout_s):
            async for response in call:
                if response.WhichOneof("response") == "result" and response.result.is_final:
                    alternatives = response.result.alternatives
                    result.final(alternatives[0].transcript if alternatives else "")
        result.clean_end = True
    except grpc.aio.AioRpcError as exc:
        result.fail(f"grpc_{exc.code().name.lower()}")
    except TimeoutError:
        result.fail("timeout")
    finally:
        await channel.close(grace=None)
        if relay is not None:
            await relay.aclose()
    result.ended_at = time.monotonic()
    return result


class TcpRelay:
    """A loopback TCP relay for one connection; :meth:`reset` aborts both sides with RST."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Listen on an ephemeral loopback port; returns ``HOST:PORT`` to connect to."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()

    def reset(self) -> None:
        """Abort every relayed connection with RST (the server sees a reset, the client a dead socket)."""
        writers, self._writers = self._writers, []
        for writer in writers:
            if not writer.transport.is_closing():
                _set_rst_on_close(writer.get_extra_info("socket"))
            writer.transport.abort()

    async def aclose(self) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- MRCPv2 ------------------------------------------------------------------------------------------------
def nlsml_text(body: bytes) -> str:
    """The recognised words of an NLSML result (empty for no-input / no-match or an unreadable body)."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return ""
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "input" and element.get("mode", "speech") == "speech":
            return (element.text or "").strip()
    return ""


async def mrcp_session(
    sip_uri: str,
    pcm: np.ndarray,
    *,
    vanish_after_s: float | None = None,
    timeout_s: float = 60.0,
    shaper: UdpShaper | None = None,
) -> SessionResult:
    """One MRCP call with one RECOGNIZE (free dictation) of ``pcm`` as real-time RTP, then BYE.

    ``shaper``: RTP goes through this impairment relay (loss, jitter) instead of straight to the server.
    ``vanish_after_s``: the MRCP TCP connection is reset and the call dropped without BYE.
    """
    result = SessionResult("mrcp", started_at=time.monotonic())
    client = MrcpClient(sip_uri)
    try:
        async with asyncio.timeout(timeout_s):
            await client.connect()
            assert client.answer is not None
            if shaper is not None:
                await shaper.start((client.answer.rtp_host, client.answer.rtp_port))
                client.redirect_rtp("127.0.0.1", shaper.port)
            response = await client.request(
                "RECOGNIZE",
                ("Content-Type", "text/uri-list"),
                ("Speech-Complete-Timeout", str(MRCP_SPEECH_COMPLETE_TIMEOUT_MS)),
                ("No-Input-Timeout", "10000"),
                ("Confidence-Threshold", "0.0"),  # every transcript comes back (no no-match): it is scored
                body=b"builtin:speech/transcribe",
            )
            if response.status_code >= 300:
                result.fail(f"mrcp_status_{response.status_code}")
                return result
            tail = np.zeros(int(1.5 * SAMPLE_RATE_HZ), dtype=np.int16)  # silence: the utterance then ends
            audio = pcm if vanish_after_s is not None else np.concatenate([pcm, tail])
            if vanish_after_s is not None:
                audio = audio[: int(vanish_after_s * SAMPLE_RATE_HZ)]
            sender = asyncio.create_task(client.send_audio(audio))
            try:
                if vanish_after_s is not None:
                    await sender
                    result.audio_sent_s = audio.shape[0] / SAMPLE_RATE_HZ
                    await client.vanish()
                    result.vanished_at = time.monotonic()
                    return result
                while (event := await client.next_event(timeout_s)) is not None:
                    if event.event_name == "RECOGNITION-COMPLETE":
                        cause = (event.header("Completion-Cause") or "?").split()[0]
                        # success, no-match, no-input, success-maxtime (Recognition-Timeout reached, the
                        # result so far returned): all clean ends
                        if cause in ("000", "001", "002", "008"):
                            result.final(nlsml_text(event.body))
                            result.clean_end = True
                        else:
                            result.fail(f"mrcp_{cause}")
                        break
                else:
                    result.fail("mrcp_closed")
                result.audio_sent_s = audio.shape[0] / SAMPLE_RATE_HZ
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, AssertionError, OSError):
                    await sender
    except CallRefused as exc:
        result.fail(f"refused_{exc.status}")
    except TimeoutError:
        result.fail("timeout")
    except (OSError, GatewayError) as exc:
        result.fail(f"connect_{type(exc).__name__}")
    finally:
        with contextlib.suppress(OSError, TimeoutError, GatewayError):
            await client.bye()
        if shaper is not None:
            shaper.close()
    result.ended_at = time.monotonic()
    return result


class UdpShaper:
    """A loopback UDP relay that impairs a packet stream as a bad network does: each packet is dropped with
    probability ``loss``, else delayed by a uniform random 0 to 2 x ``jitter_s`` (mean ``jitter_s``, so
    packets arrive out of order), netem's ``delay J J loss L``. Seeded: a run is reproducible."""

    def __init__(self, *, loss: float, jitter_s: float, seed: int) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {loss}")
        if jitter_s < 0:
            raise ValueError(f"jitter_s must be >= 0, got {jitter_s}")
        self.loss = loss
        self.jitter_s = jitter_s
        self._rng = random.Random(seed)
        self._transport: asyncio.DatagramTransport | None = None
        self._dest: tuple[str, int] | None = None
        self.port = 0
        self.received = 0
        self.dropped = 0

    async def start(self, dest: tuple[str, int]) -> None:
        self._dest = dest
        loop = asyncio.get_running_loop()
        shaper = self

        class _Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
                shaper._received(data)

        transport, _ = await loop.create_datagram_endpoint(_Protocol, local_addr=("127.0.0.1", 0))
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def _received(self, data: bytes) -> None:
        self.received += 1
        if self._rng.random() < self.loss:
            self.dropped += 1
            return
        asyncio.get_running_loop().call_later(self._rng.uniform(0.0, 2 * self.jitter_s), self._send, data)

    def _send(self, data: bytes) -> None:
        if self._transport is not None and self._dest is not None:  # after close(): dropped
            self._transport.sendto(data, self._dest)

    def close(self) -> None:
        """Stop relaying (packets still held are dropped)."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None


SESSIONS: dict[str, Callable[..., Any]] = {
    "websocket": ws_session,
    "grpc": grpc_session,
    "mrcp": mrcp_session,
}
