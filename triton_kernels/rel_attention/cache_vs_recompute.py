"""Cache versus recompute: per-step encoder time with recurrence memory against re-encoding the window.

    python -m triton_kernels.rel_attention.cache_vs_recompute [--out DIR] [--budget-s S] [--dry-run]

A generic Transformer-XL-style encoder (pre-LN; relative attention with u/v biases and a two-sided position
table; GELU feed-forward) of the geometry the model issue targets (width 384, 6 heads of 64, 4 layers, FF
1536), one stream, fp16 on the GPU:

* **cache**: a step encodes only its ``Lq`` new frames; each layer writes their keys/values into a ring of
  ``W = context`` frames and attends over it with :func:`triton_kernels.rel_attention.rel_attention`
  (memory ``M = context - Lq``).
* **recompute**: every step re-encodes the whole window of ``context`` frames from scratch (Al-Rfou et al.'s
  vanilla evaluation, Transformer-XL paper Table 9), attention over the window with the same function
  (``M = 0``, ``Lq = context``), and keeps the last ``Lq`` outputs.

Both paths are timed alike, without and with CUDA-graph replay; the table reports the recompute/cache
ratio and its FLOP bound (about ``context / Lq``). Position tables are projected once, outside the timing, as
the model caches them at inference.

Dimension legend: T frames, D width, H heads, E head width, W ring frames, Lq frames per step.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch
from torch import nn

from streaming_model.model import sinusoid_table
from triton_kernels import benchutil
from triton_kernels.rel_attention import rel_attention

GEOMETRY = dict(d_model=384, n_heads=6, n_layers=4, d_ff=1536)
CONTEXTS = (800, 3800)
STEPS = (1, 4)
DRY_GEOMETRY = dict(d_model=32, n_heads=2, n_layers=2, d_ff=64)
DRY_CONTEXTS = (24,)


class Layer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.h, self.e = n_heads, d_model // n_heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.pos = nn.Linear(d_model, d_model, bias=False)
        self.u = nn.Parameter(torch.randn(n_heads, self.e) * 0.1)
        self.v = nn.Parameter(torch.randn(n_heads, self.e) * 0.1)
        self.out = nn.Linear(d_model, d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, t, 3, self.h, self.e)  # (B, T, 3, H, E)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, E)
        return q, k, v

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = attn.shape
        x = x + self.out(attn.transpose(1, 2).reshape(b, t, self.h * self.e))
        return x + self.ff(self.norm2(x))


class Encoder:
    """The layer stack and both ways to run one step of one stream."""

    def __init__(self, geometry: dict[str, int], *, context: int, step: int, device: torch.device,
                 dtype: torch.dtype, backend: str) -> None:
        torch.manual_seed(0)
        d, h = geometry["d_model"], geometry["n_heads"]
        self.layers = [Layer(d, h, geometry["d_ff"]).to(device=device, dtype=dtype).eval()
                       for _ in range(geometry["n_layers"])]
        self.context, self.step, self.backend, self.d = context, step, backend, d
        e = d // h
        mem = context - step
        with torch.no_grad():
            # Projected position tables (constant at inference): cache path M = context - Lq, Lq = step;
            # recompute path M = 0, Lq = context.
            def table(mem_frames: int, queries: int, layer: Layer) -> torch.Tensor:
                dist = torch.arange(-(queries - 1), mem_frames + queries)  # (M + 2Lq - 1,)
                emb = sinusoid_table(dist, d).to(device=device, dtype=dtype)  # built on the CPU, as the model does
                return layer.pos(emb).view(-1, h, e).transpose(0, 1).contiguous()  # (H, P, E)

            self.pos_cache = [table(mem, step, layer) for layer in self.layers]
            self.pos_full = [table(0, context, layer) for layer in self.layers]
        self.ring_k = [torch.zeros(1, h, context, e, device=device, dtype=dtype) for _ in self.layers]
        self.ring_v = [torch.zeros(1, h, context, e, device=device, dtype=dtype) for _ in self.layers]
        self.frames = torch.full((1,), 10 * context, dtype=torch.int64, device=device)  # an old stream
        self.slots = torch.zeros(1, dtype=torch.int64, device=device)
        self.len_step = torch.full((1,), step, dtype=torch.int64, device=device)
        self.len_full = torch.full((1,), context, dtype=torch.int64, device=device)
        self.zero = torch.zeros(1, dtype=torch.int64, device=device)
        self.offsets = torch.arange(step, device=device)
        self.x_step = torch.randn(1, step, d, device=device, dtype=dtype)
        self.x_window = torch.randn(1, context, d, device=device, dtype=dtype)

    @torch.no_grad()
    def cached_step(self) -> torch.Tensor:
        x = self.x_step
        write_pos = (self.frames + self.offsets) % self.context  # (Lq,) ring slots of the new frames
        for n, layer in enumerate(self.layers):
            q, k, v = layer.project(x)  # (1, H, Lq, E)
            self.ring_k[n].index_copy_(2, write_pos, k)
            self.ring_v[n].index_copy_(2, write_pos, v)
            attn = rel_attention(q, self.ring_k[n], self.ring_v[n], slots=self.slots, frames=self.frames,
                                 lengths=self.len_step, pos_keys=self.pos_cache[n], bias_u=layer.u,
                                 bias_v=layer.v, backend=self.backend)
            x = layer.finish(x, attn)
        self.frames += self.step
        return x

    @torch.no_grad()
    def recomputed_step(self) -> torch.Tensor:
        x = self.x_window
        for n, layer in enumerate(self.layers):
            q, k, v = layer.project(x)  # (1, H, T, E): the window is its own ring, M = 0
            attn = rel_attention(q, k, v, slots=self.slots, frames=self.zero, lengths=self.len_full,
                                 pos_keys=self.pos_full[n], bias_u=layer.u, bias_v=layer.v, backend=self.backend)
            x = layer.finish(x, attn)
        return x[:, -self.step:]


def step_flops(geometry: dict[str, int], *, frames: int, keys: int, positions: int) -> float:
    """Multiply-adds x 2 of one step over ``frames`` query frames attending to ``keys`` keys."""
    d, ff, n = geometry["d_model"], geometry["d_ff"], geometry["n_layers"]
    linear = 2.0 * frames * (4 * d * d + 2 * d * ff)
    attention = 2.0 * frames * d * (2 * keys + positions)
    return n * (linear + attention)


def run(out_dir: str | None, *, budget_s: float, dry_run: bool) -> dict[str, Any]:
    device = torch.device("cpu" if dry_run else "cuda")
    dtype = torch.float32 if dry_run else torch.float16
    geometry = DRY_GEOMETRY if dry_run else GEOMETRY
    contexts = DRY_CONTEXTS if dry_run else CONTEXTS
    backend = "triton"  # the kernel in both paths (the interpreter in a dry run)
    out = benchutil.output_dir(out_dir)
    deadline = benchutil.Deadline(budget_s)
    rows: list[dict[str, Any]] = []
    payload: dict[str, Any] = dict(environment=benchutil.environment(device), dry_run=dry_run, geometry=geometry,
                                   dtype=str(dtype), rows=rows, paper_table9={"800": 363, "3800": 1874})

    def save() -> None:  # after every row: a stage killed at its timeout still leaves what it measured
        benchutil.write_outputs(out, "cache_vs_recompute", _markdown(payload), payload)

    for context in contexts:
        for step in STEPS:
            row: dict[str, Any] = dict(context=context, step=step)
            bound = (step_flops(geometry, frames=context, keys=context, positions=2 * context - 1)
                     / step_flops(geometry, frames=step, keys=context, positions=context + step - 1))
            row["flop_bound"] = bound
            if deadline.left() < (5 if dry_run else 15):
                row["skipped"] = "time budget"
                rows.append(row)
                save()
                continue
            try:
                enc = Encoder(geometry, context=context, step=step, device=device, dtype=dtype, backend=backend)
                for name, fn in (("cache", enc.cached_step), ("recompute", enc.recomputed_step)):
                    fn()  # compile / autotune outside the timing
                    row[f"{name}_ms"] = benchutil.time_ms(fn, device, graph=False, cpu_reps=1)
                    if device.type == "cuda":
                        row[f"{name}_ms_graph"] = benchutil.time_ms(fn, device, graph=True)
                for suffix in ("", "_graph"):
                    if f"cache_ms{suffix}" in row:
                        row[f"ratio{suffix}"] = row[f"recompute_ms{suffix}"] / row[f"cache_ms{suffix}"]
                best = row.get("ratio_graph", row.get("ratio"))
                row["fraction_of_bound"] = best / bound if best else None
                del enc
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(row)
            save()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    save()
    return payload


def _markdown(payload: dict[str, Any]) -> str:
    g = payload["geometry"]
    lines = ["## Cache vs recompute (`triton_kernels/rel_attention/cache_vs_recompute.py`)", ""]
    if payload["dry_run"]:
        lines += [f"**Dry run** on the CPU (interpreter, tiny geometry): figures are {benchutil.NOT_MEASURED}.", ""]
    lines += [f"Encoder: width {g['d_model']}, {g['n_heads']} heads, {g['n_layers']} layers, FF {g['d_ff']}, "
              f"{payload['dtype']}, one stream. Transformer-XL paper Table 9 (their claim, per-token): 363x at "
              "800, 1,874x at 3,800.", "",
              benchutil.environment_markdown(payload["environment"]), ""]
    headers = ["context", "frames/step", "cache ms", "cache ms (graph)", "recompute ms", "recompute ms (graph)",
               "ratio", "ratio (graph)", "FLOP bound", "of bound"]
    table = []
    for r in payload["rows"]:
        if "skipped" in r or "error" in r:
            table.append([str(r["context"]), str(r["step"]), r.get("skipped") or r["error"], "", "", "", "", "",
                          benchutil.fmt(r["flop_bound"], 4), ""])
            continue
        frac = r.get("fraction_of_bound")
        table.append([str(r["context"]), str(r["step"]), benchutil.fmt(r["cache_ms"], 4),
                      benchutil.fmt(r.get("cache_ms_graph"), 4), benchutil.fmt(r["recompute_ms"], 4),
                      benchutil.fmt(r.get("recompute_ms_graph"), 4), benchutil.fmt(r.get("ratio"), 4),
                      benchutil.fmt(r.get("ratio_graph"), 4), benchutil.fmt(r["flop_bound"], 4),
                      "n/a" if frac is None else f"{frac:.0%}"])
    lines += [benchutil.markdown_table(headers, table), "", "Targets (issue 12, 1-frame steps, graph times):", ""]
    for context, goal in ((800, 363), (3800, 1874)):
        r = next((r for r in payload["rows"] if r["context"] == context and r["step"] == 1), None)
        got = None if payload["dry_run"] or r is None else r.get("ratio_graph")
        verdict = benchutil.NOT_MEASURED if got is None else (
            f"{got:.0f}x " + ("**met**" if got >= goal else "**not met**"))
        lines.append(f"- context {context}: goal >= {goal}x, measured {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    parser.add_argument("--budget-s", type=float, default=float(os.environ.get("RECOMPUTE_BUDGET_S", 90)))
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("cache_vs_recompute: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    payload = run(args.out, budget_s=args.budget_s, dry_run=args.dry_run)
    print(_markdown(payload))
    return 1 if any("error" in r for r in payload["rows"]) else 0


if __name__ == "__main__":
    if "--dry-run" in sys.argv:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    raise SystemExit(main())
