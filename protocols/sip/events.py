"""Values and events of the SIP server core.

Flows name where bytes come from and go to: UDP flows are (address), TCP flows carry the id of their
connection as well, so a reply goes back on the connection the request came on (RFC 3261 §18.2.2).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from protocols.sip.codec import SipRequest

__all__ = [
    "Flow",
    "InviteReceived",
    "LimitExceeded",
    "Outgoing",
    "ReinviteReceived",
    "RequestRefused",
    "SessionConfirmed",
    "SessionTerminated",
    "SipEvent",
    "SipTransport",
    "TerminationReason",
]


class SipTransport(enum.StrEnum):
    """The transport a message travelled on."""

    UDP = "UDP"
    TCP = "TCP"
    TLS = "TLS"  # SIP over TLS on TCP (RFC 3261 §26.2)

    @property
    def reliable(self) -> bool:
        """True for stream transports (no retransmissions, RFC 3261 §17)."""
        return self is not SipTransport.UDP


@dataclass(frozen=True, slots=True)
class Flow:
    """Where a message came from (and where its answers go)."""

    transport: SipTransport
    remote: tuple[str, int]
    connection_id: int | None = None  # TCP and TLS only


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Bytes to send on a flow."""

    flow: Flow
    data: bytes


class TerminationReason(enum.StrEnum):
    """Why a session ended."""

    BYE = "bye"  # the peer hung up
    CANCELLED = "cancelled"  # CANCEL before we answered
    REJECTED = "rejected"  # we answered the INVITE with a failure
    ACK_TIMEOUT = "ack_timeout"  # no ACK for our 2xx within 64*T1 (RFC 3261 §13.3.1.4)
    SESSION_EXPIRED = "session_expired"  # no refresh within Session-Expires (RFC 4028 §10)
    TRANSPORT_LOST = "transport_lost"  # the TCP connection of the dialog closed
    LOCAL_HANGUP = "local_hangup"  # we sent BYE (drain, engine failure, MRCP connection lost)


@dataclass(frozen=True, slots=True)
class InviteReceived:
    """A new session is offered; answer it with ``accept`` or ``reject`` (``dialog_id`` names it)."""

    dialog_id: str
    request: SipRequest
    offer: bytes
    flow: Flow


@dataclass(frozen=True, slots=True)
class ReinviteReceived:
    """A re-INVITE with a new offer in an established dialog; answer with ``accept`` or ``reject``."""

    dialog_id: str
    request: SipRequest
    offer: bytes


@dataclass(frozen=True, slots=True)
class SessionConfirmed:
    """The ACK for our 2xx arrived: the session is up."""

    dialog_id: str


@dataclass(frozen=True, slots=True)
class SessionTerminated:
    """The session is over; release everything it held."""

    dialog_id: str
    reason: TerminationReason


@dataclass(frozen=True, slots=True)
class LimitExceeded:
    """A peer went over a configured limit (``limit`` names it); the message was refused."""

    limit: str
    flow: Flow


@dataclass(frozen=True, slots=True)
class RequestRefused:
    """A request was refused before it reached a dialog; the core kept no state for it. Reported so that
    the owner can count it.

    ``reason``: ``address`` (outside the allow-list: 403, or nothing for an ACK), or, for an INVITE under
    digest authentication (401 with a challenge), ``missing`` (no credentials: the normal first leg of
    every authenticated call), ``malformed``, ``invalid`` or ``expired`` (a stale nonce).
    """

    flow: Flow
    method: str
    reason: str


SipEvent = (
    LimitExceeded | RequestRefused | InviteReceived | ReinviteReceived | SessionConfirmed | SessionTerminated
)
