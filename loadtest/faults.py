"""Faults, measured: ``python -m loadtest.faults FAULT [FAULT ...] --audio-dir DIR --out report.json``.

The faults run in order against one real ``xlgate serve`` process on loopback with every protocol on (WebSocket,
gRPC, MRCPv2), driven by real clients (:mod:`loadtest.sessions`), with a bounded run time; it prints its
figures and checks, writes them as JSON, and exits 1 when a check fails. docs/reliability.md ("## Faults")
records the figures.

* ``hangup``: callers vanish mid-stream on every protocol (TCP reset, no close, no BYE) while others
  stream beside them. Checked: each vanished session is counted as ``client_closed`` (not an error), its
  stream, RTP port and tasks are released (live streams, ``xlgate_rtp_ports_in_use`` and
  ``xlgate_event_loop_tasks`` back to their idle values), and every other session ends cleanly with its
  finals. Figure: how long after the reset the server counted the close.
* ``rtp``: the same files over MRCP, RTP sent clean and then through a shaper dropping 5% of the packets
  and delaying each by 0-120 ms (60 ms mean: reordering included). Figure: WER of each pass (one scorer,
  streaming_model.scoring) and the change; the server's lost-packet and jitter counters.
* ``model``: the model process is killed (``crash``: SIGKILL) or stopped (``stall``: SIGSTOP) while a
  session per protocol streams. Checked: every live session gets an error (not a hang) within a second
  (stall: within the step timeout plus a second), the runner is restarted and ``/readyz`` turns ready again,
  and new sessions then succeed on every protocol. Figures: time to the error, time to ready.
* ``sigterm``: SIGTERM during load. Checked: every live session on every protocol gets a final after the
  signal and a clean end (WebSocket ``end`` and close 1001; gRPC its finals then UNAVAILABLE; MRCP
  RECOGNITION-COMPLETE), and the server exits 0.
* ``sigkill``: SIGKILL of the server during load, then an immediate restart on the same ports. Checked:
  every live session fails cleanly (a connection error, not a hang) within 2 s, a connection attempt while
  the server is down is refused at once, the restart binds the same ports, and every protocol works again.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.audio import list_audio_files, read_audio
from loadtest.probes import machine_info
from loadtest.report import write_json
from loadtest.serverproc import Ports, ServerProcess, value
from loadtest.sessions import (
    PROTOCOLS,
    SAMPLE_RATE_HZ,
    SessionResult,
    UdpShaper,
    grpc_session,
    mrcp_session,
    ws_session,
)
from loadtest.wer import load_refs, ref_for
from streaming_model.scoring import score_pairs

FAULTS = ("hangup", "rtp", "model", "sigterm", "sigkill")
SETTLE_TIMEOUT_S = 15.0
POLL_S = 0.05
Clip = tuple[str, np.ndarray]


# -- audio -------------------------------------------------------------------------------------------------
def load_clips(audio_dir: Path, *, max_files: int) -> list[Clip]:
    """``(file id, 8 kHz int16 PCM)`` of the folder's audio files.

    Raises:
        ValueError: the folder has none.
    """
    clips = [
        (path.stem, read_audio(path, sample_rate_hz=SAMPLE_RATE_HZ))
        for path in list_audio_files(audio_dir, max_files=max_files)
    ]
    if not clips:
        raise ValueError(f"no audio files in {audio_dir}")
    return clips


def call_audio(clips: Sequence[Clip], seconds: float, *, offset: int = 0, gap_s: float = 0.6) -> np.ndarray:
    """About ``seconds`` of a caller talking: clips in turn from ``offset``, with pauses between them."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE_HZ), dtype=np.int16)
    parts: list[np.ndarray] = []
    total = 0
    index = offset
    while total < seconds * SAMPLE_RATE_HZ:
        pcm = clips[index % len(clips)][1]
        parts += [pcm, gap]
        total += pcm.shape[0] + gap.shape[0]
        index += 1
    return np.concatenate(parts)


