"""The prepared GPU check (`make gpu-check`) as far as a CPU can take it: its dry run compiles the kernel for
sm_90 without a GPU and writes every table through the same code (Triton interpreter, tiny shapes), its
stages share the eight minutes, and its preflight stops at once, with a message, when CUDA is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from triton_kernels import gpu_check
from triton_kernels.benchutil import NOT_MEASURED
from triton_kernels.rel_attention import bench, cache_vs_recompute

REPO = Path(__file__).resolve().parent.parent
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU stand-in for the GPU run")


@cpu_only
def test_dry_run_tables(tmp_path: Path) -> None:
    """The two table scripts' dry runs (what `gpu_check --dry-run` runs as stages), in this process."""
    assert bench.main(["--dry-run", "--out", str(tmp_path), "--max-rows", "1"]) == 0
    assert cache_vs_recompute.main(["--dry-run", "--out", str(tmp_path)]) == 0
    kernel_rows = json.loads((tmp_path / "rel_attention.json").read_text())["rows"]
    assert kernel_rows and all(set(r["impls"]) == set(bench.IMPLS) for r in kernel_rows)
    for row in kernel_rows:  # every implementation ran and computed the reference's result
        for impl, rec in row["impls"].items():
            assert "error" not in rec, (impl, rec)
            assert rec["max_abs_err"] < 1e-4, (impl, rec)
    recompute = json.loads((tmp_path / "cache_vs_recompute.json").read_text())["rows"]
    assert recompute and all("ratio" in r for r in recompute)
    for stem in ("rel_attention", "cache_vs_recompute"):
        assert NOT_MEASURED in (tmp_path / f"{stem}.md").read_text()


@cpu_only
def test_dry_run_command_compiles_for_hopper_and_reports(tmp_path: Path) -> None:
    """The prepared command end to end on a CPU: preflight, a stage subprocess (the kernel compiled for
    sm_90 without a GPU), the summary files."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("GPU_CHECK_OUT", None)
    proc = subprocess.run([sys.executable, "-m", "triton_kernels.gpu_check", "--dry-run", "--out", str(tmp_path),
                           "--stages", "aot", "--quick"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "gpu-check.json").read_text())
    assert summary["dry_run"] and summary["stages"]["aot"]["status"] == "passed"
    assert (tmp_path / "aot.log").read_text().count(": ok") == 2
    assert "| aot | passed |" in (tmp_path / "gpu-check.md").read_text()


def test_preflight_stops_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert "failed" in json.loads((tmp_path / "gpu-check.json").read_text())["preflight"]


def test_output_folder_is_required(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("GPU_CHECK_OUT", raising=False)
    assert gpu_check.main([]) == 2
    assert "GPU_CHECK_OUT" in capsys.readouterr().err


def test_real_run_runs_every_gpu_test_and_fits_eight_minutes(tmp_path: Path) -> None:
    cmds = gpu_check.stage_commands(tmp_path, dry_run=False, bench_rows=None)
    assert all(f in cmds["tests"] for f in gpu_check.TEST_FILES)
    assert "-m" not in cmds["tests"][2:]  # no marker filter: GPU-marked and CPU-grid tests both run
    assert not any("--dry-run" in c for c in cmds.values())
    stages = gpu_check.DEFAULT_STAGES.split(",")
    assert "aot" not in stages  # the GPU run compiles for real; the offline compile is a dry-run stage
    assert sum(gpu_check.STAGES[s]["timeout"] for s in stages) <= gpu_check.TOTAL_BUDGET_S < 480
    assert all(s["budget"] < s["timeout"] for s in gpu_check.STAGES.values() if "budget" in s)


def test_sweep_covers_the_issue_grid_target_first() -> None:
    rows = bench.sweep(full_grid=False)
    assert rows[0] == (bench.TARGET, torch.float16) and rows[1] == (bench.TARGET, torch.bfloat16)
    shapes = {s for s, _ in rows}
    assert {s.batch for s in shapes} >= set(bench.GRID_B)
    assert {s.heads for s in shapes} >= set(bench.GRID_H)
    assert {s.queries for s in shapes} >= set(bench.GRID_LQ)
    assert {s.mem for s in shapes} >= set(bench.GRID_M)
    assert bench.LARGEST in shapes
    assert len(bench.sweep(full_grid=True)) == 2 + 4 * 3 * 4 * 6


@pytest.mark.parametrize("tests_seconds", [40.0, 200.0])
def test_real_run_shares_the_eight_minutes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           tests_seconds: float) -> None:
    """The GPU run's stage sequence with a fake clock and fake stages: fast tests leave the kernel table
    more time, slow tests less, and the whole stays within the budget with the recompute stage's share kept."""
    clock = [0.0]
    calls: list[tuple[str, list[str], float]] = []

    def fake_stage(name: str, cmd: list[str], out: Path, *, timeout_s: float, env: dict[str, str]) -> dict:
        calls.append((name, cmd, timeout_s))
        clock[0] += min(tests_seconds, timeout_s) if name == "tests" else timeout_s
        return {"status": "passed", "exit_code": 0, "seconds": 0}

    monkeypatch.setattr(gpu_check, "preflight", lambda dry_run: {"device": "fake"})
    monkeypatch.setattr(gpu_check, "run_stage", fake_stage)
    monkeypatch.setattr(gpu_check.time, "monotonic", lambda: clock[0])
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    assert [c[0] for c in calls] == ["tests", "bench", "recompute"]
    bench_cmd, bench_timeout = calls[1][1], calls[1][2]
    budget = float(bench_cmd[bench_cmd.index("--budget-s") + 1])
    assert 0 <= budget < bench_timeout
    assert calls[2][2] == gpu_check.STAGES["recompute"]["timeout"]  # the recompute stage keeps its share
    assert clock[0] <= gpu_check.TOTAL_BUDGET_S
    if tests_seconds < gpu_check.STAGES["tests"]["timeout"]:
        assert bench_timeout > gpu_check.STAGES["bench"]["timeout"]  # the tests' unused time
    assert json.loads((tmp_path / "gpu-check.json").read_text())["stages"]["bench"]["status"] == "passed"
