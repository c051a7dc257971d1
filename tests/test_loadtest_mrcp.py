"""loadtest.mrcp: concurrent paced MRCP calls against an in-process gateway (small random model), and the
speech bounds its latencies are measured from."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from loadtest.mrcp import report, run_sessions, speech_bounds
from streaming_model.checkpoint import LoadedModel
from streaming_model.features import FbankConfig
from streaming_model.tokenizer import CharTokenizer
from tests.conftest import make_chatty_model
from tests.test_mrcp_e2e import served

pytestmark = pytest.mark.timeout(120)


def clip(seed: int) -> np.ndarray:
    voiced = (np.random.default_rng(seed).standard_normal(8000) * 3000).astype(np.int16)
    return np.concatenate([np.zeros(2400, np.int16), voiced, np.zeros(1600, np.int16)])


def test_speech_bounds() -> None:
    assert speech_bounds(clip(0)) == pytest.approx((0.3, 1.3))
    assert speech_bounds(np.zeros(800, np.int16)) == (0.0, 0.1)


def test_two_concurrent_sessions_report_latencies() -> None:
    async def main() -> dict[str, object]:
        loaded = LoadedModel(make_chatty_model(), FbankConfig(), CharTokenizer(), trained=False)
        async with served(loaded) as srv:
            results = await run_sessions(srv.uri, [("a", clip(1)), ("b", clip(2))], sessions=2, rounds=1)
        return report(results, sessions=2, wall_s=1.0)

    summary = asyncio.run(main())
    assert summary["recognitions"] == 2
    start, complete = summary["start_of_input_latency_ms"], summary["recognition_complete_latency_ms"]
    assert isinstance(start, dict) and isinstance(complete, dict)
    assert start["count"] == 2 and complete["count"] == 2
    assert complete["max_ms"] is not None and complete["max_ms"] < 3000
    failures = summary["failures"]
    assert isinstance(failures, dict) and set(failures) <= {"cause_001"}  # the random model rarely "matches"
