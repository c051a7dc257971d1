"""Chunked step() equals forward(); the state store round-trips; streaming features equal offline ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streaming_model.config import ModelConfig
from streaming_model.features import (
    Fbank,
    FbankConfig,
    StreamingFbank,
    compute_fbank,
    num_frames_for,
)
from streaming_model.model import StateStore, StreamState, ring_geometry
from tests.conftest import TINY, make_tiny_model

# fp32 on CPU: the two paths run the same operations on differently shaped batches, so they may differ
# by accumulation order only.
ATOL = 1e-4
RTOL = 1e-4


def _stream(model, feats: torch.Tensor, lengths: torch.Tensor, starts: list[int]) -> list[torch.Tensor]:
    """Run each utterance chunk by chunk, batching streams that are at different positions.

    Stream b joins the batch at step ``starts[b]``; at every step each active stream contributes its next
    chunk and the look-ahead after it (the window advances by one chunk). Returns the per-utterance logits
    concatenated over its chunks.
    """
    c = model.config
    step, window = c.chunk_feature_frames, c.step_feature_frames
    store = StateStore(c, max_slots=len(starts) + 2)
    slots = [len(starts) + 1 - b for b in range(len(starts))]  # any distinct slots, not in stream order
    n_chunks = [(-(-int(n) // step)) for n in lengths]
    outs: list[list[torch.Tensor]] = [[] for _ in starts]
    pos = [0] * len(starts)
    t = 0
    while any(pos[b] < n_chunks[b] for b in range(len(starts))):
        active = [b for b in range(len(starts)) if starts[b] <= t and pos[b] < n_chunks[b]]
        t += 1
        if not active:
            continue
        chunk = torch.zeros(len(active), window, c.n_mels)
        lens = torch.zeros(len(active), dtype=torch.int64)
        for row, b in enumerate(active):
            lo = pos[b] * step
            n = min(window, int(lengths[b]) - lo)
            chunk[row, :n] = feats[b, lo:lo + n]
            lens[row] = n
        idx = torch.tensor([slots[b] for b in active])
        with torch.no_grad():
            logits, out_len, state = model.step(chunk, lens, store.gather(idx))
        store.scatter(idx, state)
        for row, b in enumerate(active):
            outs[b].append(logits[row, : int(out_len[row])])
            pos[b] += 1
    return [torch.cat(o) for o in outs]


@pytest.mark.parametrize("mem_frames,conv_kernel,right_frames",
                         [(8, 5, 0), (0, 5, 0), (3, 0, 0), (16, 3, 0), (8, 5, 2), (0, 5, 1), (3, 0, 4), (8, 7, 6)])
def test_step_equals_forward_batch_at_different_positions(mem_frames: int, conv_kernel: int,
                                                          right_frames: int) -> None:
    config = ModelConfig(**{**TINY.to_dict(), "mem_frames": mem_frames, "conv_kernel": conv_kernel,
                            "right_frames": right_frames})
    model = make_tiny_model(config, seed=mem_frames + right_frames)
    torch.manual_seed(1)
    lengths = torch.tensor([16 * 9 + 5, 16 * 4, 16 * 6 + 1, 3])  # partial last chunks included
    feats = torch.randn(4, int(lengths.max()), config.n_mels) * 3
    with torch.no_grad():
        full, full_len = model(feats, lengths)
    streamed = _stream(model, feats, lengths, starts=[0, 2, 5, 1])
    for b in range(4):
        assert streamed[b].shape[0] == int(full_len[b])
        torch.testing.assert_close(streamed[b], full[b, : int(full_len[b])], atol=ATOL, rtol=RTOL)


def test_forward_ignores_frames_beyond_length() -> None:
    model = make_tiny_model()
    feats = torch.randn(1, 40, TINY.n_mels)
    with torch.no_grad():
        a, la = model(feats, torch.tensor([23]))
        b, lb = model(torch.cat([feats[:, :23], torch.randn(1, 30, TINY.n_mels) * 100], 1), torch.tensor([23]))
    n = int(la[0])
    assert n == int(lb[0]) == 6
    torch.testing.assert_close(a[0, :n], b[0, :n])


@pytest.mark.parametrize("right_frames", [0, 2, 6])
def test_look_ahead_reach_is_exactly_right_frames(right_frames: int) -> None:
    """A chunk's outputs depend on the R frames after it, and on nothing later."""
    config = ModelConfig(**{**TINY.to_dict(), "right_frames": right_frames})
    model = make_tiny_model(config, seed=7)
    c = model.config
    torch.manual_seed(4)
    feats = torch.randn(1, 16 * 8, c.n_mels)
    n = torch.tensor([feats.shape[1]])
    chunk = 3  # outputs of encoder frames 12..15
    end_feats = (chunk + 1) * c.chunk_feature_frames
    with torch.no_grad():
        base, _ = model(feats, n)
        beyond = feats.clone()
        beyond[:, end_feats + c.right_feature_frames:] += 5  # after the look-ahead
        out_beyond, _ = model(beyond, n)
        inside = feats.clone()
        inside[:, end_feats:end_feats + 4] += 5  # the first encoder frame after the chunk
        out_inside, _ = model(inside, n)
    rows = slice(chunk * c.chunk_frames, (chunk + 1) * c.chunk_frames)
    torch.testing.assert_close(base[0, rows], out_beyond[0, rows])
    assert torch.allclose(base[0, rows], out_inside[0, rows]) == (right_frames == 0)


