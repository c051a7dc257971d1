"""Parse and serialise the JSON messages and binary audio of the native WebSocket protocol v1. Pure.

Parsing is strict: unknown fields, wrong JSON types, out-of-range values, duplicate keys, NaN and Infinity
are errors (the :mod:`protocols.websocket.errors` classes) whose text names what was expected and what came.
JSON has one number type, so an integer field takes ``8000`` and ``8000.0`` alike (as JSON Schema's
``integer`` does) but never ``true``. The schemas in ``schemas/`` describe the same rules; the tests hold
the two together.

Audio layout: channels interleaved sample by sample; C = channels, N = samples per channel.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Final

import numpy as np
import numpy.typing as npt

from protocols import audio
from protocols.audio.errors import AudioFormatError
from protocols.websocket.errors import (
    InvalidAudioLength,
    InvalidJson,
    InvalidValue,
    UnknownField,
    UnknownMessage,
    UnsupportedEncoding,
)
from protocols.websocket.events import (
    Alternative,
    AudioEncoding,
    DecodingMethod,
    DecodingParams,
    End,
    EndpointingParams,
    ErrorReply,
    Hotword,
    Ready,
    Result,
    ResultMessage,
    ServerMessage,
    SpeechEnded,
    SpeechStarted,
    StreamConfig,
    Word,
)

__all__ = [
    "CONTROL_MESSAGE_TYPES",
    "MAX_CLIENT_REF_CHARS",
    "MAX_HOTWORDS",
    "MAX_HOTWORD_CHARS",
    "SUPPORTED_SAMPLE_RATES_HZ",
    "JsonObject",
    "check_audio_length",
    "check_no_fields",
    "decode_audio",
    "decode_server_message",
    "encode_control",
    "encode_server_message",
    "encode_start",
    "message_type",
    "parse_json_object",
    "parse_start",
]

JsonObject = dict[str, object]

CONTROL_MESSAGE_TYPES: Final = frozenset({"stop", "finalize", "pause", "resume", "keepalive"})
CLIENT_MESSAGE_TYPES: Final = CONTROL_MESSAGE_TYPES | {"start"}
SUPPORTED_SAMPLE_RATES_HZ: Final = (8000, 16000)
SUPPORTED_CHANNELS: Final = (1, 2)
NARROWBAND_ONLY: Final = frozenset({AudioEncoding.MULAW, AudioEncoding.ALAW})  # G.711 is 8 kHz by definition
MIN_SILENCE_MS, MAX_SILENCE_MS = 100, 10_000
MIN_UTTERANCE_MS, MAX_UTTERANCE_MS = 1_000, 60_000
MIN_BEAM_SIZE, MAX_BEAM_SIZE = 1, 64
MAX_HOTWORDS: Final = 1000
MAX_HOTWORD_CHARS: Final = 100
MAX_BOOST: Final = 10.0
MAX_CLIENT_REF_CHARS: Final = 256
_ENCODINGS: Final = frozenset(encoding.value for encoding in AudioEncoding)
_DECODING_METHODS: Final = frozenset(method.value for method in DecodingMethod)
_SHOW_CHARS = 40  # echo at most this much of a client's value in an error text

_START_FIELDS: Final = (
    "type",
    "sample_rate_hz",
    "encoding",
    "channels",
    "interim_results",
    "endpointing",
    "hotwords",
    "decoding",
    "word_timings",
    "client_ref",
)
_ENDPOINTING_FIELDS: Final = ("enabled", "silence_ms", "max_utterance_ms")
_HOTWORD_FIELDS: Final = ("phrase", "boost")
_DECODING_FIELDS: Final = ("method", "beam_size")


# ---------------------------------------------------------------------------------------------------------
# Small helpers that name expected and actual values.


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _show(value: object) -> str:
    """A short, ASCII-safe rendering of a client's value for an error text (never echoes much back)."""
    try:
        shown = json.dumps(value, ensure_ascii=True)
    except (ValueError, RecursionError):
        shown = _json_type(value)
    return shown if len(shown) <= _SHOW_CHARS else shown[: _SHOW_CHARS - 1] + "…"


def _got(value: object) -> str:
    return f"got {_json_type(value)} {_show(value)}"


