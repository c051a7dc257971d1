"""The load generator against the real gateway (thread runner, small model) over loopback: latencies are
measured and the server's step histograms are read back into the report."""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path
from typing import Any

from loadtest.probes import ServerStepProbe
from loadtest.runner import RunOptions, run_load
from tests.wsharness import noise_pcm, running_server, settings_for


def _write_wav(path: Path, pcm: object) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(pcm))  # type: ignore[call-overload]


def test_run_against_gateway_reports_server_steps(chatty_checkpoint: str, tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(2):
        _write_wav(audio / f"utt{i}.wav", noise_pcm(1.2, seed=i).tobytes())

    async def main() -> dict[str, object]:
        async with running_server(settings_for(chatty_checkpoint)) as srv:
            opts = RunOptions(url=srv.ws_url, audio_dir=audio, streams=3, processes=1,
                              metrics_url=srv.metrics_url + "/metrics")
            return (await asyncio.to_thread(run_load, opts)).report

    report = asyncio.run(main())
    assert report["errors"]["total"] == 0, report["errors"]  # type: ignore[index]
    assert report["counts"]["sessions_completed"] == 3  # type: ignore[index]
    steps = report["server_steps"]
    assert isinstance(steps, dict)
    # 3 streams x 1.2 s in 160 ms chunks: at least 8 chunks each, batched into steps.
    assert steps["steps"] >= 8
    assert 1.0 <= steps["avg_batch"] <= 3.0
    assert steps["avg_step_ms"] > 0 and steps["avg_queue_wait_ms"] >= 0
    assert 0 < steps["runner_busy_fraction"] < 1


def test_step_probe_report_is_the_difference_of_two_scrapes() -> None:
    before = {"step": (1.0, 100.0), "batch": (400.0, 100.0), "queue_wait": (2.0, 400.0)}
    after = {"step": (3.0, 150.0), "batch": (700.0, 150.0), "queue_wait": (3.0, 700.0)}
    r = ServerStepProbe.report(before, after, wall_s=10.0)
    assert r == {"steps": 50.0, "steps_per_s": 5.0, "avg_step_ms": 40.0, "avg_batch": 6.0,
                 "avg_queue_wait_ms": 3.33, "runner_busy_fraction": 0.2}
    assert ServerStepProbe.report(None, after, wall_s=10.0) is None
    assert ServerStepProbe(None).sample() is None


def test_run_drives_grpc_streams(chatty_checkpoint: str, tmp_path: Path) -> None:
    """The same load over the gRPC API (``--url grpc://HOST:PORT``): a short smoke run, not a benchmark."""
    from tests.grpcharness import grpc_settings_for

    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(2):
        _write_wav(audio / f"utt{i}.wav", noise_pcm(1.2, seed=i).tobytes())
    settings = grpc_settings_for(chatty_checkpoint)

    async def main() -> tuple[dict[str, object], str]:
        async with running_server(settings) as srv:
            opts = RunOptions(url=f"grpc://127.0.0.1:{settings.grpc_port}", audio_dir=audio, streams=3,
                              processes=1, metrics_url=srv.metrics_url + "/metrics")
            report = (await asyncio.to_thread(run_load, opts)).report
            return report, srv.http_get("/metrics")[1]

    report, metrics = asyncio.run(main())
    assert report["errors"]["total"] == 0, report["errors"]  # type: ignore[index]
    assert report["counts"]["sessions_completed"] == 3  # type: ignore[index]
    assert report["counts"]["partials"] > 0 and report["counts"]["finals"] >= 3  # type: ignore[index]
    assert report["counts"].get("overruns", 0) == 0  # type: ignore[attr-defined]
    assert 'xlgate_streams_ended_total{outcome="completed",protocol="grpc"} 3.0' in metrics


def test_run_against_a_protected_gateway_sends_the_token(chatty_checkpoint: str, tmp_path: Path) -> None:
    """With --token-file the load generator authenticates on WebSocket and gRPC; without it every session is
    refused (HTTP 401 / UNAUTHENTICATED, counted as errors), and the token never reaches the report."""
    from loadtest.__main__ import _token
    from tests.wsharness import free_port

    token = "loadtest-token-0123456789abcdef"
    (tmp_path / "token").write_text(token + "\n")
    audio = tmp_path / "audio"
    audio.mkdir()
    _write_wav(audio / "utt0.wav", noise_pcm(1.0).tobytes())
    settings = settings_for(chatty_checkpoint, "--grpc-port", str(free_port()), "--auth-tokens", token)

    async def main() -> list[dict[str, Any]]:
        reports = []
        async with running_server(settings) as srv:
            for url in (srv.ws_url, f"grpc://127.0.0.1:{settings.grpc_port}"):
                for secret in (_token(tmp_path / "token"), None):
                    opts = RunOptions(url=url, audio_dir=audio, streams=1, processes=1, token=secret)
                    reports.append((await asyncio.to_thread(run_load, opts)).report)
        return reports

    ws_ok, ws_refused, grpc_ok, grpc_refused = asyncio.run(main())
    for ok in (ws_ok, grpc_ok):
        assert ok["errors"]["total"] == 0 and ok["counts"]["sessions_completed"] == 1, ok["errors"]
        assert ok["config"]["authenticated"] is True and "token" not in ok["config"]
        assert token not in json.dumps(ok)
    assert ws_refused["errors"]["by_code"] == {"client.http_401": 1}, ws_refused["errors"]
    assert grpc_refused["errors"]["by_code"] == {"client.grpc_unauthenticated": 1}, grpc_refused["errors"]
    assert grpc_refused["config"]["authenticated"] is False
