"""Finals from the Whisper second pass (``final_pass = whisper``) through the real engine and thread runner,
with the bundled model and espeak-ng phrases: words, timings and confidences, per-stream ordering, abort and
end of audio while a final is pending, slot reuse, hotwords reaching the second pass."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import jiwer
import numpy as np
import pytest

from gateway.config import FinalPass
from gateway.engine import Engine
from gateway.metrics import Metrics
from gateway.models import load_model
from gateway.runner import ModelRunner, ThreadRunner
from gateway.session import (
    DecodingSettings,
    Hotword,
    Outcome,
    ResultEvent,
    SpeechEnded,
    SpeechStarted,
    StreamEnded,
    StreamEvent,
    StreamSettings,
)
from streaming_model.checkpoint import LoadedModel
from streaming_model.data.voices import VoiceSpec, synthesize

pytestmark = pytest.mark.timeout(300)

RATE_HZ = 8000
VOICE = VoiceSpec("espeak", "en-us", rate=160, pitch=50, word_gap=0, alpha=1.0, eq=())
FIRST, SECOND = "can you hear me", "i want to pay my bill"
GAP_S = 1.6  # silence between the phrases: past the 1 s endpoint


@pytest.fixture(scope="module")
def bundled() -> LoadedModel:
    return load_model("bundled", "cpu", warn=False)


@pytest.fixture(scope="module")
def two_phrases() -> tuple[np.ndarray, float]:
    """Two phrases with an endpoint's silence between them (int16), and where the second one starts."""
    first = synthesize(FIRST, VOICE, seed=0)
    second = synthesize(SECOND, VOICE, seed=1)
    gap = np.zeros(round(GAP_S * RATE_HZ), dtype=np.float32)
    tail = np.zeros(round(0.3 * RATE_HZ), dtype=np.float32)
    audio = np.concatenate([first, gap, second, tail])
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16), (len(first) + len(gap)) / RATE_HZ


