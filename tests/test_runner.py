"""The model runner: int8 option, the child-process runner, and its failure modes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from gateway.runner import (
    ChunkInput,
    DecoderParams,
    EndpointParams,
    ModelRunner,
    ProcessRunner,
    RunnerCrashed,
    RunnerSpec,
)
from gateway.scheduler import ItemKind, WorkItem
from streaming_model.checkpoint import LoadedModel
from streaming_model.features import FbankConfig
from streaming_model.tokenizer import CharTokenizer
from tests.conftest import make_chatty_model


def _items(n: int, *, first: bool, seed: int) -> list[WorkItem]:
    rng = np.random.default_rng(seed)
    return [WorkItem(i, ItemKind.AUDIO, 0.0,
                     ChunkInput(slot=i, window=(rng.standard_normal(1400) * 0.1).astype(np.float32),
                                num_frames=16, first=first, endpoint=EndpointParams(enabled=False),
                                decoder=DecoderParams(), audio_end_s=0.16))
            for i in range(n)]


def test_int8_logits_track_float32() -> None:
    loaded = LoadedModel(make_chatty_model(), FbankConfig(), CharTokenizer(), trained=False)
    fp32 = ModelRunner(loaded, max_streams=4)
    int8 = ModelRunner(LoadedModel(make_chatty_model(), FbankConfig(), CharTokenizer(), trained=False),
                       max_streams=4, quantize="int8")
    for step in range(3):
        items = _items(4, first=step == 0, seed=step)
        out_a = fp32.run_step(items)
        out_b = int8.run_step(items)
        assert len(out_a) == len(out_b) == 4
    # Compare the encoders directly on the same input and state.
    x = torch.randn(2, 16, 64)
    with torch.inference_mode():
        la, _, _ = fp32.model.step(x, torch.tensor([16, 16]), fp32.model.initial_state(2))
        lb, _, _ = int8.model.step(x, torch.tensor([16, 16]), loaded.model.initial_state(2))
    cos = torch.nn.functional.cosine_similarity(la.flatten(), lb.flatten(), dim=0)
    assert float(cos) > 0.98


def test_quantize_rejects_unknown_mode() -> None:
    loaded = LoadedModel(make_chatty_model(), FbankConfig(), CharTokenizer(), trained=False)
    with pytest.raises(ValueError, match="quantize"):
        ModelRunner(loaded, max_streams=1, quantize="int4")


def test_process_runner_matches_thread_runner(chatty_checkpoint: str) -> None:
    from gateway.models import load_model

    local = ModelRunner(load_model(chatty_checkpoint, "cpu", warn=False), max_streams=3)

    async def main() -> None:
        remote = ProcessRunner(RunnerSpec(model=chatty_checkpoint, device="cpu", max_streams=3, num_threads=1))
        await remote.start()
        try:
            assert remote.info.max_streams == 3 and remote.info.chunk_frames == 16
            for step in range(4):
                items = _items(3, first=step == 0, seed=10 + step)
                a = local.run_step(items)
                b = await remote.run_step(items)
                assert [o.partial.text if o.partial else None for o in a] == \
                       [o.partial.text if o.partial else None for o in b]
        finally:
            await remote.close()
        assert not remote._process.is_alive()

    asyncio.run(main())


def test_process_runner_reports_a_bad_model(tmp_path: object) -> None:
    async def main() -> None:
        runner = ProcessRunner(RunnerSpec(model="/nonexistent/model.safetensors", device="cpu", max_streams=1,
                                          num_threads=1))
        with pytest.raises(RunnerCrashed, match="does not exist"):
            await runner.start()

    asyncio.run(main())
