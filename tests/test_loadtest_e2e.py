"""Loopback tests of the load generator against a tiny fake xlgate WebSocket server.

The fake server speaks protocol v1 with known behaviour: it answers every ``PARTIAL_EVERY`` frames with a
partial sent ``delay_s`` after the frame arrived, claiming ``audio_end_ms`` = audio received so far (plus
``lie_ms`` when asked to lie), and on ``stop`` sends one final whose text depends on which file it heard:
each test file is a constant signal of amplitude ``1000 * k``, so the first sample tells the file apart.
"""

from __future__ import annotations

import asyncio
import json
import threading
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import Request, Response, ServerConnection, serve

from loadtest.__main__ import main
from loadtest.report import plot_cdf
from loadtest.runner import RunOptions, run_load

SAMPLE_RATE_HZ = 8000
PARTIAL_EVERY = 5
FILE_S = 0.4
TEXTS = {1: "thank you for calling", 2: "how can i help you today"}


@dataclass
class FakeBehaviour:
    delay_s: float = 0.05
    lie_ms: float = 0.0
    reject: bool = False
    drop_word_of: int | None = None
    never_end: bool = False
    overloaded_at_start: int | None = None  # answer start with the overloaded error, then this close code
    retry_header: bool = True  # a 503 refusal carries Retry-After


