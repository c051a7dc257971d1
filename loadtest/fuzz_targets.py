"""What the fuzzer feeds, and to what: every parser a peer can reach, with its seeds and its rules.

A :class:`Target` is one parser family as the gateway meets it: bytes a peer controls go in through the
same entry points the transports use (a UDP datagram into the SIP core, a TCP stream cut into arbitrary
reads into the MRCP connection, a text frame into the WebSocket connection, a protobuf request into the
gRPC conversion). ``Target.run(data, cuts)`` returns normally when the input was accepted or refused with
the parser's own typed error (each carries its wire reply); anything else it raises is a finding: an
unexpected exception (a crash) or a broken property (``AssertionError``): a stream parser that frames
differently when the same bytes arrive in other reads, a message that does not survive serialize and
parse, a reply of ours that our own parser refuses.

Inputs start from valid messages (modelled on the captured UniMRCP exchange in
``tests/fixtures/mrcp/unimrcp-exchange.txt``) and are changed by :func:`mutate`, which both the long run
(:mod:`loadtest.fuzz_worker`) and the Hypothesis tests (``tests/test_fuzz_parsers.py``) use, so a
shrunk Hypothesis example and a long-run finding are the same kind of value.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError

from gateway.grpc_api import asr_pb2 as pb
from gateway.grpc_api.convert import (
    InvalidRequestError,
    decode_chunk,
    decode_recording,
    recognition_settings,
)
from gateway.session import StreamSettings
from protocols.mrcp.codec import MessageReader
from protocols.mrcp.codec import parse_message as parse_mrcp
from protocols.mrcp.codec import serialize as serialize_mrcp
from protocols.mrcp.connection import MrcpServerConnection
from protocols.mrcp.errors import MrcpError, MrcpRemoteError
from protocols.mrcp.events import MrcpMessage, MrcpResponse, ProtocolViolation, RequestReceived, RequestState
from protocols.mrcp.grammar import Grammar, builtin_grammar, define_grammar, match_dtmf
from protocols.mrcp.recognizer import RecognizerChannel
from protocols.rtp.codec import (
    RtpPacket,
    build_receiver_report,
    parse_rtcp,
    parse_rtp,
    parse_telephone_event,
    serialize_rtp,
)
from protocols.rtp.connection import RtpReceiver, RtpReceiverConfig
from protocols.rtp.errors import RtcpError, RtpError
from protocols.sdp.codec import parse_sdp, serialize_sdp
from protocols.sdp.errors import SdpError
from protocols.sdp.offer_answer import AnswerConfig, answer_offer
from protocols.sip.codec import SipMessage, SipRequest, SipResponse, StreamReader, serialize
from protocols.sip.codec import parse_message as parse_sip
from protocols.sip.connection import SipServerConfig, SipServerCore
from protocols.sip.errors import SipError
from protocols.sip.events import Flow, InviteReceived, ReinviteReceived, SipTransport
from protocols.websocket import Connection, StreamStartRequested, decode_server_message
from protocols.websocket import ProtocolViolation as WsViolation
from protocols.websocket.events import ErrorReply

__all__ = [
    "TARGETS",
    "Mutation",
    "Target",
    "chunks",
    "cuts_for",
    "mutate",
    "random_mutations",
]

# ------------------------------------------------------------------------------------------- mutation


class Mutation(NamedTuple):
    """One change to an input. ``at`` and ``size`` are taken modulo the input's length, so any values
    make a valid mutation (Hypothesis draws them freely and shrinks them towards 0)."""

    kind: int  # 0 delete, 1 insert, 2 overwrite, 3 duplicate, 4 flip bits, 5 truncate, 6 swap a number
    at: int
    size: int
    payload: bytes


MUTATION_KINDS = 7
# Numbers that break parsers: limits, signs, overflow, and digits that str.isdigit() accepts but int()
# does not (superscript two, Arabic-Indic three) or that int() reads but are not ASCII (fullwidth one).
INTERESTING_NUMBERS = (
    b"0", b"-1", b"1", b"65535", b"65536", b"2147483648", b"4294967295", b"4294967296",
    b"99999999999", b"18446744073709551616", b"0000000000000000000001", b"1e999", b"NaN", b"",
    "\u00b2".encode(), "\u0663".encode(), "\uff11".encode(), b" 1", b"1 ", b"+1",
)  # fmt: skip


def _number_span(data: bytes, at: int) -> tuple[int, int]:
    """The run of ASCII digits at or after ``at`` (wrapping to the start), or an empty span at ``at``."""
    for start in list(range(at, len(data))) + list(range(0, at)):
        if 48 <= data[start] <= 57:
            end = start
            while end < len(data) and 48 <= data[end] <= 57:
                end += 1
            return start, end
    return at, at


def mutate(data: bytes, mutations: Sequence[Mutation]) -> bytes:
    """``data`` changed by each mutation in turn."""
    out = bytearray(data)
    for m in mutations:
        at = m.at % (len(out) + 1)
        size = m.size % (len(out) - at + 1)
        if m.kind == 0:
            del out[at : at + size]
        elif m.kind == 1:
            out[at:at] = m.payload
        elif m.kind == 2:
            out[at : at + len(m.payload)] = m.payload
        elif m.kind == 3:
            out[at:at] = out[at : at + size]
        elif m.kind == 4 and at < len(out):
            out[at] ^= (m.payload[0] if m.payload else 1) or 1
        elif m.kind == 5:
            del out[at:]
        elif m.kind == 6 and out:
            start, end = _number_span(bytes(out), at % len(out))
            out[start:end] = m.payload
    return bytes(out)


def random_mutations(
    rng: random.Random, tokens: Sequence[bytes], *, max_mutations: int = 8
) -> list[Mutation]:
    """A random list of mutations for the long run (Hypothesis draws its own in the tests)."""
    out: list[Mutation] = []
    for _ in range(rng.randint(1, max_mutations)):
        kind = rng.randrange(MUTATION_KINDS)
        choice = rng.random()
        if kind == 6 or choice < 0.2:
            payload = rng.choice(INTERESTING_NUMBERS)
        elif choice < 0.7 and tokens:
            payload = rng.choice(tokens)
        else:
            payload = rng.randbytes(rng.choice((1, 1, 2, 4, 8, 64)))
        size = rng.choice((1, 2, 4, 16, 256, rng.randrange(1 << 16)))
        out.append(Mutation(kind, rng.randrange(1 << 16), size, payload))
    return out


def cuts_for(data: bytes) -> tuple[int, ...]:
    """Where a stream parser's reads end for ``data`` when no cut points are given: derived from the
    bytes themselves (so a saved input replays exactly), a few random points, or every byte when short."""
    if len(data) <= 48:
        return tuple(range(1, len(data)))
    rng = random.Random(zlib.crc32(data))
    return tuple(sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6)))))


def chunks(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (positions outside the data are ignored; empty pieces dropped)."""
    points = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