class SlowSecondPass:
    """Wraps the real second pass: records the hotwords it is given and takes ``delay_s`` longer."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.hotwords: list[tuple[str, ...]] = []
        self.calls = 0
        self.release = threading.Event()
        self.started = threading.Event()

    def transcribe(self, mel: np.ndarray, *, hotwords: Sequence[str] = ()) -> Any:
        self.calls += 1
        self.hotwords.append(tuple(hotwords))
        self.started.set()
        self.release.wait(self.delay_s)
        return self.inner.transcribe(mel, hotwords=hotwords)


def make_engine(loaded: LoadedModel, *, max_streams: int = 2, delay_s: float = 0.0,
                budget_s: float = 60.0, phrases: bool = False) -> tuple[Engine, SlowSecondPass]:
    """An engine whose second pass takes ``delay_s`` longer; finals wait up to ``budget_s`` for it (long by
    default, so that these tests see every final from the second pass whatever the machine's load)."""
    runner = ModelRunner(loaded, max_streams=max_streams, final_pass=FinalPass.WHISPER,
                         final_pass_budget_s=budget_s)
    assert runner.finals is not None
    slow = SlowSecondPass(runner.finals.second_pass, delay_s)
    runner.finals.second_pass = slow  # type: ignore[assignment]
    engine = Engine(ThreadRunner(runner), metrics=Metrics(), max_streams=max_streams, max_batch_size=max_streams,
                    max_wait_s=0.002, max_pending_chunks=64)
    return engine, slow


def final_pass_counts(engine: Engine) -> dict[str, float]:
    """``xlgate_final_pass_total`` by source."""
    return {s.labels["source"]: s.value for m in engine.metrics.final_pass.collect() for s in m.samples
            if s.name.endswith("_total")}


async def run_with(engine: Engine, body: Any) -> Any:
    async with asyncio.TaskGroup() as tg:
        tg.create_task(engine.run())
        try:
            result = await body
        finally:
            engine.close()
    await engine.runner.close()
    return result


async def feed(stream: Any, pcm: np.ndarray, piece: int = 1280) -> None:
    for lo in range(0, pcm.shape[0], piece):
        await stream.feed(pcm[lo:lo + piece])


async def all_events(stream: Any) -> list[StreamEvent]:
    return [event async for event in stream.events()]


def finals_of(events: list[StreamEvent]) -> list[ResultEvent]:
    return [e for e in events if isinstance(e, ResultEvent) and e.is_final]


def test_whisper_finals_carry_words_timings_and_confidences(bundled: LoadedModel,
                                                            two_phrases: tuple[np.ndarray, float]) -> None:
    pcm, second_start_s = two_phrases
    duration_s = pcm.shape[0] / RATE_HZ
    engine, slow = make_engine(bundled)

    async def body() -> list[StreamEvent]:
        (stream,) = engine.open_streams(1, StreamSettings(), protocol="local")
        reader = asyncio.create_task(all_events(stream))
        await feed(stream, pcm)
        await stream.stop()
        return await reader

    events = asyncio.run(run_with(engine, body()))
    finals = finals_of(events)
    texts = [f.hypothesis.text for f in finals]
    print("whisper finals:", texts)
    assert texts[0] == FIRST
    assert jiwer.wer(SECOND, " ".join(texts[1:])) <= 0.2, texts
    assert slow.calls == len(finals) == 2
    for final in finals:
        hyp = final.hypothesis
        assert hyp.text == " ".join(w.text for w in hyp.words)
        assert 0.0 <= hyp.confidence <= 1.0
        for word in hyp.words:
            assert 0.0 <= word.start_s <= word.end_s <= duration_s
            assert 0.0 <= word.confidence <= 1.0
        assert [w.start_s for w in hyp.words] == sorted(w.start_s for w in hyp.words)
    assert finals[0].hypothesis.end_s <= second_start_s
    assert finals[1].hypothesis.start_s >= second_start_s - 0.2
    assert isinstance(events[-1], StreamEnded) and events[-1].outcome == Outcome.COMPLETED
    assert engine._finals_outstanding == 0


def test_next_utterance_never_overtakes_a_pending_final(bundled: LoadedModel,
                                                        two_phrases: tuple[np.ndarray, float]) -> None:
    """The second pass is slowed so the second phrase is recognised while the first final is pending."""
    pcm, second_start_s = two_phrases
    engine, _ = make_engine(bundled, delay_s=1.5)

    async def body() -> list[StreamEvent]:
        (stream,) = engine.open_streams(1, StreamSettings(), protocol="local")
        reader = asyncio.create_task(all_events(stream))
        await feed(stream, pcm)
        await stream.stop()
        return await reader

    events = asyncio.run(run_with(engine, body()))
    finals = finals_of(events)
    assert [f.hypothesis.text for f in finals][:1] == [FIRST]
    first_final = events.index(finals[0])
    for event in events[:first_final]:  # nothing of the second phrase before the first final
        if isinstance(event, ResultEvent):
            assert event.hypothesis.start_s < second_start_s - 0.2, event
        if isinstance(event, SpeechStarted):
            assert event.start_s < second_start_s - 0.2, event
    # fed faster than real time, the whole second phrase was recognised while the first final was pending:
    # its partials were dropped, its start and final come after the first final
    assert len(finals) == 2 and jiwer.wer(SECOND, finals[1].hypothesis.text) <= 0.2
    assert any(isinstance(e, SpeechStarted) for e in events[first_final:])
    vad = [type(e) for e in events if isinstance(e, SpeechStarted | SpeechEnded)]
    assert vad == [SpeechStarted, SpeechEnded] * 2, vad  # each utterance announced before its final's end
    seqs = [e.seq for e in events if isinstance(e, ResultEvent)]
    assert seqs == sorted(seqs)


def test_a_final_whose_budget_runs_out_keeps_its_ctc_text(bundled: LoadedModel,
                                                         two_phrases: tuple[np.ndarray, float]) -> None:
    """Overload sheds the second pass, not latency: the second pass takes 1.5 s, the budget is 0.3 s, so
    the first final goes out with its CTC text while Whisper still runs (its result is dropped), and the
    second, queued behind it, is never run; both in order, counted as shed_late."""
    pcm, _ = two_phrases
    engine, slow = make_engine(bundled, delay_s=1.5, budget_s=0.3)

    async def body() -> tuple[list[StreamEvent], float]:
        (stream,) = engine.open_streams(1, StreamSettings(), protocol="local")
        reader = asyncio.create_task(all_events(stream))
        await feed(stream, pcm)
        await stream.stop()
        started = asyncio.get_running_loop().time()
        events = await reader
        return events, asyncio.get_running_loop().time() - started

    events, after_stop_s = asyncio.run(run_with(engine, body()))
    finals = finals_of(events)
    assert len(finals) == 2 and slow.calls == 1  # the second close never reached Whisper
    assert after_stop_s < 1.4  # nobody waited for the 1.5 s second pass
    counts = final_pass_counts(engine)
    assert counts["shed_late"] == 2.0 and counts["second_pass"] == 0.0, counts
    seqs = [e.seq for e in events if isinstance(e, ResultEvent)]
    assert seqs == sorted(seqs)


def test_second_pass_final_keeps_the_phrase_scores(bundled: LoadedModel,
                                                   two_phrases: tuple[np.ndarray, float]) -> None:
    """Closed-set phrases (MRCP grammars) are scored on the CTC posteriors; Whisper's final keeps them."""
    pcm, second_start_s = two_phrases
    engine, _ = make_engine(bundled)
    settings = StreamSettings(decoding=DecodingSettings(phrases=(FIRST, "pay my bill")))

    async def body() -> list[StreamEvent]:
        (stream,) = engine.open_streams(1, settings, protocol="local")
        reader = asyncio.create_task(all_events(stream))
        await feed(stream, pcm[: round((second_start_s - 1.0) * RATE_HZ)])
        await stream.stop()
        return await reader

    (final,) = finals_of(asyncio.run(run_with(engine, body())))
    assert final.hypothesis.text == FIRST
    scores = dict(final.hypothesis.phrase_scores)
    assert set(scores) == {FIRST, "pay my bill"} and scores[FIRST] > scores["pay my bill"], scores
    assert final_pass_counts(engine)["second_pass"] == 1.0


def test_the_second_pass_runs_below_the_model_step_priority(bundled: LoadedModel) -> None:
    """Partials keep their pace: the worker (and ctranslate2's threads, created from it) run niced."""
    import glob
    import os

    from gateway.final_pass import SECOND_PASS_NICE

    runner = ModelRunner(bundled, max_streams=1, final_pass=FinalPass.WHISPER)
    assert runner.finals is not None
    try:
        worker_tid = runner.finals._thread.native_id
        assert worker_tid is not None
        worker_nice = os.getpriority(os.PRIO_PROCESS, worker_tid)
        assert worker_nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + SECOND_PASS_NICE)  # Linux caps at 19
        niced = 0
        for task in glob.glob(f"/proc/{os.getpid()}/task/*/stat"):
            fields = open(task).read().rsplit(")", 1)[1].split()
            niced += int(fields[16]) == worker_nice  # field 19 of stat: nice
        assert niced >= 2, niced  # the worker and at least one ctranslate2 thread
    finally:
        runner.close()