class FakeServer:
    """A v1 server in a background thread with its own event loop."""

    def __init__(self, behaviour: FakeBehaviour) -> None:
        self.behaviour = behaviour
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        assert self._started.wait(10), "fake server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def _main(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if not self.behaviour.reject:
            return None
        response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "at capacity\n")
        if self.behaviour.retry_header:
            response.headers["Retry-After"] = "0"
        return response

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, compression=None,
                         process_request=self._process_request) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._started.set()
            await self._stop.wait()

    async def _handler(self, ws: ServerConnection) -> None:
        b = self.behaviour
        start = json.loads(await ws.recv())
        assert start["type"] == "start" and start["encoding"] == "pcm_s16le"
        if b.overloaded_at_start is not None:
            await ws.send(json.dumps({"type": "error", "code": "overloaded", "message": "at capacity",
                                      "fatal": True, "retry_after_ms": 0}))
            await ws.close(b.overloaded_at_start)
            return
        await ws.send(json.dumps({"type": "ready", "session_id": "fake"}))
        received_s = 0.0
        frames = 0
        file_k = 0
        async with asyncio.TaskGroup() as tg:
            async for message in ws:
                if isinstance(message, bytes):
                    if frames == 0:
                        file_k = round(int(np.frombuffer(message[:2], "<i2")[0]) / 1000)
                    frames += 1
                    received_s += len(message) / 2 / SAMPLE_RATE_HZ
                    if frames % PARTIAL_EVERY == 0:
                        tg.create_task(self._send_later(ws, {
                            "type": "partial", "channel": 0, "text": "partial", "start_ms": 0,
                            "end_ms": received_s * 1000, "audio_end_ms": received_s * 1000 + b.lie_ms}))
                elif json.loads(message)["type"] == "stop":
                    break
        if b.never_end:
            await ws.wait_closed()
            return
        words = TEXTS.get(file_k, "").split()
        if b.drop_word_of == file_k:
            words = words[1:]
        await ws.send(json.dumps({"type": "final", "channel": 0, "text": " ".join(words), "start_ms": 0,
                                  "end_ms": received_s * 1000, "audio_end_ms": received_s * 1000}))
        await ws.send(json.dumps({"type": "end"}))

    async def _send_later(self, ws: ServerConnection, msg: dict[str, Any]) -> None:
        await asyncio.sleep(self.behaviour.delay_s)
        await ws.send(json.dumps(msg))


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    """Two 0.4 s files of constant amplitude 1000 and 2000, and their refs."""
    d = tmp_path / "audio"
    d.mkdir()
    for k in TEXTS:
        with wave.open(str(d / f"utt{k}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE_HZ)
            w.writeframes(np.full(int(FILE_S * SAMPLE_RATE_HZ), 1000 * k, dtype="<i2").tobytes())
    (tmp_path / "refs.tsv").write_text(
        "".join(f"utt{k}\t{text.capitalize()}!\n" for k, text in TEXTS.items()), encoding="utf-8")
    return d


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    behaviour = getattr(request, "param", FakeBehaviour())
    with FakeServer(behaviour) as s:
        yield s


def _opts(server: FakeServer, audio_dir: Path, **kw: Any) -> RunOptions:
    base: dict[str, Any] = {"url": server.url, "audio_dir": audio_dir, "streams": 2, "processes": 1,
                            "refs": audio_dir.parent / "refs.tsv", "stop_timeout_s": 3.0}
    base.update(kw)
    return RunOptions(**base)


def test_partial_latency_matches_injected_delay(server: FakeServer, audio_dir: Path) -> None:
    result = run_load(_opts(server, audio_dir))
    r = result.report
    assert r["errors"]["total"] == 0 and r["rejections"]["total"] == 0 and r["overruns"]["count"] == 0
    assert r["counts"]["sessions_completed"] == 2
    # 20 frames per file, a partial every 5 frames, two streams.
    assert r["counts"]["partials"] == 8
    partial = r["latency_ms"]["partial"]
    assert partial["count"] == 8
    assert 49.0 <= partial["p50_ms"] <= 75.0, partial
    assert partial["min_ms"] >= 49.0
    # The final is sent at once after stop, for the last frame: latency ~ one frame's wait, well under delay.
    assert r["latency_ms"]["final"]["count"] == 2
    assert r["latency_ms"]["stop_to_end"]["max_ms"] < 1000.0
    assert r["wer"]["load"]["wer"] == 0.0


@pytest.mark.parametrize("server", [FakeBehaviour(lie_ms=500.0)], indirect=True)
def test_overrun_flagged_when_server_claims_unsent_audio(server: FakeServer, audio_dir: Path) -> None:
    r = run_load(_opts(server, audio_dir)).report
    assert r["counts"]["partials"] == 8
    assert r["overruns"]["count"] == 8
    assert r["latency_ms"]["partial"]["count"] == 0
    example = r["overruns"]["examples"][0]
    assert example["audio_end_ms"] > example["audio_sent_ms"]


@pytest.mark.parametrize("server", [FakeBehaviour(reject=True)], indirect=True)
def test_http_503_counts_as_rejection_not_error(server: FakeServer, audio_dir: Path) -> None:
    r = run_load(_opts(server, audio_dir)).report
    assert r["rejections"] == {"total": 2, "by_kind": {"http_503": 2}}
    assert r["errors"]["total"] == 0
    assert r["counts"]["sessions_started"] == 0


@pytest.mark.parametrize("server", [FakeBehaviour(reject=True, retry_header=False)], indirect=True)
def test_http_503_without_retry_after_is_also_an_error(server: FakeServer, audio_dir: Path) -> None:
    r = run_load(_opts(server, audio_dir)).report
    assert r["rejections"]["by_kind"] == {"http_503": 2}
    assert r["errors"]["by_code"] == {"client.http_503_without_retry_after": 2}


@pytest.mark.parametrize("server", [FakeBehaviour(overloaded_at_start=1013)], indirect=True)
def test_overloaded_at_start_then_1013_is_a_rejection(server: FakeServer, audio_dir: Path) -> None:
    r = run_load(_opts(server, audio_dir)).report
    assert r["rejections"] == {"total": 2, "by_kind": {"overloaded_1013": 2}}
    assert r["errors"]["total"] == 0


@pytest.mark.parametrize("server", [FakeBehaviour(overloaded_at_start=1011)], indirect=True)
def test_overloaded_at_start_with_another_close_is_an_error(server: FakeServer, audio_dir: Path) -> None:
    r = run_load(_opts(server, audio_dir)).report
    assert r["rejections"]["total"] == 0
    assert r["errors"]["by_code"] == {"client.overloaded_then_closed_1011": 2}


@pytest.mark.parametrize("server", [FakeBehaviour(drop_word_of=2)], indirect=True)
def test_wer_against_refs_and_baseline(server: FakeServer, audio_dir: Path) -> None:
    baseline = {"utt1.wav": TEXTS[1], "utt2.wav": TEXTS[2]}
    wer = run_load(_opts(server, audio_dir), baseline_hyps=baseline).report["wer"]
    ref_words = len(TEXTS[1].split()) + len(TEXTS[2].split())
    assert wer["load"]["ref_words"] == ref_words
    assert wer["load"]["deletions"] == 1
    assert wer["load"]["wer"] == pytest.approx(1 / ref_words)
    assert wer["baseline"]["wer"] == 0.0
    assert wer["delta"] == pytest.approx(1 / ref_words)


@pytest.mark.parametrize("server", [FakeBehaviour(never_end=True)], indirect=True)
def test_missing_end_is_a_bounded_error(server: FakeServer, audio_dir: Path) -> None:
    r = run_load(_opts(server, audio_dir, stop_timeout_s=0.3)).report
    assert r["errors"]["by_code"] == {"client.end_timeout": 2}
    assert r["counts"]["sessions_failed"] == 2
    assert r["wall_s"] < 5.0


def test_duration_mode_over_two_processes_and_cdf_plot(server: FakeServer, audio_dir: Path,
                                                       tmp_path: Path) -> None:
    result = run_load(_opts(server, audio_dir, streams=4, processes=2, duration_s=1.0))
    r = result.report
    assert r["config"]["processes_used"] == 2
    assert r["errors"]["total"] == 0, r["errors"]
    # Each stream starts within the first second and loops 0.4 s files until t0 + 1 s.
    assert r["counts"]["sessions_started"] >= 4
    assert r["latency_ms"]["partial"]["count"] > 0
    assert 49.0 <= r["latency_ms"]["partial"]["p50_ms"] <= 75.0
    png = tmp_path / "cdf.png"
    plot_cdf(result.samples_s, png, title="test", target_ms=150)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_run_writes_json_and_plot(server: FakeServer, audio_dir: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out, png = tmp_path / "results.json", tmp_path / "cdf.png"
    rc = main(["run", "--url", server.url, "--audio-dir", str(audio_dir), "--streams", "2",
               "--processes", "1", "--refs", str(audio_dir.parent / "refs.tsv"), "--out", str(out),
               "--plot", str(png), "--stop-timeout-s", "3"])
    assert rc == 0
    report = json.loads(out.read_text())
    for key in ("config", "machine", "counts", "latency_ms", "errors", "rejections", "cpu", "wer", "overruns"):
        assert key in report
    assert report["machine"]["cpu_model"]
    assert report["wer"]["delta"] == 0.0
    assert png.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "partial" in printed and "WER load=0.00%" in printed


def test_refuses_non_loopback_url(audio_dir: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        run_load(RunOptions(url="ws://192.0.2.1:8080/v1/stream", audio_dir=audio_dir))
