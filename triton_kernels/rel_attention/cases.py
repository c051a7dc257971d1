"""Random inputs of the rel_attention signature, shared by the tests, the benchmarks and the GPU check.

Dimension legend: B streams, H heads, L chunk, R look-ahead, M memory, E head width, S slab rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class Shape:
    """One problem geometry; ``frames``/``lengths`` of None mean every stream old and full."""

    batch: int
    heads: int
    chunk: int
    mem: int
    head_dim: int = 64
    right: int = 0
    slab_rows: int | None = None  # S (>= B); default B + 3, so slots are a strict subset in random order

    @property
    def queries(self) -> int:
        return self.chunk + self.right

    @property
    def keys(self) -> int:
        return self.mem + self.chunk + self.right

    @property
    def positions(self) -> int:
        return self.mem + 2 * self.queries - 1

    def label(self) -> str:
        r = f" R={self.right}" if self.right else ""
        return f"B={self.batch} H={self.heads} Lq={self.queries}{r} M={self.mem} E={self.head_dim}"


def make_inputs(shape: Shape, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                frames: list[int] | torch.Tensor | None = None, lengths: list[int] | torch.Tensor | None = None,
                seed: int = 0, scale: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """(q, k_ring, v_ring, kwargs) for ``rel_attention(q, k_ring, v_ring, **kwargs)``.

    Values are drawn in fp32 on ``device`` from ``seed`` (a GPU draws its own: the largest benchmark shape
    holds ~10^9 values, too many to draw on a CPU and copy) and scaled by ``scale`` to keep fp16 scores
    moderate; slots and default positions come from a CPU generator with the same seed. Default frames:
    every stream well past its first ``M`` frames (full memory) at different ring rotations; default
    lengths: full windows.
    """
    s = shape
    b, h, lq, e = s.batch, s.heads, s.queries, s.head_dim
    w = s.mem + s.chunk
    rows = s.slab_rows if s.slab_rows is not None else b + 3
    if rows < b:
        raise ValueError(f"slab_rows ({rows}) must be >= batch ({b})")
    gen = torch.Generator().manual_seed(seed)
    dev_gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*dims: int) -> torch.Tensor:
        x = torch.randn(*dims, generator=dev_gen, device=device)
        return x.mul_(scale).to(dtype)

    q = randn(b, h, lq, e)
    k_ring, v_ring = randn(rows, h, w, e), randn(rows, h, w, e)
    k_right = randn(b, h, s.right, e) if s.right else None
    v_right = randn(b, h, s.right, e) if s.right else None
    slots = torch.randperm(rows, generator=gen)[:b]
    if frames is None:
        frames = s.mem + torch.randint(0, max(w, 1) * 3, (b,), generator=gen)
    if lengths is None:
        lengths = torch.full((b,), lq)
    kwargs = dict(
        slots=slots.to(device),
        frames=torch.as_tensor(frames, dtype=torch.int64).to(device),
        lengths=torch.as_tensor(lengths, dtype=torch.int64).to(device),
        pos_keys=randn(h, s.positions, e),
        bias_u=randn(h, e),
        bias_v=randn(h, e),
        k_right=k_right,
        v_right=v_right,
    )
    return q, k_ring, v_ring, kwargs


def ragged(batch: int, *, mem: int, chunk: int, right: int = 0, seed: int = 0) -> tuple[list[int], list[int]]:
    """Frames and lengths mixing empty, partial and full memories, wrapped rings and short last chunks."""
    gen = torch.Generator().manual_seed(seed)
    w = mem + chunk
    picks = [0, max(mem // 2, 1), mem, mem + 1, 5 * w + 3]
    frames = [picks[i % len(picks)] + int(torch.randint(0, chunk + 1, (1,), generator=gen)) * (i >= len(picks))
              for i in range(batch)]
    lq = chunk + right
    lengths = [lq if i % 3 else max(1, lq - 1 - (i % lq)) for i in range(batch)]
    return frames, lengths
