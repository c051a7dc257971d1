"""``python -m loadtest fuzz``: fuzz every parser a peer can reach, report inputs, exec/s, crashes, hangs,
the slowest input and memory, and write JSON.

Each parser runs in its own process (:mod:`loadtest.fuzz_worker`), ``--jobs`` at a time; the targets
and what counts as a finding are in :mod:`loadtest.fuzz_targets`. The run passes when no parser has a
crash or a hang and no parser's RSS grew by more than ``--max-rss-growth-mb`` after its warm-up (the first
tenth of its inputs). Findings are saved under ``--work-dir`` as ``<parser>-findings/<sha1>.bin`` with a
``.txt`` traceback beside each; replay one with
``python -c "from loadtest.fuzz_targets import TARGETS; TARGETS['sip'].run(open(P, 'rb').read(), None)"``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.probes import machine_info
from loadtest.report import write_json

__all__ = ["PARSERS", "add_arguments", "run"]

PARSERS = ("sip", "ws-json", "rtp", "mrcp", "rtcp", "sdp", "grammar", "grpc-config")  # slowest first


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``fuzz`` subcommand's options."""
    p.add_argument("--parser", default="all", help=f"comma-separated, or all: {', '.join(PARSERS)}")
    p.add_argument("--inputs", type=int, default=100_000, help="inputs per parser")
    p.add_argument(
        "--engine",
        choices=("auto", "atheris", "mutate"),
        default="auto",
        help="atheris (coverage-guided libFuzzer) when installed, else our seeded mutation fuzzer",
    )
    p.add_argument("--jobs", type=int, default=1, help="parsers fuzzed at once (one process each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hang-s", type=float, default=1.0, help="an input using more CPU time counts as a hang")
    p.add_argument(
        "--timeout-s", type=int, default=10, help="an input is stopped after this long (wall time)"
    )
    p.add_argument(
        "--max-rss-growth-mb",
        type=float,
        default=64.0,
        help="fail a parser whose RSS grew more than this after its warm-up",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path("fuzz-results"),
        help="per-parser figures, findings, slowest inputs (and atheris corpora)",
    )
    p.add_argument("--out", type=Path, required=True, help="JSON report path")


def _engine(choice: str) -> str:
    if choice != "auto":
        return choice
    return "atheris" if importlib.util.find_spec("atheris") is not None else "mutate"


def _verdict(part: dict[str, Any], max_growth_mb: float) -> list[str]:
    problems = []
    if not part.get("complete"):
        problems.append(f"stopped after {part.get('inputs', 0)} of {part.get('inputs_wanted')} inputs")
    if part.get("crashes"):
        problems.append(f"{part['crashes']} crashing inputs")
    if part.get("hangs"):
        problems.append(f"{part['hangs']} hangs")
    growth = part.get("memory", {}).get("rss_growth_after_warmup_mb")
    if growth is not None and growth > max_growth_mb:
        problems.append(f"RSS grew {growth} MB after warm-up")
    return problems


def _libfuzzer_stats(log: str) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for line in log.splitlines():
        if line.startswith("stat::"):
            name, _, value = line[len("stat::") :].partition(":")
            stats[name.strip()] = int(value.strip()) if value.strip().isdigit() else value.strip()
        elif "DONE" in line.split() and "cov:" in line.split():  # "#300\tDONE   cov: 412 ft: 903 ..."
            fields = line.split()
            for key in ("cov:", "ft:"):
                if key in fields:
                    stats[key.rstrip(":")] = int(fields[fields.index(key) + 1])
    return stats


