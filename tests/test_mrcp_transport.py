"""MRCP over real loopback TCP (the asyncio transport) and an in-memory client/server pair on a fake
clock, one run per completion cause."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import pytest
from mrcp_fixtures import mrcp_messages

from protocols.mrcp.codec import MessageReader, parse_message, serialize
from protocols.mrcp.connection import MrcpServerConnection
from protocols.mrcp.events import (
    MrcpEvent,
    MrcpMessage,
    MrcpRequest,
    MrcpResponse,
    RequestReceived,
    RequestState,
)
from protocols.mrcp.grammar import Phrase
from protocols.mrcp.recognizer import Action, GrammarMatch, Hypothesis, RecognitionStarted, RecognizerChannel
from protocols.mrcp.transport import MrcpServer

SESSION_A = [m for m in mrcp_messages() if m.section == "A"]
CHANNEL_A = "d675692763ff4c54@speechrecog"


def run_async(function):  # type: ignore[no-untyped-def]
    """Run an ``async def`` test body in a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        return asyncio.run(function(*args, **kwargs))

    return wrapper


# ---------------------------------------------------------------------------------------- in memory
class ConnectionPair:
    """A client byte stream joined to a server connection and its channels, on a fake clock."""

    def __init__(self, *channel_ids: str) -> None:
        self.now = 0.0
        self.server = MrcpServerConnection()
        self.channels = {cid: RecognizerChannel(cid) for cid in channel_ids}
        self.client = MessageReader()
        self.received: list[MrcpMessage] = []

    def send(self, request: MrcpRequest) -> list[MrcpMessage]:
        self.server.receive_data(serialize(request))
        while (event := self.server.next_event()) is not None:
            assert isinstance(event, RequestReceived)
            self.channels[event.request.channel_id or ""].handle_request(event.request, self.now)
        return self._pump()

    def evidence(
        self, channel_id: str, feed: Callable[[RecognizerChannel, float], None]
    ) -> list[MrcpMessage]:
        feed(self.channels[channel_id], self.now)
        return self._pump()

    def advance(self, seconds: float) -> list[MrcpMessage]:
        self.now += seconds
        for channel in self.channels.values():
            deadline = channel.get_timer()
            if deadline is not None and deadline <= self.now:
                channel.handle_timer(self.now)
        return self._pump()

    def _pump(self) -> list[MrcpMessage]:
        for channel in self.channels.values():
            for message in channel.messages_to_send():
                self.server.send(message)
        self.client.feed(self.server.data_to_send())
        out = []
        while (message := self.client.next_message()) is not None:
            out.append(message)
        self.received += out
        return out


def _recognize(channel: str, request_id: int, body: bytes, *headers: tuple[str, str]) -> MrcpRequest:
    return MrcpRequest(
        "RECOGNIZE",
        request_id,
        (("Channel-Identifier", channel), ("Content-Type", "text/uri-list"), *headers),
        body,
    )


def _match(text: str, confidence: float) -> Hypothesis:
    return Hypothesis(
        text, confidence, (GrammarMatch("session:demo-grammar-0", Phrase(text, text), confidence),)
    )


def _with_grammar() -> ConnectionPair:
    pair = ConnectionPair(CHANNEL_A)
    define = parse_message(SESSION_A[0].data)
    assert isinstance(define, MrcpRequest)
    assert [serialize(m) for m in pair.send(define)] == [SESSION_A[1].data]
    return pair


SCENARIOS: dict[str, Callable[[ConnectionPair], None]] = {
    "000 success": lambda p: (p.evidence(CHANNEL_A, lambda c, t: c.speech_started(t)), p.advance(0.5), p.evidence(CHANNEL_A, lambda c, t: c.final_hypothesis(_match("one", 0.97), t))),
    "001 no-match": lambda p: (p.evidence(CHANNEL_A, lambda c, t: c.speech_started(t)), p.evidence(CHANNEL_A, lambda c, t: c.final_hypothesis(_match("one", 0.2), t))),
    "002 no-input-timeout": lambda p: None,
    "008 success-maxtime": lambda p: [p.evidence(CHANNEL_A, lambda c, t: (c.audio_time_advanced(t, voiced=True), c.partial_hypothesis(_match("two", 0.9), t))) or p.advance(0.2) for _ in range(120)],
    "015 no-match-maxtime": lambda p: [p.evidence(CHANNEL_A, lambda c, t: (c.speech_started(t), c.audio_time_advanced(t, voiced=True))) or p.advance(0.2) for _ in range(120)],
}  # fmt: skip


