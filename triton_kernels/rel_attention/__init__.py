"""Fused Transformer-XL relative-position attention over slot-addressed ring memories.

The model calls one function, :func:`rel_attention`, which runs the Triton kernel on CUDA tensors and the
PyTorch reference elsewhere. How ``streaming_model.model._StepContext.attention`` uses it (in place of
``index_select`` of the rings + ``attn.attend``), after writing the chunk's keys/values into the rings as it
does today::

    from triton_kernels.rel_attention import rel_attention

    l_ = c.chunk_frames
    q, k, v = attn.project(h)                                  # (B, H, L+R, E)
    ... write k[:, :, :l_], v[:, :, :l_] into ring_k/ring_v at write_pos (unchanged) ...
    slots = state.ring_slots if state.ring_slots is not None else torch.arange(B, device=q.device)
    out = rel_attention(
        q, state.ring_k[layer], state.ring_v[layer],           # whole slab (S, H, M+L, E), or (B, ...)
        slots=slots,                                           # (B,) int: slab row of each stream
        frames=state.frames,                                   # (B,) int64: frames before this chunk
        lengths=out_lengths,                                   # (B,) real frames of chunk + look-ahead
        pos_keys=attn.position_keys(model.pos_emb),            # (H, M+2(L+R)-1, E)
        bias_u=attn.u, bias_v=attn.v,                          # (H, E) each
        k_right=k[:, :, l_:] if R else None,                   # (B, H, R, E) look-ahead keys
        v_right=v[:, :, l_:] if R else None,
    )                                                          # (B, H, L+R, E)
    return attn.out(out.transpose(1, 2).reshape(B, L + R, H * E))

The same call with ``backend="reference"`` is exactly ``attn.attend`` on the gathered rings
(``tests/test_rel_attention_model.py`` proves it). The training path (``forward``) keeps ``attend``: the kernel
has no backward, so :func:`rel_attention` also takes the reference whenever gradients are needed.

Backend choice: the ``backend`` argument, else the environment variable ``XLGATE_REL_ATTENTION``
(``auto`` | ``triton`` | ``reference``), else ``auto`` = Triton for CUDA tensors when triton imports and no
gradient is needed, the reference otherwise. ``triton`` forces the kernel (on CPU tensors it then needs
``TRITON_INTERPRET=1`` set before triton_kernels.rel_attention.kernel is imported).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

import torch

from triton_kernels.rel_attention.reference import rel_attention_reference

Backend = Literal["auto", "triton", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "reference")
ENV_VAR = "XLGATE_REL_ATTENTION"

__all__ = ["BACKENDS", "ENV_VAR", "rel_attention", "rel_attention_reference", "resolve_backend",
           "triton_available"]


def triton_available() -> bool:
    """True when the ``triton`` package is importable (it is an optional dependency: extra ``gpu``)."""
    return importlib.util.find_spec("triton") is not None


def resolve_backend(q: torch.Tensor, backend: str | None = None, *, needs_grad: bool = False) -> str:
    """The backend a call would use: ``"triton"`` or ``"reference"``.

    Raises:
        ValueError: for an unknown backend name.
        RuntimeError: when ``triton`` is forced but not installed.
    """
    choice = backend or os.environ.get(ENV_VAR, "auto") or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"rel_attention backend must be one of {BACKENDS}, got {choice!r}")
    if choice == "triton":
        if not triton_available():
            raise RuntimeError("rel_attention backend 'triton' forced but triton is not installed "
                               "(pip install 'xlgate[gpu]')")
        return "triton"
    if choice == "reference":
        return "reference"
    return "triton" if q.is_cuda and not needs_grad and triton_available() else "reference"


def rel_attention(q: torch.Tensor, k_ring: torch.Tensor, v_ring: torch.Tensor, *, slots: torch.Tensor,
                  frames: torch.Tensor, lengths: torch.Tensor, pos_keys: torch.Tensor, bias_u: torch.Tensor,
                  bias_v: torch.Tensor, k_right: torch.Tensor | None = None,
                  v_right: torch.Tensor | None = None, scale: float | None = None,
                  backend: str | None = None) -> torch.Tensor:
    """Relative attention of a chunk over each stream's ring memory; see :func:`rel_attention_reference`
    for the arguments. Returns (B, H, Lq, E) in q's dtype."""
    tensors = (q, k_ring, v_ring, pos_keys, bias_u, bias_v, k_right, v_right)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    kwargs = dict(slots=slots, frames=frames, lengths=lengths, pos_keys=pos_keys, bias_u=bias_u,
                  bias_v=bias_v, k_right=k_right, v_right=v_right, scale=scale)
    if resolve_backend(q, backend, needs_grad=needs_grad) == "triton":
        from triton_kernels.rel_attention.launcher import rel_attention_triton

        return rel_attention_triton(q, k_ring, v_ring, **kwargs)  # type: ignore[arg-type]
    return rel_attention_reference(q, k_ring, v_ring, **kwargs)  # type: ignore[arg-type]