def session(
    protocol: str, ports: Ports, pcm: np.ndarray, **kwargs: Any
) -> Coroutine[Any, Any, SessionResult]:
    """One session of ``protocol`` against the server on ``ports``. (An MRCP RECOGNIZE ends at the first
    pause: a fault that must find it live gives it :func:`call_audio` with ``gap_s=0``.)"""
    if protocol == "websocket":
        return ws_session(ports.ws_url, pcm, **kwargs)
    if protocol == "grpc":
        return grpc_session(ports.grpc_target, pcm, **kwargs)
    return mrcp_session(ports.sip_uri, pcm, **kwargs)


async def poll(check: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until ``check()`` held (polled every 50 ms), or None if it did not within ``timeout_s``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < timeout_s:
        if await asyncio.to_thread(check):
            return loop.time() - start
        await asyncio.sleep(POLL_S)
    return None


async def live_sessions(
    ports: Ports, clips: Sequence[Clip], *, per_protocol: int, call_s: float, timeout_s: float, live_s: float
) -> list[asyncio.Task[SessionResult]]:
    """Start ``per_protocol`` sessions of each protocol, each sending about ``call_s`` of
    :func:`call_audio` (MRCP's without pauses, so its RECOGNIZE stays live), and return their tasks after
    ``live_s``, when every one is streaming: the moment a fault is injected."""
    audio, talk = call_audio(clips, call_s), call_audio(clips, call_s, gap_s=0.0)
    tasks = [
        asyncio.create_task(session(p, ports, talk if p == "mrcp" else audio, timeout_s=timeout_s))
        for p in PROTOCOLS
        for _ in range(per_protocol)
    ]
    await asyncio.sleep(live_s)
    return tasks


def idle_figures(srv: ServerProcess) -> dict[str, float]:
    """What must return to its idle value once every session has ended."""
    m = srv.metrics()
    return {
        "live_streams": sum(value(m, "xlgate_live_streams", protocol=p) for p in PROTOCOLS),
        "rtp_ports_in_use": value(m, "xlgate_rtp_ports_in_use"),
        "event_loop_tasks": value(m, "xlgate_event_loop_tasks"),
        "open_fds": value(m, "process_open_fds"),
    }


async def settle(srv: ServerProcess, idle: dict[str, float]) -> tuple[dict[str, float], bool]:
    """Wait until live streams, RTP ports and tasks are back at ``idle`` (bounded); the figures then."""
    last: dict[str, float] = {}

    def back() -> bool:
        nonlocal last
        last = idle_figures(srv)
        return all(last[k] <= idle[k] for k in ("live_streams", "rtp_ports_in_use", "event_loop_tasks"))

    ok = await poll(back, SETTLE_TIMEOUT_S) is not None
    return last, ok


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)


