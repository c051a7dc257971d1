"""The receive side of one RTP session (RFC 3550), sans-I/O.

Theory of operation: ``receive_datagram(data, source, now)`` takes RTP (and RTCP, muxed or not);
events come out of ``next_event``: :class:`AudioReceived` (decoded PCM through the jitter buffer),
:class:`DtmfReceived` (RFC 4733), :class:`SsrcChanged`, :class:`StreamLatched` and
:class:`MediaTimeout`. The first valid packet latches the peer's address (symmetric RTP through NAT);
packets from elsewhere are ignored until the latched source is silent for ``relatch_after_s``.
Garbage datagrams are counted and dropped, never raised. ``get_timer`` covers the jitter buffer's loss
decision and the media timeout; ``handle_timer(now)`` fires them.

Rate limit: the latched source's packets pass a token bucket of ``max_packets_per_s`` (burst: one second
of them); packets beyond it are dropped and counted in ``rate_limited_packets``, never queued, so a flood
costs a counter increment per packet and never delays the stream. 20 ms audio is 50 packets a second,
10 ms audio 100; RFC 4733 events add up to 50 while a key is held.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from protocols.audio.g711 import alaw_decode, mulaw_decode
from protocols.rtp.codec import RtpPacket, is_rtcp, parse_rtcp, parse_rtp, parse_telephone_event
from protocols.rtp.errors import RtpError
from protocols.rtp.events import (
    AudioReceived,
    DtmfReceived,
    MediaTimeout,
    RtpEvent,
    SsrcChanged,
    StreamLatched,
)
from protocols.rtp.jitter import JitterBuffer

__all__ = ["RtpReceiver", "RtpReceiverConfig", "decode_payload"]


def decode_payload(codec: str, payload: bytes) -> npt.NDArray[np.int16]:
    """Decode a PCMU, PCMA or L16 (network byte order, RFC 3551 §4.5.11) payload to int16 PCM.

    Raises:
        RtpError: unknown codec or an odd-length L16 payload.
    """
    name = codec.upper()
    if name == "PCMU":
        return mulaw_decode(payload)
    if name == "PCMA":
        return alaw_decode(payload)
    if name == "L16":
        if len(payload) % 2:
            raise RtpError(f"L16 payload of odd length {len(payload)}")
        return np.frombuffer(payload, dtype=">i2").astype(np.int16)
    raise RtpError(f"no decoder for {codec!r}")


@dataclass(frozen=True, slots=True)
class RtpReceiverConfig:
    """What was negotiated in SDP, plus receive policy."""

    payload_type: int
    codec: str  # PCMU, PCMA or L16
    clock_rate_hz: int = 8000
    telephone_event_payload_type: int | None = None
    media_timeout_s: float = 30.0
    relatch_after_s: float = 2.0
    jitter_max_wait_s: float = 0.06
    max_packets_per_s: float = 200.0


class RtpReceiver:
    """One RTP session's receive side."""

    def __init__(self, config: RtpReceiverConfig, now: float) -> None:
        """Args:
        config: negotiated payload types and policy.
        now: the session start (the media timeout counts from here until the first packet).
        """
        self.config = config
        self.buffer = JitterBuffer(max_wait_s=config.jitter_max_wait_s)
        self.remote: tuple[str, int] | None = None
        self.ssrc: int | None = None
        self.invalid_datagrams = 0
        self.ignored_packets = 0
        self.rtcp_packets = 0
        self.packets = 0
        self.rate_limited_packets = 0
        self._tokens = config.max_packets_per_s
        self._tokens_at_s = now
        self._events: deque[RtpEvent] = deque()
        self._last_packet_s = now
        self._dtmf_timestamps: deque[int] = deque(maxlen=16)
        self._timed_out = False
        self.jitter_s = 0.0  # interarrival jitter estimate (RFC 3550 §6.4.1, A.8)
        self._transit: float | None = None

    def next_event(self) -> RtpEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The earliest deadline: a jitter-buffer loss decision or the media timeout."""
        deadlines = [d for d in (self.buffer.next_deadline(),) if d is not None]
        if not self._timed_out:
            deadlines.append(self._last_packet_s + self.config.media_timeout_s)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Release frames whose wait ran out; report a media timeout once."""
        self._release(now)
        if not self._timed_out and now - self._last_packet_s >= self.config.media_timeout_s:
            self._timed_out = True
            self._events.append(MediaTimeout(self.config.media_timeout_s))

    def receive_datagram(self, data: bytes, source: tuple[str, int], now: float) -> None:
        """One datagram from the media port."""
        if is_rtcp(data):
            try:
                parse_rtcp(data)
                self.rtcp_packets += 1
            except RtpError:
                self.invalid_datagrams += 1
            return
        try:
            packet = parse_rtp(data)
        except RtpError:
            self.invalid_datagrams += 1
            return
        if not self._latch(packet, source, now):
            self.ignored_packets += 1
            return
        if not self._admit(now):
            self.rate_limited_packets += 1
            return
        self.packets += 1
        self._last_packet_s = now
        self._timed_out = False
        if packet.payload_type == self.config.telephone_event_payload_type:
            self._telephone_event(packet)
        elif packet.payload_type == self.config.payload_type:
            try:
                samples = decode_payload(self.config.codec, packet.payload)
            except RtpError:
                self.invalid_datagrams += 1
                return
            self._update_jitter(packet.timestamp, now)
            self.buffer.push(packet.sequence, packet.timestamp, samples, now)
        else:
            self.ignored_packets += 1  # comfort noise or a payload type we did not negotiate
        self._release(now)

    def flush(self) -> None:
        """Release everything still held (end of session)."""
        for frame in self.buffer.flush():
            self._events.append(AudioReceived(frame))

    def _admit(self, now: float) -> bool:
        """Token bucket: refill at ``max_packets_per_s``, capped at one second's worth; take one."""
        rate = self.config.max_packets_per_s
        self._tokens = min(rate, self._tokens + (now - self._tokens_at_s) * rate)
        self._tokens_at_s = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _update_jitter(self, timestamp: int, now: float) -> None:
        # J += (|D| - J) / 16 over the relative transit time (RFC 3550 A.8), kept in seconds.
        transit = now - timestamp / self.config.clock_rate_hz
        if self._transit is not None:
            delta = abs(transit - self._transit)
            if delta < 1.0:  # a timestamp jump (new talkspurt base, wrap) is not jitter
                self.jitter_s += (delta - self.jitter_s) / 16
        self._transit = transit

    def _latch(self, packet: RtpPacket, source: tuple[str, int], now: float) -> bool:
        if self.remote is None or (
            source != self.remote and now - self._last_packet_s >= self.config.relatch_after_s
        ):
            self.remote = source
            self._events.append(StreamLatched(source))
        elif source != self.remote:
            return False
        if self.ssrc is None:
            self.ssrc = packet.ssrc
        elif packet.ssrc != self.ssrc:
            self.flush()
            self.buffer.reset()
            self._events.append(SsrcChanged(self.ssrc, packet.ssrc))
            self.ssrc = packet.ssrc
        return True

    def _telephone_event(self, packet: RtpPacket) -> None:
        try:
            event = parse_telephone_event(packet.payload)
        except RtpError:
            self.invalid_datagrams += 1
            return
        if event.key is None or packet.timestamp in self._dtmf_timestamps:
            return  # all packets of one event share its timestamp (RFC 4733 §2.5.1.2)
        self._dtmf_timestamps.append(packet.timestamp)
        self._events.append(DtmfReceived(event.key, packet.timestamp))

    def _release(self, now: float) -> None:
        for frame in self.buffer.pop(now):
            self._events.append(AudioReceived(frame))
