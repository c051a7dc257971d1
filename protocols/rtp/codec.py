"""RTP packets (RFC 3550 §5.1), RTCP packets (RFC 3550 §6) and telephone-events (RFC 4733 §2.3).

Parsing checks every length against the datagram, so a truncated or hostile packet raises
:class:`RtpError` / :class:`RtcpError`, never ``struct.error`` or ``IndexError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from protocols.rtp.errors import RtcpError, RtpError

__all__ = [
    "DTMF_KEYS",
    "ReceptionReport",
    "RtcpPacket",
    "RtpPacket",
    "TelephoneEvent",
    "build_receiver_report",
    "is_rtcp",
    "parse_rtcp",
    "parse_rtp",
    "parse_telephone_event",
    "serialize_rtp",
]

DTMF_KEYS = "0123456789*#ABCD"  # RFC 4733 §3.2: events 0-15


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet; ``payload`` excludes header, CSRCs, extension and padding."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrcs: tuple[int, ...] = ()


def is_rtcp(data: bytes) -> bool:
    """True when a datagram on a muxed port is RTCP (RFC 5761 §4: packet types 192-223)."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse an RTP packet.

    Raises:
        RtpError: shorter than its header, not version 2, or inconsistent lengths.
    """
    if len(data) < 12:
        raise RtpError(f"RTP packet of {len(data)} bytes is shorter than the 12-byte header")
    first, second, sequence, timestamp, ssrc = struct.unpack_from("!BBHII", data)
    if first >> 6 != 2:
        raise RtpError(f"RTP version {first >> 6}, expected 2")
    csrc_count = first & 0x0F
    offset = 12 + 4 * csrc_count
    if len(data) < offset:
        raise RtpError("RTP packet ends inside its CSRC list")
    csrcs = struct.unpack_from(f"!{csrc_count}I", data, 12)
    if first & 0x10:  # header extension (RFC 3550 §5.3.1)
        if len(data) < offset + 4:
            raise RtpError("RTP packet ends inside its header extension")
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
        if len(data) < offset:
            raise RtpError("RTP header extension longer than the packet")
    end = len(data)
    if first & 0x20:  # padding: the last byte counts the padding bytes
        padding = data[-1]
        if padding == 0 or end - padding < offset:
            raise RtpError(f"invalid RTP padding length {padding}")
        end -= padding
    return RtpPacket(
        payload_type=second & 0x7F,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=bytes(data[offset:end]),
        marker=bool(second & 0x80),
        csrcs=tuple(csrcs),
    )


def serialize_rtp(packet: RtpPacket) -> bytes:
    """The wire bytes of ``packet`` (no extension, no padding)."""
    first = 0x80 | len(packet.csrcs)
    second = (0x80 if packet.marker else 0) | (packet.payload_type & 0x7F)
    header = struct.pack(
        "!BBHII", first, second, packet.sequence & 0xFFFF, packet.timestamp & 0xFFFFFFFF, packet.ssrc
    )
    return header + b"".join(struct.pack("!I", c) for c in packet.csrcs) + packet.payload


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """An RFC 4733 named event (DTMF key when ``event`` < 16)."""

    event: int
    end: bool
    volume: int
    duration: int

    @property
    def key(self) -> str | None:
        """The DTMF key, or None for other events."""
        return DTMF_KEYS[self.event] if self.event < len(DTMF_KEYS) else None


def parse_telephone_event(payload: bytes) -> TelephoneEvent:
    """Parse a telephone-event payload (the first 4-byte block; redundancy blocks are ignored).

    Raises:
        RtpError: shorter than 4 bytes.
    """
    if len(payload) < 4:
        raise RtpError(f"telephone-event payload of {len(payload)} bytes, expected 4")
    event, flags, duration = struct.unpack_from("!BBH", payload)
    return TelephoneEvent(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)


@dataclass(frozen=True, slots=True)
class ReceptionReport:
    """One report block of SR/RR (RFC 3550 §6.4.1)."""

    ssrc: int
    fraction_lost: int
    cumulative_lost: int
    highest_sequence: int
    jitter: int
    last_sr: int
    delay_since_last_sr: int


@dataclass(frozen=True, slots=True)
class RtcpPacket:
    """One packet of an RTCP compound: type, sender SSRC, reports, and the raw body."""

    packet_type: int  # 200 SR, 201 RR, 202 SDES, 203 BYE, 204 APP
    count: int
    ssrc: int | None
    reports: tuple[ReceptionReport, ...]
    body: bytes


def _reports(data: bytes, offset: int, count: int) -> tuple[ReceptionReport, ...]:
    out: list[ReceptionReport] = []
    for index in range(count):
        start = offset + 24 * index
        if len(data) < start + 24:
            raise RtcpError("RTCP report block truncated")
        ssrc, lost_word, highest, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", data, start)
        cumulative = lost_word & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 1 << 24
        out.append(ReceptionReport(ssrc, lost_word >> 24, cumulative, highest, jitter, lsr, dlsr))
    return tuple(out)


def parse_rtcp(data: bytes) -> tuple[RtcpPacket, ...]:
    """Parse an RTCP compound packet.

    Raises:
        RtcpError: a packet is not version 2, or a length runs past the datagram.
    """
    packets: list[RtcpPacket] = []
    offset = 0
    if len(data) < 4:
        raise RtcpError(f"RTCP datagram of {len(data)} bytes")
    while offset < len(data):
        if len(data) < offset + 4:
            raise RtcpError("RTCP header truncated")
        first, packet_type, words = struct.unpack_from("!BBH", data, offset)
        if first >> 6 != 2:
            raise RtcpError(f"RTCP version {first >> 6}, expected 2")
        end = offset + 4 * (words + 1)
        if end > len(data):
            raise RtcpError("RTCP packet length runs past the datagram")
        count = first & 0x1F
        body = data[offset + 4 : end]
        ssrc = (
            struct.unpack_from("!I", body)[0]
            if len(body) >= 4 and packet_type in {200, 201, 203, 204}
            else None
        )
        reports: tuple[ReceptionReport, ...] = ()
        if packet_type == 200:
            reports = _reports(body, 24, count)
        elif packet_type == 201:
            reports = _reports(body, 4, count)
        packets.append(RtcpPacket(packet_type, count, ssrc, reports, bytes(body)))
        offset = end
    return tuple(packets)


def build_receiver_report(ssrc: int, reports: tuple[ReceptionReport, ...]) -> bytes:
    """An RTCP RR (RFC 3550 §6.4.2) from ``ssrc`` carrying ``reports`` (at most 31)."""
    reports = reports[:31]
    header = struct.pack("!BBHI", 0x80 | len(reports), 201, 1 + 6 * len(reports), ssrc)
    blocks = b"".join(
        struct.pack(
            "!IIIIII",
            r.ssrc,
            ((r.fraction_lost & 0xFF) << 24) | (r.cumulative_lost & 0xFFFFFF),
            r.highest_sequence & 0xFFFFFFFF,
            r.jitter & 0xFFFFFFFF,
            r.last_sr & 0xFFFFFFFF,
            r.delay_since_last_sr & 0xFFFFFFFF,
        )
        for r in reports
    )
    return header + blocks
