"""WebSocket transport: the ``websockets`` library's framing joined to the sans-I/O protocol Connection.

One :class:`WebSocketHandler` call serves one client. It reads messages, feeds them to
:class:`protocols.websocket.connection.Connection`, acts on the events through the engine's session API,
and writes what the Connection serialises. Each audio channel's results are forwarded by a task owned by
the connection's TaskGroup; every send goes through one lock so the Connection's ordering rules hold on
the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway.engine import (
    Engine,
    ResultEvent,
    SpeechEnded,
    SpeechStarted,
    Stream,
    StreamClosedError,
    StreamEnded,
    StreamParams,
)
from gateway.logging import LogPolicy, session_context
from gateway.runner import DecoderParams, EndpointParams
from protocols.errors import OverloadedError
from protocols.websocket.connection import Connection, ConnectionState
from protocols.websocket.events import (
    AudioDiscarded,
    AudioReceived,
    FinalizeRequested,
    KeepaliveReceived,
    PauseRequested,
    ProtocolViolation,
    ResultMessage,
    ResumeRequested,
    StopRequested,
    StreamConfig,
    StreamStartRequested,
    Word,
)

log = logging.getLogger("xlgate.ws")

STREAM_PATH = "/v1/stream"
PROTOCOL = "websocket"
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
IDLE_RESCHEDULE_S = 1.0


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    max_frame_bytes: int
    idle_timeout_s: float
    defaults: StreamConfig = field(default_factory=StreamConfig)  # server values for fields a start omits
    default_hotwords: tuple[tuple[str, float], ...] = ()  # merged with each stream's own list


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


class WebSocketHandler:
    """Serves the native protocol v1 (docs/websocket-protocol.md) on ``/v1/stream``."""

    def __init__(self, engine: Engine, settings: WebSocketSettings, policy: LogPolicy) -> None:
        self.engine = engine
        self.settings = settings
        self.policy = policy
        self._sessions: set[_Session] = set()
        engine.add_finish_listener(self.finish_all)

    def finish_all(self) -> None:
        """Drain: every live session stops reading, gets its finals, and closes with 1001."""
        for session in list(self._sessions):
            session.interrupt("drained")

    # -- HTTP side of the handshake ---------------------------------------------------------------------
    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Route the opening request: health probes, unknown paths, and refusal when full or draining."""
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            ok = self.engine.ready
            return connection.respond(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                                      "ready\n" if ok else "not ready\n")
        if path != STREAM_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"no such endpoint; use {STREAM_PATH}\n")
        if not self.engine.has_capacity(1):
            reason = "draining" if self.engine.draining else "capacity"
            self.engine.metrics.streams_rejected.labels(PROTOCOL, reason).inc()
            response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                                          f"xlgate is {'draining' if reason == 'draining' else 'at capacity'}\n")
            response.headers["Retry-After"] = str(int(OverloadedError.retry_after_s))
            return response
        return None

    # -- one client -------------------------------------------------------------------------------------
    async def __call__(self, ws: ServerConnection) -> None:
        session_id = uuid.uuid4().hex[:16]
        with session_context(session_id):
            session = _Session(self, ws, session_id)
            self._sessions.add(session)
            try:
                if self.engine.drain_requested.is_set():
                    session.interrupt("drained")
                await session.run()
            finally:
                self._sessions.discard(session)


def _stream_params(config: StreamConfig, settings: WebSocketSettings) -> StreamParams:
    own = {h.phrase: h.boost for h in config.hotwords}
    hotwords = tuple((p, b) for p, b in settings.default_hotwords if p not in own) + tuple(own.items())
    return StreamParams(
        sample_rate_hz=config.sample_rate_hz,
        endpoint=EndpointParams(enabled=config.endpointing.enabled,
                                silence_s=config.endpointing.silence_ms / 1000,
                                max_utterance_s=config.endpointing.max_utterance_ms / 1000),
        decoder=DecoderParams(method=str(config.decoding.method), beam_size=config.decoding.beam_size,
                              hotwords=hotwords),
        interim_results=config.interim_results,
    )


