"""Summaries of latency samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def summarize_ms(samples_s: Sequence[float] | np.ndarray) -> dict[str, float | int | None]:
    """p50/p95/p99/max/mean of latencies given in seconds, reported in milliseconds (JSON boundary).

    Returns:
        ``{"count", "p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms", "min_ms"}``; the figures are
        ``None`` when there is no sample.
    """
    x = np.asarray(samples_s, dtype=np.float64)
    if x.size == 0:
        return {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None,
                "mean_ms": None, "min_ms": None}
    p50, p95, p99 = np.percentile(x, [50, 95, 99]) * 1000.0
    return {
        "count": int(x.size),
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3),
        "max_ms": round(float(x.max()) * 1000.0, 3),
        "mean_ms": round(float(x.mean()) * 1000.0, 3),
        "min_ms": round(float(x.min()) * 1000.0, 3),
    }
