"""Hypothesis fuzz of the WebSocket protocol v1 Connection: whatever the client sends, the Connection
returns events (never raises), its state stays consistent, and every reply it builds is valid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.websocket import (
    AudioDiscarded,
    AudioReceived,
    Connection,
    ConnectionState,
    ErrorReply,
    ProtocolViolation,
    StopRequested,
    StreamStartRequested,
    decode_server_message,
)
from protocols.websocket.events import (
    FinalizeRequested,
    KeepaliveReceived,
    PauseRequested,
    ResumeRequested,
)

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "protocols" / "websocket" / "schemas"
ERROR_SCHEMA = jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / "error.json").read_text()))
EVENT_TYPES = (
    StreamStartRequested, AudioReceived, AudioDiscarded, StopRequested, FinalizeRequested,
    PauseRequested, ResumeRequested, KeepaliveReceived, ProtocolViolation,
)  # fmt: skip

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)
MESSAGE_TYPES = st.sampled_from(["start", "stop", "finalize", "pause", "resume", "keepalive", "ready", "end"])
START_FIELDS = st.sampled_from(
    [
        "sample_rate_hz",
        "encoding",
        "channels",
        "interim_results",
        "endpointing",
        "hotwords",
        "decoding",
        "word_timings",
        "client_ref",
    ]
)
MESSAGES = st.one_of(
    st.builds(lambda t: json.dumps({"type": t}), MESSAGE_TYPES),
    st.builds(
        lambda t, extra: json.dumps({"type": t, **extra}),
        MESSAGE_TYPES,
        st.dictionaries(START_FIELDS | st.text(max_size=4), JSON, max_size=3),
    ),
    st.sampled_from(
        [
            '{"type":"start","channels":2}',
            '{"type":"start","encoding":"mulaw"}',
            '{"type":"start","sample_rate_hz":16000}',
        ]
    ),
    st.builds(json.dumps, JSON),
    st.text(max_size=40),  # garbage, lone surrogates included
)
FRAMES = st.one_of(
    st.binary(max_size=64),
    st.integers(0, 3000).map(bytes),
    st.sampled_from([b"", bytes(64_000), bytes(64_001)]),
)
OPERATIONS = st.lists(
    st.one_of(MESSAGES.map(lambda m: ("text", m)), FRAMES.map(lambda b: ("bytes", b))), max_size=25
)


def check_reply(conn: Connection, violation: ProtocolViolation) -> None:
    text = conn.send_error(violation.error)
    text.encode("utf-8")  # what the transport will send must be valid UTF-8
    obj: Any = json.loads(text)
    assert ERROR_SCHEMA.is_valid(obj), obj
    reply = decode_server_message(text)
    assert isinstance(reply, ErrorReply)
    assert reply.code == violation.error.code
    assert reply.fatal == (violation.error.close_code is not None)


@settings(max_examples=400, deadline=None)
@given(OPERATIONS)
def test_connection_never_raises_and_stays_consistent(operations: list[tuple[str, Any]]) -> None:
    conn = Connection()
    samples = 0
    for kind, payload in operations:
        before = conn.state
        events = conn.receive_text(payload) if kind == "text" else conn.receive_bytes(payload)
        assert isinstance(events, list) and len(events) <= 1
        assert all(isinstance(event, EVENT_TYPES) for event in events)
        if before is ConnectionState.CLOSED:
            assert events == []
        for event in events:
            if isinstance(event, ProtocolViolation):
                fatal = event.error.close_code is not None
                assert (conn.state is ConnectionState.CLOSED) == fatal
                assert conn.state is before or fatal
                check_reply(conn, event)
            elif isinstance(event, StreamStartRequested):
                assert before is ConnectionState.AWAITING_START and conn.state is ConnectionState.STREAMING
                assert conn.config == event.config
                conn.send_ready("s")
            elif isinstance(event, StopRequested):
                assert conn.state is ConnectionState.STOPPING
            elif isinstance(event, AudioReceived | AudioDiscarded):
                assert conn.config is not None and conn.state is ConnectionState.STREAMING
                assert event.start_sample == samples
                if isinstance(event, AudioReceived):
                    assert len(event.channels) == conn.config.channels and not conn.paused
                    assert {len(channel) for channel in event.channels} == {event.num_samples}
                samples += event.num_samples
            else:
                assert conn.state is before
        assert (conn.close_code_to_send is not None) == (conn.state is ConnectionState.CLOSED)
        assert conn.samples_received == samples
        if conn.state is ConnectionState.AWAITING_START:
            assert conn.config is None and not conn.paused
        else:
            assert conn.config is not None or conn.state is ConnectionState.CLOSED
