"""SIP message codec (RFC 3261 §7, §20, §25): parse and serialize requests and responses, plus the
Content-Length framer for stream transports (RFC 3261 §18.3).

Header names are kept as received; lookups are case-insensitive and understand the compact forms
(RFC 3261 §7.3.3). Header values that may be comma-joined lists (Via) are split by :meth:`SipMessage.values`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocols.sip.errors import BadRequest, MessageTooLarge, TooManyHeaders, TruncatedMessage

__all__ = [
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "SipMessage",
    "SipRequest",
    "SipResponse",
    "StreamReader",
    "Via",
    "header_param",
    "name_addr_tag",
    "parse_message",
    "parse_via",
    "serialize",
]

DEFAULT_MAX_MESSAGE_BYTES = 65536
DEFAULT_MAX_HEADERS = 100  # a UniMRCP INVITE has 13; proxies add a Via and a Record-Route each
_COMPACT = {
    "v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
    "c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding", "x": "session-expires",
    "o": "event", "r": "refer-to", "u": "allow-events", "b": "referred-by",
}  # fmt: skip
_TOKEN = re.compile(r"^[!%*+\-.`'~_A-Za-z0-9]+$")
_REQUEST_LINE = re.compile(r"^([!%*+\-.`'~_A-Za-z0-9]+) (\S+) SIP/2\.0$")
_STATUS_LINE = re.compile(r"^SIP/2\.0 ([1-6][0-9]{2}) ?(.*)$")
# ASCII digits only: str.isdigit() also accepts digits such as "²" that int() refuses.
_PORT = re.compile(r"[0-9]{1,5}")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,9}")

Headers = tuple[tuple[str, str], ...]


def _canonical(name: str) -> str:
    lowered = name.lower()
    return _COMPACT.get(lowered, lowered)


@dataclass(frozen=True, slots=True)
class _Base:
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive, compact forms understood), or None."""
        wanted = _canonical(name)
        for key, value in self.headers:
            if _canonical(key) == wanted:
                return value
        return None

    def values(self, name: str) -> list[str]:
        """Every value of ``name``, comma-separated lists split (for Via, Allow, Supported, ...)."""
        wanted = _canonical(name)
        out: list[str] = []
        for key, value in self.headers:
            if _canonical(key) == wanted:
                out.extend(part.strip() for part in _split_commas(value) if part.strip())
        return out

    def raw_headers(self, name: str) -> list[str]:
        """Every header line value of ``name`` as received."""
        wanted = _canonical(name)
        return [value for key, value in self.headers if _canonical(key) == wanted]


def _split_commas(value: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    for index, char in enumerate(value):
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            depth += 1
        elif not quoted and char == ">":
            depth = max(depth - 1, 0)
        elif char == "," and not quoted and depth == 0:
            parts.append(value[start:index])
            start = index + 1
    parts.append(value[start:])
    return parts


@dataclass(frozen=True, slots=True)
class SipRequest(_Base):
    """``<METHOD> <Request-URI> SIP/2.0`` plus headers and body."""

    method: str
    uri: str

    def __init__(self, method: str, uri: str, headers: Headers = (), body: bytes = b"") -> None:
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "uri", uri)
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "body", body)


@dataclass(frozen=True, slots=True)
class SipResponse(_Base):
    """``SIP/2.0 <status> <reason>`` plus headers and body."""

    status: int
    reason: str

    def __init__(self, status: int, reason: str, headers: Headers = (), body: bytes = b"") -> None:
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "body", body)


SipMessage = SipRequest | SipResponse


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value (RFC 3261 §20.42, RFC 3581 rport)."""

    transport: str
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]

    def param(self, name: str) -> str | None:
        """A parameter's value (``""`` for a flag), or None when absent."""
        for key, value in self.params:
            if key.lower() == name.lower():
                return "" if value is None else value
        return None

    @property
    def branch(self) -> str | None:
        """The branch parameter."""
        return self.param("branch")


def _params(text: str) -> tuple[tuple[str, str | None], ...]:
    out: list[tuple[str, str | None]] = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        out.append((key.strip(), value.strip() if sep else None))
    return tuple(out)


