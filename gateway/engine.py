"""The engine: live streams, admission control, and the one loop that joins the scheduler and the runner.

A protocol adapter (WebSocket, MRCP, gRPC, the offline ``transcribe`` command) converts its request into a
:class:`gateway.session.StreamSettings`, opens one :class:`Stream` per audio channel with
:meth:`Engine.open_streams`, feeds it PCM, and reads its events (partials, finals, speech start/end, end
of stream); docs/session-api.md is that contract. The engine loop asks the pure :class:`Scheduler` for
the next step, runs it on the model runner, and routes each stream's output back.

Ownership: the engine owns the streams (admission, metrics, :meth:`Engine.remove_stream`); the scheduler
owns their queues and their state slots; the runner owns what lives in a slot (model state, decoder),
told by each plan which slots changed hands. Stream and Engine talk through public methods only: the
engine calls :meth:`Stream.deliver` and :meth:`Stream.close`, a stream calls :meth:`Engine.remove_stream`.

Late finals (``final_pass``): a step's output may say ``final_pending``; the engine then owes the stream a
final, which it collects from the runner after each step and, when no step is due, by waiting on the runner
for up to :data:`LATE_FINAL_WAIT_S` at a time. A stream whose audio has ended stays live (and keeps its
slot) until the finals it is owed are out; an aborted stream's late finals are dropped.

Model faults: a step that raises fails the streams of its batch (each gets an error; the others go on). A
runner that is lost (its process died: :class:`RunnerCrashed`) or stalled (a step still running after
``step_timeout_s``) has lost every slot's state: every live stream fails at once with an error, the runner
is restarted (``xlgate_model_restarts_total``), and until it is back new streams are refused as overload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import numpy as np

from gateway.final_pass import LateFinal
from gateway.metrics import Metrics
from gateway.runner import AsyncRunner, ChunkInput, RunnerCrashed, StreamOutput
from gateway.scheduler import ItemKind, Scheduler, StepPlan, WorkItem
from gateway.session import (
    Outcome,
    ResultEvent,
    SpeechEnded,
    SpeechStarted,
    StreamEnded,
    StreamEvent,
    StreamSettings,
)
from protocols.audio.resample import StreamingResampler
from protocols.errors import GatewayError, OverloadedError
from streaming_model.decoding import Hypothesis
from streaming_model.features import StreamingFbank

log = logging.getLogger("xlgate.engine")

MAX_EVENTS_PER_STREAM = 1024  # finals and events a slow reader may leave unread before we give up on it
# Longest the loop waits on the runner for a late final when no step is due: new audio arriving meanwhile
# waits at most this long for its step.
LATE_FINAL_WAIT_S = 0.02


class DrainingError(OverloadedError):
    """The gateway is draining (shutting down) and takes no new streams."""

    code = "draining"
    grpc_status = "UNAVAILABLE"  # go elsewhere now, unlike RESOURCE_EXHAUSTED's "retry later"


class StreamClosedError(GatewayError):
    """Audio or a control request arrived for a stream that has already been stopped or aborted."""

    code = "stream_stopped"


class Stream:
    """One audio channel being recognised. Created by :meth:`Engine.open_streams`.

    Audio goes in with :meth:`feed` (int16 or float32 PCM at ``settings.sample_rate_hz``); results come out
    of :meth:`events`. :meth:`stop` ends the audio (remaining finals follow, then :class:`StreamEnded`);
    :meth:`abort` drops the stream at once. Pausing discards audio without touching the model's memory.
    """

    def __init__(self, engine: Engine, *, stream_id: int, channel: int, settings: StreamSettings,
                 protocol: str) -> None:
        self.engine = engine
        self.stream_id = stream_id
        self.channel = channel
        self.settings = settings
        self.protocol = protocol
        self._fbank = StreamingFbank(engine.runner.info.features)
        self._model_rate_hz = engine.runner.info.features.sample_rate_hz
        self._resampler = (StreamingResampler(settings.sample_rate_hz, self._model_rate_hz)
                           if settings.sample_rate_hz != self._model_rate_hz else None)
        self.outcome = Outcome.COMPLETED
        self._stopped = False
        self._ended = False
        self.paused = False
        self._last_audio_arrival_s = engine.clock()
        self._events: deque[StreamEvent] = deque()
        self._events_ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._seq = 0
        self._audio_seconds = engine.metrics.audio_seconds.labels(protocol)
        self.audio_received_s = 0.0  # seconds of audio received (input rate), for metrics and checks
        self._model_samples = 0  # samples handed to the feature chunker, at the model's rate
        # Skipped (paused) audio is part of the stream's timeline but not of the model's: each entry is
        # (model time of the skip, total skipped seconds from then on), used to map result times back.
        self._skips: list[tuple[float, float]] = []

    # -- input -----------------------------------------------------------------------------------------
    async def feed(self, pcm: np.ndarray) -> None:
        """Append audio. Waits (backpressure) while the stream's work queue is full."""
        if self._stopped:
            raise StreamClosedError(f"stream {self.stream_id} is stopped; no more audio accepted")
        if self.paused:
            self.skip_samples(pcm.shape[0])
            return
        if pcm.size == 0:
            return
        samples = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32)
        self.audio_received_s += samples.shape[0] / self.settings.sample_rate_hz
        self._audio_seconds.inc(samples.shape[0] / self.settings.sample_rate_hz)
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        self._fbank.accept(samples)
        self._model_samples += samples.shape[0]
        self._last_audio_arrival_s = self.engine.clock()
        frames, ahead = self.engine.runner.info.chunk_frames, self.engine.runner.info.lookahead_frames
        while self._fbank.can_take(frames, ahead):
            while not self.engine.scheduler.has_room(self.stream_id):
                self._room.clear()
                await self._room.wait()
                if self._stopped:
                    return
            window = self._fbank.take(frames, ahead)
            self._submit(ItemKind.AUDIO, window, frames + ahead)

    def _submit(self, kind: ItemKind, window: np.ndarray | None, num_frames: int, *, force: bool = False) -> None:
        payload = ChunkInput(window=window, num_frames=num_frames,
                             audio_end_s=self._fbank.samples_taken / self._model_rate_hz)
        item = WorkItem(stream_id=self.stream_id, kind=kind, arrival_s=self._last_audio_arrival_s, payload=payload)
        accepted = self.engine.scheduler.submit(item, force=force)
        assert accepted, "a full queue is waited for before submitting"
        self.engine.wake()

    async def finalize(self) -> None:
        """Close the current utterance now (audio not yet in a whole chunk belongs to the next one)."""
        if self._stopped:
            raise StreamClosedError(f"stream {self.stream_id} is stopped")
        self._submit(ItemKind.FINALIZE, None, 0, force=True)

    async def stop(self, outcome: Outcome = Outcome.COMPLETED) -> None:
        """End of audio: the buffered tail is recognised, finals follow, then :class:`StreamEnded`.

        ``outcome`` is what the stream's end is counted as (completed, idle_timeout, drained).
        """
        if self._stopped:
            return
        self.outcome = outcome
        if self._resampler is not None:
            self._fbank.accept(self._resampler.flush())
        info = self.engine.runner.info
        *whole, (window, frames) = self._fbank.take_final(info.chunk_frames, info.lookahead_frames)
        self._stopped = True
        self._room.set()
        for chunk_window, real_frames in whole:  # chunks whose look-ahead runs past the end of the audio
            self._submit(ItemKind.AUDIO, chunk_window, real_frames, force=True)
        self._submit(ItemKind.END, window if frames else None, frames, force=True)

    def abort(self, outcome: Outcome = Outcome.ABORTED) -> None:
        """Drop the stream now; pending work is discarded and no more events are produced."""
        if self._ended:
            return
        self.engine.remove_stream(self, outcome)

    def pause(self) -> None:
        """Audio fed from now on is not recognised (but counts on the stream's timeline); the model's
        memory is kept, so recognition continues seamlessly on :meth:`resume`."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def skip_samples(self, num_samples: int) -> None:
        """``num_samples`` (input rate) of the stream's audio were not recognised (paused): later result
        times are shifted so they stay on the stream's own timeline."""
        if num_samples <= 0:
            return
        skipped_s = (self._skips[-1][1] if self._skips else 0.0) + num_samples / self.settings.sample_rate_hz
        self._skips.append((self._model_samples / self._model_rate_hz, skipped_s))
        self.audio_received_s += num_samples / self.settings.sample_rate_hz

    def _stream_time(self, model_s: float) -> float:
        offset = 0.0
        for at_s, skipped_s in self._skips:
            if at_s > model_s:
                break
            offset = skipped_s
        return model_s + offset

    def _heard(self, model_s: float, audio_end_s: float) -> float:
        """A model time on the stream's own timeline (skips added back), never past the audio heard."""
        return min(self._stream_time(model_s), audio_end_s)

    def _on_stream_timeline(self, hyp: Hypothesis, audio_end_s: float) -> Hypothesis:
        def f(t: float) -> float:
            return self._heard(t, audio_end_s)

        return replace(hyp, start_s=f(hyp.start_s), end_s=f(hyp.end_s),
                       words=tuple(replace(w, start_s=f(w.start_s), end_s=f(w.end_s)) for w in hyp.words))

    @property
    def ended(self) -> bool:
        return self._ended

    # -- engine-facing: what the engine's step loop tells the stream ---------------------------------------
    def deliver(self, out: StreamOutput, arrival_s: float) -> None:
        """A step's output for this stream (called by the engine): its events are queued for
        :meth:`events`, and its work queue has room again (the step took its oldest item)."""
        audio_end_s = self._stream_time(out.audio_end_s)
        if out.speech_started_s is not None:
            self._push(SpeechStarted(self._heard(out.speech_started_s, audio_end_s)))
        if out.partial is not None and self.settings.interim_results:
            self._seq += 1
            hyp = self._on_stream_timeline(out.partial, audio_end_s)
            self._push(ResultEvent(False, hyp, audio_end_s, arrival_s, self._seq))
        for final in out.finals:
            self._seq += 1
            self._push(ResultEvent(True, self._on_stream_timeline(final, audio_end_s), audio_end_s, arrival_s,
                                   self._seq))
        if out.speech_ended_s is not None:
            self._push(SpeechEnded(self._heard(out.speech_ended_s, audio_end_s)))
        self._room.set()

    def deliver_final(self, late: LateFinal) -> None:
        """A final the runner finished after the step that closed its utterance (called by the engine)."""
        audio_end_s = self._stream_time(late.audio_end_s)
        if late.speech_started_s is not None:
            self._push(SpeechStarted(self._heard(late.speech_started_s, audio_end_s)))
        self._seq += 1
        self._push(ResultEvent(True, self._on_stream_timeline(late.final, audio_end_s), audio_end_s,
                               late.arrival_s, self._seq))
        self._push(SpeechEnded(self._heard(late.speech_ended_s, audio_end_s)))

    def close(self, outcome: Outcome) -> None:
        """The stream has ended (called by the engine once it has forgotten it): no more input is taken, and
        :class:`StreamEnded` is its last event."""
        self._ended = True
        self._stopped = True
        self._room.set()
        self._events.append(StreamEnded(outcome))
        self._events_ready.set()

    # -- output ----------------------------------------------------------------------------------------
    def _push(self, event: StreamEvent) -> None:
        if isinstance(event, ResultEvent) and not event.is_final and self._events:
            last = self._events[-1]
            if isinstance(last, ResultEvent) and not last.is_final:
                self._events[-1] = event  # a newer partial supersedes an unsent one
                return
        if len(self._events) >= MAX_EVENTS_PER_STREAM:
            log.warning("stream %d: reader too slow, %d events unread; aborting", self.stream_id, len(self._events))
            self.abort(Outcome.ERROR)
            return
        self._events.append(event)
        self._events_ready.set()

    async def events(self) -> AsyncIterator[StreamEvent]:
        """Every event of the stream, ending with :class:`StreamEnded`."""
        while True:
            while not self._events:
                self._events_ready.clear()
                await self._events_ready.wait()
            event = self._events.popleft()
            yield event
            if isinstance(event, StreamEnded):
                return

    def record_sent(self, event: ResultEvent) -> None:
        """The protocol has written ``event`` to the wire: observe its end-to-end latency."""
        latency_s = self.engine.clock() - event.arrival_s
        m = self.engine.metrics
        (m.final_latency if event.is_final else m.partial_latency).labels(self.protocol).observe(latency_s)
        m.results.labels(self.protocol, "final" if event.is_final else "partial").inc()


