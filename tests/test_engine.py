"""The engine in-process: admission, pause on the stream timeline, abort, backpressure, drain signals."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.engine import DrainingError, Engine
from gateway.metrics import Metrics
from gateway.runner import ModelRunner, ThreadRunner
from gateway.session import EndpointingSettings, Outcome, ResultEvent, StreamEnded, StreamSettings
from protocols.errors import OverloadedError
from streaming_model.checkpoint import LoadedModel
from streaming_model.features import FbankConfig
from streaming_model.tokenizer import CharTokenizer
from tests.conftest import make_chatty_model
from tests.wsharness import noise_pcm


def make_engine(max_streams: int = 2, pending: int = 4) -> Engine:
    loaded = LoadedModel(make_chatty_model(), FbankConfig(), CharTokenizer(), trained=False)
    return Engine(ThreadRunner(ModelRunner(loaded, max_streams=max_streams)), metrics=Metrics(),
                  max_streams=max_streams, max_batch_size=max_streams, max_wait_s=0.005,
                  max_pending_chunks=pending)


async def with_engine(engine: Engine, body: object) -> None:
    async with asyncio.TaskGroup() as tg:
        tg.create_task(engine.run())
        try:
            await body  # type: ignore[misc]
        finally:
            engine.close()
    await engine.runner.close()


def test_admission_all_or_nothing_and_draining() -> None:
    engine = make_engine(max_streams=2)

    async def body() -> None:
        (one,) = engine.open_streams(1, StreamSettings(), protocol="websocket")
        with pytest.raises(OverloadedError):
            engine.open_streams(2, StreamSettings(), protocol="websocket")  # a stereo call does not fit
        assert engine.live_streams == 1
        one.abort("client_closed")
        both = engine.open_streams(2, StreamSettings(), protocol="websocket")
        assert len(both) == 2 and {s.channel for s in both} == {0, 1}
        for s in both:
            s.abort(Outcome.CLIENT_CLOSED)
        engine.start_drain()
        assert not engine.ready
        with pytest.raises(DrainingError):
            engine.open_streams(1, StreamSettings(), protocol="websocket")

    asyncio.run(with_engine(engine, body()))


def test_stream_pause_keeps_timeline_and_events_end() -> None:
    engine = make_engine()

    async def body() -> None:
        (s,) = engine.open_streams(1, StreamSettings(endpointing=EndpointingSettings(enabled=False)), protocol="local")
        events: list[object] = []

        async def read() -> None:
            async for ev in s.events():
                events.append(ev)

        reader = asyncio.create_task(read())
        await s.feed(noise_pcm(1.0))
        s.pause()
        await s.feed(noise_pcm(1.0, seed=2))
        s.resume()
        await s.feed(noise_pcm(1.0, seed=3))
        await s.stop()
        await reader
        assert isinstance(events[-1], StreamEnded) and events[-1].outcome == "completed"
        finals = [e for e in events if isinstance(e, ResultEvent) and e.is_final]
        assert finals and abs(finals[-1].audio_end_s - 3.0) < 1e-6
        assert s.audio_received_s == pytest.approx(3.0)

    asyncio.run(with_engine(engine, body()))


def test_backpressure_bounds_pending_work() -> None:
    engine = make_engine(max_streams=1, pending=2)

    async def body() -> None:
        (s,) = engine.open_streams(1, StreamSettings(), protocol="local")
        drained = asyncio.create_task(_drain_events(s))
        peak = 0
        pcm = noise_pcm(4.0)
        for lo in range(0, pcm.shape[0], 1600):
            await s.feed(pcm[lo:lo + 1600])
            peak = max(peak, len(engine.scheduler._queues[s.stream_id].items))  # the bound under test
        assert peak <= 2
        await s.stop()
        await drained

    asyncio.run(with_engine(engine, body()))


async def _drain_events(s: object) -> None:
    async for _ in s.events():  # type: ignore[attr-defined]
        pass


def test_aborted_stream_produces_no_more_events_and_frees_its_slot() -> None:
    engine = make_engine(max_streams=1)

    async def body() -> None:
        (s,) = engine.open_streams(1, StreamSettings(), protocol="local")
        await s.feed(noise_pcm(0.5))
        s.abort(Outcome.CLIENT_CLOSED)
        events = [ev async for ev in s.events()]
        assert isinstance(events[-1], StreamEnded) and events[-1].outcome == "client_closed"
        for _ in range(100):  # the slot comes back once the step in flight (if any) ends
            if engine.has_capacity(1):
                break
            await asyncio.sleep(0.01)
        (again,) = engine.open_streams(1, StreamSettings(), protocol="local")
        await again.feed(np.zeros(1280, dtype=np.int16))
        await again.stop()
        assert isinstance([ev async for ev in again.events()][-1], StreamEnded)

    asyncio.run(with_engine(engine, body()))


def test_the_runner_drops_an_aborted_streams_decoder_at_the_next_step() -> None:
    engine = make_engine(max_streams=2)
    runner = engine.runner.runner  # type: ignore[attr-defined]

    async def body() -> None:
        a, b = engine.open_streams(2, StreamSettings(), protocol="local")
        await a.feed(noise_pcm(0.5))
        await b.feed(noise_pcm(0.5))
        a.abort(Outcome.CLIENT_CLOSED)
        await b.feed(noise_pcm(0.5, seed=1))
        await b.stop()
        await _drain_events(b)
        # b's steps after the abort carried a's freed slot: only b's decoder is left (b's own slot is
        # freed by the next plan).
        assert len(runner._slots) == 1

    asyncio.run(with_engine(engine, body()))
