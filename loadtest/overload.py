"""Overload: ``python -m loadtest.overload --audio-dir DIR --capacity N --out FILE.json``.

Starts a fresh ``xlgate serve`` (``loadtest.serverproc``) with ``--max-streams N`` and WebSocket, gRPC and
SIP/MRCP on, then runs three phases of real-time load spread over the protocols:

1. ``before``: a normal load (``--normal-streams``, three quarters of N by default);
2. ``overload``: ``--factor`` x N streams offered (twice the capacity by default); refused clients retry
   after the Retry-After they were given, as real ones do;
3. ``after``: the normal load again, once the overload has ended.

WebSocket and gRPC streams are :func:`loadtest.runner.run_load` runs; SIP calls are
:func:`loadtest.mrcp.run_sessions` callers. Checks, each a reason in the report when it fails:

* admitted streams (WebSocket and gRPC partials together) keep partial p99 within ``--p99-ms`` in every
  phase;
* the overload is real: some streams were refused; and every refusal is the protocol's proper answer:
  WebSocket HTTP 503 with Retry-After at the handshake or close 1013, gRPC RESOURCE_EXHAUSTED, SIP 503
  with Retry-After; nothing else fails (no errors, timeouts, over-runs, other completion causes);
* nothing crashes: the gateway is alive after the phases, counts no internal error
  (``xlgate_errors_total``), logs no traceback and exits 0 on SIGTERM;
* it recovers: the ``after`` phase has no refusal and its p99 is within the bound too.

``--capacity 0`` finds N first with :func:`loadtest.findmax.find_max` (WebSocket streams, partial p99 <=
``--p99-ms``) on a fresh gateway. Prints a line per phase and writes the JSON report.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import re
import shlex
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.audio import Utterance, list_audio_files, load_utterances, read_audio
from loadtest.findmax import Criteria, find_max
from loadtest.mrcp import Recognition, run_sessions
from loadtest.mrcp import report as mrcp_report
from loadtest.probes import machine_info
from loadtest.report import write_json
from loadtest.runner import RunOptions, RunResult, run_load
from loadtest.serverproc import Ports, ServerFailed, ServerProcess
from loadtest.stats import summarize_ms

SCHEMA = "xlgate.loadtest.overload/1"
PROTOCOLS = ("ws", "grpc", "sip")
# Refusals that are the protocol's proper answer to overload (loadtest.client / grpc_client / mrcp keys).
PROPER_REFUSALS = {
    "ws": {"http_503", "close_1013", "overloaded_1013"},
    "grpc": {"grpc_resource_exhausted"},
    "sip": {"refused_503"},
}
# Completion causes that are a served recognition, not a failure of the gateway: 001 no-match is the
# recogniser's verdict on the words (the model's accuracy, docs/model.md), not a refusal or an error.
SIP_ANSWERED = {"cause_001"}
SIP_ROUNDS = 1000  # calls per SIP caller: the phase's deadline ends them first
SETTLE_S = 1.0
SIP_OVERLOAD_DELAY_S = 1.5  # the streams' starts are staggered over 1 s (loadtest.client.STAGGER_S)  # after a phase: its sessions end and free their slots
_ERRORS_LINE = re.compile(r"^xlgate_errors_total\{([^}]*)\}\s+([0-9.eE+-]+)\s*$", re.MULTILINE)
_REJECTED_LINE = re.compile(r"^xlgate_streams_rejected_total\{([^}]*)\}\s+([0-9.eE+-]+)\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class OverloadOptions:
    """One overload measurement."""

    audio_dir: Path
    out: Path
    capacity: int = 0  # 0: find it first
    factor: float = 2.0
    normal_streams: int = 0  # 0: three quarters of the capacity
    duration_s: float = 20.0
    p99_ms: float = 150.0
    protocols: tuple[str, ...] = PROTOCOLS
    serve_args: tuple[str, ...] = ()
    find_duration_s: float = 10.0
    max_files: int = 100

    def validate(self) -> None:
        """Raises:
        ValueError: an option is out of range.
        """
        if not 0 <= self.capacity <= 1000:
            raise ValueError(f"capacity must be in 0..1000 (0: find it), got {self.capacity}")
        if not 1 < self.factor <= 10:
            raise ValueError(f"factor must be in (1, 10], got {self.factor}")
        if not 3 <= self.duration_s <= 3600:
            raise ValueError(f"duration_s must be in [3, 3600], got {self.duration_s}")
        if not set(self.protocols) <= set(PROTOCOLS) or not self.protocols:
            raise ValueError(f"protocols must be some of {PROTOCOLS}, got {self.protocols}")
        if not {"ws", "grpc"} & set(self.protocols):
            raise ValueError("latency is measured on WebSocket or gRPC streams: include ws or grpc")
        if self.normal_streams < 0 or (self.capacity and self.normal_streams > self.capacity):
            raise ValueError(f"normal_streams must be in 0..capacity, got {self.normal_streams}")


def split_streams(total: int, protocols: Sequence[str]) -> dict[str, int]:
    """Share ``total`` streams among the protocols: half WebSocket, the rest evenly (each one at least 1)."""
    weights = {"ws": 2.0, "grpc": 1.0, "sip": 1.0}
    active = [p for p in PROTOCOLS if p in protocols]
    total = max(total, len(active))
    wsum = sum(weights[p] for p in active)
    shares = {p: max(1, math.floor(total * weights[p] / wsum)) for p in active}
    leftover = total - sum(shares.values())
    for p in active:  # what rounding left goes to the first protocols
        if leftover <= 0:
            break
        shares[p] += 1
        leftover -= 1
    return shares


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode("utf-8", "replace"))


def _labelled_totals(body: str, pattern: re.Pattern[str]) -> dict[str, float]:
    return {labels: float(value) for labels, value in pattern.findall(body)}


def run_phase(
    name: str,
    server: ServerProcess,
    utts: list[Utterance],
    clips: list[tuple[str, np.ndarray]],
    shares: dict[str, int],
    duration_s: float,
    *,
    sip_delay_s: float = 0.0,
) -> dict[str, Any]:
    """One phase: every protocol's load at once for ``duration_s`` (the SIP callers ``sip_delay_s``
    later); the phase's report."""
    results: dict[str, Any] = {}
    deadline = time.monotonic() + duration_s

    def stream_load(url: str, streams: int) -> RunResult:
        opts = RunOptions(
            url=url,
            audio_dir=Path("."),
            streams=streams,
            duration_s=duration_s,
            processes=1,
            max_files=len(utts),
        )
        return run_load(opts, utterances=utts)

    def sip_load(sessions: int) -> list[Recognition]:
        time.sleep(sip_delay_s)
        return asyncio.run(
            run_sessions(server.ports.sip_uri, clips, sessions=sessions, rounds=SIP_ROUNDS, deadline=deadline)
        )

    with ThreadPoolExecutor(max_workers=len(shares), thread_name_prefix=f"overload-{name}") as pool:
        stream_futures: dict[str, Future[RunResult]] = {}
        if "ws" in shares:
            stream_futures["ws"] = pool.submit(stream_load, server.ports.ws_url, shares["ws"])
        if "grpc" in shares:
            stream_futures["grpc"] = pool.submit(stream_load, server.ports.grpc_url, shares["grpc"])
        sip_future = pool.submit(sip_load, shares["sip"]) if "sip" in shares else None
        outcomes = {p: f.result() for p, f in stream_futures.items()}
        calls = sip_future.result() if sip_future is not None else None
    partials: list[np.ndarray] = []
    refusals: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    for protocol in ("ws", "grpc"):
        if protocol not in outcomes:
            continue
        result = outcomes[protocol]
        r = result.report
        partials.append(result.samples_s["partial"])
        refusals.update({f"{protocol}.{k}": v for k, v in r["rejections"]["by_kind"].items()})
        failures.update({f"{protocol}.{k}": v for k, v in r["errors"]["by_code"].items()})
        if r["overruns"]["count"]:
            failures[f"{protocol}.overruns"] += r["overruns"]["count"]
        results[protocol] = {k: r[k] for k in ("latency_ms", "counts", "errors", "rejections", "overruns")}
    if calls is not None:
        for call in calls:
            if call.failure is None or call.failure in SIP_ANSWERED:
                continue
            (refusals if call.failure.startswith("refused_") else failures)[f"sip.{call.failure}"] += 1
        results["sip"] = mrcp_report(calls, sessions=shares["sip"], wall_s=duration_s)
        results["sip"]["answered_no_match"] = sum(c.failure in SIP_ANSWERED for c in calls)
    admitted = np.concatenate(partials) if partials else np.zeros(0)
    return {
        "phase": name,
        "offered": shares,
        "duration_s": duration_s,
        "partial_latency_ms": summarize_ms(admitted),
        "refusals": dict(sorted(refusals.items())),
        "failures": dict(sorted(failures.items())),
        "protocols": results,
    }