class Engine:
    """Admission, stream bookkeeping and the step loop (see the module docstring)."""

    def __init__(self, runner: AsyncRunner, *, metrics: Metrics, max_streams: int, max_batch_size: int,
                 max_wait_s: float, max_pending_chunks: int, step_timeout_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``step_timeout_s``: a step (or a collection of late finals) still running after this long is a
        stalled runner, restarted as a lost one is; None waits for ever."""
        if max_streams > runner.info.max_streams:
            raise ValueError(f"max_streams ({max_streams}) exceeds the runner's slots ({runner.info.max_streams})")
        self.runner = runner
        self.metrics = metrics
        self.max_streams = max_streams
        self.step_timeout_s = step_timeout_s
        self.clock = clock
        self.scheduler = Scheduler(max_slots=max_streams, max_batch_size=max_batch_size, max_wait_s=max_wait_s,
                                   max_pending_per_stream=max_pending_chunks)
        self._streams: dict[int, Stream] = {}
        self._next_id = 1
        self._wakeup = asyncio.Event()
        self._closing = False
        self.restarting = False  # the runner was lost and is being replaced: no admission meanwhile
        self.healthy = True  # False once a lost runner could not be replaced: only a process restart helps
        self.draining = False
        self.drain_requested = asyncio.Event()  # set when live streams must finish now
        self._finish_listeners: list[Callable[[], None]] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self.steps_run = 0
        self._finals_owed: dict[int, int] = {}  # live stream id -> late finals still to come
        # late finals still to come, dropped streams' included (a step that failed may have started some
        # uncounted: the count is a floor at 0, and owed finals are always collected)
        self._finals_outstanding = 0
        self._ending: set[int] = set()  # streams whose audio has ended, waiting for their late finals

    # -- admission -------------------------------------------------------------------------------------
    @property
    def live_streams(self) -> int:
        return len(self._streams)

    @property
    def ready(self) -> bool:
        return not self.draining and not self._closing and not self.restarting and self.healthy

    @property
    def refusal_reason(self) -> str:
        """Why a stream would be refused now when not :attr:`ready` (a ``reason`` of
        ``xlgate_streams_rejected_total``): ``draining``, or ``model_unavailable`` while the model runner is
        being restarted (or could not be)."""
        return "draining" if self.draining or self._closing else "model_unavailable"

    def has_capacity(self, count: int = 1) -> bool:
        # Free slots, not live streams: an aborted stream's slot stays busy until its step in flight ends.
        return self.ready and count <= self.scheduler.free_slots

    def open_streams(self, count: int, settings: StreamSettings, *, protocol: str) -> list[Stream]:
        """Admit ``count`` streams (one per channel) together, or none.

        Raises:
            DrainingError: the gateway is shutting down.
            OverloadedError: admitting them would exceed ``max_streams``.
        """
        if not self.ready:
            self.metrics.streams_rejected.labels(protocol, self.refusal_reason).inc(count)
            if self.refusal_reason == "draining":
                raise DrainingError("the gateway is draining and accepts no new streams")
            raise OverloadedError("the model is restarting" if self.healthy else "the model is unavailable")
        if count > self.scheduler.free_slots:
            self.metrics.streams_rejected.labels(protocol, "capacity").inc(count)
            raise OverloadedError(
                f"at capacity: {len(self._streams)} live streams, max {self.max_streams}, asked for {count}")
        streams = []
        for channel in range(count):
            stream = Stream(self, stream_id=self._next_id, channel=channel, settings=settings, protocol=protocol)
            self._next_id += 1
            self._streams[stream.stream_id] = stream
            self.scheduler.add_stream(stream.stream_id, info=settings)
            self.metrics.streams_started.labels(protocol).inc()
            self.metrics.live_streams.labels(protocol).inc()
            streams.append(stream)
        self._idle.clear()
        return streams

    def remove_stream(self, stream: Stream, outcome: Outcome) -> None:
        """End ``stream`` now, counted as ``outcome``: its pending work is dropped, its slot freed (after
        the step in flight, if it is in it), and :class:`StreamEnded` becomes its last event.
        :meth:`Stream.abort` is the usual way to call this."""
        self._finals_owed.pop(stream.stream_id, None)
        self._ending.discard(stream.stream_id)
        if self._streams.pop(stream.stream_id, None) is not None:
            self.scheduler.remove_stream(stream.stream_id)
            self.metrics.live_streams.labels(stream.protocol).dec()
            self.metrics.streams_ended.labels(stream.protocol, outcome).inc()
            if not self._streams:
                self._idle.set()
        if not stream.ended:
            stream.close(outcome)

    # -- drain -----------------------------------------------------------------------------------------
    def start_drain(self) -> None:
        """Stop admitting streams; live ones go on until :meth:`request_finish` or they end."""
        self.draining = True
        self.metrics.ready.set(0)

    def add_finish_listener(self, listener: Callable[[], None]) -> None:
        """``listener`` is called by :meth:`request_finish`: a protocol handler stops its streams then."""
        self._finish_listeners.append(listener)

    def request_finish(self) -> None:
        """Ask every protocol handler to stop its streams now (they get their finals)."""
        self.drain_requested.set()
        for listener in self._finish_listeners:
            listener()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # -- loop ------------------------------------------------------------------------------------------
    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        """The step loop. Runs until :meth:`close` (the runner is closed by its owner)."""
        self.metrics.ready.set(1 if self.ready else 0)
        while not self._closing:
            self._wakeup.clear()
            now = self.clock()
            plan = self.scheduler.schedule(now)
            if plan is None:
                deadline = self.scheduler.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - now)
                if self._finals_outstanding or self._finals_owed:
                    await self._collect_finals(LATE_FINAL_WAIT_S if timeout is None
                                               else min(timeout, LATE_FINAL_WAIT_S))
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                continue
            await self._run_plan(plan)
            if self._finals_outstanding or self._finals_owed:
                await self._collect_finals(0.0)

    async def _collect_finals(self, wait_s: float) -> None:
        """Deliver the runner's late finals; a stream whose audio has ended ends after its last one."""
        try:
            async with asyncio.timeout(None if self.step_timeout_s is None else self.step_timeout_s + wait_s):
                finals = await self.runner.collect_finals(wait_s)
        except TimeoutError:
            await self._replace_runner("stalled", f"collecting late finals took over {self.step_timeout_s:g} s")
            return
        except RunnerCrashed as exc:
            await self._replace_runner("crashed", str(exc))
            return
        except Exception:
            log.exception("collecting late finals failed; failing the streams that wait for one")
            self._finals_outstanding = 0
            for stream_id in list(self._finals_owed):
                stream = self._streams.get(stream_id)
                if stream is not None:
                    self.metrics.errors.labels(stream.protocol, "internal").inc()
                    self.remove_stream(stream, Outcome.ERROR)
            return
        for late in finals:
            self._finals_outstanding = max(0, self._finals_outstanding - 1)
            self.metrics.final_pass.labels(late.source.value).inc()
            stream = self._streams.get(late.stream_id)
            if stream is None:
                continue  # aborted while its final was in the second pass
            stream.deliver_final(late)
            owed = self._finals_owed[late.stream_id] - 1
            if owed:
                self._finals_owed[late.stream_id] = owed
                continue
            del self._finals_owed[late.stream_id]
            if late.stream_id in self._ending:
                self.remove_stream(stream, stream.outcome)

    async def _run_plan(self, plan: StepPlan) -> None:
        m = self.metrics
        started = self.clock()
        for item in plan.items:
            m.queue_wait.observe(max(0.0, started - item.arrival_s))
        m.batch_size.observe(plan.batch_size)
        try:
            async with asyncio.timeout(self.step_timeout_s):
                outputs = await self.runner.run_step(plan)
        except TimeoutError:
            self.scheduler.complete(plan)
            await self._replace_runner("stalled", f"step {plan.step_id} of {plan.batch_size} streams still running "
                                       f"after {self.step_timeout_s:g} s")
            return
        except RunnerCrashed as exc:
            self.scheduler.complete(plan)
            await self._replace_runner("crashed", str(exc))
            return
        except Exception:
            log.exception("model step %d failed; failing its %d streams", plan.step_id, plan.batch_size)
            self.scheduler.complete(plan, failed=True)
            for item in plan.items:
                stream = self._streams.get(item.stream_id)
                if stream is not None:
                    m.errors.labels(stream.protocol, "internal").inc()
                    self.remove_stream(stream, Outcome.ERROR)
            return
        finally:
            m.step_duration.observe(self.clock() - started)
        self.scheduler.complete(plan)
        self.steps_run += 1
        for item, out in zip(plan.items, outputs, strict=True):
            if out.final_pending:
                self._finals_outstanding += 1  # the runner hands it out even if the stream is gone
            stream = self._streams.get(item.stream_id)
            if stream is None:
                continue  # aborted while its step ran
            stream.deliver(out, item.arrival_s)
            if out.final_pending:
                self._finals_owed[item.stream_id] = self._finals_owed.get(item.stream_id, 0) + 1
            if item.kind is ItemKind.END:
                if item.stream_id in self._finals_owed:
                    self._ending.add(item.stream_id)
                else:
                    self.remove_stream(stream, stream.outcome)

    async def _replace_runner(self, cause: str, why: str) -> None:
        """The runner is lost or stalled (``cause``): every slot's state is gone, so every live stream fails
        now (its session ends with an error); then the runner is restarted. Admission is refused meanwhile,
        and for good (``healthy`` False, ``/healthz`` failing) when the restart fails."""
        m = self.metrics
        log.error("model runner %s (%s): failing %d live streams and restarting it", cause, why, len(self._streams))
        m.model_restarts.labels(cause).inc()
        self.restarting = True
        m.ready.set(0)
        for stream in list(self._streams.values()):
            m.errors.labels(stream.protocol, "model_unavailable").inc()
            self.remove_stream(stream, Outcome.ERROR)
        self._finals_outstanding = 0  # the lost runner's second passes went with it
        started = self.clock()
        try:
            await self.runner.restart()
        except Exception:
            log.exception("the model runner could not be restarted; the gateway is unhealthy")
            self.healthy = False
            return
        finally:
            self.restarting = False
            m.ready.set(1 if self.ready else 0)
        log.info("model runner restarted in %.1f s", self.clock() - started)

    def close(self) -> None:
        """End the loop (after the step in flight); streams still live are aborted."""
        self._closing = True
        for stream in list(self._streams.values()):
            stream.abort(Outcome.ABORTED)
        self.metrics.ready.set(0)
        self.wake()
