"""WebSocket transport: the ``websockets`` library's framing joined to the sans-I/O protocol Connection.

One :class:`WebSocketHandler` call serves one client. It reads messages, feeds them to
:class:`protocols.websocket.connection.Connection`, acts on the events through the engine's session API,
and writes what the Connection serialises. Each audio channel's results are forwarded by a task owned by
the connection's TaskGroup; every send goes through one lock so the Connection's ordering rules hold on
the wire. With an authenticator, the opening handshake of ``/v1/stream`` is refused with 401 unless it
carries a valid bearer token (header, or ``access_token`` in the query): no session exists before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway.auth import QUERY_PARAMETER, AuthError, TokenAuthenticator
from gateway.engine import Engine, Stream, StreamClosedError
from gateway.limits import AddressSessions
from gateway.logging import LogPolicy, session_context
from gateway.session import (
    DecodingMethod,
    DecodingSettings,
    EndpointingSettings,
    Hotword,
    Outcome,
    ResultEvent,
    SpeechEnded,
    SpeechStarted,
    StreamEnded,
    StreamSettings,
    merge_hotwords,
)
from protocols.errors import OverloadedError
from protocols.websocket.connection import Connection, ConnectionState
from protocols.websocket.errors import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_MESSAGE_TOO_BIG,
    InternalError,
    WebSocketError,
)
from protocols.websocket.events import (
    AudioDiscarded,
    AudioReceived,
    ConnectionLost,
    DecodingParams,
    EndpointingParams,
    Event,
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
from protocols.websocket.events import DecodingMethod as WireDecodingMethod

log = logging.getLogger("xlgate.ws")

STREAM_PATH = "/v1/stream"
PROTOCOL = "websocket"
# the body of a refused handshake's 503, by the reason counted in xlgate_streams_rejected_total
_REFUSALS = {"draining": "draining", "capacity": "at capacity", "model_unavailable": "restarting its model"}
IDLE_RESCHEDULE_S = 1.0


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    max_frame_bytes: int
    idle_timeout_s: float
    # The server's values for what a start leaves out; its hotwords are merged with each stream's own.
    defaults: StreamSettings = field(default_factory=StreamSettings)
    # None: no authentication (the default); else every stream handshake must carry a valid token.
    authenticator: TokenAuthenticator | None = None
    max_sessions_per_address: int = 0  # connections one client address may hold at once; 0 = no bound


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


class WebSocketHandler:
    """Serves the native protocol v1 (docs/websocket-protocol.md) on ``/v1/stream``."""

    def __init__(self, engine: Engine, settings: WebSocketSettings, policy: LogPolicy) -> None:
        self.engine = engine
        self.settings = settings
        self.policy = policy
        self.wire_defaults = _wire_defaults(settings.defaults)  # what the Connection fills a start with
        self._sessions: set[_Session] = set()
        self.addresses = AddressSessions(settings.max_sessions_per_address, metrics=engine.metrics,
                                         protocol=PROTOCOL)
        engine.add_finish_listener(self.finish_all)

    def finish_all(self) -> None:
        """Drain: every live session stops reading, gets its finals, and closes with 1001."""
        for session in list(self._sessions):
            session.interrupt()

    # -- HTTP side of the handshake ---------------------------------------------------------------------
    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Route the opening request: health probes, unknown paths, refusal without valid credentials, and
        refusal when full or draining (in that order: an unauthenticated peer learns nothing of the load)."""
        path, _, query = request.path.partition("?")
        if path == "/healthz":
            if not self.engine.healthy:
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "model unavailable\n")
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            ok = self.engine.ready
            return connection.respond(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                                      "ready\n" if ok else "not ready\n")
        if path != STREAM_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"no such endpoint; use {STREAM_PATH}\n")
        if self.settings.authenticator is not None:
            refusal = self._authenticate(connection, request, query)
            if refusal is not None:
                return refusal
        if not self.engine.has_capacity(1):
            reason = self.engine.refusal_reason if not self.engine.ready else "capacity"
            self.engine.metrics.streams_rejected.labels(PROTOCOL, reason).inc()
            response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                                          f"xlgate is {_REFUSALS[reason]}\n")
            response.headers["Retry-After"] = str(int(OverloadedError.retry_after_s))
            return response
        address = _host(connection.remote_address)
        if self.addresses.full(address):
            self.addresses.refused()
            log.info("connection from %s refused: %d sessions from that address", address,
                     self.addresses.live(address))
            response = connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "too many sessions from your address\n")
            response.headers["Retry-After"] = str(int(OverloadedError.retry_after_s))
            return response
        return None

    def _authenticate(self, connection: ServerConnection, request: Request, query: str) -> Response | None:
        """None when the handshake carries a valid token; else the 401, counted and logged (no token)."""
        assert self.settings.authenticator is not None
        try:
            principal = self.settings.authenticator.authenticate(
                authorization=request.headers.get_all("Authorization"),
                query_tokens=parse_qs(query, keep_blank_values=True).get(QUERY_PARAMETER, []))
        except AuthError as exc:
            self.engine.metrics.auth_failures.labels(PROTOCOL, exc.reason.value).inc()
            log.info("handshake from %s refused: %s credentials", _host(connection.remote_address), exc.reason.value)
            response = connection.respond(HTTPStatus.UNAUTHORIZED, f"{exc}\n")
            response.headers["WWW-Authenticate"] = exc.www_authenticate
            return response
        log.debug("handshake from %s authenticated: %s", _host(connection.remote_address), principal)
        return None

    # -- one client -------------------------------------------------------------------------------------
    async def __call__(self, ws: ServerConnection) -> None:
        address = _host(ws.remote_address)
        if not self.addresses.acquire(address):  # handshakes that raced past process_request's check
            await ws.close(OverloadedError.ws_close_code, "too many sessions from your address")
            return
        try:
            await self._serve(ws)
        finally:
            self.addresses.release(address)

    async def _serve(self, ws: ServerConnection) -> None:
        session_id = uuid.uuid4().hex[:16]
        with session_context(session_id):
            session = _Session(self, ws, session_id)
            self._sessions.add(session)
            try:
                if self.engine.drain_requested.is_set():
                    session.interrupt()
                await session.run()
            finally:
                self._sessions.discard(session)