def judge_phase(phase: dict[str, Any], *, p99_ms: float, expect_refusals: bool) -> list[str]:
    """Reasons a phase fails its checks (empty: it passed)."""
    reasons = []
    latency = phase["partial_latency_ms"]
    if not latency["count"]:
        reasons.append("no partial results from admitted streams")
    elif latency["p99_ms"] > p99_ms:
        reasons.append(f"admitted streams' partial p99 {latency['p99_ms']:.1f} ms > {p99_ms:g} ms")
    improper = {
        k: v
        for k, v in phase["refusals"].items()
        if k.split(".", 1)[1] not in PROPER_REFUSALS[k.split(".", 1)[0]]
    }
    if improper:
        reasons.append(f"refusals that are not the protocol's overload answer: {improper}")
    if phase["failures"]:
        reasons.append(f"failures: {phase['failures']}")
    if expect_refusals and not phase["refusals"]:
        reasons.append("nothing was refused: the offered load did not exceed the capacity")
    if not expect_refusals and phase["refusals"]:
        reasons.append(f"refusals at a normal load: {phase['refusals']}")
    return reasons


def find_capacity(opts: OverloadOptions, utts: list[Utterance]) -> tuple[int, list[dict[str, Any]]]:
    """The largest WebSocket stream count with partial p99 <= ``p99_ms`` (no errors, no refusals), on a
    fresh gateway with a high stream limit."""
    log_path = opts.out.with_name(f"{opts.out.stem}-find-server.log")
    server = ServerProcess(
        ports=Ports.pick(grpc=False, sip=False),
        extra=("--max-streams", "256", *opts.serve_args),
        log_path=log_path,
        fresh_log=True,
        ready_timeout_s=180.0,
    )
    server.start()
    try:
        run = RunOptions(
            url=server.ports.ws_url,
            audio_dir=opts.audio_dir,
            duration_s=opts.find_duration_s,
            metrics_url=f"{server.ports.metrics_url}/metrics",
            max_files=opts.max_files,
        )
        answer, trials, _ = find_max(
            run,
            Criteria(p99_ms=opts.p99_ms),
            utterances=utts,
            baseline_hyps=None,
            start=2,
            max_streams=256,
            max_trials=10,
            tolerance=0.1,
        )
    finally:
        server.stop()
    return answer, trials


