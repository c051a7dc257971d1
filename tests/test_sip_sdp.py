"""SIP codec and server core, SDP codec and offer/answer, against the captured UniMRCP sessions."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mrcp_fixtures import sip_messages

from protocols.sdp.codec import parse_sdp, serialize_sdp
from protocols.sdp.errors import NotAcceptable, SdpError, SdpSyntaxError
from protocols.sdp.offer_answer import AnswerConfig, AudioCodec, answer_offer
from protocols.sip.codec import SipRequest, SipResponse, StreamReader, parse_message, serialize
from protocols.sip.connection import SipServerConfig, SipServerCore
from protocols.sip.errors import SipError, SipLocalError, TruncatedMessage
from protocols.sip.events import (
    Flow,
    InviteReceived,
    ReinviteReceived,
    SessionConfirmed,
    SessionTerminated,
    SipTransport,
    TerminationReason,
)

SIP = sip_messages()
SESSION_A = [m for m in SIP if m.section == "A"]
SESSION_B = [m for m in SIP if m.section == "B"]
CLIENT_UDP = Flow(SipTransport.UDP, ("127.0.0.1", 8062))
CLIENT_TCP = Flow(SipTransport.TCP, ("127.0.0.1", 44625), 7)


def _tags(*tags: str):
    iterator = itertools.chain(tags, (f"tag{i}" for i in itertools.count()))
    return lambda: next(iterator)


def _core(*tags: str, **config: object) -> SipServerCore:
    return SipServerCore(
        SipServerConfig(advertise_host="127.0.0.1", port=5070, **config), new_tag=_tags(*tags)
    )  # type: ignore[arg-type]


def _drain(core: SipServerCore) -> tuple[list[SipResponse | SipRequest], list[object]]:
    messages = [parse_message(out.data) for out in core.data_to_send()]
    events = []
    while (event := core.next_event()) is not None:
        events.append(event)
    return messages, events


def _answer_for(offer_body: bytes, *, rtp_port: int, channel: str) -> bytes:
    negotiation = answer_offer(
        parse_sdp(offer_body),
        config=AnswerConfig(address="127.0.0.1", mrcp_port=1544),
        rtp_port=rtp_port,
        channel_id_for=lambda resource, cmid: channel,
        session_id=1,
        session_version=1,
    )
    return serialize_sdp(negotiation.answer)


# ------------------------------------------------------------------------------------------ codec
@pytest.mark.parametrize("captured", SIP, ids=[f"{m.section}:{m.start_line}" for m in SIP])
def test_sip_round_trip_and_truncation(captured) -> None:
    message = parse_message(captured.data)
    assert serialize(message) == captured.data
    for cut in range(len(captured.data)):
        with pytest.raises(TruncatedMessage):
            parse_message(captured.data[:cut], datagram=False)


@pytest.mark.parametrize("split", ["whole", "byte", "1024"])
def test_sip_tcp_framing(split: str) -> None:
    data = b"\r\n\r\n".join([b""]) + b"".join(m.data for m in SESSION_B if m.from_client)
    chunks = {
        "whole": [data],
        "byte": [data[i : i + 1] for i in range(len(data))],
        "1024": [data[i : i + 1024] for i in range(0, len(data), 1024)],
    }[split]
    reader = StreamReader()
    got = []
    for chunk in chunks:
        reader.feed(chunk)
        while (message := reader.next_message()) is not None:
            got.append(message)
    assert got == [parse_message(m.data) for m in SESSION_B if m.from_client]
    assert reader.buffered_bytes == 0


def test_compact_headers_and_via_lists() -> None:
    data = (
        b"OPTIONS sip:x SIP/2.0\r\nv: SIP/2.0/UDP a:1;branch=z9hG4bK1, SIP/2.0/UDP b:2;branch=z9hG4bK2\r\n"
        b"f: <sip:a>;tag=1\r\nt: <sip:b>\r\ni: c1\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n"
    )
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    assert message.values("Via") == ["SIP/2.0/UDP a:1;branch=z9hG4bK1", "SIP/2.0/UDP b:2;branch=z9hG4bK2"]
    assert message.header("call-id") == "c1"


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_fuzz_sip_parser_raises_only_sip_errors(data: bytes, datagram: bool) -> None:
    for candidate in (data, b"INVITE sip:a SIP/2.0\r\n" + data, SESSION_A[0].data[: len(data)] + data):
        try:
            parse_message(candidate, datagram=datagram)
        except SipError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=2000))
def test_fuzz_sip_core_never_raises(junk: bytes, position: int) -> None:
    core = _core()
    data = bytearray(SESSION_A[0].data)
    position %= len(data)
    data[position : position + len(junk)] = junk
    core.receive_datagram(bytes(data), CLIENT_UDP, 0.0)
    core.receive_datagram(junk, CLIENT_UDP, 0.0)
    core.handle_timer(100.0)


# ------------------------------------------------------------------------------------------ SDP
@pytest.mark.parametrize(
    ("session", "rtp_port", "channel"),
    [(SESSION_A, 5010, "d675692763ff4c54"), (SESSION_B, 5012, "09ebcca922d44bce")],
)
def test_sdp_answer_field_by_field(session, rtp_port: int, channel: str) -> None:
    invite = parse_message(session[0].data)
    expected = parse_message(session[2].data)
    ours = _answer_for(invite.body, rtp_port=rtp_port, channel=channel).decode().split("\r\n")
    theirs = expected.body.decode().split("\r\n")
    assert [line for line in ours if not line.startswith("o=")] == [
        line for line in theirs if not line.startswith("o=")
    ]
    assert ours[1].startswith("o=xlgate 1 1 IN IP4 127.0.0.1")


def test_sdp_round_trip() -> None:
    for captured in SIP:
        body = parse_message(captured.data).body
        if body:
            assert serialize_sdp(parse_sdp(body)) == body


OFFER = (
    "v=0\r\no=c 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
    "m=application 9 TCP/MRCPv2 1\r\na=setup:active\r\na=connection:new\r\na=resource:speechsynth\r\na=cmid:1\r\n"
    "{recog}"
    "m=audio 4000 RTP/AVP {formats}\r\n{rtpmap}a=sendrecv\r\na=mid:1\r\n"
)


def _offer(
    recog: bool = True, formats: str = "8 101", rtpmap: str = "a=rtpmap:101 telephone-event/8000\r\n"
) -> bytes:
    recog_lines = "m=application 9 TCP/MRCPv2 1\r\na=setup:active\r\na=connection:existing\r\na=resource:speechrecog\r\na=cmid:1\r\n"
    return OFFER.format(recog=recog_lines if recog else "", formats=formats, rtpmap=rtpmap).encode()


def test_unsupported_resource_is_declined_without_failing() -> None:
    negotiation = answer_offer(
        parse_sdp(_offer()),
        config=AnswerConfig(address="192.0.2.9"),
        rtp_port=20000,
        channel_id_for=lambda r, c: "abc",
        session_id=5,
        session_version=2,
    )
    synth, recog, audio = negotiation.answer.media
    assert (synth.port, synth.attributes) == (0, ())
    assert (
        recog.port == 1544
        and recog.attribute("connection") == "existing"
        and recog.attribute("channel") == "abc@speechrecog"
    )
    assert (
        audio.formats == ("8", "101") and audio.direction == "recvonly" and audio.attribute("ptime") == "20"
    )
    assert negotiation.audio is not None and negotiation.audio.codec is AudioCodec.PCMA
    assert (
        negotiation.audio.remote_address == "10.0.0.1"
        and negotiation.audio.telephone_event_payload_type == 101
    )
    assert negotiation.answer.connection == "IN IP4 192.0.2.9"


@pytest.mark.parametrize(
    "offer",
    [
        _offer(recog=False),
        _offer(formats="18 9", rtpmap="a=rtpmap:18 G729/8000\r\n"),
        _offer(formats="96", rtpmap="a=rtpmap:96 L16/16000\r\n"),
    ],
)
def test_unusable_offers_are_not_acceptable(offer: bytes) -> None:
    with pytest.raises(NotAcceptable) as info:
        answer_offer(
            parse_sdp(offer),
            config=AnswerConfig(address="x"),
            rtp_port=1,
            channel_id_for=lambda r, c: "a",
            session_id=1,
            session_version=1,
        )
    assert info.value.sip_status == 488


def test_l16_is_negotiated_by_rtpmap() -> None:
    negotiation = answer_offer(
        parse_sdp(_offer(formats="96", rtpmap="a=rtpmap:96 L16/8000\r\n")),
        config=AnswerConfig(address="x"),
        rtp_port=1,
        channel_id_for=lambda r, c: "a",
        session_id=1,
        session_version=1,
    )
    assert negotiation.audio is not None and (negotiation.audio.codec, negotiation.audio.payload_type) == (
        AudioCodec.L16,
        96,
    )


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_sdp_raises_only_sdp_errors(data: bytes) -> None:
    for candidate in (data, b"v=0\r\no=a 1 1 IN IP4 1.2.3.4\r\n" + data):
        try:
            answer_offer(
                parse_sdp(candidate),
                config=AnswerConfig(address="x"),
                rtp_port=1,
                channel_id_for=lambda r, c: "a",
                session_id=1,
                session_version=1,
            )
        except SdpError:
            pass


def test_sdp_syntax_errors() -> None:
    for bad in (
        b"",
        b"v=1\r\n",
        b"v=0\r\nbogus\r\n",
        b"v=0\r\nm=audio x RTP/AVP 0\r\n",
        b"v=0\r\ns=-\r\n",
        b"\xff",
    ):
        with pytest.raises(SdpSyntaxError):
            parse_sdp(bad)


# ------------------------------------------------------------------------------------------ SIP core
def _same_header(ours: str | None, theirs: str | None, name: str) -> None:
    """Equal, except that we add received= (RFC 3581 §4 MUST) and Sofia adds rport= to TCP Vias."""
    if name == "Via":
        ours = (ours or "").replace(";received=127.0.0.1", "")
        theirs = (theirs or "").replace(";rport=44625", "")
    assert ours == theirs, name


def _invite(core: SipServerCore, session, flow: Flow, now: float = 0.0) -> InviteReceived:
    core.receive_datagram(
        session[0].data, flow, now
    ) if flow.transport is SipTransport.UDP else core.receive_message(
        parse_message(session[0].data), flow, now
    )
    messages, events = _drain(core)
    assert [m.status for m in messages] == [100]  # type: ignore[union-attr]
    expected = parse_message(session[1].data)
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        _same_header(messages[0].header(name), expected.header(name), name)
    assert isinstance(events[0], InviteReceived)
    return events[0]


@pytest.mark.parametrize(
    ("session", "flow", "tag"),
    [(SESSION_A, CLIENT_UDP, "066K7N3N6Z7rp"), (SESSION_B, CLIENT_TCP, "1F0c9gmS38XBj")],
)
def test_captured_session_invite_ack_bye(session, flow: Flow, tag: str) -> None:
    core = _core(tag)
    invite = _invite(core, session, flow)
    assert invite.dialog_id == tag
    answer = _answer_for(invite.offer, rtp_port=5010, channel="x")
    core.accept(invite.dialog_id, answer, 0.01)
    messages, _ = _drain(core)
    ok = messages[0]
    expected = parse_message(session[2].data)
    assert isinstance(ok, SipResponse) and ok.status == 200
    for name in ("Via", "From", "To", "Call-ID", "CSeq", "Content-Type", "Require", "Accept"):
        _same_header(ok.header(name), expected.header(name), name)
    assert ok.header("Contact") == (
        "<sip:127.0.0.1:5070>" if flow.transport is SipTransport.UDP else "<sip:127.0.0.1:5070;transport=tcp>"
    )
    assert ok.header("Session-Expires") == "1800;refresher=uac"
    assert ok.body == answer
    ack = parse_message(session[3].data)
    core.receive_message(ack, flow, 0.02)
    messages, events = _drain(core)
    assert messages == [] and events == [SessionConfirmed(tag)]
    core.handle_timer(10.0)
    assert core.data_to_send() == []  # the ACK stopped the 2xx retransmissions
    core.receive_message(parse_message(session[4].data), flow, 1.35)
    messages, events = _drain(core)
    expected_bye_ok = parse_message(session[5].data)
    assert messages[0].status == 200  # type: ignore[union-attr]
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        _same_header(messages[0].header(name), expected_bye_ok.header(name), name)
    assert events == [SessionTerminated(tag, TerminationReason.BYE)]
    core.handle_timer(100.0)
    assert core.dialog_count == 0


def test_udp_200_is_retransmitted_until_ack_then_bye_on_timeout() -> None:
    core = _core("T")
    invite = _invite(core, SESSION_A, CLIENT_UDP)
    core.accept(invite.dialog_id, b"v=0\r\n", 0.0)
    _drain(core)
    sent_at = []
    now = 0.0
    while now < 40.0:
        now = core.get_timer() or 99.0
        core.handle_timer(now)
        messages, events = _drain(core)
        if any(isinstance(m, SipResponse) and m.status == 200 for m in messages):
            sent_at.append(now)
        if events:
            break
    assert sent_at[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]  # T1 doubling, capped at T2 (RFC 3261 §13.3.1.4)
    assert events == [SessionTerminated("T", TerminationReason.ACK_TIMEOUT)]
    assert any(isinstance(m, SipRequest) and m.method == "BYE" for m in messages)
    assert now == pytest.approx(32.0)


def test_retransmitted_invite_gets_the_same_answer() -> None:
    core = _core("T")
    invite = _invite(core, SESSION_A, CLIENT_UDP)
    core.receive_datagram(SESSION_A[0].data, CLIENT_UDP, 0.5)
    messages, events = _drain(core)
    assert [m.status for m in messages] == [100] and events == []  # type: ignore[union-attr]
    core.accept(invite.dialog_id, b"v=0\r\n", 0.6)
    _drain(core)
    core.receive_datagram(SESSION_A[0].data, CLIENT_UDP, 1.0)
    messages, _ = _drain(core)
    assert [m.status for m in messages] == [200]  # type: ignore[union-attr]


def test_cancel_before_answer() -> None:
    core = _core("T")
    invite = _invite(core, SESSION_A, CLIENT_UDP)
    cancel = (
        SESSION_A[0]
        .data.replace(b"INVITE sip:", b"CANCEL sip:")
        .replace(b"1001063617 INVITE", b"1001063617 CANCEL")
    )
    head = cancel.split(b"\r\n\r\n")[0].replace(b"Content-Length: 393", b"Content-Length: 0")
    core.receive_datagram(head + b"\r\n\r\n", CLIENT_UDP, 0.1)
    messages, events = _drain(core)
    assert sorted(m.status for m in messages) == [200, 487]  # type: ignore[union-attr]
    assert events == [SessionTerminated("T", TerminationReason.CANCELLED)]
    with pytest.raises(SipLocalError):
        core.accept(invite.dialog_id, b"", 0.2)


def test_options_answers_capabilities() -> None:
    core = _core()
    options = b"OPTIONS sip:127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKo1\r\nFrom: <sip:lb>;tag=1\r\nTo: <sip:x>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    core.receive_datagram(options, Flow(SipTransport.UDP, ("127.0.0.1", 9)), 0.0)
    messages, _ = _drain(core)
    assert messages[0].status == 200  # type: ignore[union-attr]
    assert (
        "INVITE" in (messages[0].header("Allow") or "") and messages[0].header("Accept") == "application/sdp"
    )
    assert ";tag=" in (messages[0].header("To") or "")
    core.accepting = False  # draining: the probe is told to go elsewhere
    core.receive_datagram(
        options.replace(b"z9hG4bKo1", b"z9hG4bKo2"), Flow(SipTransport.UDP, ("127.0.0.1", 9)), 1.0
    )
    messages, _ = _drain(core)
    assert messages[0].status == 503 and messages[0].header("Retry-After") == "5"  # type: ignore[union-attr]


def test_overload_and_reject_answer_503_with_retry_after() -> None:
    core = _core("T", retry_after_s=7)
    core.accepting = False
    core.receive_datagram(SESSION_A[0].data, CLIENT_UDP, 0.0)
    messages, events = _drain(core)
    assert [m.status for m in messages] == [503] and messages[0].header("Retry-After") == "7" and events == []  # type: ignore[union-attr]
    core.accepting = True
    invite = _invite(core, SESSION_B, CLIENT_TCP)
    core.reject(invite.dialog_id, 503, "Service Unavailable", 0.0, retry_after_s=3)
    messages, events = _drain(core)
    assert messages[0].status == 503 and messages[0].header("Retry-After") == "3" and events == []  # type: ignore[union-attr]


def test_require_100rel_gets_420() -> None:
    core = _core()
    data = SESSION_A[0].data.replace(b"Supported: timer, 100rel", b"Require: 100rel")
    core.receive_datagram(data, CLIENT_UDP, 0.0)
    messages, _ = _drain(core)
    assert messages[0].status == 420 and messages[0].header("Unsupported") == "100rel"  # type: ignore[union-attr]


def _established(core: SipServerCore, tag: str) -> None:
    invite = _invite(core, SESSION_A, CLIENT_UDP)
    core.accept(invite.dialog_id, b"v=0\r\nanswer\r\n", 0.0)
    core.receive_datagram(SESSION_A[3].data.replace(b"066K7N3N6Z7rp", tag.encode()), CLIENT_UDP, 0.01)
    _drain(core)


def _in_dialog(method: str, cseq: int, tag: str, *, body: bytes = b"", extra: bytes = b"") -> bytes:
    return (
        (
            f"{method} sip:127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:8062;rport;branch=z9hG4bK{method}{cseq}\r\n"
            f"From: <sip:127.0.0.1:8062>;tag=myKD2p704BQXp\r\nTo: <sip:127.0.0.1:5070>;tag={tag}\r\n"
            f"Call-ID: 870c5e02-604d-1240-d6a0-26933f6646a5\r\nCSeq: {cseq} {method}\r\n"
        ).encode()
        + extra
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def test_reinvite_with_and_without_offer() -> None:
    core = _core("T")
    _established(core, "T")
    core.receive_datagram(
        _in_dialog("INVITE", 1001063620, "T", body=SESSION_A[0].data.split(b"\r\n\r\n")[1]), CLIENT_UDP, 5.0
    )
    messages, events = _drain(core)
    assert isinstance(events[0], ReinviteReceived)
    core.accept("T", b"v=0\r\nnew\r\n", 5.0)
    messages, _ = _drain(core)
    assert messages[0].status == 200 and messages[0].body == b"v=0\r\nnew\r\n"  # type: ignore[union-attr]
    core.receive_datagram(_in_dialog("ACK", 1001063620, "T"), CLIENT_UDP, 5.1)
    core.receive_datagram(_in_dialog("INVITE", 1001063621, "T"), CLIENT_UDP, 6.0)
    messages, events = _drain(core)
    assert events == [] and messages[0].status == 200 and messages[0].body == b"v=0\r\nnew\r\n"  # type: ignore[union-attr]


def test_session_expires_without_refresh_ends_with_bye_and_update_refreshes() -> None:
    core = _core("T", session_expires_s=120)
    _established(core, "T")
    assert core.get_timer() == pytest.approx(120 - 32)
    core.receive_datagram(
        _in_dialog("UPDATE", 1001063619, "T", extra=b"Session-Expires: 120\r\nSupported: timer\r\n"),
        CLIENT_UDP,
        80.0,
    )
    messages, _ = _drain(core)
    assert messages[0].status == 200 and messages[0].header("Session-Expires") == "120;refresher=uac"  # type: ignore[union-attr]
    core.handle_timer(100.0)
    assert _drain(core) == ([], [])
    core.handle_timer(80.0 + 88.0)
    messages, events = _drain(core)
    assert events == [SessionTerminated("T", TerminationReason.SESSION_EXPIRED)]
    assert isinstance(messages[0], SipRequest) and messages[0].method == "BYE"
    assert messages[0].uri == "sip:127.0.0.1:8062;transport=udp"


def test_small_session_expires_gets_422() -> None:
    core = _core()
    data = SESSION_A[0].data.replace(
        b"Supported: timer, 100rel\r\n", b"Supported: timer\r\nSession-Expires: 30\r\n"
    )
    core.receive_datagram(data, CLIENT_UDP, 0.0)
    messages, _ = _drain(core)
    assert messages[0].status == 422 and messages[0].header("Min-SE") == "90"  # type: ignore[union-attr]


def test_no_timer_support_means_no_session_expiry() -> None:
    core = _core("T")
    data = SESSION_A[0].data.replace(b"Supported: timer, 100rel\r\n", b"")
    core.receive_datagram(data, CLIENT_UDP, 0.0)
    _drain(core)
    core.accept("T", b"v=0\r\n", 0.0)
    messages, _ = _drain(core)
    assert messages[0].header("Session-Expires") is None
    core.receive_datagram(SESSION_A[3].data.replace(b"066K7N3N6Z7rp", b"T"), CLIENT_UDP, 0.01)
    assert core.get_timer() is None


def test_tcp_connection_loss_ends_its_dialogs_and_hangup_sends_bye() -> None:
    core = _core("T", "U")
    invite = _invite(core, SESSION_B, CLIENT_TCP)
    core.accept(invite.dialog_id, b"v=0\r\n", 0.0)
    core.connection_lost(7, 1.0)
    _, events = _drain(core)
    assert events == [SessionTerminated("T", TerminationReason.TRANSPORT_LOST)]
    _established(core, "U")
    core.hangup("U", 2.0)
    messages, events = _drain(core)
    assert isinstance(messages[0], SipRequest) and messages[0].method == "BYE"
    assert events == [SessionTerminated("U", TerminationReason.LOCAL_HANGUP)]
    bye_branch = messages[0].values("Via")[0].split("branch=")[1].split(";")[0]
    ok = f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={bye_branch}\r\nFrom: a\r\nTo: b\r\nCall-ID: c\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    core.receive_datagram(ok.encode(), CLIENT_UDP, 2.1)
    core.handle_timer(200.0)
    assert core.dialog_count == 0


def test_unknown_bye_is_481_and_garbage_with_via_is_400() -> None:
    core = _core()
    core.receive_datagram(_in_dialog("BYE", 5, "nope"), CLIENT_UDP, 0.0)
    messages, _ = _drain(core)
    assert messages[0].status == 481  # type: ignore[union-attr]
    bad = SESSION_A[0].data.replace(b"CSeq: 1001063617 INVITE", b"CSeq: x INVITE")
    core.receive_datagram(bad, CLIENT_UDP, 0.0)
    messages, _ = _drain(core)
    assert messages[0].status == 400  # type: ignore[union-attr]
