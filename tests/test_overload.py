"""Overload of a real ``xlgate serve`` (bundled model, ``--max-streams 4``): twice the capacity offered over
WebSocket, gRPC and SIP/MRCP at once (``loadtest.overload``, short version; docs/reliability.md).

Every refusal must be the protocol's overload answer (HTTP 503 + Retry-After or close 1013, gRPC
RESOURCE_EXHAUSTED, SIP 503 + Retry-After), nothing may fail otherwise, the gateway must count no error, log
no traceback and exit 0, and the load after the overload must see no refusal. The latency bound is
300 ms here, not the command's 150 ms: this machine is shared with other jobs and two of its cores run the
gateway, three protocols' clients and pytest (docs/reliability.md has the 150 ms figures).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.makeaudio import make_audio
from loadtest.overload import OverloadOptions, overload

pytestmark = pytest.mark.timeout(300)


def test_twice_the_capacity_is_refused_properly_and_the_gateway_recovers(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    make_audio(audio)
    report = overload(
        OverloadOptions(
            audio_dir=audio, out=tmp_path / "overload.json", capacity=4, duration_s=4.0, p99_ms=300.0
        )
    )
    assert report["passed"], report["reasons"]
    before, during, after = report["phases"]
    assert report["config"]["offered_streams"] == 8
    refused = sum(during["refusals"].values())
    assert refused > 0 and not before["refusals"] and not after["refusals"]
    # Six streams arrive within the first second for four slots; the SIP callers come at 1.5 s, when no
    # stream has ended yet (every clip is longer than 2 s): both kinds of refusal happen every run.
    assert during["refusals"].get("sip.refused_503", 0) >= 1, during["refusals"]
    assert sum(v for k, v in during["refusals"].items() if not k.startswith("sip.")) >= 2, during["refusals"]
    assert during["partial_latency_ms"]["count"] > 0 and after["partial_latency_ms"]["count"] > 0
    # The gateway counted the refusals it answered (a refused client retries, so it may count more).
    rejected = sum(
        v for k, v in report["server"]["streams_rejected_total"].items() if 'reason="capacity"' in k
    )
    assert rejected >= refused
    assert report["server"]["exit_code"] == 0
