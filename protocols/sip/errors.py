"""Errors of the SIP layer; each carries the status line that answers the offending request."""

from __future__ import annotations

from typing import ClassVar

from protocols.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "BadRequest",
    "MessageTooLarge",
    "SipError",
    "SipLocalError",
    "TooManyHeaders",
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


class MessageTooLarge(SipError):
    """A message over the server's ``max_message_bytes``: 513 Message Too Large (RFC 3261 §21.5.11)."""

    code: ClassVar[str] = "sip_message_too_large"
    status: ClassVar[int] = 513
    reason: ClassVar[str] = "Message Too Large"
    limit: ClassVar[str | None] = "sip_message_bytes"


class TooManyHeaders(BadRequest):
    """More header lines than the server's ``max_headers``: 400 (RFC 3261 has no more specific code)."""

    code: ClassVar[str] = "sip_too_many_headers"
    reason: ClassVar[str] = "Too Many Headers"
    limit: ClassVar[str | None] = "sip_headers"


class SipLocalError(LocalProtocolError):
    """xlgate misused the SIP core (e.g. answered a dialog twice): a bug of ours."""

    code: ClassVar[str] = "sip_local_error"
