"""Warm start: ``python -m loadtest.warmstart --audio-dir DIR --streams N --out FILE.json``.

Starts a fresh ``xlgate serve`` (``loadtest.serverproc``), waits for ``/readyz``, and runs the same real-time
load twice on it: the first session after start, then a second one on the now-warm server (the reference).
Both are ordinary :func:`loadtest.runner.run_load` runs. ``--restarts K`` repeats the whole thing on K fresh
servers, so one noisy run on a shared machine does not decide. Prints each session's partial-latency
p50/p99 and the ratio of the first session's p99 to the warm one's; writes everything as JSON.

The judgement (``--max-ratio``, ``--slack-ms``): a start passes when the first session's partial p99 is at
most ``max_ratio`` times the warm session's plus ``slack_ms``. The slack absorbs a shared machine's jitter
on a fast server (a p99 of 40 ms vs 30 ms is noise, not a cold model); the ratio catches the cold-start
penalty, which is a multiple (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shlex
import statistics
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.audio import Utterance, load_utterances
from loadtest.probes import machine_info
from loadtest.report import write_json
from loadtest.runner import RunOptions, run_load
from loadtest.serverproc import Ports, ServerFailed, ServerProcess

SCHEMA = "xlgate.loadtest.warmstart/1"
MAX_RESTARTS = 20


@dataclass(frozen=True, slots=True)
class WarmStartOptions:
    """One warm-start measurement."""

    audio_dir: Path
    out: Path
    streams: int = 12
    duration_s: float = 10.0
    restarts: int = 1
    cooldown_s: float = 1.0
    serve_args: tuple[str, ...] = ()
    max_ratio: float = 1.5
    slack_ms: float = 25.0
    max_files: int = 100

    def validate(self) -> None:
        """Raises:
        ValueError: an option is out of range.
        """
        if not 1 <= self.restarts <= MAX_RESTARTS:
            raise ValueError(f"restarts must be in 1..{MAX_RESTARTS}, got {self.restarts}")
        if not 0 < self.duration_s <= 3600:
            raise ValueError(f"duration_s must be in (0, 3600], got {self.duration_s}")
        if self.max_ratio < 1 or self.slack_ms < 0:
            raise ValueError(
                f"max_ratio must be >= 1 and slack_ms >= 0, got {self.max_ratio}, {self.slack_ms}"
            )
        if self.cooldown_s < 0:
            raise ValueError(f"cooldown_s must be >= 0, got {self.cooldown_s}")


def session_record(report: dict[str, Any]) -> dict[str, Any]:
    """What is kept of one session's run report."""
    return {
        k: report[k]
        for k in (
            "wall_s",
            "latency_ms",
            "client_send_lag_ms",
            "counts",
            "errors",
            "rejections",
            "overruns",
            "server_steps",
        )
    }


def judge_start(
    first: dict[str, Any], warm: dict[str, Any], *, max_ratio: float, slack_ms: float
) -> list[str]:
    """Reasons one fresh start fails (empty: it passed): errors, no partials, or a first-session partial p99
    above ``max_ratio`` x the warm one's + ``slack_ms``."""
    reasons = []
    for name, s in (("first", first), ("warm", warm)):
        if s["errors"]["total"] or s["rejections"]["total"] or s["overruns"]["count"]:
            reasons.append(
                f"{name} session: errors {s['errors']['by_code']}, rejections "
                f"{s['rejections']['by_kind']}, over-runs {s['overruns']['count']}"
            )
        if not s["latency_ms"]["partial"]["count"]:
            reasons.append(f"{name} session: no partial results")
    if reasons:
        return reasons
    p_first, p_warm = first["latency_ms"]["partial"]["p99_ms"], warm["latency_ms"]["partial"]["p99_ms"]
    limit = max_ratio * p_warm + slack_ms
    if p_first > limit:
        reasons.append(
            f"first session partial p99 {p_first:.1f} ms > {max_ratio:g} x warm {p_warm:.1f} ms "
            f"+ {slack_ms:g} ms = {limit:.1f} ms"
        )
    return reasons


def server_warmup(metrics_url: str) -> dict[str, float]:
    """The server's warm-up figures from its ``/metrics`` (``xlgate_warmup_seconds`` and ``_batch_sizes``).

    Raises:
        ValueError: the server does not export them.
    """
    with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=5) as r:
        body = r.read().decode("utf-8", "replace")
    out = {}
    for name in ("seconds", "batch_sizes"):
        m = re.search(rf"^xlgate_warmup_{name}\s+(\S+)$", body, re.MULTILINE)
        if m is None:
            raise ValueError(f"{metrics_url}/metrics has no xlgate_warmup_{name}")
        out[name] = float(m.group(1))
    return out


