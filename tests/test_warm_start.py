"""Warm start of a real ``xlgate serve`` (bundled model, child-process runner): the first session after a
start is as fast as a later one (``loadtest.warmstart``, short version; docs/reliability.md).

Criterion, chosen for a shared, loaded 2-core CI machine: the first session's partial p99 is at most
2 x the warm session's + 50 ms. A cold start costs a multiple (without the warm-up: a ~100 ms CPU pause of
the model process's garbage collector and the first steps' set-up, docs/reliability.md), while one noisy
run of the same server moves p99 by tens of percent. A failing start is measured once more on a fresh
server: a cold start fails every time, noise rarely twice in a row.

``XLGATE_WARMUP=false`` in the environment reaches the server and turns the warm-up off: the way to see
this test fail without it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from loadtest.makeaudio import make_audio
from loadtest.warmstart import WarmStartOptions, warm_start

pytestmark = pytest.mark.timeout(300)
STREAMS = 8


def test_first_session_after_a_start_is_as_fast_as_a_warm_one(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    make_audio(audio)
    opts = WarmStartOptions(
        audio_dir=audio,
        out=tmp_path / "warm.json",
        streams=STREAMS,
        duration_s=5.0,
        serve_args=("--max-streams", str(STREAMS), "--max-batch-size", str(STREAMS)),
        max_ratio=2.0,
        slack_ms=50.0,
    )
    report = warm_start(opts)
    if not report["passed"]:
        report = warm_start(replace(opts, out=tmp_path / "warm-again.json"))
    start = report["starts"][0]
    assert report["passed"], start["reasons"]
    for session in ("first", "warm"):
        assert start[session]["counts"]["sessions_started"] >= STREAMS
        assert start[session]["latency_ms"]["partial"]["count"] >= 50  # enough partials for a p99
    assert start["server_exit_code"] == 0
    assert start["warmup"]["batch_sizes"] == STREAMS and start["warmup"]["seconds"] > 0  # from its /metrics
    log = Path(start["server_log"]).read_text()
    assert f"warm-up: batch sizes 1..{STREAMS} of {STREAMS}" in log, log[-2000:]