def parse_via(value: str) -> Via:
    """Parse one Via value.

    Raises:
        BadRequest: not ``SIP/2.0/<transport> host[:port][;params]``.
    """
    match = re.match(r"^\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z]+)\s+([^;\s]+)\s*(.*)$", value)
    if match is None:
        raise BadRequest(f"malformed Via {value[:80]!r}")
    transport, sent_by, rest = match.groups()
    if sent_by.startswith("["):
        host, _, port_text = sent_by[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = sent_by.partition(":")
    if port_text and (not _PORT.fullmatch(port_text) or int(port_text) > 65535):
        raise BadRequest(f"malformed Via port {port_text[:10]!r}")
    if not host:
        raise BadRequest("Via has no host")
    return Via(transport.upper(), host, int(port_text) if port_text else None, _params(rest))


def header_param(value: str, name: str) -> str | None:
    """A ``;name=value`` parameter of a header value outside its ``<...>`` part (e.g. From's tag)."""
    tail = value.rsplit(">", 1)[1] if ">" in value else value
    for key, param in _params(tail.partition(";")[2]):
        if key.lower() == name.lower():
            return param if param is not None else ""
    return None


def name_addr_tag(value: str | None) -> str | None:
    """The ``tag`` parameter of a From or To value."""
    return None if value is None else header_param(value, "tag")


def parse_message(
    data: bytes,
    *,
    datagram: bool = True,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_headers: int = DEFAULT_MAX_HEADERS,
) -> SipMessage:
    """Parse one complete SIP message.

    Args:
        data: the message's bytes.
        datagram: True for UDP: a missing Content-Length means the rest of the datagram is the body
            (RFC 3261 §18.3); extra bytes after Content-Length are discarded.
        max_message_bytes: the largest message accepted.
        max_headers: the most header lines accepted (folded continuation lines count with their header).

    Raises:
        MessageTooLarge: more than ``max_message_bytes``.
        TooManyHeaders: more than ``max_headers`` header lines.
        TruncatedMessage: no complete header block, or fewer body bytes than Content-Length.
        BadRequest: anything else malformed.
    """
    if len(data) > max_message_bytes:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds {max_message_bytes}")
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        raise TruncatedMessage("no empty line ends the header block")
    try:
        head = data[:head_end].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("start line or headers are not UTF-8") from None
    lines = head.split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and headers:  # line folding (RFC 3261 §7.3.1)
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}".strip())  # an empty first line adds no space
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not _TOKEN.match(name):
            raise BadRequest(f"malformed header line {line[:80]!r}")
        if len(headers) >= max_headers:
            raise TooManyHeaders(f"more than {max_headers} header lines")
        headers.append((name, value.strip()))
    body = data[head_end + 4 :]
    length_text = next((v for k, v in headers if _canonical(k) == "content-length"), None)
    if length_text is not None:
        if not _CONTENT_LENGTH.fullmatch(length_text):
            raise BadRequest(f"Content-Length is not a number: {length_text[:20]!r}")
        length = int(length_text)
        if len(body) < length:
            raise TruncatedMessage(f"body has {len(body)} of {length} bytes")
        if len(body) > length and not datagram:
            raise BadRequest(f"{len(body) - length} bytes after the body")
        body = body[:length]
    elif not datagram:
        raise BadRequest("Content-Length is required on stream transports (RFC 3261 §20.14)")
    start = lines[0]
    status = _STATUS_LINE.match(start)
    if status:
        return SipResponse(int(status.group(1)), status.group(2), tuple(headers), body)
    request = _REQUEST_LINE.match(start)
    if request is None:
        raise BadRequest(f"malformed start line {start[:80]!r}")
    return SipRequest(request.group(1), request.group(2), tuple(headers), body)


def serialize(message: SipMessage) -> bytes:
    """The wire bytes of ``message``; Content-Length is always written and always true."""
    if isinstance(message, SipRequest):
        start = f"{message.method} {message.uri} SIP/2.0"
    else:
        start = f"SIP/2.0 {message.status} {message.reason}"
    lines = [start] + [
        f"{name}: {value}" for name, value in message.headers if _canonical(name) != "content-length"
    ]
    lines.append(f"Content-Length: {len(message.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + message.body


class StreamReader:
    """Cuts a SIP TCP stream into messages by the header block and Content-Length (RFC 3261 §18.3).

    CRLF keep-alives between messages (RFC 5626 §3.5.1) are skipped. After an error the stream has lost
    its framing; :attr:`rejected_head` then holds the offending message's header block when it was
    complete (so the error can still be answered on the connection before it closes), else ``b""``.
    """

    def __init__(
        self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_headers: int = DEFAULT_MAX_HEADERS
    ) -> None:
        self._buffer = bytearray()
        self._max = max_message_bytes
        self._max_headers = max_headers
        self.rejected_head = b""

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buffer += data

    def next_message(self) -> SipMessage | None:
        """The next complete message, or None until more bytes arrive.

        Raises:
            MessageTooLarge, TooManyHeaders: over a limit (the connection should be closed).
            BadRequest: the stream is not SIP (the connection should be closed).
        """
        while self._buffer[:2] == b"\r\n":
            del self._buffer[:2]
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self._buffer) > self._max:
                raise MessageTooLarge(f"header block longer than {self._max} bytes")
            return None
        head = bytes(self._buffer[: head_end + 4])
        match = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d{1,9})[ \t]*\r?$", head[:-2])
        if match is None:
            self.rejected_head = head
            raise BadRequest("Content-Length is required on stream transports (RFC 3261 §20.14)")
        total = head_end + 4 + int(match.group(1))
        if total > self._max:
            self.rejected_head = head
            raise MessageTooLarge(f"message of {total} bytes exceeds {self._max}")
        if len(self._buffer) < total:
            return None
        data = bytes(self._buffer[:total])
        del self._buffer[:total]
        try:
            return parse_message(
                data, datagram=False, max_message_bytes=self._max, max_headers=self._max_headers
            )
        except BadRequest:
            self.rejected_head = head
            raise

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete message."""
        return len(self._buffer)
