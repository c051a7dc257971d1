"""A real xlgate server on 127.0.0.1 for tests, plus a small protocol client."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from gateway.config import ServeSettings, add_serve_arguments, resolve_serve_settings
from gateway.server import BoundPorts, run_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_for(model: str, *extra: str) -> ServeSettings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    # gRPC and MRCP off (--sip-port 0): these tests are about the WebSocket path and bind no fixed port.
    # Finals from the CTC decoder: these tests are about the protocols (most use a random model); the
    # default Whisper second pass is tested through the server in tests/test_final_pass.py.
    args = parser.parse_args(["--model", model, "--ws-port", "0", "--metrics-port", str(free_port()),
                              "--grpc-port", "0", "--sip-port", "0", "--event-loop", "asyncio", "--runner", "thread",
                              "--final-pass", "none", *extra])
    return resolve_serve_settings(args, {})


@dataclass
class Running:
    ws_url: str
    metrics_url: str
    stop: asyncio.Event
    ports: BoundPorts | None = None  # every port the server bound

    def http_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.metrics_url + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


@contextlib.asynccontextmanager
async def running_server(settings: ServeSettings) -> AsyncIterator[Running]:
    """Start ``run_server`` in this loop; on exit stop it and check that every task it started ended."""
    bound: list[BoundPorts] = []
    ready, stop = asyncio.Event(), asyncio.Event()

    def on_ready(ports: BoundPorts) -> None:
        bound.append(ports)
        ready.set()

    before = asyncio.all_tasks()
    task = asyncio.create_task(run_server(settings, on_ready=on_ready, stop=stop))
    try:
        done, _ = await asyncio.wait({task, asyncio.ensure_future(ready.wait())}, timeout=60,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the start-up error
        assert bound, "server did not start in time"
        yield Running(f"ws://127.0.0.1:{bound[0].ws_port}/v1/stream",
                      f"http://127.0.0.1:{bound[0].metrics_port}", stop, bound[0])
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await asyncio.sleep(0)
        leftover = {t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()}
        assert not leftover, f"tasks left running after shutdown: {leftover}"


def noise_pcm(seconds: float, *, rate: int = 8000, seed: int = 0, channels: int = 1) -> np.ndarray:
    """Speech-like noise bursts (int16, interleaved when stereo)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    env = (np.sin(np.arange(n) / rate * 2 * np.pi * 2) > -0.3).astype(np.float32)
    x = rng.standard_normal((n, channels)).astype(np.float32) * 4000 * env[:, None]
    return x.astype(np.int16).reshape(-1) if channels > 1 else x[:, 0].astype(np.int16)


async def collect(ws: ClientConnection, *, until: str = "end", timeout_s: float = 30) -> list[dict[str, Any]]:
    """Messages until one of type ``until`` (included) or the connection closes."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout_s):
        async for raw in ws:
            msg = json.loads(raw)
            out.append(msg)
            if msg["type"] == until:
                break
    return out


async def send_audio(ws: ClientConnection, pcm: np.ndarray, *, frame_samples: int = 160) -> None:
    data = pcm.tobytes()
    step = frame_samples * pcm.itemsize
    for lo in range(0, len(data), step):
        await ws.send(data[lo:lo + step])


def client(url: str) -> Any:
    return connect(url, compression=None, max_size=2**22, open_timeout=10)
