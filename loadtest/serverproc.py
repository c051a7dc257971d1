"""A real ``xlgate serve`` child process on loopback for the load-test commands, and its metrics.

:class:`ServerProcess` runs ``python -m gateway.cli serve`` on ports chosen once by :meth:`Ports.pick`
(WebSocket and metrics always; gRPC and SIP+MRCP unless turned off), so a restart binds the same ones. It
waits for ``/readyz`` (which the server answers only once every listener is bound), stops the server
gracefully (:meth:`~ServerProcess.stop`: SIGTERM, a drain) or at once (:meth:`~ServerProcess.kill`:
SIGKILL, its model process too), signals it, and finds its model process. :func:`scrape` reads
``/metrics`` into a flat dict keyed ``name{label="value",...}``.

Users: ``loadtest.faults`` and ``loadtest.soak`` (every protocol, JSON log appended, restarts) and
``loadtest.warmstart`` and ``loadtest.overload`` (a fresh server whose start-up is measured, its log
started afresh).
"""

from __future__ import annotations

import os
import random
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

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 120.0
READY_POLL_S = 0.05
HTTP_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 30.0
RTP_PORTS_PER_SERVER = 200
LOG_TAIL_CHARS = 3000


class ServerFailed(RuntimeError):
    """The server exited during start-up or was not ready in time (it is killed then); the message names
    its log and carries the log's end."""


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
    """The ports one server listens on (``grpc`` or ``sip`` 0: that protocol is off; ``mrcp`` and ``rtp``
    only matter with SIP)."""

    ws: int
    metrics: int
    grpc: int = 0
    sip: int = 0
    mrcp: int = 0
    rtp: str = ""

    @classmethod
    def pick(cls, *, grpc: bool = True, sip: bool = True) -> Ports:
        """Ports free now for WebSocket and metrics and, unless turned off, gRPC and SIP+MRCP (with a range
        of :data:`RTP_PORTS_PER_SERVER` RTP ports)."""
        return cls(
            ws=free_port(),
            metrics=free_port(),
            grpc=free_port() if grpc else 0,
            sip=free_port_pair() if sip else 0,
            mrcp=free_port() if sip else 0,
            rtp=free_rtp_range() if sip else "",
        )

    def arguments(self) -> list[str]:
        """The ``xlgate serve`` flags that bind these ports on 127.0.0.1 (and turn off what is 0)."""
        args = ["--host", "127.0.0.1", "--ws-port", str(self.ws), "--metrics-port", str(self.metrics)]
        args += ["--grpc-port", str(self.grpc), "--sip-port", str(self.sip)]
        if self.sip:
            args += ["--mrcp-port", str(self.mrcp), "--rtp-ports", self.rtp]
        return args

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws}/v1/stream"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    @property
    def grpc_url(self) -> str:
        """The gRPC target as a URL (what :func:`loadtest.runner.run_load` takes)."""
        return f"grpc://{self.grpc_target}"

    @property
    def sip_uri(self) -> str:
        return f"sip:127.0.0.1:{self.sip}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics}"


class ServerProcess:
    """One ``python -m gateway.cli serve`` child (see the module docstring).

    Use :meth:`start`; end it with :meth:`stop` or :meth:`kill`, or use it as a context manager (which
    kills it on the way out if it still runs).
    """

    def __init__(
        self,
        *,
        ports: Ports,
        model: str | None = None,
        extra: Sequence[str] = (),
        log_path: Path | None = None,
        fresh_log: bool = False,
        env: dict[str, str] | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        """Args:
        ports: where it listens (:meth:`Ports.pick`).
        model: its ``--model`` (None: the server's default).
        extra: more ``xlgate serve`` arguments, after the port flags.
        log_path: its stdout and stderr are appended there (None: discarded); the folder is created.
        fresh_log: empty the log at the first :meth:`start` (restarts still append).
        env: extra environment variables for it.
        ready_timeout_s: how long a start (model load and warm-up included) may take.
        """
        self.ports = ports
        self.model = model
        self.extra = tuple(extra)
        self.log_path = log_path
        self.env = env or {}
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._truncate_log = fresh_log

    def command(self) -> list[str]:
        model = ["--model", self.model] if self.model is not None else []
        return [sys.executable, "-m", "gateway.cli", "serve", *model, *self.ports.arguments(), *self.extra]

    def start(self) -> float:
        """Start the server and wait until ``/readyz`` answers 200; returns the seconds that took.

        Raises:
            ServerFailed: the server exited, or was not ready within ``ready_timeout_s`` (it is killed).
        """
        started = time.monotonic()
        pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": pythonpath, **self.env}
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("wb" if self._truncate_log else "ab")
            self._truncate_log = False
        out = self._log if self._log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command(), env=env, stdout=out, stderr=subprocess.STDOUT)
        while time.monotonic() - started < self.ready_timeout_s:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.kill()
                raise ServerFailed(f"xlgate serve exited with {code} during start-up{self._log_end()}")
            if self.http_status("/readyz") == 200:
                return time.monotonic() - started
            time.sleep(READY_POLL_S)
        self.kill()
        raise ServerFailed(f"xlgate serve was not ready within {self.ready_timeout_s:g} s{self._log_end()}")

    def _log_end(self) -> str:
        """`` (log PATH): its last lines`` for an error message (empty without a log)."""
        if self.log_path is None:
            return ""
        try:
            tail = self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            tail = ""
        return f" (log {self.log_path}): {tail}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "start() first"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def http_status(self, path: str) -> int | None:
        """The status of GET ``path`` on the metrics port (None: no answer)."""
        try:
            with urllib.request.urlopen(self.ports.metrics_url + path, timeout=HTTP_TIMEOUT_S) as r:
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

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (a graceful drain), wait up to ``timeout_s``, then :meth:`kill`; returns the exit status."""
        assert self.proc is not None, "start() first"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.wait(timeout_s)
        self._close_log()
        return code

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
        if self._log is not None:
            self._log.close()
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
