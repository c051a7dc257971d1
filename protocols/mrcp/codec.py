"""MRCPv2 message codec (RFC 6787 §5): parse and serialize, plus the message-length framer.

Every MRCPv2 message starts ``MRCP/2.0 <message-length> ...`` where message-length counts the bytes of
the WHOLE message (start line, headers, blank line, body). TCP delivers messages split across reads and
several per read, so :class:`MessageReader` buffers bytes and cuts messages by that length, never by
``read()`` boundaries. Parsing is pure and strict: a peer's garbage raises one of this package's errors,
never ``ValueError`` or ``IndexError``.
"""

from __future__ import annotations

import re

from protocols.mrcp.errors import (
    BodyLengthMismatch,
    InvalidMessageLength,
    MalformedMessage,
    MessageTooLarge,
    TooManyHeaders,
    TruncatedMessage,
    UnsupportedVersion,
)
from protocols.mrcp.events import Headers, MrcpEvent, MrcpMessage, MrcpRequest, MrcpResponse, RequestState

__all__ = ["DEFAULT_MAX_HEADERS", "DEFAULT_MAX_MESSAGE_BYTES", "MessageReader", "parse_message", "serialize"]

VERSION = b"MRCP/2.0"
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20  # grammars can be large; 1 MiB caps a hostile peer's buffer
DEFAULT_MAX_HEADERS = 100  # a UniMRCP RECOGNIZE has about 10
_MAX_LENGTH_DIGITS = 10
_MAX_REQUEST_ID = 2**32 - 1  # request-id = 1*10DIGIT, an unsigned 32-bit value (RFC 6787 §5.1)
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_DIGITS = re.compile(r"^[0-9]{1,10}$")


def _message_length(buffer: bytes | bytearray, max_message_bytes: int) -> int | None:
    """The message-length announced at the start of ``buffer``, or None while it is incomplete.

    Raises:
        MalformedMessage: the buffer cannot be the start of an MRCP message.
        UnsupportedVersion, InvalidMessageLength, MessageTooLarge: as named.
    """
    prefix = bytes(buffer[: len(VERSION) + 1])
    expected = VERSION + b" "
    if not expected.startswith(prefix[: len(expected)]):
        # Decided on the first bytes that differ, so any split of the stream into reads gives one answer.
        if prefix[:5] == b"MRCP/":
            raise UnsupportedVersion(f"expected MRCP/2.0, got {prefix.split(b' ')[0]!r}")
        raise MalformedMessage(f"expected a start line beginning 'MRCP/2.0 ', got {prefix!r}")
    if len(prefix) < len(expected):
        return None
    start = len(expected)
    end = start
    while end < len(buffer) and end - start <= _MAX_LENGTH_DIGITS and 48 <= buffer[end] <= 57:
        end += 1
    if end - start > _MAX_LENGTH_DIGITS:
        raise InvalidMessageLength(f"message-length has more than {_MAX_LENGTH_DIGITS} digits")
    if end == len(buffer):
        return None
    if buffer[end] != 0x20 or end == start:
        raise InvalidMessageLength(
            f"message-length must be digits followed by a space, got {bytes(buffer[start : end + 1])!r}"
        )
    length = int(buffer[start:end])
    if length > max_message_bytes:
        raise MessageTooLarge(f"message-length {length} exceeds the limit of {max_message_bytes} bytes")
    if length < end + 3:  # at least one more token and CRLF after the length
        raise InvalidMessageLength(f"message-length {length} is shorter than its own start line")
    return length


def _parse_headers(block: str, max_headers: int) -> Headers:
    headers: list[tuple[str, str]] = []
    for line in block.split("\n"):
        line = line.removesuffix("\r")
        if not line:
            continue
        if line[0] in " \t" and headers:  # obsolete line folding (RFC 6787 §6, as in RFC 5322)
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}".strip())  # an empty first line adds no space
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not _TOKEN.match(name):
            raise MalformedMessage(f"malformed header line {line[:80]!r}")
        if len(headers) >= max_headers:
            raise TooManyHeaders(f"more than {max_headers} header lines")
        headers.append((name, value.strip()))
    return tuple(headers)


