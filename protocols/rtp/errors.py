"""Errors of the RTP layer. A bad packet is dropped and counted; it never ends a session."""

from __future__ import annotations

from typing import ClassVar

from protocols.errors import RemoteProtocolError

__all__ = ["RtcpError", "RtpError"]


class RtpError(RemoteProtocolError):
    """A datagram that is not a valid RTP packet (RFC 3550 §5.1)."""

    code: ClassVar[str] = "rtp_invalid_packet"


class RtcpError(RtpError):
    """A datagram that is not a valid RTCP compound packet (RFC 3550 §6.1)."""

    code: ClassVar[str] = "rtcp_invalid_packet"