def test_memory_changes_output_and_is_bounded() -> None:
    """The memory matters (not a no-op), and frames older than M+L do not influence the output."""
    model = make_tiny_model()
    c = model.config
    torch.manual_seed(3)
    feats = torch.randn(1, 16 * 12, c.n_mels)
    with torch.no_grad():
        base, _ = model(feats, torch.tensor([feats.shape[1]]))
        changed_recent = feats.clone()
        changed_recent[:, 16 * 10: 16 * 11] += 5  # the chunk just before the last one
        out_recent, _ = model(changed_recent, torch.tensor([feats.shape[1]]))
    assert not torch.allclose(base[0, -4:], out_recent[0, -4:])
    # Receptive field: N layers x (M + L) encoder frames plus the front end's few frames.
    horizon_feats = (c.n_layers * (c.mem_frames + c.chunk_frames) + 4) * 4
    far = feats.shape[1] - horizon_feats - 32
    assert far > 0
    changed_old = feats.clone()
    changed_old[:, :far] += 5
    with torch.no_grad():
        out_old, _ = model(changed_old, torch.tensor([feats.shape[1]]))
    torch.testing.assert_close(base[0, -4:], out_old[0, -4:])


def test_state_store_round_trip_and_isolation() -> None:
    c = TINY
    store = StateStore(c, max_slots=5)
    a, b = 3, 1
    torch.manual_seed(0)
    state = StreamState.zeros(c, 2)
    for t in state.flat():
        t.copy_(torch.randint(0, 100, t.shape).to(t.dtype))
    slots = torch.tensor([b, a])
    store.scatter(slots, state)
    back = store.gather(slots)
    for x, y in zip(state.flat(), back.flat(), strict=True):
        torch.testing.assert_close(x, y)
    # Reversed order gathers reversed rows; other slots untouched.
    rev = store.gather(torch.tensor([a, b]))
    torch.testing.assert_close(rev.ring_k[0][0], state.ring_k[0][1])
    assert all(int(t.abs().sum()) == 0 for t in store.gather(torch.tensor([0, 2, 4])).flat())
    # reset returns exactly the named slots to the initial state
    store.reset(torch.tensor([a]))
    assert all(int(t.abs().sum()) == 0 for t in store.gather(torch.tensor([a])).flat())
    for x, y in zip(state.flat(), store.gather(torch.tensor([b])).flat(), strict=True):
        torch.testing.assert_close(x[:1], y)
    with pytest.raises(ValueError, match="slots must be in"):
        store.reset(torch.tensor([5]))


def test_ring_geometry_matches_window_order() -> None:
    """At any position the ring holds the same frames, at the same distances, as the full-pass window."""
    m, l_ = 5, 3
    for frames in range(0, 20, 3):
        write_pos, valid, rel = ring_geometry(torch.tensor([frames]), torch.tensor([l_]), mem_frames=m,
                                              chunk_frames=l_)
        r = m + l_
        for j in range(r):
            age = (j - frames + m) % r
            absolute = frames - m + age
            assert bool(valid[0, j]) == (absolute >= 0)
            for i in range(l_):
                assert int(rel[0, i, j]) == (frames + i - absolute) + l_ - 1
        assert sorted(int(p) for p in write_pos[0]) == sorted((frames + i) % r for i in range(l_))


