"""Fused relative attention against three PyTorch baselines; Markdown + JSON tables.

    python -m triton_kernels.rel_attention.bench [--out DIR] [--budget-s S] [--dry-run] [--full-grid]

Implementations, all computing the same (B, H, Lq, E) output from the same data:

* ``kernel``: the Triton kernel, reading each stream's ring straight from the slab by slot index.
* ``eager`` (a): Transformer-XL reference style (kimiyoung/transformer-xl mem_transformer.py): ``cat([mems,
  w])`` of keys/values, einsum for the content term, one einsum for the compact position table, the
  rel-shift as a skewed strided view (two-sided distances), masked softmax, einsum.
* ``sdpa`` (b): ``scaled_dot_product_attention(q + u, k, v, attn_mask=bias)`` where the bias is the shifted
  position term plus the mask, materialised every call (its time includes the table GEMM, shift and mask).
* ``flex`` (c): compiled FlexAttention whose ``score_mod`` adds the position term gathered from the compact
  table by ``q_idx - kv_idx`` and masks invalid keys (the table GEMM is inside the compiled function).

The baselines get each batch's keys already contiguous in memory order (as ``cat([mems, w])`` expects):
the gather out of the slab that a model without the kernel must also do (``index_select`` of the rings)
is *not* charged to them, so the comparison favours the baselines. Every implementation is timed without
and with CUDA-graph replay; the ratios use the graph times. FLOP and byte counts are the problem's minimum
(useful) work: content and value products, the compact position product, and one read of q, the keys,
values and position table and one write of the output.

The sweep: the target point (B=64, H=6, Lq=8, M=256) in fp16 and bf16, the largest shape (B=256, H=8,
Lq=16, M=3800), then each axis of the issue's grid (B in 1,16,64,256; H in 4,6,8; Lq in 1,4,8,16; M in
64..3800) varied alone around the target point; ``--full-grid`` runs the full cartesian product instead
(far beyond an 8-minute budget). Rows that do not fit in ``--budget-s`` are listed as skipped.

Dimension legend: B streams, H heads, Lq queries, E head width, M memory, N = M + Lq keys, P positions.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from triton_kernels import benchutil
from triton_kernels.rel_attention.cases import Shape, make_inputs
from triton_kernels.rel_attention.reference import logical_keys, rel_attention_reference

IMPLS = ("kernel", "eager", "sdpa", "flex")
TARGET = Shape(64, 6, 8, 256)
LARGEST = Shape(256, 8, 16, 3800)
GRID_B, GRID_H, GRID_LQ, GRID_M = (1, 16, 64, 256), (4, 6, 8), (1, 4, 8, 16), (64, 128, 256, 512, 800, 3800)
# Issue 12 targets at the target point (kernel speed-up over each baseline) and at the largest shapes.
SPEEDUP_TARGETS = {"eager": 4.0, "sdpa": 2.0, "flex": 1.2}
BANDWIDTH_TARGET = 0.60
RESERVE_S = {"flex": 45.0}  # budget (s) that must be left to start an implementation's row (default 8)
DRY_RUN_SHAPES = [Shape(2, 2, 4, 6, 16), Shape(3, 2, 1, 0, 16), Shape(2, 1, 3, 70, 32)]


def sweep(full_grid: bool) -> list[tuple[Shape, torch.dtype]]:
    """Rows in the order they are measured (most important first)."""
    if full_grid:
        shapes = [Shape(b, h, lq, m) for b, h, lq, m in itertools.product(GRID_B, GRID_H, GRID_LQ, GRID_M)]
        return [(TARGET, torch.float16), (TARGET, torch.bfloat16)] + [(s, torch.float16) for s in shapes]
    rows = [(TARGET, torch.float16), (TARGET, torch.bfloat16), (LARGEST, torch.float16)]
    t = TARGET
    one_axis = ([Shape(b, t.heads, t.chunk, t.mem) for b in GRID_B] + [Shape(t.batch, h, t.chunk, t.mem) for h in GRID_H]
                + [Shape(t.batch, t.heads, lq, t.mem) for lq in GRID_LQ]
                + [Shape(t.batch, t.heads, t.chunk, m) for m in GRID_M])
    for s in one_axis:
        if (s, torch.float16) not in rows:
            rows.append((s, torch.float16))
    rows.append((LARGEST, torch.bfloat16))
    return rows


def work(shape: Shape, dtype: torch.dtype) -> tuple[float, float]:
    """Useful FLOPs and minimum bytes of one call."""
    b, h, lq, e, n, p = shape.batch, shape.heads, shape.queries, shape.head_dim, shape.keys, shape.positions
    flops = 2.0 * b * h * lq * n * e * 2 + 2.0 * b * h * lq * p * e
    elems = b * h * lq * e * 2 + b * h * n * e * 2 + h * p * e + 2 * h * e
    return flops, elems * torch.empty((), dtype=dtype).element_size()


def skew(table: torch.Tensor, keys: int) -> torch.Tensor:
    """Two-sided rel-shift as a strided view: (B, H, Lq, P) with P = N + Lq - 1 -> (B, H, Lq, N) where
    out[i, c] = table[i, i - c + N - 1] (Transformer-XL's pad-and-reshape trick, without the copy)."""
    flipped = table.flip(-1).contiguous()  # (B, H, Lq, P): column p' holds distance row P - 1 - p'
    b, h, lq, p = flipped.shape
    return flipped.as_strided((b, h, lq, keys), (h * lq * p, lq * p, p - 1, 1),
                              flipped.storage_offset() + lq - 1)


class Problem:
    """One shape's inputs for every implementation, on one device (built once, outside the timings)."""

    def __init__(self, shape: Shape, dtype: torch.dtype, device: torch.device, seed: int = 0) -> None:
        self.shape = shape
        mem, lq = shape.mem, shape.queries
        # Ragged positions: a quarter of the streams still filling their memory.
        frames = [mem + 7 * i if i % 4 else (i * 37) % (mem + 1) for i in range(shape.batch)]
        self.q, self.k_ring, self.v_ring, self.kw = make_inputs(shape, dtype=dtype, device=device,
                                                                frames=frames, seed=seed)
        # Logical order for the baselines: memory (oldest first), chunk, look-ahead.
        logical = logical_keys(self.kw["frames"], ring=shape.mem + shape.chunk, chunk=shape.chunk)
        order = logical.argsort(dim=1)  # (B, W): physical slot of each logical key
        slots = self.kw["slots"]
        idx = order[:, None, :, None].expand(-1, shape.heads, -1, shape.head_dim)
        keys = self.k_ring[slots].gather(2, idx)  # (B, H, W, E)
        values = self.v_ring[slots].gather(2, idx)
        self.mem_k, self.chunk_k = keys[:, :, :mem].contiguous(), keys[:, :, mem:].contiguous()
        self.mem_v, self.chunk_v = values[:, :, :mem].contiguous(), values[:, :, mem:].contiguous()
        if shape.right:
            self.chunk_k = torch.cat([self.chunk_k, self.kw["k_right"]], dim=2)
            self.chunk_v = torch.cat([self.chunk_v, self.kw["v_right"]], dim=2)
        self.scale = 1.0 / math.sqrt(shape.head_dim)
        assert self.chunk_k.shape[2] == lq

    def tensors(self) -> tuple[torch.Tensor, ...]:
        kw = self.kw
        return (self.q, self.mem_k, self.chunk_k, self.mem_v, self.chunk_v, kw["frames"], kw["lengths"],
                kw["pos_keys"], kw["bias_u"], kw["bias_v"])


def _mask(frames: torch.Tensor, lengths: torch.Tensor, mem: int, keys: int) -> torch.Tensor:
    c = torch.arange(keys, device=frames.device)
    return (c[None, :] >= mem - frames[:, None]) & (c[None, :] < mem + lengths[:, None])  # (B, N)


def eager_attention(q, mem_k, chunk_k, mem_v, chunk_v, frames, lengths, r, u, vb):  # type: ignore[no-untyped-def]
    """Baseline (a), in mem_transformer.py's style."""
    mem = mem_k.shape[2]
    k = torch.cat([mem_k, chunk_k], dim=2)  # (B, H, N, E)
    v = torch.cat([mem_v, chunk_v], dim=2)
    n, scale = k.shape[2], 1.0 / math.sqrt(q.shape[-1])
    ac = torch.einsum("bhid,bhjd->bhij", q + u[None, :, None], k)  # (B, H, Lq, N)
    bd = skew(torch.einsum("bhid,hpd->bhip", q + vb[None, :, None], r), n)  # (B, H, Lq, N)
    score = (ac + bd) * scale
    score = score.masked_fill(~_mask(frames, lengths, mem, n)[:, None, None, :], float("-inf"))
    prob = F.softmax(score.float(), dim=-1).to(q.dtype)
    return torch.einsum("bhij,bhjd->bhid", prob, v)


def sdpa_attention(q, mem_k, chunk_k, mem_v, chunk_v, frames, lengths, r, u, vb):  # type: ignore[no-untyped-def]
    """Baseline (b): the position term and mask as SDPA's additive bias (WeNet's route)."""
    mem = mem_k.shape[2]
    k = torch.cat([mem_k, chunk_k], dim=2)
    v = torch.cat([mem_v, chunk_v], dim=2)
    n, scale = k.shape[2], 1.0 / math.sqrt(q.shape[-1])
    bd = skew(torch.einsum("bhid,hpd->bhip", q + vb[None, :, None], r), n)
    bias = (bd * scale).masked_fill(~_mask(frames, lengths, mem, n)[:, None, None, :], float("-inf"))
    return F.scaled_dot_product_attention(q + u[None, :, None], k, v, attn_mask=bias, scale=scale)


def flex_attention_fn(q, mem_k, chunk_k, mem_v, chunk_v, frames, lengths, r, u, vb):  # type: ignore[no-untyped-def]
    """Baseline (c): FlexAttention with a relative score_mod over the compact position table."""
    from torch.nn.attention.flex_attention import flex_attention

    mem, lq = mem_k.shape[2], q.shape[2]
    k = torch.cat([mem_k, chunk_k], dim=2)
    v = torch.cat([mem_v, chunk_v], dim=2)
    scale = 1.0 / math.sqrt(q.shape[-1])
    table = torch.einsum("bhid,hpd->bhip", q + vb[None, :, None], r)  # (B, H, Lq, P), compact
    lo, hi = mem - frames, mem + lengths
    offset = mem + lq - 1

    def score_mod(score, b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
        bd = table[b, h, q_idx, q_idx - kv_idx + offset]
        ok = (kv_idx >= lo[b]) & (kv_idx < hi[b])
        return torch.where(ok, score + bd * scale, -float("inf"))

    return flex_attention(q + u[None, :, None], k, v, score_mod=score_mod, scale=scale)


def build(impl: str, prob: Problem, *, dry_run: bool) -> Callable[[], torch.Tensor]:
    """A no-argument callable running ``impl`` on ``prob`` (compiled where the implementation needs it)."""
    if impl == "kernel":
        from triton_kernels.rel_attention.launcher import rel_attention_triton

        return lambda: rel_attention_triton(prob.q, prob.k_ring, prob.v_ring, **prob.kw)
    args = prob.tensors()
    if impl == "eager":
        return lambda: eager_attention(*args)
    if impl == "sdpa":
        return lambda: sdpa_attention(*args)
    if impl == "flex":
        if dry_run:  # uncompiled (the unfused reference path, which warns so): the dry run checks the math only
            def uncompiled() -> torch.Tensor:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
                    return flex_attention_fn(*args)

            return uncompiled
        compiled = torch.compile(flex_attention_fn, dynamic=False)
        return lambda: compiled(*args)
    raise ValueError(f"unknown implementation {impl!r}")


def run(out_dir: str | None, *, budget_s: float, dry_run: bool, full_grid: bool,
        max_rows: int | None = None) -> dict[str, Any]:
    device = torch.device("cpu" if dry_run else "cuda")
    out = benchutil.output_dir(out_dir)
    deadline = benchutil.Deadline(budget_s)
    env = benchutil.environment(device)
    env["copy_bandwidth_gbps"] = benchutil.measured_copy_gbps(device)
    peak = env.get("peak_bandwidth_gbps")
    if not dry_run:
        from torch._dynamo import config as dynamo_config

        for name in ("cache_size_limit", "recompile_limit", "accumulated_recompile_limit"):
            if hasattr(dynamo_config, name):  # one FlexAttention compilation per shape and dtype
                setattr(dynamo_config, name, max(getattr(dynamo_config, name), 512))
    rows_spec = [(s, torch.float32) for s in DRY_RUN_SHAPES] if dry_run else sweep(full_grid)
    rows_spec = rows_spec[:max_rows]
    results: list[dict[str, Any]] = []
    payload: dict[str, Any] = dict(environment=env, dry_run=dry_run, budget_s=budget_s, rows=results)

    def save() -> None:
        payload["targets"] = _targets(results, dry_run)
        benchutil.write_outputs(out, "rel_attention", _markdown(payload), payload)

    for shape, dtype in rows_spec:
        dname = str(dtype).removeprefix("torch.")
        if deadline.left() < (5 if dry_run else 10):
            results.append(dict(shape=shape.label(), dtype=dname, skipped="time budget"))
            save()
            continue
        try:
            prob = Problem(shape, dtype, device)
            f32 = {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                   for k, v in prob.kw.items()}
            expected = rel_attention_reference(prob.q.float(), prob.k_ring.float(), prob.v_ring.float(), **f32)
        except Exception as exc:  # e.g. out of memory on a small GPU: record and go on
            results.append(dict(shape=shape.label(), dtype=dname, error=f"setup: {exc!r}"))
            continue
        flops, n_bytes = work(shape, dtype)
        row: dict[str, Any] = dict(shape=shape.label(), dtype=dname, flops=flops, bytes=n_bytes, impls={})
        for impl in IMPLS:
            # FlexAttention compiles per shape (tens of seconds): once the budget runs low the cheap
            # implementations keep going and Flex rows are marked skipped.
            if deadline.left() < (2 if dry_run else RESERVE_S.get(impl, 8)):
                row["impls"][impl] = dict(skipped="time budget")
                continue
            rec: dict[str, Any] = {}
            try:
                fn = build(impl, prob, dry_run=dry_run)
                got = fn()  # compiles / autotunes; not timed
                rec["max_abs_err"] = float((got.float() - expected).abs().max())
                rec["ms"] = benchutil.time_ms(fn, device, graph=False)
                if device.type == "cuda":
                    rec["ms_graph"] = benchutil.time_ms(fn, device, graph=True)
                best = rec.get("ms_graph", rec["ms"])
                rec["tflops"] = flops / (best * 1e-3) / 1e12
                rec["gbps"] = n_bytes / (best * 1e-3) / 1e9
                rec["bandwidth_fraction"] = rec["gbps"] / peak if peak else None
            except Exception as exc:  # a baseline that cannot run this shape is a finding, not a crash
                rec["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                rec["traceback"] = traceback.format_exc(limit=5)
            row["impls"][impl] = rec
            if device.type == "cuda":
                torch.cuda.empty_cache()
        kernel_ms = _best(row["impls"].get("kernel", {}))
        for impl, rec in row["impls"].items():
            if impl != "kernel" and kernel_ms and _best(rec):
                rec["kernel_speedup"] = _best(rec) / kernel_ms
        results.append(row)
        del prob, expected
        save()  # after every row: a stage killed at its timeout still leaves what it measured
    save()
    return payload


def _best(rec: dict[str, Any]) -> float | None:
    return rec.get("ms_graph", rec.get("ms"))


def _targets(rows: list[dict[str, Any]], dry_run: bool) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    target = next((r for r in rows if r["shape"] == TARGET.label() and r.get("dtype") == "float16"), None)
    for impl, goal in SPEEDUP_TARGETS.items():
        got = None if dry_run or target is None else target.get("impls", {}).get(impl, {}).get("kernel_speedup")
        checks.append(dict(what=f"kernel vs {impl} at {TARGET.label()} fp16", goal=f">= {goal}x", value=got,
                           met=None if got is None else got >= goal))
    fracs = [r["impls"]["kernel"].get("bandwidth_fraction") for r in rows
             if r["shape"] == LARGEST.label() and "impls" in r and "kernel" in r["impls"]]
    frac = None if dry_run else max((f for f in fracs if f is not None), default=None)
    checks.append(dict(what=f"kernel bandwidth fraction at {LARGEST.label()}", goal=f">= {BANDWIDTH_TARGET:.0%}",
                       value=frac, met=None if frac is None else frac >= BANDWIDTH_TARGET))
    return checks


def _markdown(payload: dict[str, Any]) -> str:
    dry = payload["dry_run"]
    lines = ["## Fused relative attention vs baselines (`triton_kernels/rel_attention/bench.py`)", ""]
    if dry:
        lines += ["**Dry run** on the CPU (Triton interpreter, tiny shapes, fp32): times prove only that every "
                  f"code path runs; performance figures are {benchutil.NOT_MEASURED}.", ""]
    lines += [benchutil.environment_markdown(payload["environment"]), ""]
    headers = ["shape", "dtype", "impl", "ms", "ms (graph)", "TFLOP/s", "GB/s", "of peak BW", "kernel speed-up",
               "max abs err"]
    table: list[list[str]] = []
    for r in payload["rows"]:
        if "impls" not in r:
            table.append([r["shape"], r["dtype"], "-", r.get("skipped") or r.get("error", "?"), "", "", "", "", "", ""])
            continue
        for impl, rec in r["impls"].items():
            if "ms" not in rec:
                table.append([r["shape"], r["dtype"], impl, rec.get("skipped") or rec.get("error", "?"),
                              "", "", "", "", "", ""])
                continue
            frac = rec.get("bandwidth_fraction")
            table.append([r["shape"], r["dtype"], impl, benchutil.fmt(rec["ms"], 4),
                          benchutil.fmt(rec.get("ms_graph"), 4), benchutil.fmt(rec["tflops"]),
                          benchutil.fmt(rec["gbps"], 4), "n/a" if frac is None else f"{frac:.0%}",
                          benchutil.fmt(rec.get("kernel_speedup")), f"{rec['max_abs_err']:.1e}"])
    lines += [benchutil.markdown_table(headers, table), ""]
    lines += ["Targets (issue 12):", ""]
    for t in payload["targets"]:
        value = benchutil.NOT_MEASURED if t["value"] is None else (
            f"{t['value']:.0%}" if "fraction" in t["what"] else f"{t['value']:.2f}x")
        verdict = "" if t["met"] is None else (" **met**" if t["met"] else " **not met**")
        lines.append(f"- {t['what']}: goal {t['goal']}, measured {value}{verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="output folder (default $GPU_CHECK_OUT or $BENCH_OUT)")
    parser.add_argument("--budget-s", type=float, default=float(os.environ.get("BENCH_BUDGET_S", 200)))
    parser.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes")
    parser.add_argument("--full-grid", action="store_true")
    parser.add_argument("--max-rows", type=int, default=None, help="measure only the first N rows")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    payload = run(args.out, budget_s=args.budget_s, dry_run=args.dry_run, full_grid=args.full_grid,
                  max_rows=args.max_rows)
    print(_markdown(payload))
    errors = [f"{r['shape']} {r['dtype']} {impl}: {rec['error']}" for r in payload["rows"]
              for impl, rec in r.get("impls", {}).items() if "error" in rec]
    kernel_bad = [r for r in payload["rows"] if "error" in r.get("impls", {}).get("kernel", {})]
    if errors:
        print("errors:\n  " + "\n  ".join(errors), file=sys.stderr)
    return 1 if kernel_bad else 0


if __name__ == "__main__":
    if "--dry-run" in sys.argv:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    raise SystemExit(main())