# -- hangup ------------------------------------------------------------------------------------------------
async def fault_hangup(
    srv: ServerProcess, clips: Sequence[Clip], *, vanishers: int, bystanders: int, vanish_after_s: float
) -> dict[str, Any]:
    ports = srv.ports
    idle = idle_figures(srv)
    before = srv.metrics()
    bystander_audio = call_audio(clips, vanish_after_s + 4.0)
    by_tasks = [
        asyncio.create_task(session(p, ports, bystander_audio, timeout_s=120))
        for p in PROTOCOLS
        for _ in range(bystanders)
    ]
    vanish_tasks = {
        p: [
            asyncio.create_task(
                session(
                    p,
                    ports,
                    call_audio(clips, 30, offset=i + 1),
                    vanish_after_s=vanish_after_s + 0.1 * i,
                    timeout_s=60,
                )
            )
            for i in range(vanishers)
        ]
        for p in PROTOCOLS
    }
    release: dict[str, dict[str, Any]] = {}
    for protocol, tasks in vanish_tasks.items():
        results = await asyncio.gather(*tasks)
        last_reset = max((r.vanished_at or r.ended_at) for r in results)
        target = (
            value(before, "xlgate_streams_ended_total", outcome="client_closed", protocol=protocol)
            + vanishers
        )

        def counted(protocol: str = protocol, target: float = target) -> bool:
            m = srv.metrics()
            return (
                value(m, "xlgate_streams_ended_total", outcome="client_closed", protocol=protocol) >= target
            )

        waited = await poll(counted, SETTLE_TIMEOUT_S)
        release[protocol] = {
            "vanished": sum(r.vanished_at is not None for r in results),
            "client_failures": [r.failure for r in results if r.failure],
            # from the last reset to the scrape that showed every close counted (50 ms polls)
            "counted_as_client_closed_after_ms": None
            if waited is None
            else ms(time.monotonic() - last_reset),
        }
    by_results = await asyncio.gather(*by_tasks)
    after_idle, settled = await settle(srv, idle)
    after = srv.metrics()
    checks: dict[str, bool] = {}
    per_protocol: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        closed = value(
            after, "xlgate_streams_ended_total", outcome="client_closed", protocol=protocol
        ) - value(before, "xlgate_streams_ended_total", outcome="client_closed", protocol=protocol)
        errors = value(after, "xlgate_errors_total", kind="internal", protocol=protocol) - value(
            before, "xlgate_errors_total", kind="internal", protocol=protocol
        )
        mine = [r for r in by_results if r.protocol == protocol]
        per_protocol[protocol] = {
            **release[protocol],
            "counted_client_closed": closed,
            "internal_errors": errors,
            "bystanders": len(mine),
            "bystanders_clean_with_finals": sum(r.clean_end and bool(r.text) for r in mine),
            "bystander_failures": [r.failure for r in mine if r.failure],
        }
        checks[f"{protocol}: every vanished session counted as client_closed"] = (
            release[protocol]["vanished"] == vanishers
            and closed == vanishers
            and release[protocol]["counted_as_client_closed_after_ms"] is not None
        )
        checks[f"{protocol}: no internal error"] = errors == 0
        checks[f"{protocol}: every other session ended cleanly with finals"] = per_protocol[protocol][
            "bystanders_clean_with_finals"
        ] == len(mine)
    checks["streams, RTP ports and tasks back to idle"] = settled
    return {
        "vanishers_per_protocol": vanishers,
        "bystanders_per_protocol": bystanders,
        "vanish_after_s": vanish_after_s,
        "protocols": per_protocol,
        "idle_before": idle,
        "idle_after": after_idle,
        "checks": checks,
    }