def test_ring_geometry_look_ahead_keys_follow_the_ring() -> None:
    m, l_, r_ = 5, 3, 2
    lr = l_ + r_
    for frames, lengths in [(0, 5), (7, 5), (9, 4), (12, 2)]:
        write_pos, valid, rel = ring_geometry(torch.tensor([frames]), torch.tensor([lengths]), mem_frames=m,
                                              chunk_frames=l_, right_frames=r_)
        assert write_pos.shape == (1, l_) and valid.shape == (1, m + l_ + r_) and rel.shape == (1, lr, m + lr)
        for k in range(r_):  # look-ahead key k holds absolute frame frames + L + k
            assert bool(valid[0, m + l_ + k]) == (l_ + k < lengths)
            for i in range(lr):
                assert int(rel[0, i, m + l_ + k]) == (i - l_ - k) + lr - 1
        for j in range(m + l_):  # ring keys: as without look-ahead, on the wider distance table
            absolute = frames - m + (j - frames + m) % (m + l_)
            assert bool(valid[0, j]) == (0 <= absolute < frames + lengths)
            assert int(rel[0, lr - 1, j]) == (frames + lr - 1 - absolute) + lr - 1


@pytest.mark.parametrize("piece_samples", [1, 80, 160, 333, 1280, 4000])
def test_streaming_features_equal_offline(piece_samples: int) -> None:
    cfg = FbankConfig()
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(8000 * 2 + 37) * 0.1).astype(np.float32)
    offline = compute_fbank(audio, cfg)
    assert offline.shape[0] == num_frames_for(audio.shape[0], cfg)
    fb = Fbank(cfg)
    chunker = StreamingFbank(cfg)
    parts = []
    for lo in range(0, audio.shape[0], piece_samples):
        chunker.accept(audio[lo:lo + piece_samples])
        while chunker.can_take(16):
            parts.append(fb(torch.from_numpy(chunker.take(16))[None])[0])
    window, _frames = chunker.take_rest()
    parts.append(fb(torch.from_numpy(window)[None])[0])
    streamed = torch.cat(parts)
    assert streamed.shape == offline.shape
    torch.testing.assert_close(streamed, offline, atol=1e-4, rtol=1e-4)
    assert chunker.samples_taken == audio.shape[0]


def test_fbank_is_band_limited_and_sensitive_to_tone_frequency() -> None:
    cfg = FbankConfig()
    t = np.arange(8000) / 8000
    low = compute_fbank((0.5 * np.sin(2 * np.pi * 500 * t)).astype(np.float32), cfg).mean(0)
    high = compute_fbank((0.5 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32), cfg).mean(0)
    assert int(low.argmax()) < int(high.argmax())


def test_step_rejects_wrong_chunk_size() -> None:
    model = make_tiny_model()
    with pytest.raises(ValueError, match="chunk must have 16 frames"):
        model.step(torch.zeros(1, 8, TINY.n_mels), torch.tensor([8]), model.initial_state(1))


def test_forward_gradients_reach_memory_path() -> None:
    """Training through forward() backpropagates into the frames used as memory by later chunks."""
    model = make_tiny_model()
    model.train()
    feats = torch.randn(1, 64, TINY.n_mels, requires_grad=True)
    logits, _ = model(feats, torch.tensor([64]))
    logits[0, -1].sum().backward()
    assert feats.grad is not None
    assert float(feats.grad[0, 16:32].abs().sum()) > 0  # an earlier chunk, reached through memory


def test_default_geometry_budget() -> None:
    """The default geometry stays within the CPU budget stated in docs/model.md."""
    c = ModelConfig()
    model = make_tiny_model(c)
    assert model.num_parameters() <= 8_000_000
    assert c.chunk_ms <= 160
    assert 2000 <= c.mem_ms <= 6000


def test_in_place_view_equals_gather_scatter() -> None:
    """The serving path (rings updated in the slab) gives the same outputs and state as gather/scatter."""
    model = make_tiny_model()
    c = model.config
    torch.manual_seed(4)
    a, b = StateStore(c, max_slots=6), StateStore(c, max_slots=6)
    slots_a = [5, 0, 3, 1]
    for step in range(7):
        active = torch.tensor(slots_a[: 2 + step % 3])  # streams join and skip steps
        chunk = torch.randn(active.shape[0], 16, c.n_mels)
        lens = torch.full((active.shape[0],), 16)
        with torch.no_grad():
            out_a, _, st_a = model.step(chunk, lens, a.gather(active))
            a.scatter(active, st_a)
            out_b, _, st_b = model.step(chunk, lens, b.view(active))
            b.commit(active, st_b)
        torch.testing.assert_close(out_a, out_b)
    every = torch.tensor(slots_a)
    for x, y in zip(a.gather(every).flat(), b.gather(every).flat(), strict=True):
        torch.testing.assert_close(x, y)