def _start(
    parser: str, a: argparse.Namespace, engine: str, index: int
) -> tuple[subprocess.Popen[bytes], Path]:
    log = a.work_dir / f"{parser}.log"
    command = [
        sys.executable, "-m", "loadtest.fuzz_worker", "--parser", parser, "--inputs", str(a.inputs),
        "--engine", engine, "--seed", str(a.seed + index), "--hang-s", str(a.hang_s),
        "--timeout-s", str(a.timeout_s), "--out-dir", str(a.work_dir),
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    return process, log


def run(a: argparse.Namespace) -> int:
    """Fuzz the chosen parsers; print one line per parser and write the JSON report. 0 when clean."""
    parsers = PARSERS if a.parser == "all" else tuple(p.strip() for p in a.parser.split(","))
    unknown = [p for p in parsers if p not in PARSERS]
    if unknown:
        raise ValueError(f"unknown parser {unknown[0]!r}; expected {', '.join(PARSERS)} or all")
    if a.inputs < 1 or a.jobs < 1:
        raise ValueError("--inputs and --jobs must be at least 1")
    engine = _engine(a.engine)
    a.work_dir.mkdir(parents=True, exist_ok=True)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    started = time.perf_counter()
    waiting = list(enumerate(parsers))
    running: dict[str, tuple[subprocess.Popen[bytes], Path, float]] = {}
    results: dict[str, dict[str, Any]] = {}
    print(
        f"fuzz: engine={engine} inputs={a.inputs} per parser, parsers={','.join(parsers)}, jobs={a.jobs}",
        flush=True,
    )
    while waiting or running:
        while waiting and len(running) < a.jobs:
            index, parser = waiting.pop(0)
            process, log = _start(parser, a, engine, index)
            running[parser] = (process, log, time.perf_counter())
        for parser, (process, log, t0) in list(running.items()):
            if process.poll() is None:
                continue
            del running[parser]
            results[parser] = _collect(parser, a, engine, process.returncode, log, time.perf_counter() - t0)
            print(_line(results[parser]), flush=True)
        time.sleep(0.5)
    report = {
        "schema": "xlgate.loadtest.fuzz/1",
        "started_at": started_at,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "engine": engine,
        "config": {
            "inputs_per_parser": a.inputs,
            "seed": a.seed,
            "hang_s": a.hang_s,
            "timeout_s": a.timeout_s,
            "max_rss_growth_mb": a.max_rss_growth_mb,
            "jobs": a.jobs,
            "nice": os.nice(0),
        },
        "machine": machine_info(),
        "parsers": [results[p] for p in parsers],
        "passed": all(not results[p]["problems"] for p in parsers),
    }
    write_json(report, a.out)
    print(f"fuzz: {'PASS' if report['passed'] else 'FAIL'}; wrote {a.out}")
    return 0 if report["passed"] else 1


def _collect(
    parser: str, a: argparse.Namespace, engine: str, rc: int, log: Path, wall_s: float
) -> dict[str, Any]:
    path = a.work_dir / f"{parser}.json"
    part: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"parser": parser, "inputs": 0}
    part["process_rc"] = rc
    part["wall_s"] = round(wall_s, 1)
    text = log.read_text(errors="replace")
    if engine == "atheris":
        part["libfuzzer"] = _libfuzzer_stats(text)
        if "ERROR: libFuzzer: timeout" in text:
            part["hangs"] = part.get("hangs", 0) + 1
            part["complete"] = False
    if rc != 0 and "Traceback" in text:
        part["error_tail"] = text[-2000:]
    part["problems"] = _verdict(part, a.max_rss_growth_mb)
    return part


def _line(part: dict[str, Any]) -> str:
    memory = part.get("memory", {})
    cov = part.get("libfuzzer", {}).get("cov")
    return (
        f"{part['parser']:<12} inputs={part.get('inputs', 0):>8} exec/s={part.get('exec_per_s')} "
        f"crashes={part.get('crashes')} hangs={part.get('hangs')} slowest={part.get('slowest_cpu_s')} s CPU "
        f"({part.get('slowest_s')} s wall) "
        f"rss={memory.get('rss_after_warmup_mb')}->{memory.get('rss_end_mb')} MB peak={memory.get('peak_rss_mb')} MB"
        + (f" cov={cov}" if cov is not None else "")
        + (f"  PROBLEMS: {'; '.join(part['problems'])}" if part["problems"] else "")
    )