def _host(remote_address: object) -> str:
    """The host of a socket's peer address (an (host, port, ...) tuple), or its text."""
    if isinstance(remote_address, tuple) and remote_address:
        return str(remote_address[0])
    return str(remote_address)


# -- the edge: wire types in, session types out (and the server defaults the other way) ---------------------
def _wire_defaults(defaults: StreamSettings) -> StreamConfig:
    """The server's defaults as the Connection fills a ``start`` with them (hotwords are merged later)."""
    return StreamConfig(
        sample_rate_hz=defaults.sample_rate_hz, interim_results=defaults.interim_results,
        endpointing=EndpointingParams(enabled=defaults.endpointing.enabled,
                                      silence_ms=_ms(defaults.endpointing.silence_s),
                                      max_utterance_ms=_ms(defaults.endpointing.max_utterance_s)),
        decoding=DecodingParams(method=WireDecodingMethod(defaults.decoding.method.value),
                                beam_size=defaults.decoding.beam_size))


def _stream_settings(config: StreamConfig, defaults: StreamSettings) -> StreamSettings:
    """A ``start`` message's settings for the session API: the one conversion of this protocol."""
    own = tuple(Hotword(h.phrase, h.boost) for h in config.hotwords)
    return StreamSettings(
        sample_rate_hz=config.sample_rate_hz,
        interim_results=config.interim_results,
        endpointing=EndpointingSettings(enabled=config.endpointing.enabled,
                                        silence_s=config.endpointing.silence_ms / 1000,
                                        max_utterance_s=config.endpointing.max_utterance_ms / 1000),
        decoding=DecodingSettings(method=DecodingMethod(config.decoding.method.value),
                                  beam_size=config.decoding.beam_size,
                                  hotwords=merge_hotwords(defaults.decoding.hotwords, own)),
    )


