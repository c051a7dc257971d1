"""The WebSocket protocol v1 state machine: every input rule in every state, commands, timelines."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

from protocols.errors import GatewayError, LocalProtocolError, OverloadedError, RemoteProtocolError
from protocols.websocket import (
    Alternative,
    AudioDiscarded,
    AudioEncoding,
    AudioReceived,
    Connection,
    ConnectionLost,
    ConnectionState,
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
    StopRequested,
    StreamConfig,
    StreamStartRequested,
    WebSocketError,
    WebSocketLocalError,
    WebSocketOverloaded,
    Word,
    decode_server_message,
)

# ---------------------------------------------------------------------------------------------------------
# Each rule in each state.

INPUTS: dict[str, Callable[[Connection], list[Event]]] = {
    "start": lambda c: c.receive_text('{"type": "start"}'),
    "start_unknown_field": lambda c: c.receive_text('{"type": "start", "language": "en"}'),
    "start_invalid_value": lambda c: c.receive_text('{"type": "start", "channels": "1"}'),
    "start_unsupported": lambda c: c.receive_text('{"type": "start", "encoding": "flac"}'),
    "invalid_json": lambda c: c.receive_text('{"type": "stop"'),
    "non_object": lambda c: c.receive_text('["stop"]'),
    "missing_type": lambda c: c.receive_text("{}"),
    "unknown_type": lambda c: c.receive_text('{"type": "hello"}'),
    "stop": lambda c: c.receive_text('{"type": "stop"}'),
    "stop_unknown_field": lambda c: c.receive_text('{"type": "stop", "now": true}'),
    "finalize": lambda c: c.receive_text('{"type": "finalize"}'),
    "pause": lambda c: c.receive_text('{"type": "pause"}'),
    "resume": lambda c: c.receive_text('{"type": "resume"}'),
    "keepalive": lambda c: c.receive_text('{"type": "keepalive"}'),
    "text_too_large": lambda c: c.receive_text('{"type": "keepalive", "pad": "' + "x" * 70_000 + '"}'),
    "audio": lambda c: c.receive_bytes(bytes(320)),
    "audio_odd": lambda c: c.receive_bytes(bytes(321)),
    "audio_empty": lambda c: c.receive_bytes(b""),
    "audio_too_large": lambda c: c.receive_bytes(bytes(64_001)),
}

A, S, P, T, C = "awaiting_start", "streaming", "paused", "stopping", "closed"
FATAL = {"duplicate_start": 1008, "frame_too_large": 1009, "message_too_large": 1009}

# state -> input -> (event class or error code or None for no event, next state)
EXPECTED: dict[str, dict[str, tuple[type | str | None, str]]] = {
    A: {
        "start": (StreamStartRequested, S),
        "start_unknown_field": ("unknown_field", A),
        "start_invalid_value": ("invalid_value", A),
        "start_unsupported": ("unsupported_encoding", A),
        "invalid_json": ("invalid_json", A),
        "non_object": ("unknown_message", A),
        "missing_type": ("unknown_message", A),
        "unknown_type": ("unknown_message", A),
        "stop": ("control_before_start", A),
        "stop_unknown_field": ("unknown_field", A),
        "finalize": ("control_before_start", A),
        "pause": ("control_before_start", A),
        "resume": ("control_before_start", A),
        "keepalive": (KeepaliveReceived, A),
        "text_too_large": ("message_too_large", C),
        "audio": ("audio_before_start", A),
        "audio_odd": ("audio_before_start", A),
        "audio_empty": ("audio_before_start", A),
        "audio_too_large": ("frame_too_large", C),
    },
    S: {
        "start": ("duplicate_start", C),
        "start_unknown_field": ("duplicate_start", C),
        "start_invalid_value": ("duplicate_start", C),
        "start_unsupported": ("duplicate_start", C),
        "invalid_json": ("invalid_json", S),
        "non_object": ("unknown_message", S),
        "missing_type": ("unknown_message", S),
        "unknown_type": ("unknown_message", S),
        "stop": (StopRequested, T),
        "stop_unknown_field": ("unknown_field", S),
        "finalize": (FinalizeRequested, S),
        "pause": (PauseRequested, P),
        "resume": (None, S),
        "keepalive": (KeepaliveReceived, S),
        "text_too_large": ("message_too_large", C),
        "audio": (AudioReceived, S),
        "audio_odd": ("invalid_audio_length", S),
        "audio_empty": (None, S),
        "audio_too_large": ("frame_too_large", C),
    },
    T: {
        **{name: ("stream_stopped", T) for name in INPUTS},
        "text_too_large": ("message_too_large", C),
        "audio_too_large": ("frame_too_large", C),
    },
    C: {name: (None, C) for name in INPUTS},
}
EXPECTED[P] = {
    **EXPECTED[S],
    "pause": (None, P),
    "resume": (ResumeRequested, S),
    "finalize": (FinalizeRequested, P),
    "keepalive": (KeepaliveReceived, P),
    "audio": (AudioDiscarded, P),
    "audio_odd": ("invalid_audio_length", P),
    "audio_empty": (None, P),
    "invalid_json": ("invalid_json", P),
    "non_object": ("unknown_message", P),
    "missing_type": ("unknown_message", P),
    "unknown_type": ("unknown_message", P),
    "stop_unknown_field": ("unknown_field", P),
}


def connection_in(state: str) -> Connection:
    conn = Connection()
    setup = {A: [], S: ["start"], P: ["start", "pause"], T: ["start", "stop"], C: ["start", "start"]}[state]
    for name in setup:
        INPUTS[name](conn)
    return conn


def observed_state(conn: Connection) -> str:
    if conn.state is ConnectionState.STREAMING and conn.paused:
        return P
    return conn.state.value


@pytest.mark.parametrize("state", [A, S, P, T, C])
@pytest.mark.parametrize("name", sorted(INPUTS))
def test_each_rule_in_each_state(state: str, name: str) -> None:
    conn = connection_in(state)
    assert observed_state(conn) == state
    expected, next_state = EXPECTED[state][name]
    events = INPUTS[name](conn)
    if expected is None:
        assert events == []
    elif isinstance(expected, str):
        assert len(events) == 1 and isinstance(events[0], ProtocolViolation), events
        error = events[0].error
        assert error.code == expected
        assert error.close_code == FATAL.get(expected)
        assert isinstance(error, RemoteProtocolError) and isinstance(error, GatewayError)
        assert error.message
    else:
        assert len(events) == 1 and type(events[0]) is expected, events
    assert observed_state(conn) == next_state
    if next_state == C:
        assert conn.close_code_to_send is not None
    else:
        assert conn.close_code_to_send is None


def test_every_rule_and_state_is_in_the_table() -> None:
    for state in (A, S, P, T, C):
        assert set(EXPECTED[state]) == set(INPUTS), state


# ---------------------------------------------------------------------------------------------------------
# Starting.


def test_refused_start_may_be_corrected() -> None:
    conn = Connection()
    [violation] = conn.receive_text('{"type": "start", "sample_rate_hz": 16000, "encoding": "mulaw"}')
    assert isinstance(violation, ProtocolViolation) and violation.error.code == "unsupported_encoding"
    assert "8000" in violation.error.message and "16000" in violation.error.message
    assert conn.state is ConnectionState.AWAITING_START and conn.config is None
    [started] = conn.receive_text('{"type": "start", "sample_rate_hz": 8000, "encoding": "mulaw"}')
    assert isinstance(started, StreamStartRequested)
    assert started.config.encoding is AudioEncoding.MULAW and conn.config == started.config


def test_unknown_field_is_named() -> None:
    conn = Connection()
    [violation] = conn.receive_text('{"type": "start", "endpointing": {"silence": 500}}')
    assert isinstance(violation, ProtocolViolation)
    assert violation.error.code == "unknown_field"
    assert '"silence"' in violation.error.message and "start.endpointing" in violation.error.message


def test_ready_echoes_config() -> None:
    conn = Connection(max_frame_bytes=32_000)
    conn.receive_text('{"type": "start", "sample_rate_hz": 16000, "channels": 2, "client_ref": "call-7"}')
    ready = decode_server_message(conn.send_ready("s-1"))
    assert ready == Ready(
        session_id="s-1",
        sample_rate_hz=16000,
        encoding=AudioEncoding.PCM_S16LE,
        channels=2,
        max_frame_bytes=32_000,
        client_ref="call-7",
    )


# ---------------------------------------------------------------------------------------------------------
# Audio.


def test_stereo_audio_is_deinterleaved_and_timed() -> None:
    conn = Connection()
    conn.receive_text('{"type": "start", "channels": 2}')
    interleaved = np.array([1, -1, 2, -2, 3, -3], dtype="<i2")
    [first] = conn.receive_bytes(interleaved.tobytes())
    assert isinstance(first, AudioReceived)
    assert first.start_sample == 0 and first.num_samples == 3
    np.testing.assert_array_equal(first.channels[0], [1, 2, 3])
    np.testing.assert_array_equal(first.channels[1], [-1, -2, -3])
    assert all(channel.dtype == np.int16 for channel in first.channels)
    [second] = conn.receive_bytes(interleaved.tobytes())
    assert isinstance(second, AudioReceived) and second.start_sample == 3


def test_stereo_length_must_be_whole_frames() -> None:
    conn = Connection()
    conn.receive_text('{"type": "start", "channels": 2, "encoding": "mulaw"}')
    [violation] = conn.receive_bytes(bytes(3))
    assert isinstance(violation, ProtocolViolation) and violation.error.code == "invalid_audio_length"
    assert "2" in violation.error.message and "3" in violation.error.message
    [ok] = conn.receive_bytes(bytes([0xFF, 0x7F]))
    assert isinstance(ok, AudioReceived) and ok.num_samples == 1
    assert ok.channels[0][0] == 0 and ok.channels[1][0] == 0  # µ-law 0xFF and 0x7F are both silence


def test_alaw_decodes() -> None:
    conn = Connection()
    conn.receive_text('{"type": "start", "encoding": "alaw"}')
    [audio] = conn.receive_bytes(bytes([0xD5, 0x55, 0x2A]))
    assert isinstance(audio, AudioReceived)
    np.testing.assert_array_equal(audio.channels[0], [8, -8, -32256])


def test_paused_audio_is_discarded_but_counted() -> None:
    conn = Connection()
    conn.receive_text('{"type": "start"}')
    conn.receive_bytes(bytes(320))
    assert conn.receive_text('{"type": "pause"}') == [PauseRequested()]
    [discarded] = conn.receive_bytes(bytes(160))
    assert discarded == AudioDiscarded(num_samples=80, start_sample=160)
    assert conn.receive_text('{"type": "resume"}') == [ResumeRequested()]
    [audio] = conn.receive_bytes(bytes(2))
    assert isinstance(audio, AudioReceived) and audio.start_sample == 240
    assert conn.samples_received == 241


def test_max_frame_bytes_is_inclusive() -> None:
    conn = Connection(max_frame_bytes=640)
    conn.receive_text('{"type": "start"}')
    [ok] = conn.receive_bytes(bytes(640))
    assert isinstance(ok, AudioReceived)
    [violation] = conn.receive_bytes(bytes(642))
    assert isinstance(violation, ProtocolViolation) and violation.error.code == "frame_too_large"
    assert conn.close_code_to_send == 1009 and conn.close_reason_to_send == "frame_too_large"


def test_text_size_counts_utf8_bytes() -> None:
    conn = Connection(max_text_bytes=1024)
    phrase = "ü" * 100  # 200 bytes in UTF-8
    hotwords = ",".join(json.dumps({"phrase": phrase}) for _ in range(5))
    [violation] = conn.receive_text('{"type": "start", "hotwords": [' + hotwords + "]}")
    assert isinstance(violation, ProtocolViolation) and violation.error.code == "message_too_large"


# ---------------------------------------------------------------------------------------------------------
# Commands.


def streaming(config_json: str = '{"type": "start"}') -> Connection:
    conn = Connection()
    conn.receive_text(config_json)
    conn.send_ready("s")
    return conn


def final(**changes: object) -> ResultMessage:
    fields: dict[str, object] = {
        "is_final": True,
        "channel": 0,
        "text": "hello world",
        "start_ms": 100,
        "end_ms": 900,
        "audio_end_ms": 1200,
        "confidence": 0.9,
        "words": (
            Word(word="hello", start_ms=100, end_ms=400, confidence=0.95),
            Word(word="world", start_ms=500, end_ms=900, confidence=0.85),
        ),
        "alternatives": (Alternative(text="hello word", confidence=0.1),),
    }
    fields.update(changes)
    return ResultMessage(**fields)  # type: ignore[arg-type]


def test_full_conversation() -> None:
    conn = streaming('{"type": "start", "client_ref": "x"}')
    partial = ResultMessage(is_final=False, channel=0, text="hel", start_ms=100, end_ms=300, audio_end_ms=320)
    sent = [
        conn.send_speech_started(channel=0, start_ms=100),
        conn.send_result(partial),
        conn.send_result(final()),
        conn.send_speech_ended(channel=0, end_ms=900),
    ]
    assert conn.receive_text('{"type": "stop"}') == [StopRequested()]
    sent.append(conn.send_result(final(start_ms=1000, end_ms=1100, audio_end_ms=1100)))
    sent.append(conn.send_end())
    decoded = [decode_server_message(text) for text in sent]
    assert [m.seq for m in decoded if isinstance(m, Result)] == [0, 1, 2]
    assert decoded[2] == Result(result=final(), seq=1)
    assert conn.state is ConnectionState.CLOSED and conn.close_code_to_send == 1000
    with pytest.raises(WebSocketLocalError):
        conn.send_result(final())
    with pytest.raises(WebSocketLocalError):
        conn.send_end()


def test_results_produced_before_a_fatal_violation_still_go_out() -> None:
    conn = streaming()
    [violation] = conn.receive_bytes(bytes(100_000))
    assert isinstance(violation, ProtocolViolation) and conn.state is ConnectionState.CLOSED
    conn.send_result(final())  # results already produced flush first
    reply = decode_server_message(conn.send_error(violation.error))
    assert reply == ErrorReply(code="frame_too_large", message=violation.error.message, fatal=True)
    assert conn.close_code_to_send == 1009
    with pytest.raises(WebSocketLocalError):
        conn.send_result(final())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.send_result(final(channel=1)), "channel"),
        (lambda c: c.send_result(final(end_ms=2000)), "audio_end_ms"),
        (lambda c: c.send_result(final(confidence=1.5)), "confidence"),
        (lambda c: c.send_result(final(confidence=float("nan"))), "confidence"),
        (lambda c: c.send_result(final(is_final=False)), "finals"),
        (lambda c: c.send_ready("again"), "twice"),
        (lambda c: c.send_speech_started(channel=2, start_ms=0), "channel"),
        (lambda c: c.send_speech_ended(channel=0, end_ms=-1), "end_ms"),
    ],
)
def test_command_misuse_raises_local_error(call: Callable[[Connection], str], match: str) -> None:
    conn = streaming()
    with pytest.raises(WebSocketLocalError, match=match) as info:
        call(conn)
    assert isinstance(info.value, LocalProtocolError)


def test_commands_follow_the_client_config() -> None:
    conn = streaming('{"type": "start", "interim_results": false, "word_timings": false}')
    with pytest.raises(WebSocketLocalError, match="interim_results"):
        conn.send_result(
            ResultMessage(is_final=False, channel=0, text="a", start_ms=0, end_ms=1, audio_end_ms=1)
        )
    with pytest.raises(WebSocketLocalError, match="word_timings"):
        conn.send_result(final())
    conn.send_result(final(words=()))


def test_stable_words_only_on_partials_and_within_the_text() -> None:
    conn = streaming()
    ok = ResultMessage(is_final=False, channel=0, text="two words", start_ms=0, end_ms=1, audio_end_ms=1,
                       stable_words=2)
    assert decode_server_message(conn.send_result(ok)) == Result(result=ok, seq=0)
    with pytest.raises(WebSocketLocalError, match="stable_words"):
        conn.send_result(ResultMessage(is_final=False, channel=0, text="two words", start_ms=0, end_ms=1,
                                       audio_end_ms=1, stable_words=3))
    with pytest.raises(WebSocketLocalError, match="stable_words"):
        conn.send_result(final(stable_words=1))


def test_commands_before_ready_raise() -> None:
    conn = Connection()
    with pytest.raises(WebSocketLocalError):
        conn.send_ready("s")
    conn.receive_text('{"type": "start"}')
    for call in (
        lambda: conn.send_result(final()),
        conn.send_end,
        lambda: conn.send_speech_started(channel=0, start_ms=0),
    ):
        with pytest.raises(WebSocketLocalError):
            call()


def test_overloaded_after_handshake() -> None:
    conn = Connection()
    reply = decode_server_message(conn.send_error(OverloadedError("busy", retry_after_s=2.5)))
    assert reply == ErrorReply(code="overloaded", message="busy", fatal=True, retry_after_ms=2500)
    assert conn.state is ConnectionState.CLOSED and conn.close_code_to_send == 1013
    assert WebSocketOverloaded.close_code == OverloadedError.ws_close_code == 1013
    assert OverloadedError.sip_status == 503 and OverloadedError.grpc_status == "RESOURCE_EXHAUSTED"


def test_unexpected_errors_reveal_nothing() -> None:
    conn = streaming()
    reply = decode_server_message(conn.send_error(KeyError("/secret/path")))
    assert reply == ErrorReply(code="internal_error", message="internal error", fatal=True)
    assert conn.close_code_to_send == 1011
    conn2 = streaming()
    reply2 = decode_server_message(conn2.send_error(WebSocketLocalError("our bug in slot 3")))
    assert reply2.message == "internal error"  # type: ignore[union-attr]


def test_non_fatal_error_keeps_streaming() -> None:
    conn = streaming()
    [violation] = conn.receive_text("nope")
    reply = decode_server_message(conn.send_error(violation.error))  # type: ignore[union-attr]
    assert reply == ErrorReply(code="invalid_json", message=violation.error.message, fatal=False)  # type: ignore[union-attr]
    assert conn.state is ConnectionState.STREAMING
    conn.send_result(final())


def test_error_hierarchy() -> None:
    for cls in (WebSocketError, WebSocketLocalError, WebSocketOverloaded):
        assert issubclass(cls, GatewayError)
    assert issubclass(WebSocketOverloaded, OverloadedError)


def test_default_config_matches_a_bare_start() -> None:
    conn = Connection()
    [started] = conn.receive_text('{"type": "start"}')
    assert isinstance(started, StreamStartRequested) and started.config == StreamConfig()


def test_bad_limits_rejected() -> None:
    with pytest.raises(ValueError, match="max_frame_bytes"):
        Connection(max_frame_bytes=0)
    with pytest.raises(ValueError, match="max_text_bytes"):
        Connection(max_text_bytes=10)


# ---------------------------------------------------------------------------------------------------------
# Server-side endings: the Connection records how to close, the transport only reads it.


def test_idle_timeout_before_start_closes_1008_with_nothing_to_send() -> None:
    conn = Connection()
    conn.time_out()
    assert conn.state is ConnectionState.CLOSED
    assert conn.send_closing() is None
    assert (conn.close_code_to_send, conn.close_reason_to_send) == (1008, "idle timeout")


def test_idle_timeout_while_streaming_stops_reading_then_ends_with_1000() -> None:
    conn = streaming()
    conn.time_out()
    assert conn.state is ConnectionState.STOPPING and conn.close_code_to_send is None
    conn.send_result(final())  # the finals of the stopped stream still go out
    assert decode_server_message(conn.send_closing() or "") == End()
    assert (conn.close_code_to_send, conn.close_reason_to_send) == (1000, "idle timeout")
    assert conn.send_closing() is None  # exactly one closing message


@pytest.mark.parametrize("start", [False, True])
def test_go_away_closes_1001(start: bool) -> None:
    conn = streaming() if start else Connection()
    conn.go_away()
    closing = conn.send_closing()
    assert (closing is not None) == start
    assert (conn.close_code_to_send, conn.close_reason_to_send) == (1001, "server draining")


@pytest.mark.parametrize(("error", "code", "close"), [
    (OverloadedError("busy"), "overloaded", 1013),
    (RuntimeError("/secret"), "internal_error", 1011),
])
def test_fail_sends_the_error_after_pending_results(error: Exception, code: str, close: int) -> None:
    conn = streaming()
    conn.fail(error)
    assert conn.state is ConnectionState.CLOSED and conn.receive_text('{"type": "stop"}') == []
    conn.send_result(final())
    reply = decode_server_message(conn.send_closing() or "")
    assert isinstance(reply, ErrorReply) and reply.code == code and reply.fatal and "secret" not in reply.message
    assert conn.close_code_to_send == close


def test_a_fatal_violation_is_the_closing_message() -> None:
    conn = streaming()
    [violation] = conn.receive_bytes(bytes(100_000))
    assert isinstance(violation, ProtocolViolation)
    reply = decode_server_message(conn.send_closing() or "")
    assert isinstance(reply, ErrorReply) and reply.code == "frame_too_large"
    assert conn.close_code_to_send == 1009


@pytest.mark.parametrize("started", [False, True])
def test_connection_lost_is_a_hang_up_with_nothing_to_send(started: bool) -> None:
    conn = streaming() if started else Connection()
    assert conn.connection_lost() == [ConnectionLost()]
    assert conn.connection_lost() == []  # told twice (reader and writer both saw it): one event
    assert conn.state is ConnectionState.CLOSED and conn.close_code_to_send is None
    assert conn.send_closing() is None
    assert conn.receive_bytes(b"\x00\x00") == []


def test_message_refused_by_the_framing_layer_is_frame_too_large() -> None:
    conn = streaming()
    [event] = conn.connection_lost(message_too_big=True)
    assert isinstance(event, ProtocolViolation) and event.error.code == "frame_too_large"
    assert conn.send_closing() is None and conn.close_code_to_send is None