def test_end_of_audio_waits_for_the_pending_final(bundled: LoadedModel,
                                                  two_phrases: tuple[np.ndarray, float]) -> None:
    pcm, second_start_s = two_phrases
    first = pcm[: round((second_start_s - 1.0) * RATE_HZ)]  # the first phrase, no endpoint yet
    engine, _ = make_engine(bundled, delay_s=0.5)

    async def body() -> list[StreamEvent]:
        (stream,) = engine.open_streams(1, StreamSettings(), protocol="local")
        reader = asyncio.create_task(all_events(stream))
        await feed(stream, first)
        await stream.stop()
        return await reader

    events = asyncio.run(run_with(engine, body()))
    assert [f.hypothesis.text for f in finals_of(events)] == [FIRST]  # exactly once
    assert isinstance(events[-2], SpeechEnded)
    assert isinstance(events[-1], StreamEnded) and events[-1].outcome == Outcome.COMPLETED
    assert engine.live_streams == 0


def test_abort_while_a_final_is_pending_drops_it_and_the_slot_serves_the_next_stream(
        bundled: LoadedModel, two_phrases: tuple[np.ndarray, float]) -> None:
    pcm, second_start_s = two_phrases
    first = pcm[: round((second_start_s - 1.0) * RATE_HZ)]
    second = pcm[round((second_start_s - 0.1) * RATE_HZ):]
    engine, slow = make_engine(bundled, max_streams=1, delay_s=30.0)

    async def body() -> tuple[list[StreamEvent], list[StreamEvent]]:
        (a,) = engine.open_streams(1, StreamSettings(), protocol="local")
        a_events = asyncio.create_task(all_events(a))
        await feed(a, first)
        await a.finalize()
        assert await asyncio.to_thread(slow.started.wait, 60)  # the final is in the second pass
        a.abort(Outcome.CLIENT_CLOSED)
        events_a = await a_events
        slow.delay_s = 0.0
        slow.release.set()  # the aborted stream's second pass finishes now; its final must go nowhere
        for _ in range(500):  # the slot comes back once the step in flight (if any) ends
            if engine.has_capacity(1):
                break
            await asyncio.sleep(0.01)
        (b,) = engine.open_streams(1, StreamSettings(), protocol="local")  # the same slot
        b_events = asyncio.create_task(all_events(b))
        await feed(b, second)
        await b.stop()
        return events_a, await b_events

    events_a, events_b = asyncio.run(run_with(engine, body()))
    assert finals_of(events_a) == []
    assert isinstance(events_a[-1], StreamEnded) and events_a[-1].outcome == Outcome.CLIENT_CLOSED
    texts_b = [f.hypothesis.text for f in finals_of(events_b)]
    assert len(texts_b) == 1 and jiwer.wer(SECOND, texts_b[0]) <= 0.2, texts_b
    assert engine._finals_outstanding == 0