class _Session:
    """One WebSocket client: its Connection (which holds how the conversation closes), its streams (one per
    channel), its send lock, and how it ended."""

    def __init__(self, handler: WebSocketHandler, ws: ServerConnection, session_id: str) -> None:
        self.h = handler
        self.ws = ws
        self.session_id = session_id
        self.conn = Connection(max_frame_bytes=handler.settings.max_frame_bytes,
                               defaults=handler.wire_defaults)
        self.streams: list[Stream] = []
        self.send_lock = asyncio.Lock()
        self.outcome = Outcome.COMPLETED
        self._timeout: asyncio.Timeout | None = None
        self._draining = False
        self._failed = False

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    @property
    def _reading(self) -> bool:
        return self.conn.state in (ConnectionState.AWAITING_START, ConnectionState.STREAMING)

    async def run(self) -> None:
        log.info("client connected from %s", self.ws.remote_address)
        try:
            async with asyncio.TaskGroup() as tg:
                await self._read_loop(tg)
                if self.outcome in (Outcome.COMPLETED, Outcome.IDLE_TIMEOUT, Outcome.DRAINED):
                    for stream in self.streams:
                        await stream.stop(self.outcome)
                else:
                    # Stop recognising; the forwarders still send the results already produced (unless
                    # the client is gone).
                    for stream in self.streams:
                        stream.abort(self.outcome)
            # Every forwarder has finished: all results are out. Exactly one closing message follows.
            async with self.send_lock:
                closing = self.conn.send_closing()
                if closing is not None:
                    await self.send(closing)
            if self.conn.close_code_to_send is not None:
                await self.ws.close(self.conn.close_code_to_send, self.conn.close_reason_to_send)
        except ConnectionClosed:
            self.outcome = Outcome.CLIENT_CLOSED
        except Exception:
            log.exception("session failed")
            self.outcome = Outcome.ERROR
            self.h.engine.metrics.errors.labels(PROTOCOL, InternalError.code).inc()
            with contextlib.suppress(Exception):
                await self.ws.close(CLOSE_INTERNAL_ERROR, "internal error")
        finally:
            for stream in self.streams:
                stream.abort(self.outcome)
            log.info("client session ended: %s", self.outcome)

    def interrupt(self) -> None:
        """End the read loop now (drain): the streams are then stopped and get their finals."""
        self._draining = True
        if self._timeout is not None and not self._timeout.expired():
            self._timeout.reschedule(asyncio.get_running_loop().time())

    async def _read_loop(self, tg: asyncio.TaskGroup) -> None:
        """Read and act on messages until ``stop``, a fatal error, the idle timeout, a drain, or the client
        going away (a hang-up: ``ws.recv()`` raises ConnectionClosed, which must not escape into the
        TaskGroup, where it would come out as an ExceptionGroup)."""
        loop = asyncio.get_running_loop()
        idle_s = self.h.settings.idle_timeout_s
        try:
            async with asyncio.timeout(idle_s) as timeout:
                self._timeout = timeout
                if self._draining:
                    timeout.reschedule(loop.time())
                # The idle deadline is pushed back at most once a second (not per 20 ms frame): it then
                # fires between idle_s - 1 and idle_s after the last message.
                pushed_at = loop.time()
                while self._reading:
                    message = await self.ws.recv()
                    now = loop.time()
                    if now - pushed_at > IDLE_RESCHEDULE_S and not self._draining:
                        timeout.reschedule(now + idle_s)
                        pushed_at = now
                    events = (self.conn.receive_text(message) if isinstance(message, str)
                              else self.conn.receive_bytes(message))
                    for event in events:
                        await self._on_event(event, tg)
        except TimeoutError:
            if self._failed:
                return  # the engine failed a stream: the session ends with that error (_engine_failed)
            if self._draining:
                self.outcome = Outcome.DRAINED
                self.conn.go_away()
            else:
                self.outcome = Outcome.IDLE_TIMEOUT
                log.info("no message for %.1f s: finalising", idle_s)
                self.conn.time_out()
        except ConnectionClosed as exc:
            self._connection_lost(exc)
        finally:
            self._timeout = None

    def _connection_lost(self, exc: ConnectionClosed) -> None:
        """The client is gone. When we closed first with 1009, the ``websockets`` library refused a message
        over its ``max_size``: that is the client's protocol error, the rest are hang-ups."""
        too_big = exc.sent is not None and exc.sent.code == CLOSE_MESSAGE_TOO_BIG and not exc.rcvd_then_sent
        for event in self.conn.connection_lost(message_too_big=too_big):
            if isinstance(event, ProtocolViolation):
                self._count(event.error)
                self.outcome = Outcome.ERROR
            else:
                self.outcome = Outcome.CLIENT_CLOSED
            log.info("client gone (%s)", exc)
        for stream in self.streams:
            stream.abort(self.outcome)

    async def _on_event(self, event: Event, tg: asyncio.TaskGroup) -> None:
        """Act on one protocol event."""
        try:
            await self._dispatch(event, tg)
        except StreamClosedError as exc:
            if self.conn.state is ConnectionState.CLOSED:
                return  # the session is ending already (the client went away while we fed audio)
            # The engine ended a stream under us (its model step failed, or we fell too far behind
            # reading its results): the session cannot go on. Results already produced still go out.
            log.warning("stream ended by the engine: %s", exc)
            self.outcome = Outcome.ERROR
            self.conn.fail(exc)

    def _count(self, error: WebSocketError) -> None:
        """A client's protocol error, by wire code; one over a limit also in the limit counter."""
        metrics = self.h.engine.metrics
        metrics.errors.labels(PROTOCOL, error.code).inc()
        if error.limit is not None:
            metrics.limit_exceeded.labels(PROTOCOL, error.limit).inc()

    async def _dispatch(self, event: Event, tg: asyncio.TaskGroup) -> None:
        match event:
            case AudioReceived(channels=channels):
                for stream, pcm in zip(self.streams, channels, strict=True):
                    await stream.feed(pcm)
            case AudioDiscarded(num_samples=n):
                for stream in self.streams:
                    stream.skip_samples(n)
            case StreamStartRequested(config=config):
                await self._start(config, tg)
            case FinalizeRequested():
                for stream in self.streams:
                    await stream.finalize()
            case StopRequested() | PauseRequested() | ResumeRequested() | KeepaliveReceived():
                pass  # stop ends the read loop (the Connection is STOPPING); pause is the Connection's job
            case ProtocolViolation(error=error):
                self._count(error)
                if error.is_fatal:
                    self.outcome = Outcome.ERROR  # sent by send_closing after the pending results
                    return
                async with self.send_lock:
                    await self.send(self.conn.send_error(error))
            case ConnectionLost():
                raise AssertionError("ConnectionLost comes from connection_lost(), not from a message")

    async def _start(self, config: StreamConfig, tg: asyncio.TaskGroup) -> None:
        settings = _stream_settings(config, self.h.settings.defaults)
        try:
            self.streams = self.h.engine.open_streams(config.channels, settings, protocol=PROTOCOL)
        except OverloadedError as exc:
            self.outcome = Outcome.REJECTED
            self.conn.fail(exc)
            return
        async with self.send_lock:
            await self.send(self.conn.send_ready(self.session_id))
        log.info("stream started: %d channel(s), %s %d Hz", config.channels, config.encoding,
                 config.sample_rate_hz)
        for stream in self.streams:
            tg.create_task(self._forward(stream, config), name=f"ws-forward-{stream.stream_id}")

    async def _forward(self, stream: Stream, config: StreamConfig) -> None:
        """Send one channel's events as they come, until the stream ends."""
        try:
            async for event in stream.events():
                if isinstance(event, StreamEnded):
                    if event.outcome is Outcome.ERROR and self.outcome not in (Outcome.ERROR, Outcome.CLIENT_CLOSED):
                        self._engine_failed(stream)
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
        except ConnectionClosed as exc:
            self._connection_lost(exc)

    def _engine_failed(self, stream: Stream) -> None:
        """The engine ended ``stream`` with an error (its model step failed, the model was lost, or we fell
        too far behind reading its results): the session ends now with an error, even when the client has
        already sent ``stop`` (it must not take the missing finals for a clean end)."""
        log.warning("stream %d ended by the engine with an error", stream.stream_id)
        self.outcome = Outcome.ERROR
        self.conn.fail(StreamClosedError(f"stream {stream.stream_id} failed"))
        self._failed = True
        if self._timeout is not None and not self._timeout.expired():
            self._timeout.reschedule(asyncio.get_running_loop().time())

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
