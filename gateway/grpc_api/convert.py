"""The edge of the gRPC API: its messages in, session types out, and the engine's events back as messages.

A ``RecognitionConfig`` becomes a :class:`gateway.session.StreamSettings` here and nowhere else (plus the
few facts of the audio's framing the servicer needs to decode it: encoding, channels, mix-down); a
:class:`gateway.session.ResultEvent` becomes a ``StreamingRecognitionResult`` here. No I/O: the servicer
(:mod:`gateway.grpc_api.servicer`) is the transport. Times are seconds inside, ``Duration`` at
millisecond precision on the wire.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import ClassVar, Final

import numpy as np
import numpy.typing as npt
from google.protobuf.duration_pb2 import Duration

from gateway.grpc_api import asr_pb2 as pb
from gateway.session import (
    DEFAULT_HOTWORD_BOOST,
    DecodingMethod,
    DecodingSettings,
    EndpointingSettings,
    Hotword,
    ResultEvent,
    SpeechEnded,
    SpeechStarted,
    StreamSettings,
    merge_hotwords,
)
from protocols.audio.errors import AudioError
from protocols.audio.pcm import decode_audio
from protocols.errors import RemoteProtocolError

__all__ = [
    "SAMPLE_RATES_HZ",
    "AudioFormat",
    "InvalidRequestError",
    "ResultOptions",
    "decode_chunk",
    "decode_recording",
    "duration",
    "recognition_result",
    "recognition_settings",
    "seconds",
    "speech_event",
    "streaming_result",
]

SAMPLE_RATES_HZ: Final = (8000, 16000)
MAX_CHANNELS: Final = 8
MAX_ALTERNATIVES: Final = 10
MAX_BEAM_SIZE: Final = 256
MAX_HOTWORDS: Final = 1000
MAX_HOTWORD_CHARS: Final = 200
# A recording with a header may be at any common rate (it is resampled to the model's inside the stream).
MIN_FILE_RATE_HZ: Final = 8000
MAX_FILE_RATE_HZ: Final = 48000

_WIRE_ENCODINGS: Final = {
    pb.AUDIO_ENCODING_LINEAR16: "pcm_s16le",
    pb.AUDIO_ENCODING_MULAW: "mulaw",
    pb.AUDIO_ENCODING_ALAW: "alaw",
}
_METHODS: Final = {pb.DECODING_METHOD_GREEDY: DecodingMethod.GREEDY, pb.DECODING_METHOD_BEAM: DecodingMethod.BEAM}


class InvalidRequestError(RemoteProtocolError):
    """The client's request is malformed: a bad configuration, audio before it, or audio that does not
    decode. Answered with gRPC ``INVALID_ARGUMENT``; the message is safe to show the client."""

    code: ClassVar[str] = "invalid_request"
    grpc_status: ClassVar[str] = "INVALID_ARGUMENT"


def _require(ok: bool, what: str, expected: str, actual: object) -> None:
    if not ok:
        raise InvalidRequestError(f"{what}: expected {expected}, got {actual!r}")


# ------------------------------------------------------------------------------------------- durations


def duration(seconds_: float) -> Duration:
    """``seconds_`` as a Duration, rounded to the millisecond (negative values become 0)."""
    ms = max(0, round(seconds_ * 1000))
    return Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def seconds(value: Duration) -> float:
    """A Duration in seconds."""
    return float(value.seconds) + float(value.nanos) / 1e9


# ----------------------------------------------------------------------------------------------- input


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioFormat:
    """How the request's audio bytes are framed: what the servicer needs to decode them.

    ``encoding`` is a :data:`protocols.audio.pcm.WIRE_ENCODINGS` name, or ``None`` for a recording with a
    header. ``streams`` is how many streams the audio feeds: ``channels`` when each channel is recognised
    separately, else 1 (the channels are mixed down).
    """

    encoding: str | None
    channels: int
    separate_channels: bool

    @property
    def streams(self) -> int:
        return self.channels if self.separate_channels else 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultOptions:
    """What a result message includes, from the request's config."""

    word_time_offsets: bool
    word_confidence: bool