def test_hotwords_reach_the_second_pass(bundled: LoadedModel, two_phrases: tuple[np.ndarray, float]) -> None:
    pcm, second_start_s = two_phrases
    engine, slow = make_engine(bundled)
    settings = StreamSettings(decoding=DecodingSettings(hotwords=(Hotword("acme rewards"), Hotword("hear me"))))

    async def body() -> list[StreamEvent]:
        (stream,) = engine.open_streams(1, settings, protocol="local")
        reader = asyncio.create_task(all_events(stream))
        await feed(stream, pcm[: round((second_start_s - 1.0) * RATE_HZ)])
        await stream.stop()
        return await reader

    events = asyncio.run(run_with(engine, body()))
    assert slow.hotwords == [("acme rewards", "hear me")]
    assert [f.hypothesis.text for f in finals_of(events)] == [FIRST]


def test_default_runner_has_no_second_pass(bundled: LoadedModel) -> None:
    runner = ModelRunner(bundled, max_streams=1)
    assert runner.final_pass is FinalPass.NONE and runner.finals is None
    assert runner.collect_finals(0.5) == []


def test_whisper_finals_from_the_model_process(two_phrases: tuple[np.ndarray, float]) -> None:
    """The default runner: the second pass runs in the model process, late finals come over the pipe."""
    from gateway.runner import ProcessRunner, RunnerSpec

    pcm, second_start_s = two_phrases

    async def main() -> list[StreamEvent]:
        runner = ProcessRunner(RunnerSpec(model="bundled", device="cpu", max_streams=2, num_threads=1,
                                          final_pass=FinalPass.WHISPER))
        await runner.start()
        engine = Engine(runner, metrics=Metrics(), max_streams=2, max_batch_size=2, max_wait_s=0.002,
                        max_pending_chunks=64)

        async def body() -> list[StreamEvent]:
            (stream,) = engine.open_streams(1, StreamSettings(), protocol="local")
            reader = asyncio.create_task(all_events(stream))
            await feed(stream, pcm[: round((second_start_s - 1.0) * RATE_HZ)])
            await stream.stop()
            return await reader

        result: list[StreamEvent] = await run_with(engine, body())
        return result

    events = asyncio.run(main())
    assert [f.hypothesis.text for f in finals_of(events)] == [FIRST]
    assert isinstance(events[-1], StreamEnded) and events[-1].outcome == Outcome.COMPLETED


