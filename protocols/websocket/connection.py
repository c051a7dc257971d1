"""The server side of the native WebSocket protocol v1 as a sans-I/O state machine.

Theory of operation
-------------------
The transport (gateway/, using the ``websockets`` library for RFC 6455 framing) owns the socket. For each
WebSocket message it calls :meth:`Connection.receive_text` or :meth:`Connection.receive_bytes` and acts on
the returned events; to say something it calls a ``send_*`` command and writes the returned JSON text as a
text frame. The Connection never does I/O, never reads a clock and never raises on anything the client
sends: every violation comes back as a :class:`ProtocolViolation` event whose error class carries the
``code`` for the ``error`` message and the ``close_code`` (None when the stream goes on).

Incoming side, :class:`ConnectionState`::

    AWAITING_START --start--> STREAMING --stop--> STOPPING
          |                       |                   |
          +-- fatal violation ----+-------------------+--> CLOSED <-- send_end / fatal send_error

* AWAITING_START: only ``start`` (and ``keepalive``) are welcome. A bad ``start`` is refused with a
  non-fatal error and the client may send a corrected one; audio and other control messages are refused
  without closing, because a client that pipelines ``start`` and audio would otherwise lose the chance to
  fix its ``start``.
* STREAMING: audio and control messages. ``pause`` / ``resume`` toggle :attr:`Connection.paused`; audio
  received while paused comes out as :class:`AudioDiscarded` (counted in the timeline, never decoded).
* STOPPING: the client said ``stop``; the server still sends its remaining finals, so anything the client
  sends now is refused without closing (closing would lose those finals).
* CLOSED: the Connection has decided to close with :attr:`Connection.close_code_to_send`; input that was in
  flight is ignored (returns no events).

Outgoing side: ``ready`` goes first and once; results and speech events only after it; exactly one closing
message (``end``, or an ``error`` whose class has a close code) after which nothing more is sent. Results
already produced when a fatal violation arrives may still be sent before the closing ``error``, so bad
input never loses them. Breaking these rules is our bug and raises :class:`WebSocketLocalError`.
"""

from __future__ import annotations

import enum
import math

from protocols.errors import OverloadedError
from protocols.websocket import codec
from protocols.websocket.errors import (
    CLOSE_NORMAL,
    AudioBeforeStart,
    ControlBeforeStart,
    DuplicateStart,
    FrameTooLarge,
    InternalError,
    MessageTooLarge,
    StreamStopped,
    WebSocketError,
    WebSocketLocalError,
    WebSocketOverloaded,
)
from protocols.websocket.events import (
    AudioDiscarded,
    AudioReceived,
    End,
    ErrorReply,
    Event,
    FinalizeRequested,
    KeepaliveReceived,
    PauseRequested,
    ProtocolViolation,
    Ready,
    Result,
    ResultMessage,
    ResumeRequested,
    SpeechEnded,
    SpeechStarted,
    StopRequested,
    StreamConfig,
    StreamStartRequested,
)

__all__ = ["DEFAULT_MAX_FRAME_BYTES", "DEFAULT_MAX_TEXT_BYTES", "Connection", "ConnectionState"]

DEFAULT_MAX_FRAME_BYTES = 64_000  # 1 s of 16 kHz stereo 16-bit audio
DEFAULT_MAX_TEXT_BYTES = 65_536  # a start with 1000 hotwords of 30 characters fits with room to spare
_UTF8_MAX_BYTES_PER_CHAR = 4
_GENERIC_INTERNAL_MESSAGE = "internal error"  # internals are never sent to the client


class ConnectionState(enum.Enum):
    """Where the client side of the conversation stands; see the module's theory of operation."""

    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    STOPPING = "stopping"
    CLOSED = "closed"


