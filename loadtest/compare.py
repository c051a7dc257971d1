"""Capacity of each protocol against one server: ``python -m loadtest compare --protocols websocket,grpc,mrcp``.

For every protocol, the largest number of concurrent real-time sessions whose partial-result p99 stays within
the goal (with no errors, no rejections, no over-runs and, with references, WER within a margin of that
protocol's own single-stream WER): the search of :mod:`loadtest.findmax`, run for all protocols at once.

Theory of operation: the search goes in rounds. In each round every protocol still searching runs one trial
at its own next stream count (:func:`loadtest.findmax.next_streams` on its own bracket), one protocol after
the other with a cool-down between trials; the order rotates from round to round, so no protocol always
runs first or right after the heaviest trial. While the protocols pass, their brackets grow alike, so a
round runs the same N for all of them back to back and whatever the machine does meanwhile hits them alike;
once one fails, its bisection goes its own way. Every trial is a fresh :func:`loadtest.runner.run_load` on
the same audio, with the same pacing and stagger, and partial latency has one definition for all three:
the receive time of a partial minus the send time of the frame holding the audio instant the partial
reaches (WebSocket ``audio_end_ms``, gRPC ``audio_processed``, MRCP INTERMEDIATE-RESULT
``xlgate.audio-end-ms``).

One trial per stream count is one sample of a noisy figure: near the limit the same N passes in one trial
and fails in the next. ``--at N1,N2,... --rounds K`` (:func:`compare_at`) therefore runs every protocol at
fixed counts K times, interleaved the same way (each round goes through the counts in ascending order, the
protocols rotated), and takes as a protocol's answer the largest count it passed in a majority of rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from loadtest.audio import Utterance
from loadtest.findmax import Criteria, judge, next_streams, trial_record
from loadtest.runner import RunOptions, RunResult, run_load

PROTOCOLS = ("websocket", "grpc", "mrcp")
REFERENCE_PROTOCOL = "websocket"


@dataclass(slots=True)
class _Search:
    """One protocol's bracket: largest pass ``lo``, smallest failure ``hi``, and its trials."""

    protocol: str
    opts: RunOptions
    lo: int = 0
    hi: int | None = None
    best: RunResult | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)


def parse_protocols(text: str) -> tuple[str, ...]:
    """``websocket,grpc,mrcp`` -> the protocols in that order.

    Raises:
        ValueError: an unknown or repeated name, or none.
    """
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in PROTOCOLS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"--protocols must list some of {','.join(PROTOCOLS)} once each, got {text!r}")
    return names


def round_order(protocols: Sequence[str], round_index: int) -> list[str]:
    """The protocols of round ``round_index``, rotated by one each round."""
    k = round_index % len(protocols) if protocols else 0
    return [*protocols[k:], *protocols[:k]]


