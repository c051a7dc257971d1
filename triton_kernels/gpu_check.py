"""The prepared GPU check: every GPU test and every kernel table, in one command, under 8 minutes.

    make gpu-check GPU_CHECK_OUT=/some/folder            # on a CUDA machine, no network needed
    python -m triton_kernels.gpu_check --out DIR [--dry-run] [--stages tests,bench,recompute]

Runs from the source tree with the machine's own torch and triton (``make gpu-check`` uses ``$(GPU_PYTHON)``,
default ``python3``, never the project's CPU virtual environment). Stages, each a subprocess with a hard
timeout so that one stuck stage cannot eat the slot:

1. preflight (in process, seconds): torch imports and sees a CUDA device, triton imports and compiles and
   runs a trivial kernel on it, pytest imports. Anything missing stops here with exit status 2 and a
   message saying what and how to fix it.
2. tests: ``pytest`` on tests/test_rel_attention*.py (the GPU-marked file and the CPU grid, which runs on the
   GPU when one is present), JUnit XML and log into the output folder.
3. bench: ``triton_kernels.rel_attention.bench`` (kernel vs eager / SDPA / FlexAttention).
4. recompute: ``triton_kernels.rel_attention.cache_vs_recompute``.

Dry runs add a first stage, ``aot``: ``triton_kernels.rel_attention.aot_check`` compiles every launch variant
of the kernel for sm_90 and sm_80 down to a cubin, which needs no GPU and catches what the interpreter
cannot (constructs the GPU compiler rejects).

Outputs in ``$GPU_CHECK_OUT`` (or ``--out``): ``gpu-check.md`` (every table, Markdown), ``gpu-check.json``
(stage status, durations, environment), and each stage's own ``.md``/``.json``/``.log``. Exit status 0 when
every stage passed, 1 when a stage failed (its outputs are still written), 2 when preflight failed.

``--dry-run`` runs the same stages on the CPU under ``TRITON_INTERPRET=1`` with tiny shapes (the tests
stage collects the GPU tests, which skip): it proves the plumbing, not the kernel's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TOTAL_BUDGET_S = 470  # the 8 minutes, less start-up and the summary
# Per-stage hard timeouts (seconds) and the benchmark budgets inside them (a benchmark stops starting new
# rows when its budget runs out and keeps what it measured; the timeout is the backstop).
STAGES: dict[str, dict[str, float]] = {
    "aot": {"timeout": 600},  # dry runs only: compile every launch variant for sm_90 and sm_80 (no GPU needed)
    # First compiles dominate the tests (~30 kernel variants, a few seconds each on an empty Triton cache).
    "tests": {"timeout": 200},
    "bench": {"timeout": 180, "budget": 150},
    "recompute": {"timeout": 85, "budget": 60},
}
TEST_FILES = ["tests/test_rel_attention_gpu.py", "tests/test_rel_attention.py", "tests/test_rel_attention_model.py"]


class PreflightError(RuntimeError):
    """Something the GPU check needs is missing; the message says what and how to fix it."""


def preflight(*, dry_run: bool) -> dict[str, Any]:
    """Check the interpreter, torch, CUDA, triton and pytest; return what was found.

    Raises:
        PreflightError: with a message naming the missing piece.
    """
    found: dict[str, Any] = {"python": sys.executable, "python_version": sys.version.split()[0]}
    try:
        import torch
    except ImportError as exc:
        raise PreflightError(f"cannot import torch ({exc}). Run with a Python that has a CUDA build of torch: "
                             "make gpu-check GPU_PYTHON=/path/to/python") from exc
    found["torch"] = torch.__version__
    found["torch_cuda"] = torch.version.cuda
    try:
        import triton
    except ImportError as exc:
        raise PreflightError(f"cannot import triton ({exc}); torch {torch.__version__}'s CUDA wheels bring "
                             "their own (pip install 'xlgate[gpu]' where there is network)") from exc
    found["triton"] = triton.__version__
    try:
        import pytest
    except ImportError as exc:
        raise PreflightError(f"cannot import pytest ({exc}): the GPU tests need it "
                             "(pip install 'pytest>=8' 'pytest-timeout>=2.3')") from exc
    found["pytest"] = pytest.__version__
    if dry_run:
        found["device"] = "cpu (dry run, TRITON_INTERPRET=1)"
        return found
    if not torch.cuda.is_available():
        why = ("this torch is a CPU-only build" if torch.version.cuda is None else
               f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no device; "
               f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}, check the driver "
               "(nvidia-smi)")
        raise PreflightError(f"no CUDA device: {why}")
    found["device"] = torch.cuda.get_device_name(0)
    found["device_count"] = torch.cuda.device_count()
    try:
        from triton_kernels.smoke import run_smoke_kernel

        run_smoke_kernel()
    except Exception as exc:
        raise PreflightError(f"triton {triton.__version__} cannot compile and run a kernel on "
                             f"{found['device']}: {type(exc).__name__}: {exc}") from exc
    return found


DEFAULT_STAGES = "tests,bench,recompute"
DRY_RUN_STAGES = "aot,tests,bench,recompute"


def stage_commands(out: Path, *, dry_run: bool, bench_rows: int | None, quick: bool = False,
                   budgets: dict[str, float] | None = None) -> dict[str, list[str]]:
    """Each stage's command line; ``budgets`` overrides the benchmarks' budgets (seconds)."""
    budget = {name: spec["budget"] for name, spec in STAGES.items() if "budget" in spec} | (budgets or {})
    py = sys.executable
    aot = [py, "-m", "triton_kernels.rel_attention.aot_check"] + (["--quick", "--arch", "90"] if quick else [])
    bench = [py, "-m", "triton_kernels.rel_attention.bench", "--out", str(out),
             "--budget-s", f"{budget['bench']:.0f}"]
    recompute = [py, "-m", "triton_kernels.rel_attention.cache_vs_recompute", "--out", str(out),
                 "--budget-s", f"{budget['recompute']:.0f}"]
    # --noconftest: tests/conftest.py imports the gateway and its dependencies, which a GPU machine with only
    # torch, triton and pytest lacks; the rel_attention tests need none of its fixtures.
    # -v: one line per finished test in the log, so a stage stopped at its timeout still says what passed.
    tests = [py, "-m", "pytest", "-v", "-p", "no:cacheprovider", "--noconftest", "-rs",
             "--junitxml", str(out / "gpu-tests.xml")]
    if dry_run:
        bench += ["--dry-run"]
        recompute += ["--dry-run"]
        tests += ["-m", "gpu", TEST_FILES[0]]  # collected and skipped: proves the selection and plumbing
    else:
        tests += TEST_FILES
    if bench_rows is not None:
        bench += ["--max-rows", str(bench_rows)]
    return {"aot": aot, "tests": tests, "bench": bench, "recompute": recompute}


def run_stage(name: str, cmd: list[str], out: Path, *, timeout_s: float, env: dict[str, str]) -> dict[str, Any]:
    """Run one stage; its output goes to ``out/<name>.log``. Never raises for the stage's own failure."""
    log_path = out / f"{name}.log"
    t0 = time.monotonic()
    print(f"gpu-check: {name} (timeout {timeout_s:.0f} s): {' '.join(cmd[1:])}", flush=True)
    with log_path.open("w") as log:
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=max(timeout_s, 1), check=False)
            status = "passed" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            status, code = f"timed out after {timeout_s:.0f} s (partial results kept)", None
    elapsed = time.monotonic() - t0
    tail = log_path.read_text(errors="replace").splitlines()[-5:]
    print(f"gpu-check: {name}: {status} in {elapsed:.0f} s" + ("" if code == 0 else "\n    " + "\n    ".join(tail)),
          flush=True)
    return {"status": status, "exit_code": code, "seconds": round(elapsed, 1), "log": log_path.name,
            "command": cmd[1:]}


