"""The short versions of ``python -m loadtest.faults`` and ``python -m loadtest.soak`` (issue 13).

One real ``xlgate serve`` process (the small random "chatty" model, so it starts fast and always answers)
goes through every fault in turn with real WebSocket, gRPC and MRCP clients: callers vanishing with a TCP
reset, RTP through a loss and jitter shaper, the model process killed and then stopped, the server
SIGKILLed and restarted on the same ports, and finally SIGTERM during load. Each fault's own checks (see
loadtest/faults.py) must pass, and the figures it reports must say what the checks claim. The full runs,
with the bundled model, are in docs/reliability.md.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import pytest

from loadtest import faults, soak
from tests.wsharness import noise_pcm

pytestmark = pytest.mark.timeout(400)


def write_clips(folder: Path, count: int) -> Path:
    """Speech-like noise bursts of 2-3 s as 8 kHz WAV files, with a refs.tsv."""
    folder.mkdir(parents=True, exist_ok=True)
    refs = []
    for i in range(count):
        pcm = noise_pcm(2.0 + 0.5 * (i % 3), seed=i)
        with wave.open(str(folder / f"clip{i}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(pcm.astype("<i2").tobytes())
        refs.append(f"clip{i}\thello there number {i}\n")
    (folder / "refs.tsv").write_text("".join(refs))
    return folder


def test_every_fault_on_one_server(chatty_checkpoint: str, tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    code = faults.main(
        [
            "hangup",
            "rtp",
            "model",
            "sigkill",
            "sigterm",
            "--audio-dir",
            str(write_clips(tmp_path / "audio", 3)),
            "--model",
            chatty_checkpoint,
            "--out",
            str(out),
            "--sessions",
            "1",
            "--concurrency",
            "3",
            "--live-s",
            "1.2",
            "--check-call-s",
            "2",
            "--drain-s",
            "1",
            "--server-log",
            str(tmp_path / "server.log"),
        ]
    )
    report: dict[str, Any] = json.loads(out.read_text())
    failed = [name for name, ok in report["checks"].items() if not ok]
    assert code == 0 and report["passed"], failed
    assert len(report["checks"]) >= 30
    for protocol in ("websocket", "grpc", "mrcp"):
        hangup = report["hangup"]["protocols"][protocol]
        assert hangup["vanished"] == 1 and hangup["counted_client_closed"] == 1
        assert hangup["counted_as_client_closed_after_ms"] < 5000
        for kind in ("crash", "stall"):
            (error_ms,) = report["model"][kind]["protocols"][protocol]["error_after_ms"]
            assert error_ms < (1000 if kind == "crash" else 2000)
        (seen_ms,) = report["sigkill"]["protocols"][protocol]["failure_seen_after_ms"]
        assert seen_ms < 2000
        assert report["sigterm"]["protocols"][protocol]["final_after_sigterm"] == 1
    assert (
        report["hangup"]["idle_after"]["event_loop_tasks"]
        == report["hangup"]["idle_before"]["event_loop_tasks"]
    )
    assert report["hangup"]["idle_after"]["rtp_ports_in_use"] == 0
    impaired = report["rtp"]["impaired"]
    assert impaired["packets_dropped_by_shaper"] > 0 and impaired["server_rtp_packets_lost"] > 0
    assert report["rtp"]["wer_delta"] is not None
    assert report["sigterm"]["exit_code"] == 0
    assert report["machine"]


def test_short_soak(chatty_checkpoint: str, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    code = soak.main(
        [
            "--audio-dir",
            str(write_clips(tmp_path / "audio", 3)),
            "--model",
            chatty_checkpoint,
            "--out",
            str(out),
            "--duration-s",
            "12",
            "--capacity",
            "3",
            "--load",
            "1.0",
            "--min-call-s",
            "2",
            "--max-call-s",
            "4",
            "--sample-s",
            "0.5",
            "--warmup-s",
            "3",
            "--server-arg=--runner=thread",
        ]
    )
    report: dict[str, Any] = json.loads(out.read_text())
    assert code == 0 and report["passed"], report["checks"]
    assert report["sessions"] >= 6 and set(report["sessions_by_protocol"]) == {"websocket", "grpc", "mrcp"}
    assert report["lost_finals"] == 0 and not report["failures"]
    assert len(report["samples"]) >= 10
    growth = report["growth"]
    assert growth["event_loop_tasks"]["samples"] >= 5 and growth["rss_bytes"]["first"] > 0
    assert report["idle_after"]["event_loop_tasks"] == report["idle_before"]["event_loop_tasks"]
    assert report["idle_after"]["rtp_ports_in_use"] == 0
