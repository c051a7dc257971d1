"""Values and events of the native WebSocket protocol v1.

Client side: the :class:`Connection` turns received messages into the events below (nouns for what
happened). Server side: the session hands :class:`ResultMessage` values to the Connection's ``send_*``
commands. :data:`ServerMessage` is what a client (tests, load generator) decodes from the server's text.

Times on the wire are integer milliseconds from the first audio sample of the stream, per channel.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from protocols.websocket.errors import WebSocketError

__all__ = [
    "Alternative",
    "AudioDiscarded",
    "AudioEncoding",
    "AudioReceived",
    "ConnectionLost",
    "DecodingMethod",
    "DecodingParams",
    "End",
    "EndpointingParams",
    "ErrorReply",
    "Event",
    "FinalizeRequested",
    "Hotword",
    "KeepaliveReceived",
    "PauseRequested",
    "ProtocolViolation",
    "Ready",
    "Result",
    "ResultMessage",
    "ResumeRequested",
    "ServerMessage",
    "SpeechEnded",
    "SpeechStarted",
    "StopRequested",
    "StreamConfig",
    "StreamStartRequested",
    "Word",
]


class AudioEncoding(enum.StrEnum):
    """Wire encodings of binary audio frames."""

    PCM_S16LE = "pcm_s16le"  # 16-bit signed little-endian linear PCM
    MULAW = "mulaw"  # G.711 µ-law, 8 bits per sample
    ALAW = "alaw"  # G.711 A-law, 8 bits per sample

    @property
    def bytes_per_sample(self) -> int:
        """Bytes one sample of one channel takes on the wire."""
        return 2 if self is AudioEncoding.PCM_S16LE else 1


class DecodingMethod(enum.StrEnum):
    """Search the recogniser runs for this stream."""

    GREEDY = "greedy"
    BEAM = "beam"


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointingParams:
    """When the recogniser closes an utterance and emits its final.

    Defaults follow sherpa-onnx's endpoint rules: 1 s of trailing silence after speech, and a forced final
    after 20 s of continuous speech.
    """

    enabled: bool = True
    silence_ms: int = 1000
    max_utterance_ms: int = 20000


@dataclass(frozen=True, slots=True)
class Hotword:
    """A phrase whose score the decoder raises by ``boost``."""

    phrase: str
    boost: float = 2.0


@dataclass(frozen=True, slots=True)
class DecodingParams:
    """Decoder settings; ``beam_size`` matters only for :attr:`DecodingMethod.BEAM`."""

    method: DecodingMethod = DecodingMethod.GREEDY
    beam_size: int = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamConfig:
    """Everything a ``start`` message sets; each field has the default a ``start`` without it gets."""

    sample_rate_hz: int = 8000
    encoding: AudioEncoding = AudioEncoding.PCM_S16LE
    channels: int = 1
    interim_results: bool = True
    endpointing: EndpointingParams = field(default_factory=EndpointingParams)
    hotwords: tuple[Hotword, ...] = ()
    decoding: DecodingParams = field(default_factory=DecodingParams)
    word_timings: bool = True
    client_ref: str | None = None

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of one sample frame (one sample of every channel) on the wire."""
        return self.encoding.bytes_per_sample * self.channels


# ---------------------------------------------------------------------------------------------------------
# Events the Connection returns from receive_text / receive_bytes.


@dataclass(frozen=True, slots=True)
class StreamStartRequested:
    """The client sent a valid ``start``; the session should open a stream and call ``send_ready``."""

    config: StreamConfig


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class AudioReceived:
    """Audio to recognise, decoded from the wire encoding.

    ``channels`` holds one 1-D int16 array per channel, all of one length (C arrays of shape (N,)).
    ``start_sample`` is the index, per channel, of the first sample in the stream's timeline, which counts
    every sample the client sent after ``start`` (audio discarded while paused included).
    """

    channels: tuple[npt.NDArray[np.int16], ...]
    start_sample: int

    @property
    def num_samples(self) -> int:
        """Samples per channel in this frame."""
        return len(self.channels[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioDiscarded:
    """Audio that arrived while paused: not decoded, not recognised, but it advances the timeline."""

    num_samples: int
    start_sample: int


@dataclass(frozen=True, slots=True)
class StopRequested:
    """End of audio: send the remaining finals, then ``send_end``."""


@dataclass(frozen=True, slots=True)
class FinalizeRequested:
    """Close the current utterance now and send its final; the stream goes on."""


@dataclass(frozen=True, slots=True)
class PauseRequested:
    """Audio from now on is discarded (as :class:`AudioDiscarded`); the model's memory is kept."""


@dataclass(frozen=True, slots=True)
class ResumeRequested:
    """Audio from now on is recognised again."""


@dataclass(frozen=True, slots=True)
class KeepaliveReceived:
    """The client is alive; nothing to do but reset an idle timer."""


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The client broke the protocol: send ``send_error(error)``; close if ``error.close_code`` is set."""

    error: WebSocketError


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The client went away (closed without ``stop``, reset the connection, or stopped answering pings):
    nothing more can be sent. A hang-up, not an error."""


Event = (
    StreamStartRequested
    | AudioReceived
    | AudioDiscarded
    | StopRequested
    | FinalizeRequested
    | PauseRequested
    | ResumeRequested
    | KeepaliveReceived
    | ProtocolViolation
    | ConnectionLost
)


# ---------------------------------------------------------------------------------------------------------
# Server messages: inputs of the send_* commands, and what a client decodes.


@dataclass(frozen=True, slots=True, kw_only=True)
class Word:
    """One word of a final with its time span and confidence in [0, 1]."""

    word: str
    start_ms: int
    end_ms: int
    confidence: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Alternative:
    """A runner-up transcript of a final with its confidence in [0, 1]."""

    text: str
    confidence: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultMessage:
    """A partial or final transcript of one utterance on one channel.

    ``start_ms``/``end_ms`` span the utterance; ``audio_end_ms`` is how much of the channel's audio the
    recogniser had consumed when it produced this result (``end_ms <= audio_end_ms``). ``confidence``,
    ``words`` and ``alternatives`` are for finals only; ``stable_words`` for partials only: how many words
    at the start of ``text`` are settled (the changing tail follows them).
    """

    is_final: bool
    channel: int
    text: str
    start_ms: int
    end_ms: int
    audio_end_ms: int
    confidence: float | None = None
    words: tuple[Word, ...] = ()
    alternatives: tuple[Alternative, ...] = ()
    stable_words: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    """The server accepted ``start``."""

    session_id: str
    sample_rate_hz: int
    encoding: AudioEncoding
    channels: int
    max_frame_bytes: int
    client_ref: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """A result message as sent: the transcript and its sequence number on the connection."""

    result: ResultMessage
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechStarted:
    """Voice activity began on ``channel`` at ``start_ms``."""

    channel: int
    start_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechEnded:
    """Voice activity ended on ``channel`` at ``end_ms``."""

    channel: int
    end_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReply:
    """An ``error`` message as a client sees it."""

    code: str
    message: str
    fatal: bool
    retry_after_ms: int | None = None


@dataclass(frozen=True, slots=True)
class End:
    """All results are out; the server closes with 1000 next."""


ServerMessage = Ready | Result | SpeechStarted | SpeechEnded | ErrorReply | End
