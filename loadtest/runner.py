"""One load run: spread N streams over P processes, start them together, merge and report.

Workers are spawned (not forked) so each starts with a clean interpreter and its own event loop. The parent
waits until every worker is up, then hands all of them one common ``time.monotonic()`` start, which is
valid across processes because CLOCK_MONOTONIC is system-wide on Linux.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.audio import ENCODINGS, Utterance, load_utterances
from loadtest.client import ClientConfig, Tally, budget_s, run_streams
from loadtest.probes import ServerCpuProbe, ServerStepProbe, check_url, machine_info
from loadtest.stats import summarize_ms
from loadtest.wer import load_refs, wer_report

WORKER_START_TIMEOUT_S = 60.0
START_MARGIN_S = 0.2
RESULT_GRACE_S = 15.0
JOIN_TIMEOUT_S = 5.0
MAX_STREAMS = 10_000
MAX_PROCESSES = 64
STREAMS_PER_PROCESS = 64
MAX_HYPOTHESES_IN_REPORT = 5_000
CLIENT_GIL_SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything a run needs. ``processes=0`` picks one process per 64 streams, up to the core count."""

    url: str
    audio_dir: Path
    streams: int = 1
    processes: int = 0
    duration_s: float | None = None
    encoding: str = "pcm_s16le"
    sample_rate_hz: int = 8000
    interim_results: bool = True
    refs: Path | None = None
    metrics_url: str | None = None
    server_pid: int | None = None
    allow_remote: bool = False
    max_files: int = 1000
    stop_timeout_s: float = 10.0
    # A bearer token for a gateway with authentication on (docs/security.md); never written to the report.
    token: str | None = field(default=None, repr=False)

    def validate(self) -> None:
        """Raises:
        ValueError: an option is out of range or a URL is not allowed.
        """
        if not 1 <= self.streams <= MAX_STREAMS:
            raise ValueError(f"streams must be in 1..{MAX_STREAMS}, got {self.streams}")
        if not 0 <= self.processes <= MAX_PROCESSES:
            raise ValueError(f"processes must be in 0..{MAX_PROCESSES}, got {self.processes}")
        if self.duration_s is not None and not 0 < self.duration_s <= 24 * 3600:
            raise ValueError(f"duration_s must be in (0, 86400], got {self.duration_s}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if self.url.startswith("sip:"):
            from gateway.mrcp_client import parse_sip_uri

            host, _ = parse_sip_uri(self.url)
            check_url(f"sip://{host}", schemes=("sip",), allow_remote=self.allow_remote)
        else:
            check_url(self.url, schemes=("ws", "wss", "grpc"), allow_remote=self.allow_remote)
        if self.metrics_url is not None:
            check_url(self.metrics_url, schemes=("http", "https"), allow_remote=self.allow_remote)

    def num_processes(self) -> int:
        """The process count actually used."""
        if self.processes:
            return min(self.processes, self.streams)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(cores, math.ceil(self.streams / STREAMS_PER_PROCESS)))

    def client_config(self) -> ClientConfig:
        """The per-stream settings derived from these options."""
        return ClientConfig(url=self.url, sample_rate_hz=self.sample_rate_hz, encoding=self.encoding,
                            interim_results=self.interim_results, duration_s=self.duration_s,
                            stop_timeout_s=self.stop_timeout_s, token=self.token)


@dataclass(slots=True)
class RunResult:
    """The JSON-ready report plus the raw samples (seconds) for plots."""

    report: dict[str, Any]
    samples_s: dict[str, np.ndarray]
    hypotheses: list[tuple[str, str]]


def _event_loop_run(main: Coroutine[Any, Any, Tally]) -> Tally:
    # The client's threads (grpcio's completion-queue poller, above all) hand results to the event loop
    # under the GIL; at Python's default 5 ms switch interval a busy loop holds them up to 5 ms at each
    # hand-over, latency the server did not cause. The gateway runs at the same interval (gateway.server).
    sys.setswitchinterval(CLIENT_GIL_SWITCH_INTERVAL_S)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)


