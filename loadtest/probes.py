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
