"""The gRPC transport: grpc.aio joined to the engine's session API (docs/session-api.md, docs/grpc.md).

:class:`RecognizerServicer` serves ``xlgate.asr.v1.Recognizer``. It only translates: requests become a
:class:`gateway.session.StreamSettings` and PCM (:mod:`gateway.grpc_api.convert`), the engine's events
become responses. :class:`GrpcServer` runs it on ``grpc.aio`` in the gateway's event loop, with the
standard health service (SERVING, NOT_SERVING from the start of a drain) and server reflection.

How a call ends, and its status:

- the client half-closes: the remaining finals are sent, then OK (outcome ``completed``);
- the client cancels, its deadline passes or it disconnects: grpc cancels the handler; its streams are
  aborted at once (their slots freed) in ``finally`` and the outcome is ``client_closed``, logged at INFO,
  never counted as an error;
- a request is malformed: INVALID_ARGUMENT (outcome ``error``, ``xlgate_errors_total{kind=...}``);
- the engine is full: RESOURCE_EXHAUSTED; draining: UNAVAILABLE (outcome ``rejected``);
- no message for the idle timeout: the finals are sent, then DEADLINE_EXCEEDED (outcome ``idle_timeout``);
- the server shuts down: the finals are sent, then UNAVAILABLE (outcome ``drained``);
- a failure of ours: logged with its traceback, INTERNAL with a generic message (outcome ``error``);
- with authentication on, a call without valid credentials: UNAUTHENTICATED from
  :mod:`gateway.grpc_api.auth`'s interceptor, before this servicer runs (no outcome: no stream existed).

Statuses are set with ``context.set_code`` and the handler returns, rather than ``context.abort``
raising out of a TaskGroup (where it would come out as an ExceptionGroup).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.auth import TokenAuthenticator
from gateway.engine import Engine, Stream, StreamClosedError
from gateway.grpc_api import asr_pb2 as pb
from gateway.grpc_api import asr_pb2_grpc
from gateway.grpc_api.auth import AuthInterceptor
from gateway.grpc_api.convert import (
    AudioFormat,
    InvalidRequestError,
    ResultOptions,
    decode_chunk,
    decode_recording,
    duration,
    recognition_result,
    recognition_settings,
    speech_event,
    streaming_result,
)
from gateway.limits import AddressSessions, peer_host
from gateway.logging import LogPolicy, session_context
from gateway.session import Outcome, ResultEvent, SpeechEnded, SpeechStarted, StreamEnded, StreamSettings
from protocols.errors import GatewayError, OverloadedError

__all__ = ["SERVICE_NAME", "GrpcServer", "GrpcSettings", "RecognizerServicer"]

log = logging.getLogger("xlgate.grpc")

PROTOCOL: Final = "grpc"
SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["Recognizer"].full_name
SESSION_ID_HEADER: Final = "x-xlgate-session-id"
RECOGNIZE_PIECE_S: Final = 1.0  # a recording is fed in pieces this long, so its channels advance together
KEEPALIVE_S: Final = 20
STOP_GRACE_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class GrpcSettings:
    """What the gRPC server needs from ``xlgate serve``'s settings."""

    host: str
    port: int
    max_message_bytes: int
    idle_timeout_s: float
    tls_cert_chain: bytes | None = None
    tls_private_key: bytes | None = None
    max_sessions_per_address: int = 0  # calls one client address may hold at once; 0 = no bound
    # The server's values for what a request leaves out; its hotwords are merged with each request's own.
    defaults: StreamSettings = field(default_factory=StreamSettings)
    # None: no authentication (the default); else every call but health checks needs a valid token.
    authenticator: TokenAuthenticator | None = None