def recognition_settings(config: pb.RecognitionConfig, defaults: StreamSettings, *, interim_results: bool,
                         header: bool = False) -> tuple[StreamSettings, AudioFormat, ResultOptions]:
    """A ``RecognitionConfig``'s settings for the session API: the one conversion of this protocol.

    Args:
        config: the client's configuration.
        defaults: the server's values for what the config leaves out (its hotwords are merged first).
        interim_results: whether partial results are wanted.
        header: the audio is a recording with a header (Recognize with no encoding): its sample rate and
            channel count are taken from that and the config's are ignored.

    Raises:
        InvalidRequestError: a value is missing or out of range; the message names expected and actual.
    """
    if header:
        encoding = None
        rate_hz, channels = defaults.sample_rate_hz, 1  # replaced by the caller from the file's header
    else:
        _require(config.encoding in _WIRE_ENCODINGS, "config.encoding", "LINEAR16, MULAW or ALAW",
                 pb.AudioEncoding.Name(config.encoding) if config.encoding in pb.AudioEncoding.values()
                 else config.encoding)
        encoding = _WIRE_ENCODINGS[config.encoding]
        _require(config.sample_rate_hertz in SAMPLE_RATES_HZ, "config.sample_rate_hertz", "8000 or 16000",
                 config.sample_rate_hertz)
        rate_hz = config.sample_rate_hertz
        channels = config.audio_channel_count or 1
        _require(1 <= channels <= MAX_CHANNELS, "config.audio_channel_count", f"0 to {MAX_CHANNELS}",
                 config.audio_channel_count)
    _require(0 <= config.max_alternatives <= MAX_ALTERNATIVES, "config.max_alternatives",
             f"0 to {MAX_ALTERNATIVES}", config.max_alternatives)
    audio = AudioFormat(encoding=encoding, channels=channels,
                        separate_channels=config.enable_separate_recognition_per_channel)
    options = ResultOptions(word_time_offsets=config.enable_word_time_offsets,
                            word_confidence=config.enable_word_confidence)
    settings = StreamSettings(sample_rate_hz=rate_hz, interim_results=interim_results,
                              endpointing=_endpointing(config, defaults.endpointing),
                              decoding=_decoding(config, defaults.decoding))
    return settings, audio, options


def _endpointing(config: pb.RecognitionConfig, defaults: EndpointingSettings) -> EndpointingSettings:
    if not config.HasField("endpointing"):
        return defaults
    ep = config.endpointing
    silence_s = seconds(ep.trailing_silence) if ep.HasField("trailing_silence") else defaults.silence_s
    utterance_s = seconds(ep.max_utterance) if ep.HasField("max_utterance") else defaults.max_utterance_s
    _require(silence_s > 0, "config.endpointing.trailing_silence", "a positive duration", f"{silence_s} s")
    _require(utterance_s > 0, "config.endpointing.max_utterance", "a positive duration", f"{utterance_s} s")
    _require(silence_s < utterance_s, "config.endpointing.trailing_silence",
             f"less than max_utterance ({utterance_s} s)", f"{silence_s} s")
    return EndpointingSettings(enabled=not ep.disabled, silence_s=silence_s, max_utterance_s=utterance_s)


def _decoding(config: pb.RecognitionConfig, defaults: DecodingSettings) -> DecodingSettings:
    if config.decoding_method == pb.DECODING_METHOD_UNSPECIFIED:
        method = defaults.method
    else:
        _require(config.decoding_method in _METHODS, "config.decoding_method", "GREEDY or BEAM",
                 config.decoding_method)
        method = _METHODS[config.decoding_method]
    _require(0 <= config.beam_size <= MAX_BEAM_SIZE, "config.beam_size", f"0 to {MAX_BEAM_SIZE}",
             config.beam_size)
    _require(len(config.hotwords) <= MAX_HOTWORDS, "config.hotwords", f"at most {MAX_HOTWORDS} phrases",
             len(config.hotwords))
    own = []
    for i, hotword in enumerate(config.hotwords):
        _require(bool(hotword.phrase.strip()) and len(hotword.phrase) <= MAX_HOTWORD_CHARS,
                 f"config.hotwords[{i}].phrase", f"1 to {MAX_HOTWORD_CHARS} characters, not blank",
                 hotword.phrase)
        _require(math.isfinite(hotword.boost) and hotword.boost >= 0, f"config.hotwords[{i}].boost",
                 "a finite number >= 0 (0 = the default)", hotword.boost)
        own.append(Hotword(hotword.phrase.strip(), hotword.boost or DEFAULT_HOTWORD_BOOST))
    return DecodingSettings(method=method, beam_size=config.beam_size or defaults.beam_size,
                            hotwords=merge_hotwords(defaults.hotwords, own))


def decode_chunk(data: bytes, audio: AudioFormat) -> list[npt.NDArray[np.int16]]:
    """One request's audio as int16 PCM, one array per stream (channels mixed down unless separate).

    Raises:
        InvalidRequestError: the bytes are not a whole number of sample frames.
    """
    assert audio.encoding is not None, "a recording with a header is decoded by decode_recording"
    try:
        channels = decode_audio(data, encoding=audio.encoding, channels=audio.channels)
    except AudioError as exc:
        raise InvalidRequestError(f"audio_content: {exc}") from None
    return channels if audio.separate_channels else [_mix_down(channels)]


