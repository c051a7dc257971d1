"""Events of the RTP receiver."""

from __future__ import annotations

from dataclasses import dataclass

from protocols.rtp.jitter import AudioFrame

__all__ = ["AudioReceived", "DtmfReceived", "MediaTimeout", "RtpEvent", "SsrcChanged", "StreamLatched"]


@dataclass(frozen=True, slots=True)
class AudioReceived:
    """Decoded 16-bit PCM at the stream's clock rate, in order (gaps filled with silence)."""

    frame: AudioFrame


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    """An RFC 4733 DTMF key, reported once, at the first packet of its event (for barge-in)."""

    key: str
    timestamp: int


@dataclass(frozen=True, slots=True)
class SsrcChanged:
    """The sender started a new stream (a new SSRC, RFC 3550 §8.2); the buffer was flushed and reset."""

    old_ssrc: int
    new_ssrc: int


@dataclass(frozen=True, slots=True)
class StreamLatched:
    """Media will be answered/expected at this source address (RTP latching for NAT'd peers)."""

    address: tuple[str, int]


@dataclass(frozen=True, slots=True)
class MediaTimeout:
    """No RTP arrived for ``timeout_s``; the session owner decides whether to end the session."""

    timeout_s: float


RtpEvent = AudioReceived | DtmfReceived | SsrcChanged | StreamLatched | MediaTimeout
