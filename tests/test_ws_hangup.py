"""Hang-ups over a real loopback socket: a client that goes away is a normal end, never a server error.

Each case checks the same three things (issue 9, issue 13): the session's outcome is ``client_closed`` (or
the protocol error it really is), nothing is logged at ERROR, and ``xlgate_errors_total{kind="internal"}``
stays at zero.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.wsharness import Running, client, noise_pcm, running_server, send_audio, settings_for

pytestmark = pytest.mark.timeout(120)


def start_msg() -> str:
    return json.dumps({"type": "start", "sample_rate_hz": 8000, "encoding": "pcm_s16le", "channels": 1})


def metric(body: str, prefix: str) -> float:
    """The value of the sample whose line starts with ``prefix`` (0 when absent)."""
    lines = [ln for ln in body.splitlines() if ln.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


async def wait_session_ended(srv: Running, caplog: pytest.LogCaptureFixture, count: int = 1) -> list[str]:
    """The outcomes of the first ``count`` ended sessions, once they are logged."""
    async with asyncio.timeout(30):
        while True:
            ended = [r.getMessage().rsplit(": ", 1)[-1] for r in caplog.records
                     if r.name == "xlgate.ws" and r.getMessage().startswith("client session ended")]
            if len(ended) >= count:
                return ended
            await asyncio.sleep(0.05)


def check_no_server_error(srv: Running, caplog: pytest.LogCaptureFixture) -> str:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    _, body = srv.http_get("/metrics")
    assert metric(body, 'xlgate_errors_total{kind="internal",protocol="websocket"}') == 0
    assert metric(body, 'xlgate_live_streams{protocol="websocket"}') == 0
    return body


def run_case(checkpoint: str, caplog: pytest.LogCaptureFixture, body: Any, *extra: str) -> tuple[str, str]:
    """Run ``body(srv)`` against a fresh server; returns the session's outcome and the metrics text."""
    caplog.set_level(logging.INFO, logger="xlgate")

    async def main() -> tuple[str, str]:
        async with running_server(settings_for(checkpoint, *extra)) as srv:
            await body(srv)
            (outcome,) = await wait_session_ended(srv, caplog)
            return outcome, check_no_server_error(srv, caplog)

    return asyncio.run(main())


def test_close_without_stop_is_client_closed(chatty_checkpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Running) -> None:
        async with client(srv.ws_url) as ws:
            await ws.send(start_msg())
            assert json.loads(await ws.recv())["type"] == "ready"
            await send_audio(ws, noise_pcm(1.0))
        # leaving the block closes the socket with 1000 and no stop: a hung-up call

    outcome, metrics = run_case(chatty_checkpoint, caplog, body)
    assert outcome == "client_closed"
    assert metric(metrics, 'xlgate_streams_ended_total{outcome="client_closed",protocol="websocket"}') == 1


def test_tcp_reset_mid_stream_is_client_closed(chatty_checkpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Running) -> None:
        ws = await client(srv.ws_url)
        await ws.send(start_msg())
        assert json.loads(await ws.recv())["type"] == "ready"
        await send_audio(ws, noise_pcm(1.0))
        sock = ws.transport.get_extra_info("socket")
        # SO_LINGER with a zero timeout: close() sends RST instead of FIN (no close frame, no handshake).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.transport.abort()
        with pytest.raises(ConnectionClosed):
            await ws.recv()

    outcome, metrics = run_case(chatty_checkpoint, caplog, body)
    assert outcome == "client_closed"
    assert metric(metrics, 'xlgate_streams_ended_total{outcome="client_closed",protocol="websocket"}') == 1


def test_close_before_start_is_client_closed(chatty_checkpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Running) -> None:
        async with client(srv.ws_url):
            pass

    outcome, metrics = run_case(chatty_checkpoint, caplog, body)
    assert outcome == "client_closed"
    assert metric(metrics, 'xlgate_streams_started_total{protocol="websocket"}') == 0


def test_frame_over_the_transport_limit_is_a_protocol_error(chatty_checkpoint: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A frame the ``websockets`` library itself refuses (over its ``max_size``) closes with 1009 before the
    Connection sees it: counted as the protocol error it is (``frame_too_large``), not as an internal one."""

    async def body(srv: Running) -> None:
        ws = await client(srv.ws_url)  # no ``async with``: the server, not the client, closes this one
        await ws.send(start_msg())
        assert json.loads(await ws.recv())["type"] == "ready"
        await send_audio(ws, noise_pcm(0.5))
        with pytest.raises(ConnectionClosed):
            await ws.send(b"\x00" * 4_000_000)
            while True:
                await ws.recv()
        await ws.wait_closed()
        assert ws.close_code == 1009

    outcome, metrics = run_case(chatty_checkpoint, caplog, body, "--max-frame-bytes", "4000")
    assert outcome == "error"
    assert metric(metrics, 'xlgate_errors_total{kind="frame_too_large",protocol="websocket"}') == 1
    assert metric(metrics, 'xlgate_limit_exceeded_total{limit="ws_frame_bytes",protocol="websocket"}') == 1


def test_frame_over_the_protocol_limit_closes_1009_without_server_error(
        chatty_checkpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Running) -> None:
        async with client(srv.ws_url) as ws:
            await ws.send(start_msg())
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(b"\x00" * 4002)
            msgs = []
            with pytest.raises(ConnectionClosed):
                while True:
                    msgs.append(json.loads(await ws.recv()))
            assert msgs[-1]["code"] == "frame_too_large" and msgs[-1]["fatal"]
            assert ws.close_code == 1009

    outcome, metrics = run_case(chatty_checkpoint, caplog, body, "--max-frame-bytes", "4000")
    assert outcome == "error"
    assert metric(metrics, 'xlgate_errors_total{kind="frame_too_large",protocol="websocket"}') == 1
    assert metric(metrics, 'xlgate_limit_exceeded_total{limit="ws_frame_bytes",protocol="websocket"}') == 1