def _worker(conn: Connection, utts: list[Utterance], indices: list[int], cfg: ClientConfig,
            num_streams: int) -> None:
    """Worker process body: say ready, wait for the start time, run, send the tally back."""
    try:
        conn.send(("ready", None))
        if not conn.poll(WORKER_START_TIMEOUT_S):
            return
        kind, t0 = conn.recv()
        if kind != "go":
            return
        tally = _event_loop_run(run_streams(utts, indices, cfg=cfg, num_streams=num_streams, t0=t0))
        conn.send(("result", tally))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _run_processes(utts: list[Utterance], cfg: ClientConfig, *, num_streams: int, num_processes: int,
                   on_start: Callable[[], None]) -> Tally:
    ctx = mp.get_context("spawn")
    total = Tally()
    workers: list[tuple[mp.process.BaseProcess, Connection]] = []
    try:
        for k in range(num_processes):
            parent_conn, child_conn = ctx.Pipe()
            indices = list(range(k, num_streams, num_processes))
            proc = ctx.Process(target=_worker, args=(child_conn, utts, indices, cfg, num_streams),
                               name=f"loadtest-worker-{k}", daemon=True)
            proc.start()
            child_conn.close()
            workers.append((proc, parent_conn))
        limit = time.monotonic() + WORKER_START_TIMEOUT_S
        for _, conn in workers:
            if not conn.poll(max(limit - time.monotonic(), 0.0)) or conn.recv()[0] != "ready":
                raise RuntimeError("a load worker did not start in time")
        on_start()
        t0 = time.monotonic() + START_MARGIN_S
        for _, conn in workers:
            conn.send(("go", t0))
        limit = t0 + budget_s(cfg, utts, num_streams=num_streams) + RESULT_GRACE_S
        for _, conn in workers:
            try:
                if not conn.poll(max(limit - time.monotonic(), 0.0)):
                    total.errors["client.worker_timeout"] += 1
                    continue
                kind, payload = conn.recv()
            except EOFError:
                total.errors["client.worker_died"] += 1
                continue
            if kind == "result":
                total.merge(payload)
            else:
                total.errors["client.worker_failed"] += 1
                print(f"loadtest: worker failed: {payload}")
    finally:
        for worker, conn in workers:
            conn.close()
            worker.join(JOIN_TIMEOUT_S)
            if worker.is_alive():
                worker.terminate()
                worker.join(JOIN_TIMEOUT_S)
    return total