class _Session:
    """State of one WebSocket client: its Connection, its streams (one per channel), its send lock."""

    def __init__(self, handler: WebSocketHandler, ws: ServerConnection, session_id: str) -> None:
        self.h = handler
        self.ws = ws
        self.session_id = session_id
        self.conn = Connection(max_frame_bytes=handler.settings.max_frame_bytes,
                               defaults=handler.settings.defaults)
        self.streams: list[Stream] = []
        self.send_lock = asyncio.Lock()
        self.outcome = "completed"
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""
        self.fatal: Exception | None = None  # the error that ends the session, sent after pending results
        self.fatal_close_code = 1011
        self._timeout: asyncio.Timeout | None = None
        self._interrupt: str | None = None

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def run(self) -> None:
        log.info("client connected from %s", self.ws.remote_address)
        try:
            async with asyncio.TaskGroup() as tg:
                await self._read_loop(tg)
                if self.fatal is not None:
                    # Stop recognising, but let the forwarders send the results already produced.
                    for stream in self.streams:
                        stream.abort("error")
                else:
                    for stream in self.streams:
                        await stream.stop(self.outcome)
            # Every forwarder has finished: all results are out. Exactly one closing message follows.
            if self.fatal is not None:
                async with self.send_lock:
                    await self.send(self.conn.send_error(self.fatal))
                code = self.conn.close_code_to_send or self.fatal_close_code
            elif self.streams:
                async with self.send_lock:
                    await self.send(self.conn.send_end())
                code = self.close_code
            else:
                code = self.close_code
            await self.ws.close(code, self.close_reason)
        except ConnectionClosed:
            self.outcome = "client_closed"
        except Exception:
            log.exception("session failed")
            self.outcome = "error"
            self.h.engine.metrics.errors.labels(PROTOCOL, "internal").inc()
            with contextlib.suppress(Exception):
                await self.ws.close(1011, "internal error")
        finally:
            for stream in self.streams:
                stream.abort(self.outcome)
            log.info("client session ended: %s", self.outcome)

    def interrupt(self, reason: str) -> None:
        """End the read loop now (drain): the streams are then stopped and get their finals."""
        self._interrupt = reason
        if self._timeout is not None and not self._timeout.expired():
            self._timeout.reschedule(asyncio.get_running_loop().time())

    async def _read_loop(self, tg: asyncio.TaskGroup) -> None:
        """Read and act on messages until ``stop``, a fatal error, the idle timeout or a drain."""
        loop = asyncio.get_running_loop()
        idle_s = self.h.settings.idle_timeout_s
        try:
            async with asyncio.timeout(idle_s) as timeout:
                self._timeout = timeout
                if self._interrupt is not None:
                    timeout.reschedule(loop.time())
                # The idle deadline is pushed back at most once a second (not per 20 ms frame): it then
                # fires between idle_s - 1 and idle_s after the last message.
                pushed_at = loop.time()
                while self.conn.state in (ConnectionState.AWAITING_START, ConnectionState.STREAMING):
                    message = await self.ws.recv()
                    now = loop.time()
                    if now - pushed_at > IDLE_RESCHEDULE_S and self._interrupt is None:
                        timeout.reschedule(now + idle_s)
                        pushed_at = now
                    events = (self.conn.receive_text(message) if isinstance(message, str)
                              else self.conn.receive_bytes(message))
                    for event in events:
                        if not await self._on_event(event, tg):
                            return
        except TimeoutError:
            if self._interrupt == "drained":
                self.outcome, self.close_code, self.close_reason = "drained", CLOSE_GOING_AWAY, "server draining"
            else:
                self.outcome, self.close_reason = "idle_timeout", "idle timeout"
                log.info("no message for %.1f s: finalising", idle_s)
                if not self.streams:
                    self.close_code = CLOSE_POLICY  # no start within the idle timeout
        finally:
            self._timeout = None

    async def _on_event(self, event: object, tg: asyncio.TaskGroup) -> bool:
        """Act on one protocol event; False when the read loop must end."""
        try:
            return await self._dispatch(event, tg)
        except StreamClosedError as exc:
            # The engine ended a stream under us (its model step failed, or we fell too far behind
            # reading its results): the session cannot go on. Results already produced still go out.
            log.warning("stream ended by the engine: %s", exc)
            self.outcome, self.fatal, self.fatal_close_code = "error", exc, 1011
            self.close_reason = "internal error"
            return False

    async def _dispatch(self, event: object, tg: asyncio.TaskGroup) -> bool:
        match event:
            case AudioReceived(channels=channels):
                for stream, pcm in zip(self.streams, channels, strict=True):
                    await stream.feed(pcm)
            case AudioDiscarded(num_samples=n):
                for stream in self.streams:
                    stream.skip_samples(n)
            case StreamStartRequested(config=config):
                return await self._start(config, tg)
            case StopRequested():
                return False
            case FinalizeRequested():
                for stream in self.streams:
                    await stream.finalize()
            case PauseRequested() | ResumeRequested() | KeepaliveReceived():
                pass  # pause is the Connection's job (audio arrives as AudioDiscarded)
            case ProtocolViolation(error=error):
                self.h.engine.metrics.errors.labels(PROTOCOL, error.code).inc()
                if error.close_code is not None:
                    self.outcome, self.fatal, self.fatal_close_code = "error", error, error.close_code
                    self.close_reason = error.code
                    return False
                async with self.send_lock:
                    await self.send(self.conn.send_error(error))
        return True

    async def _start(self, config: StreamConfig, tg: asyncio.TaskGroup) -> bool:
        params = _stream_params(config, self.h.settings)
        try:
            self.streams = self.h.engine.open_streams(config.channels, params, protocol=PROTOCOL)
        except OverloadedError as exc:
            self.outcome, self.fatal, self.fatal_close_code = "rejected", exc, exc.ws_close_code
            self.close_reason = exc.code
            return False
        async with self.send_lock:
            await self.send(self.conn.send_ready(self.session_id))
        log.info("stream started: %d channel(s), %s %d Hz", config.channels, config.encoding,
                 config.sample_rate_hz)
        for stream in self.streams:
            tg.create_task(self._forward(stream, config), name=f"ws-forward-{stream.stream_id}")
        return True

    async def _forward(self, stream: Stream, config: StreamConfig) -> None:
        """Send one channel's events as they come, until the stream ends."""
        try:
            async for event in stream.events():
                if isinstance(event, StreamEnded):
                    return
                async with self.send_lock:
                    if isinstance(event, ResultEvent):
                        text = self.conn.send_result(self._result(event, stream, config))
                    elif isinstance(event, SpeechStarted):
                        text = self.conn.send_speech_started(channel=stream.channel, start_ms=_ms(event.start_s))
                    else:
                        assert isinstance(event, SpeechEnded)
                        text = self.conn.send_speech_ended(channel=stream.channel, end_ms=_ms(event.end_s))
                    await self.send(text)
                if isinstance(event, ResultEvent):
                    stream.record_sent(event)
                    if event.is_final:
                        log.debug("final: %s", self.h.policy.transcript(event.hypothesis.text))
        except ConnectionClosed:
            stream.abort("client_closed")

    @staticmethod
    def _result(event: ResultEvent, stream: Stream, config: StreamConfig) -> ResultMessage:
        hyp = event.hypothesis
        audio_end_ms = _ms(event.audio_end_s)
        end_ms = min(_ms(hyp.end_s), audio_end_ms)
        start_ms = min(_ms(hyp.start_s), end_ms)
        if not event.is_final:
            return ResultMessage(is_final=False, channel=stream.channel, text=hyp.text, start_ms=start_ms,
                                 end_ms=end_ms, audio_end_ms=audio_end_ms,
                                 stable_words=min(hyp.stable_words, len(hyp.text.split())))
        words = tuple(Word(word=w.text, start_ms=min(_ms(w.start_s), audio_end_ms),
                           end_ms=min(_ms(w.end_s), audio_end_ms),
                           confidence=min(1.0, max(0.0, w.confidence)))
                      for w in hyp.words) if config.word_timings else ()
        return ResultMessage(is_final=True, channel=stream.channel, text=hyp.text, start_ms=start_ms,
                             end_ms=end_ms, audio_end_ms=audio_end_ms,
                             confidence=min(1.0, max(0.0, hyp.confidence)), words=words)
