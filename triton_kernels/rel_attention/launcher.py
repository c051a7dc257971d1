"""Checks, allocation and grid for the fused relative-attention kernel (:mod:`.kernel`).

Dimension legend: B streams, H heads, Lq queries, E head width, S slab rows, W ring frames, R look-ahead.
"""

from __future__ import annotations

import functools
import logging
import math
import os

import torch
import triton

from triton_kernels.rel_attention import kernel
from triton_kernels.rel_attention.reference import check_inputs

log = logging.getLogger(__name__)

MAX_BLOCK_M = 64

# The position term's per-row shift uses tl.gather. Should a Triton build fail to compile that for some
# layout, the launcher falls back once, for the process, to the row-loop variant (same math, slower). The
# module's one piece of mutable state: a fact about this process's compiler, learnt at the first launch.
_pos_gather_ok = True


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def block_m(queries: int) -> int:
    """Query-block height: every query of a chunk in one block when it fits (tl.dot needs >= 16)."""
    return min(max(16, triton.next_power_of_2(queries)), MAX_BLOCK_M)


MAX_SPLITS = 64
KEYS_PER_SPLIT = 256  # a share shorter than this is not worth its partial sums


def choose_splits(programs: int, keys: int, device: torch.device) -> int:
    """Split-key shares: enough programs for about two waves on the GPU, each share >= KEYS_PER_SPLIT keys.

    1 (no split) under the interpreter, on the CPU, and whenever the batch already fills the GPU.
    """
    if device.type != "cuda" or interpreting():
        return 1
    sms = _sm_count(device)
    if programs >= sms:
        return 1
    return max(1, min(MAX_SPLITS, (2 * sms) // programs, keys // KEYS_PER_SPLIT))


def _sm_count(device: torch.device) -> int:
    return _sm_count_of(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _sm_count_of(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def rel_attention_triton(q: torch.Tensor, k_ring: torch.Tensor, v_ring: torch.Tensor, *,
                         slots: torch.Tensor, frames: torch.Tensor, lengths: torch.Tensor,
                         pos_keys: torch.Tensor, bias_u: torch.Tensor, bias_v: torch.Tensor,
                         k_right: torch.Tensor | None = None, v_right: torch.Tensor | None = None,
                         scale: float | None = None, autotune: bool | None = None,
                         pos_gather: bool | None = None, splits: int | None = None) -> torch.Tensor:
    """The fused kernel; arguments and result as :func:`..reference.rel_attention_reference`.

    The result is a (B, H, Lq, E) view of a (B, Lq, H, E) buffer, so the caller's
    ``out.transpose(1, 2).reshape(B, Lq, H * E)`` before the output projection is free.

    Args:
        autotune: pick the launch configuration per geometry by timing (default: on a GPU, not under the
            interpreter). The first call of each geometry then takes longer; run it before CUDA-graph capture.
        pos_gather: force the position-term variant (default: tl.gather, with a fallback).
        splits: split each stream's keys into this many shares merged by a second pass (default:
            :func:`choose_splits`, which splits only small batches over long memories on a GPU).
    Raises:
        ValueError: on shape, dtype or device mismatch (never on values: nothing here synchronises).
    """
    global _pos_gather_ok
    g = check_inputs(q, k_ring, v_ring, slots=slots, frames=frames, lengths=lengths, pos_keys=pos_keys,
                     bias_u=bias_u, bias_v=bias_v, k_right=k_right, v_right=v_right)
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q must be float16, bfloat16 or float32, got {q.dtype}")
    scale = 1.0 / math.sqrt(g.head_dim) if scale is None else scale
    out = torch.empty(g.batch, g.queries, g.heads, g.head_dim, device=q.device, dtype=q.dtype).transpose(1, 2)
    if g.batch == 0:
        return out
    right_k = k_right if k_right is not None else q  # never read when HAS_RIGHT is false
    right_v = v_right if v_right is not None else q
    bm = block_m(g.queries)
    tuned = (not interpreting()) if autotune is None else autotune
    gather = _pos_gather_ok if pos_gather is None else pos_gather
    q_blocks = triton.cdiv(g.queries, bm)
    n_splits = choose_splits(q_blocks * g.batch * g.heads, g.ring + g.right, q.device) if splits is None else splits
    if not 1 <= n_splits <= MAX_SPLITS:
        raise ValueError(f"splits must be in 1..{MAX_SPLITS}, got {n_splits}")
    block_e = max(16, triton.next_power_of_2(g.head_dim))
    if n_splits > 1:
        rows = g.batch * g.heads * n_splits * g.queries
        part_acc = torch.empty(rows * g.head_dim, device=q.device, dtype=torch.float32)
        part_m = torch.empty(rows, device=q.device, dtype=torch.float32)
        part_l = torch.empty(rows, device=q.device, dtype=torch.float32)
    else:
        part_acc = part_m = part_l = out  # never touched
    grid = (q_blocks, g.batch * g.heads, n_splits)
    args = (q, k_ring, v_ring, right_k, right_v, pos_keys, bias_u, bias_v, slots, frames, lengths, out,
            part_acc, part_m, part_l,
            *q.stride(), *k_ring.stride(), *v_ring.stride(), *right_k.stride(), *right_v.stride(),
            *pos_keys.stride(), *bias_u.stride(), *bias_v.stride(), *out.stride(),
            g.heads, g.queries, g.mem, g.ring, g.right, g.positions, n_splits,
            scale * math.log2(math.e))

    def launch(use_gather: bool) -> None:
        meta = dict(HEAD_DIM=g.head_dim, BLOCK_M=bm, BLOCK_E=block_e, HAS_RIGHT=g.right > 0,
                    POS_GATHER=use_gather, SPLIT=n_splits > 1, FP32=q.dtype == torch.float32)
        if tuned:
            kernel.rel_attention_fwd_tuned[grid](*args, **meta)
        else:
            kernel.rel_attention_fwd[grid](*args, **meta, **kernel.DEFAULT_CONFIG)

    if gather and pos_gather is None:
        try:
            launch(True)
        except Exception as exc:  # a compiler error of this build: fall back for the rest of the process
            if interpreting():
                raise
            log.warning("rel_attention: tl.gather variant failed to compile (%s); using the row-loop variant",
                        exc)
            _pos_gather_ok = False
            launch(False)
    else:
        launch(gather)
    if n_splits > 1:
        kernel.rel_attention_combine[(q_blocks, g.batch * g.heads)](
            part_acc, part_m, part_l, out, *out.stride(), g.heads, g.queries, n_splits,
            HEAD_DIM=g.head_dim, BLOCK_M=bm, BLOCK_E=block_e, BLOCK_S=triton.next_power_of_2(n_splits))
    return out


def pos_gather_enabled() -> bool:
    """Whether calls without ``pos_gather`` use the tl.gather variant (False after a fallback)."""
    return _pos_gather_ok
