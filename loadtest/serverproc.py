"""A real ``xlgate serve`` process on loopback for the fault and soak commands, and its metrics.

:class:`ServerProcess` starts the server with every protocol on (WebSocket, gRPC, MRCPv2) on ports chosen
once, so a restart binds the same ones; it waits for ``/readyz``, signals it (SIGTERM, SIGKILL), and finds
its model process. :func:`scrape` reads ``/metrics`` into a flat dict keyed ``name{label="value",...}``.
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
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 120.0
RTP_PORTS_PER_SERVER = 200


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free now on 127.0.0.1 (for ``kind``: TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_pair() -> int:
    """A port free for both TCP and UDP (SIP listens on both)."""
    for _ in range(100):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for both TCP and UDP")


def free_rtp_range(count: int = RTP_PORTS_PER_SERVER) -> str:
    """``LOW-HIGH`` of ``count`` UDP ports free now, starting at a random even port above 30000."""
    import random

    for _ in range(50):
        low = random.randrange(30000, 60000 - count) & ~1
        try:
            for port in range(low, low + count, 2):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return f"{low}-{low + count - 1}"
    raise RuntimeError("no free RTP port range")


@dataclass(frozen=True, slots=True)
class Ports:
    ws: int
    grpc: int
    sip: int
    mrcp: int
    metrics: int
    rtp: str

    @classmethod
    def pick(cls) -> Ports:
        return cls(
            ws=free_port(),
            grpc=free_port(),
            sip=free_port_pair(),
            mrcp=free_port(),
            metrics=free_port(),
            rtp=free_rtp_range(),
        )

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws}/v1/stream"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    @property
    def sip_uri(self) -> str:
        return f"sip:127.0.0.1:{self.sip}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics}"


class ServerProcess:
    """One ``python -m gateway.cli serve`` child (see the module docstring)."""

    def __init__(
        self,
        *,
        model: str,
        ports: Ports,
        extra: tuple[str, ...] = (),
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.model = model
        self.ports = ports
        self.extra = extra
        self.log_path = log_path
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: object | None = None

    def command(self) -> list[str]:
        p = self.ports
        return [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--model",
            self.model,
            "--host",
            "127.0.0.1",
            "--ws-port",
            str(p.ws),
            "--grpc-port",
            str(p.grpc),
            "--sip-port",
            str(p.sip),
            "--mrcp-port",
            str(p.mrcp),
            "--rtp-ports",
            p.rtp,
            "--metrics-port",
            str(p.metrics),
            "--log-format",
            "json",
            *self.extra,
        ]

    def start(self) -> float:
        """Start the server and wait until ``/readyz`` says ready; returns the seconds that took.

        Raises:
            RuntimeError: the server exited or was not ready within READY_TIMEOUT_S.
        """
        started = time.monotonic()
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        log = open(self.log_path, "ab") if self.log_path is not None else subprocess.DEVNULL
        self._log = log
        self.proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=log, cwd=ROOT)
        while time.monotonic() - started < READY_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"xlgate serve exited with {self.proc.returncode} during start-up"
                    + (f" (log: {self.log_path})" if self.log_path else "")
                )
            # /readyz can answer before the listeners are bound: wait for those too.
            if self.http_status("/readyz") == 200 and self._listening():
                return time.monotonic() - started
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"xlgate serve was not ready within {READY_TIMEOUT_S:g} s")

    def _listening(self) -> bool:
        for port in (self.ports.ws, self.ports.grpc, self.ports.sip, self.ports.mrcp):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
        return True

    @property
    def pid(self) -> int:
        assert self.proc is not None, "start() first"
        return self.proc.pid

    def http_status(self, path: str) -> int | None:
        """The status of GET ``path`` on the metrics port (None: no answer)."""
        try:
            with urllib.request.urlopen(self.ports.metrics_url + path, timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except OSError:
            return None

    def metrics(self) -> dict[str, float]:
        return scrape(self.ports.metrics_url + "/metrics")

    def model_pid(self) -> int:
        """The pid of the model process (the ``spawn`` child that is not multiprocessing's resource tracker).

        Raises:
            RuntimeError: there is none (the thread runner, or it is being restarted).
        """
        import psutil

        for child in psutil.Process(self.pid).children():
            cmdline = " ".join(child.cmdline())
            if "multiprocessing.spawn" in cmdline and "resource_tracker" not in cmdline:
                return int(child.pid)
        raise RuntimeError("the server has no model process")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        """The exit status, waiting up to ``timeout_s`` (then the process is killed and -9 returned)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        """SIGKILL the server and, with it, its model process (which would otherwise linger until it reads
        the closed pipe)."""
        if self.proc is None or self.proc.poll() is not None:
            self._close_log()
            return
        import psutil

        try:
            model: int | None = self.model_pid()
        except (RuntimeError, psutil.Error):  # no model process (thread runner, mid-restart) or it is gone
            model = None
        self.proc.kill()
        self.proc.wait()
        if model is not None:
            try:
                os.kill(model, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None and self._log is not subprocess.DEVNULL:
            self._log.close()  # type: ignore[attr-defined]
        self._log = None

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def scrape(url: str, *, timeout_s: float = 5.0) -> dict[str, float]:
    """Every sample of a Prometheus text endpoint, keyed ``name{a="x",b="y"}`` (labels sorted)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return out


def value(metrics: dict[str, float], name: str, **labels: str) -> float:
    """One sample of a :func:`scrape` result (0 when absent)."""
    key = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return metrics.get(f"{name}{{{key}}}" if key else name, 0.0)
