"""Timing, device facts and table output shared by the kernel benchmarks and the prepared GPU check.

On CUDA, times are medians from ``triton.testing.do_bench`` (no graph) and ``do_bench_cudagraph`` (the call
replayed from a CUDA graph, so launch overhead is gone for every implementation alike). On the CPU (the dry
run) a few ``perf_counter`` repetitions: those figures only prove the code path runs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

NOT_MEASURED = "not yet measured on a GPU"


def output_dir(explicit: str | None = None) -> Path:
    """``explicit``, else $GPU_CHECK_OUT, else $BENCH_OUT, else ./bench-results/gpu; created."""
    path = Path(explicit or os.environ.get("GPU_CHECK_OUT") or os.environ.get("BENCH_OUT") or "bench-results/gpu")
    path.mkdir(parents=True, exist_ok=True)
    return path


def peak_bandwidth_gbps(device: torch.device) -> tuple[float | None, str]:
    """Theoretical DRAM bandwidth (GB/s) and where it came from: $XLGATE_PEAK_GBPS, else the device's memory
    clock and bus width (double data rate), else None."""
    env = os.environ.get("XLGATE_PEAK_GBPS")
    if env:
        return float(env), "XLGATE_PEAK_GBPS"
    if device.type != "cuda":
        return None, "no GPU"
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "memory clock x bus width x 2"
    return None, "unknown"


def measured_copy_gbps(device: torch.device, n_bytes: int = 1 << 30) -> float | None:
    """Achieved device-to-device copy bandwidth (read + write bytes per second), a practical ceiling."""
    if device.type != "cuda":
        return None
    import triton.testing

    src = torch.empty(n_bytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=100, return_mode="median")
    return 2 * n_bytes / (ms * 1e-3) / 1e9


def time_ms(fn: Callable[[], Any], device: torch.device, *, graph: bool, rep_ms: int = 100,
            cpu_reps: int = 2) -> float:
    """Median milliseconds per call of ``fn`` (call it once before: compilation and autotuning are not
    timed). ``graph``: replay from a CUDA graph (CUDA only)."""
    if device.type == "cuda":
        import triton.testing

        if graph:
            return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))
        return float(triton.testing.do_bench(fn, warmup=10, rep=rep_ms, return_mode="median"))
    times = []
    for _ in range(cpu_reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def environment(device: torch.device) -> dict[str, Any]:
    """Device, driver and library versions, and the date: the header of every table."""
    info: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "device": "cpu (TRITON_INTERPRET=1 dry run)" if device.type != "cuda" else torch.cuda.get_device_name(device),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"unavailable: {exc}"
        peak, source = peak_bandwidth_gbps(device)
        info["peak_bandwidth_gbps"] = peak
        info["peak_bandwidth_source"] = source
    return info


def environment_markdown(info: dict[str, Any]) -> str:
    keys = ["date_utc", "device", "nvidia_smi", "torch", "cuda_runtime", "triton", "python",
            "peak_bandwidth_gbps", "copy_bandwidth_gbps"]
    return "\n".join(f"- {k}: {info[k]}" for k in keys if k in info)


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_outputs(out: Path, stem: str, markdown: str, payload: dict[str, Any]) -> None:
    (out / f"{stem}.md").write_text(markdown + "\n")
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")


class Deadline:
    """A wall-clock budget: stages check ``left()`` and record what they skipped for want of time."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0