def overload(opts: OverloadOptions) -> dict[str, Any]:
    """Run the measurement; returns the JSON report (also written to ``opts.out``).

    Raises:
        ValueError: bad options, or no capacity could be found.
        ServerFailed: the gateway did not start.
    """
    opts.validate()
    utts = load_utterances(
        opts.audio_dir, sample_rate_hz=8000, encoding="pcm_s16le", max_files=opts.max_files
    )
    clips = [
        (p.stem, read_audio(p, sample_rate_hz=8000))
        for p in list_audio_files(opts.audio_dir, max_files=opts.max_files)
    ]
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    capacity, find_trials = opts.capacity, None
    if not capacity:
        capacity, find_trials = find_capacity(opts, utts)
        print(f"capacity found: {capacity} streams with partial p99 <= {opts.p99_ms:g} ms", flush=True)
        if not capacity:
            raise ValueError(f"no stream count met partial p99 <= {opts.p99_ms:g} ms")
    normal = opts.normal_streams or max(1, capacity * 3 // 4)
    offered = max(capacity + 1, round(capacity * opts.factor))
    log_path = opts.out.with_name(f"{opts.out.stem}-server.log")
    server = ServerProcess(
        ports=Ports.pick(grpc="grpc" in opts.protocols, sip="sip" in opts.protocols),
        extra=("--max-streams", str(capacity), "--max-batch-size", str(min(capacity, 32)), *opts.serve_args),
        log_path=log_path,
        fresh_log=True,
        ready_timeout_s=180.0,
    )
    ready_s = server.start()
    phases: list[dict[str, Any]] = []
    crash_reasons: list[str] = []
    try:
        for name, streams in (("before", normal), ("overload", offered), ("after", normal)):
            # In the overload, the SIP callers come once the streams have filled the gateway, so SIP's
            # refusal is exercised too (a caller that got in keeps winning its slot back between calls).
            delay_s = SIP_OVERLOAD_DELAY_S if name == "overload" else 0.0
            phase = run_phase(
                name,
                server,
                utts,
                clips,
                split_streams(streams, opts.protocols),
                opts.duration_s,
                sip_delay_s=delay_s,
            )
            phase["reasons"] = judge_phase(phase, p99_ms=opts.p99_ms, expect_refusals=name == "overload")
            phase["passed"] = not phase["reasons"]
            phases.append(phase)
            print(format_phase(phase), flush=True)
            if not server.alive():
                crash_reasons.append(f"the gateway died during the {name} phase")
                break
            time.sleep(SETTLE_S)
        metrics = _scrape(f"{server.ports.metrics_url}/metrics") if server.alive() else ""
    finally:
        exit_code = server.stop()
    errors = _labelled_totals(metrics, _ERRORS_LINE)
    rejected = _labelled_totals(metrics, _REJECTED_LINE)
    if any(v for v in errors.values()):
        crash_reasons.append(f"the gateway counted errors: {errors}")
    if exit_code != 0:
        crash_reasons.append(f"the gateway exited with {exit_code} on SIGTERM")
    log_text = log_path.read_text(errors="replace")
    if "Traceback" in log_text:
        crash_reasons.append(f"traceback in the gateway's log ({log_path})")
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "started_at": started_at,
        "config": {
            "capacity": capacity,
            "capacity_found": find_trials is not None,
            "factor": opts.factor,
            "offered_streams": offered,
            "normal_streams": normal,
            "duration_s": opts.duration_s,
            "p99_ms": opts.p99_ms,
            "protocols": list(opts.protocols),
            "serve_args": list(opts.serve_args),
            "audio_dir": str(opts.audio_dir),
            "files": len(utts),
        },
        "machine": machine_info(),
        "find_capacity_trials": find_trials,
        "phases": phases,
        "server": {
            "exit_code": exit_code,
            "ready_s": round(ready_s, 3),
            "log": str(log_path),
            "errors_total": errors,
            "streams_rejected_total": rejected,
        },
        "reasons": crash_reasons + [f"{p['phase']}: {r}" for p in phases for r in p["reasons"]],
    }
    report["passed"] = not report["reasons"] and len(phases) == 3
    write_json(report, opts.out)
    return report


