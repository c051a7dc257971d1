"""MRCPv2 codec and framing against the captured UniMRCP exchange."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mrcp_fixtures import mrcp_messages

from protocols.mrcp.codec import MessageReader, parse_message, serialize
from protocols.mrcp.connection import MrcpServerConnection
from protocols.mrcp.errors import (
    BodyLengthMismatch,
    InvalidMessageLength,
    MalformedMessage,
    MessageTooLarge,
    MrcpError,
    TruncatedMessage,
    UnsupportedVersion,
)
from protocols.mrcp.events import (
    ConnectionClosed,
    MrcpEvent,
    MrcpRequest,
    MrcpResponse,
    ProtocolViolation,
    RequestReceived,
    RequestState,
)

ALL = mrcp_messages()
CLIENT = mrcp_messages(from_client=True)
IDS = [f"{m.section}:{m.start_line}" for m in ALL]


@pytest.mark.parametrize("captured", ALL, ids=IDS)
def test_parse_then_serialize_is_byte_exact(captured) -> None:
    message = parse_message(captured.data)
    assert serialize(message) == captured.data


def test_message_kinds_and_fields() -> None:
    define = parse_message(CLIENT[0].data)
    assert isinstance(define, MrcpRequest)
    assert (define.method, define.request_id) == ("DEFINE-GRAMMAR", 1)
    assert define.channel_id == "d675692763ff4c54@speechrecog"
    assert define.header("content-id") == "demo-grammar-0"
    assert define.body.endswith(b"</grammar>") and len(define.body) == 269
    recognize = parse_message(CLIENT[1].data)
    assert isinstance(recognize, MrcpRequest) and recognize.body == b"session:demo-grammar-0\n"
    server = mrcp_messages(from_client=False)
    response = parse_message(server[1].data)
    assert isinstance(response, MrcpResponse)
    assert (response.request_id, response.status_code, response.request_state) == (
        2,
        200,
        RequestState.IN_PROGRESS,
    )
    event = parse_message(server[3].data)
    assert isinstance(event, MrcpEvent) and event.event_name == "RECOGNITION-COMPLETE"
    assert event.header("Completion-Cause") == "000 success"


@pytest.mark.parametrize("captured", ALL, ids=IDS)
def test_every_truncated_prefix_is_rejected(captured) -> None:
    for cut in range(len(captured.data)):
        with pytest.raises(TruncatedMessage):
            parse_message(captured.data[:cut])


def _stream() -> bytes:
    return b"".join(m.data for m in CLIENT)


def _read_all(chunks: list[bytes]) -> list[object]:
    reader = MessageReader()
    out = []
    for chunk in chunks:
        reader.feed(chunk)
        while (message := reader.next_message()) is not None:
            out.append(message)
    reader.close()
    return out


@pytest.mark.parametrize("split", ["whole", "byte", "1024"])
def test_framing_across_split_and_merged_reads(split: str) -> None:
    data = _stream()
    if split == "whole":
        chunks = [data]
    elif split == "byte":
        chunks = [data[i : i + 1] for i in range(len(data))]
    else:
        chunks = [data[i : i + 1024] for i in range(0, len(data), 1024)]
    expected = [parse_message(m.data) for m in CLIENT]
    assert _read_all(chunks) == expected


def test_trailing_partial_message_waits_then_fails_on_close() -> None:
    reader = MessageReader()
    reader.feed(CLIENT[0].data + CLIENT[1].data[:50])
    assert reader.next_message() == parse_message(CLIENT[0].data)
    assert reader.next_message() is None
    assert reader.buffered_bytes == 50
    with pytest.raises(TruncatedMessage):
        reader.close()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"HTTP/1.1 200 OK\r\n\r\n", MalformedMessage),
        (b"MRCP/1.0 30 SET-PARAMS 1\r\n\r\n", UnsupportedVersion),
        (b"MRCP/2.0 x SET-PARAMS 1\r\n\r\n", InvalidMessageLength),
        (b"MRCP/2.0 5 SET-PARAMS 1\r\n\r\n", InvalidMessageLength),
        (b"MRCP/2.0 99999999999 SET-PARAMS 1\r\n\r\n", InvalidMessageLength),
        (b"MRCP/2.0 9999999 SET-PARAMS 1\r\n\r\n", MessageTooLarge),
    ],
)
def test_framing_errors(data: bytes, error: type[MrcpError]) -> None:
    with pytest.raises(error):
        parse_message(data)


def test_content_length_must_match_the_framed_body() -> None:
    good = serialize(MrcpRequest("RECOGNIZE", 7, (("Channel-Identifier", "a@speechrecog"),), b"session:x\n"))
    bad = good.replace(b"Content-Length: 10", b"Content-Length: 11")
    with pytest.raises(BodyLengthMismatch):
        parse_message(bad)


def test_serialize_length_with_digit_carry() -> None:
    for size in range(0, 200):
        data = serialize(
            MrcpRequest("SET-PARAMS", 1, (("Channel-Identifier", "c@speechrecog"),), b"x" * size)
        )
        assert int(data.split(b" ")[1]) == len(data)
        assert parse_message(data).body == b"x" * size


def test_connection_pipelines_requests_and_answers_missing_channel() -> None:
    connection = MrcpServerConnection()
    no_channel = serialize(MrcpRequest("GET-PARAMS", 9))
    connection.receive_data(CLIENT[0].data + no_channel + CLIENT[1].data)
    events = []
    while (event := connection.next_event()) is not None:
        events.append(event)
    assert [type(e) for e in events] == [RequestReceived, RequestReceived]
    reply = parse_message(connection.data_to_send())
    assert isinstance(reply, MrcpResponse) and (reply.request_id, reply.status_code) == (9, 406)


def test_connection_garbage_is_fatal_and_close_reports_truncation() -> None:
    connection = MrcpServerConnection()
    connection.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    event = connection.next_event()
    assert isinstance(event, ProtocolViolation) and event.error.fatal and connection.closed
    other = MrcpServerConnection()
    other.receive_data(CLIENT[0].data[:100])
    other.receive_data(b"")
    first, second = other.next_event(), other.next_event()
    assert isinstance(first, ProtocolViolation) and isinstance(first.error, TruncatedMessage)
    assert isinstance(second, ConnectionClosed)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_parse_raises_only_mrcp_errors(data: bytes) -> None:
    try:
        parse_message(b"MRCP/2.0 " + data)
    except MrcpError:
        pass
    try:
        parse_message(data)
    except MrcpError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(CLIENT), st.integers(min_value=0, max_value=500), st.binary(min_size=1, max_size=4))
def test_fuzz_mutated_captures_raise_only_mrcp_errors(captured, position: int, junk: bytes) -> None:
    data = bytearray(captured.data)
    position %= len(data)
    data[position : position + len(junk)] = junk
    reader = MessageReader()
    reader.feed(bytes(data))
    try:
        while reader.next_message() is not None:
            pass
        reader.close()
    except MrcpError:
        pass