def _junit_summary(path: Path) -> dict[str, int] | None:
    if not path.is_file():
        return None
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="xlgate prepared GPU check (issue 12)")
    parser.add_argument("--out", help="output folder (default $GPU_CHECK_OUT)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes")
    parser.add_argument("--stages", default=None,
                        help=f"comma-separated subset (default {DEFAULT_STAGES}; dry run {DRY_RUN_STAGES})")
    parser.add_argument("--bench-rows", type=int, default=None, help="limit the kernel table (dry runs)")
    parser.add_argument("--quick", action="store_true", help="aot stage: one variant, sm_90 only")
    args = parser.parse_args(argv)
    out_arg = args.out or os.environ.get("GPU_CHECK_OUT")
    if not out_arg:
        print("gpu-check: set GPU_CHECK_OUT (or --out) to the folder for the tables", file=sys.stderr)
        return 2
    stages = [s for s in (args.stages or (DRY_RUN_STAGES if args.dry_run else DEFAULT_STAGES)).split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        print(f"gpu-check: unknown stages {unknown}; known: {list(STAGES)}", file=sys.stderr)
        return 2
    out = Path(out_arg).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        found = preflight(dry_run=args.dry_run)
    except PreflightError as exc:
        print(f"gpu-check: preflight failed: {exc}", file=sys.stderr)
        (out / "gpu-check.json").write_text(json.dumps({"preflight": f"failed: {exc}"}, indent=2) + "\n")
        return 2
    print("gpu-check: preflight ok: " + ", ".join(f"{k}={v}" for k, v in found.items()), flush=True)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["GPU_CHECK_OUT"] = str(out)
    if args.dry_run:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    commands = stage_commands(out, dry_run=args.dry_run, bench_rows=args.bench_rows, quick=args.quick)
    results: dict[str, Any] = {}
    for name in stages:
        left = TOTAL_BUDGET_S - (time.monotonic() - start) if not args.dry_run else STAGES[name]["timeout"]
        if left < 10:
            results[name] = {"status": "skipped: total time budget spent"}
            continue
        stage_env = dict(env)
        if name == "aot":  # compiling for a GPU target needs the real JIT, not the interpreter
            stage_env.pop("TRITON_INTERPRET", None)
        timeout = min(STAGES[name]["timeout"], left)
        command = commands[name]
        if name == "bench" and not args.dry_run:
            # The kernel table gets whatever the later stages do not need: more when the tests finished
            # early (a warm compiler cache), less when they ran long, so the recompute table still runs.
            later = sum(STAGES[n]["timeout"] for n in stages[stages.index(name) + 1:])
            timeout = min(left, max(30.0, left - later))
            grace = STAGES["bench"]["timeout"] - STAGES["bench"]["budget"]
            command = stage_commands(out, dry_run=False, bench_rows=args.bench_rows,
                                     budgets={"bench": max(timeout - grace, 0.0)})["bench"]
        results[name] = run_stage(name, command, out, timeout_s=timeout, env=stage_env)
    if "tests" in results:
        results["tests"]["junit"] = _junit_summary(out / "gpu-tests.xml")
    total = time.monotonic() - start
    summary = {"dry_run": args.dry_run, "preflight": found, "stages": results, "seconds": round(total, 1)}
    (out / "gpu-check.json").write_text(json.dumps(summary, indent=2) + "\n")
    parts = [f"# xlgate GPU check{' (dry run: CPU, Triton interpreter)' if args.dry_run else ''}", "",
             f"Total {total:.0f} s. Preflight: " + ", ".join(f"{k}={v}" for k, v in found.items()), "",
             "| stage | status | seconds |", "|---|---|---|"]
    parts += [f"| {n} | {r['status']} | {r.get('seconds', '')} |" for n, r in results.items()]
    junit = results.get("tests", {}).get("junit")
    if junit:
        parts += ["", "Tests: " + ", ".join(f"{k} {v}" for k, v in junit.items())]
    for stem in ("rel_attention", "cache_vs_recompute"):
        md = out / f"{stem}.md"
        if md.is_file():
            parts += ["", md.read_text()]
    (out / "gpu-check.md").write_text("\n".join(parts) + "\n")
    print(f"gpu-check: wrote {out / 'gpu-check.md'} and {out / 'gpu-check.json'} ({total:.0f} s)", flush=True)
    ok = all(r.get("exit_code") == 0 for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