def test_transcribe_takes_finals_from_the_second_pass(bundled: LoadedModel, two_phrases: tuple[np.ndarray, float],
                                                       tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """``xlgate transcribe --final-pass whisper``: the same engine path as serving, never shed for time."""
    from gateway.audio_files import write_wav
    from gateway.cli import main

    pcm, _ = two_phrases
    path = tmp_path / "two.wav"
    write_wav(path, [pcm], RATE_HZ)
    assert main(["transcribe", "--final-pass", "whisper", str(path)]) == 0
    line = capsys.readouterr().out.strip()
    name, text = line.split("\t")
    assert name == str(path)
    assert jiwer.wer(f"{FIRST} {SECOND}", text) <= 0.1, text


@pytest.mark.parametrize(("whisper", "ctc", "backed"), [
    ("thank you", "hut", False),  # measured over hold music (asterisk-moh-opsound-wav)
    ("i'm so sorry", "eeh", False),
    ("i'm gonna go back to the end of the video", "a", False),
    ("thank you", "i", False),
    ("this is a little flight into", "is the he win to", True),  # measured over dev-set speech
    ("what will you keep the powerful eye then", "wlet you you ce te mo fo i en", True),
    ("yes", "ye", True),
    ("bye", "anm", True),
])
def test_second_pass_text_must_be_backed_by_the_ctc(whisper: str, ctc: str, backed: bool) -> None:
    from gateway.final_pass import backed_by_ctc

    assert backed_by_ctc(whisper, ctc) is backed


def test_hold_music_keeps_the_ctc_text_where_whisper_hallucinates(bundled: LoadedModel) -> None:
    """Over music the CTC hears a letter here and there and Whisper writes fluent sentences ("i'm gonna go
    back to the end of the video"): those finals keep the CTC text and are counted as unbacked."""
    import soundfile as sf

    music, rate_hz = sf.read("/usr/share/asterisk/moh/macroform-cold_day.wav", dtype="int16")
    assert rate_hz == RATE_HZ
    engine, _ = make_engine(bundled)

    async def body() -> list[StreamEvent]:
        (stream,) = engine.open_streams(1, StreamSettings(), protocol="local")
        reader = asyncio.create_task(all_events(stream))
        await feed(stream, music)  # 244 s
        await stream.stop()
        return await reader

    finals = finals_of(asyncio.run(run_with(engine, body())))
    counts = final_pass_counts(engine)
    print("finals over music:", [f.hypothesis.text for f in finals], counts)
    assert counts["unbacked"] >= 1
    for final in finals:
        assert len(final.hypothesis.text.replace(" ", "")) <= 20, final.hypothesis.text


class _BlockingPass:
    """A second pass that holds the worker until released: the queue behind it can only be shed."""

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.runs = 0

    def transcribe(self, mels: np.ndarray, *, hotwords: tuple[str, ...] = ()) -> object:
        from types import SimpleNamespace

        self.runs += 1
        self.release.wait(10)
        return SimpleNamespace(text="")


def test_shed_second_passes_leave_the_queue_with_their_audio() -> None:
    """Overload: closes arrive while the worker is stuck on one pass. Each one whose budget runs out goes
    out with its CTC text and leaves the worker's queue at once (a cancelled job kept in a pool executor's
    queue held its log-mels until the worker came to it)."""
    import time

    from gateway.final_pass import FinalJob, FinalSource, SecondPassFinals
    from streaming_model.decoding import ConfidenceCalibration, Hypothesis

    blocking = _BlockingPass()
    finals = SecondPassFinals(frame_s=0.04, calibration=ConfidenceCalibration(), max_pending=64, budget_s=0.5,
                              second_pass=blocking, nice=0)  # type: ignore[arg-type]
    try:
        ctc = Hypothesis(text="ctc words", words=(), confidence=0.9, start_s=0.0, end_s=1.0)
        for i in range(20):
            finals.submit(FinalJob(stream_id=i, mels=np.zeros((100, 80), np.float32),
                                   log_probs=np.zeros((25, 30), np.float32), start_s=0.0, hotwords=(),
                                   ctc_final=ctc, speech_started_s=None, audio_end_s=1.0, arrival_s=0.0))
        deadline = time.monotonic() + 5
        while blocking.runs == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert blocking.runs == 1 and finals.queued() == 19
        time.sleep(0.6)  # every budget is spent
        out = finals.collect()
        assert len(out) == 20 and all(f.final.text == "ctc words" for f in out)
        assert sorted(f.source for f in out) == [FinalSource.SHED_LATE] * 20
        assert finals.queued() == 0  # the 19 never started are gone, not waiting for the worker
        assert finals._running == 1  # the stuck pass still counts against max_pending until it ends
        blocking.release.set()
        deadline = time.monotonic() + 5
        while finals._running and time.monotonic() < deadline:
            finals.collect()
            time.sleep(0.01)
        assert finals._running == 0 and blocking.runs == 1
    finally:
        blocking.release.set()
        finals.close()
