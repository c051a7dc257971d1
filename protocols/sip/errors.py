"""Errors of the SIP layer; each carries the status line that answers the offending request."""

from __future__ import annotations

from typing import ClassVar

from protocols.errors import LocalProtocolError, OverloadedError, RemoteProtocolError

__all__ = [
    "BadRequest",
    "SipError",
    "SipLocalError",
    "SipOverloaded",
    "SipRemoteError",
    "TruncatedMessage",
]


class SipError(RemoteProtocolError):
    """Root of the SIP errors a peer causes; ``status``/``reason`` answer the request (when one can)."""

    code: ClassVar[str] = "sip_error"
    status: ClassVar[int] = 400
    reason: ClassVar[str] = "Bad Request"


SipRemoteError = SipError


class BadRequest(SipError):
    """A message that does not parse (RFC 3261 §7, §25): 400 when enough of it is readable to answer."""

    code: ClassVar[str] = "sip_bad_request"


class TruncatedMessage(BadRequest):
    """The message ends before its header block or before Content-Length body bytes."""

    code: ClassVar[str] = "sip_truncated_message"


class SipLocalError(LocalProtocolError):
    """xlgate misused the SIP core (e.g. answered a dialog twice): a bug of ours."""

    code: ClassVar[str] = "sip_local_error"


class SipOverloaded(OverloadedError):
    """At capacity: 503 Service Unavailable with Retry-After (RFC 3261 §21.5.4)."""

    code: ClassVar[str] = "sip_overloaded"