def _mix_down(channels: list[npt.NDArray[np.int16]]) -> npt.NDArray[np.int16]:
    if len(channels) == 1:
        return channels[0]
    mixed: npt.NDArray[np.float32] = np.stack(channels).astype(np.float32).mean(axis=0)  # (C, N) -> (N,)
    return np.rint(mixed).astype(np.int16)


def decode_recording(data: bytes, separate_channels: bool) -> tuple[int, list[npt.NDArray[np.int16]]]:
    """A recording with a header (WAV, FLAC, ...): its sample rate and its PCM, one array per stream.

    Raises:
        InvalidRequestError: the bytes are not a recording libsndfile reads, or its rate or channel count
            is out of range.
    """
    import soundfile

    try:
        samples, rate_hz = soundfile.read(io.BytesIO(data), dtype="int16", always_2d=True)  # (N, C)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise InvalidRequestError(f"audio_content: not a recording with a header that can be read ({exc}); "
                                  "set config.encoding for raw audio") from None
    _require(MIN_FILE_RATE_HZ <= rate_hz <= MAX_FILE_RATE_HZ, "the recording's sample rate",
             f"{MIN_FILE_RATE_HZ} to {MAX_FILE_RATE_HZ} Hz", rate_hz)
    _require(1 <= samples.shape[1] <= MAX_CHANNELS, "the recording's channel count", f"1 to {MAX_CHANNELS}",
             samples.shape[1])
    channels = [np.ascontiguousarray(samples[:, c]) for c in range(samples.shape[1])]
    return int(rate_hz), channels if separate_channels else [_mix_down(channels)]


# ---------------------------------------------------------------------------------------------- output


def _alternative(event: ResultEvent, options: ResultOptions) -> pb.SpeechRecognitionAlternative:
    hyp = event.hypothesis
    alternative = pb.SpeechRecognitionAlternative(transcript=hyp.text)
    if not event.is_final:
        return alternative
    alternative.confidence = min(1.0, max(0.0, hyp.confidence))
    if options.word_time_offsets or options.word_confidence:
        for w in hyp.words:
            word = alternative.words.add(word=w.text)
            if options.word_time_offsets:
                word.start_offset.CopyFrom(duration(min(w.start_s, event.audio_end_s)))
                word.end_offset.CopyFrom(duration(min(w.end_s, event.audio_end_s)))
            if options.word_confidence:
                word.confidence = min(1.0, max(0.0, w.confidence))
    return alternative


def _span(event: ResultEvent) -> tuple[float, float]:
    end_s = min(event.hypothesis.end_s, event.audio_end_s)
    return min(event.hypothesis.start_s, end_s), end_s


def streaming_result(event: ResultEvent, *, channel: int, options: ResultOptions,
                     latency_s: float) -> pb.StreamingRecognizeResponse:
    """A partial or final result as the message that carries it."""
    num_words = len(event.hypothesis.text.split())
    stable = num_words if event.is_final else min(event.hypothesis.stable_words, num_words)
    start_s, end_s = _span(event)
    result = pb.StreamingRecognitionResult(
        alternatives=[_alternative(event, options)], is_final=event.is_final,
        stability=1.0 if event.is_final else (stable / num_words if num_words else 0.0),
        stable_word_count=stable, channel=channel, start_offset=duration(start_s), end_offset=duration(end_s),
        audio_processed=duration(event.audio_end_s), processing_latency=duration(latency_s))
    return pb.StreamingRecognizeResponse(result=result)


def recognition_result(event: ResultEvent, *, channel: int, options: ResultOptions) -> pb.SpeechRecognitionResult:
    """A final result of a whole recording."""
    start_s, end_s = _span(event)
    return pb.SpeechRecognitionResult(alternatives=[_alternative(event, options)], channel=channel,
                                      start_offset=duration(start_s), end_offset=duration(end_s))


def speech_event(event: SpeechStarted | SpeechEnded, *, channel: int) -> pb.StreamingRecognizeResponse:
    """Voice activity as the message that carries it."""
    if isinstance(event, SpeechStarted):
        kind, at_s = pb.SPEECH_EVENT_TYPE_SPEECH_STARTED, event.start_s
    else:
        kind, at_s = pb.SPEECH_EVENT_TYPE_SPEECH_ENDED, event.end_s
    return pb.StreamingRecognizeResponse(
        speech_event=pb.SpeechEvent(type=kind, channel=channel, offset=duration(at_s)))
