"""Human summary, JSON file and latency CDF plot of a run."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _fmt(v: float | int | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}{unit}"
    return f"{v}{unit}"


def _wer_pct(v: float | None) -> str:
    return "-" if v is None else f"{100.0 * v:.2f}%"


def format_summary(report: Mapping[str, Any]) -> str:
    """A few lines for the terminal: latencies, counts, errors, rejections, CPU, WER."""
    cfg = report["config"]
    lines = [f"streams={cfg['streams']} processes={cfg['processes_used']} mode={cfg['mode']} "
             f"duration_s={cfg['duration_s']} wall_s={report['wall_s']}"]
    lines.append(f"{'latency':<14}{'count':>8}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}  (ms)")
    for name, s in report["latency_ms"].items():
        lines.append(f"{name:<14}{s['count']:>8}{_fmt(s['p50_ms']):>10}{_fmt(s['p95_ms']):>10}"
                     f"{_fmt(s['p99_ms']):>10}{_fmt(s['max_ms']):>10}")
    lag = report["client_send_lag_ms"]
    lines.append(f"client send lag p99={_fmt(lag['p99_ms'])} max={_fmt(lag['max_ms'])} ms")
    c = report["counts"]
    lines.append(f"sessions started={c['sessions_started']} completed={c['sessions_completed']} "
                 f"truncated={c['sessions_truncated']} failed={c['sessions_failed']} "
                 f"partials={c['partials']} finals={c['finals']} audio_sent_s={c['audio_sent_s']}")
    ov = report["overruns"]
    lines.append(f"overruns (server bug: audio_end_ms beyond audio sent)={ov['count']}")
    lines.append(f"errors={report['errors']['total']} {report['errors']['by_code']}  "
                 f"rejections={report['rejections']['total']} {report['rejections']['by_kind']}")
    srv, cli = report["cpu"]["server"], report["cpu"]["client"]
    lines.append(f"cpu server={_fmt(srv['cores_used'])} cores ({srv['source']}) "
                 f"client={_fmt(cli['cores_used'])} cores over {cli['processes']} process(es)")
    steps = report.get("server_steps")
    if steps:
        lines.append(f"server steps={steps['steps']:.0f} ({_fmt(steps['steps_per_s'])}/s) "
                     f"avg step={_fmt(steps['avg_step_ms'])} ms avg batch={_fmt(steps['avg_batch'])} "
                     f"queue wait={_fmt(steps['avg_queue_wait_ms'])} ms runner busy={_fmt(steps['runner_busy_fraction'])}")
    wer = report.get("wer")
    if wer is not None:
        base = wer["baseline"]
        delta = "-" if wer["delta"] is None else f"{100.0 * wer['delta']:+.2f} pts"
        lines.append(
            f"WER load={_wer_pct(wer['load']['wer'])} ({wer['load']['utterances']} utts, "
            f"{wer['load']['deletions']} deleted words) single-stream="
            f"{_wer_pct(None if base is None else base['wer'])} delta={delta}")
    return "\n".join(lines)


def write_json(data: Mapping[str, Any], path: Path) -> None:
    """Write ``data`` as indented JSON, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def plot_cdf(samples_s: Mapping[str, np.ndarray], path: Path, *, title: str,
             target_ms: float | None = None) -> None:
    """Write a PNG of the empirical latency CDFs (milliseconds, log x axis).

    Args:
        samples_s: series name to latencies in seconds; empty series are left out.
        path: where the PNG goes.
        title: plot title.
        target_ms: draws a vertical line there (the p99 goal of ``find-max``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        drawn = 0
        for name, x in samples_s.items():
            if x.size == 0:
                continue
            ms = np.sort(np.maximum(x * 1000.0, 1e-3))
            y = np.arange(1, ms.size + 1) / ms.size
            p99 = float(np.percentile(ms, 99))
            ax.step(ms, y, where="post", label=f"{name} (n={ms.size}, p99={p99:.1f} ms)")
            drawn += 1
        if target_ms is not None:
            ax.axvline(target_ms, color="grey", linestyle="--", label=f"target {target_ms:g} ms")
        if drawn:
            ax.set_xscale("log")
        ax.axhline(0.99, color="lightgrey", linewidth=0.8)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("fraction of results")
        ax.set_ylim(0, 1.01)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