# -- rtp ---------------------------------------------------------------------------------------------------
async def fault_rtp(
    srv: ServerProcess,
    clips: Sequence[Clip],
    refs: dict[str, str],
    *,
    loss: float,
    jitter_s: float,
    concurrency: int,
    seed: int,
) -> dict[str, Any]:
    sip_uri = srv.ports.sip_uri
    scored = [(file_id, pcm, ref) for file_id, pcm in clips if (ref := ref_for(file_id, refs)) is not None]
    if not scored:
        raise ValueError("no audio file has a reference transcript (--refs)")
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, pcm: np.ndarray, impaired: bool) -> tuple[SessionResult, UdpShaper | None]:
        shaper = UdpShaper(loss=loss, jitter_s=jitter_s, seed=seed + index) if impaired else None
        async with gate:
            return await mrcp_session(sip_uri, pcm, shaper=shaper, timeout_s=pcm.shape[0] / 8000 + 30), shaper

    passes: dict[str, Any] = {}
    for name, impaired in (("clean", False), ("impaired", True)):
        before = srv.metrics()
        outcomes = await asyncio.gather(*(one(i, pcm, impaired) for i, (_, pcm, _) in enumerate(scored)))
        after = srv.metrics()
        counts = score_pairs((ref, r.text) for (_, _, ref), (r, _) in zip(scored, outcomes, strict=True))
        shapers = [s for _, s in outcomes if s is not None]
        jitter_count = value(after, "xlgate_rtp_jitter_seconds_count") - value(
            before, "xlgate_rtp_jitter_seconds_count"
        )
        jitter_sum = value(after, "xlgate_rtp_jitter_seconds_sum") - value(
            before, "xlgate_rtp_jitter_seconds_sum"
        )
        passes[name] = {
            "recognitions": len(outcomes),
            "completed": sum(r.clean_end for r, _ in outcomes),
            "failures": [r.failure for r, _ in outcomes if r.failure],
            "wer": counts.wer,
            "cer": counts.cer,
            "ref_words": counts.ref_words,
            "packets_sent": sum(s.received for s in shapers) if shapers else None,
            "packets_dropped_by_shaper": sum(s.dropped for s in shapers) if shapers else None,
            "server_rtp_packets_received": (
                value(after, "xlgate_rtp_packets_received_total")
                - value(before, "xlgate_rtp_packets_received_total")
            ),
            "server_rtp_packets_lost": (
                value(after, "xlgate_rtp_packets_lost_total") - value(before, "xlgate_rtp_packets_lost_total")
            ),
            "server_mean_jitter_ms": ms(jitter_sum / jitter_count) if jitter_count else None,
            "hypotheses": {fid: r.text for (fid, _, _), (r, _) in zip(scored, outcomes, strict=True)},
        }
    clean, bad = passes["clean"], passes["impaired"]
    delta = None if clean["wer"] is None or bad["wer"] is None else bad["wer"] - clean["wer"]
    checks = {
        "every recognition completed, clean and impaired": (
            clean["completed"] == clean["recognitions"] and bad["completed"] == bad["recognitions"]
        ),
        "the shaper dropped packets and the server counted them lost": (
            bool(bad["packets_dropped_by_shaper"]) and bad["server_rtp_packets_lost"] > 0
        ),
        "the server measured the added jitter": (bad["server_mean_jitter_ms"] or 0)
        > (clean["server_mean_jitter_ms"] or 0),
    }
    return {
        "loss": loss,
        "jitter_ms": ms(jitter_s),
        "delay": "uniform 0 to 2 x jitter per packet",
        "files": len(scored),
        "concurrency": concurrency,
        "clean": clean,
        "impaired": bad,
        "wer_delta": delta,
        "checks": checks,
    }


# -- model -------------------------------------------------------------------------------------------------
async def fault_model(
    srv: ServerProcess,
    clips: Sequence[Clip],
    *,
    kind: str,
    step_timeout_s: float,
    per_protocol: int,
    live_s: float,
    check_call_s: float,
) -> dict[str, Any]:
    ports = srv.ports
    before = srv.metrics()
    # after live_s every session is streaming and has had steps
    tasks = await live_sessions(
        ports, clips, per_protocol=per_protocol, call_s=20.0, timeout_s=60, live_s=live_s
    )
    model_pid = srv.model_pid()
    injected_at = time.monotonic()
    os.kill(model_pid, signal.SIGKILL if kind == "crash" else signal.SIGSTOP)
    results = await asyncio.gather(*tasks)
    ready_after = await poll(lambda: srv.http_status("/readyz") == 200, 60.0)
    ready_s = None if ready_after is None else time.monotonic() - injected_at
    after_fault = srv.metrics()
    fresh = await asyncio.gather(
        *(session(p, ports, call_audio(clips, check_call_s, offset=2), timeout_s=60) for p in PROTOCOLS)
    )
    bound_s = (0.0 if kind == "crash" else step_timeout_s) + 1.0
    per: dict[str, Any] = {}
    checks: dict[str, bool] = {}
    for protocol in PROTOCOLS:
        mine = [r for r in results if r.protocol == protocol]
        error_after = [None if r.failed_at is None else r.failed_at - injected_at for r in mine]
        again = next(r for r in fresh if r.protocol == protocol)
        per[protocol] = {
            "sessions": len(mine),
            "failures": [r.failure for r in mine],
            "error_after_ms": [ms(e) for e in error_after],
            "new_session_after_restart": {
                "clean": again.clean_end,
                "finals": len(again.finals),
                "failure": again.failure,
            },
        }
        checks[f"{protocol}: every live session got an error within {bound_s:g} s"] = all(
            r.failure not in (None, "timeout") and e is not None and e <= bound_s
            for r, e in zip(mine, error_after, strict=True)
        )
        checks[f"{protocol}: a new session after the restart succeeds"] = again.clean_end and bool(again.text)
    cause = "crashed" if kind == "crash" else "stalled"
    restarts = value(after_fault, "xlgate_model_restarts_total", cause=cause) - value(
        before, "xlgate_model_restarts_total", cause=cause
    )
    checks["the model runner was restarted once"] = restarts == 1
    checks["/readyz ready again"] = ready_s is not None
    return {
        "kind": kind,
        "signal": "SIGKILL" if kind == "crash" else "SIGSTOP",
        "step_timeout_ms": ms(step_timeout_s),
        "sessions_per_protocol": per_protocol,
        "protocols": per,
        "ready_again_after_ms": ms(ready_s),
        "model_restarts": restarts,
        "checks": checks,
    }


