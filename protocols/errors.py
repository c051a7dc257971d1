"""The one error root of xlgate and the splits every protocol shares.

Every error the gateway raises on purpose derives from :class:`GatewayError`. Each class carries its
stable snake_case ``code`` (sent to peers in JSON bodies) and, where it has one, its reply on each wire as
class attributes, so a transport maps an error to a reply by reading attributes, never by a table of
``isinstance`` checks (aioquic does the same for QUIC error codes).

Protocols split :class:`ProtocolError` as h11 does: :class:`LocalProtocolError` is our own misuse of a
protocol object (a bug in xlgate, never sent to the peer verbatim), :class:`RemoteProtocolError` is the
peer's fault and is answered on the wire.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "GatewayError",
    "LocalProtocolError",
    "OverloadedError",
    "ProtocolError",
    "RemoteProtocolError",
]


class GatewayError(Exception):
    """Root of every error xlgate raises on purpose."""

    code: ClassVar[str] = "internal_error"
    # The configured limit a peer went over, when that is what this error is (a closed set of names the
    # gateway counts in ``xlgate_limit_exceeded_total``); None for every other error.
    limit: ClassVar[str | None] = None


class ProtocolError(GatewayError):
    """A protocol's rules were broken, by us or by the peer."""

    code: ClassVar[str] = "protocol_error"


class LocalProtocolError(ProtocolError):
    """We misused a protocol object (a bug on our side); never the peer's fault."""

    code: ClassVar[str] = "local_protocol_error"


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the connection answers with an error reply."""

    code: ClassVar[str] = "remote_protocol_error"


class OverloadedError(GatewayError):
    """The gateway has no capacity for this request now; the peer should retry later.

    Wire mappings: SIP ``503 Service Unavailable`` with ``Retry-After`` (RFC 3261 §21.5.4), WebSocket close
    ``1013 Try Again Later`` (IANA WebSocket close code registry), gRPC ``RESOURCE_EXHAUSTED``.
    """

    code: ClassVar[str] = "overloaded"
    sip_status: ClassVar[int] = 503
    ws_close_code: ClassVar[int] = 1013
    grpc_status: ClassVar[str] = "RESOURCE_EXHAUSTED"
    retry_after_s: float = 5.0  # class default; an instance may carry its own estimate

    def __init__(
        self, message: str = "the gateway is at capacity", *, retry_after_s: float | None = None
    ) -> None:
        """Args:
        message: human-readable reason, safe to show the peer.
        retry_after_s: how long the peer should wait; the class default when None.
        """
        super().__init__(message)
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s
