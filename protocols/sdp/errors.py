"""Errors of SDP parsing and negotiation; each carries the SIP status that answers the INVITE."""

from __future__ import annotations

from typing import ClassVar

from protocols.errors import RemoteProtocolError

__all__ = ["NotAcceptable", "SdpError", "SdpSyntaxError", "SdpTooLarge"]


class SdpError(RemoteProtocolError):
    """The peer's session description cannot be used."""

    code: ClassVar[str] = "sdp_error"
    sip_status: ClassVar[int] = 488
    sip_reason: ClassVar[str] = "Not Acceptable Here"


class SdpSyntaxError(SdpError):
    """The body is not valid SDP (RFC 4566 §5): answered 400 Bad Request."""

    code: ClassVar[str] = "sdp_syntax_error"
    sip_status: ClassVar[int] = 400
    sip_reason: ClassVar[str] = "Bad Request"


class SdpTooLarge(SdpError):
    """An SDP body over the server's limit: 413 Request Entity Too Large (RFC 3261 §21.4.11)."""

    code: ClassVar[str] = "sdp_too_large"
    sip_status: ClassVar[int] = 413
    sip_reason: ClassVar[str] = "Request Entity Too Large"
    limit: ClassVar[str | None] = "sdp_bytes"


class NotAcceptable(SdpError):
    """A valid offer with nothing we can serve (no speechrecog resource, no common codec): 488."""

    code: ClassVar[str] = "sdp_not_acceptable"