# -- sigterm -----------------------------------------------------------------------------------------------
async def fault_sigterm(
    srv: ServerProcess, clips: Sequence[Clip], *, per_protocol: int, drain_s: float, live_s: float
) -> dict[str, Any]:
    ports = srv.ports
    tasks = await live_sessions(
        ports, clips, per_protocol=per_protocol, call_s=40.0, timeout_s=90, live_s=live_s
    )
    term_at = time.monotonic()
    srv.signal(signal.SIGTERM)
    results = await asyncio.gather(*tasks)
    exit_code = await asyncio.to_thread(srv.wait, drain_s + 30.0)
    exit_s = time.monotonic() - term_at
    per: dict[str, Any] = {}
    checks: dict[str, bool] = {}
    for protocol in PROTOCOLS:
        mine = [r for r in results if r.protocol == protocol]
        # gRPC's clean end of a drained call is its finals, then UNAVAILABLE (docs/grpc.md)
        clean = [r.clean_end or (protocol == "grpc" and r.failure == "grpc_unavailable") for r in mine]
        after_term = [any(t >= term_at for t in r.final_at) for r in mine]
        per[protocol] = {
            "sessions": len(mine),
            "clean_end": sum(clean),
            "final_after_sigterm": sum(after_term),
            "ends": [r.failure or "clean" for r in mine],
            "ended_after_sigterm_ms": [ms(r.ended_at - term_at) for r in mine],
        }
        checks[f"{protocol}: every live session got a final after SIGTERM and a clean end"] = all(
            clean
        ) and all(after_term)
    checks["the server exited 0"] = exit_code == 0
    return {
        "sessions_per_protocol": per_protocol,
        "drain_timeout_ms": ms(drain_s),
        "protocols": per,
        "exit_code": exit_code,
        "exit_after_ms": ms(exit_s),
        "checks": checks,
    }