def _request_id(text: str) -> int:
    if not _DIGITS.match(text) or int(text) > _MAX_REQUEST_ID:
        raise MalformedMessage(f"request-id must be 1 to 10 digits below 2**32, got {text[:20]!r}")
    return int(text)


def _request_state(text: str) -> RequestState:
    try:
        return RequestState(text)
    except ValueError:
        raise MalformedMessage(f"unknown request-state {text[:20]!r}") from None


def _start_line_request_id(start: bytes | bytearray | str) -> int | None:
    """The request-id of a request's start line (``MRCP/2.0 <length> <method> <request-id>``), or None."""
    text = start.decode("utf-8", "replace") if isinstance(start, bytes | bytearray) else start
    lines = text.splitlines()
    tokens = lines[0].split(" ") if lines else []
    if len(tokens) == 4 and _DIGITS.match(tokens[3]) and int(tokens[3]) <= _MAX_REQUEST_ID:
        return int(tokens[3])
    return None


def parse_message(
    data: bytes, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_headers: int = DEFAULT_MAX_HEADERS
) -> MrcpMessage:
    """Parse exactly one complete MRCPv2 message.

    Args:
        data: the message's bytes, exactly message-length of them.
        max_message_bytes: the largest message-length accepted.
        max_headers: the most header lines accepted.

    Returns:
        An :class:`MrcpRequest`, :class:`MrcpResponse` or :class:`MrcpEvent`.

    Raises:
        TruncatedMessage: ``data`` ends before the message does.
        MalformedMessage (and its subclasses): anything else wrong with the framing or syntax.
        BodyLengthMismatch: Content-Length disagrees with the framed body.
        TooManyHeaders: more than ``max_headers`` header lines (carrying the request-id when readable).
    """
    length = _message_length(data, max_message_bytes)
    if length is None or len(data) < length:
        announced = "unknown" if length is None else str(length)
        raise TruncatedMessage(f"message ends after {len(data)} bytes; message-length is {announced}")
    if len(data) > length:
        raise InvalidMessageLength(f"message-length {length} but {len(data)} bytes were given")
    head_end = data.find(b"\r\n\r\n")
    separator = 4
    if head_end < 0:
        head_end = data.find(b"\n\n")
        separator = 2
    if head_end < 0:
        raise MalformedMessage("no empty line ends the header block within message-length")
    try:
        head = data[:head_end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"start line or headers are not UTF-8 ({exc.reason})") from None
    body = data[head_end + separator :]
    start_line, _, header_block = head.partition("\n")
    start_line = start_line.removesuffix("\r")
    try:
        headers = _parse_headers(header_block, max_headers)
    except TooManyHeaders as exc:
        raise TooManyHeaders(str(exc), request_id=_start_line_request_id(start_line)) from None
    content_length_text = next((v for k, v in headers if k.lower() == "content-length"), None)
    if content_length_text is not None:
        if not _DIGITS.match(content_length_text):
            raise MalformedMessage(f"Content-Length is not a number: {content_length_text[:20]!r}")
        if int(content_length_text) != len(body):
            raise BodyLengthMismatch(
                f"Content-Length {content_length_text} but message-length leaves {len(body)} body bytes"
            )
    elif body:
        raise BodyLengthMismatch(f"{len(body)} body bytes without a Content-Length header")
    return _from_start_line(start_line, headers, body)


def _method(text: str) -> str:
    if not _TOKEN.match(text):
        raise MalformedMessage(f"method or event name is not a token: {text[:40]!r}")
    return text