# ---------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True, slots=True)
class Target:
    """One parser family a peer can reach.

    Attributes:
        name: the ``--parser`` name.
        about: what is fed to what, and which typed errors count as a proper refusal.
        run: feeds one input (``cuts``: where a stream's reads end; None derives them from the bytes).
        seeds: valid inputs the mutations start from.
        tokens: fragments of the format that mutations insert (also written as a libFuzzer dictionary).
        max_len: the longest input the long run generates.
    """

    name: str
    about: str
    run: Callable[[bytes, Sequence[int] | None], None]
    seeds: tuple[bytes, ...]
    tokens: tuple[bytes, ...]
    max_len: int = 8192


def _cuts(data: bytes, cuts: Sequence[int] | None) -> Sequence[int]:
    return cuts_for(data) if cuts is None else cuts


# ---------------------------------------------------------------------------------------- WebSocket JSON

_WS_FRAME_SEPARATOR = b"\n\x1e"  # splits one input into WebSocket messages; a leading "B" marks binary


def _ws_frames(data: bytes) -> list[tuple[bool, bytes]]:
    frames = []
    for piece in data.split(_WS_FRAME_SEPARATOR)[:64]:
        binary = piece[:1] == b"B"
        frames.append((binary, piece[1:] if binary else piece))
    return frames


def _run_ws(data: bytes, cuts: Sequence[int] | None) -> None:
    """Messages into a native protocol v1 ``Connection``: it never raises (garbage becomes a
    ProtocolViolation event) and every error reply it builds is a valid ``error`` message."""
    conn = Connection()
    for binary, payload in _ws_frames(data):
        # websockets hands text frames over as str of valid UTF-8; lone surrogates are tried anyway
        events = (
            conn.receive_bytes(payload)
            if binary
            else conn.receive_text(payload.decode("utf-8", "surrogateescape"))
        )
        for event in events:
            if isinstance(event, WsViolation):
                reply = decode_server_message(conn.send_error(event.error))
                assert isinstance(reply, ErrorReply) and reply.code == event.error.code, reply
            elif isinstance(event, StreamStartRequested):
                conn.send_ready("fuzz")


_WS_START = (
    b'{"type":"start","sample_rate_hz":8000,"encoding":"pcm_s16le","channels":1,"interim_results":true,'
    b'"endpointing":{"enabled":true,"silence_ms":800,"max_utterance_ms":20000},'
    b'"hotwords":[{"phrase":"account number","boost":2.5}],"decoding":{"method":"beam","beam_size":8},'
    b'"word_timings":true,"client_ref":"call-42"}'
)
_WS_SEEDS = (
    _WS_START + b"\n\x1eB" + bytes(320) + b'\n\x1e{"type":"finalize"}\n\x1e{"type":"stop"}',
    b'{"type":"start","encoding":"mulaw","channels":2}\n\x1eB' + bytes(range(256)) + b'\n\x1e{"type":"pause"}'
    b'\n\x1eB\x00\x01\n\x1e{"type":"resume"}\n\x1e{"type":"keepalive"}',
    b'{"type":"start","sample_rate_hz":16000,"encoding":"alaw"}\n\x1e{"type":"stop"}',
    b'{"type":"stop"}',
)
_WS_TOKENS = (
    _WS_FRAME_SEPARATOR, _WS_FRAME_SEPARATOR + b"B", b'"type"', b'"start"', b'"stop"', b'"finalize"', b'"pause"',
    b'"resume"', b'"keepalive"', b'"sample_rate_hz"', b'"encoding"', b'"channels"', b'"interim_results"',
    b'"endpointing"', b'"hotwords"', b'"decoding"', b'"word_timings"', b'"client_ref"', b'"silence_ms"',
    b'"max_utterance_ms"', b'"phrase"', b'"boost"', b'"method"', b'"beam_size"', b'"greedy"', b'"beam"',
    b'"pcm_s16le"', b'"mulaw"', b'"alaw"', b"true", b"false", b"null", b"NaN", b"Infinity", b"-0", b"1e308",
    b"[", b"]", b"{", b"}", b":", b",", b'"\\ud800"', b"[" * 64, b'"enabled"',
)  # fmt: skip