# -- sigkill -----------------------------------------------------------------------------------------------
async def fault_sigkill(
    srv: ServerProcess, clips: Sequence[Clip], *, per_protocol: int, live_s: float, check_call_s: float
) -> dict[str, Any]:
    ports = srv.ports
    tasks = await live_sessions(
        ports, clips, per_protocol=per_protocol, call_s=30.0, timeout_s=30, live_s=live_s
    )
    killed_at = time.monotonic()
    srv.kill()
    results = await asyncio.gather(*tasks)
    # While the server is down a caller is refused at once, not left hanging.
    one_second = call_audio(clips, 1.0)[:SAMPLE_RATE_HZ]
    refused = await asyncio.gather(*(session(p, ports, one_second, timeout_s=10) for p in PROTOCOLS))
    restart_s = await asyncio.to_thread(srv.start)
    fresh = await asyncio.gather(
        *(session(p, ports, call_audio(clips, check_call_s, offset=1), timeout_s=60) for p in PROTOCOLS)
    )
    per: dict[str, Any] = {}
    checks: dict[str, bool] = {}
    for protocol in PROTOCOLS:
        mine = [r for r in results if r.protocol == protocol]
        seen = [None if r.failed_at is None else r.failed_at - killed_at for r in mine]
        down = next(r for r in refused if r.protocol == protocol)
        again = next(r for r in fresh if r.protocol == protocol)
        per[protocol] = {
            "sessions": len(mine),
            "failures": [r.failure for r in mine],
            "failure_seen_after_ms": [ms(s) for s in seen],
            "while_down": {"failure": down.failure, "after_ms": ms(down.ended_at - down.started_at)},
            "after_restart": {
                "clean": again.clean_end,
                "finals": len(again.finals),
                "failure": again.failure,
            },
        }
        checks[f"{protocol}: every live session failed cleanly within 2 s"] = all(
            r.failure not in (None, "timeout") and s is not None and s <= 2.0
            for r, s in zip(mine, seen, strict=True)
        )
        checks[f"{protocol}: refused at once while down"] = (
            down.failure not in (None, "timeout") and down.ended_at - down.started_at <= 2.0
        )
        checks[f"{protocol}: works again after the restart"] = again.clean_end and bool(again.text)
    return {
        "sessions_per_protocol": per_protocol,
        "protocols": per,
        "restart_to_ready_ms": ms(restart_s),
        "same_ports": True,
        "checks": checks,
    }


# -- command -----------------------------------------------------------------------------------------------
def run_faults(args: argparse.Namespace) -> dict[str, Any]:
    """Start one server, run ``args.faults`` on it in order (``sigkill`` restarts it, ``sigterm`` ends it),
    stop it; the report (``passed``: every check of every fault)."""
    if "sigterm" in args.faults[:-1]:
        raise ValueError("sigterm stops the server: it can only be the last fault")
    clips = load_clips(args.audio_dir, max_files=args.max_files)
    extra = [
        "--log-format",
        "json",
        "--max-streams",
        str(args.max_streams),
        "--model-step-timeout-ms",
        str(round(args.step_timeout_s * 1000)),
        "--drain-timeout-ms",
        str(round(args.drain_s * 1000)),
    ]
    srv = ServerProcess(model=args.model, ports=Ports.pick(), extra=tuple(extra), log_path=args.server_log)
    started = time.monotonic()
    report: dict[str, Any] = {}
    with srv:
        ready_s = srv.start()

        async def one(fault: str) -> dict[str, Any]:
            if fault == "hangup":
                return await fault_hangup(
                    srv, clips, vanishers=args.sessions, bystanders=1, vanish_after_s=args.vanish_after_s
                )
            if fault == "rtp":
                refs = load_refs(args.refs or args.audio_dir / "refs.tsv")
                return await fault_rtp(
                    srv,
                    clips,
                    refs,
                    loss=args.loss,
                    jitter_s=args.jitter_ms / 1000,
                    concurrency=args.concurrency,
                    seed=args.seed,
                )
            if fault == "model":
                out = {
                    kind: await fault_model(
                        srv,
                        clips,
                        kind=kind,
                        step_timeout_s=args.step_timeout_s,
                        per_protocol=args.sessions,
                        live_s=args.live_s,
                        check_call_s=args.check_call_s,
                    )
                    for kind in args.kinds
                }
                return {
                    **out,
                    "checks": {
                        f"{kind}: {name}": ok for kind, r in out.items() for name, ok in r["checks"].items()
                    },
                }
            if fault == "sigterm":
                return await fault_sigterm(
                    srv, clips, per_protocol=args.sessions, drain_s=args.drain_s, live_s=args.live_s
                )
            return await fault_sigkill(
                srv, clips, per_protocol=args.sessions, live_s=args.live_s, check_call_s=args.check_call_s
            )

        for fault in args.faults:
            fault_started = time.monotonic()
            report[fault] = asyncio.run(one(fault))
            report[fault]["wall_s"] = round(time.monotonic() - fault_started, 1)
    checks = {f"{fault}: {name}": ok for fault in args.faults for name, ok in report[fault]["checks"].items()}
    return {
        "schema": "xlgate.loadtest.faults/1",
        "faults": args.faults,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": args.model,
        "server_ready_s": round(ready_s, 2),
        "wall_s": round(time.monotonic() - started, 1),
        "machine": machine_info(),
        **report,
        "checks": checks,
        "passed": all(checks.values()),
    }