def _from_start_line(start_line: str, headers: Headers, body: bytes) -> MrcpMessage:
    # request: 4 fields; response: 5 fields with a numeric third; event: 5 fields (RFC 6787 §5.1)
    tokens = start_line.split(" ")
    if len(tokens) == 4:
        return MrcpRequest(
            method=_method(tokens[2]), request_id=_request_id(tokens[3]), headers=headers, body=body
        )
    if len(tokens) == 5 and _DIGITS.match(tokens[2]):
        status = tokens[3]
        if not re.fullmatch(r"[1-9][0-9]{2}", status):
            raise MalformedMessage(f"status-code must be 3 digits, got {status[:20]!r}")
        return MrcpResponse(
            request_id=_request_id(tokens[2]),
            status_code=int(status),
            request_state=_request_state(tokens[4]),
            headers=headers,
            body=body,
        )
    if len(tokens) == 5:
        return MrcpEvent(
            event_name=_method(tokens[2]),
            request_id=_request_id(tokens[3]),
            request_state=_request_state(tokens[4]),
            headers=headers,
            body=body,
        )
    raise MalformedMessage(f"start line has {len(tokens)} fields: {start_line[:80]!r}")


def serialize(message: MrcpMessage) -> bytes:
    """The wire bytes of ``message``, with message-length and Content-Length filled in.

    A Content-Length header given in ``message.headers`` is replaced by the body's true length; none is
    written for an empty body (as the captured UniMRCP server does).
    """
    if isinstance(message, MrcpRequest):
        tail = f" {message.method} {message.request_id}"
    elif isinstance(message, MrcpResponse):
        tail = f" {message.request_id} {message.status_code} {message.request_state.value}"
    else:
        tail = f" {message.event_name} {message.request_id} {message.request_state.value}"
    lines = [f"{name}: {value}\r\n" for name, value in message.headers if name.lower() != "content-length"]
    if message.body:
        lines.append(f"Content-Length: {len(message.body)}\r\n")
    rest = (tail + "\r\n" + "".join(lines) + "\r\n").encode("utf-8") + message.body
    fixed = len(VERSION) + 1 + len(rest)
    length = fixed + len(str(fixed))
    if len(str(length)) != len(str(fixed)):  # adding the digits carried into one more digit
        length = fixed + len(str(length))
    return VERSION + b" " + str(length).encode("ascii") + rest


class MessageReader:
    """Cuts a TCP byte stream into MRCP messages by message-length.

    ``feed`` bytes as they arrive, then call ``next_message`` until it returns None. After an error
    the reader is unusable (the stream has lost its framing) and raises that error again.
    """

    def __init__(
        self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_headers: int = DEFAULT_MAX_HEADERS
    ) -> None:
        self._buffer = bytearray()
        self._max_message_bytes = max_message_bytes
        self._max_headers = max_headers
        self._error: MalformedMessage | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received that do not yet form a complete message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buffer += data

    def next_message(self) -> MrcpMessage | None:
        """The next complete message, or None until more bytes arrive.

        Raises:
            MalformedMessage (and subclasses), BodyLengthMismatch: the stream is not valid MRCP.
        """
        if self._error is not None:
            raise self._error
        try:
            length = _message_length(self._buffer, self._max_message_bytes)
        except MessageTooLarge as exc:
            # Name the request (when its start line has arrived) so the 504 can be sent before the close.
            start_end = self._buffer.find(b"\n", 0, 256)
            request_id = _start_line_request_id(self._buffer[:start_end]) if start_end > 0 else None
            self._error = MessageTooLarge(str(exc), request_id=request_id)
            raise self._error from None
        except MalformedMessage as exc:
            self._error = exc
            raise
        if length is None or len(self._buffer) < length:
            return None
        data = bytes(self._buffer[:length])
        del self._buffer[:length]
        try:
            return parse_message(
                data, max_message_bytes=self._max_message_bytes, max_headers=self._max_headers
            )
        except MalformedMessage as exc:
            self._error = exc
            raise

    def close(self) -> None:
        """The peer closed the stream.

        Raises:
            TruncatedMessage: bytes of an incomplete message were left over.
        """
        if self._buffer and self._error is None:
            self._error = TruncatedMessage(
                f"connection closed inside a message ({len(self._buffer)} bytes buffered)"
            )
            raise self._error