def run_start(opts: WarmStartOptions, utts: list[Utterance], index: int) -> dict[str, Any]:
    """One fresh server: start it, run the first and the warm session, stop it."""
    log_path = opts.out.with_name(f"{opts.out.stem}-server{index}.log")
    server = ServerProcess(
        ports=Ports.pick(grpc=False, sip=False),
        extra=opts.serve_args,
        log_path=log_path,
        fresh_log=True,
        ready_timeout_s=180.0,
    )
    ready_s = server.start()
    try:
        warmup = server_warmup(server.ports.metrics_url)
        run = RunOptions(
            url=server.ports.ws_url,
            audio_dir=opts.audio_dir,
            streams=opts.streams,
            duration_s=opts.duration_s,
            metrics_url=f"{server.ports.metrics_url}/metrics",
            server_pid=server.pid,
            max_files=opts.max_files,
        )
        first = session_record(run_load(run, utterances=utts).report)
        time.sleep(opts.cooldown_s)
        warm = session_record(run_load(run, utterances=utts).report)
    finally:
        exit_code = server.stop()
    reasons = judge_start(first, warm, max_ratio=opts.max_ratio, slack_ms=opts.slack_ms)
    if exit_code != 0:
        reasons.append(f"server exit status {exit_code} (log {log_path})")
    p_first, p_warm = first["latency_ms"]["partial"]["p99_ms"], warm["latency_ms"]["partial"]["p99_ms"]
    return {
        "start": index,
        "ready_s": round(ready_s, 3),
        "warmup": warmup,
        "server_exit_code": exit_code,
        "first": first,
        "warm": warm,
        "p99_ratio": None if not p_first or not p_warm else round(p_first / p_warm, 3),
        "passed": not reasons,
        "reasons": reasons,
        "server_log": str(log_path),
    }


def warm_start(opts: WarmStartOptions) -> dict[str, Any]:
    """Run the measurement; returns the JSON report (also written to ``opts.out``)."""
    opts.validate()
    utts = load_utterances(
        opts.audio_dir, sample_rate_hz=8000, encoding="pcm_s16le", max_files=opts.max_files
    )
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    starts = []
    for i in range(opts.restarts):
        record = run_start(opts, utts, i)
        starts.append(record)
        print(format_start(record), flush=True)
    ratios = [s["p99_ratio"] for s in starts if s["p99_ratio"] is not None]
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "started_at": started_at,
        "config": {
            "streams": opts.streams,
            "duration_s": opts.duration_s,
            "restarts": opts.restarts,
            "serve_args": list(opts.serve_args),
            "max_ratio": opts.max_ratio,
            "slack_ms": opts.slack_ms,
            "audio_dir": str(opts.audio_dir),
            "files": len(utts),
        },
        "machine": machine_info(),
        "summary": {
            "ready_s_median": statistics.median(s["ready_s"] for s in starts),
            "first_p99_ms_median": _median_p99(starts, "first"),
            "warm_p99_ms_median": _median_p99(starts, "warm"),
            "p99_ratio_median": statistics.median(ratios) if ratios else None,
            "starts_passed": sum(s["passed"] for s in starts),
        },
        "passed": all(s["passed"] for s in starts),
        "starts": starts,
    }
    write_json(report, opts.out)
    return report


def _median_p99(starts: list[dict[str, Any]], session: str) -> float | None:
    values = [
        s[session]["latency_ms"]["partial"]["p99_ms"]
        for s in starts
        if s[session]["latency_ms"]["partial"]["p99_ms"] is not None
    ]
    return statistics.median(values) if values else None


def format_start(record: dict[str, Any]) -> str:
    """One line per fresh start."""
    f, w = record["first"]["latency_ms"]["partial"], record["warm"]["latency_ms"]["partial"]
    return (
        f"start {record['start']}: ready after {record['ready_s']:.1f} s (warm-up "
        f"{record['warmup']['seconds']:.2f} s, batch sizes 1..{record['warmup']['batch_sizes']:.0f}); "
        f"partial p50/p99 first "
        f"{f['p50_ms']}/{f['p99_ms']} ms, warm {w['p50_ms']}/{w['p99_ms']} ms, ratio {record['p99_ratio']} "
        f"{'PASS' if record['passed'] else 'FAIL (' + '; '.join(record['reasons']) + ')'}"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.warmstart", description=__doc__.split("\n")[0])
    p.add_argument("--audio-dir", type=Path, required=True, help="folder of 8 kHz mono 16-bit WAV files")
    p.add_argument("--out", type=Path, required=True, help="JSON report path (server logs go beside it)")
    p.add_argument("--streams", type=int, default=12, help="concurrent real-time streams in each session")
    p.add_argument("--duration-s", type=float, default=10.0, help="length of each session")
    p.add_argument("--restarts", type=int, default=1, help="fresh servers to measure, one after another")
    p.add_argument("--cooldown-s", type=float, default=1.0, help="pause between the two sessions")
    p.add_argument("--serve-args", default="", help="more 'xlgate serve' arguments, e.g. \"--warmup off\"")
    p.add_argument("--max-ratio", type=float, default=1.5, help="pass: first p99 <= ratio x warm p99 + slack")
    p.add_argument("--slack-ms", type=float, default=25.0)
    p.add_argument("--max-files", type=int, default=100)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    opts = WarmStartOptions(
        audio_dir=a.audio_dir,
        out=a.out,
        streams=a.streams,
        duration_s=a.duration_s,
        restarts=a.restarts,
        cooldown_s=a.cooldown_s,
        serve_args=tuple(shlex.split(a.serve_args)),
        max_ratio=a.max_ratio,
        slack_ms=a.slack_ms,
        max_files=a.max_files,
    )
    try:
        report = warm_start(opts)
    except (ValueError, FileNotFoundError, ServerFailed) as exc:
        print(f"loadtest.warmstart: {exc}", file=sys.stderr)
        return 2
    s = report["summary"]
    print(
        f"median over {opts.restarts} start(s): ready {s['ready_s_median']:.1f} s; partial p99 first "
        f"{s['first_p99_ms_median']} ms, warm {s['warm_p99_ms_median']} ms, ratio {s['p99_ratio_median']}; "
        f"{s['starts_passed']}/{opts.restarts} passed"
    )
    print(f"wrote {opts.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
