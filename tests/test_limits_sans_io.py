"""The limits and the TLS transport of the sans-I/O protocol layers, bytes in and events out (no sockets:
tests/test_limits.py and tests/test_tls_mrcp.py run the same over loopback)."""

from __future__ import annotations

import pytest

from gateway.limits import AddressSessions, peer_host
from gateway.metrics import Metrics
from protocols.mrcp.codec import MessageReader
from protocols.mrcp.codec import parse_message as parse_mrcp
from protocols.mrcp.codec import serialize as serialize_mrcp
from protocols.mrcp.connection import MrcpServerConnection
from protocols.mrcp.errors import GrammarTooLarge, TooManyPhrases
from protocols.mrcp.errors import MessageTooLarge as MrcpMessageTooLarge
from protocols.mrcp.errors import TooManyHeaders as MrcpTooManyHeaders
from protocols.mrcp.events import MrcpRequest, ProtocolViolation, RequestReceived
from protocols.mrcp.grammar import define_grammar
from protocols.rtp.connection import RtpReceiver, RtpReceiverConfig
from protocols.sdp.codec import parse_sdp
from protocols.sdp.errors import SdpTooLarge
from protocols.sdp.offer_answer import AnswerConfig, answer_offer
from protocols.sip.codec import SipRequest, StreamReader, parse_message
from protocols.sip.errors import MessageTooLarge, TooManyHeaders
from protocols.sip.events import Flow, LimitExceeded, SessionTerminated, SipTransport, TerminationReason
from tests.test_rtp import PEER, _pcmu
from tests.test_sip_sdp import SESSION_B, _core, _drain, _invite, _offer

CLIENT_TLS = Flow(SipTransport.TLS, ("127.0.0.1", 44626), 9)


def _options(headers: int = 0, body: bytes = b"") -> bytes:
    lines = [
        "OPTIONS sip:x SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKa",
        "From: <sip:a>;tag=1",
        "To: <sip:x>",
        "Call-ID: c",
        "CSeq: 1 OPTIONS",
    ] + [f"X-{i}: {i}" for i in range(headers)]
    return ("\r\n".join([*lines, f"Content-Length: {len(body)}"]) + "\r\n\r\n").encode() + body


# ------------------------------------------------------------------------------------------------- SIP
def test_sip_codec_limits() -> None:
    parse_message(_options(headers=14), max_headers=20)  # 20 header lines in all: at the limit
    with pytest.raises(TooManyHeaders):
        parse_message(_options(headers=15), max_headers=20)
    with pytest.raises(MessageTooLarge):
        parse_message(_options(body=b"x" * 5000), max_message_bytes=4096)
    reader = StreamReader(max_message_bytes=4096)
    reader.feed(_options(body=b"x" * 10))
    assert reader.next_message() is not None
    reader.feed(_options(body=b"x" * 5000)[:200])  # the header block is enough to refuse it
    with pytest.raises(MessageTooLarge):
        reader.next_message()
    assert reader.rejected_head.startswith(b"OPTIONS sip:x SIP/2.0\r\n") and reader.rejected_head.endswith(
        b"\r\n\r\n"
    )
    endless = StreamReader(max_message_bytes=4096)
    endless.feed(b"OPTIONS sip:x SIP/2.0\r\n" + b"X: y\r\n" * 1000)  # no end of the header block
    with pytest.raises(MessageTooLarge):
        endless.next_message()
    assert endless.rejected_head == b""  # nothing readable to answer


def test_sip_core_answers_limits_and_reports_them() -> None:
    udp = Flow(SipTransport.UDP, ("127.0.0.1", 9))
    core = _core(max_message_bytes=4096, max_headers=20)
    core.receive_datagram(_options(body=b"x" * 5000), udp, 0.0)
    core.receive_datagram(_options(headers=30), udp, 0.0)
    messages, events = _drain(core)
    assert [(m.status, m.reason) for m in messages] == [(513, "Message Too Large"), (400, "Too Many Headers")]
    assert events == [LimitExceeded("sip_message_bytes", udp), LimitExceeded("sip_headers", udp)]
    core.refuse_stream(_options(headers=30), CLIENT_TLS, TooManyHeaders("x"))
    messages, events = _drain(core)
    assert [m.status for m in messages] == [400] and events == [LimitExceeded("sip_headers", CLIENT_TLS)]


