"""Streaming Transformer-XL CTC encoder with one implementation for full utterances and chunk steps.

Theory of operation
-------------------
Audio is cut into chunks of ``L = chunk_frames`` encoder frames (40 ms each). A frame in chunk ``c`` may
attend to every frame of its own chunk (both directions) and to the ``M = mem_frames`` frames before the
chunk, at every layer (segment-level recurrence, Dai et al. 2019 §3.2). Streaming caches, per layer, the
projected keys and values of the last ``M`` frames instead of the hidden states: that is exact and skips
re-projecting the memory at every step (research note model-and-kernels.md §1.4, §6.1).

Both entry points run :meth:`StreamingTransformerXL._encode` with a different *context* object:

* ``forward(features, lengths)`` (training, whole files) computes keys/values for all frames at once and
  gives every chunk its window ``[chunk_start - M, chunk_end)`` by unfolding, so all chunks of all
  utterances form one batch of attention problems;
* ``step(chunk, lengths, state)`` (streaming) prepends the cached memory to the chunk's keys/values.

In both cases each attention problem is ``L`` queries over ``M + L`` keys, with a validity mask, computed by
the same :meth:`RelPositionAttention.attend`, so the two paths agree to float rounding.

Look-ahead (``R = right_frames`` > 0, Emformer-style right context, Shi et al. 2021): a chunk's frames also
see the ``R`` frames after the chunk. Those frames are computed twice: once as *look-ahead copies* inside the
step of the chunk before them (seeing what that step sees, and never entering the memory) and once as
ordinary frames of their own chunk. A step's input is the chunk plus ``R`` frames of audio; its queries are
the ``L + R`` frames, its keys ``M + L + R``. The full pass appends every chunk's look-ahead copies after
the utterance's frames (``T + C*R`` rows) and gives each chunk its copies as extra queries and keys, so
training sees exactly what streaming computes. ``R = 0`` is the plain chunked model.

Relative positions: query ``i`` (0..L+R-1) sits at key coordinate ``M + i``; key ``j`` in 0..M+L+R-1.
Because a frame sees its whole chunk, distances ``M + i - j`` are two-sided, ranging over
``-(L+R-1) .. M+L+R-1``: we embed all ``M + 2(L+R) - 1`` of them and gather, rather than using
Transformer-XL's causal-only rel-shift (its upper-right entries are garbage for non-causal keys; research
note §1.2 caveat).

The depthwise convolution and the subsampling front end are causal and carry their left context in the
state, so they too are exact across chunk boundaries.

A chunk shorter than ``L`` (``lengths < chunk``) is allowed only as the last chunk of a stream: its padded
frames are masked as keys, and the state it returns is not meant to be stepped again.

Dimension legend: B batch (streams), C chunks, T frames, D features/model width, H heads, E head width,
L chunk frames, M memory frames, R look-ahead frames, K kernel, V vocabulary, N layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from streaming_model.config import ModelConfig
from triton_kernels.rel_attention import rel_attention, resolve_backend


@dataclass(slots=True)
class StreamState:
    """Per-stream recurrent state, batched along dim 0 (B). Addressed by slot in :class:`StateStore`.

    Keys and values live in a ring of ``R = M + L`` frames per layer: a step writes its chunk's ``L`` frames
    at ring positions ``(frames + i) mod R`` and attends over the whole ring, whose other ``M`` positions
    hold the memory. Nothing is shifted or concatenated per step; relative distances are derived from
    ``frames`` (see :func:`ring_geometry`).
    """

    fe1: torch.Tensor  # (B, 2, n_mels) left context of the first stride-2 convolution
    fe2: torch.Tensor  # (B, 2, frontend_channels) left context of the second one
    ring_k: list[torch.Tensor]  # N x (B, H, R, E) keys of the last R frames
    ring_v: list[torch.Tensor]  # N x (B, H, R, E) values
    conv: list[torch.Tensor]  # N x (B, D, K-1) left context of each layer's depthwise convolution
    frames: torch.Tensor  # (B,) int64 encoder frames already processed (the stream's position)
    # When set, ring_k/ring_v are a store's whole slab (S rows) and these are the batch's rows in it: the
    # step reads the rows it attends to and writes only its new frames, in place (see StateStore.view).
    ring_slots: torch.Tensor | None = None

    @classmethod
    def zeros(cls, config: ModelConfig, batch: int, *, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> StreamState:
        c = config
        ring = c.mem_frames + c.chunk_frames

        def z(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, device=device, dtype=dtype)

        return cls(
            fe1=z(batch, 2, c.n_mels),
            fe2=z(batch, 2, c.frontend_channels),
            ring_k=[z(batch, c.n_heads, ring, c.d_head) for _ in range(c.n_layers)],
            ring_v=[z(batch, c.n_heads, ring, c.d_head) for _ in range(c.n_layers)],
            conv=[z(batch, c.d_model, max(c.conv_kernel - 1, 0)) for _ in range(c.n_layers)],
            frames=torch.zeros(batch, dtype=torch.int64, device=device),
        )

    def flat(self) -> list[torch.Tensor]:
        """Every tensor of the state, in a fixed order (dim 0 is the batch)."""
        return [self.fe1, self.fe2, *self.ring_k, *self.ring_v, *self.conv, self.frames]

    @classmethod
    def from_flat(cls, tensors: list[torch.Tensor], n_layers: int) -> StreamState:
        n = n_layers
        return cls(fe1=tensors[0], fe2=tensors[1], ring_k=tensors[2:2 + n], ring_v=tensors[2 + n:2 + 2 * n],
                   conv=tensors[2 + 2 * n:2 + 3 * n], frames=tensors[2 + 3 * n])


class StateStore:
    """Slot-addressed store of stream states: ``max_slots`` rows, one per live stream.

    Which stream owns which slot is decided elsewhere (the scheduler allocates slots; a step plan names the
    slots that are new or freed): the store only holds the rows. :meth:`reset` returns slots to the initial
    (empty-memory) state. On CPU a step gathers the batch's slots into contiguous tensors and scatters the
    new state back (each slot's rows are contiguous, so both are plain row copies), or updates the rings in
    place through :meth:`view` / :meth:`commit`. A device-resident implementation may instead hand kernels
    the slab and the slot indices directly.
    """

    def __init__(self, config: ModelConfig, max_slots: int, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        self.config = config
        self.max_slots = max_slots
        self._slab = StreamState.zeros(config, max_slots, device=device, dtype=dtype).flat()

    def reset(self, slots: torch.Tensor) -> None:
        """Return the given slots (K,) to the initial state: empty memory, position 0."""
        if slots.numel() and (int(slots.min()) < 0 or int(slots.max()) >= self.max_slots):
            raise ValueError(f"slots must be in 0..{self.max_slots - 1}, got {slots.tolist()}")
        for tensor in self._slab:
            tensor.index_fill_(0, slots.to(tensor.device), 0)

    def gather(self, slots: torch.Tensor) -> StreamState:
        """Contiguous state of the given slots (B,), in the order given."""
        out = [t.view(t.shape[0], -1).index_select(0, slots).view(slots.shape[0], *t.shape[1:])
               for t in self._slab]
        return StreamState.from_flat(out, self.config.n_layers)

    def scatter(self, slots: torch.Tensor, state: StreamState) -> None:
        """Write a batch's new state back into its slots."""
        if state.ring_slots is not None:
            raise ValueError("a view's state is written back with commit(), not scatter()")
        for t, new in zip(self._slab, state.flat(), strict=True):
            t.view(t.shape[0], -1).index_copy_(0, slots, new.reshape(slots.shape[0], -1).to(t.dtype))

    def view(self, slots: torch.Tensor) -> StreamState:
        """The batch's state for a step that updates the key/value rings in place.

        Small tensors are gathered; the rings stay in the slab and the step touches only the batch's
        rows (reading them whole, writing just the new frames). Write the rest back with :meth:`commit`.
        This is the serving path: it moves ~1/10 of the bytes that gather + scatter move.
        """
        n = self.config.n_layers
        small = self._small_indices()
        flat = list(self._slab)
        for i in small:
            t = flat[i]
            flat[i] = t.view(t.shape[0], -1).index_select(0, slots).view(slots.shape[0], *t.shape[1:])
        state = StreamState.from_flat(flat, n)
        state.ring_slots = slots
        return state

    def commit(self, slots: torch.Tensor, state: StreamState) -> None:
        """Write back the small tensors of a state obtained from :meth:`view`."""
        new = state.flat()
        for i in self._small_indices():
            t = self._slab[i]
            t.view(t.shape[0], -1).index_copy_(0, slots, new[i].reshape(slots.shape[0], -1).to(t.dtype))

    def _small_indices(self) -> list[int]:
        n = self.config.n_layers
        return [0, 1, *range(2 + 2 * n, 3 + 3 * n)]  # fe1, fe2, conv x N, frames


def ring_geometry(frames: torch.Tensor, lengths: torch.Tensor, *, mem_frames: int, chunk_frames: int,
                  right_frames: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where a chunk goes in the ring, which keys are real, and each (query, key) distance row.

    The keys of a step are the ring's ``M + L`` slots followed by the ``R`` look-ahead frames.

    Args:
        frames: (B,) stream positions (encoder frames processed before this chunk).
        lengths: (B,) real frames in this step's window (chunk then look-ahead, at most L + R).
    Returns:
        write_pos (B, L) ring slots of the chunk's frames; key_valid (B, M+L+R) bool; rel_index
        (B, L+R, M+L+R) rows of the distance table (distance + L + R - 1).
    """
    m, l_, r_ = mem_frames, chunk_frames, right_frames
    ring = m + l_
    i = torch.arange(l_ + r_, device=frames.device)  # queries: the chunk, then its look-ahead
    write_pos = (frames[:, None] + i[None, :l_]) % ring  # (B, L)
    slot = torch.arange(ring, device=frames.device)
    age_rank = (slot[None, :] - frames[:, None] + m) % ring  # (B, M+L): 0 = oldest memory frame
    absolute = frames[:, None] - m + age_rank  # (B, M+L) absolute frame held by each slot
    key_valid = (absolute >= 0) & (absolute < frames[:, None] + lengths[:, None])
    rel_index = i[None, :, None] + m - age_rank[:, None, :] + (l_ + r_ - 1)  # (B, L+R, M+L)
    if r_:
        k = torch.arange(r_, device=frames.device)  # look-ahead key k sits at coordinate M + L + k
        right_valid = k[None, :] < (lengths[:, None] - l_)  # (B, R)
        right_rel = (i[:, None] - l_ - k[None, :] + (l_ + r_ - 1)).expand(frames.shape[0], -1, -1)
        key_valid = torch.cat([key_valid, right_valid], dim=1)
        rel_index = torch.cat([rel_index, right_rel], dim=2)  # (B, L+R, M+L+R)
    return write_pos, key_valid, rel_index


def sinusoid_table(distances: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-XL's sinusoid embedding of (possibly negative) distances: (P,) -> (P, dim)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    angles = distances.to(torch.float32)[:, None] * inv_freq[None, :]  # (P, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class CausalStridedConv(nn.Module):
    """Kernel-3 convolution over time whose output ``j`` sees inputs ``s*j-2 .. s*j`` (stride ``s``, 1 or 2)."""

    def __init__(self, d_in: int, d_out: int, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(d_in, d_out, kernel_size=3, stride=stride)

    def forward(self, x: torch.Tensor, cache: torch.Tensor,
                keep: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, D) with T a multiple of the stride; cache: (B, 2, D). Returns (B, T/s, D_out) and the cache for the next
        call: the last two of the first ``keep`` input frames (all of them when None; a step with
        look-ahead continues after its chunk, not after the look-ahead)."""
        xx = torch.cat([cache, x], dim=1)  # (B, T+2, D)
        # The convolution as one matrix product over stride-2 windows of 3 frames: the same weights and
        # sums as Conv1d, without oneDNN's per-call set-up (3.8 ms for a batch-8 streaming step, 0.2 here).
        b, t2, d = xx.shape
        s = self.stride
        windows = xx.unfold(1, 3, s).reshape(b, (t2 - 3) // s + 1, d * 3)  # (B, T/s, D*3): index d*3+k
        y = F.linear(windows, self.conv.weight.reshape(self.conv.out_channels, d * 3), self.conv.bias)
        n = t2 - 2 if keep is None else keep
        return F.gelu(y), xx[:, n:n + 2]


class RelPositionAttention(nn.Module):
    """Multi-head attention with Transformer-XL relative positions and the u/v biases."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.n_heads, self.d_head = c.n_heads, c.d_head
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.pos = nn.Linear(c.d_model, c.d_model, bias=False)  # W_{k,R}
        self.u = nn.Parameter(torch.zeros(c.n_heads, c.d_head))  # global content bias
        self.v = nn.Parameter(torch.zeros(c.n_heads, c.d_head))  # global position bias
        self.out = nn.Linear(c.d_model, c.d_model)
        self.dropout = c.dropout
        self._pos_keys: torch.Tensor | None = None

    def position_keys(self, pos_emb: torch.Tensor) -> torch.Tensor:
        """W_{k,R} R per head, (H, P, E). Constant at inference, so cached while not training."""
        if self.training or torch.is_grad_enabled():
            return self.pos(pos_emb).view(-1, self.n_heads, self.d_head).transpose(0, 1)
        if self._pos_keys is None or self._pos_keys.device != pos_emb.device:
            self._pos_keys = self.pos(pos_emb).view(-1, self.n_heads, self.d_head).transpose(0, 1).contiguous()
        return self._pos_keys

    def train(self, mode: bool = True) -> RelPositionAttention:
        self._pos_keys = None  # weights may change (or just did, e.g. loaded): recompute on next use
        return super().train(mode)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) -> q, k, v each (B, H, T, E)."""
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_heads, self.d_head)  # (B, T, 3, H, E)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, E)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, key_valid: torch.Tensor,
               pos_emb: torch.Tensor, rel_index: torch.Tensor) -> torch.Tensor:
        """One chunk's attention: q (B', H, L, E) over k, v (B', H, M+L, E) -> (B', L, D).

        key_valid: (B', M+L) bool; pos_emb: (M+2L-1, D) sinusoids of distances -(L-1)..M+L-1;
        rel_index: (B' or 1, L, M+L) int64 mapping each (query, key) pair to a row of pos_emb.
        """
        bq, h, lq, e = q.shape
        r = self.position_keys(pos_emb)  # (H, P, E)
        # (B', H, L, E) x (H, P, E) as one product per head: broadcasting r over B' would copy it B' times
        qv = (q + self.v[None, :, None, :]).transpose(0, 1).reshape(h, bq * lq, e)  # (H, B'L, E)
        bd_table = (qv @ r.transpose(-1, -2)).view(h, bq, lq, -1).transpose(0, 1)  # (B', H, L, P)
        index = rel_index[:, None].expand(bq, h, -1, -1)  # (B', H, L, M+L)
        bd = bd_table.gather(-1, index)  # (B', H, L, M+L)
        scale = 1.0 / math.sqrt(e)
        neg = torch.finfo(bd.dtype).min / 2
        bias = (bd * scale).masked_fill(~key_valid[:, None, None, :], neg)
        out = F.scaled_dot_product_attention(
            q + self.u[None, :, None, :], k, v, attn_mask=bias,
            dropout_p=self.dropout if self.training else 0.0, scale=scale)  # (B', H, L, E)
        return self.out(out.transpose(1, 2).reshape(bq, lq, h * e))


class ConvModule(nn.Module):
    """Pointwise-GLU, causal depthwise convolution, SiLU, pointwise (a streaming Conformer conv)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.kernel = config.conv_kernel
        self.pointwise_in = nn.Linear(d, 2 * d)
        self.depthwise = nn.Conv1d(d, d, kernel_size=config.conv_kernel, groups=d)
        self.norm = nn.LayerNorm(d)
        self.pointwise_out = nn.Linear(d, d)

    # The context (full pass or step) supplies each depthwise input's left frames, so the module is used
    # in three pieces: per-frame gate, the convolution over [left context ; frames], per-frame output.
    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, D, T)."""
        return F.glu(self.pointwise_in(x), dim=-1).transpose(1, 2)

    def convolve(self, yy: torch.Tensor) -> torch.Tensor:
        """(B, D, K-1+T) -> (B, T, D): outputs for the T frames after the K-1 context frames."""
        return self.depthwise(yy).transpose(1, 2)

    def output(self, z: torch.Tensor) -> torch.Tensor:
        return self.pointwise_out(F.silu(self.norm(z)))


class _Context(Protocol):
    """How a layer obtains the keys/values its chunks attend to, and its convolution cache."""

    def attention(self, layer: int, attn: RelPositionAttention, h: torch.Tensor) -> torch.Tensor: ...

    def convolution(self, layer: int, conv: ConvModule, h: torch.Tensor) -> torch.Tensor: ...


class EncoderLayer(nn.Module):
    """Pre-LN block: relative attention, causal convolution, feed-forward; residual around each."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.norm_attn = nn.LayerNorm(d)
        self.attn = RelPositionAttention(config)
        self.norm_conv = nn.LayerNorm(d) if config.conv_kernel else None
        self.conv = ConvModule(config) if config.conv_kernel else None
        self.norm_ff = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, config.d_ff), nn.GELU(), nn.Dropout(config.dropout),
                                nn.Linear(config.d_ff, d))
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, layer: int, ctx: _Context) -> torch.Tensor:
        x = x + self.drop(ctx.attention(layer, self.attn, self.norm_attn(x)))
        if self.conv is not None and self.norm_conv is not None:
            x = x + self.drop(ctx.convolution(layer, self.conv, self.norm_conv(x)))
        return x + self.drop(self.ff(self.norm_ff(x)))


class _FullContext:
    """Whole utterances: every chunk attends to its window of frames computed in the same pass.

    Rows of ``h``: the utterance's ``T = C*L`` frames, then (look-ahead only) each chunk's ``R`` copies.
    """

    def __init__(self, model: StreamingTransformerXL, lengths: torch.Tensor, num_frames: int) -> None:
        c = model.config
        self.c = c
        self.num_frames = num_frames
        self.num_chunks = num_frames // c.chunk_frames
        self.model = model
        # Key validity per chunk window: position p = chunk*L - M + s is real iff 0 <= p < length.
        keys = c.mem_frames + c.chunk_frames + c.right_frames
        starts = torch.arange(self.num_chunks, device=lengths.device) * c.chunk_frames - c.mem_frames
        pos = starts[:, None] + torch.arange(keys, device=lengths.device)  # (C, M+L+R)
        self.key_valid = ((pos >= 0)[None] & (pos[None] < lengths[:, None, None])).reshape(-1, keys)

    def attention(self, layer: int, attn: RelPositionAttention, h: torch.Tensor) -> torch.Tensor:
        c, t, n = self.c, self.num_frames, self.num_chunks
        b, _, d = h.shape
        q, k, v = attn.project(h)  # (B, H, T+C*R, E)
        h_, e = q.shape[1], q.shape[3]

        def chunks(x: torch.Tensor) -> torch.Tensor:  # the utterance's frames, (B*C, H, L, E)
            return x[:, :, :t].reshape(b, h_, n, c.chunk_frames, e).transpose(1, 2).reshape(
                b * n, h_, c.chunk_frames, e)

        def windows(x: torch.Tensor) -> torch.Tensor:  # each chunk's memory and chunk, (B*C, H, M+L, E)
            xp = F.pad(x[:, :, :t], (0, 0, c.mem_frames, 0))  # (B, H, M+T, E)
            w = xp.unfold(2, c.mem_frames + c.chunk_frames, c.chunk_frames)  # (B, H, C, E, M+L)
            return w.permute(0, 2, 1, 4, 3).reshape(b * n, h_, -1, e)

        def right(x: torch.Tensor) -> torch.Tensor:  # each chunk's look-ahead copies, (B*C, H, R, E)
            return x[:, :, t:].reshape(b, h_, n, c.right_frames, e).transpose(1, 2).reshape(
                b * n, h_, c.right_frames, e)

        qs, ks, vs = chunks(q), windows(k), windows(v)
        if c.right_frames:
            qs = torch.cat([qs, right(q)], dim=2)  # (B*C, H, L+R, E)
            ks, vs = torch.cat([ks, right(k)], dim=2), torch.cat([vs, right(v)], dim=2)  # (B*C, H, M+L+R, E)
        out = attn.attend(qs, ks, vs, key_valid=self.key_valid,
                          pos_emb=self.model.pos_emb, rel_index=self.model.rel_index)  # (B*C, L+R, D)
        main = out[:, :c.chunk_frames].reshape(b, t, d)
        if not c.right_frames:
            return main
        return torch.cat([main, out[:, c.chunk_frames:].reshape(b, n * c.right_frames, d)], dim=1)

    def convolution(self, layer: int, conv: ConvModule, h: torch.Tensor) -> torch.Tensor:
        c, t, n = self.c, self.num_frames, self.num_chunks
        y = conv.gate(h)  # (B, D, T+C*R)
        b, d, _ = y.shape
        yy = F.pad(y[:, :, :t], (conv.kernel - 1, 0))  # (B, D, K-1+T): zeros before the utterance
        z = conv.convolve(yy)  # (B, T, D)
        if c.right_frames:
            # A chunk's copies continue from the K-1 frames before the chunk's end.
            left = yy.unfold(2, conv.kernel - 1, c.chunk_frames)[:, :, 1:]  # (B, D, C, K-1)
            copies = y[:, :, t:].reshape(b, d, n, c.right_frames)  # (B, D, C, R)
            win = torch.cat([left, copies], dim=3).transpose(1, 2).reshape(b * n, d, -1)  # (B*C, D, K-1+R)
            zr = conv.convolve(win).reshape(b, n * c.right_frames, d)  # (B, C*R, D)
            z = torch.cat([z, zr], dim=1)
        return conv.output(z)


class _StepContext:
    """One chunk (and its look-ahead) per stream: the chunk's keys/values are written into the state's
    rings, which are then attended to whole, with the look-ahead's keys/values after them. The state
    passed in is updated in place (it is the caller's gathered copy)."""

    def __init__(self, model: StreamingTransformerXL, state: StreamState, lengths: torch.Tensor) -> None:
        c = model.config
        self.c = c
        self.model = model
        self.state = state
        self.write_pos, self.key_valid, self.rel_index = ring_geometry(
            state.frames, lengths, mem_frames=c.mem_frames, chunk_frames=c.chunk_frames,
            right_frames=c.right_frames)
        self.rows = torch.arange(state.frames.shape[0], device=state.frames.device)[:, None]  # (B, 1)
        self.lengths = lengths  # (B,) real frames of the chunk and its look-ahead
        # decided once per step (not per layer): the fused kernel serves no-grad steps on its backend
        self.use_kernel = resolve_backend(state.frames, model.attention_backend,
                                          needs_grad=torch.is_grad_enabled()) == "triton"

    def attention(self, layer: int, attn: RelPositionAttention, h: torch.Tensor) -> torch.Tensor:
        l_ = self.c.chunk_frames
        q, k, v = attn.project(h)  # (B, H, L+R, E)
        ring_k, ring_v = self.state.ring_k[layer], self.state.ring_v[layer]  # (B or S, H, M+L, E)
        slots = self.state.ring_slots
        rows = self.rows if slots is None else slots[:, None]
        ring_k[rows, :, self.write_pos] = k[:, :, :l_].transpose(1, 2).to(ring_k.dtype)  # (B, L, H, E)
        ring_v[rows, :, self.write_pos] = v[:, :, :l_].transpose(1, 2).to(ring_v.dtype)
        if self.use_kernel:
            # The fused kernel reads the batch's rows of the slab by slot: no gather of the rings.
            b, heads, lq, e = q.shape
            out = rel_attention(
                q, ring_k, ring_v, slots=slots if slots is not None else self.rows[:, 0],
                frames=self.state.frames, lengths=self.lengths,
                pos_keys=attn.position_keys(self.model.pos_emb), bias_u=attn.u, bias_v=attn.v,
                k_right=k[:, :, l_:] if self.c.right_frames else None,
                v_right=v[:, :, l_:] if self.c.right_frames else None, backend="triton")  # (B, H, L+R, E)
            return attn.out(out.transpose(1, 2).reshape(b, lq, heads * e))
        if slots is not None:  # read the batch's rows of the slab: (S, H, M+L, E) -> (B, H, M+L, E)
            ring_k = ring_k.view(ring_k.shape[0], -1).index_select(0, slots).view(-1, *ring_k.shape[1:])
            ring_v = ring_v.view(ring_v.shape[0], -1).index_select(0, slots).view(-1, *ring_v.shape[1:])
        keys, values = ring_k.to(q.dtype), ring_v.to(q.dtype)
        if self.c.right_frames:  # the look-ahead is attended to but never enters the memory
            keys, values = torch.cat([keys, k[:, :, l_:]], dim=2), torch.cat([values, v[:, :, l_:]], dim=2)
        return attn.attend(q, keys, values, key_valid=self.key_valid,
                           pos_emb=self.model.pos_emb, rel_index=self.rel_index)

    def convolution(self, layer: int, conv: ConvModule, h: torch.Tensor) -> torch.Tensor:
        l_ = self.c.chunk_frames
        y = conv.gate(h)  # (B, D, L+R)
        yy = torch.cat([self.state.conv[layer].to(y.dtype), y[:, :, :l_]], dim=2)  # (B, D, K-1+L)
        cache = yy[:, :, -(conv.kernel - 1):]
        self.state.conv[layer] = cache
        z = conv.convolve(yy)  # (B, L, D)
        if self.c.right_frames:
            z = torch.cat([z, conv.convolve(torch.cat([cache, y[:, :, l_:]], dim=2))], dim=1)  # (B, L+R, D)
        return conv.output(z)


class StreamingTransformerXL(nn.Module):
    """Streaming Transformer-XL CTC acoustic model (see the module docstring)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        # Which attention computes a streaming step: None = ``XLGATE_REL_ATTENTION`` or "auto" (the fused
        # Triton kernel for CUDA tensors, PyTorch elsewhere); "triton" or "reference" force one.
        self.attention_backend: str | None = None
        self.register_buffer("feat_mean", torch.zeros(c.n_mels))
        self.register_buffer("feat_std", torch.ones(c.n_mels))
        self.fe1 = CausalStridedConv(c.n_mels, c.frontend_channels, stride=2 if c.frontend == "xl" else 1)
        self.fe2 = CausalStridedConv(c.frontend_channels, c.d_model, stride=2)
        self.fe_proj = nn.Linear(c.d_model, c.d_model)
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.ctc = nn.Linear(c.d_model, c.vocab_size)
        lr = c.chunk_frames + c.right_frames
        distances = torch.arange(-(lr - 1), c.mem_frames + lr)  # (M+2(L+R)-1,)
        self.register_buffer("pos_emb", sinusoid_table(distances, c.d_model), persistent=False)
        i = torch.arange(lr)[:, None]
        j = torch.arange(c.mem_frames + lr)[None, :]
        self.register_buffer("rel_index", ((c.mem_frames + i - j) + (lr - 1))[None],
                             persistent=False)  # (1, L+R, M+L+R): in a full pass slot s of a window is its age

    def _front_end(self, features: torch.Tensor, fe1: torch.Tensor, fe2: torch.Tensor,
                   keep: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, sT, n_mels) -> (B, T, D) and the front end's caches after the first ``keep`` feature frames."""
        x = (features - self.feat_mean) / self.feat_std
        x, fe1_new = self.fe1(x, fe1, keep)  # (B, sT/s1, C)
        x, fe2_new = self.fe2(x, fe2, None if keep is None else keep // self.fe1.stride)  # (B, T, D)
        return self.fe_proj(x), fe1_new, fe2_new

    def _encode(self, x: torch.Tensor, ctx: _Context, num_frames: int) -> torch.Tensor:
        """Encoder layers over ``x`` (frames then look-ahead copies); final states of the first ``num_frames``."""
        for n, layer in enumerate(self.layers):
            x = layer(x, n, ctx)
        return self.norm(x[:, :num_frames])  # (B, T, D)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole utterances, exactly as streaming would see them.

        Args:
            features: (B, T, n_mels) log-mel frames; frames at or beyond ``lengths`` are ignored.
            lengths: (B,) number of real feature frames per utterance.
        Returns:
            CTC logits (B, T', V) with T' = ceil(T_padded / s), and (B,) output lengths ceil(lengths / s)
            (s = ``config.subsampling``).
        """
        states, out_lengths = self.forward_states(features, lengths)
        return self.ctc(states), out_lengths

    def forward_states(self, features: torch.Tensor,
                       lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` before the CTC head: final encoder states (B, T', D) and output lengths (B,)."""
        c = self.config
        step = c.chunk_feature_frames
        t = features.shape[1]
        padded = -(-t // step) * step if t else step
        # Zeros after the audio: the last chunk's padding and the look-ahead past the end, as streaming pads.
        features = F.pad(features, (0, 0, 0, padded - t + c.right_feature_frames))  # (B, T_pad+4R, n_mels)
        out_lengths = (lengths + c.subsampling - 1) // c.subsampling
        b = features.shape[0]
        num_frames = padded // c.subsampling
        zeros1 = features.new_zeros(b, 2, c.n_mels)
        zeros2 = features.new_zeros(b, 2, c.frontend_channels)
        x, _, _ = self._front_end(features, zeros1, zeros2, None)  # (B, T+R, D)
        if c.right_frames:  # chunk c's look-ahead copies are frames (c+1)L .. (c+1)L+R-1
            copies = x[:, c.chunk_frames:].unfold(1, c.right_frames, c.chunk_frames)  # (B, C, D, R)
            x = torch.cat([x[:, :num_frames], copies.transpose(2, 3).reshape(b, -1, x.shape[2])], dim=1)
        ctx = _FullContext(self, out_lengths, num_frames)
        return self._encode(x, ctx, num_frames), out_lengths

    def step(self, chunk: torch.Tensor, lengths: torch.Tensor,
             state: StreamState) -> tuple[torch.Tensor, torch.Tensor, StreamState]:
        """One streaming step for a batch of streams, each possibly at a different position.

        Args:
            chunk: (B, step_feature_frames, n_mels) log-mel frames: the chunk, then its look-ahead (zero-
                padded where the stream has ended).
            lengths: (B,) real feature frames in the window (1..step_feature_frames); fewer than
                ``chunk_feature_frames`` only for a stream's last chunk.
            state: the streams' states, batched in the same order (from ``StateStore.gather`` or
                ``StateStore.view``); consumed (updated in place). It advances by one chunk.
        Returns:
            logits (B, L, V) of the chunk's frames, their output lengths (B,), and the new state.
        """
        c = self.config
        if chunk.shape[1] != c.step_feature_frames:
            raise ValueError(f"chunk must have {c.step_feature_frames} frames, got {chunk.shape[1]}")
        out_lengths = (lengths + c.subsampling - 1) // c.subsampling  # real frames of the window
        ctx = _StepContext(self, state, out_lengths)
        x, fe1, fe2 = self._front_end(chunk, state.fe1, state.fe2, c.chunk_feature_frames)
        logits = self.ctc(self._encode(x, ctx, c.chunk_frames))
        state.fe1, state.fe2 = fe1, fe2
        state.frames = state.frames + c.chunk_frames
        return logits, out_lengths.clamp(max=c.chunk_frames), state

    def initial_state(self, batch: int) -> StreamState:
        p = next(self.parameters())
        return StreamState.zeros(self.config, batch, device=p.device, dtype=p.dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
