"""A real ``xlgate serve`` child process on free loopback ports, for the commands that must start the
gateway themselves (warm start measures a fresh one; overload checks it recovers).

The child runs ``python -m gateway.cli serve`` with the caller's extra arguments; every port is chosen
here (free at the moment of choosing) and passed explicitly, so ``/readyz`` can be polled and the URLs are
known. :meth:`ServeProcess.stop` sends SIGTERM (a graceful drain) and reports the exit status.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
READY_POLL_S = 0.05
HTTP_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 30.0


class ServeFailed(RuntimeError):
    """The gateway exited or did not turn ready in time; the message carries the end of its log."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port that is free now (TCP by default)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str) -> int:
    """The HTTP status of a GET (an error status is returned, not raised).

    Raises:
        OSError: the server cannot be reached.
    """
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@dataclass(frozen=True, slots=True)
class Ports:
    """The ports one gateway listens on (``grpc`` and ``sip`` 0: that protocol is off)."""

    ws: int
    metrics: int
    grpc: int = 0
    sip: int = 0
    rtp_low: int = 0

    @classmethod
    def choose(cls, *, grpc: bool, sip: bool, rtp_ports: int = 200) -> Ports:
        """Free ports for the WebSocket and metrics listeners and, when asked, gRPC and SIP (with an RTP
        range of ``rtp_ports`` UDP ports starting at a free one)."""
        rtp_low = 0
        if sip:
            rtp_low = free_port(socket.SOCK_DGRAM) & ~1
            rtp_low = min(rtp_low, 65535 - rtp_ports)
        return cls(
            ws=free_port(),
            metrics=free_port(),
            grpc=free_port() if grpc else 0,
            sip=free_port(socket.SOCK_DGRAM) if sip else 0,
            rtp_low=rtp_low,
        )

    def arguments(self, rtp_ports: int = 200) -> list[str]:
        args = [
            "--host",
            "127.0.0.1",
            "--ws-port",
            str(self.ws),
            "--metrics-port",
            str(self.metrics),
            "--grpc-port",
            str(self.grpc),
            "--sip-port",
            str(self.sip),
        ]
        if self.sip:
            args += ["--mrcp-port", "0", "--rtp-ports", f"{self.rtp_low}-{self.rtp_low + rtp_ports - 1}"]
        return args


class ServeProcess:
    """One ``xlgate serve`` child. Use :meth:`start`; always :meth:`stop` (or use it as a context manager)."""

    def __init__(
        self, proc: subprocess.Popen[bytes], ports: Ports, log_path: Path, log_file: IO[bytes], ready_s: float
    ) -> None:
        self.proc = proc
        self.ports = ports
        self.log_path = log_path
        self._log_file = log_file
        self.ready_s = ready_s  # from the process start to /readyz answering 200
        self.exit_code: int | None = None

    @classmethod
    def start(
        cls,
        extra_args: Sequence[str],
        *,
        log_path: Path,
        grpc: bool = False,
        sip: bool = False,
        ready_timeout_s: float = 180.0,
        env: dict[str, str] | None = None,
    ) -> ServeProcess:
        """Start the gateway and wait until ``/readyz`` answers 200.

        Args:
            extra_args: more ``xlgate serve`` arguments (model, limits, ...); ports are chosen here.
            log_path: the child's stdout and stderr go there.
            grpc, sip: also serve gRPC / SIP+MRCP (off by default).
            ready_timeout_s: how long start-up (model load and warm-up included) may take.
            env: extra environment variables for the child.

        Raises:
            ServeFailed: the process exited, or was not ready in time (it is killed then).
        """
        ports = Ports.choose(grpc=grpc, sip=sip)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("wb")
        child_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
            **(env or {}),
        }
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", *ports.arguments(), *extra_args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=child_env,
        )
        server = cls(proc, ports, log_path, log_file, 0.0)
        deadline = started + ready_timeout_s
        while True:
            if proc.poll() is not None:
                server.stop()
                raise ServeFailed(f"xlgate serve exited with {proc.returncode}: {server.log_tail()}")
            try:
                if http_status(f"{server.metrics_url}/readyz") == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise ServeFailed(
                    f"xlgate serve was not ready after {ready_timeout_s:g} s: {server.log_tail()}"
                )
            time.sleep(READY_POLL_S)
        server.ready_s = time.monotonic() - started
        return server

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ports.ws}/v1/stream"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.ports.grpc}"

    @property
    def sip_uri(self) -> str:
        return f"sip:127.0.0.1:{self.ports.sip}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, max_chars: int = 3000) -> str:
        self._log_file.flush()
        try:
            return self.log_path.read_text(errors="replace")[-max_chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (drain), wait up to ``timeout_s``, then SIGKILL. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        self.exit_code = self.proc.returncode
        return self.exit_code

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
