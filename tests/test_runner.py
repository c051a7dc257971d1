"""The model runner: int8 option, the child-process runner, and its failure modes."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest
import torch

from gateway.runner import (
    ChunkInput,
    ModelRunner,
    ProcessRunner,
    RunnerCrashed,
    RunnerSpec,
)
from gateway.scheduler import ItemKind, NewStream, StepPlan, WorkItem
from gateway.session import EndpointingSettings, StreamSettings
from streaming_model.checkpoint import LoadedModel
from streaming_model.decoding import ConfidenceCalibration, utterance_confidence
from streaming_model.features import FbankConfig
from streaming_model.tokenizer import CharTokenizer
from tests.conftest import make_chatty_model

NO_ENDPOINTING = StreamSettings(endpointing=EndpointingSettings(enabled=False))


def plan_of(items: list[WorkItem], *, first: bool, step_id: int = 0) -> StepPlan:
    """A plan of ``items`` on slots 0..n-1; ``first`` announces their streams as new."""
    slots = tuple(range(len(items)))
    return StepPlan(step_id=step_id, items=tuple(items), slots=slots, planned_s=0.0,
                    new_streams=tuple(NewStream(s, NO_ENDPOINTING) for s in slots) if first else ())


def _items(n: int, *, first: bool, seed: int) -> StepPlan:
    rng = np.random.default_rng(seed)
    return plan_of([WorkItem(i, ItemKind.AUDIO, 0.0,
                             ChunkInput(window=(rng.standard_normal(1400) * 0.1).astype(np.float32),
                                        num_frames=16, audio_end_s=0.16))
                    for i in range(n)], first=first, step_id=seed)


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


def test_runner_applies_the_checkpoints_confidence_calibration() -> None:
    cal = ConfidenceCalibration(scale=0.5, shift=-1.0)
    model = make_chatty_model()
    raw = ModelRunner(LoadedModel(model, FbankConfig(), CharTokenizer(), trained=False), max_streams=2)
    mapped = ModelRunner(LoadedModel(model, FbankConfig(), CharTokenizer(), trained=False,
                                     info={"confidence_calibration": cal.to_json()}), max_streams=2)
    partials = []
    for step in range(3):
        items = _items(2, first=step == 0, seed=20 + step)
        partials.extend(zip(raw.run_step(items), mapped.run_step(items), strict=True))
    finish = plan_of([WorkItem(i, ItemKind.FINALIZE, 0.0, ChunkInput(window=None, num_frames=0, audio_end_s=0.48))
                      for i in range(2)], first=False)
    finals = list(zip(raw.run_step(finish), mapped.run_step(finish), strict=True))
    pairs = [(a.partial, b.partial) for a, b in partials if a.partial is not None]
    pairs += [(fa, fb) for a, b in finals for fa, fb in zip(a.finals, b.finals, strict=True)]
    assert pairs and any(b.words for _, b in pairs)
    for a, b in pairs:
        assert b is not None and a.text == b.text
        assert [w.confidence for w in b.words] == pytest.approx([cal.word(w.confidence) for w in a.words])
        assert b.confidence == pytest.approx(utterance_confidence(b.words))
    moved = [abs(wa.confidence - wb.confidence) for a, b in pairs for wa, wb in zip(a.words, b.words, strict=True)]
    assert max(moved) > 0.01


def _outputs(runner: ModelRunner, steps: int) -> list[tuple[str | None, tuple[str, ...]]]:
    """Partial and final texts of ``steps`` steps of 3 streams (the last one ends them)."""
    out = []
    for step in range(steps):
        plan = _items(3, first=step == 0, seed=20 + step)
        if step == steps - 1:
            plan = replace(plan, items=tuple(replace(i, kind=ItemKind.END) for i in plan.items))
        out += [(o.partial.text if o.partial else None, tuple(f.text for f in o.finals))
                for o in runner.run_step(plan)]
    return out


def test_warm_up_steps_every_batch_size_and_leaves_no_trace() -> None:
    cold = ModelRunner(LoadedModel(make_chatty_model(), FbankConfig(), CharTokenizer(), trained=False), max_streams=6)
    warm = ModelRunner(LoadedModel(make_chatty_model(), FbankConfig(), CharTokenizer(), trained=False), max_streams=6)
    batch_sizes: list[int] = []
    real_step = warm.run_step
    warm.run_step = lambda plan: (batch_sizes.append(plan.batch_size), real_step(plan))[1]  # type: ignore[method-assign]
    report = warm.warm_up(5, timeout_s=60)
    warm.run_step = real_step  # type: ignore[method-assign]
    assert batch_sizes == [1, 2, 3, 4, 5, 5]  # every shape the scheduler can form, then the closing step
    assert report.complete and report.batch_sizes == 5 and report.seconds > 0
    assert warm.info.warmup == report and cold.info.warmup is None
    # No slot is left live and every state row is back to its initial value...
    assert not warm._slots
    for a, b in zip(warm.store._slab, cold.store._slab, strict=True):
        assert torch.equal(a, b)
    # ...so a warmed runner's streams come out exactly as a cold one's.
    assert _outputs(warm, 4) == _outputs(cold, 4)


def test_warm_up_stops_at_its_timeout_and_checks_its_arguments() -> None:
    runner = ModelRunner(LoadedModel(make_chatty_model(), FbankConfig(), CharTokenizer(), trained=False),
                         max_streams=4)
    report = runner.warm_up(4, timeout_s=0.0)
    assert report.batch_sizes <= 1 and not report.complete  # at most the first step: the budget is spent
    with pytest.raises(ValueError, match=r"max_batch_size must be in 1\.\.4"):
        runner.warm_up(5, timeout_s=1)
    runner.run_step(_items(2, first=True, seed=1))
    with pytest.raises(ValueError, match="2 slots are live"):
        runner.warm_up(2, timeout_s=1)


def test_process_runner_warms_up_before_it_says_ready(chatty_checkpoint: str) -> None:
    async def main() -> None:
        runner = ProcessRunner(RunnerSpec(model=chatty_checkpoint, device="cpu", max_streams=3, num_threads=1,
                                          warmup_batch_size=3, warmup_timeout_s=60))
        await runner.start()
        try:
            assert runner.info.warmup is not None and runner.info.warmup.batch_sizes == 3
            outputs = await runner.run_step(_items(3, first=True, seed=5))
            assert len(outputs) == 3
        finally:
            await runner.close()

    asyncio.run(main())