def run_load(opts: RunOptions, *, baseline_hyps: Mapping[str, str] | None = None,
             utterances: list[Utterance] | None = None) -> RunResult:
    """Run one load test and build its report.

    Args:
        opts: the run's options.
        baseline_hyps: single-stream hypotheses by file id, to compare WER with; when ``None`` and the run
            itself is single-stream one-pass, the run is its own baseline.
        utterances: already loaded audio (``find-max`` loads it once); read from ``opts.audio_dir`` if None.

    Raises:
        ValueError: invalid options.
    """
    opts.validate()
    utts = utterances if utterances is not None else load_utterances(
        opts.audio_dir, sample_rate_hz=opts.sample_rate_hz, encoding=opts.encoding, max_files=opts.max_files)
    cfg = opts.client_config()
    num_processes = opts.num_processes()
    probe = ServerCpuProbe(pid=opts.server_pid, metrics_url=opts.metrics_url)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    steps_probe = ServerStepProbe(opts.metrics_url)
    marks: dict[str, float | None] = {}
    step_marks: dict[str, dict[str, tuple[float, float]] | None] = {}

    def on_start() -> None:
        step_marks["before"] = steps_probe.sample()
        marks["server_cpu0"] = probe.sample()
        marks["wall0"] = time.monotonic()

    if num_processes == 1:
        on_start()
        tally = _event_loop_run(run_streams(utts, list(range(opts.streams)), cfg=cfg,
                                            num_streams=opts.streams, t0=time.monotonic() + START_MARGIN_S))
    else:
        tally = _run_processes(utts, cfg, num_streams=opts.streams, num_processes=num_processes,
                               on_start=on_start)
    wall0 = marks["wall0"]
    assert wall0 is not None
    wall_s = time.monotonic() - wall0
    server_cpu1 = probe.sample()
    server_steps = ServerStepProbe.report(step_marks.get("before"), steps_probe.sample(), wall_s)
    server_cpu0 = marks["server_cpu0"]

    single_pass = opts.streams == 1 and opts.duration_s is None
    if baseline_hyps is None and single_pass:
        baseline_hyps = first_hypothesis_per_file(tally.hypotheses)
    wer = None
    if opts.refs is not None:
        wer = wer_report(tally.hypotheses, load_refs(opts.refs), baseline_hyps=baseline_hyps)

    server_cpu_s = None if server_cpu0 is None or server_cpu1 is None else server_cpu1 - server_cpu0
    cores = os.cpu_count() or 1
    report: dict[str, Any] = {
        "schema": "xlgate.loadtest.run/1",
        "started_at": started_at,
        "wall_s": round(wall_s, 3),
        "config": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items() if k != "token"},
            "authenticated": opts.token is not None,
            "processes_used": num_processes,
            "mode": "single" if single_pass else ("duration" if opts.duration_s else "one_pass"),
            "files": len(utts),
            "audio_total_s": round(sum(u.duration_s for u in utts), 3),
            "frame_ms": cfg.frame_s * 1000.0,
            "stagger_ms": cfg.stagger_s * 1000.0,
        },
        "machine": machine_info(),
        "counts": {
            "streams": opts.streams,
            "sessions_started": tally.counts["sessions_started"],
            "sessions_completed": tally.counts["sessions_completed"],
            "sessions_truncated": tally.counts["sessions_truncated"],
            "sessions_failed": tally.counts["sessions_failed"],
            "partials": tally.counts["partials"],
            "finals": tally.counts["finals"],
            "audio_sent_s": round(tally.audio_sent_s, 3),
        },
        "latency_ms": {
            "partial": summarize_ms(tally.partial_latency_s),
            "final": summarize_ms(tally.final_latency_s),
            "stop_to_end": summarize_ms(tally.stop_latency_s),
            # MRCP calls only (empty otherwise): START-OF-INPUT after the speech onset was sent, and
            # RECOGNITION-COMPLETE after the last speech was sent minus the Speech-Complete-Timeout asked for.
            "start_of_input": summarize_ms(tally.start_of_input_latency_s),
            "recognition_complete": summarize_ms(tally.complete_latency_s),
        },
        "client_send_lag_ms": summarize_ms(tally.send_lag_s),
        "overruns": {"count": tally.counts["overruns"], "examples": tally.overrun_examples},
        "errors": {"total": sum(tally.errors.values()), "by_code": dict(sorted(tally.errors.items()))},
        "rejections": {"total": sum(tally.rejections.values()),
                       "by_kind": dict(sorted(tally.rejections.items()))},
        "cpu": {
            "server": {
                "source": probe.source,
                "cpu_s": None if server_cpu_s is None else round(server_cpu_s, 3),
                "cores_used": None if server_cpu_s is None else round(server_cpu_s / wall_s, 3),
                "percent_of_machine": None if server_cpu_s is None
                else round(100.0 * server_cpu_s / wall_s / cores, 1),
            },
            "client": {
                "cpu_s": round(tally.client_cpu_s, 3),
                "cores_used": round(tally.client_cpu_s / wall_s, 3),
                "percent_of_machine": round(100.0 * tally.client_cpu_s / wall_s / cores, 1),
                "processes": num_processes,
            },
        },
        "server_steps": server_steps,
        "wer": wer,
        "hypotheses": [{"file_id": f, "text": t} for f, t in tally.hypotheses[:MAX_HYPOTHESES_IN_REPORT]],
    }
    samples = {
        "partial": np.asarray(tally.partial_latency_s),
        "final": np.asarray(tally.final_latency_s),
        "stop_to_end": np.asarray(tally.stop_latency_s),
    }
    return RunResult(report=report, samples_s=samples, hypotheses=tally.hypotheses)


def first_hypothesis_per_file(hyps: list[tuple[str, str]]) -> dict[str, str]:
    """``file_id -> text`` keeping the first session of each file."""
    out: dict[str, str] = {}
    for file_id, text in hyps:
        out.setdefault(file_id, text)
    return out


def load_baseline(path: Path) -> dict[str, str]:
    """Single-stream hypotheses from a previous ``run``/``single`` report.

    Raises:
        ValueError: the file is not such a report.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "hypotheses" not in data:
        raise ValueError(f"{path}: not a loadtest report with 'hypotheses'")
    return first_hypothesis_per_file([(h["file_id"], h["text"]) for h in data["hypotheses"]])


def run_baseline(opts: RunOptions, *, utterances: list[Utterance] | None = None) -> RunResult:
    """The single-stream, one-pass run that WER under load is compared against."""
    return run_load(replace(opts, streams=1, processes=1, duration_s=None), utterances=utterances)