def _check_fields(obj: Mapping[str, object], *, where: str, allowed: tuple[str, ...]) -> None:
    unknown = sorted(key for key in obj if key not in allowed)
    if unknown:
        name = _show(unknown[0])
        fields = ", ".join(allowed)
        raise UnknownField(f"{where}: expected only the fields {fields}; got unknown field {name}")


def _as_object(value: object, *, where: str) -> JsonObject:
    if not isinstance(value, dict):
        raise InvalidValue(f"{where}: expected an object, {_got(value)}")
    return value


def _as_bool(value: object, *, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(f"{where}: expected a boolean, {_got(value)}")
    return value


def _as_int(value: object, *, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise InvalidValue(f"{where}: expected an integer, {_got(value)}")


def _as_ranged_int(value: object, *, where: str, low: int, high: int) -> int:
    number = _as_int(value, where=where)
    if not low <= number <= high:
        raise InvalidValue(f"{where}: expected an integer in [{low}, {high}], got {_show(number)}")
    return number


def _as_number(value: object, *, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidValue(f"{where}: expected a number, {_got(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        number = math.inf
    if not math.isfinite(number):
        raise InvalidValue(f"{where}: expected a finite number, got {_show(value)}")
    return number


def _as_str(value: object, *, where: str, max_chars: int | None = None) -> str:
    if not isinstance(value, str):
        raise InvalidValue(f"{where}: expected a string, {_got(value)}")
    if max_chars is not None and len(value) > max_chars:
        raise InvalidValue(f"{where}: expected at most {max_chars} characters, got {len(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValue(f"{where}: expected valid Unicode, got a lone surrogate") from None
    return value


# ---------------------------------------------------------------------------------------------------------
# Client messages.


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> JsonObject:
    obj: JsonObject = {}
    for key, value in pairs:
        if key in obj:
            raise InvalidJson(f"duplicate key {_show(key)} in a JSON object")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> object:
    raise InvalidJson(f"expected JSON, got the non-standard number {name}")


def parse_json_object(text: str) -> JsonObject:
    """Parse one text message into a JSON object.

    Raises:
        InvalidJson: not JSON, duplicate keys, NaN/Infinity, nesting too deep or numbers too long.
        UnknownMessage: valid JSON but not an object.
    """
    try:
        value: object = json.loads(
            text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as exc:
        raise InvalidJson(
            f"expected JSON, got a syntax error at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except (ValueError, RecursionError):
        # int() digit limit (CPython's int_max_str_digits) or nesting deeper than the parser's stack.
        raise InvalidJson("expected JSON of reasonable depth and number length") from None
    if not isinstance(value, dict):
        raise UnknownMessage(f'expected a JSON object with a "type" field, {_got(value)}')
    return value


def message_type(obj: Mapping[str, object]) -> str:
    """The ``type`` of a client message.

    Raises:
        UnknownMessage: ``type`` is missing, not a string, or not a client message type.
    """
    if "type" not in obj:
        raise UnknownMessage('expected a "type" field, got none')
    kind = obj["type"]
    if not isinstance(kind, str) or kind not in CLIENT_MESSAGE_TYPES:
        expected = ", ".join(sorted(CLIENT_MESSAGE_TYPES))
        raise UnknownMessage(f"type: expected one of {expected}, {_got(kind)}")
    return kind


def check_no_fields(obj: Mapping[str, object], *, kind: str) -> None:
    """Check a control message (``stop`` and friends) carries nothing but its ``type``.

    Raises:
        UnknownField: naming the first extra field in sorted order.
    """
    _check_fields(obj, where=kind, allowed=("type",))


def _parse_endpointing(value: object, defaults: EndpointingParams) -> EndpointingParams:
    obj = _as_object(value, where="start.endpointing")
    _check_fields(obj, where="start.endpointing", allowed=_ENDPOINTING_FIELDS)
    enabled = defaults.enabled
    silence_ms = defaults.silence_ms
    max_utterance_ms = defaults.max_utterance_ms
    if "enabled" in obj:
        enabled = _as_bool(obj["enabled"], where="start.endpointing.enabled")
    if "silence_ms" in obj:
        silence_ms = _as_ranged_int(
            obj["silence_ms"], where="start.endpointing.silence_ms", low=MIN_SILENCE_MS, high=MAX_SILENCE_MS
        )
    if "max_utterance_ms" in obj:
        max_utterance_ms = _as_ranged_int(
            obj["max_utterance_ms"],
            where="start.endpointing.max_utterance_ms",
            low=MIN_UTTERANCE_MS,
            high=MAX_UTTERANCE_MS,
        )
    return EndpointingParams(enabled=enabled, silence_ms=silence_ms, max_utterance_ms=max_utterance_ms)


def _parse_hotwords(value: object) -> tuple[Hotword, ...]:
    if not isinstance(value, list):
        raise InvalidValue(f"start.hotwords: expected an array, {_got(value)}")
    if len(value) > MAX_HOTWORDS:
        raise InvalidValue(f"start.hotwords: expected at most {MAX_HOTWORDS} entries, got {len(value)}")
    hotwords = []
    for index, item in enumerate(value):
        where = f"start.hotwords[{index}]"
        obj = _as_object(item, where=where)
        _check_fields(obj, where=where, allowed=_HOTWORD_FIELDS)
        if "phrase" not in obj:
            raise InvalidValue(f"{where}.phrase: expected a string, got none")
        phrase = _as_str(obj["phrase"], where=f"{where}.phrase", max_chars=MAX_HOTWORD_CHARS)
        if not phrase or phrase.isspace():
            raise InvalidValue(f"{where}.phrase: expected a non-blank phrase, got {_show(phrase)}")
        boost = Hotword(phrase).boost
        if "boost" in obj:
            boost = _as_number(obj["boost"], where=f"{where}.boost")
            if not 0.0 < boost <= MAX_BOOST:
                raise InvalidValue(
                    f"{where}.boost: expected a number in (0, {MAX_BOOST:g}], got {_show(boost)}"
                )
        hotwords.append(Hotword(phrase, boost))
    return tuple(hotwords)


def _parse_decoding(value: object, defaults: DecodingParams) -> DecodingParams:
    obj = _as_object(value, where="start.decoding")
    _check_fields(obj, where="start.decoding", allowed=_DECODING_FIELDS)
    method = defaults.method
    beam_size = defaults.beam_size
    if "method" in obj:
        raw = obj["method"]
        if not isinstance(raw, str) or raw not in _DECODING_METHODS:
            expected = ", ".join(DecodingMethod)
            raise InvalidValue(f"start.decoding.method: expected one of {expected}, {_got(raw)}")
        method = DecodingMethod(raw)
    if "beam_size" in obj:
        beam_size = _as_ranged_int(
            obj["beam_size"], where="start.decoding.beam_size", low=MIN_BEAM_SIZE, high=MAX_BEAM_SIZE
        )
    return DecodingParams(method, beam_size)


def parse_start(obj: Mapping[str, object], defaults: StreamConfig | None = None) -> StreamConfig:
    """Validate a ``start`` message into a :class:`StreamConfig`; absent fields (also inside
    ``endpointing`` and ``decoding``) take their values from ``defaults`` (the server's configuration;
    :class:`StreamConfig`'s own defaults when None).

    Raises:
        UnknownField: a field ``start`` (or one of its objects) does not define.
        InvalidValue: a wrong JSON type or a value out of range.
        UnsupportedEncoding: a well-typed encoding, sample rate or channel count the gateway cannot take.
    """
    _check_fields(obj, where="start", allowed=_START_FIELDS)
    defaults = defaults if defaults is not None else StreamConfig()
    sample_rate_hz = defaults.sample_rate_hz
    encoding = defaults.encoding
    channels = defaults.channels
    if "sample_rate_hz" in obj:
        sample_rate_hz = _as_int(obj["sample_rate_hz"], where="start.sample_rate_hz")
        if sample_rate_hz not in SUPPORTED_SAMPLE_RATES_HZ:
            raise UnsupportedEncoding(
                f"start.sample_rate_hz: expected one of 8000, 16000, got {_show(sample_rate_hz)}"
            )
    if "encoding" in obj:
        raw = _as_str(obj["encoding"], where="start.encoding")
        if raw not in _ENCODINGS:
            expected = ", ".join(AudioEncoding)
            raise UnsupportedEncoding(f"start.encoding: expected one of {expected}, got {_show(raw)}")
        encoding = AudioEncoding(raw)
    if "channels" in obj:
        channels = _as_int(obj["channels"], where="start.channels")
        if channels not in SUPPORTED_CHANNELS:
            raise UnsupportedEncoding(f"start.channels: expected 1 or 2, got {_show(channels)}")
    if encoding in NARROWBAND_ONLY and sample_rate_hz != 8000:
        raise UnsupportedEncoding(
            f"start.sample_rate_hz: expected 8000 for {encoding}, got {sample_rate_hz} "
            "(only pcm_s16le is accepted at 16000)"
        )
    interim_results = defaults.interim_results
    if "interim_results" in obj:
        interim_results = _as_bool(obj["interim_results"], where="start.interim_results")
    endpointing = defaults.endpointing
    if "endpointing" in obj:
        endpointing = _parse_endpointing(obj["endpointing"], defaults.endpointing)
    hotwords = defaults.hotwords
    if "hotwords" in obj:
        hotwords = _parse_hotwords(obj["hotwords"])
    decoding = defaults.decoding
    if "decoding" in obj:
        decoding = _parse_decoding(obj["decoding"], defaults.decoding)
    word_timings = defaults.word_timings
    if "word_timings" in obj:
        word_timings = _as_bool(obj["word_timings"], where="start.word_timings")
    client_ref = defaults.client_ref
    if obj.get("client_ref") is not None:
        client_ref = _as_str(obj["client_ref"], where="start.client_ref", max_chars=MAX_CLIENT_REF_CHARS)
    return StreamConfig(
        sample_rate_hz=sample_rate_hz,
        encoding=encoding,
        channels=channels,
        interim_results=interim_results,
        endpointing=endpointing,
        hotwords=hotwords,
        decoding=decoding,
        word_timings=word_timings,
        client_ref=client_ref,
    )


def _dumps(obj: Mapping[str, object]) -> str:
    # ensure_ascii=False keeps non-English transcripts compact; every str we emit is valid Unicode
    # (client strings are checked on the way in, echoed client values go through _show).
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_start(config: StreamConfig) -> str:
    """Serialise a ``start`` message carrying every field of ``config`` (the client side)."""
    return _dumps(
        {
            "type": "start",
            "sample_rate_hz": config.sample_rate_hz,
            "encoding": str(config.encoding),
            "channels": config.channels,
            "interim_results": config.interim_results,
            "endpointing": {
                "enabled": config.endpointing.enabled,
                "silence_ms": config.endpointing.silence_ms,
                "max_utterance_ms": config.endpointing.max_utterance_ms,
            },
            "hotwords": [{"phrase": hotword.phrase, "boost": hotword.boost} for hotword in config.hotwords],
            "decoding": {"method": str(config.decoding.method), "beam_size": config.decoding.beam_size},
            "word_timings": config.word_timings,
            "client_ref": config.client_ref,
        }
    )


def encode_control(kind: str) -> str:
    """Serialise a control message (``stop``, ``finalize``, ``pause``, ``resume``, ``keepalive``)."""
    if kind not in CONTROL_MESSAGE_TYPES:
        raise ValueError(f"expected one of {', '.join(sorted(CONTROL_MESSAGE_TYPES))}, got {kind!r}")
    return _dumps({"type": kind})


# ---------------------------------------------------------------------------------------------------------
# Binary audio.


def check_audio_length(num_bytes: int, config: StreamConfig) -> int:
    """Check a binary frame holds whole sample frames and return its samples per channel.

    Raises:
        InvalidAudioLength: an odd byte count for 16-bit audio, or not a multiple of the frame size.
    """
    if config.encoding is AudioEncoding.PCM_S16LE and num_bytes % 2:
        raise InvalidAudioLength(
            f"expected an even number of bytes for 16-bit {config.encoding}, got {num_bytes}"
        )
    if num_bytes % config.bytes_per_frame:
        raise InvalidAudioLength(
            f"expected a multiple of {config.bytes_per_frame} bytes ({config.channels} interleaved channels "
            f"of {config.encoding}), got {num_bytes}"
        )
    return num_bytes // config.bytes_per_frame


def decode_audio(data: bytes, config: StreamConfig) -> tuple[npt.NDArray[np.int16], ...]:
    """Decode one binary frame into one contiguous int16 array per channel (C arrays of shape (N,)).

    Raises:
        InvalidAudioLength: the frame is not a whole number of sample frames (the caller normally checks
            first with :func:`check_audio_length`).
    """
    try:
        channels = audio.decode_audio(data, encoding=config.encoding.value, channels=config.channels)
    except AudioFormatError as exc:
        raise InvalidAudioLength(str(exc)) from None
    return tuple(channels)


# ---------------------------------------------------------------------------------------------------------
# Server messages.


def _encode_result(result: Result) -> JsonObject:
    message = result.result
    obj: JsonObject = {
        "type": "final" if message.is_final else "partial",
        "channel": message.channel,
        "text": message.text,
        "start_ms": message.start_ms,
        "end_ms": message.end_ms,
        "audio_end_ms": message.audio_end_ms,
        "seq": result.seq,
    }
    if not message.is_final:
        obj["stable_words"] = message.stable_words
    if message.confidence is not None:
        obj["confidence"] = message.confidence
    if message.words:
        obj["words"] = [
            {"word": w.word, "start_ms": w.start_ms, "end_ms": w.end_ms, "confidence": w.confidence}
            for w in message.words
        ]
    if message.alternatives:
        obj["alternatives"] = [{"text": a.text, "confidence": a.confidence} for a in message.alternatives]
    return obj


def encode_server_message(message: ServerMessage) -> str:
    """Serialise one server message to the JSON text sent in a WebSocket text frame."""
    obj: JsonObject
    match message:
        case Ready():
            obj = {
                "type": "ready",
                "session_id": message.session_id,
                "sample_rate_hz": message.sample_rate_hz,
                "encoding": str(message.encoding),
                "channels": message.channels,
                "max_frame_bytes": message.max_frame_bytes,
                "client_ref": message.client_ref,
            }
        case Result():
            obj = _encode_result(message)
        case SpeechStarted():
            obj = {"type": "speech_started", "channel": message.channel, "start_ms": message.start_ms}
        case SpeechEnded():
            obj = {"type": "speech_ended", "channel": message.channel, "end_ms": message.end_ms}
        case ErrorReply():
            obj = {"type": "error", "code": message.code, "message": message.message, "fatal": message.fatal}
            if message.retry_after_ms is not None:
                obj["retry_after_ms"] = message.retry_after_ms
        case End():
            obj = {"type": "end"}
    return _dumps(obj)


def _require(obj: Mapping[str, object], name: str, *, where: str) -> object:
    if name not in obj:
        raise InvalidValue(f"{where}.{name}: required, got none")
    return obj[name]


def _decode_confidence(value: object, *, where: str) -> float:
    number = _as_number(value, where=where)
    if not 0.0 <= number <= 1.0:
        raise InvalidValue(f"{where}: expected a number in [0, 1], got {_show(number)}")
    return number


def _decode_result(obj: Mapping[str, object], kind: str) -> Result:
    is_final = kind == "final"
    base = ("type", "channel", "text", "start_ms", "end_ms", "audio_end_ms", "seq")
    _check_fields(
        obj, where=kind, allowed=base + (("confidence", "words", "alternatives") if is_final else ("stable_words",))
    )
    int_fields = ("channel", "start_ms", "end_ms", "audio_end_ms", "seq") + (() if is_final else ("stable_words",))
    ints = {
        name: _as_ranged_int(_require(obj, name, where=kind), where=f"{kind}.{name}", low=0, high=2**63 - 1)
        for name in int_fields
    }
    confidence = None
    if "confidence" in obj:
        confidence = _decode_confidence(obj["confidence"], where=f"{kind}.confidence")
    words = []
    raw_words = obj.get("words", [])
    if not isinstance(raw_words, list):
        raise InvalidValue(f"{kind}.words: expected an array, {_got(raw_words)}")
    for index, item in enumerate(raw_words):
        where = f"{kind}.words[{index}]"
        word = _as_object(item, where=where)
        _check_fields(word, where=where, allowed=("word", "start_ms", "end_ms", "confidence"))
        words.append(
            Word(
                word=_as_str(_require(word, "word", where=where), where=f"{where}.word"),
                start_ms=_as_int(_require(word, "start_ms", where=where), where=f"{where}.start_ms"),
                end_ms=_as_int(_require(word, "end_ms", where=where), where=f"{where}.end_ms"),
                confidence=_decode_confidence(
                    _require(word, "confidence", where=where), where=f"{where}.confidence"
                ),
            )
        )
    alternatives = []
    raw_alternatives = obj.get("alternatives", [])
    if not isinstance(raw_alternatives, list):
        raise InvalidValue(f"{kind}.alternatives: expected an array, {_got(raw_alternatives)}")
    for index, item in enumerate(raw_alternatives):
        where = f"{kind}.alternatives[{index}]"
        alternative = _as_object(item, where=where)
        _check_fields(alternative, where=where, allowed=("text", "confidence"))
        alternatives.append(
            Alternative(
                text=_as_str(_require(alternative, "text", where=where), where=f"{where}.text"),
                confidence=_decode_confidence(
                    _require(alternative, "confidence", where=where), where=f"{where}.confidence"
                ),
            )
        )
    message = ResultMessage(
        is_final=is_final,
        channel=ints["channel"],
        text=_as_str(_require(obj, "text", where=kind), where=f"{kind}.text"),
        start_ms=ints["start_ms"],
        end_ms=ints["end_ms"],
        audio_end_ms=ints["audio_end_ms"],
        confidence=confidence,
        words=tuple(words),
        alternatives=tuple(alternatives),
        stable_words=ints.get("stable_words", 0),
    )
    return Result(result=message, seq=ints["seq"])


def decode_server_message(text: str) -> ServerMessage:
    """Parse a server's text message (the client side: tests, load generators, SDKs).

    Raises:
        InvalidJson, UnknownMessage, UnknownField, InvalidValue: as for client messages.
    """
    obj = parse_json_object(text)
    kind = obj.get("type")
    if kind == "ready":
        _check_fields(
            obj,
            where="ready",
            allowed=(
                "type",
                "session_id",
                "sample_rate_hz",
                "encoding",
                "channels",
                "max_frame_bytes",
                "client_ref",
            ),
        )
        encoding = _as_str(_require(obj, "encoding", where="ready"), where="ready.encoding")
        if encoding not in _ENCODINGS:
            raise InvalidValue(
                f"ready.encoding: expected one of {', '.join(AudioEncoding)}, got {_show(encoding)}"
            )
        client_ref = _require(obj, "client_ref", where="ready")
        return Ready(
            session_id=_as_str(_require(obj, "session_id", where="ready"), where="ready.session_id"),
            sample_rate_hz=_as_int(
                _require(obj, "sample_rate_hz", where="ready"), where="ready.sample_rate_hz"
            ),
            encoding=AudioEncoding(encoding),
            channels=_as_int(_require(obj, "channels", where="ready"), where="ready.channels"),
            max_frame_bytes=_as_int(
                _require(obj, "max_frame_bytes", where="ready"), where="ready.max_frame_bytes"
            ),
            client_ref=None if client_ref is None else _as_str(client_ref, where="ready.client_ref"),
        )
    if kind in ("partial", "final"):
        return _decode_result(obj, kind)
    if kind == "speech_started":
        _check_fields(obj, where=kind, allowed=("type", "channel", "start_ms"))
        return SpeechStarted(
            channel=_as_int(_require(obj, "channel", where=kind), where=f"{kind}.channel"),
            start_ms=_as_int(_require(obj, "start_ms", where=kind), where=f"{kind}.start_ms"),
        )
    if kind == "speech_ended":
        _check_fields(obj, where=kind, allowed=("type", "channel", "end_ms"))
        return SpeechEnded(
            channel=_as_int(_require(obj, "channel", where=kind), where=f"{kind}.channel"),
            end_ms=_as_int(_require(obj, "end_ms", where=kind), where=f"{kind}.end_ms"),
        )
    if kind == "error":
        _check_fields(obj, where=kind, allowed=("type", "code", "message", "fatal", "retry_after_ms"))
        retry_after_ms = obj.get("retry_after_ms")
        return ErrorReply(
            code=_as_str(_require(obj, "code", where=kind), where="error.code"),
            message=_as_str(_require(obj, "message", where=kind), where="error.message"),
            fatal=_as_bool(_require(obj, "fatal", where=kind), where="error.fatal"),
            retry_after_ms=None
            if retry_after_ms is None
            else _as_int(retry_after_ms, where="error.retry_after_ms"),
        )
    if kind == "end":
        _check_fields(obj, where=kind, allowed=("type",))
        return End()
    raise UnknownMessage(f"type: expected a server message type, {_got(kind)}")
