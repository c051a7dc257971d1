"""The prepared GPU check (`make gpu-check`) as far as a CPU can take it: its dry run compiles the kernel for
sm_90 without a GPU and writes every table through the same code (Triton interpreter, tiny shapes), and its
preflight stops at once, with a message, when CUDA is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from triton_kernels import gpu_check
from triton_kernels.benchutil import NOT_MEASURED
from triton_kernels.rel_attention import bench

REPO = Path(__file__).resolve().parent.parent


def test_dry_run_writes_markdown_and_json(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("GPU_CHECK_OUT", None)
    proc = subprocess.run([sys.executable, "-m", "triton_kernels.gpu_check", "--dry-run", "--out", str(tmp_path),
                           "--stages", "aot,bench,recompute", "--bench-rows", "1", "--quick"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "gpu-check.json").read_text())
    assert {s["status"] for s in summary["stages"].values()} == {"passed"}
    kernel_rows = json.loads((tmp_path / "rel_attention.json").read_text())["rows"]
    assert kernel_rows and all(set(r["impls"]) == set(bench.IMPLS) for r in kernel_rows)
    for row in kernel_rows:  # every implementation ran and computed the reference's result
        for impl, rec in row["impls"].items():
            assert "error" not in rec, (impl, rec)
            assert rec["max_abs_err"] < 1e-4, (impl, rec)
    assert "ok" in (tmp_path / "aot.log").read_text()
    recompute = json.loads((tmp_path / "cache_vs_recompute.json").read_text())["rows"]
    assert recompute and all("ratio" in r for r in recompute)
    report = (tmp_path / "gpu-check.md").read_text()
    assert NOT_MEASURED in report and "| kernel |" in report and "Cache vs recompute" in report


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