def compare(
    opts_by_protocol: Mapping[str, RunOptions],
    criteria: Criteria,
    *,
    utterances: list[Utterance],
    baselines: Mapping[str, Mapping[str, str] | None],
    start: int = 1,
    max_streams: int = 1024,
    max_trials: int = 16,
    tolerance: float = 0.05,
    cooldown_s: float = 2.0,
    on_trial: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Search every protocol's largest passing stream count, interleaved (see the module docstring).

    Args:
        opts_by_protocol: the run options of each protocol (only the URL differs), in the order given.
        criteria: what a trial must meet.
        utterances: the audio, loaded once and sent by every protocol.
        baselines: each protocol's single-stream hypotheses (``None``: no WER check for it).
        start, max_streams, max_trials, tolerance: as :func:`loadtest.findmax.find_max`, per protocol.
        cooldown_s: pause between two trials (the server ends the previous sessions).
        on_trial: called with the protocol and each trial's record as it completes.

    Returns:
        Per protocol: ``max_streams`` (0 when no count passed), ``trials`` and ``best`` (the full result of
        its largest passing trial, or ``None``).
    """
    searches = {p: _Search(p, opts) for p, opts in opts_by_protocol.items()}
    ran_any = False
    for round_index in range(max_trials):
        planned = []
        for protocol in round_order(list(searches), round_index):
            s = searches[protocol]
            n = next_streams(lo=s.lo, hi=s.hi, start=start, max_streams=max_streams, tolerance=tolerance)
            if n is not None:
                planned.append((s, n))
        if not planned:
            break
        for s, n in planned:
            if ran_any:
                time.sleep(cooldown_s)
            ran_any = True
            result = run_load(
                replace(s.opts, streams=n), baseline_hyps=baselines.get(s.protocol), utterances=utterances
            )
            reasons = judge(result.report, criteria)
            record = {**trial_record(n, result, reasons), "round": round_index}
            s.trials.append(record)
            if on_trial is not None:
                on_trial(s.protocol, record)
            if reasons:
                s.hi = n if s.hi is None else min(s.hi, n)
            elif n > s.lo:
                s.lo, s.best = n, result
    return {p: {"max_streams": s.lo, "trials": s.trials, "best": s.best} for p, s in searches.items()}


def majority(passes: int, rounds: int) -> bool:
    """Whether ``passes`` of ``rounds`` trials is a strict majority."""
    return 2 * passes > rounds


def compare_at(
    opts_by_protocol: Mapping[str, RunOptions],
    criteria: Criteria,
    *,
    utterances: list[Utterance],
    baselines: Mapping[str, Mapping[str, str] | None],
    counts: Sequence[int],
    rounds: int,
    cooldown_s: float = 2.0,
    on_trial: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every protocol at each of ``counts`` streams, ``rounds`` times (see the module docstring).

    Returns:
        Per protocol, as :func:`compare`: ``max_streams`` (the largest count passed in a majority of rounds,
        0 when none was), ``trials``, ``best`` (its last passing trial at that count) and ``passes`` (count ->
        trials passed).

    Raises:
        ValueError: no count, a count below 1, or ``rounds`` below 1.
    """
    ordered = sorted(set(counts))
    if not ordered or ordered[0] < 1 or rounds < 1:
        raise ValueError(f"--at needs stream counts >= 1 and --rounds >= 1, got {list(counts)} and {rounds}")
    trials: dict[str, list[dict[str, Any]]] = {p: [] for p in opts_by_protocol}
    passes: dict[str, dict[int, int]] = {p: dict.fromkeys(ordered, 0) for p in opts_by_protocol}
    last_pass: dict[tuple[str, int], RunResult] = {}
    ran_any = False
    for round_index in range(rounds):
        for n in ordered:
            for protocol in round_order(list(opts_by_protocol), round_index):
                if ran_any:
                    time.sleep(cooldown_s)
                ran_any = True
                result = run_load(replace(opts_by_protocol[protocol], streams=n),
                                  baseline_hyps=baselines.get(protocol), utterances=utterances)
                reasons = judge(result.report, criteria)
                record = {**trial_record(n, result, reasons), "round": round_index}
                trials[protocol].append(record)
                if on_trial is not None:
                    on_trial(protocol, record)
                if not reasons:
                    passes[protocol][n] += 1
                    last_pass[protocol, n] = result
    out: dict[str, dict[str, Any]] = {}
    for protocol in opts_by_protocol:
        held = [n for n in ordered if majority(passes[protocol][n], rounds)]
        best_n = max(held, default=0)
        out[protocol] = {"max_streams": best_n, "trials": trials[protocol],
                         "best": last_pass.get((protocol, best_n)), "passes": passes[protocol]}
    return out


def summary_rows(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per protocol: its answer, the figures of its largest passing trial, and its ratio to
    WebSocket's answer (when WebSocket was measured)."""
    reference = results.get(REFERENCE_PROTOCOL, {}).get("max_streams")
    rows = []
    for protocol, r in results.items():
        best = r["best"]
        report = best.report if best is not None else None
        lat = report["latency_ms"] if report is not None else None
        rows.append(
            {
                "protocol": protocol,
                "max_streams": r["max_streams"],
                "of_websocket": (round(r["max_streams"] / reference, 3) if reference else None),
                "partial_p50_ms": None if lat is None else lat["partial"]["p50_ms"],
                "partial_p99_ms": None if lat is None else lat["partial"]["p99_ms"],
                "partials": None if lat is None else lat["partial"]["count"],
                "start_of_input_p50_ms": None if lat is None else lat["start_of_input"]["p50_ms"],
                "start_of_input_p99_ms": None if lat is None else lat["start_of_input"]["p99_ms"],
                "recognition_complete_p50_ms": None if lat is None else lat["recognition_complete"]["p50_ms"],
                "recognition_complete_p99_ms": None if lat is None else lat["recognition_complete"]["p99_ms"],
                "server_cores": None if report is None else report["cpu"]["server"]["cores_used"],
                "wer": None if report is None or report["wer"] is None else report["wer"]["load"]["wer"],
            }
        )
    return rows


def format_table(rows: Sequence[Mapping[str, Any]], *, p99_ms: float) -> str:
    """The terminal table of :func:`summary_rows`."""

    def f(v: Any, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        f"largest N with partial p99 <= {p99_ms:g} ms, no errors, no rejections (figures at that N):",
        f"{'protocol':10} {'max N':>6} {'of ws':>6} {'p50':>7} {'p99':>7} {'SOI p99':>8} {'RC p99':>8} "
        f"{'srv cores':>9} {'WER':>6}",
    ]
    for r in rows:
        wer = None if r["wer"] is None else 100 * r["wer"]
        lines.append(
            f"{r['protocol']:10} {r['max_streams']:>6} {f(r['of_websocket'], '.2f'):>6} "
            f"{f(r['partial_p50_ms']):>7} {f(r['partial_p99_ms']):>7} {f(r['start_of_input_p99_ms']):>8} "
            f"{f(r['recognition_complete_p99_ms']):>8} {f(r['server_cores'], '.2f'):>9} {f(wer):>6}"
        )
    lines.append(
        "(ms; SOI: START-OF-INPUT after speech onset, RC: RECOGNITION-COMPLETE after speech end minus "
        "the 500 ms Speech-Complete-Timeout; MRCP only)"
    )
    return "\n".join(lines)
