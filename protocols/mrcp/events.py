"""MRCPv2 messages (RFC 6787 §5) as immutable values, and the events of the server connection.

A message is a request, a response or an event; all three share ``headers`` (an ordered tuple of
``(name, value)`` pairs, names as received) and ``body`` (bytes). Header lookup is case-insensitive
(RFC 6787 §6: header field names are case-insensitive).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from protocols.mrcp.errors import MrcpError

__all__ = [
    "ConnectionClosed",
    "Headers",
    "MrcpEvent",
    "MrcpMessage",
    "MrcpRequest",
    "MrcpResponse",
    "ProtocolViolation",
    "RequestReceived",
    "RequestState",
    "header_value",
]

Headers = tuple[tuple[str, str], ...]


def header_value(headers: Headers, name: str) -> str | None:
    """The value of the first header called ``name`` (case-insensitive), or None."""
    lowered = name.lower()
    for key, value in headers:
        if key.lower() == lowered:
            return value
    return None


class RequestState(enum.StrEnum):
    """request-state of responses and events (RFC 6787 §5.3)."""

    COMPLETE = "COMPLETE"
    IN_PROGRESS = "IN-PROGRESS"
    PENDING = "PENDING"


@dataclass(frozen=True, slots=True)
class MrcpRequest:
    """``MRCP/2.0 <length> <method> <request-id>`` (RFC 6787 §5.2)."""

    method: str
    request_id: int
    headers: Headers = ()
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        return header_value(self.headers, name)

    @property
    def channel_id(self) -> str | None:
        """The Channel-Identifier header (RFC 6787 §6.2.1)."""
        return header_value(self.headers, "Channel-Identifier")


@dataclass(frozen=True, slots=True)
class MrcpResponse:
    """``MRCP/2.0 <length> <request-id> <status-code> <request-state>`` (RFC 6787 §5.3)."""

    request_id: int
    status_code: int
    request_state: RequestState
    headers: Headers = ()
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        return header_value(self.headers, name)


@dataclass(frozen=True, slots=True)
class MrcpEvent:
    """``MRCP/2.0 <length> <event-name> <request-id> <request-state>`` (RFC 6787 §5.5)."""

    event_name: str
    request_id: int
    request_state: RequestState
    headers: Headers = ()
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        return header_value(self.headers, name)


MrcpMessage = MrcpRequest | MrcpResponse | MrcpEvent


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A complete, well-framed request arrived on the connection."""

    request: MrcpRequest


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer sent something invalid; ``error.fatal`` says whether the connection must close."""

    error: MrcpError


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the connection (after every complete message was delivered)."""