class _CallFailed(Exception):
    """Ends a call with ``status``; ``message`` is safe to show the client."""

    def __init__(self, status: grpc.StatusCode, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome


def _status_of(exc: GatewayError) -> grpc.StatusCode:
    """The status an error class carries as its ``grpc_status`` attribute (INTERNAL when it has none)."""
    name = getattr(exc, "grpc_status", "INTERNAL")
    return grpc.StatusCode[name]


class RecognizerServicer:
    """``xlgate.asr.v1.Recognizer`` over the session API: one :class:`_StreamingCall` per streaming call."""

    def __init__(self, engine: Engine, settings: GrpcSettings, policy: LogPolicy) -> None:
        self.engine = engine
        self.settings = settings
        self.policy = policy
        self._calls: set[_StreamingCall] = set()
        self.addresses = AddressSessions(settings.max_sessions_per_address, metrics=engine.metrics,
                                         protocol=PROTOCOL)
        engine.add_finish_listener(self.finish_all)

    def finish_all(self) -> None:
        """Drain: every live streaming call stops reading, gets its finals and ends with UNAVAILABLE."""
        for call in list(self._calls):
            call.interrupt()

    def _open(self, count: int, settings: StreamSettings) -> list[Stream]:
        try:
            return self.engine.open_streams(count, settings, protocol=PROTOCOL)
        except OverloadedError as exc:  # DrainingError included: its status is UNAVAILABLE
            raise _CallFailed(_status_of(exc), str(exc), Outcome.REJECTED) from None

    def _refuse_address(self, context: grpc.aio.ServicerContext[Any, Any], address: str) -> None:
        log.info("call from %s refused: %d calls from that address", address, self.addresses.live(address))
        context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
        context.set_details("too many calls from your address")

    async def StreamingRecognize(self, request_iterator: AsyncIterator[pb.StreamingRecognizeRequest],
                                 context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Serve one streaming call (see the module docstring for how it ends); RESOURCE_EXHAUSTED when
        the caller's address holds ``max_sessions_per_address`` calls already."""
        address = peer_host(context.peer())
        if not self.addresses.acquire(address):
            self._refuse_address(context, address)
            return
        try:
            await self._streaming_recognize(request_iterator, context)
        finally:
            self.addresses.release(address)

    async def _streaming_recognize(self, request_iterator: AsyncIterator[pb.StreamingRecognizeRequest],
                                   context: grpc.aio.ServicerContext[Any, Any]) -> None:
        session_id = uuid.uuid4().hex[:16]
        with session_context(session_id):
            call = _StreamingCall(self, context, session_id)
            self._calls.add(call)
            try:
                if self.engine.drain_requested.is_set():
                    call.interrupt()
                await call.run()
            finally:
                self._calls.discard(call)

    async def Recognize(self, request: pb.RecognizeRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.RecognizeResponse:
        """Recognise a whole recording: feed it as fast as the engine takes it, return every final
        (RESOURCE_EXHAUSTED when the caller's address holds ``max_sessions_per_address`` calls already)."""
        address = peer_host(context.peer())
        if not self.addresses.acquire(address):
            self._refuse_address(context, address)
            return pb.RecognizeResponse()
        try:
            return await self._recognize(request, context)
        finally:
            self.addresses.release(address)

    async def _recognize(self, request: pb.RecognizeRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.RecognizeResponse:
        session_id = uuid.uuid4().hex[:16]
        with session_context(session_id):
            outcome = Outcome.COMPLETED
            streams: list[Stream] = []
            try:
                settings, audio, options, rate_hz, pcm = self._recording(request)
                streams = self._open(audio.streams, settings)
                log.info("recognize: %d stream(s), %.1f s at %d Hz", len(streams),
                         pcm[0].shape[0] / rate_hz, rate_hz)
                finals: list[tuple[float, int, pb.SpeechRecognitionResult]] = []
                async with asyncio.TaskGroup() as tg:
                    ends = [tg.create_task(self._collect(stream, options, finals)) for stream in streams]
                    await self._feed_recording(streams, pcm, rate_hz)
                if any(end.result() is not Outcome.COMPLETED for end in ends):
                    raise _CallFailed(grpc.StatusCode.INTERNAL, "recognition failed", Outcome.ERROR)
                finals.sort(key=lambda item: (item[0], item[1]))
                return pb.RecognizeResponse(results=[r for _, _, r in finals],
                                            audio_duration=duration(pcm[0].shape[0] / rate_hz))
            except InvalidRequestError as exc:
                outcome = self._fail(context, _CallFailed(grpc.StatusCode.INVALID_ARGUMENT, str(exc),
                                                          Outcome.ERROR), kind=exc.code)
            except _CallFailed as exc:
                outcome = self._fail(context, exc, kind=None)
            except StreamClosedError:  # the engine failed a stream (its model step; logged there)
                outcome = self._fail(context, _CallFailed(grpc.StatusCode.INTERNAL, "recognition failed",
                                                          Outcome.ERROR), kind="internal")
            except asyncio.CancelledError:
                outcome = Outcome.CLIENT_CLOSED
                log.info("recognize cancelled by the client (or its deadline)")
                raise
            except Exception:
                outcome = self._internal_error(context)
            finally:
                for stream in streams:
                    stream.abort(outcome)
                log.info("recognize ended: %s", outcome)
            return pb.RecognizeResponse()

    def _recording(self, request: pb.RecognizeRequest) -> tuple[
            StreamSettings, AudioFormat, ResultOptions, int, list[Any]]:
        if not request.HasField("config"):
            raise InvalidRequestError("config: expected a RecognitionConfig, got none")
        if not request.audio_content:
            raise InvalidRequestError("audio_content: expected audio, got 0 bytes")
        header = request.config.encoding == pb.AUDIO_ENCODING_UNSPECIFIED
        settings, audio, options = recognition_settings(request.config, self.settings.defaults,
                                                        interim_results=False, header=header)
        if header:
            rate_hz, pcm = decode_recording(request.audio_content,
                                            request.config.enable_separate_recognition_per_channel)
            settings = replace(settings, sample_rate_hz=rate_hz)
            audio = AudioFormat(encoding=None, channels=len(pcm), separate_channels=audio.separate_channels)
        else:
            rate_hz, pcm = settings.sample_rate_hz, decode_chunk(request.audio_content, audio)
        return settings, audio, options, rate_hz, pcm

    @staticmethod
    async def _feed_recording(streams: list[Stream], pcm: list[Any], rate_hz: int) -> None:
        piece = int(RECOGNIZE_PIECE_S * rate_hz)
        for lo in range(0, pcm[0].shape[0], piece):
            for stream, channel in zip(streams, pcm, strict=True):
                await stream.feed(channel[lo:lo + piece])
        for stream in streams:
            await stream.stop(Outcome.COMPLETED)

    @staticmethod
    async def _collect(stream: Stream, options: ResultOptions,
                       finals: list[tuple[float, int, pb.SpeechRecognitionResult]]) -> Outcome:
        """Gather one stream's non-empty finals; returns how the stream ended."""
        async for event in stream.events():
            if isinstance(event, ResultEvent) and event.is_final and event.hypothesis.text:
                finals.append((event.hypothesis.end_s, stream.channel,
                               recognition_result(event, channel=stream.channel, options=options)))
            elif isinstance(event, StreamEnded):
                return event.outcome
        raise AssertionError("Stream.events() ends with StreamEnded")

    # -- how calls fail ----------------------------------------------------------------------------------
    def _fail(self, context: grpc.aio.ServicerContext[Any, Any], failure: _CallFailed, *,
              kind: str | None) -> Outcome:
        """End the call with ``failure``'s status; count the client's errors (not rejections)."""
        if kind is not None:
            self.engine.metrics.errors.labels(PROTOCOL, kind).inc()
        log.info("call failed: %s: %s", failure.status.name, failure.message)
        context.set_code(failure.status)
        context.set_details(failure.message)
        return failure.outcome

    def _internal_error(self, context: grpc.aio.ServicerContext[Any, Any]) -> Outcome:
        log.exception("call failed")
        self.engine.metrics.errors.labels(PROTOCOL, "internal").inc()
        context.set_code(grpc.StatusCode.INTERNAL)
        context.set_details("internal error")
        return Outcome.ERROR


class _StreamingCall:
    """One StreamingRecognize call: its streams (one per recognised channel), its write lock, its ending."""

    def __init__(self, servicer: RecognizerServicer, context: grpc.aio.ServicerContext[Any, Any],
                 session_id: str) -> None:
        self.s = servicer
        self.context = context
        self.session_id = session_id
        self.streams: list[Stream] = []
        self.write_lock = asyncio.Lock()
        self.outcome = Outcome.COMPLETED
        self.failure: _CallFailed | None = None
        self._timeout: asyncio.Timeout | None = None
        self._draining = False

    def interrupt(self) -> None:
        """Stop reading now (drain): the streams are then stopped and get their finals."""
        self._draining = True
        if self._timeout is not None and not self._timeout.expired():
            self._timeout.reschedule(asyncio.get_running_loop().time())

    async def run(self) -> None:
        try:
            await self.context.send_initial_metadata(((SESSION_ID_HEADER, self.session_id),))
            async with asyncio.timeout(self.s.settings.idle_timeout_s) as timeout:
                self._timeout = timeout
                if self._draining:
                    timeout.reschedule(asyncio.get_running_loop().time())
                first = await self.context.read()
            settings, audio, options = self._config(first)
            self.streams = self.s._open(audio.streams, settings)
            log.info("stream started: %d stream(s) of %d channel(s), %s %d Hz", len(self.streams),
                     audio.channels, audio.encoding, settings.sample_rate_hz)
            async with asyncio.TaskGroup() as tg:
                for stream in self.streams:
                    tg.create_task(self._forward(stream, options), name=f"grpc-forward-{stream.stream_id}")
                await self._read_audio(audio)
                if self.failure is None or self.outcome in (Outcome.IDLE_TIMEOUT, Outcome.DRAINED):
                    for stream in self.streams:
                        await stream.stop(self.outcome)
                else:
                    for stream in self.streams:
                        stream.abort(self.outcome)
            if self.failure is not None:
                raise self.failure
        except TimeoutError:  # no configuration within the idle timeout (or a drain before it came)
            self._end(_CallFailed(grpc.StatusCode.UNAVAILABLE, "the server is shutting down", Outcome.DRAINED)
                      if self._draining else
                      _CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "no configuration within the idle timeout",
                                  Outcome.IDLE_TIMEOUT))
        except InvalidRequestError as exc:
            self.s.engine.metrics.errors.labels(PROTOCOL, exc.code).inc()
            self._end(_CallFailed(grpc.StatusCode.INVALID_ARGUMENT, str(exc), Outcome.ERROR))
        except _CallFailed as exc:
            self._end(exc)
        except asyncio.CancelledError:
            # The client cancelled, its deadline passed or it went away: a normal end, not an error.
            self.outcome = Outcome.CLIENT_CLOSED
            log.info("client cancelled the call")
            raise
        except Exception:
            self.outcome = self.s._internal_error(self.context)
        finally:
            self._timeout = None
            for stream in self.streams:
                stream.abort(self.outcome)
            log.info("client session ended: %s", self.outcome)

    def _end(self, failure: _CallFailed) -> None:
        self.outcome = failure.outcome
        log.info("call ended: %s: %s", failure.status.name, failure.message)
        self.context.set_code(failure.status)
        self.context.set_details(failure.message)

    def _config(self, first: Any) -> tuple[StreamSettings, AudioFormat, ResultOptions]:
        if first is grpc.aio.EOF:
            raise InvalidRequestError("request stream: expected streaming_config first, got end of stream")
        assert isinstance(first, pb.StreamingRecognizeRequest)
        if first.WhichOneof("streaming_request") != "streaming_config":
            raise InvalidRequestError("request stream: expected streaming_config first, got audio_content")
        config = first.streaming_config
        if not config.HasField("config"):
            raise InvalidRequestError("streaming_config.config: expected a RecognitionConfig, got none")
        return recognition_settings(config.config, self.s.settings.defaults,
                                    interim_results=config.interim_results)

    async def _read_audio(self, audio: AudioFormat) -> None:
        """Read and feed audio until the client half-closes, the idle timeout, a drain, or an error (which
        is kept in ``failure``, not raised: this runs inside the call's TaskGroup)."""
        loop = asyncio.get_running_loop()
        idle_s = self.s.settings.idle_timeout_s
        try:
            async with asyncio.timeout(idle_s) as timeout:
                self._timeout = timeout
                if self._draining:
                    timeout.reschedule(loop.time())
                while True:
                    request = await self.context.read()
                    if request is grpc.aio.EOF:
                        return
                    if not self._draining:
                        timeout.reschedule(loop.time() + idle_s)
                    assert isinstance(request, pb.StreamingRecognizeRequest)
                    kind = request.WhichOneof("streaming_request")
                    if kind != "audio_content":
                        raise InvalidRequestError("request stream: expected audio_content, got "
                                                  + ("a second streaming_config" if kind else "an empty request"))
                    for stream, pcm in zip(self.streams, decode_chunk(request.audio_content, audio),
                                           strict=True):
                        await stream.feed(pcm)
        except TimeoutError:
            if self.failure is not None:
                return  # the engine failed a stream (_engine_failed)
            if self._draining:
                self.outcome = Outcome.DRAINED
                self.failure = _CallFailed(grpc.StatusCode.UNAVAILABLE,
                                           "the server is shutting down; audio after this point was not "
                                           "recognised", Outcome.DRAINED)
            else:
                self.outcome = Outcome.IDLE_TIMEOUT
                log.info("no message for %.1f s: finalising", idle_s)
                self.failure = _CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED,
                                           f"no audio for {idle_s:g} s (idle timeout)", Outcome.IDLE_TIMEOUT)
        except InvalidRequestError as exc:
            self.s.engine.metrics.errors.labels(PROTOCOL, exc.code).inc()
            self.outcome = Outcome.ERROR
            self.failure = _CallFailed(grpc.StatusCode.INVALID_ARGUMENT, str(exc), Outcome.ERROR)
        except StreamClosedError as exc:
            # The engine ended a stream under us (its model step failed, or we fell too far behind reading
            # its results): the call cannot go on.
            log.warning("stream ended by the engine: %s", exc)
            self.outcome = Outcome.ERROR
            self.failure = _CallFailed(grpc.StatusCode.ABORTED, "recognition of this stream was stopped by "
                                       "the server", Outcome.ERROR)
        finally:
            self._timeout = None

    def _engine_failed(self, stream: Stream) -> None:
        """The engine ended ``stream`` with an error (its model step failed or the model was lost): the call
        ends now with ABORTED, even when the client has already half-closed (it must not take the missing
        finals for a clean end)."""
        log.warning("stream %d ended by the engine with an error", stream.stream_id)
        self.outcome = Outcome.ERROR
        self.failure = _CallFailed(grpc.StatusCode.ABORTED, "recognition of this stream was stopped by the server",
                                   Outcome.ERROR)
        if self._timeout is not None and not self._timeout.expired():
            self._timeout.reschedule(asyncio.get_running_loop().time())

    async def _forward(self, stream: Stream, options: ResultOptions) -> None:
        """Send one stream's events as they come, until it ends."""
        clock = self.s.engine.clock
        async for event in stream.events():
            if isinstance(event, StreamEnded):
                if event.outcome is Outcome.ERROR and self.failure is None:
                    self._engine_failed(stream)
                return
            async with self.write_lock:
                if isinstance(event, ResultEvent):
                    message = streaming_result(event, channel=stream.channel, options=options,
                                               latency_s=clock() - event.arrival_s)
                else:
                    assert isinstance(event, SpeechStarted | SpeechEnded)
                    message = speech_event(event, channel=stream.channel)
                await self.context.write(message)
            if isinstance(event, ResultEvent):
                stream.record_sent(event)
                if event.is_final:
                    log.debug("final: %s", self.s.policy.transcript(event.hypothesis.text))


class GrpcServer:
    """The gRPC listener of ``xlgate serve``: the Recognizer, health checking and reflection on grpc.aio,
    in the running event loop. :meth:`start`, then :meth:`begin_drain` when the gateway drains, then
    :meth:`stop`."""

    def __init__(self, engine: Engine, settings: GrpcSettings, policy: LogPolicy) -> None:
        self.settings = settings
        self.servicer = RecognizerServicer(engine, settings, policy)
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    def _options(self) -> Sequence[tuple[str, int]]:
        limit = self.settings.max_message_bytes
        return (
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # Refuse to share the port with another process (grpc's default allows it, silently).
            ("grpc.so_reuseport", 0),
            # Find dead peers (a vanished agent desktop) without waiting for the idle timeout.
            ("grpc.keepalive_time_ms", KEEPALIVE_S * 1000),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_S * 1000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        )

    async def start(self) -> int:
        """Bind and serve; returns the port bound.

        Raises:
            OSError: the address could not be bound.
        """
        interceptors = ([AuthInterceptor(self.settings.authenticator, self.servicer.engine.metrics)]
                        if self.settings.authenticator is not None else [])
        server = grpc.aio.server(options=self._options(), interceptors=interceptors)
        asr_pb2_grpc.add_RecognizerServicer_to_server(self.servicer, server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        host = self.settings.host
        address = f"[{host}]:{self.settings.port}" if ":" in host else f"{host}:{self.settings.port}"
        try:
            if self.settings.tls_cert_chain is not None and self.settings.tls_private_key is not None:
                credentials = grpc.ssl_server_credentials(
                    [(self.settings.tls_private_key, self.settings.tls_cert_chain)])
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises this where older versions returned port 0
            raise OSError(f"cannot bind the gRPC port {address} (in use?)") from exc
        if port == 0:
            raise OSError(f"cannot bind the gRPC port {address} (in use?)")
        await server.start()
        self._server, self.port = server, int(port)
        for service in (health.OVERALL_HEALTH, SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return int(port)

    async def begin_drain(self) -> None:
        """Health turns NOT_SERVING for good (new calls are refused by the engine with UNAVAILABLE)."""
        await self.health.enter_graceful_shutdown()

    async def stop(self) -> None:
        """Stop serving: calls still open (health watchers, a late call) get :data:`STOP_GRACE_S`."""
        if self._server is not None:
            await self.health.enter_graceful_shutdown()
            await self._server.stop(STOP_GRACE_S)
            self._server = None

