"""RTP/RTCP codecs, RFC 4733 events, the jitter buffer and the receiver."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.audio.g711 import mulaw_encode
from protocols.rtp.codec import (
    ReceptionReport,
    RtpPacket,
    build_receiver_report,
    parse_rtcp,
    parse_rtp,
    parse_telephone_event,
    serialize_rtp,
)
from protocols.rtp.connection import RtpReceiver, RtpReceiverConfig, decode_payload
from protocols.rtp.errors import RtcpError, RtpError
from protocols.rtp.events import AudioReceived, DtmfReceived, MediaTimeout, SsrcChanged, StreamLatched
from protocols.rtp.jitter import JitterBuffer

PEER = ("127.0.0.1", 4000)
SSRC = 0xDC6ADF07


def _pcmu(seq: int, *, ssrc: int = SSRC, value: int = 1000, marker: bool = False) -> bytes:
    """A packet like the captured client's: 20 ms PCMU, seq from 1, timestamp 160 per packet."""
    samples = np.full(160, value, dtype=np.int16)
    return serialize_rtp(
        RtpPacket(0, seq & 0xFFFF, (160 * seq) & 0xFFFFFFFF, ssrc, mulaw_encode(samples).tobytes(), marker)
    )


def _frames(receiver: RtpReceiver) -> list[AudioReceived]:
    out = []
    while (event := receiver.next_event()) is not None:
        if isinstance(event, AudioReceived):
            out.append(event)
    return out


def test_rtp_round_trip_and_capture_like_header() -> None:
    data = _pcmu(1, marker=True)
    packet = parse_rtp(data)
    assert (packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc, packet.marker) == (
        0,
        1,
        160,
        SSRC,
        True,
    )
    assert len(packet.payload) == 160 and serialize_rtp(packet) == data


