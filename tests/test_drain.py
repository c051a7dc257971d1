"""Graceful drain of a real `xlgate serve` process on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.wsharness import client, collect, free_port, noise_pcm, send_audio

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[1]


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def start_server(model: str, ws_port: int, metrics_port: int, drain_ms: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLGATE_DRAIN_TIMEOUT_MS": str(drain_ms)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--model", model, "--ws-port", str(ws_port),
         "--metrics-port", str(metrics_port), "--grpc-port", "0", "--sip-port", "0", "--log-format", "json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if http_status(f"http://127.0.0.1:{metrics_port}/readyz") == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not become ready")


def test_sigterm_drains_live_streams_then_closes_1001(chatty_checkpoint: str) -> None:
    ws_port, metrics_port = free_port(), free_port()
    proc = start_server(chatty_checkpoint, ws_port, metrics_port, drain_ms=1500)
    url = f"ws://127.0.0.1:{ws_port}/v1/stream"
    try:
        async def main() -> None:
            async with client(url) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate_hz": 8000, "encoding": "pcm_s16le",
                                          "channels": 1, "endpointing": {"enabled": False}}))
                assert json.loads(await ws.recv())["type"] == "ready"
                await send_audio(ws, noise_pcm(2.0))
                await collect(ws, until="partial")
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                # Draining: not ready, and new streams are refused with 503.
                assert http_status(f"http://127.0.0.1:{metrics_port}/readyz") == 503
                with pytest.raises(InvalidStatus) as info:
                    async with client(url):
                        pass
                assert info.value.response.status_code == 503
                # The live stream may go on during the drain window...
                await send_audio(ws, noise_pcm(0.5, seed=3))
                # ...then gets its final results, `end`, and a normal 1001 close.
                msgs = await collect(ws, timeout_s=20)
                assert msgs[-1]["type"] == "end"
                finals = [m for m in msgs if m["type"] == "final"]
                assert finals and finals[-1]["audio_end_ms"] == 2500
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1001

        asyncio.run(main())
        assert proc.wait(timeout=30) == 0
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
        assert any("draining" in e["msg"] for e in events)
        assert events[-1]["msg"] == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_with_no_streams_exits_promptly(chatty_checkpoint: str) -> None:
    ws_port, metrics_port = free_port(), free_port()
    proc = start_server(chatty_checkpoint, ws_port, metrics_port, drain_ms=30000)
    try:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
