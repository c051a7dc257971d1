"""loadtest.mrcp: concurrent paced MRCP calls against an in-process gateway (small random model), and the
speech bounds its latencies are measured from."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest

from loadtest.mrcp import report, run_sessions, speech_bounds
from loadtest.runner import RunOptions, run_load
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


def test_a_call_cut_by_the_trials_deadline_is_stopped_not_failed(tmp_path: Path) -> None:
    """The common runner's MRCP session: a file cut by the trial's deadline before its speech starts is a
    truncated session that ends at once with STOP (not a no-input-timeout counted as an error, nor a call
    left running into the next trial)."""
    audio = tmp_path / "audio"
    audio.mkdir()
    pcm = np.concatenate([np.zeros(8000, np.int16), clip(3)])  # speech only after 1 s
    with wave.open(str(audio / "late.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm.tobytes())

    async def main() -> dict[str, object]:
        loaded = LoadedModel(make_chatty_model(), FbankConfig(), CharTokenizer(), trained=False)
        async with served(loaded) as srv:
            opts = RunOptions(url=srv.uri, audio_dir=audio, streams=1, processes=1, duration_s=0.5)
            return (await asyncio.to_thread(run_load, opts)).report

    report = asyncio.run(main())
    assert report["errors"] == {"total": 0, "by_code": {}}
    counts = report["counts"]
    # A second call may start just before the deadline (the first is cut when its next frame is due past it).
    assert isinstance(counts, dict) and counts["sessions_truncated"] >= 1
    assert counts["sessions_failed"] == 0 and counts["sessions_completed"] == 0
    assert isinstance(report["wall_s"], float) and report["wall_s"] < 5  # not left to its 5 s No-Input-Timeout