@pytest.mark.parametrize("cause", list(SCENARIOS))
def test_in_memory_pair_each_completion_cause(cause: str) -> None:
    pair = _with_grammar()
    replies = pair.send(
        _recognize(CHANNEL_A, 2, b"session:demo-grammar-0\n", ("Recognition-Timeout", "10000"))
    )
    assert isinstance(replies[0], MrcpResponse) and replies[0].request_state is RequestState.IN_PROGRESS
    SCENARIOS[cause](pair)
    for _ in range(100):
        pair.advance(0.25)
    completes = [
        m for m in pair.received if isinstance(m, MrcpEvent) and m.event_name == "RECOGNITION-COMPLETE"
    ]
    assert [m.header("Completion-Cause") for m in completes] == [cause]
    assert completes[0].request_id == 2 and completes[0].headers[0] == ("Channel-Identifier", CHANNEL_A)


def test_in_memory_pair_two_channels_pipelined_on_one_connection() -> None:
    pair = ConnectionPair("a@speechrecog", "b@speechrecog")
    pair.server.receive_data(
        serialize(_recognize("a@speechrecog", 1, b"builtin:dtmf/digits?length=1"))
        + serialize(
            _recognize("b@speechrecog", 1, b"builtin:speech/transcribe", ("No-Input-Timeout", "1000"))
        )
    )
    while (event := pair.server.next_event()) is not None:
        assert isinstance(event, RequestReceived)
        pair.channels[event.request.channel_id or ""].handle_request(event.request, pair.now)
    pair._pump()
    pair.evidence("a@speechrecog", lambda c, t: c.dtmf_digit("9", t))
    pair.advance(1.5)
    causes = {
        m.header("Channel-Identifier"): m.header("Completion-Cause")
        for m in pair.received
        if isinstance(m, MrcpEvent) and m.event_name == "RECOGNITION-COMPLETE"
    }
    assert causes == {"a@speechrecog": "000 success", "b@speechrecog": "002 no-input-timeout"}


# ---------------------------------------------------------------------------------------- loopback
async def _read_messages(reader: asyncio.StreamReader, count: int) -> list[MrcpMessage]:
    framer = MessageReader()
    out: list[MrcpMessage] = []
    while len(out) < count:
        data = await asyncio.wait_for(reader.read(4096), 5)
        assert data, "server closed the connection"
        framer.feed(data)
        while (message := framer.next_message()) is not None:
            out.append(message)
    return out


@run_async
async def test_loopback_captured_session_split_at_1024_with_wall_clock_timers() -> None:
    actions: list[tuple[str, list[Action]]] = []
    lost: list[str] = []
    server = MrcpServer(on_actions=lambda cid, a: actions.append((cid, a)), on_channel_lost=lost.append)
    await server.start("127.0.0.1", 0)
    server.add_channel(RecognizerChannel(CHANNEL_A))
    server.add_channel(RecognizerChannel("second@speechrecog"))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        recognize = parse_message(SESSION_A[2].data)
        assert isinstance(recognize, MrcpRequest)
        short = MrcpRequest(
            recognize.method, 2, (*recognize.headers[:-1], ("No-Input-Timeout", "300")), recognize.body
        )
        stream = SESSION_A[0].data + serialize(short)
        for start in range(0, len(stream), 1024):  # the captured client's 1024-byte writes
            writer.write(stream[start : start + 1024])
            await writer.drain()
        first = await _read_messages(reader, 3)
        assert serialize(first[0]) == SESSION_A[1].data and serialize(first[1]) == SESSION_A[3].data
        assert (
            isinstance(first[2], MrcpEvent) and first[2].header("Completion-Cause") == "002 no-input-timeout"
        )
        assert isinstance(actions[0][1][0], RecognitionStarted)
        # a second channel on the same connection (a=connection:existing), then garbage
        writer.write(serialize(MrcpRequest("GET-PARAMS", 1, (("Channel-Identifier", "second@speechrecog"),))))
        writer.write(
            serialize(MrcpRequest("GET-PARAMS", 2, (("Channel-Identifier", "unknown@speechrecog"),)))
        )
        second, unknown = await _read_messages(reader, 2)
        assert isinstance(second, MrcpResponse) and second.status_code == 200
        assert isinstance(unknown, MrcpResponse) and unknown.status_code == 405
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # garbage closes the connection
        writer.close()
        for _ in range(50):
            if lost:
                break
            await asyncio.sleep(0.01)
        assert sorted(lost) == sorted([CHANNEL_A, "second@speechrecog"])
    finally:
        await server.aclose()
    assert server.channel_count == 0
