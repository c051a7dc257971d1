"""Errors of the native WebSocket protocol v1.

Each class carries its wire reply as class attributes: ``code`` is the stable snake_case code sent in the
``error`` message, ``close_code`` is None when the stream goes on after the error, else the WebSocket close
code to close with (RFC 6455 §7.4.1; 1013 from the IANA registry). docs/websocket-protocol.md has the table
of which input raises which error in which state.
"""

from __future__ import annotations

from typing import ClassVar

from protocols.errors import GatewayError, LocalProtocolError, OverloadedError, RemoteProtocolError

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_TRY_AGAIN_LATER",
    "AudioBeforeStart",
    "ControlBeforeStart",
    "DuplicateStart",
    "FrameTooLarge",
    "InternalError",
    "InvalidAudioLength",
    "InvalidJson",
    "InvalidValue",
    "MessageTooLarge",
    "StreamStopped",
    "UnknownField",
    "UnknownMessage",
    "UnsupportedEncoding",
    "WebSocketError",
    "WebSocketLocalError",
    "WebSocketOverloaded",
    "WebSocketRemoteError",
]

CLOSE_NORMAL = 1000  # RFC 6455 §7.4.1
CLOSE_GOING_AWAY = 1001  # RFC 6455 §7.4.1: the server is going down (drain)
CLOSE_INVALID_PAYLOAD = 1007  # RFC 6455 §7.4.1: data inconsistent with the message type
CLOSE_POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1
CLOSE_MESSAGE_TOO_BIG = 1009  # RFC 6455 §7.4.1
CLOSE_INTERNAL_ERROR = 1011  # RFC 6455 §7.4.1
CLOSE_TRY_AGAIN_LATER = 1013  # IANA WebSocket Close Code Number Registry


class WebSocketError(GatewayError):
    """An error that is answered with a WebSocket ``error`` message (and a close when fatal)."""

    code: ClassVar[str] = "internal_error"
    close_code: ClassVar[int | None] = CLOSE_INTERNAL_ERROR

    @property
    def message(self) -> str:
        """The human-readable text sent in the ``error`` message's ``message`` field."""
        return str(self)

    @property
    def is_fatal(self) -> bool:
        """True when the connection closes after this error."""
        return self.close_code is not None


class WebSocketRemoteError(WebSocketError, RemoteProtocolError):
    """The client broke the protocol."""

    code: ClassVar[str] = "remote_protocol_error"
    close_code: ClassVar[int | None] = CLOSE_POLICY_VIOLATION


class WebSocketLocalError(WebSocketError, LocalProtocolError):
    """xlgate misused the Connection (a command in the wrong state or with bad values): a bug of ours.

    Raised, never received; if it reaches ``send_error`` it goes out as a generic ``internal_error``.
    """

    code: ClassVar[str] = "internal_error"
    close_code: ClassVar[int | None] = CLOSE_INTERNAL_ERROR


class InternalError(WebSocketError):
    """Something unexpected failed inside the gateway; the text never carries internals."""

    code: ClassVar[str] = "internal_error"
    close_code: ClassVar[int | None] = CLOSE_INTERNAL_ERROR


class WebSocketOverloaded(WebSocketError, OverloadedError):
    """The gateway ran out of capacity after the handshake (before it, the transport answers HTTP 503)."""

    code: ClassVar[str] = "overloaded"
    close_code: ClassVar[int | None] = OverloadedError.ws_close_code


class InvalidJson(WebSocketRemoteError):
    """A text message is not valid JSON (or has duplicate keys, NaN or Infinity)."""

    code: ClassVar[str] = "invalid_json"
    close_code: ClassVar[int | None] = None


class UnknownMessage(WebSocketRemoteError):
    """A text message is not a JSON object, or its ``type`` is missing, not a string or unknown."""

    code: ClassVar[str] = "unknown_message"
    close_code: ClassVar[int | None] = None


class UnknownField(WebSocketRemoteError):
    """A message has a field the protocol does not define."""

    code: ClassVar[str] = "unknown_field"
    close_code: ClassVar[int | None] = None


class InvalidValue(WebSocketRemoteError):
    """A field has the wrong JSON type or is out of range."""

    code: ClassVar[str] = "invalid_value"
    close_code: ClassVar[int | None] = None


class UnsupportedEncoding(WebSocketRemoteError):
    """A well-typed audio format (encoding, sample rate, channels) the gateway cannot take."""

    code: ClassVar[str] = "unsupported_encoding"
    close_code: ClassVar[int | None] = None


class ControlBeforeStart(WebSocketRemoteError):
    """``stop``, ``finalize``, ``pause`` or ``resume`` before a ``start`` was accepted."""

    code: ClassVar[str] = "control_before_start"
    close_code: ClassVar[int | None] = None


class AudioBeforeStart(WebSocketRemoteError):
    """A binary frame before a ``start`` was accepted; the frame is discarded."""

    code: ClassVar[str] = "audio_before_start"
    close_code: ClassVar[int | None] = None


class InvalidAudioLength(WebSocketRemoteError):
    """A binary frame's length is not a whole number of sample frames; the frame is discarded."""

    code: ClassVar[str] = "invalid_audio_length"
    close_code: ClassVar[int | None] = None


class StreamStopped(WebSocketRemoteError):
    """A message arrived after ``stop``; it is discarded while the remaining finals go out."""

    code: ClassVar[str] = "stream_stopped"
    close_code: ClassVar[int | None] = None


class DuplicateStart(WebSocketRemoteError):
    """A second ``start`` on a streaming connection: the audio that follows is of unknown format."""

    code: ClassVar[str] = "duplicate_start"
    close_code: ClassVar[int | None] = CLOSE_POLICY_VIOLATION


class FrameTooLarge(WebSocketRemoteError):
    """A binary frame longer than the Connection's ``max_frame_bytes``."""

    code: ClassVar[str] = "frame_too_large"
    close_code: ClassVar[int | None] = CLOSE_MESSAGE_TOO_BIG
    limit: ClassVar[str | None] = "ws_frame_bytes"


class MessageTooLarge(WebSocketRemoteError):
    """A text message longer (in UTF-8 bytes) than the Connection's ``max_text_bytes``."""

    code: ClassVar[str] = "message_too_large"
    close_code: ClassVar[int | None] = CLOSE_MESSAGE_TOO_BIG
    limit: ClassVar[str | None] = "ws_frame_bytes"
