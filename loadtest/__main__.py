"""Command line: ``python -m loadtest {run,single,find-max,compare,make-audio,fuzz}``."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from loadtest import fuzz
from loadtest.audio import ENCODINGS, load_utterances
from loadtest.compare import PROTOCOLS, compare, compare_at, format_table, parse_protocols, summary_rows
from loadtest.findmax import Criteria, find_max
from loadtest.makeaudio import make_audio
from loadtest.probes import machine_info
from loadtest.report import format_summary, plot_cdf, write_json
from loadtest.runner import RunOptions, RunResult, load_baseline, run_baseline, run_load


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="ws://127.0.0.1:8080/v1/stream", help="server WebSocket URL, grpc://HOST:PORT for the gRPC API, or sip:HOST:PORT for MRCP")
    p.add_argument("--audio-dir", type=Path, required=True, help="folder of 8 kHz mono 16-bit WAV files")
    p.add_argument("--refs", type=Path, help="reference transcripts, id<TAB>text (id = stem or relative path)")
    p.add_argument("--encoding", choices=ENCODINGS, default="pcm_s16le")
    p.add_argument("--sample-rate-hz", type=int, default=8000)
    p.add_argument("--no-interim", action="store_true", help="ask for finals only (interim_results=false)")
    p.add_argument("--processes", type=int, default=0, help="client processes (0: one per 64 streams)")
    p.add_argument("--metrics-url", help="server Prometheus endpoint, for process_cpu_seconds_total")
    p.add_argument("--server-pid", type=int, help="server pid for CPU via psutil (preferred over metrics)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback server")
    p.add_argument("--max-files", type=int, default=1000)
    p.add_argument("--stop-timeout-s", type=float, default=10.0, help="wait for 'end' after 'stop'")
    p.add_argument("--token-file", type=Path,
                   help="file whose first line is the bearer token of a gateway with authentication on")
    p.add_argument("--out", type=Path, required=True, help="JSON report path")
    p.add_argument("--plot", type=Path, help="PNG latency CDF path")


def _options(a: argparse.Namespace, *, streams: int, duration_s: float | None) -> RunOptions:
    return RunOptions(
        url=a.url, audio_dir=a.audio_dir, streams=streams, processes=a.processes, duration_s=duration_s,
        encoding=a.encoding, sample_rate_hz=a.sample_rate_hz, interim_results=not a.no_interim,
        refs=a.refs, metrics_url=a.metrics_url, server_pid=a.server_pid, allow_remote=a.allow_remote,
        max_files=a.max_files, stop_timeout_s=a.stop_timeout_s, token=_token(a.token_file),
    )


def _token(path: Path | None) -> str | None:
    """The first line of ``--token-file``; a token is never taken from the command line (``ps`` shows it)."""
    if path is None:
        return None
    token = path.read_text(encoding="utf-8").partition("\n")[0].strip()
    if not token:
        raise SystemExit(f"--token-file: {path} holds no token on its first line")
    return token


def _baseline(a: argparse.Namespace, opts: RunOptions, utts: Any) -> tuple[dict[str, str] | None, Any]:
    """Single-stream hypotheses: from --baseline, or a fresh single-stream pass when refs are given."""
    if getattr(a, "baseline", None) is not None:
        return load_baseline(a.baseline), None
    if opts.refs is None or a.no_baseline:
        return None, None
    total_s = sum(u.duration_s for u in utts)
    print(f"baseline: 1 stream, one pass over {len(utts)} files ({total_s:.0f} s of audio) ...", flush=True)
    base = run_baseline(opts, utterances=utts)
    wer = base.report["wer"]["load"]["wer"] if base.report["wer"] else None
    print(f"baseline: single-stream WER={'-' if wer is None else f'{100 * wer:.2f}%'}", flush=True)
    hyps: dict[str, str] = {}
    for file_id, text in base.hypotheses:
        hyps.setdefault(file_id, text)
    return hyps, base.report["wer"]


def _cmd_run(a: argparse.Namespace, *, single: bool) -> int:
    duration_s = None if single or not a.duration_s else a.duration_s
    streams = 1 if single else a.streams
    opts = _options(a, streams=streams, duration_s=duration_s)
    if single:
        opts = replace(opts, processes=1)
    opts.validate()
    utts = load_utterances(opts.audio_dir, sample_rate_hz=opts.sample_rate_hz, encoding=opts.encoding,
                           max_files=opts.max_files)
    baseline_hyps = None
    if not (streams == 1 and duration_s is None):
        baseline_hyps, _ = _baseline(a, opts, utts)
    result: RunResult = run_load(opts, baseline_hyps=baseline_hyps, utterances=utts)
    if a.plot is not None:
        plot_cdf(result.samples_s, a.plot, title=f"xlgate latency CDF, {streams} stream(s)")
        result.report["plot"] = str(a.plot)
    write_json(result.report, a.out)
    print(format_summary(result.report))
    print(f"wrote {a.out}" + (f" and {a.plot}" if a.plot else ""))
    return 0 if result.report["errors"]["total"] == 0 and result.report["overruns"]["count"] == 0 else 1


def _cmd_find_max(a: argparse.Namespace) -> int:
    opts = _options(a, streams=max(a.start, 1), duration_s=a.duration_s)
    opts.validate()
    utts = load_utterances(opts.audio_dir, sample_rate_hz=opts.sample_rate_hz, encoding=opts.encoding,
                           max_files=opts.max_files)
    baseline_hyps, baseline_wer = _baseline(a, opts, utts)
    criteria = Criteria(p99_ms=a.p99_ms, max_wer_delta=a.max_wer_delta if baseline_hyps is not None else None)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def show(t: dict[str, Any]) -> None:
        p = t["latency_ms"]["partial"]
        wer = t["wer"]
        wer_txt = "" if wer is None or wer["delta"] is None else f" wer_delta={100 * wer['delta']:+.2f}pts"
        print(f"trial streams={t['streams']:>5} {'PASS' if t['passed'] else 'FAIL'} "
              f"p50={p['p50_ms']} p99={p['p99_ms']} ms errors={t['errors']['total']} "
              f"rejections={t['rejections']['total']}{wer_txt} "
              f"server_cores={t['cpu']['server']['cores_used']} client_cores={t['cpu']['client']['cores_used']}"
              + ("" if t["passed"] else f"  ({'; '.join(t['reasons'])})"), flush=True)

    answer, trials, best = find_max(
        opts, criteria, utterances=utts, baseline_hyps=baseline_hyps, start=a.start,
        max_streams=a.max_streams, max_trials=a.max_trials, tolerance=a.tolerance, cooldown_s=a.cooldown_s,
        on_trial=show,
    )
    out: dict[str, Any] = {
        "schema": "xlgate.loadtest.find_max/1",
        "started_at": started_at,
        "max_streams": answer,
        "criteria": {"p99_ms": a.p99_ms, "errors": 0, "rejections": 0, "overruns": 0,
                     "max_wer_delta": criteria.max_wer_delta},
        "config": {**(best.report["config"] if best else {}), "streams": None, "start": a.start,
                   "search_max_streams": a.max_streams, "max_trials": a.max_trials,
                   "tolerance": a.tolerance, "duration_s": a.duration_s},
        "machine": machine_info(),
        "baseline_wer": baseline_wer,
        "best": None if best is None else {k: best.report[k] for k in (
            "latency_ms", "client_send_lag_ms", "counts", "errors", "rejections", "overruns", "cpu", "wer")},
        "trials": trials,
    }
    if a.plot is not None and best is not None:
        plot_cdf(best.samples_s, a.plot, title=f"xlgate latency CDF at max {answer} streams",
                 target_ms=a.p99_ms)
        out["plot"] = str(a.plot)
    write_json(out, a.out)
    print(f"max streams with partial p99 <= {a.p99_ms:g} ms, no errors, no rejections: {answer}")
    print(f"wrote {a.out}")
    return 0


def _counts(text: str) -> list[int]:
    """``72,80,88`` -> [72, 80, 88].

    Raises:
        ValueError: not a comma-separated list of integers.
    """
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--at must be comma-separated stream counts, got {text!r}") from None


def _cmd_compare(a: argparse.Namespace) -> int:
    protocols = parse_protocols(a.protocols)
    counts = _counts(a.at) if a.at else None
    urls = {"websocket": a.url, "grpc": a.grpc_url, "mrcp": a.sip_url}
    base = _options(a, streams=max(a.start, 1), duration_s=a.duration_s)
    opts_by_protocol = {p: replace(base, url=urls[p]) for p in protocols}
    for opts in opts_by_protocol.values():
        opts.validate()
    utts = load_utterances(base.audio_dir, sample_rate_hz=base.sample_rate_hz, encoding=base.encoding,
                           max_files=base.max_files)
    baselines: dict[str, Any] = {}
    baseline_wer: dict[str, Any] = {}
    for protocol, opts in opts_by_protocol.items():
        if base.refs is not None and not a.no_baseline:
            print(f"{protocol} ", end="", flush=True)
        baselines[protocol], baseline_wer[protocol] = _baseline(a, opts, utts)
    with_wer = base.refs is not None and not a.no_baseline
    criteria = Criteria(p99_ms=a.p99_ms, max_wer_delta=a.max_wer_delta if with_wer else None)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def show(protocol: str, t: dict[str, Any]) -> None:
        p = t["latency_ms"]["partial"]
        print(f"round {t['round']:>2} {protocol:10} streams={t['streams']:>4} {'PASS' if t['passed'] else 'FAIL'} "
              f"p50={p['p50_ms']} p99={p['p99_ms']} ms partials={p['count']} errors={t['errors']['total']} "
              f"rejections={t['rejections']['total']} server_cores={t['cpu']['server']['cores_used']}"
              + ("" if t["passed"] else f"  ({'; '.join(t['reasons'])})"), flush=True)

    if counts is not None:
        results = compare_at(opts_by_protocol, criteria, utterances=utts, baselines=baselines,
                             counts=counts, rounds=a.rounds, cooldown_s=a.cooldown_s, on_trial=show)
    else:
        results = compare(opts_by_protocol, criteria, utterances=utts, baselines=baselines, start=a.start,
                          max_streams=a.max_streams, max_trials=a.max_trials, tolerance=a.tolerance,
                          cooldown_s=a.cooldown_s, on_trial=show)
    rows = summary_rows(results)
    out: dict[str, Any] = {
        "schema": "xlgate.loadtest.compare/1",
        "started_at": started_at,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "criteria": {"p99_ms": a.p99_ms, "errors": 0, "rejections": 0, "overruns": 0,
                     "max_wer_delta": criteria.max_wer_delta},
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k != "func"},
                   "urls": {p: urls[p] for p in protocols}},
        "machine": machine_info(),
        "summary": rows,
        "protocols": {p: {"max_streams": r["max_streams"], "baseline_wer": baseline_wer[p],
                          "best": None if r["best"] is None else {k: r["best"].report[k] for k in (
                              "latency_ms", "client_send_lag_ms", "counts", "errors", "rejections", "overruns",
                              "cpu", "server_steps", "wer")},
                          "passes": r.get("passes"), "trials": r["trials"]} for p, r in results.items()},
    }
    write_json(out, a.out)
    print(format_table(rows, p99_ms=a.p99_ms))
    print(f"wrote {a.out}")
    return 0


def _cmd_make_audio(a: argparse.Namespace) -> int:
    for file_id, text, duration_s in make_audio(a.out):
        print(f"{file_id}  {duration_s:4.1f} s  {text}")
    print(f"wrote {a.out}/cc*.wav and {a.out}/refs.tsv")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m loadtest`` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="N concurrent real-time streams, latency/CPU/WER report")
    _common(run)
    run.add_argument("--streams", type=int, default=1)
    run.add_argument("--duration-s", type=float, default=0.0, help="0: one pass over each stream's files")
    run.add_argument("--baseline", type=Path, help="report of an earlier 'single' run to compare WER with")
    run.add_argument("--no-baseline", action="store_true", help="skip the single-stream WER pass")

    single = sub.add_parser("single", help="one stream, one pass over all files: the WER baseline")
    _common(single)

    fm = sub.add_parser("find-max", help="largest N with partial p99 <= goal, no errors, no rejections")
    _common(fm)
    fm.add_argument("--p99-ms", type=float, default=150.0)
    fm.add_argument("--duration-s", type=float, default=30.0)
    fm.add_argument("--start", type=int, default=1)
    fm.add_argument("--max-streams", type=int, default=1024)
    fm.add_argument("--max-trials", type=int, default=16)
    fm.add_argument("--tolerance", type=float, default=0.05, help="stop when the bracket is within this")
    fm.add_argument("--cooldown-s", type=float, default=2.0)
    fm.add_argument("--max-wer-delta", type=float, default=0.01,
                    help="fail a trial whose WER exceeds single-stream WER by more (absolute; needs --refs)")
    fm.add_argument("--baseline", type=Path, help="report of an earlier 'single' run to compare WER with")
    fm.add_argument("--no-baseline", action="store_true", help="skip the single-stream WER pass")

    cmp = sub.add_parser("compare", help="largest N per protocol (websocket, grpc, mrcp), interleaved trials")
    _common(cmp)
    cmp.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated: websocket,grpc,mrcp")
    cmp.add_argument("--grpc-url", default="grpc://127.0.0.1:50051", help="the same server's gRPC address")
    cmp.add_argument("--sip-url", default="sip:127.0.0.1:5060", help="the same server's SIP address (MRCP)")
    cmp.add_argument("--p99-ms", type=float, default=150.0)
    cmp.add_argument("--duration-s", type=float, default=30.0)
    cmp.add_argument("--start", type=int, default=1)
    cmp.add_argument("--max-streams", type=int, default=1024)
    cmp.add_argument("--max-trials", type=int, default=16, help="per protocol")
    cmp.add_argument("--tolerance", type=float, default=0.05, help="stop when the bracket is within this")
    cmp.add_argument("--cooldown-s", type=float, default=2.0)
    cmp.add_argument("--at", help="comma-separated stream counts: run each --rounds times instead of searching")
    cmp.add_argument("--rounds", type=int, default=3, help="with --at: trials per protocol and count")
    cmp.add_argument("--max-wer-delta", type=float, default=0.01,
                     help="fail a trial whose WER exceeds its protocol's single-stream WER by more (needs --refs)")
    cmp.add_argument("--no-baseline", action="store_true", help="skip the single-stream WER passes")

    mk = sub.add_parser("make-audio", help="espeak-ng contact-center sentences + refs.tsv")
    mk.add_argument("--out", type=Path, required=True)

    fz = sub.add_parser("fuzz", help="fuzz every parser a peer can reach: crashes, hangs, memory (JSON)")
    fuzz.add_arguments(fz)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit status."""
    a = build_parser().parse_args(argv)
    try:
        if a.command == "run":
            return _cmd_run(a, single=False)
        if a.command == "single":
            return _cmd_run(a, single=True)
        if a.command == "find-max":
            return _cmd_find_max(a)
        if a.command == "compare":
            return _cmd_compare(a)
        if a.command == "fuzz":
            return fuzz.run(a)
        return _cmd_make_audio(a)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