def test_sip_over_tls_contact_and_our_bye() -> None:
    """A dialog that came over TLS: Contact names the TLS port with transport=tls (RFC 3261 §26), responses
    and our BYE go back on its connection, the BYE's Via says TLS, and losing the connection ends it."""
    core = _core("T", "U", tls_port=5071)
    invite = _invite(core, SESSION_B, CLIENT_TLS)
    core.accept(invite.dialog_id, b"v=0\r\n", 0.0)
    outgoing = core.data_to_send()
    assert [out.flow for out in outgoing] == [CLIENT_TLS]
    ok = parse_message(outgoing[0].data)
    assert ok.header("Contact") == "<sip:127.0.0.1:5071;transport=tls>"
    _drain(core)
    core.hangup(invite.dialog_id, 1.0)
    outgoing = core.data_to_send()
    bye = parse_message(outgoing[0].data)
    assert isinstance(bye, SipRequest) and bye.method == "BYE" and outgoing[0].flow == CLIENT_TLS
    assert bye.values("Via")[0].startswith("SIP/2.0/TLS 127.0.0.1:5071;")
    core.handle_timer(0.5)
    assert not core.data_to_send()  # a reliable transport: no retransmission
    lost = _core("L", tls_port=5071)
    _invite(lost, SESSION_B, CLIENT_TLS)
    lost.connection_lost(9, 0.1)
    assert _drain(lost)[1] == [SessionTerminated("L", TerminationReason.TRANSPORT_LOST)]


# ------------------------------------------------------------------------------------------------- SDP
def test_sdp_size_and_tls_mrcp_offers() -> None:
    with pytest.raises(SdpTooLarge) as caught:
        parse_sdp(_offer() + b"a=x-pad\r\n" * 200, max_bytes=1024)
    assert (caught.value.sip_status, caught.value.limit) == (413, "sdp_bytes")
    tls_offer = _offer().replace(b"TCP/MRCPv2", b"TCP/TLS/MRCPv2")

    def answer(config: AnswerConfig) -> list[tuple[int, str]]:
        negotiation = answer_offer(
            parse_sdp(tls_offer),
            config=config,
            rtp_port=5000,
            channel_id_for=lambda resource, cmid: "c",
            session_id=1,
            session_version=1,
        )
        return [(m.port, m.proto) for m in negotiation.answer.media if m.media == "application"]

    with_tls = answer(AnswerConfig(address="127.0.0.1", mrcp_port=1544, mrcp_tls_port=1545))
    assert with_tls == [(0, "TCP/TLS/MRCPv2"), (1545, "TCP/TLS/MRCPv2")]  # speechsynth declined, recog on TLS
    with pytest.raises(Exception, match="TCP/TLS/MRCPv2"):
        answer(AnswerConfig(address="127.0.0.1", mrcp_port=1544))


# ------------------------------------------------------------------------------------------------ MRCP
def _request(headers: int, request_id: int = 5) -> bytes:
    extra = tuple((f"X-{i}", "1") for i in range(headers))
    return serialize_mrcp(
        MrcpRequest("GET-PARAMS", request_id, (("Channel-Identifier", "a@speechrecog"), *extra))
    )


def test_mrcp_codec_limits() -> None:
    parse_mrcp(_request(19), max_headers=20)
    with pytest.raises(MrcpTooManyHeaders) as too_many:
        parse_mrcp(_request(20, request_id=77), max_headers=20)
    assert too_many.value.request_id == 77
    reader = MessageReader(max_message_bytes=4096)
    reader.feed(b"MRCP/2.0 900000 DEFINE-GRAMMAR 12\r\nChannel-Identifier: a@speechrecog\r\n")
    with pytest.raises(MrcpMessageTooLarge) as too_large:
        reader.next_message()
    assert too_large.value.request_id == 12
    early = MessageReader(max_message_bytes=4096)
    early.feed(b"MRCP/2.0 900000 DEFI")  # the request-id has not arrived: nothing to name
    with pytest.raises(MrcpMessageTooLarge) as unnamed:
        early.next_message()
    assert unnamed.value.request_id is None


