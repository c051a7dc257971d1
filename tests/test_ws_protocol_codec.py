"""The WebSocket protocol v1 codec: start parsing, strict JSON, round trips, and the JSON Schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.websocket import (
    Alternative,
    AudioEncoding,
    Connection,
    DecodingMethod,
    DecodingParams,
    EndpointingParams,
    ErrorReply,
    Hotword,
    InvalidJson,
    InvalidValue,
    ProtocolViolation,
    Result,
    ResultMessage,
    StreamConfig,
    UnknownField,
    UnknownMessage,
    UnsupportedEncoding,
    WebSocketError,
    WebSocketRemoteError,
    Word,
    decode_server_message,
    encode_control,
    encode_start,
)
from protocols.websocket import errors as ws_errors
from protocols.websocket.codec import message_type, parse_json_object, parse_start

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "protocols" / "websocket" / "schemas"
SCHEMAS = {path.stem: json.loads(path.read_text()) for path in SCHEMA_DIR.glob("*.json")}
VALIDATORS = {name: jsonschema.Draft202012Validator(schema) for name, schema in SCHEMAS.items()}
SCHEMA_FOR_TYPE = {**{name: name for name in SCHEMAS}, "partial": "result", "final": "result"}
NO_SURROGATES = st.characters(exclude_categories=("Cs",))


def schema_valid(text: str) -> bool:
    obj = json.loads(text)
    return VALIDATORS[SCHEMA_FOR_TYPE[obj["type"]]].is_valid(obj)


def codec_accepts_start(doc: Any) -> bool:
    try:
        parse_start(doc)
    except (InvalidValue, UnknownField, UnsupportedEncoding):
        return False
    return True


def test_schemas_are_valid_draft_2020_12() -> None:
    assert set(SCHEMAS) == {
        "start", "stop", "finalize", "pause", "resume", "keepalive",
        "ready", "result", "speech_started", "speech_ended", "error", "end",
    }  # fmt: skip
    for schema in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


# ---------------------------------------------------------------------------------------------------------
# start: codec and schema agree.

START_SAMPLES: list[tuple[dict[str, Any], str | None]] = [
    ({"type": "start"}, None),
    (
        {
            "type": "start",
            "sample_rate_hz": 16000,
            "encoding": "pcm_s16le",
            "channels": 2,
            "interim_results": False,
            "endpointing": {"silence_ms": 500, "max_utterance_ms": 15000, "enabled": True},
            "hotwords": [{"phrase": "Acme Bank", "boost": 3}, {"phrase": "IBAN"}],
            "decoding": {"method": "beam", "beam_size": 4},
            "word_timings": False,
            "client_ref": "call-42",
        },
        None,
    ),
    ({"type": "start", "sample_rate_hz": 8000.0}, None),
    ({"type": "start", "encoding": "alaw", "sample_rate_hz": 8000}, None),
    ({"type": "start", "client_ref": None}, None),
    ({"type": "start", "hotwords": []}, None),
    ({"type": "start", "extra": 1}, "unknown_field"),
    ({"type": "start", "endpointing": {"silence": 1}}, "unknown_field"),
    ({"type": "start", "hotwords": [{"phrase": "a", "weight": 1}]}, "unknown_field"),
    ({"type": "start", "decoding": {"beam": 4}}, "unknown_field"),
    ({"type": "start", "sample_rate_hz": "8000"}, "invalid_value"),
    ({"type": "start", "sample_rate_hz": 8000.5}, "invalid_value"),
    ({"type": "start", "sample_rate_hz": True}, "invalid_value"),
    ({"type": "start", "sample_rate_hz": 44100}, "unsupported_encoding"),
    ({"type": "start", "encoding": "flac"}, "unsupported_encoding"),
    ({"type": "start", "encoding": 1}, "invalid_value"),
    ({"type": "start", "encoding": "mulaw", "sample_rate_hz": 16000}, "unsupported_encoding"),
    ({"type": "start", "sample_rate_hz": 16000, "encoding": "alaw"}, "unsupported_encoding"),
    ({"type": "start", "channels": 3}, "unsupported_encoding"),
    ({"type": "start", "channels": 0}, "unsupported_encoding"),
    ({"type": "start", "interim_results": 1}, "invalid_value"),
    ({"type": "start", "interim_results": "true"}, "invalid_value"),
    ({"type": "start", "endpointing": []}, "invalid_value"),
    ({"type": "start", "endpointing": {"silence_ms": 99}}, "invalid_value"),
    ({"type": "start", "endpointing": {"silence_ms": 10001}}, "invalid_value"),
    ({"type": "start", "endpointing": {"max_utterance_ms": 60001}}, "invalid_value"),
    ({"type": "start", "endpointing": {"enabled": None}}, "invalid_value"),
    ({"type": "start", "hotwords": "acme"}, "invalid_value"),
    ({"type": "start", "hotwords": ["acme"]}, "invalid_value"),
    ({"type": "start", "hotwords": [{"boost": 2}]}, "invalid_value"),
    ({"type": "start", "hotwords": [{"phrase": ""}]}, "invalid_value"),
    ({"type": "start", "hotwords": [{"phrase": "   "}]}, "invalid_value"),
    ({"type": "start", "hotwords": [{"phrase": "x" * 101}]}, "invalid_value"),
    ({"type": "start", "hotwords": [{"phrase": "x" * 100, "boost": 10}]}, None),
    ({"type": "start", "hotwords": [{"phrase": "a", "boost": 0}]}, "invalid_value"),
    ({"type": "start", "hotwords": [{"phrase": "a", "boost": 10.5}]}, "invalid_value"),
    ({"type": "start", "hotwords": [{"phrase": "a", "boost": 10**400}]}, "invalid_value"),
    ({"type": "start", "hotwords": [{"phrase": "a", "boost": "2"}]}, "invalid_value"),
    ({"type": "start", "hotwords": [{"phrase": f"w{i}"} for i in range(1001)]}, "invalid_value"),
    ({"type": "start", "decoding": {"method": "sampling"}}, "invalid_value"),
    ({"type": "start", "decoding": {"beam_size": 0}}, "invalid_value"),
    ({"type": "start", "decoding": {"beam_size": 65}}, "invalid_value"),
    ({"type": "start", "word_timings": "yes"}, "invalid_value"),
    ({"type": "start", "client_ref": 42}, "invalid_value"),
    ({"type": "start", "client_ref": "r" * 257}, "invalid_value"),
]


@pytest.mark.parametrize(("doc", "code"), START_SAMPLES)
def test_start_samples(doc: dict[str, Any], code: str | None) -> None:
    assert VALIDATORS["start"].is_valid(doc) == (code is None)
    conn = Connection()
    [event] = conn.receive_text(json.dumps(doc))
    if code is None:
        assert not isinstance(event, ProtocolViolation), event
    else:
        assert isinstance(event, ProtocolViolation) and event.error.code == code
        assert "start" in event.error.message and "got" in event.error.message
        assert event.error.close_code is None


def test_start_fields_are_parsed() -> None:
    doc = START_SAMPLES[1][0]
    config = parse_start(doc)
    assert config == StreamConfig(
        sample_rate_hz=16000,
        encoding=AudioEncoding.PCM_S16LE,
        channels=2,
        interim_results=False,
        endpointing=EndpointingParams(enabled=True, silence_ms=500, max_utterance_ms=15000),
        hotwords=(Hotword("Acme Bank", 3.0), Hotword("IBAN", 2.0)),
        decoding=DecodingParams(DecodingMethod.BEAM, 4),
        word_timings=False,
        client_ref="call-42",
    )


def test_lone_surrogates_in_strings_are_refused() -> None:
    with pytest.raises(InvalidValue, match="surrogate"):
        parse_start(parse_json_object('{"type": "start", "client_ref": "\\ud800"}'))


VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70_000), st.sampled_from([8000, 16000, 8000.0, 0.5, 2.0, 1e400]),
    st.text(NO_SURROGATES, max_size=3), st.sampled_from(["pcm_s16le", "mulaw", "alaw", "greedy", "beam", " "]),
    st.lists(st.integers(), max_size=2),
)  # fmt: skip
HOTWORD = st.one_of(
    st.fixed_dictionaries(
        {"phrase": st.one_of(st.text(NO_SURROGATES, max_size=4), VALUES)},
        optional={"boost": st.one_of(st.floats(-1, 12), VALUES), "x": VALUES},
    ),
    VALUES,
)
START_DOCS = st.fixed_dictionaries(
    {"type": st.just("start")},
    optional={
        "sample_rate_hz": st.one_of(st.sampled_from([8000, 16000, 44100]), VALUES),
        "encoding": st.one_of(st.sampled_from(["pcm_s16le", "mulaw", "alaw", "opus"]), VALUES),
        "channels": st.one_of(st.sampled_from([1, 2, 3]), VALUES),
        "interim_results": VALUES,
        "endpointing": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "enabled": VALUES,
                    "silence_ms": st.one_of(st.integers(0, 11_000), VALUES),
                    "max_utterance_ms": st.one_of(st.integers(0, 70_000), VALUES),
                    "bogus": VALUES,
                },
            ),
            VALUES,
        ),
        "hotwords": st.one_of(st.lists(HOTWORD, max_size=3), VALUES),
        "decoding": st.one_of(
            st.fixed_dictionaries(
                {}, optional={"method": VALUES, "beam_size": st.one_of(st.integers(-1, 70), VALUES)}
            ),
            VALUES,
        ),
        "word_timings": VALUES,
        "client_ref": st.one_of(st.text(NO_SURROGATES, max_size=5), VALUES),
        "unknown": VALUES,
    },
)


@settings(max_examples=300, deadline=None)
@given(START_DOCS)
def test_codec_and_schema_agree_on_start(doc: dict[str, Any]) -> None:
    assert codec_accepts_start(doc) == VALIDATORS["start"].is_valid(doc), doc


@settings(max_examples=100, deadline=None)
@given(START_DOCS)
def test_start_round_trips(doc: dict[str, Any]) -> None:
    if not codec_accepts_start(doc):
        return
    config = parse_start(doc)
    text = encode_start(config)
    assert schema_valid(text)
    assert parse_start(parse_json_object(text)) == config


# ---------------------------------------------------------------------------------------------------------
# Control messages and strict JSON.


@pytest.mark.parametrize("kind", ["stop", "finalize", "pause", "resume", "keepalive"])
def test_control_messages(kind: str) -> None:
    text = encode_control(kind)
    assert schema_valid(text)
    assert message_type(parse_json_object(text)) == kind
    assert not VALIDATORS[kind].is_valid({"type": kind, "extra": 1})


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", InvalidJson),
        ("{", InvalidJson),
        ('{"type": "stop"} x', InvalidJson),
        ('{"type": "stop", "type": "start"}', InvalidJson),
        ('{"type": "start", "hotwords": [{"phrase": "a", "boost": NaN}]}', InvalidJson),
        ('{"a": Infinity}', InvalidJson),
        ("[" * 100_000 + "]" * 100_000, InvalidJson),
        ('{"n": ' + "9" * 5000 + "}", InvalidJson),
        ("null", UnknownMessage),
        ('"start"', UnknownMessage),
        ("[]", UnknownMessage),
    ],
)
def test_strict_json(text: str, error: type[WebSocketError]) -> None:
    with pytest.raises(error):
        parse_json_object(text)


@pytest.mark.parametrize("doc", [{}, {"type": None}, {"type": 1}, {"type": "Start"}, {"type": "ready"}])
def test_unknown_message_types(doc: dict[str, Any]) -> None:
    with pytest.raises(UnknownMessage):
        message_type(doc)


def test_error_messages_never_echo_much() -> None:
    with pytest.raises(UnknownField) as info:
        parse_start({"type": "start", "k" * 10_000: 1})
    assert len(info.value.message) < 300


# ---------------------------------------------------------------------------------------------------------
# Server messages: every one the codec emits validates; results round-trip.

FLOAT01 = st.floats(0.0, 1.0, allow_nan=False)
TEXT = st.text(NO_SURROGATES, max_size=20)


@st.composite
def results(draw: st.DrawFn) -> ResultMessage:
    is_final = draw(st.booleans())
    start_ms = draw(st.integers(0, 10**7))
    end_ms = start_ms + draw(st.integers(0, 10**5))
    words = alternatives = ()
    confidence = None
    text = draw(TEXT)
    stable_words = 0 if is_final else draw(st.integers(0, len(text.split())))
    if is_final:
        confidence = draw(st.none() | FLOAT01)
        words = tuple(
            Word(word=w, start_ms=start_ms, end_ms=end_ms, confidence=c)
            for w, c in draw(st.lists(st.tuples(TEXT, FLOAT01), max_size=3))
        )
        alternatives = tuple(
            Alternative(text=t, confidence=c) for t, c in draw(st.lists(st.tuples(TEXT, FLOAT01), max_size=2))
        )
    return ResultMessage(
        is_final=is_final,
        channel=draw(st.integers(0, 1)),
        text=text,
        start_ms=start_ms,
        end_ms=end_ms,
        audio_end_ms=end_ms + draw(st.integers(0, 1000)),
        confidence=confidence,
        words=words,
        alternatives=alternatives,
        stable_words=stable_words,
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(results(), min_size=1, max_size=5))
def test_results_round_trip_and_validate(messages: list[ResultMessage]) -> None:
    conn = Connection()
    conn.receive_text('{"type": "start", "channels": 2}')
    assert schema_valid(conn.send_ready("s"))
    for seq, message in enumerate(messages):
        text = conn.send_result(message)
        assert schema_valid(text), text
        text.encode("utf-8")
        assert decode_server_message(text) == Result(result=message, seq=seq)


def test_other_server_messages_validate() -> None:
    conn = Connection()
    conn.receive_text('{"type": "start", "client_ref": "ü-ref"}')
    texts = [
        conn.send_ready("s-ü"),
        conn.send_speech_started(channel=0, start_ms=0),
        conn.send_speech_ended(channel=0, end_ms=10),
        conn.send_end(),
    ]
    for text in texts:
        assert schema_valid(text), text
        assert decode_server_message(text) is not None


ERROR_CLASSES = [
    cls
    for cls in vars(ws_errors).values()
    if isinstance(cls, type) and issubclass(cls, WebSocketRemoteError) and cls is not WebSocketRemoteError
] + [ws_errors.WebSocketOverloaded, ws_errors.InternalError]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.code)
def test_every_error_code_validates(cls: type[WebSocketError]) -> None:
    conn = Connection()
    text = conn.send_error(cls("why"))
    assert schema_valid(text)
    reply = decode_server_message(text)
    assert (
        isinstance(reply, ErrorReply)
        and reply.code == cls.code
        and reply.fatal == (cls.close_code is not None)
    )
    assert cls.code in SCHEMAS["error"]["properties"]["code"]["enum"]
    assert cls.close_code in (None, 1007, 1008, 1009, 1011, 1013)


def test_error_schema_lists_exactly_the_codes() -> None:
    assert sorted(SCHEMAS["error"]["properties"]["code"]["enum"]) == sorted(cls.code for cls in ERROR_CLASSES)


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "partial", "channel": 0, "text": "a", "start_ms": 0, "end_ms": 0, "audio_end_ms": 0, "seq": 0, "confidence": 0.5}',
        '{"type": "final", "channel": 0, "text": "a", "start_ms": 0, "end_ms": 0, "audio_end_ms": 0}',
        '{"type": "final", "channel": 0, "text": "a", "start_ms": 0, "end_ms": 0, "audio_end_ms": 0, "seq": 0, "confidence": 2}',
        '{"type": "end", "x": 1}',
        '{"type": "error", "code": "invalid_json", "message": "m"}',
    ],
)
def test_decoder_rejects_what_schema_rejects(text: str) -> None:
    assert not schema_valid(text)
    with pytest.raises(WebSocketError):
        decode_server_message(text)
