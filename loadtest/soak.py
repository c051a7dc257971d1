"""Soak: ``python -m loadtest.soak --audio-dir DIR --duration-s 3600 --capacity N --load 0.8 --out soak.json``.

Starts a real ``xlgate serve`` (every protocol on) and keeps ``round(capacity x load)`` callers busy for
``duration_s``: each caller makes sessions back to back, thousands in sequence over an hour, on its protocol
(callers are dealt WebSocket, gRPC and MRCP in turn), with call lengths drawn log-uniformly between
``--min-call-s`` and ``--max-call-s``; ``--long-calls K`` callers instead make calls of ``--long-call-s``
(over 30 minutes in the long run). An MRCP call is one RECOGNIZE of one utterance, as an IVR prompt is;
long calls go over WebSocket and gRPC, as agent-assist streams do. No call outlives the duration.

Every ``--sample-s`` the server's own figures are sampled from ``/metrics``: resident memory (the server
and its model process), open file descriptors, asyncio tasks (``xlgate_event_loop_tasks``), RTP ports in use
and live streams. Reported: growth of each from the first window after warm-up to the last window (median
of each; target under 2%), the same figures idle before the load and idle after it, sessions by outcome,
lost finals (a session that did not end cleanly, or ended without a final) and server errors by kind. Exits
1 when a session failed, a final was lost, a server error was counted or the idle figures did not come back.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.faults import Clip, call_audio, idle_figures, load_clips, session, settle
from loadtest.probes import machine_info
from loadtest.report import write_json
from loadtest.serverproc import Ports, ServerProcess, value
from loadtest.sessions import PROTOCOLS, SessionResult

WINDOW_FRACTION = 0.2  # growth compares the medians of the first and last fifth of the samples after warm-up


def draw_call_s(rng: random.Random, *, min_s: float, max_s: float) -> float:
    """A call length, log-uniform in [min_s, max_s] (many short calls, some long ones)."""
    return math.exp(rng.uniform(math.log(min_s), math.log(max_s)))


def model_rss_bytes(srv: ServerProcess) -> float | None:
    """Resident memory of the model process (None with the thread runner)."""
    import psutil

    try:
        return float(psutil.Process(srv.model_pid()).memory_info().rss)
    except (RuntimeError, psutil.Error):
        return None


def sample(srv: ServerProcess, started: float) -> dict[str, float | None]:
    m = srv.metrics()
    return {
        "t_s": round(time.monotonic() - started, 1),
        "rss_bytes": value(m, "process_resident_memory_bytes"),
        "model_rss_bytes": model_rss_bytes(srv),
        "open_fds": value(m, "process_open_fds"),
        "event_loop_tasks": value(m, "xlgate_event_loop_tasks"),
        "rtp_ports_in_use": value(m, "xlgate_rtp_ports_in_use"),
        "live_streams": sum(value(m, "xlgate_live_streams", protocol=p) for p in PROTOCOLS),
    }


def growth(samples: Sequence[dict[str, Any]], key: str, *, warmup_s: float) -> dict[str, Any]:
    """Median of ``key`` over the first and the last window after warm-up, and the change in percent."""
    values = [s[key] for s in samples if s["t_s"] >= warmup_s and s[key] is not None]
    if len(values) < 2:
        return {"first": None, "last": None, "growth_pct": None, "samples": len(values)}
    width = max(1, int(len(values) * WINDOW_FRACTION))
    first, last = statistics.median(values[:width]), statistics.median(values[-width:])
    pct = None if first == 0 else round(100 * (last - first) / first, 2)
    return {"first": first, "last": last, "growth_pct": pct, "samples": len(values)}


async def soak(srv: ServerProcess, clips: Sequence[Clip], args: argparse.Namespace) -> dict[str, Any]:
    callers = max(1, round(args.capacity * args.load))
    rng = random.Random(args.seed)
    idle_before = idle_figures(srv)
    idle_before["rss_bytes"] = value(srv.metrics(), "process_resident_memory_bytes")
    idle_before["model_rss_bytes"] = model_rss_bytes(srv) or 0.0
    before = srv.metrics()
    started = time.monotonic()
    deadline = started + args.duration_s
    results: list[SessionResult] = []
    call_lengths: list[float] = []
    samples: list[dict[str, Any]] = []

    async def caller(index: int) -> None:
        protocol = PROTOCOLS[index % len(PROTOCOLS)]
        long_caller = index < args.long_calls and protocol != "mrcp"
        await asyncio.sleep(index * 0.2)  # staggered start
        offset = index
        while (left := deadline - time.monotonic()) >= args.min_call_s + 1.0:
            length = (
                args.long_call_s
                if long_caller
                else draw_call_s(rng, min_s=args.min_call_s, max_s=args.max_call_s)
            )
            length = min(length, left - 1.0)
            pcm = call_audio(clips, length, offset=offset)[: int(length * 8000)]
            offset += 1
            call_lengths.append(length)
            results.append(await session(protocol, srv.ports, pcm, timeout_s=length + 60))

    async def sampler() -> None:
        while time.monotonic() < deadline:
            samples.append(await asyncio.to_thread(sample, srv, started))
            await asyncio.sleep(args.sample_s)

    sampling = asyncio.create_task(sampler())
    await asyncio.gather(*(caller(i) for i in range(callers)))
    sampling.cancel()
    await asyncio.gather(sampling, return_exceptions=True)
    idle_after, settled = await settle(srv, idle_before)
    idle_after["rss_bytes"] = value(srv.metrics(), "process_resident_memory_bytes")
    idle_after["model_rss_bytes"] = model_rss_bytes(srv) or 0.0
    after = srv.metrics()
    wall_s = time.monotonic() - started
    failures = Counter(r.failure for r in results if r.failure)
    lost = [r for r in results if r.failure is not None or not r.finals]
    errors = {
        key.split("{", 1)[1].rstrip("}"): after[key] - before.get(key, 0.0)
        for key in after
        if key.startswith("xlgate_errors_total{") and after[key] - before.get(key, 0.0) > 0
    }
    ended = {
        key.split("{", 1)[1].rstrip("}"): after[key] - before.get(key, 0.0)
        for key in after
        if key.startswith("xlgate_streams_ended_total{") and after[key] - before.get(key, 0.0) > 0
    }
    warmup_s = min(args.warmup_s, args.duration_s / 4)
    report: dict[str, Any] = {
        "duration_s": args.duration_s,
        "wall_s": round(wall_s, 1),
        "capacity": args.capacity,
        "load": args.load,
        "callers": callers,
        "long_callers": min(args.long_calls, sum(1 for i in range(callers) if PROTOCOLS[i % 3] != "mrcp")),
        "sessions": len(results),
        "sessions_by_protocol": dict(Counter(r.protocol for r in results)),
        "call_s": {
            "min": round(min(call_lengths), 1) if call_lengths else None,
            "median": round(statistics.median(call_lengths), 1) if call_lengths else None,
            "max": round(max(call_lengths), 1) if call_lengths else None,
            "over_30_min": sum(length > 1800 for length in call_lengths),
            "audio_hours": round(sum(call_lengths) / 3600, 2),
        },
        "failures": dict(failures),
        "lost_finals": len(lost),
        "server_errors": errors,
        "streams_ended": ended,
        "growth": {
            key: growth(samples, key, warmup_s=warmup_s)
            for key in ("rss_bytes", "model_rss_bytes", "open_fds", "event_loop_tasks", "rtp_ports_in_use")
        },
        "warmup_s": warmup_s,
        "idle_before": idle_before,
        "idle_after": idle_after,
        "samples": samples,
    }
    report["checks"] = {
        "every session ended cleanly with its finals": not lost,
        "no server error": not errors,
        "live streams, RTP ports and tasks back to idle": settled,
        "open file descriptors back to idle": idle_after["open_fds"] <= idle_before["open_fds"],
    }
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"soak: {'PASS' if report['passed'] else 'FAIL'}: {report['sessions']} sessions "
        f"{report['sessions_by_protocol']} in {report['wall_s']} s, {report['callers']} callers, calls "
        f"{report['call_s']}",
        f"  failures {report['failures']}, lost finals {report['lost_finals']}, "
        f"server errors {report['server_errors']}",
    ]
    for key, g in report["growth"].items():
        lines.append(f"  {key:18s} first {g['first']} last {g['last']} growth {g['growth_pct']}%")
    lines.append(f"  idle before {report['idle_before']}")
    lines.append(f"  idle after  {report['idle_after']}")
    lines += [f"  [{'ok' if ok else 'FAILED'}] {name}" for name, ok in report["checks"].items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--audio-dir", type=Path, required=True, help="8 kHz mono WAV files")
    parser.add_argument("--out", type=Path, required=True, help="JSON report path")
    parser.add_argument("--model", default="bundled", help="the server's --model")
    parser.add_argument("--duration-s", type=float, default=3600.0)
    parser.add_argument(
        "--capacity",
        type=int,
        required=True,
        help="streams the server sustains (make bench / python -m loadtest find-max)",
    )
    parser.add_argument("--load", type=float, default=0.8, help="fraction of capacity kept busy")
    parser.add_argument("--min-call-s", type=float, default=4.0)
    parser.add_argument("--max-call-s", type=float, default=120.0)
    parser.add_argument("--long-calls", type=int, default=0, help="callers making long calls (not MRCP)")
    parser.add_argument("--long-call-s", type=float, default=1900.0, help="length of a long call")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup-s", type=float, default=120.0, help="samples before this are not compared")
    parser.add_argument("--max-files", type=int, default=100)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--server-log", type=Path, help="append the server's JSON log here")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra xlgate serve argument (repeat)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration_s <= 0 or not 0 < args.load <= 2 or args.capacity < 1 or args.sample_s <= 0:
        print(
            "loadtest.soak: --duration-s, --capacity and --sample-s must be positive, --load in (0, 2]",
            file=sys.stderr,
        )
        return 2
    try:
        clips = load_clips(args.audio_dir, max_files=args.max_files)
        max_streams = max(args.capacity * 2, 8)
        srv = ServerProcess(
            model=args.model,
            ports=Ports.pick(),
            log_path=args.server_log,
            extra=("--log-format", "json", "--max-streams", str(max_streams), *args.server_arg),
        )
        with srv:
            ready_s = srv.start()
            report = asyncio.run(soak(srv, clips, args))
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"loadtest.soak: {exc}", file=sys.stderr)
        return 2
    report = {
        "schema": "xlgate.loadtest.soak/1",
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": args.model,
        "server_ready_s": round(ready_s, 2),
        "machine": machine_info(),
        **report,
    }
    report["passed"] = all(report["checks"].values())
    write_json(report, args.out)
    print(format_report(report))
    print(f"wrote {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