def test_rtp_padding_extension_and_csrcs() -> None:
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 1, 8, 5, 800, 7) + struct.pack("!I", 99)
    extension = struct.pack("!HH", 0xBEDE, 1) + b"\0\0\0\0"
    data = header + extension + b"abcd" + b"\0\0\x03"
    packet = parse_rtp(data)
    assert packet.csrcs == (99,) and packet.payload == b"abcd"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80" * 11,
        b"\x40" + b"\0" * 11,
        b"\x8f" + b"\0" * 11,
        b"\x90" + b"\0" * 11,
        b"\xa0" + b"\0" * 11 + b"\x20",
    ],
)
def test_bad_rtp_is_an_rtp_error(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtp(data)


def test_rtcp_receiver_report_round_trip() -> None:
    report = ReceptionReport(SSRC, 12, -3, 70000, 55, 1, 2)
    packets = parse_rtcp(build_receiver_report(42, (report,)))
    assert packets[0].packet_type == 201 and packets[0].ssrc == 42 and packets[0].reports == (report,)
    with pytest.raises(RtcpError):
        parse_rtcp(build_receiver_report(42, (report,))[:-1])


def test_telephone_event() -> None:
    event = parse_telephone_event(bytes([11, 0x80 | 10, 0x03, 0x20]))
    assert (event.key, event.end, event.volume, event.duration) == ("#", True, 10, 800)


def test_in_order_stream_like_the_capture() -> None:
    receiver = RtpReceiver(
        RtpReceiverConfig(payload_type=0, codec="PCMU", telephone_event_payload_type=101), 0.0
    )
    for seq in range(1, 68):
        receiver.receive_datagram(_pcmu(seq, marker=seq == 1), PEER, seq * 0.02)
    frames = _frames(receiver)
    assert len(frames) == 67 and not any(f.frame.filled for f in frames)
    assert sum(len(f.frame.samples) for f in frames) == 67 * 160
    assert frames[0].frame.timestamp == 160 and receiver.remote == PEER


def test_reorder_loss_fill_duplicates_and_never_blocking() -> None:
    buffer = JitterBuffer(max_wait_s=0.06)
    samples = np.ones(160, dtype=np.int16)
    buffer.push(1, 160, samples, 0.00)
    assert [f.timestamp for f in buffer.pop(0.00)] == [160]
    buffer.push(3, 480, samples, 0.02)
    buffer.push(2, 320, samples, 0.03)  # reordered
    assert [f.timestamp for f in buffer.pop(0.03)] == [320, 480]
    buffer.push(3, 480, samples, 0.04)  # late duplicate
    buffer.push(5, 800, samples, 0.05)  # 4 is lost
    assert buffer.pop(0.06) == []  # still waiting for 4, without blocking
    assert buffer.next_deadline() == pytest.approx(0.11)
    frames = buffer.pop(0.12)
    assert [(f.timestamp, len(f.samples), f.filled) for f in frames] == [(640, 160, True), (800, 160, False)]
    assert not frames[0].samples.any()
    assert (buffer.late_packets, buffer.lost_packets) == (1, 1)


def test_sequence_wraparound() -> None:
    buffer = JitterBuffer()
    samples = np.ones(160, dtype=np.int16)
    for seq in (65534, 65535, 1, 0, 2):
        buffer.push(seq, (seq * 160) % (1 << 32), samples, 0.0)
    assert len(buffer.pop(0.0)) == 5


def test_ssrc_change_flushes_and_restarts() -> None:
    receiver = RtpReceiver(RtpReceiverConfig(payload_type=0, codec="PCMU"), 0.0)
    receiver.receive_datagram(_pcmu(1), PEER, 0.0)
    receiver.receive_datagram(_pcmu(500, ssrc=7), PEER, 0.02)
    receiver.receive_datagram(_pcmu(501, ssrc=7), PEER, 0.04)
    events = []
    while (event := receiver.next_event()) is not None:
        events.append(event)
    assert SsrcChanged(SSRC, 7) in events
    assert len([e for e in events if isinstance(e, AudioReceived)]) == 3


def test_dtmf_reported_once_per_event_and_latching() -> None:
    receiver = RtpReceiver(
        RtpReceiverConfig(payload_type=0, codec="PCMU", telephone_event_payload_type=101), 0.0
    )
    for index, flags in enumerate((0x0A, 0x0A, 0x8A, 0x8A, 0x8A)):
        payload = struct.pack("!BBH", 5, flags, 160 * (index + 1))
        receiver.receive_datagram(
            serialize_rtp(RtpPacket(101, 10 + index, 8000, SSRC, payload)), PEER, 0.1 * index
        )
    receiver.receive_datagram(_pcmu(1), ("10.9.9.9", 5), 0.6)  # another source while latched: ignored
    events = []
    while (event := receiver.next_event()) is not None:
        events.append(event)
    assert events == [StreamLatched(PEER), DtmfReceived("5", 8000)]
    assert receiver.ignored_packets == 1


def test_media_timeout_and_l16() -> None:
    receiver = RtpReceiver(RtpReceiverConfig(payload_type=96, codec="L16", media_timeout_s=5.0), 0.0)
    receiver.receive_datagram(
        serialize_rtp(
            RtpPacket(96, 1, 0, 1, struct.pack(">2h", 1000, -2)),
        ),
        PEER,
        1.0,
    )
    assert list(_frames(receiver)[0].frame.samples) == [1000, -2]
    assert receiver.get_timer() == pytest.approx(6.0)
    receiver.handle_timer(6.0)
    assert receiver.next_event() == MediaTimeout(5.0)
    assert decode_payload("PCMA", b"\xd5").tolist() == [8]


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_rtp_rtcp_parsers_raise_only_rtp_errors(data: bytes) -> None:
    for call in (
        lambda: parse_rtp(data),
        lambda: parse_rtcp(data),
        lambda: parse_rtp(b"\x80" + data),
        lambda: parse_rtcp(b"\x80\xc9" + data),
    ):
        try:
            call()
        except RtpError:
            pass
    receiver = RtpReceiver(
        RtpReceiverConfig(payload_type=0, codec="PCMU", telephone_event_payload_type=101), 0.0
    )
    receiver.receive_datagram(data, PEER, 0.0)
    receiver.receive_datagram(b"\x80\x65" + data, PEER, 0.0)
    receiver.handle_timer(100.0)


@settings(max_examples=80, deadline=None)
@given(st.permutations(list(range(1, 30))), st.sets(st.integers(min_value=1, max_value=29), max_size=8))
def test_fuzz_jitter_buffer_keeps_audio_time_exact(order: list[int], lost: set[int]) -> None:
    buffer = JitterBuffer(max_wait_s=0.06, max_packets=1000)
    now = 0.0
    released = []
    for seq in order:
        now += 0.001
        if seq not in lost:
            buffer.push(seq, seq * 160, np.ones(160, dtype=np.int16), now)
        released += buffer.pop(now)
    released += buffer.flush()
    timestamps = [f.timestamp for f in released]
    assert timestamps == sorted(timestamps)
    kept = [s for s in range(1, 30) if s not in lost]
    if kept:
        total = sum(len(f.samples) for f in released)
        first = min(f.timestamp for f in released)
        assert total == kept[-1] * 160 + 160 - first


def test_port_allocator_even_ports_round_robin_and_exhaustion() -> None:
    from protocols.rtp.ports import PortAllocator, PortsExhausted

    allocator = PortAllocator(20001, 20007)
    assert allocator.capacity == 3
    ports = [allocator.allocate() for _ in range(3)]
    assert ports == [20002, 20004, 20006] and allocator.in_use == 3
    with pytest.raises(PortsExhausted) as info:
        allocator.allocate()
    assert info.value.sip_status == 503
    allocator.release(20004)
    allocator.release(20004)
    assert allocator.allocate() == 20004
    for port in ports:
        allocator.release(port)
    assert allocator.in_use == 0


def test_rtp_endpoint_over_loopback_releases_its_port() -> None:
    import asyncio
    import socket

    from protocols.rtp.ports import PortAllocator
    from protocols.rtp.transport import open_rtp_endpoint

    async def scenario() -> None:
        allocator = PortAllocator(41000, 41100)
        events: list[object] = []
        endpoint = await open_rtp_endpoint(
            "127.0.0.1",
            allocator,
            RtpReceiverConfig(payload_type=0, codec="PCMU", telephone_event_payload_type=101),
            events.append,
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for seq in range(1, 6):
                sender.sendto(_pcmu(seq), ("127.0.0.1", endpoint.port))
            sender.sendto(
                serialize_rtp(RtpPacket(101, 6, 960, SSRC, struct.pack("!BBH", 11, 10, 160))),
                ("127.0.0.1", endpoint.port),
            )
            for _ in range(100):
                if len([e for e in events if isinstance(e, (AudioReceived, DtmfReceived))]) >= 6:
                    break
                await asyncio.sleep(0.01)
        endpoint.close()
        assert len([e for e in events if isinstance(e, AudioReceived)]) == 5
        assert DtmfReceived("#", 960) in events
        assert allocator.in_use == 0

    asyncio.run(scenario())
