"""Test helpers: the model's step with its attention replaced by the documented rel_attention call.

The body of ``attention`` below is the integration documented in triton_kernels/rel_attention/__init__.py;
``streaming_model/model.py`` itself is left to the model's owners.

The prepared GPU check runs the rel_attention tests with ``--noconftest`` on machines that may have only
torch, triton and pytest (conftest.py imports the gateway and its dependencies), so this module needs only
``streaming_model.model`` and torch at import time, and carries its own tiny model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import torch
import torch.nn.functional as F

from streaming_model import model as model_module
from streaming_model.config import ModelConfig
from streaming_model.model import StreamingTransformerXL
from triton_kernels.rel_attention import rel_attention

if TYPE_CHECKING:
    from streaming_model.checkpoint import LoadedModel

# conftest.TINY's geometry (2 layers, 4 heads of 16, 160 ms chunks, 8 frames of memory).
TINY = ModelConfig(n_layers=2, d_model=64, n_heads=4, d_ff=128, frontend_channels=64, conv_kernel=5,
                   chunk_frames=4, mem_frames=8, dropout=0.0)


def tiny_model(config: ModelConfig = TINY, seed: int = 0) -> StreamingTransformerXL:
    """A random model in eval mode with non-zero u/v biases, so every attention term is exercised."""
    torch.manual_seed(seed)
    model = StreamingTransformerXL(config).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.u.normal_(0, 0.5)
            layer.attn.v.normal_(0, 0.5)
    return model


def patch_step_attention(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    """Replace _StepContext.attention by the call documented in triton_kernels/rel_attention/__init__.py."""
    ctx_cls = model_module._StepContext
    original_init = ctx_cls.__init__

    def init(self, model, state, lengths):  # type: ignore[no-untyped-def]
        original_init(self, model, state, lengths)
        self.lengths = lengths

    def attention(self, layer, attn, h):  # type: ignore[no-untyped-def]
        c, state = self.c, self.state
        l_ = c.chunk_frames
        q, k, v = attn.project(h)  # (B, H, L+R, E)
        b, heads, lq, e = q.shape
        slots = state.ring_slots
        rows = self.rows if slots is None else slots[:, None]
        ring_k, ring_v = state.ring_k[layer], state.ring_v[layer]
        ring_k[rows, :, self.write_pos] = k[:, :, :l_].transpose(1, 2).to(ring_k.dtype)
        ring_v[rows, :, self.write_pos] = v[:, :, :l_].transpose(1, 2).to(ring_v.dtype)
        out = rel_attention(
            q, ring_k, ring_v,
            slots=slots if slots is not None else torch.arange(b, device=q.device),
            frames=state.frames, lengths=self.lengths,
            pos_keys=attn.position_keys(self.model.pos_emb), bias_u=attn.u, bias_v=attn.v,
            k_right=k[:, :, l_:] if c.right_frames else None, v_right=v[:, :, l_:] if c.right_frames else None,
            backend=backend)
        return attn.out(out.transpose(1, 2).reshape(b, lq, heads * e))

    monkeypatch.setattr(ctx_cls, "__init__", init)
    monkeypatch.setattr(ctx_cls, "attention", attention)


@contextlib.contextmanager
def step_attention(backend: str | None) -> Iterator[None]:
    """Context manager form: ``None`` leaves the model's own attention."""
    if backend is None:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        patch_step_attention(mp, backend)
        yield


def stream_transcript(loaded: LoadedModel, features: torch.Tensor, device: str) -> tuple[str, torch.Tensor]:
    """Greedy transcript and (T, V) logits of one utterance streamed chunk by chunk on ``device``."""
    from streaming_model.decoding import GreedyDecoder

    model, c = loaded.model, loaded.model.config
    step, window = c.chunk_feature_frames, c.step_feature_frames
    state = model.initial_state(1)
    n = features.shape[0]
    decoder = GreedyDecoder(loaded.tokenizer)
    outs = []
    with torch.no_grad():
        for lo in range(0, n, step):
            chunk = torch.zeros(1, window, c.n_mels)
            m = min(window, n - lo)
            chunk[0, :m] = features[lo:lo + m]
            logits, out_len, state = model.step(chunk.to(device), torch.tensor([m], device=device), state)
            logits = logits[0, : int(out_len[0])].float().cpu()
            outs.append(logits)
            decoder.accept(F.log_softmax(logits, dim=-1).numpy())
    return decoder.finalize().text, torch.cat(outs)
