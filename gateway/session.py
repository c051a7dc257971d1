"""The session API's domain types: what every protocol converts its wire messages into.

A protocol adapter (WebSocket today; MRCPv2, gRPC and the telephony dialects next) turns its wire message
into a :class:`StreamSettings` and nothing else, opens one stream per audio channel with
:meth:`gateway.engine.Engine.open_streams`, feeds it PCM, reads its :data:`StreamEvent` s, and ends it with
an :class:`Outcome`. Defaults are declared here once: the configuration takes the server's defaults from
these, and a protocol's documented wire defaults are checked against them by the tests. Times are seconds
(``*_s``) here; milliseconds exist only at wire and configuration boundaries. See docs/session-api.md.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from streaming_model.decoding import DecodingMethod, Hypothesis

__all__ = [
    "DEFAULT_HOTWORD_BOOST",
    "DecodingMethod",
    "DecodingSettings",
    "EndpointingSettings",
    "FinalSource",
    "Hotword",
    "Outcome",
    "ResultEvent",
    "SpeechEnded",
    "SpeechStarted",
    "StreamEnded",
    "StreamEvent",
    "StreamSettings",
    "merge_hotwords",
]

DEFAULT_HOTWORD_BOOST: Final = 2.0


class Outcome(enum.StrEnum):
    """How a stream (or a session) ended: the closed set of the ``outcome`` label of
    ``xlgate_streams_ended_total``, and what a session's last log line says."""

    COMPLETED = "completed"  # the client said stop (or the file ended): every final went out
    CLIENT_CLOSED = "client_closed"  # the client went away without stop: a hang-up, not an error
    IDLE_TIMEOUT = "idle_timeout"  # the client sent nothing for the idle timeout: finalised and closed
    DRAINED = "drained"  # the server shut down: finalised and closed
    ERROR = "error"  # a fatal protocol error of the client's, or a failure of ours
    ABORTED = "aborted"  # dropped by the engine's owner (engine closed) without finals
    REJECTED = "rejected"  # a session refused at admission (no stream was opened)


class Hotword(NamedTuple):
    """A phrase the decoder should favour, and how much (added to its log-probability score)."""

    phrase: str
    boost: float = DEFAULT_HOTWORD_BOOST


def merge_hotwords(*lists: Iterable[Hotword]) -> tuple[Hotword, ...]:
    """Concatenate, keeping first positions; a later duplicate phrase replaces the earlier boost (so a
    stream's own list, given last, overrides the server's defaults)."""
    merged: dict[str, float] = {}
    for hotwords in lists:
        for hotword in hotwords:
            merged[hotword.phrase] = hotword.boost
    return tuple(Hotword(phrase, boost) for phrase, boost in merged.items())


def _require(ok: bool, what: str, expected: str, actual: object) -> None:
    if not ok:
        raise ValueError(f"{what}: expected {expected}, got {actual!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointingSettings:
    """When an utterance ends by itself (research note §4, WeNet/sherpa-onnx rules 2 and 3): after
    ``silence_s`` of trailing silence following speech, or after ``max_utterance_s`` of speech."""

    enabled: bool = True
    silence_s: float = 1.0
    max_utterance_s: float = 20.0

    def __post_init__(self) -> None:
        _require(self.silence_s > 0, "silence_s", "> 0", self.silence_s)
        _require(self.max_utterance_s > 0, "max_utterance_s", "> 0", self.max_utterance_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodingSettings:
    """The search a stream's decoder runs. ``beam_size`` matters for :attr:`DecodingMethod.BEAM` only;
    hotwords make greedy decoding run a small beam without the LM (they need a search to act on).
    ``phrases``: each final carries every phrase's confidence, scored against the utterance's CTC
    posteriors (``Hypothesis.phrase_scores``), for grammar-driven protocols (MRCP's SRGS grammars)."""

    method: DecodingMethod = DecodingMethod.GREEDY
    beam_size: int = 8
    hotwords: tuple[Hotword, ...] = ()
    phrases: tuple[str, ...] = ()  # a closed set (a grammar's sentences) every final is scored against

    def __post_init__(self) -> None:
        # A plain string ("beam") becomes the enum and (phrase, boost) pairs become Hotwords; anything else
        # is refused here, not inside the model process.
        object.__setattr__(self, "method", DecodingMethod(self.method))
        object.__setattr__(self, "hotwords", tuple(Hotword(*h) for h in self.hotwords))
        object.__setattr__(self, "phrases", tuple(str(p) for p in self.phrases))
        _require(self.beam_size >= 1, "beam_size", ">= 1", self.beam_size)
        for hotword in self.hotwords:
            _require(bool(hotword.phrase.strip()), "hotword phrase", "a non-empty phrase", hotword.phrase)
            _require(math.isfinite(hotword.boost) and hotword.boost > 0, "hotword boost",
                     "a positive finite number", hotword.boost)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSettings:
    """Everything that shapes one stream's recognition, whatever protocol asked for it.

    ``sample_rate_hz`` is the rate of the PCM fed to :meth:`gateway.engine.Stream.feed` (resampled to the
    model's rate inside the stream). ``interim_results`` False: finals only.
    """

    sample_rate_hz: int = 8000
    interim_results: bool = True
    endpointing: EndpointingSettings = field(default_factory=EndpointingSettings)
    decoding: DecodingSettings = field(default_factory=DecodingSettings)

    def __post_init__(self) -> None:
        _require(self.sample_rate_hz > 0, "sample_rate_hz", "> 0", self.sample_rate_hz)


# ---------------------------------------------------------------------------------------------------------
# What a stream produces (Stream.events()); a protocol converts these into its wire messages.


@dataclass(frozen=True, slots=True)
class ResultEvent:
    """A partial or final result. ``arrival_s`` is when the last audio it covers arrived (monotonic)."""

    is_final: bool
    hypothesis: Hypothesis
    audio_end_s: float
    arrival_s: float
    seq: int


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Voice activity began at ``start_s`` on the stream's own timeline."""

    start_s: float


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """Voice activity ended at ``end_s`` on the stream's own timeline."""

    end_s: float


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The stream's last event."""

    outcome: Outcome


StreamEvent = ResultEvent | SpeechStarted | SpeechEnded | StreamEnded


class FinalSource(enum.StrEnum):
    """Where a second-pass final's text came from (``final_pass = whisper``; the label of
    ``xlgate_final_pass_total``)."""

    SECOND_PASS = "second_pass"  # Whisper's text, aligned to the CTC posteriors
    SHED_PENDING = "shed_pending"  # CTC text: max_pending second passes were already queued or running
    SHED_WAIT = "shed_wait"  # CTC text: too little of its budget was left when the worker reached it
    SHED_LATE = "shed_late"  # CTC text: its budget ran out while the second pass ran
    TOO_LONG = "too_long"  # CTC text: the utterance outgrew Whisper's 30 s window
    NO_WORDS = "no_words"  # CTC text: the second pass found no words
    UNBACKED = "unbacked"  # CTC text: Whisper's text is far longer than what the CTC heard (a hallucination)
    FAILED = "failed"  # CTC text: the second pass raised (logged)