def test_mrcp_connection_answers_504() -> None:
    connection = MrcpServerConnection(max_message_bytes=4096, max_headers=20)
    connection.receive_data(_request(25, request_id=3) + _request(0, request_id=4))
    first, second = connection.next_event(), connection.next_event()
    assert isinstance(first, ProtocolViolation) and first.error.limit == "mrcp_headers"
    assert isinstance(second, RequestReceived) and second.request.request_id == 4  # the stream goes on
    assert connection.data_to_send() == b"MRCP/2.0 30 3 504 COMPLETE\r\n\r\n"
    connection.receive_data(b"MRCP/2.0 900000 RECOGNIZE 6\r\n")
    violation = connection.next_event()
    assert isinstance(violation, ProtocolViolation) and violation.error.limit == "mrcp_message_bytes"
    assert connection.data_to_send() == b"MRCP/2.0 30 6 504 COMPLETE\r\n\r\n" and connection.closed


def test_grammar_limits() -> None:
    grammar = (
        b'<grammar xmlns="http://www.w3.org/2001/06/grammar" version="1.0" root="r"><rule id="r"><one-of>'
        + b"".join(b"<item>w%d</item>" % i for i in range(6))
        + b"</one-of></rule></grammar>"
    )
    srgs = "application/srgs+xml"
    assert len(define_grammar(srgs, grammar, content_id="g", session_grammars={}, max_phrases=6).phrases) == 6
    with pytest.raises(TooManyPhrases) as phrases:
        define_grammar(srgs, grammar, content_id="g", session_grammars={}, max_phrases=5)
    with pytest.raises(GrammarTooLarge) as size:
        define_grammar(srgs, grammar, content_id="g", session_grammars={}, max_bytes=len(grammar) - 1)
    assert phrases.value.completion_cause == size.value.completion_cause == "005 grammar-compilation-failure"
    assert (phrases.value.limit, size.value.limit) == ("grammar_phrases", "grammar_bytes")


# ------------------------------------------------------------------------------------------------- RTP
def test_rtp_token_bucket() -> None:
    receiver = RtpReceiver(RtpReceiverConfig(payload_type=0, codec="PCMU", max_packets_per_s=100), now=0.0)
    for seq in range(1, 151):  # 150 packets at one instant against a one-second burst of 100
        receiver.receive_datagram(_pcmu(seq), PEER, 0.0)
    assert (receiver.packets, receiver.rate_limited_packets) == (100, 50)
    for seq in range(151, 181):  # half a second later: 50 tokens back
        receiver.receive_datagram(_pcmu(seq), PEER, 0.5)
    assert (receiver.packets, receiver.rate_limited_packets) == (130, 50)
    other = RtpReceiver(RtpReceiverConfig(payload_type=0, codec="PCMU", max_packets_per_s=50), now=0.0)
    for seq in range(1, 501):  # ten seconds of 20 ms audio at its real pace: nothing dropped
        other.receive_datagram(_pcmu(seq), PEER, seq * 0.02)
    assert other.rate_limited_packets == 0


# --------------------------------------------------------------------------------------------- gateway
def test_address_sessions_and_peer_host() -> None:
    metrics = Metrics()
    sessions = AddressSessions(2, metrics=metrics, protocol="grpc")
    assert sessions.acquire("10.0.0.1") and sessions.acquire("10.0.0.1") and sessions.acquire("10.0.0.2")
    assert not sessions.acquire("10.0.0.1") and sessions.full("10.0.0.1")
    sessions.release("10.0.0.1")
    assert sessions.acquire("10.0.0.1") and sessions.live("10.0.0.1") == 2
    assert (
        metrics.registry.get_sample_value(
            "xlgate_limit_exceeded_total", {"protocol": "grpc", "limit": "sessions_per_address"}
        )
        == 1
    )
    assert (
        metrics.registry.get_sample_value(
            "xlgate_streams_rejected_total", {"protocol": "grpc", "reason": "per_address"}
        )
        == 1
    )
    unbounded = AddressSessions(0, metrics=metrics, protocol="grpc")
    assert all(unbounded.acquire("10.0.0.1") for _ in range(1000))
    assert [peer_host(p) for p in ("ipv4:127.0.0.1:5555", "ipv6:[::1]:5555", "unix:/tmp/s")] == [
        "127.0.0.1",
        "::1",
        "unix:/tmp/s",
    ]