# ------------------------------------------------------------------------------------------------- SIP

_UDP = Flow(SipTransport.UDP, ("127.0.0.1", 5062))
_TCP = Flow(SipTransport.TCP, ("127.0.0.1", 5062), connection_id=1)
_ANSWER_SDP = (
    b"v=0\r\no=xlgate 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=recvonly\r\n"
)


def _same_sip(a: SipMessage, b: SipMessage) -> bool:
    def key(m: SipMessage) -> tuple[Any, ...]:
        start = (m.method, m.uri) if isinstance(m, SipRequest) else (m.status, m.reason)
        headers = tuple((k, v) for k, v in m.headers if k.lower() not in {"content-length", "l"})
        return start, headers, m.body

    return key(a) == key(b)


def _drive_sip_core(core: SipServerCore, now: float) -> None:
    """Answer what the core reports (accept every other INVITE, reject the rest), and check every
    message it sends parses back."""
    accept = True
    while (event := core.next_event()) is not None:
        if isinstance(event, InviteReceived | ReinviteReceived):
            if accept:
                core.accept(event.dialog_id, _ANSWER_SDP, now)
            else:
                core.reject(event.dialog_id, 488, "Not Acceptable Here", now)
            accept = not accept
    for outgoing in core.data_to_send():
        parse_sip(outgoing.data, datagram=False)


def _run_sip(data: bytes, cuts: Sequence[int] | None) -> None:
    """One UDP datagram (``parse_message``, then the SIP core), and the same bytes as a TCP stream cut
    into reads (``StreamReader``, whose messages go to a second core). Typed refusals: ``SipError``
    (answered 400 by the core). Properties: a parsed message survives serialize and parse; the stream
    frames the same messages whatever the reads."""
    try:
        message = parse_sip(data, datagram=True)
    except SipError:
        message = None
    if message is not None:
        again = parse_sip(serialize(message), datagram=False)
        assert _same_sip(message, again), (message, again)
    now = 1000.0
    core = SipServerCore(SipServerConfig(advertise_host="127.0.0.1"), new_tag=_counter())
    core.receive_datagram(data, _UDP, now)
    _drive_sip_core(core, now)
    whole = _sip_stream([data])
    pieces = _sip_stream(chunks(data, _cuts(data, cuts)))
    assert whole == pieces, (whole, pieces)
    tcp = SipServerCore(SipServerConfig(advertise_host="127.0.0.1"), new_tag=_counter())
    for item in whole:
        if isinstance(item, SipRequest | SipResponse):
            now += 0.1
            tcp.receive_message(item, _TCP, now)
            _drive_sip_core(tcp, now)
    for later in (now + 40.0, now + 4000.0):  # retransmissions, ACK timeouts, session expiry
        core.handle_timer(later)
        _drive_sip_core(core, later)
        tcp.handle_timer(later)
        _drive_sip_core(tcp, later)
    tcp.connection_lost(1, now + 5000.0)
    _drive_sip_core(tcp, now + 5000.0)


def _counter() -> Callable[[], str]:
    state = [0]

    def new_tag() -> str:
        state[0] += 1
        return f"t{state[0]}"

    return new_tag


def _sip_stream(reads: list[bytes]) -> list[object]:
    reader = StreamReader()
    out: list[object] = []
    for read in reads:
        reader.feed(read)
        try:
            while (message := reader.next_message()) is not None:
                out.append(message)
        except SipError as exc:
            out.append(type(exc))
            return out
    return out


_SIP_INVITE = (
    b"INVITE sip:127.0.0.1:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:8062;rport;branch=z9hG4bKmD6aKtr1B320S\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:127.0.0.1:8062>;tag=myKD2p704BQXp\r\nTo: <sip:127.0.0.1:5070>\r\n"
    b"Call-ID: 870c5e02-604d-1240-d6a0-26933f6646a5\r\nCSeq: 1001063617 INVITE\r\n"
    b"Contact: <sip:127.0.0.1:8062;transport=udp>\r\nUser-Agent: UniMRCP SofiaSIP 1.8.0\r\n"
    b"Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, PRACK, MESSAGE, SUBSCRIBE, NOTIFY, REFER, UPDATE\r\n"
    b"Supported: timer, 100rel\r\nSession-Expires: 1800;refresher=uas\r\nMin-SE: 90\r\n"
    b"Content-Type: application/sdp\r\nContent-Disposition: session\r\nContent-Length: 393\r\n\r\n"
)
_SDP_OFFER = (
    b"v=0\r\no=UniMRCPClient 8513543608168215744 7932282985790695335 IN IP4 192.0.2.2\r\ns=-\r\n"
    b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=application 9 TCP/MRCPv2 1\r\na=setup:active\r\na=connection:new\r\n"
    b"a=resource:speechrecog\r\na=cmid:1\r\nm=audio 4000 RTP/AVP 0 8 96 101\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\na=rtpmap:96 L16/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\na=sendonly\r\na=ptime:20\r\na=mid:1\r\n"
)
_SIP_DIALOG = (
    b"From: <sip:127.0.0.1:8062>;tag=myKD2p704BQXp\r\nTo: <sip:127.0.0.1:5070>;tag=t1\r\n"
    b"Call-ID: 870c5e02-604d-1240-d6a0-26933f6646a5\r\n"
)