def format_report(report: dict[str, Any]) -> str:
    """The checks, one a line, and the headline figures."""
    lines = []
    for fault in report["faults"]:
        figures = _without(_without(report[fault], "hypotheses"), "checks")
        lines.append(f"== {fault}: {json.dumps(figures)}")
    lines.append(
        f"faults {' '.join(report['faults'])}: {'PASS' if report['passed'] else 'FAIL'} "
        f"({report['wall_s']} s, server ready in {report['server_ready_s']} s)"
    )
    lines += [f"  [{'ok' if ok else 'FAILED'}] {name}" for name, ok in report["checks"].items()]
    return "\n".join(lines)


def _without(data: Any, key: str) -> Any:
    if isinstance(data, dict):
        return {k: _without(v, key) for k, v in data.items() if k != key}
    return data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.faults", description=__doc__.split("\n")[0])
    parser.add_argument(
        "faults",
        nargs="+",
        choices=FAULTS,
        metavar="FAULT",
        help=f"one or more of {', '.join(FAULTS)}, run in order on one server (sigterm last)",
    )
    parser.add_argument(
        "--audio-dir",
        type=Path,
        required=True,
        help="8 kHz mono WAV files (python -m loadtest make-audio makes some, with refs.tsv)",
    )
    parser.add_argument(
        "--refs", type=Path, help="reference transcripts for rtp (default AUDIO_DIR/refs.tsv)"
    )
    parser.add_argument("--model", default="bundled", help="the server's --model")
    parser.add_argument("--out", type=Path, required=True, help="JSON report path")
    parser.add_argument("--server-log", type=Path, help="append the server's JSON log here")
    parser.add_argument("--max-files", type=int, default=100)
    parser.add_argument("--max-streams", type=int, default=64, help="the server's --max-streams")
    parser.add_argument(
        "--sessions",
        type=int,
        default=2,
        help="sessions per protocol (hangup: vanishing ones; others: live ones)",
    )
    parser.add_argument(
        "--vanish-after-s", type=float, default=1.5, help="hangup: audio sent before the reset"
    )
    parser.add_argument("--loss", type=float, default=0.05, help="rtp: packet loss probability")
    parser.add_argument("--jitter-ms", type=float, default=60.0, help="rtp: mean added delay (uniform 0..2x)")
    parser.add_argument("--concurrency", type=int, default=4, help="rtp: concurrent calls")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=("crash", "stall"),
        default=["crash", "stall"],
        help="model: which faults, in order, on one server",
    )
    parser.add_argument(
        "--live-s",
        type=float,
        default=3.0,
        help="model, sigkill, sigterm: seconds the sessions stream before the fault",
    )
    parser.add_argument(
        "--check-call-s",
        type=float,
        default=4.0,
        help="model, sigkill: audio of the session that checks the server works again",
    )
    parser.add_argument("--step-timeout-s", type=float, default=1.0, help="the server's model step timeout")
    parser.add_argument("--drain-s", type=float, default=2.0, help="sigterm: the server's drain timeout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run_faults(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"loadtest.faults: {exc}", file=sys.stderr)
        return 2
    write_json(report, args.out)
    print(format_report(report))
    print(f"wrote {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
