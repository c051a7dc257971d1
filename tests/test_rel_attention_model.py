"""The rel_attention integration point computes exactly what the model computes.

1. ``rel_attention_reference`` + the output projection equals ``RelPositionAttention.attend`` on the rings
   gathered as ``_StepContext.attention`` gathers them (ragged positions, look-ahead, short last chunks).
2. A model step whose attention is replaced by the documented call (triton_kernels/rel_attention/__init__.py)
   gives the model's own step outputs and states, with the reference and with the kernel (interpreter on
   CPU), reading the rings straight from the StateStore slab.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from streaming_model.model import RelPositionAttention, StateStore, ring_geometry
from tests.rel_attention_helpers import TINY, patch_step_attention, tiny_model
from triton_kernels.rel_attention import rel_attention_reference
from triton_kernels.rel_attention.cases import ragged

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("right_frames", [0, 2])
def test_reference_equals_model_attend(right_frames: int) -> None:
    config = dataclasses.replace(TINY, right_frames=right_frames, mem_frames=6, chunk_frames=3)
    model = tiny_model(config)
    attn: RelPositionAttention = model.layers[0].attn
    c = config
    b, h, e = 6, c.n_heads, c.d_head
    lq, ring = c.chunk_frames + c.right_frames, c.mem_frames + c.chunk_frames
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(b, h, lq, e, generator=gen)
    slab_k, slab_v = torch.randn(9, h, ring, e, generator=gen), torch.randn(9, h, ring, e, generator=gen)
    k_right = torch.randn(b, h, c.right_frames, e, generator=gen)
    v_right = torch.randn(b, h, c.right_frames, e, generator=gen)
    slots = torch.tensor([7, 0, 3, 8, 1, 5])
    frames, lengths = ragged(b, mem=c.mem_frames, chunk=c.chunk_frames, right=c.right_frames)
    frames_t, lengths_t = torch.tensor(frames), torch.tensor(lengths)

    _, key_valid, rel_index = ring_geometry(frames_t, lengths_t, mem_frames=c.mem_frames,
                                            chunk_frames=c.chunk_frames, right_frames=c.right_frames)
    keys, values = slab_k[slots], slab_v[slots]
    if c.right_frames:
        keys, values = torch.cat([keys, k_right], dim=2), torch.cat([values, v_right], dim=2)
    with torch.no_grad():
        expected = attn.attend(q, keys, values, key_valid=key_valid, pos_emb=model.pos_emb,
                               rel_index=rel_index)  # (B, Lq, D)
        out = rel_attention_reference(
            q, slab_k, slab_v, slots=slots, frames=frames_t, lengths=lengths_t,
            pos_keys=attn.position_keys(model.pos_emb), bias_u=attn.u, bias_v=attn.v,
            k_right=k_right if c.right_frames else None, v_right=v_right if c.right_frames else None)
        got = attn.out(out.transpose(1, 2).reshape(b, lq, h * e))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# The interpreter costs ~0.5 s per kernel call here: the kernel runs only the look-ahead geometry (ring
# and look-ahead keys both), the reference both.
@pytest.mark.parametrize("backend,right_frames", [("reference", 0), ("reference", 2), ("triton", 2)])
def test_model_step_with_rel_attention_equals_model_step(monkeypatch: pytest.MonkeyPatch, backend: str,
                                                         right_frames: int) -> None:
    if backend == "triton":
        pytest.importorskip("triton")
    config = dataclasses.replace(TINY, right_frames=right_frames)
    model = tiny_model(config).to(DEVICE)
    c = config
    plain, patched = (StateStore(c, max_slots=6, device=DEVICE) for _ in range(2))
    slots = [5, 0, 3, 1]  # slab rows in no particular order (the scheduler owns slot numbers)
    gen = torch.Generator().manual_seed(5)
    schedule = [[0], [0, 1], [0, 1, 2], [1, 2, 3], [0, 2, 3], [0, 1, 2, 3]]  # streams join and skip steps
    for step, members in enumerate(schedule):
        active = torch.tensor([slots[m] for m in members], device=DEVICE)
        chunk = torch.randn(len(members), c.step_feature_frames, c.n_mels, generator=gen).to(DEVICE)
        lens = torch.full((len(members),), c.step_feature_frames, device=DEVICE)
        if step == len(schedule) - 1:
            lens[0] = 5  # a short last chunk
        with torch.no_grad():
            expected, _, st = model.step(chunk, lens, plain.view(active))
            plain.commit(active, st)
            with monkeypatch.context() as mp:
                if backend == "triton":  # the model's own switch: the kernel reads the slab by slot
                    mp.setattr(model, "attention_backend", "triton")
                else:  # the documented call with the PyTorch reference in place of attn.attend
                    patch_step_attention(mp, backend)
                got, _, st2 = model.step(chunk, lens, patched.view(active))
            patched.commit(active, st2)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    every = torch.tensor(slots, device=DEVICE)
    for x, y in zip(plain.gather(every).flat(), patched.gather(every).flat(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
