"""One MRCPv2 control connection (RFC 6787 §4.2), server side, sans-I/O.

Theory of operation: bytes in (``receive_data``), events out (``next_event``); messages in (``send``),
bytes out (``data_to_send``). The connection only frames and validates; which channel a request belongs
to is the caller's business (several channels share one connection with ``a=connection:existing``, and
requests of different channels are pipelined on it). A framing error is fatal: the byte stream has lost
its message boundaries, so the connection reports a fatal :class:`ProtocolViolation` and the transport
closes it. A request without Channel-Identifier is answered 406 and the stream goes on. Limits: a message
over ``max_message_bytes`` is answered 504 (when its start line named the request) and closes the
connection; one with more than ``max_headers`` header lines is answered 504 and the stream goes on. Both
are reported as :class:`ProtocolViolation` events whose error names the ``limit``.
"""

from __future__ import annotations

from collections import deque

from protocols.mrcp.codec import DEFAULT_MAX_HEADERS, DEFAULT_MAX_MESSAGE_BYTES, MessageReader, serialize
from protocols.mrcp.errors import (
    MalformedMessage,
    MandatoryHeaderMissing,
    MessageTooLarge,
    MrcpError,
    MrcpRemoteError,
    TooManyHeaders,
)
from protocols.mrcp.events import (
    ConnectionClosed,
    MrcpMessage,
    MrcpRequest,
    MrcpResponse,
    ProtocolViolation,
    RequestReceived,
    RequestState,
)

__all__ = ["MrcpServerConnection"]

ConnectionEvent = RequestReceived | ProtocolViolation | ConnectionClosed


class MrcpServerConnection:
    """The server end of one MRCP TCP connection."""

    def __init__(
        self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_headers: int = DEFAULT_MAX_HEADERS
    ) -> None:
        """Args:
        max_message_bytes: the largest message-length accepted (larger is a fatal error).
        max_headers: the most header lines a message may have (more is answered 504).
        """
        self._reader = MessageReader(max_message_bytes=max_message_bytes, max_headers=max_headers)
        self._events: deque[ConnectionEvent] = deque()
        self._out = bytearray()
        self.closed = False

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` means the peer closed its side."""
        if self.closed:
            return
        if not data:
            self.closed = True
            try:
                self._reader.close()
            except MalformedMessage as exc:
                self._events.append(ProtocolViolation(exc))
            self._events.append(ConnectionClosed())
            return
        self._reader.feed(data)
        while True:
            try:
                message = self._reader.next_message()
            except MalformedMessage as exc:
                if isinstance(exc, MessageTooLarge):
                    self._refuse(exc.request_id, exc)
                self._events.append(ProtocolViolation(exc))
                self.closed = True
                return
            except MrcpRemoteError as exc:  # a well-framed message with bad content: report, go on
                if isinstance(exc, TooManyHeaders):
                    self._refuse(exc.request_id, exc)
                self._events.append(ProtocolViolation(exc))
                continue
            if message is None:
                return
            if not isinstance(message, MrcpRequest):
                self._events.append(ProtocolViolation(MalformedMessage("a client sent a response or event")))
                continue
            if message.channel_id is None:
                self.send_error(message, MandatoryHeaderMissing("Channel-Identifier is missing"))
                continue
            self._events.append(RequestReceived(message))

    def next_event(self) -> ConnectionEvent | None:
        """The next event, or None when all received bytes are consumed."""
        return self._events.popleft() if self._events else None

    def send(self, message: MrcpMessage) -> None:
        """Queue a message for the peer."""
        self._out += serialize(message)

    def send_error(self, request: MrcpRequest, error: MrcpError) -> None:
        """Answer ``request`` with the error's status code (and Completion-Cause if it has one)."""
        headers: list[tuple[str, str]] = []
        if request.channel_id is not None:
            headers.append(("Channel-Identifier", request.channel_id))
        if error.completion_cause is not None:
            headers.append(("Completion-Cause", error.completion_cause))
        self.send(MrcpResponse(request.request_id, error.status_code, RequestState.COMPLETE, tuple(headers)))

    def _refuse(self, request_id: int | None, error: MrcpError) -> None:
        """Answer a request we could not read whole with the error's status code (when it named its id)."""
        if request_id is not None:
            self.send(MrcpResponse(request_id, error.status_code, RequestState.COMPLETE, ()))

    def data_to_send(self) -> bytes:
        """Bytes queued for the peer since the last call."""
        out = bytes(self._out)
        self._out.clear()
        return out