def format_phase(phase: dict[str, Any]) -> str:
    """One line per phase."""
    p = phase["partial_latency_ms"]
    return (
        f"{phase['phase']:>8}: offered {phase['offered']}; admitted partials {p['count']} p50 {p['p50_ms']} "
        f"p99 {p['p99_ms']} ms; refusals {phase['refusals'] or 'none'}; failures {phase['failures'] or 'none'} "
        f"{'PASS' if phase['passed'] else 'FAIL (' + '; '.join(phase['reasons']) + ')'}"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.overload", description=__doc__.split("\n")[0])
    p.add_argument("--audio-dir", type=Path, required=True, help="folder of 8 kHz mono 16-bit WAV files")
    p.add_argument("--out", type=Path, required=True, help="JSON report path (server logs go beside it)")
    p.add_argument("--capacity", type=int, default=0, help="the gateway's --max-streams (0: find it first)")
    p.add_argument("--factor", type=float, default=2.0, help="offered load in the overload phase, x capacity")
    p.add_argument("--normal-streams", type=int, default=0, help="load before and after (0: 3/4 of capacity)")
    p.add_argument("--duration-s", type=float, default=20.0, help="length of each phase")
    p.add_argument("--p99-ms", type=float, default=150.0, help="admitted streams' partial p99 bound")
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated: ws, grpc, sip")
    p.add_argument("--serve-args", default="", help="more 'xlgate serve' arguments")
    p.add_argument("--find-duration-s", type=float, default=10.0, help="length of each capacity-search trial")
    p.add_argument("--max-files", type=int, default=100)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    opts = OverloadOptions(
        audio_dir=a.audio_dir,
        out=a.out,
        capacity=a.capacity,
        factor=a.factor,
        normal_streams=a.normal_streams,
        duration_s=a.duration_s,
        p99_ms=a.p99_ms,
        protocols=tuple(p.strip() for p in a.protocols.split(",") if p.strip()),
        serve_args=tuple(shlex.split(a.serve_args)),
        find_duration_s=a.find_duration_s,
        max_files=a.max_files,
    )
    try:
        report = overload(opts)
    except (ValueError, FileNotFoundError, ServerFailed) as exc:
        print(f"loadtest.overload: {exc}", file=sys.stderr)
        return 2
    for reason in report["reasons"]:
        print(f"FAIL: {reason}")
    print(
        f"capacity {report['config']['capacity']}, offered {report['config']['offered_streams']}: "
        f"{'PASS' if report['passed'] else 'FAIL'}; wrote {opts.out}"
    )
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
