"""Shared fixtures: a small random model (until a test needs the shipped checkpoint)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from gateway.engine import Engine
from gateway.metrics import Metrics
from gateway.runner import ModelRunner, ThreadRunner
from gateway.session import ResultEvent, StreamSettings
from streaming_model.checkpoint import LoadedModel
from streaming_model.config import ModelConfig
from streaming_model.features import FbankConfig
from streaming_model.model import StreamingTransformerXL
from streaming_model.tokenizer import CharTokenizer

TINY = ModelConfig(n_layers=2, d_model=64, n_heads=4, d_ff=128, frontend_channels=64, conv_kernel=5,
                   chunk_frames=4, mem_frames=8, dropout=0.0)


def make_tiny_model(config: ModelConfig = TINY, seed: int = 0) -> StreamingTransformerXL:
    torch.manual_seed(seed)
    model = StreamingTransformerXL(config).eval()
    # Non-trivial u/v biases and feature normalisation so the tests exercise every term.
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.u.normal_(0, 0.5)
            layer.attn.v.normal_(0, 0.5)
        model.feat_mean.normal_(0, 1)
        model.feat_std.uniform_(0.5, 2.0)
    return model


@pytest.fixture
def tiny_loaded() -> LoadedModel:
    return LoadedModel(make_tiny_model(), FbankConfig(), CharTokenizer(), trained=False)


def make_chatty_model(config: ModelConfig = TINY, seed: int = 0) -> StreamingTransformerXL:
    """A random model that rarely predicts blank, so protocol tests always see partials and finals."""
    model = make_tiny_model(config, seed)
    with torch.no_grad():
        model.ctc.bias[0] = -4.0
    return model


@pytest.fixture(scope="session")
def chatty_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    from streaming_model.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("model") / "chatty.safetensors"
    save_checkpoint(path, make_chatty_model(), features=FbankConfig(), tokenizer=CharTokenizer(), trained=False)
    return str(path)


@pytest.fixture(scope="session")
def wordy_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The chatty model, but often predicting a space: its partials have several words."""
    from streaming_model.checkpoint import save_checkpoint

    model = make_chatty_model()
    with torch.no_grad():
        model.ctc.bias[CharTokenizer().symbols.index(" ")] = 1.0
    path = tmp_path_factory.mktemp("model") / "wordy.safetensors"
    save_checkpoint(path, model, features=FbankConfig(), tokenizer=CharTokenizer(), trained=False)
    return str(path)


async def engine_finals(loaded: LoadedModel, pcm: np.ndarray, params: StreamSettings, *,
                        piece_samples: int) -> list[str]:
    """Stream ``pcm`` through a real engine and thread runner in pieces of ``piece_samples``; the finals' texts."""
    engine = Engine(ThreadRunner(ModelRunner(loaded, max_streams=2)), metrics=Metrics(), max_streams=2,
                    max_batch_size=2, max_wait_s=0.002, max_pending_chunks=4)
    finals: list[str] = []
    async with asyncio.TaskGroup() as tg:
        tg.create_task(engine.run())
        try:
            (stream,) = engine.open_streams(1, params, protocol="websocket")

            async def collect() -> None:
                async for event in stream.events():
                    if isinstance(event, ResultEvent) and event.is_final:
                        finals.append(event.hypothesis.text)

            reader = tg.create_task(collect())
            for lo in range(0, pcm.shape[0], piece_samples):
                await stream.feed(pcm[lo:lo + piece_samples])
            await stream.stop()
            await reader
        finally:
            engine.close()
    await engine.runner.close()
    return finals
