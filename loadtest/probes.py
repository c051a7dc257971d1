"""Server CPU probes, URL checks and a description of the machine for the report."""

from __future__ import annotations

import importlib.metadata
import ipaddress
import os
import platform
import re
import socket
import urllib.request
from typing import Any
from urllib.parse import urlsplit

SCRAPE_TIMEOUT_S = 2.0
MAX_SCRAPE_BYTES = 4 << 20
_CPU_LINE = re.compile(r"^process_cpu_seconds_total(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.MULTILINE)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, schemes: tuple[str, ...], allow_remote: bool) -> str:
    """Validate a URL the load generator will contact.

    Raises:
        ValueError: wrong scheme, no host, or a non-loopback host without ``allow_remote``.
    """
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"URL scheme must be one of {schemes}, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"URL has no host: {url!r}")
    if not allow_remote and not is_loopback_host(parts.hostname):
        raise ValueError(f"{parts.hostname!r} is not loopback; pass --allow-remote to load a remote server")
    return url


class ServerCpuProbe:
    """Cumulative CPU seconds of the server: psutil on a pid (with its children), else a metrics scrape.

    ``sample()`` returns ``None`` when no source is configured or the source cannot be read.
    """

    def __init__(self, *, pid: int | None, metrics_url: str | None) -> None:
        self.source: str | None = None
        self._proc: Any = None
        self._metrics_url = metrics_url
        if pid is not None:
            try:
                import psutil
            except ImportError as exc:
                raise RuntimeError("--server-pid needs psutil: pip install psutil (xlgate[bench])") from exc
            self._proc = psutil.Process(pid)
            self.source = "psutil"
        elif metrics_url is not None:
            self.source = "metrics"

    def sample(self) -> float | None:
        """Cumulative server CPU seconds (user + system) now, or ``None``."""
        if self.source == "psutil":
            return self._psutil_cpu_s()
        if self.source == "metrics":
            return self._scrape_cpu_s()
        return None

    def _psutil_cpu_s(self) -> float | None:
        import psutil

        total = 0.0
        try:
            procs = [self._proc, *self._proc.children(recursive=True)]
        except psutil.Error:
            return None
        for proc in procs:
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
        return total

    def _scrape_cpu_s(self) -> float | None:
        assert self._metrics_url is not None
        try:
            with urllib.request.urlopen(self._metrics_url, timeout=SCRAPE_TIMEOUT_S) as resp:
                body = resp.read(MAX_SCRAPE_BYTES).decode("utf-8", "replace")
        except OSError:
            return None
        values = [float(m) for m in _CPU_LINE.findall(body)]
        return sum(values) if values else None


_SUMS = {  # report key -> (metric family, scale of the mean)
    "step": "xlgate_model_step_duration_seconds",
    "batch": "xlgate_batch_size",
    "queue_wait": "xlgate_queue_wait_seconds",
}


def _histogram_totals(body: str, family: str) -> tuple[float, float] | None:
    """(sum, count) of an unlabelled Prometheus histogram in a scrape, or ``None``."""
    found = {}
    for suffix in ("sum", "count"):
        m = re.search(rf"^{family}_{suffix}\s+([0-9.eE+-]+)\s*$", body, re.MULTILINE)
        if m is None:
            return None
        found[suffix] = float(m.group(1))
    return found["sum"], found["count"]


class ServerStepProbe:
    """The server's model-step histograms (steps, step time, batch size, queue wait) from ``/metrics``,
    so a run's report says where the time went; differences between two ``sample()`` calls."""

    def __init__(self, metrics_url: str | None) -> None:
        self._url = metrics_url

    def sample(self) -> dict[str, tuple[float, float]] | None:
        if self._url is None:
            return None
        try:
            with urllib.request.urlopen(self._url, timeout=SCRAPE_TIMEOUT_S) as resp:
                body = resp.read(MAX_SCRAPE_BYTES).decode("utf-8", "replace")
        except OSError:
            return None
        out = {}
        for key, family in _SUMS.items():
            totals = _histogram_totals(body, family)
            if totals is None:
                return None
            out[key] = totals
        return out

    @staticmethod
    def report(before: dict[str, tuple[float, float]] | None, after: dict[str, tuple[float, float]] | None,
               wall_s: float) -> dict[str, float | None] | None:
        if before is None or after is None:
            return None

        def mean(key: str) -> float | None:
            n = after[key][1] - before[key][1]
            return (after[key][0] - before[key][0]) / n if n > 0 else None

        steps = after["step"][1] - before["step"][1]
        step_s, wait_s = mean("step"), mean("queue_wait")
        busy_s = after["step"][0] - before["step"][0]
        return {
            "steps": steps,
            "steps_per_s": round(steps / wall_s, 2) if wall_s > 0 else None,
            "avg_step_ms": None if step_s is None else round(step_s * 1000, 2),
            "avg_batch": None if mean("batch") is None else round(mean("batch") or 0.0, 2),
            "avg_queue_wait_ms": None if wait_s is None else round(wait_s * 1000, 2),
            "runner_busy_fraction": round(busy_s / wall_s, 3) if wall_s > 0 else None,
        }


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory and library versions (torch read from metadata, not imported)."""
    mem_total_kb = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_total_kb = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mem_total_gib": round(mem_total_kb / 1048576, 2) if mem_total_kb else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "websockets": _version("websockets"),
        "jiwer": _version("jiwer"),
        "uvloop": _version("uvloop"),
    }
