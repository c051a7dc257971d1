"""Errors of the SIP layer; each carries the status line that answers the offending request."""

from __future__ import annotations

from typing import ClassVar

from protocols.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "BadRequest",
    "SipError",
    "SipLocalError",
    "TruncatedMessage",
]


class SipError(RemoteProtocolError):
    """Root of the SIP errors a peer causes; ``status``/``reason`` answer the request (when one can).

    Overload is not a SIP error: the transport maps :class:`~protocols.errors.OverloadedError` to 503 with
    Retry-After.
    """

    code: ClassVar[str] = "sip_error"
    status: ClassVar[int] = 400
    reason: ClassVar[str] = "Bad Request"


class BadRequest(SipError):
    """A message that does not parse (RFC 3261 §7, §25): 400 when enough of it is readable to answer."""

    code: ClassVar[str] = "sip_bad_request"


class TruncatedMessage(BadRequest):
    """The message ends before its header block or before Content-Length body bytes."""

    code: ClassVar[str] = "sip_truncated_message"


class SipLocalError(LocalProtocolError):
    """xlgate misused the SIP core (e.g. answered a dialog twice): a bug of ours."""

    code: ClassVar[str] = "sip_local_error"
