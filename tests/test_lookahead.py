"""Look-ahead end to end: the engine's overlapping windows give exactly the full-utterance model's output."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from gateway.session import EndpointingSettings, StreamSettings
from streaming_model.checkpoint import LoadedModel
from streaming_model.config import ModelConfig
from streaming_model.decoding import GreedyDecoder
from streaming_model.features import Fbank, FbankConfig, StreamingFbank, compute_fbank
from streaming_model.tokenizer import CharTokenizer
from tests.conftest import TINY, engine_finals, make_chatty_model
from tests.wsharness import noise_pcm


def _loaded(right_frames: int) -> LoadedModel:
    config = ModelConfig(**{**TINY.to_dict(), "right_frames": right_frames})
    return LoadedModel(make_chatty_model(config, seed=right_frames), FbankConfig(), CharTokenizer(), trained=False)


def _offline_text(loaded: LoadedModel, audio: np.ndarray) -> str:
    feats = compute_fbank(audio, loaded.features)
    with torch.no_grad():
        logits, lengths = loaded.model(feats[None], torch.tensor([feats.shape[0]]))
    decoder = GreedyDecoder(loaded.tokenizer)
    decoder.accept(torch.log_softmax(logits[0, : int(lengths[0])], -1).numpy())
    return decoder.finalize().text


@pytest.mark.parametrize("right_frames,seconds,piece", [(0, 2.37, 333), (2, 2.37, 333), (2, 1.9, 8000),
                                                        (6, 2.05, 160), (3, 0.1, 400)])
def test_engine_with_look_ahead_equals_full_pass(right_frames: int, seconds: float, piece: int) -> None:
    loaded = _loaded(right_frames)
    audio = noise_pcm(seconds, seed=right_frames)
    expected = _offline_text(loaded, audio.astype(np.float32) / 32768.0)
    assert expected  # the chatty model always says something: the comparison is not vacuous
    params = StreamSettings(endpointing=EndpointingSettings(enabled=False))
    assert " ".join(asyncio.run(engine_finals(loaded, audio, params, piece_samples=piece))) == expected


@pytest.mark.parametrize("total_samples", [16 * 80 * 5, 16 * 80 * 5 + 37, 100, 16 * 80 + 8 * 80 + 1])
def test_overlapping_windows_cover_the_offline_features(total_samples: int) -> None:
    cfg = FbankConfig()
    rng = np.random.default_rng(total_samples)
    audio = (rng.standard_normal(total_samples) * 0.1).astype(np.float32)
    offline = compute_fbank(audio, cfg)
    fb = Fbank(cfg)
    chunker = StreamingFbank(cfg)
    chunker.accept(audio)
    windows: list[tuple[np.ndarray, int]] = []
    while chunker.can_take(16, 8):
        windows.append((chunker.take(16, 8), 24))
    windows += chunker.take_final(16, 8)
    assert chunker.samples_taken == total_samples
    start = 0
    for window, real in windows:
        if real == 0:
            continue
        feats = fb(torch.from_numpy(window)[None])[0]
        torch.testing.assert_close(feats[:real], offline[start:start + real], atol=1e-4, rtol=1e-4)
        start += min(real, 16)
    assert start == offline.shape[0]
