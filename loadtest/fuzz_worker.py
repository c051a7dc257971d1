"""One parser's long fuzz run, in its own process: ``python -m loadtest.fuzz_worker --parser sip ...``.

Started by ``python -m loadtest fuzz`` (:mod:`loadtest.fuzz`), one process per parser, so each run's
memory is its own. Two engines:

* ``atheris``: libFuzzer, coverage-guided over our instrumented code (``protocols``, the gRPC
  conversion and the targets), starting from the target's seeds and its dictionary; libFuzzer's
  ``-timeout`` ends the run on a hang and leaves the input as ``timeout-*``.
* ``mutate``: a seeded mutation fuzzer of our own (:func:`loadtest.fuzz_targets.mutate` on the seeds,
  plus some random bytes), for where atheris does not install; a SIGALRM watchdog turns a hang into a
  recorded finding.

Both run every input through :class:`Recorder`, which counts inputs, keeps each distinct finding's input
and traceback (an exception other than the parser's typed errors, or a broken property), the slowest
input, and RSS and Python heap blocks after the warm-up and at the end; it writes ``<parser>.json``
every few seconds and when the last input is done (libFuzzer exits the process without returning).
An input is a hang when it uses more than ``--hang-s`` of CPU time: on a shared machine at low priority,
wall time also counts the scheduler's pauses (both are reported).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["Recorder", "main"]

_INSTRUMENTED = ["protocols", "gateway.grpc_api", "gateway.session", "loadtest.fuzz_targets"]
_WRITE_EVERY_S = 5.0
_MAX_SAVED_FINDINGS = 20


class _Hang(Exception):
    """Raised by the watchdog inside an input that ran past the hang limit (mutate engine)."""


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Recorder:
    """Runs inputs through a target and keeps the figures and findings of the run."""

    def __init__(self, target: Any, *, inputs: int, out_dir: Path, hang_s: float, engine: str) -> None:
        self.target = target
        self.inputs = inputs
        self.out_dir = out_dir
        self.hang_s = hang_s
        self.engine = engine
        self.count = 0
        self.findings: dict[str, dict[str, Any]] = {}
        self.finding_inputs = 0
        self.hangs = 0
        self.slowest_s = 0.0  # wall time
        self.slowest_cpu_s = 0.0
        self.slowest_input = b""  # the input that used the most CPU time
        self.total_bytes = 0
        self.started = time.perf_counter()
        self.warm_at = max(1, inputs // 10)
        self.rss_start_mb = _rss_mb()
        self.rss_warm_mb: float | None = None
        self.blocks_warm: int | None = None
        self._next_write = self.started + _WRITE_EVERY_S
        (out_dir / f"{target.name}-findings").mkdir(parents=True, exist_ok=True)

    def __call__(self, data: bytes) -> None:
        """Run one input (the libFuzzer TestOneInput)."""
        start = time.perf_counter()
        cpu_start = time.process_time()
        stopped = False
        try:
            self.target.run(data, None)
        except _Hang:
            stopped = True
            self.hangs += 1
            self._record(data, "hang", "stopped by the watchdog (--timeout-s)")
        except Exception as exc:  # a finding: anything but the parser's own typed refusals
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            key = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"
            self._record(data, key, "".join(traceback.format_exception(exc)))
        cpu = time.process_time() - cpu_start
        self.slowest_s = max(self.slowest_s, time.perf_counter() - start)
        self.count += 1
        self.total_bytes += len(data)
        if cpu > self.slowest_cpu_s:
            self.slowest_cpu_s, self.slowest_input = cpu, data
        if cpu > self.hang_s and not stopped:
            self.hangs += 1
            self._record(data, "hang", f"used {cpu:.3f} s of CPU time")
        if self.count == self.warm_at:
            self.rss_warm_mb = _rss_mb()
            self.blocks_warm = sys.getallocatedblocks()
        if self.count >= self.inputs:
            self.write(complete=True)
        elif self.count % 1024 == 0 and time.perf_counter() > self._next_write:
            self.write(complete=False)
            self._next_write = time.perf_counter() + _WRITE_EVERY_S

    def _record(self, data: bytes, key: str, detail: str) -> None:
        self.finding_inputs += 1
        entry = self.findings.setdefault(key, {"count": 0, "input": None, "detail": detail})
        entry["count"] += 1
        if entry["input"] is None and len(self.findings) <= _MAX_SAVED_FINDINGS:
            name = hashlib.sha1(data).hexdigest()[:16]
            path = self.out_dir / f"{self.target.name}-findings" / f"{name}.bin"
            path.write_bytes(data)
            path.with_suffix(".txt").write_text(f"{key}\n\n{detail}")
            entry["input"] = str(path)

    def write(self, *, complete: bool) -> None:
        """Write ``<parser>.json`` with the figures so far."""
        elapsed = time.perf_counter() - self.started
        slow_path = self.out_dir / f"{self.target.name}-slowest.bin"
        slow_path.write_bytes(self.slowest_input)
        rss_end = _rss_mb()
        blocks = sys.getallocatedblocks()
        report = {
            "parser": self.target.name,
            "about": self.target.about,
            "engine": self.engine,
            "complete": complete,
            "inputs": self.count,
            "inputs_wanted": self.inputs,
            "mean_input_bytes": round(self.total_bytes / max(self.count, 1), 1),
            "elapsed_s": round(elapsed, 1),
            "exec_per_s": round(self.count / elapsed, 1) if elapsed else None,
            "crashes": self.finding_inputs - self.hangs,
            "hangs": self.hangs,
            "hang_limit_s": self.hang_s,
            "findings": self.findings,
            "slowest_s": round(self.slowest_s, 4),
            "slowest_cpu_s": round(self.slowest_cpu_s, 4),
            "slowest_input": str(slow_path),
            "slowest_input_bytes": len(self.slowest_input),
            "memory": {
                "rss_start_mb": round(self.rss_start_mb, 1),
                "rss_after_warmup_mb": None if self.rss_warm_mb is None else round(self.rss_warm_mb, 1),
                "rss_end_mb": round(rss_end, 1),
                "rss_growth_after_warmup_mb": None
                if self.rss_warm_mb is None
                else round(rss_end - self.rss_warm_mb, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "python_blocks_after_warmup": self.blocks_warm,
                "python_blocks_end": blocks,
                "warmup_inputs": self.warm_at,
            },
        }
        path = self.out_dir / f"{self.target.name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(path)


def _dictionary(tokens: Sequence[bytes], path: Path) -> Path:
    lines = ['"' + "".join(f"\\x{b:02x}" for b in token) + '"' for token in tokens if token]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_atheris(a: argparse.Namespace, out_dir: Path) -> None:
    import atheris

    with atheris.instrument_imports(include=_INSTRUMENTED):
        from loadtest.fuzz_targets import TARGETS
    target = TARGETS[a.parser]
    recorder = Recorder(target, inputs=a.inputs, out_dir=out_dir, hang_s=a.hang_s, engine="atheris")
    seeds = out_dir / f"{target.name}-seeds"
    corpus = out_dir / f"{target.name}-corpus"
    for folder in (seeds, corpus):
        folder.mkdir(exist_ok=True)
    for index, seed in enumerate(target.seeds):
        (seeds / f"seed-{index}").write_bytes(seed)
    args = [
        sys.argv[0],
        f"-runs={a.inputs}",
        f"-seed={a.seed or 1}",
        f"-timeout={a.timeout_s}",
        f"-rss_limit_mb={a.rss_limit_mb}",
        f"-max_len={target.max_len}",
        f"-dict={_dictionary(target.tokens, out_dir / f'{target.name}.dict')}",
        f"-artifact_prefix={out_dir / f'{target.name}-findings'}/",
        "-print_final_stats=1",
        str(corpus),
        str(seeds),
    ]
    atheris.Setup(args, recorder)
    atheris.Fuzz()  # does not return: libFuzzer exits when the runs are done


def _run_mutate(a: argparse.Namespace, out_dir: Path) -> None:
    from loadtest.fuzz_targets import TARGETS, mutate, random_mutations

    target = TARGETS[a.parser]
    recorder = Recorder(target, inputs=a.inputs, out_dir=out_dir, hang_s=a.hang_s, engine="mutate")
    rng = random.Random(a.seed)

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise _Hang

    signal.signal(signal.SIGALRM, on_alarm)
    for index in range(a.inputs):
        if index < len(target.seeds):
            data = target.seeds[index]
        elif rng.random() < 0.05:
            data = rng.randbytes(rng.randrange(256))
        else:
            data = mutate(rng.choice(target.seeds), random_mutations(rng, target.tokens))[: target.max_len]
        signal.setitimer(signal.ITIMER_REAL, a.timeout_s)
        try:
            recorder(data)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one parser's fuzzing; figures go to ``<out-dir>/<parser>.json``."""
    p = argparse.ArgumentParser(prog="python -m loadtest.fuzz_worker", description=__doc__)
    p.add_argument("--parser", required=True)
    p.add_argument("--inputs", type=int, required=True)
    p.add_argument("--engine", choices=("atheris", "mutate"), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hang-s", type=float, default=1.0, help="an input using more CPU time is a hang")
    p.add_argument("--timeout-s", type=int, default=10, help="stop an input after this long (wall time)")
    p.add_argument("--rss-limit-mb", type=int, default=2048)
    p.add_argument("--out-dir", type=Path, required=True)
    a = p.parse_args(argv)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    if a.engine == "atheris":
        _run_atheris(a, a.out_dir)
    else:
        _run_mutate(a, a.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
