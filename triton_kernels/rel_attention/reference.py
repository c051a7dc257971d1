"""Plain PyTorch relative-position attention over a ring-buffer memory: the test oracle and the CPU path.

Same signature and result as :func:`triton_kernels.rel_attention.launcher.rel_attention_triton`; the math
is :meth:`streaming_model.model.RelPositionAttention.attend` (before its output projection) with the key
layout of the serving path (``StreamState.ring_*`` addressed by slot, ``ring_geometry``).

Dimension legend: B streams, H heads, Lq queries (L chunk + R look-ahead), E head width, S slab rows,
W = M + L ring frames, M memory frames, R look-ahead frames, N = W + R keys, P = M + 2 Lq - 1 position rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, slots=True)
class Geometry:
    """Sizes implied by the tensors of one call (see :func:`check_inputs`)."""

    batch: int
    heads: int
    queries: int  # Lq = L + R
    head_dim: int
    ring: int  # W = M + L
    mem: int  # M
    chunk: int  # L
    right: int  # R
    positions: int  # P = M + 2 Lq - 1


def check_inputs(q: torch.Tensor, k_ring: torch.Tensor, v_ring: torch.Tensor, *, slots: torch.Tensor,
                 frames: torch.Tensor, lengths: torch.Tensor, pos_keys: torch.Tensor, bias_u: torch.Tensor,
                 bias_v: torch.Tensor, k_right: torch.Tensor | None,
                 v_right: torch.Tensor | None) -> Geometry:
    """Validate shapes, dtypes and devices (never values: that would synchronise a GPU stream).

    Raises:
        ValueError: naming the expected and the actual shape or dtype.
    """
    if q.dim() != 4:
        raise ValueError(f"q must be (B, H, Lq, E), got shape {tuple(q.shape)}")
    b, h, lq, e = q.shape
    if k_ring.dim() != 4 or k_ring.shape[1] != h or k_ring.shape[3] != e:
        raise ValueError(f"k_ring must be (S, {h}, W, {e}), got {tuple(k_ring.shape)}")
    if v_ring.shape != k_ring.shape:
        raise ValueError(f"v_ring must have k_ring's shape {tuple(k_ring.shape)}, got {tuple(v_ring.shape)}")
    if (k_right is None) != (v_right is None):
        raise ValueError("k_right and v_right must be given together")
    r = 0
    if k_right is not None and v_right is not None:
        r = k_right.shape[2]
        if k_right.dim() != 4 or tuple(k_right.shape) != (b, h, r, e) or v_right.shape != k_right.shape:
            raise ValueError(f"k_right/v_right must be ({b}, {h}, R, {e}), got {tuple(k_right.shape)} and "
                             f"{tuple(v_right.shape)}")
    w = k_ring.shape[2]
    chunk = lq - r
    mem = w - chunk
    if chunk < 1 or mem < 0:
        raise ValueError(f"need 1 <= L = Lq - R <= W; got Lq={lq}, R={r}, W={w}")
    p = mem + 2 * lq - 1
    if tuple(pos_keys.shape) != (h, p, e):
        raise ValueError(f"pos_keys must be (H, M + 2 Lq - 1, E) = ({h}, {p}, {e}), got {tuple(pos_keys.shape)}")
    for name, bias in (("bias_u", bias_u), ("bias_v", bias_v)):
        if tuple(bias.shape) != (h, e):
            raise ValueError(f"{name} must be ({h}, {e}), got {tuple(bias.shape)}")
    for name, idx in (("slots", slots), ("frames", frames), ("lengths", lengths)):
        if tuple(idx.shape) != (b,):
            raise ValueError(f"{name} must be ({b},), got {tuple(idx.shape)}")
        if idx.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be int32 or int64, got {idx.dtype}")
    tensors = [q, k_ring, v_ring, slots, frames, lengths, pos_keys, bias_u, bias_v]
    tensors += [t for t in (k_right, v_right) if t is not None]
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    if not q.dtype.is_floating_point:
        raise ValueError(f"q must be floating point, got {q.dtype}")
    return Geometry(b, h, lq, e, w, mem, chunk, r, p)


def logical_keys(frames: torch.Tensor, *, ring: int, chunk: int) -> torch.Tensor:
    """Logical index (0 = oldest memory frame .. W-1 = last chunk frame) of each ring slot: (B,) -> (B, W).

    The oldest memory frame sits at slot ``(frames + L) mod W`` (``streaming_model.model.ring_geometry``).
    """
    slot = torch.arange(ring, device=frames.device)
    start = (frames.to(torch.int64) + chunk) % ring  # (B,)
    return (slot[None, :] - start[:, None]) % ring  # (B, W)


def rel_attention_reference(q: torch.Tensor, k_ring: torch.Tensor, v_ring: torch.Tensor, *,
                            slots: torch.Tensor, frames: torch.Tensor, lengths: torch.Tensor,
                            pos_keys: torch.Tensor, bias_u: torch.Tensor, bias_v: torch.Tensor,
                            k_right: torch.Tensor | None = None, v_right: torch.Tensor | None = None,
                            scale: float | None = None) -> torch.Tensor:
    """Transformer-XL relative attention of a chunk's queries over each stream's ring memory.

    Keys of stream b: its ring row ``k_ring[slots[b]]`` (memory then chunk, rotated by ``frames[b]``), then
    its look-ahead keys ``k_right[b]``. Key ``c`` (logical order) is real iff
    ``M - frames[b] <= c < M + lengths[b]``; query ``i`` and key ``c`` use position row ``i - c + M + Lq - 1``.

    Args:
        q: (B, H, Lq, E) queries of the chunk and its look-ahead (before adding u or v).
        k_ring, v_ring: (S, H, W, E) the slab of rings (``StreamState.ring_k[layer]``), chunk already written.
        slots: (B,) slab row of each stream. frames: (B,) frames each stream processed before this chunk.
        lengths: (B,) real frames in this step's window (chunk then look-ahead), >= 1.
        pos_keys: (H, P, E) projected sinusoids ``W_{k,R} R`` of distances -(Lq-1) .. M+Lq-1.
        bias_u, bias_v: (H, E) Transformer-XL's global content and position biases.
        k_right, v_right: (B, H, R, E) look-ahead keys/values, or None when R = 0.
        scale: score scale, 1/sqrt(E) by default.
    Returns:
        (B, H, Lq, E) attention output in q's dtype (the caller applies the output projection).
    """
    g = check_inputs(q, k_ring, v_ring, slots=slots, frames=frames, lengths=lengths, pos_keys=pos_keys,
                     bias_u=bias_u, bias_v=bias_v, k_right=k_right, v_right=v_right)
    scale = 1.0 / math.sqrt(g.head_dim) if scale is None else scale
    slots = slots.to(torch.int64)
    keys = k_ring.index_select(0, slots).to(q.dtype)  # (B, H, W, E), physical ring order
    values = v_ring.index_select(0, slots).to(q.dtype)
    logical = logical_keys(frames, ring=g.ring, chunk=g.chunk)  # (B, W)
    if g.right:
        assert k_right is not None and v_right is not None
        keys = torch.cat([keys, k_right.to(q.dtype)], dim=2)  # (B, H, N, E)
        values = torch.cat([values, v_right.to(q.dtype)], dim=2)
        right = torch.arange(g.ring, g.ring + g.right, device=q.device)
        logical = torch.cat([logical, right[None, :].expand(g.batch, -1)], dim=1)  # (B, N)
    mem_lo = g.mem - frames.to(torch.int64)
    key_valid = (logical >= mem_lo[:, None]) & (logical < g.mem + lengths.to(torch.int64)[:, None])  # (B, N)
    i = torch.arange(g.queries, device=q.device)
    rel = i[None, :, None] - logical[:, None, :] + (g.mem + g.queries - 1)  # (B, Lq, N)

    h, e = g.heads, g.head_dim
    r = pos_keys.to(q.dtype)
    # (B, H, Lq, E) x (H, P, E) as one product per head (broadcasting r over B would copy it B times)
    qv = (q + bias_v.to(q.dtype)[None, :, None, :]).transpose(0, 1).reshape(h, g.batch * g.queries, e)
    bd_table = (qv @ r.transpose(-1, -2)).view(h, g.batch, g.queries, -1).transpose(0, 1)  # (B, H, Lq, P)
    bd = bd_table.gather(-1, rel[:, None].expand(-1, h, -1, -1))  # (B, H, Lq, N)
    neg = torch.finfo(bd.dtype).min / 2
    bias = (bd * scale).masked_fill(~key_valid[:, None, None, :], neg)
    return F.scaled_dot_product_attention(q + bias_u.to(q.dtype)[None, :, None, :], keys, values,
                                          attn_mask=bias, scale=scale)  # (B, H, Lq, E)