def _sip_request(method: bytes, cseq: int, branch: bytes, extra: bytes = b"", body: bytes = b"") -> bytes:
    return (
        method + b" sip:127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:8062;branch=z9hG4bK" + branch
        + b"\r\nMax-Forwards: 70\r\n" + _SIP_DIALOG + b"CSeq: " + str(cseq).encode() + b" " + method + b"\r\n"
        + extra + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


_SIP_SEEDS = (
    _SIP_INVITE + _SDP_OFFER,
    _SIP_INVITE + _SDP_OFFER + _sip_request(b"ACK", 1001063617, b"a1") + _sip_request(b"BYE", 1001063618, b"b1"),
    _SIP_INVITE + _SDP_OFFER + _sip_request(b"ACK", 1001063617, b"a1")
    + _sip_request(b"INVITE", 1001063618, b"r1", b"Content-Type: application/sdp\r\n", _SDP_OFFER)
    + _sip_request(b"UPDATE", 1001063619, b"u1", b"Session-Expires: 90;refresher=uac\r\n")
    + _sip_request(b"INFO", 1001063620, b"i1") + _sip_request(b"BYE", 1001063621, b"b1"),
    _SIP_INVITE + _SDP_OFFER + _sip_request(b"CANCEL", 1001063617, b"mD6aKtr1B320S"),
    _sip_request(b"OPTIONS", 1, b"o1", b"Accept: application/sdp\r\n"),
    _sip_request(b"REGISTER", 1, b"x1", b"Require: 100rel\r\n"),
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKt1\r\n" + _SIP_DIALOG
    + b"CSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
    b"\r\n\r\n",
)  # fmt: skip
_SIP_TOKENS = (
    b"\r\n", b"\r\n\r\n", b"\r\n ", b": ", b";", b",", b"<", b">", b'"', b"SIP/2.0", b"SIP/2.0/UDP ", b"SIP/2.0/TCP ",
    b"Via: ", b"v: ", b"From: ", b"f: ", b"To: ", b"t: ", b"Call-ID: ", b"i: ", b"CSeq: ", b"Content-Length: ",
    b"l: ", b"Contact: ", b"m: ", b"Session-Expires: ", b"x: ", b"Min-SE: ", b"Supported: timer", b"k: ",
    b"Require: ", b";tag=", b";branch=z9hG4bK", b";rport", b";refresher=uas", b";refresher=uac", b"INVITE",
    b"ACK", b"BYE", b"CANCEL", b"OPTIONS", b"UPDATE", b"INFO", b"[::1]", b":5060", b":65536",
)  # fmt: skip

# ------------------------------------------------------------------------------------------------- SDP


def _run_sdp(data: bytes, cuts: Sequence[int] | None) -> None:
    """An SDP offer: ``parse_sdp`` then ``answer_offer`` as the MRCP adapter does. Typed refusals:
    ``SdpError`` (SdpSyntaxError 400, NotAcceptable 488). Property: our answer is SDP we parse back, and
    its audio payload type is a valid RTP payload type."""
    try:
        offer = parse_sdp(data)
        negotiation = answer_offer(
            offer,
            config=AnswerConfig(address="127.0.0.1", mrcp_port=1544),
            rtp_port=40000,
            channel_id_for=lambda resource, cmid: f"c{cmid}",
            session_id=1,
            session_version=1,
        )
    except SdpError:
        return
    parse_sdp(serialize_sdp(negotiation.answer))
    if negotiation.audio is not None:
        assert 0 <= negotiation.audio.payload_type <= 127, negotiation.audio
        te = negotiation.audio.telephone_event_payload_type
        assert te is None or 0 <= te <= 127, negotiation.audio


_SDP_SEEDS = (
    _SDP_OFFER,
    _SDP_OFFER.replace(b"\r\n", b"\n"),
    b"v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nt=0 0\r\nb=AS:64\r\na=group:BUNDLE 1\r\n"
    b"m=application 9 TCP/MRCPv2 1\r\na=setup:active\r\na=connection:existing\r\na=resource:speechsynth\r\n"
    b"a=cmid:2\r\nm=application 9 TCP/MRCPv2 1\r\na=resource:dtmfrecog\r\na=cmid:1\r\n"
    b"m=audio 4000/2 RTP/AVPF 8 101\r\nc=IN IP6 ::1\r\ni=audio\r\na=rtpmap:8 PCMA/8000/1\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\nm=video 0 RTP/AVP 31\r\n",
)
_SDP_TOKENS = (
    b"\r\n", b"\n", b"v=0", b"o=", b"s=", b"c=IN IP4 ", b"c=IN IP6 ", b"t=0 0", b"m=audio ", b"m=application ",
    b" RTP/AVP ", b" TCP/MRCPv2 ", b"a=rtpmap:", b"a=fmtp:", b"a=ptime:", b"a=resource:speechrecog",
    b"a=resource:dtmfrecog", b"a=cmid:", b"a=mid:", b"a=setup:", b"a=connection:new", b"a=connection:existing",
    b"a=sendonly", b"a=recvonly", b"a=inactive", b"a=sendrecv", b" PCMU/8000", b" PCMA/8000", b" L16/8000",
    b" telephone-event/8000", b"/8000/1", b"/8000/2", b" 0", b" 8", b" 101", b" 128", b" 255",
)  # fmt: skip

# ------------------------------------------------------------------------------------------------ MRCP


def _mrcp_stream(reads: list[bytes]) -> list[object]:
    reader = MessageReader()
    out: list[object] = []
    for read in reads:
        reader.feed(read)
        try:
            while (message := reader.next_message()) is not None:
                out.append(message)
        except MrcpError as exc:
            out.append(type(exc))
            return out
    try:
        reader.close()
    except MrcpError as exc:
        out.append(type(exc))
    return out


def _without_length(message: MrcpMessage) -> MrcpMessage:
    headers = tuple((k, v) for k, v in message.headers if k.lower() != "content-length")
    return dataclasses.replace(message, headers=headers)


def _round_trips(message: MrcpMessage) -> None:
    again = parse_mrcp(serialize_mrcp(message))
    assert _without_length(again) == _without_length(message), (message, again)


def _check_ours(messages: list[MrcpMessage]) -> None:
    for message in messages:
        _round_trips(message)


def _run_mrcp(data: bytes, cuts: Sequence[int] | None) -> None:
    """A TCP byte stream cut into reads, into ``MrcpServerConnection`` and a speechrecog
    ``RecognizerChannel`` (headers, parameters, grammars, timers, DTMF). Typed refusals: the
    ``MrcpError`` family, each answered with its status code (a framing error closes the connection).
    Properties: the reader frames the same messages whatever the reads; a parsed message serializes to
    the bytes it came from when they were canonical, and every message we send parses back to itself."""
    reads = chunks(data, _cuts(data, cuts))
    whole = _mrcp_stream([data])
    assert whole == _mrcp_stream(reads), (whole, reads)
    for item in whole:
        if not isinstance(item, type):
            _round_trips(item)  # type: ignore[arg-type]
    conn = MrcpServerConnection()
    channel = RecognizerChannel("c1@speechrecog")
    now = 1000.0
    for read in [*reads, b""]:
        conn.receive_data(read)
        while (event := conn.next_event()) is not None:
            if isinstance(event, RequestReceived):
                now += 0.25
                channel.handle_request(event.request, now)
                channel.dtmf_digit("1", now)
                deadline = channel.get_timer()
                if deadline is not None:
                    channel.handle_timer(deadline)
                _check_ours(channel.messages_to_send())
                channel.actions_to_take()
            elif isinstance(event, ProtocolViolation):
                assert isinstance(event.error, MrcpRemoteError), event
    channel.close()
    _check_ours(channel.messages_to_send())
    replies = _mrcp_stream([conn.data_to_send()])
    assert not any(isinstance(item, type) for item in replies), replies


def _mrcp(start: str, headers: str, body: bytes = b"") -> bytes:
    text = f"{start}\r\nChannel-Identifier: c1@speechrecog\r\n{headers}"
    if body:
        text += f"Content-Length: {len(body)}\r\n"
    rest = (text + "\r\n").encode() + body
    parts = rest.split(b" ", 1)
    message = parts[1]
    fixed = len(b"MRCP/2.0 ") + len(b" ") + len(message)
    length = fixed + len(str(fixed))
    if len(str(length)) != len(str(fixed)):
        length = fixed + len(str(length))
    return b"MRCP/2.0 " + str(length).encode() + b" " + message


_GRAMMAR = (
    b'<?xml version="1.0"?>\n<grammar xmlns="http://www.w3.org/2001/06/grammar" xml:lang="en-US" '
    b'version="1.0" mode="voice" root="digit">\n  <rule id="digit">\n    <one-of>\n      <item>one</item>\n'
    b"      <item>two</item>\n      <item>three</item>\n    </one-of>\n  </rule>\n</grammar>"
)
_DTMF_GRAMMAR = (
    b'<grammar xmlns="http://www.w3.org/2001/06/grammar" version="1.0" mode="dtmf" root="pin">'
    b'<rule id="pin"><item repeat="2-4"><ruleref uri="#key"/></item><tag>out.pin="ok";</tag></rule>'
    b'<rule id="key"><one-of><item>1</item><item>2<tag>out="two"</tag></item><item>#</item></one-of></rule>'
    b"</grammar>"
)
_MRCP_SEEDS = (
    _mrcp(
        "MRCP/2.0 DEFINE-GRAMMAR 1",
        "Content-Type: application/srgs+xml\r\nContent-Id: demo-grammar-0\r\n",
        _GRAMMAR,
    )
    + _mrcp(
        "MRCP/2.0 RECOGNIZE 2",
        "Content-Type: text/uri-list\r\nCancel-If-Queue: false\r\nStart-Input-Timers: true\r\n",
        b"session:demo-grammar-0\n",
    )
    + _mrcp("MRCP/2.0 STOP 3", ""),
    _mrcp("MRCP/2.0 GET-PARAMS 1", "")
    + _mrcp(
        "MRCP/2.0 SET-PARAMS 2",
        "No-Input-Timeout: 5000\r\nRecognition-Timeout: 20000\r\nSpeech-Complete-Timeout: 400\r\n"
        "Confidence-Threshold: 0.5\r\nN-Best-List-Length: 2\r\nDTMF-Term-Char: #\r\n"
        "Vendor-Specific-Parameters: xlgate.partial-results=true;xlgate.continuous=false\r\n",
    )
    + _mrcp("MRCP/2.0 GET-PARAMS 3", "No-Input-Timeout:\r\nVendor-Specific-Parameters:\r\n"),
    _mrcp(
        "MRCP/2.0 RECOGNIZE 1",
        "Content-Type: application/srgs+xml\r\nContent-Id: pin\r\nStart-Input-Timers: false\r\n"
        "Recognition-Mode: hotword\r\nSave-Waveform: true\r\n",
        _DTMF_GRAMMAR,
    )
    + _mrcp("MRCP/2.0 START-INPUT-TIMERS 2", "")
    + _mrcp("MRCP/2.0 GET-RESULT 3", "")
    + _mrcp("MRCP/2.0 INTERPRET 4", ""),
    _mrcp(
        "MRCP/2.0 RECOGNIZE 1",
        "Content-Type: text/uri-list\r\n",
        b"builtin:dtmf/digits?minlength=3;maxlength=5\nbuiltin:speech/transcribe\n",
    ),
    serialize_mrcp(
        MrcpResponse(
            1,
            200,
            RequestState.COMPLETE,
            (("Channel-Identifier", "c1@speechrecog"), ("Completion-Cause", "000 success")),
        )
    ),
)
_MRCP_TOKENS = (
    b"MRCP/2.0 ", b"\r\n", b"\r\n\r\n", b"\n\n", b": ", b"Channel-Identifier: ", b"@speechrecog", b"Content-Length: ",
    b"Content-Type: ", b"application/srgs+xml", b"text/uri-list", b"Content-Id: ", b"session:", b"builtin:",
    b"DEFINE-GRAMMAR", b"RECOGNIZE", b"STOP", b"SET-PARAMS", b"GET-PARAMS", b"START-INPUT-TIMERS", b"GET-RESULT",
    b" COMPLETE", b" IN-PROGRESS", b" PENDING", b"No-Input-Timeout: ", b"Recognition-Timeout: ",
    b"Speech-Complete-Timeout: ", b"Confidence-Threshold: ", b"N-Best-List-Length: ", b"DTMF-Term-Char: ",
    b"Start-Input-Timers: ", b"Recognition-Mode: ", b"Speech-Language: ", b"Vendor-Specific-Parameters: ",
    b"xlgate.partial-results=", b"xlgate.continuous=", b"true", b"false", b"1.5", b"-0.0", b"nan",
)  # fmt: skip

# ------------------------------------------------------------------------------- grammars and their URIs


def _run_grammar(data: bytes, cuts: Sequence[int] | None) -> None:
    """A grammar body as DEFINE-GRAMMAR and RECOGNIZE carry it: inline SRGS XML, a ``text/uri-list`` of
    builtin (``builtin:dtmf/digits?...``) and ``session:`` URIs, and each line as a URI. Typed refusals:
    ``MrcpRemoteError`` (grammar-compilation-failure 005, grammar-load-failure 004, uri-failure 009,
    unsupported entity 408). A grammar that compiles then matches a few digit strings."""
    known: dict[str, Grammar] = {}
    for content_type in ("application/srgs+xml", "text/uri-list"):
        try:
            grammar = define_grammar(content_type, data, content_id="g", session_grammars=known)
        except MrcpRemoteError:
            continue
        known["g"] = grammar
        if grammar.is_dtmf:
            for digits in ("", "1", "12", "123#", "2" * 20):
                match_dtmf(grammar, digits)
    for line in data.decode("utf-8", "replace").splitlines()[:8]:
        try:
            builtin_grammar(line.strip())
        except MrcpRemoteError:
            pass


_GRAMMAR_SEEDS = (
    _GRAMMAR,
    _DTMF_GRAMMAR,
    b'<grammar xmlns="http://www.w3.org/2001/06/grammar" version="1.0" root="r" xml:lang="en-US">'
    b'<rule id="r" scope="public"><token>yes</token><item repeat="0-1">please</item>'
    b"<ruleref special=\"GARBAGE\"/><one-of><item>a<tag>out.x='1';out.y=2</tag></item>"
    b'<item><ruleref special="NULL"/></item><item><ruleref special="VOID"/></item></one-of>'
    b'<item repeat="1-">b</item><example>yes please</example></rule></grammar>',
    b"builtin:dtmf/digits?length=4\nsession:g\n# comment\nbuiltin:grammar/boolean\n",
    b"builtin:dtmf/boolean",
)
_GRAMMAR_TOKENS = (
    b"<grammar>", b"</grammar>", b"<rule id=\"", b"</rule>", b"<one-of>", b"</one-of>", b"<item>", b"</item>",
    b'<item repeat="', b'0-', b'1-', b'-">', b'<ruleref uri="#', b'"/>', b'<ruleref special="VOID"/>',
    b'<ruleref special="NULL"/>', b"<tag>", b"</tag>", b"out=", b"out.", b"<token>", b"</token>",
    b' mode="dtmf"', b' root="', b' xml:lang="', b"<!DOCTYPE g [<!ENTITY a \"aaaaaaaa\">]>", b"&a;",
    b'<?xml version="1.0" encoding="', b"&#x0;", b"builtin:dtmf/digits?", b"minlength=", b"maxlength=",
    b"length=", b"builtin:speech/transcribe", b"session:", b"http://example.com/g.grxml", b"\n",
)  # fmt: skip

# --------------------------------------------------------------------------------------- RTP and RTCP

_PCMU = RtpReceiverConfig(payload_type=0, codec="PCMU", telephone_event_payload_type=101)
_L16 = RtpReceiverConfig(payload_type=96, codec="L16", telephone_event_payload_type=101)


def _run_receivers(datagrams: list[bytes]) -> None:
    for config in (_PCMU, _L16):
        receiver = RtpReceiver(config, now=0.0)
        now = 0.0
        for index, datagram in enumerate(datagrams):
            now += 0.02
            receiver.receive_datagram(datagram, ("127.0.0.1", 4000 + index % 2), now)
            deadline = receiver.get_timer()
            if deadline is not None and deadline <= now + 0.1:
                receiver.handle_timer(deadline)
        receiver.handle_timer(now + 60.0)
        receiver.flush()
        while receiver.next_event() is not None:
            pass


def _run_rtp(data: bytes, cuts: Sequence[int] | None) -> None:
    """A datagram as RTP (``parse_rtp``, its RFC 4733 telephone-event payload), and the input cut into a
    sequence of datagrams into an ``RtpReceiver`` (PCMU and L16; jitter buffer, latching, DTMF). Typed
    refusal: ``RtpError`` (the packet is dropped and counted; the receiver never raises). Property: a
    packet without extension or padding serializes back to its bytes."""
    try:
        packet = parse_rtp(data)
    except RtpError:
        packet = None
    if packet is not None:
        assert parse_rtp(serialize_rtp(packet)) == packet, packet
        if not data[0] & 0x30:
            assert serialize_rtp(packet) == data, packet
        try:
            event = parse_telephone_event(packet.payload)
            assert event.key is None or len(event.key) == 1
        except RtpError:
            pass
    _run_receivers([data, *chunks(data, _cuts(data, cuts))])


def _rtp(seq: int, ts: int, payload: bytes, *, pt: int = 0, marker: bool = False) -> bytes:
    return serialize_rtp(RtpPacket(pt, seq, ts, 0x1234ABCD, payload, marker=marker))


_RTP_SEEDS = (
    _rtp(1, 160, bytes(range(160))),
    _rtp(65535, 4294967200, b"\xff" * 160, marker=True),
    _rtp(7, 800, struct.pack("!BBH", 1, 0x8A, 800), pt=101),
    # version 2, padding, extension, 2 CSRCs
    bytes([0xB2, 0x00]) + struct.pack("!HII", 9, 1440, 0xABCDEF01) + struct.pack("!II", 1, 2)
    + struct.pack("!HH", 0xBEDE, 1) + b"\x10\x00\x00\x00" + bytes(40) + b"\x00\x00\x03",
    _rtp(2, 320, b"\x00\x10" * 80, pt=96),
)  # fmt: skip


def _run_rtcp(data: bytes, cuts: Sequence[int] | None) -> None:
    """A datagram as an RTCP compound (``parse_rtcp``: SR, RR, SDES, BYE, APP), then into an
    ``RtpReceiver`` as the muxed port gets it. Typed refusal: ``RtcpError``. Property: the reception
    reports we parse rebuild into a receiver report that parses back to the same reports."""
    try:
        packets = parse_rtcp(data)
    except RtcpError:
        packets = ()
    for packet in packets:
        if packet.reports:
            again = parse_rtcp(build_receiver_report(packet.ssrc or 0, packet.reports[:31]))
            assert again[0].reports == packet.reports[:31], packet
    _run_receivers([data, *chunks(data, _cuts(data, cuts))])


def _report(ssrc: int) -> bytes:
    return struct.pack("!IIIIII", ssrc, (12 << 24) | 0xFFFFFE, 70000, 30, 0x12345678, 655)


_RTCP_SEEDS = (
    bytes([0x81, 200]) + struct.pack("!HIIIIII", 12, 0xABCD, 1, 2, 3, 4, 5) + _report(7)
    + bytes([0x81, 202]) + struct.pack("!HI", 3, 0xABCD) + b"\x01\x04host\x00\x00",
    bytes([0x82, 201]) + struct.pack("!HI", 13, 0xABCD) + _report(7) + _report(8),
    bytes([0x81, 203]) + struct.pack("!HI", 1, 0xABCD),
    bytes([0x80, 204]) + struct.pack("!HI", 3, 0xABCD) + b"name" + b"data",
)  # fmt: skip

# ---------------------------------------------------------------------------------------- gRPC config

_DEFAULTS = StreamSettings()


def _run_grpc(data: bytes, cuts: Sequence[int] | None) -> None:
    """A serialized ``StreamingRecognizeRequest`` (its ``streaming_config``) and ``RecognizeRequest``
    (config and audio: raw audio through ``decode_chunk``, a recording with a header through libsndfile)
    into the one conversion to ``StreamSettings``, as the servicer calls it. Typed refusal:
    ``InvalidRequestError`` (INVALID_ARGUMENT). Bytes that are not protobuf (``DecodeError``) never reach
    our code: grpcio's deserializer refuses them."""
    try:
        streaming = pb.StreamingRecognizeRequest.FromString(data)
    except DecodeError:
        streaming = None
    if streaming is not None and streaming.WhichOneof("streaming_request") == "streaming_config":
        config = streaming.streaming_config
        try:
            _, audio, _ = recognition_settings(
                config.config, _DEFAULTS, interim_results=config.interim_results
            )
            decode_chunk(data[: len(data) // 2], audio)
        except InvalidRequestError:
            pass
    try:
        request = pb.RecognizeRequest.FromString(data)
    except DecodeError:
        return
    header = request.config.encoding == pb.AUDIO_ENCODING_UNSPECIFIED
    try:
        _, audio, _ = recognition_settings(request.config, _DEFAULTS, interim_results=False, header=header)
        if header:
            rate_hz, pcm = decode_recording(
                request.audio_content, request.config.enable_separate_recognition_per_channel
            )
            assert 8000 <= rate_hz <= 48000 and len(pcm) >= 1
        else:
            decode_chunk(request.audio_content, audio)
    except InvalidRequestError:
        pass


def _grpc_config(**kwargs: Any) -> pb.RecognitionConfig:
    return pb.RecognitionConfig(**kwargs)


def _wav(channels: int, frames: int) -> bytes:
    header = b"RIFF" + struct.pack("<I", 36 + 2 * channels * frames) + b"WAVEfmt "
    header += struct.pack("<IHHIIHH", 16, 1, channels, 8000, 16000 * channels, 2 * channels, 16)
    return header + b"data" + struct.pack("<I", 2 * channels * frames) + bytes(2 * channels * frames)


_FULL_CONFIG = _grpc_config(
    encoding=pb.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=8000, audio_channel_count=2,
    enable_separate_recognition_per_channel=True, hotwords=[pb.Hotword(phrase="account", boost=2.0)],
    endpointing=pb.EndpointingConfig(disabled=False), max_alternatives=2, enable_word_time_offsets=True,
    enable_word_confidence=True, decoding_method=pb.DECODING_METHOD_BEAM, beam_size=8,
)  # fmt: skip
_FULL_CONFIG.endpointing.trailing_silence.FromMilliseconds(800)
_FULL_CONFIG.endpointing.max_utterance.FromMilliseconds(20000)
_GRPC_SEEDS = (
    pb.StreamingRecognizeRequest(
        streaming_config=pb.StreamingRecognitionConfig(config=_FULL_CONFIG, interim_results=True)
    ).SerializeToString(),
    pb.StreamingRecognizeRequest(
        streaming_config=pb.StreamingRecognitionConfig(
            config=_grpc_config(encoding=pb.AUDIO_ENCODING_MULAW, sample_rate_hertz=8000)
        )
    ).SerializeToString(),
    pb.RecognizeRequest(config=_FULL_CONFIG, audio_content=bytes(640)).SerializeToString(),
    pb.RecognizeRequest(config=_grpc_config(), audio_content=_wav(1, 400)).SerializeToString(),
    pb.RecognizeRequest(
        config=_grpc_config(enable_separate_recognition_per_channel=True), audio_content=_wav(2, 100)
    ).SerializeToString(),
)
_GRPC_TOKENS = (b"\x08\x01", b"\x08\x02", b"\x10\xc0\x3e", b"\x10\x80\x7d", b"\x18\x02", b"\x20\x01", b"\x2a", b"\x32",
                b"\x38\x0a", b"\x50\x02", b"\x58\x08", b"\x0a", b"\x12", b"RIFF", b"WAVEfmt ", b"data", b"fLaC",
                b"\xff\xff\xff\xff\x0f", b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01")  # fmt: skip

# ---------------------------------------------------------------------------------------------- registry

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("ws-json", "WebSocket protocol v1 text (JSON) and binary frames into protocols.websocket.Connection",
               _run_ws, _WS_SEEDS, _WS_TOKENS),
        Target("sip", "SIP datagrams and TCP streams: parse_message, StreamReader, SipServerCore",
               _run_sip, _SIP_SEEDS, _SIP_TOKENS),
        Target("sdp", "SDP offers: parse_sdp, answer_offer, our answer parsed back", _run_sdp, _SDP_SEEDS,
               _SDP_TOKENS),
        Target("mrcp", "MRCPv2 TCP streams: MessageReader, MrcpServerConnection, RecognizerChannel",
               _run_mrcp, _MRCP_SEEDS, _MRCP_TOKENS, max_len=16384),
        Target("grammar", "SRGS XML, text/uri-list and builtin grammar URIs: define_grammar, builtin_grammar",
               _run_grammar, _GRAMMAR_SEEDS, _GRAMMAR_TOKENS),
        Target("rtp", "RTP datagrams (RFC 3550, RFC 4733 telephone-event): parse_rtp, RtpReceiver",
               _run_rtp, _RTP_SEEDS, (b"\x80", b"\x90", b"\xa0", b"\x8f", b"\x00\x65", b"\x80\xe5"), max_len=2048),
        Target("rtcp", "RTCP compounds (SR, RR, SDES, BYE, APP): parse_rtcp, RtpReceiver on a muxed port",
               _run_rtcp, _RTCP_SEEDS, (b"\x81\xc8", b"\x81\xc9", b"\x81\xca", b"\x81\xcb", b"\x80\xcc", b"\xff\xff"),
               max_len=2048),
        Target("grpc-config", "gRPC StreamingRecognizeRequest/RecognizeRequest bytes: recognition_settings, "
               "decode_chunk, decode_recording", _run_grpc, _GRPC_SEEDS, _GRPC_TOKENS),
    )
}  # fmt: skip
