"""Largest stream count that keeps partial-latency p99 under a goal with no errors and no rejections.

Exponential growth from ``start`` until a trial fails (or ``max_streams`` passes), then bisection
between the largest pass and the smallest failure. Every trial is a fresh :func:`run_load`. The search
is bounded by ``max_trials`` and stops once the bracket is within ``tolerance`` of the answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from loadtest.audio import Utterance
from loadtest.runner import RunOptions, RunResult, run_load


@dataclass(frozen=True, slots=True)
class Criteria:
    """What a trial must meet to pass."""

    p99_ms: float
    max_wer_delta: float | None = None


def judge(report: Mapping[str, Any], criteria: Criteria) -> list[str]:
    """Reasons a trial fails; an empty list means it passed."""
    reasons: list[str] = []
    partial = report["latency_ms"]["partial"]
    if partial["count"] == 0:
        reasons.append("no partial results")
    elif partial["p99_ms"] > criteria.p99_ms:
        reasons.append(f"partial p99 {partial['p99_ms']:.1f} ms > {criteria.p99_ms:g} ms")
    if report["errors"]["total"]:
        reasons.append(f"{report['errors']['total']} errors {report['errors']['by_code']}")
    if report["rejections"]["total"]:
        reasons.append(f"{report['rejections']['total']} rejections")
    if report["overruns"]["count"]:
        reasons.append(f"{report['overruns']['count']} over-runs (server bug)")
    wer = report.get("wer")
    if criteria.max_wer_delta is not None and wer is not None:
        if wer["delta"] is None:
            reasons.append("WER delta unknown")
        elif wer["delta"] > criteria.max_wer_delta:
            reasons.append(f"WER delta {100 * wer['delta']:+.2f} pts > {100 * criteria.max_wer_delta:.2f} pts")
    return reasons


def trial_record(streams: int, result: RunResult, reasons: list[str]) -> dict[str, Any]:
    """The part of a run report kept for one trial."""
    r = result.report
    wer = r.get("wer")
    return {
        "streams": streams,
        "passed": not reasons,
        "reasons": reasons,
        "processes": r["config"]["processes_used"],
        "wall_s": r["wall_s"],
        "latency_ms": r["latency_ms"],
        "client_send_lag_ms": r["client_send_lag_ms"],
        "counts": r["counts"],
        "errors": r["errors"],
        "rejections": r["rejections"],
        "overruns": r["overruns"],
        "cpu": r["cpu"],
        "wer": None if wer is None else {
            "load": wer["load"]["wer"], "baseline": None if wer["baseline"] is None else wer["baseline"]["wer"],
            "delta": wer["delta"], "deletions": wer["load"]["deletions"],
            "utterances": wer["load"]["utterances"]},
    }


def next_streams(*, lo: int, hi: int | None, start: int, max_streams: int, tolerance: float) -> int | None:
    """The next stream count to try, or ``None`` when the search is over.

    Args:
        lo: largest count that passed (0 if none).
        hi: smallest count that failed, or ``None`` while growing.
        start: first count.
        max_streams: ceiling.
        tolerance: stop when ``hi - lo <= max(1, ceil(lo * tolerance))``.
    """
    if hi is None:
        if lo >= max_streams:
            return None
        return start if lo == 0 else min(2 * lo, max_streams)
    if hi - lo <= max(1, math.ceil(lo * tolerance)):
        return None
    return (lo + hi) // 2


def find_max(
    opts: RunOptions,
    criteria: Criteria,
    *,
    utterances: list[Utterance],
    baseline_hyps: Mapping[str, str] | None,
    start: int = 1,
    max_streams: int = 1024,
    max_trials: int = 16,
    tolerance: float = 0.05,
    cooldown_s: float = 2.0,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[int, list[dict[str, Any]], RunResult | None]:
    """Search the largest passing stream count.

    Returns:
        The answer (0 when no count passed), the trial records in order, and the full result of the
        largest passing trial (for its plot).
    """
    lo, hi = 0, None
    trials: list[dict[str, Any]] = []
    best: RunResult | None = None
    for _ in range(max_trials):
        n = next_streams(lo=lo, hi=hi, start=start, max_streams=max_streams, tolerance=tolerance)
        if n is None:
            break
        if trials:
            time.sleep(cooldown_s)  # let the server drain the previous trial's sessions
        result = run_load(replace(opts, streams=n), baseline_hyps=baseline_hyps, utterances=utterances)
        reasons = judge(result.report, criteria)
        record = trial_record(n, result, reasons)
        trials.append(record)
        if on_trial is not None:
            on_trial(record)
        if reasons:
            hi = n if hi is None else min(hi, n)
        elif n > lo:
            lo, best = n, result
    return lo, trials, best