class Connection:
    """One client's WebSocket conversation, server side, with no I/O.

    Args:
        max_frame_bytes: largest binary frame accepted; a larger one is ``frame_too_large`` (close 1009).
        max_text_bytes: largest text message accepted, in UTF-8 bytes; larger is ``message_too_large``.
        defaults: values for the fields a ``start`` leaves out (the server's configuration); the
            protocol's documented defaults when None.
    """

    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
        defaults: StreamConfig | None = None,
    ) -> None:
        if max_frame_bytes < 4:
            raise ValueError(
                f"max_frame_bytes: expected at least 4 (one stereo 16-bit frame), got {max_frame_bytes}"
            )
        if max_text_bytes < 1024:
            raise ValueError(f"max_text_bytes: expected at least 1024, got {max_text_bytes}")
        self.max_frame_bytes = max_frame_bytes
        self.max_text_bytes = max_text_bytes
        self._defaults = defaults  # the server's configured values for fields a start leaves out
        self._state = ConnectionState.AWAITING_START
        self._config: StreamConfig | None = None
        self._paused = False
        self._samples_received = 0  # per channel, since start, paused audio included
        self._ready_sent = False
        self._closing_sent = False
        self._next_seq = 0
        self._close_code: int | None = None
        self._close_reason = ""

    # -----------------------------------------------------------------------------------------------------
    # State.

    @property
    def state(self) -> ConnectionState:
        """The incoming side's state."""
        return self._state

    @property
    def config(self) -> StreamConfig | None:
        """The accepted ``start``'s settings; None until one is accepted."""
        return self._config

    @property
    def paused(self) -> bool:
        """True between an accepted ``pause`` and the next ``resume``."""
        return self._paused

    @property
    def samples_received(self) -> int:
        """Samples per channel received since ``start``, audio discarded while paused included."""
        return self._samples_received

    @property
    def close_code_to_send(self) -> int | None:
        """The WebSocket close code to close with once :attr:`state` is CLOSED; None before."""
        return self._close_code

    @property
    def close_reason_to_send(self) -> str:
        """The close frame's reason: the error code, or empty for a normal close."""
        return self._close_reason

    def _close(self, code: int, reason: str) -> None:
        self._state = ConnectionState.CLOSED
        self._close_code = code
        self._close_reason = reason

    def _violation(self, error: WebSocketError) -> list[Event]:
        if error.close_code is not None:
            self._close(error.close_code, error.code)
        return [ProtocolViolation(error)]

    # -----------------------------------------------------------------------------------------------------
    # Inputs.

    def receive_text(self, text: str) -> list[Event]:
        """Handle one text message from the client.

        Returns:
            The events it caused: none, one request event, or one :class:`ProtocolViolation`.
        """
        if self._state is ConnectionState.CLOSED:
            return []
        if len(text) > self.max_text_bytes or (
            len(text) * _UTF8_MAX_BYTES_PER_CHAR > self.max_text_bytes
            and len(text.encode("utf-8", "surrogatepass")) > self.max_text_bytes
        ):
            return self._violation(
                MessageTooLarge(
                    f"expected a text message of at most {self.max_text_bytes} bytes, got a larger one"
                )
            )
        if self._state is ConnectionState.STOPPING:
            return self._violation(
                StreamStopped("expected nothing after stop, got a text message; it was ignored")
            )
        try:
            obj = codec.parse_json_object(text)
            kind = codec.message_type(obj)
            if kind == "start":
                return self._on_start(obj)
            codec.check_no_fields(obj, kind=kind)
            return self._on_control(kind)
        except WebSocketError as error:
            return self._violation(error)

    def _on_start(self, obj: codec.JsonObject) -> list[Event]:
        if self._state is ConnectionState.STREAMING:
            return self._violation(
                DuplicateStart("expected one start per connection, got a second; open a new connection")
            )
        self._config = codec.parse_start(obj, self._defaults)
        self._state = ConnectionState.STREAMING
        return [StreamStartRequested(self._config)]

    def _on_control(self, kind: str) -> list[Event]:
        if kind == "keepalive":
            return [KeepaliveReceived()]
        if self._state is ConnectionState.AWAITING_START:
            return self._violation(ControlBeforeStart(f"expected start first, got {kind}; it was ignored"))
        if kind == "stop":
            self._state = ConnectionState.STOPPING
            return [StopRequested()]
        if kind == "finalize":
            return [FinalizeRequested()]
        if kind == "pause":
            if self._paused:
                return []
            self._paused = True
            return [PauseRequested()]
        assert kind == "resume", kind
        if not self._paused:
            return []
        self._paused = False
        return [ResumeRequested()]

    def receive_bytes(self, data: bytes) -> list[Event]:
        """Handle one binary message (raw audio, channels interleaved) from the client.

        Returns:
            ``[AudioReceived]``, ``[AudioDiscarded]`` while paused, ``[]`` for an empty frame, or
            ``[ProtocolViolation]``.
        """
        if self._state is ConnectionState.CLOSED:
            return []
        if len(data) > self.max_frame_bytes:
            return self._violation(
                FrameTooLarge(
                    f"expected a binary frame of at most {self.max_frame_bytes} bytes, got {len(data)}"
                )
            )
        if self._state is ConnectionState.STOPPING:
            return self._violation(StreamStopped("expected nothing after stop, got audio; it was discarded"))
        if self._state is ConnectionState.AWAITING_START or self._config is None:
            return self._violation(
                AudioBeforeStart("expected a start message before audio; the frame was discarded")
            )
        try:
            num_samples = codec.check_audio_length(len(data), self._config)
        except WebSocketError as error:
            return self._violation(error)
        if num_samples == 0:
            return []
        start_sample = self._samples_received
        self._samples_received += num_samples
        if self._paused:
            return [AudioDiscarded(num_samples=num_samples, start_sample=start_sample)]
        return [AudioReceived(channels=codec.decode_audio(data, self._config), start_sample=start_sample)]

    # -----------------------------------------------------------------------------------------------------
    # Commands.

    def _check_can_send(self, what: str) -> None:
        if self._closing_sent:
            raise WebSocketLocalError(f"cannot send {what}: the closing message was already sent")

    def _check_streaming_output(self, what: str) -> StreamConfig:
        self._check_can_send(what)
        if not self._ready_sent or self._config is None:
            raise WebSocketLocalError(f"cannot send {what} before ready")
        return self._config

    def _check_channel(self, channel: int, config: StreamConfig) -> None:
        if not 0 <= channel < config.channels:
            raise WebSocketLocalError(f"channel: expected 0..{config.channels - 1}, got {channel}")

    def send_ready(self, session_id: str) -> str:
        """Accept the stream: the ``ready`` message, once, after :class:`StreamStartRequested`.

        Raises:
            WebSocketLocalError: no ``start`` accepted yet, ``ready`` already sent, or the stream closed.
        """
        self._check_can_send("ready")
        if self._config is None:
            raise WebSocketLocalError("cannot send ready before a start was accepted")
        if self._ready_sent:
            raise WebSocketLocalError("cannot send ready twice")
        self._ready_sent = True
        return codec.encode_server_message(
            Ready(
                session_id=session_id,
                sample_rate_hz=self._config.sample_rate_hz,
                encoding=self._config.encoding,
                channels=self._config.channels,
                max_frame_bytes=self.max_frame_bytes,
                client_ref=self._config.client_ref,
            )
        )

    def send_result(self, result: ResultMessage) -> str:
        """Send a ``partial`` or ``final``; the Connection numbers results with ``seq`` from 0.

        Raises:
            WebSocketLocalError: before ``ready`` or after the closing message; a partial while the client
                asked for no interim results; words while it asked for no word timings; finals-only fields
                on a partial; a channel, time or confidence out of range.
        """
        config = self._check_streaming_output("a result")
        self._check_channel(result.channel, config)
        if not 0 <= result.start_ms <= result.end_ms <= result.audio_end_ms:
            raise WebSocketLocalError(
                "times: expected 0 <= start_ms <= end_ms <= audio_end_ms, got "
                f"{result.start_ms}, {result.end_ms}, {result.audio_end_ms}"
            )
        if not result.is_final:
            if not config.interim_results:
                raise WebSocketLocalError("cannot send a partial: the client set interim_results false")
            if result.confidence is not None or result.words or result.alternatives:
                raise WebSocketLocalError("confidence, words and alternatives: expected only on finals")
            if not 0 <= result.stable_words <= len(result.text.split()):
                raise WebSocketLocalError(
                    f"stable_words: expected 0 .. {len(result.text.split())} (the words of text), "
                    f"got {result.stable_words}")
        elif result.stable_words:
            raise WebSocketLocalError("stable_words: expected only on partials (a final is settled whole)")
        if result.words and not config.word_timings:
            raise WebSocketLocalError("words: the client set word_timings false")
        confidences = [result.confidence] if result.confidence is not None else []
        confidences += [word.confidence for word in result.words]
        confidences += [alternative.confidence for alternative in result.alternatives]
        for confidence in confidences:
            if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
                raise WebSocketLocalError(f"confidence: expected a number in [0, 1], got {confidence}")
        for word in result.words:
            if not 0 <= word.start_ms <= word.end_ms:
                raise WebSocketLocalError(f"word times: expected 0 <= start_ms <= end_ms, got {word}")
        seq = self._next_seq
        self._next_seq += 1
        return codec.encode_server_message(Result(result=result, seq=seq))

    def send_speech_started(self, *, channel: int, start_ms: int) -> str:
        """Send ``speech_started``: voice activity began on ``channel`` at ``start_ms``."""
        config = self._check_streaming_output("speech_started")
        self._check_channel(channel, config)
        if start_ms < 0:
            raise WebSocketLocalError(f"start_ms: expected >= 0, got {start_ms}")
        return codec.encode_server_message(SpeechStarted(channel=channel, start_ms=start_ms))

    def send_speech_ended(self, *, channel: int, end_ms: int) -> str:
        """Send ``speech_ended``: voice activity ended on ``channel`` at ``end_ms``."""
        config = self._check_streaming_output("speech_ended")
        self._check_channel(channel, config)
        if end_ms < 0:
            raise WebSocketLocalError(f"end_ms: expected >= 0, got {end_ms}")
        return codec.encode_server_message(SpeechEnded(channel=channel, end_ms=end_ms))

    def send_error(self, error: Exception) -> str:
        """Send an ``error`` message for any exception; close the Connection if the error is fatal.

        A :class:`WebSocketError` goes out with its own code and text; an :class:`OverloadedError` as
        ``overloaded`` with ``retry_after_ms`` (close 1013); anything else, our own
        :class:`WebSocketLocalError` included, as a generic ``internal_error`` (close 1011) whose text
        reveals nothing. The caller logs unexpected exceptions with their traceback.

        Raises:
            WebSocketLocalError: the closing message was already sent.
        """
        self._check_can_send("an error")
        retry_after_ms = None
        wire: WebSocketError
        if isinstance(error, WebSocketError) and not isinstance(error, WebSocketLocalError | InternalError):
            wire = error
        elif isinstance(error, OverloadedError):
            wire = WebSocketOverloaded(
                str(error) or "the gateway is at capacity", retry_after_s=error.retry_after_s
            )
        else:
            wire = InternalError(_GENERIC_INTERNAL_MESSAGE)
        if isinstance(wire, OverloadedError):
            retry_after_ms = max(0, round(wire.retry_after_s * 1000))
        if wire.close_code is not None:
            self._closing_sent = True
            if self._state is not ConnectionState.CLOSED:
                self._close(wire.close_code, wire.code)
        return codec.encode_server_message(
            ErrorReply(
                code=wire.code, message=wire.message, fatal=wire.is_fatal, retry_after_ms=retry_after_ms
            )
        )

    def send_end(self) -> str:
        """Send ``end`` after the last final; the Connection is CLOSED with close code 1000.

        Raises:
            WebSocketLocalError: before ``ready``, after a fatal violation, or after the closing message.
        """
        self._check_streaming_output("end")
        if self._state is ConnectionState.CLOSED:
            raise WebSocketLocalError(
                f"cannot send end: closing with {self._close_code} ({self._close_reason})"
            )
        self._closing_sent = True
        self._close(CLOSE_NORMAL, "")
        return codec.encode_server_message(End())
