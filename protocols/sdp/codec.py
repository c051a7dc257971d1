"""SDP (RFC 4566) parse and serialize, keeping every line in order so answers can be built faithfully.

Only what offer/answer needs is interpreted (``o=``, ``c=``, ``m=`` and ``a=``); other lines are kept
as ``(type, value)`` pairs. Lines end with CRLF on output; LF alone is accepted on input (RFC 4566 §5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from protocols.sdp.errors import SdpSyntaxError, SdpTooLarge

__all__ = ["MAX_SDP_BYTES", "MediaDescription", "SessionDescription", "parse_sdp", "serialize_sdp"]

MAX_SDP_BYTES = 16384  # an MRCPv2 offer is about 500 bytes
_LINE = re.compile(r"^([a-z])=(.*)$")
_PORT = re.compile(r"[0-9]{1,5}")  # ASCII digits: str.isdigit() takes "²", which int() refuses


@dataclass(frozen=True, slots=True)
class MediaDescription:
    """One ``m=`` section: ``m=<media> <port> <proto> <fmt> ...`` plus its lines."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    connection: str | None = None  # the section's c= value
    attributes: tuple[tuple[str, str | None], ...] = ()  # a=name[:value], in order
    other: tuple[tuple[str, str], ...] = ()  # b=, i=, k= lines

    def attribute(self, name: str) -> str | None:
        """The value of the first ``a=name:value`` (``""`` for a flag), or None."""
        for key, value in self.attributes:
            if key == name:
                return "" if value is None else value
        return None

    def attribute_values(self, name: str) -> list[str]:
        """Every value of ``a=name:value`` lines."""
        return [value or "" for key, value in self.attributes if key == name]

    @property
    def direction(self) -> str:
        """sendrecv, sendonly, recvonly or inactive (RFC 4566 §6; sendrecv when absent)."""
        for key, _ in self.attributes:
            if key in {"sendrecv", "sendonly", "recvonly", "inactive"}:
                return key
        return "sendrecv"


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A whole session description."""

    origin: str  # o= value
    session_name: str = "-"
    connection: str | None = None  # session-level c= value
    timing: str = "0 0"
    attributes: tuple[tuple[str, str | None], ...] = ()
    media: tuple[MediaDescription, ...] = ()
    other: tuple[tuple[str, str], ...] = field(default=())

    @property
    def connection_address(self) -> str | None:
        """The address of the session-level ``c=IN IP4|IP6 <address>``."""
        return _address(self.connection)

    def media_address(self, media: MediaDescription) -> str | None:
        """The address media is sent from/to: the section's c= or else the session's."""
        return _address(media.connection) or self.connection_address


def _address(connection: str | None) -> str | None:
    if connection is None:
        return None
    parts = connection.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in {"IP4", "IP6"}:
        return None
    return parts[2].split("/", 1)[0]


def _attribute(value: str) -> tuple[str, str | None]:
    name, sep, rest = value.partition(":")
    if not name or not re.fullmatch(r"[A-Za-z0-9_.\-+]+", name):
        raise SdpSyntaxError(f"malformed attribute {value[:60]!r}")
    return name, rest if sep else None


def _media(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 4:
        raise SdpSyntaxError(f"m= needs media, port, proto and formats: {value[:80]!r}")
    port_text = parts[1].split("/", 1)[0]
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise SdpSyntaxError(f"m= port is not a port number: {parts[1][:20]!r}")
    return MediaDescription(media=parts[0], port=int(port_text), proto=parts[2], formats=tuple(parts[3:]))


def parse_sdp(data: bytes, *, max_bytes: int = MAX_SDP_BYTES) -> SessionDescription:
    """Parse an SDP body.

    Args:
        data: the body.
        max_bytes: the largest body accepted.

    Raises:
        SdpTooLarge: more than ``max_bytes``.
        SdpSyntaxError: not UTF-8, lines out of order, or a malformed v=, o=, m= or a= line.
    """
    if len(data) > max_bytes:
        raise SdpTooLarge(f"SDP body of {len(data)} bytes exceeds {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpSyntaxError("SDP body is not UTF-8") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines or lines[0] != "v=0":
        raise SdpSyntaxError("SDP must start with v=0")
    origin: str | None = None
    session: dict[str, object] = {"session_name": "-", "connection": None, "timing": "0 0"}
    session_attributes: list[tuple[str, str | None]] = []
    session_other: list[tuple[str, str]] = []
    media: list[MediaDescription] = []
    current: dict[str, object] | None = None

    def close_current() -> None:
        if current is not None:
            base = current["base"]
            assert isinstance(base, MediaDescription)
            media.append(
                MediaDescription(
                    base.media,
                    base.port,
                    base.proto,
                    base.formats,
                    current["connection"],  # type: ignore[arg-type]
                    tuple(current["attributes"]),  # type: ignore[arg-type]
                    tuple(current["other"]),  # type: ignore[arg-type]
                )
            )

    for line in lines[1:]:
        match = _LINE.match(line)
        if match is None:
            raise SdpSyntaxError(f"malformed SDP line {line[:80]!r}")
        kind, value = match.groups()
        if kind == "m":
            close_current()
            current = {"base": _media(value), "connection": None, "attributes": [], "other": []}
        elif current is not None:
            if kind == "a":
                current["attributes"].append(_attribute(value))  # type: ignore[attr-defined]
            elif kind == "c":
                current["connection"] = value
            else:
                current["other"].append((kind, value))  # type: ignore[attr-defined]
        elif kind == "o":
            if len(value.split()) != 6:
                raise SdpSyntaxError(f"o= needs 6 fields: {value[:80]!r}")
            origin = value
        elif kind == "s":
            session["session_name"] = value
        elif kind == "c":
            session["connection"] = value
        elif kind == "t":
            session["timing"] = value
        elif kind == "a":
            session_attributes.append(_attribute(value))
        else:
            session_other.append((kind, value))
    close_current()
    if origin is None:
        raise SdpSyntaxError("SDP has no o= line")
    return SessionDescription(
        origin=origin,
        session_name=str(session["session_name"]),
        connection=session["connection"],  # type: ignore[arg-type]
        timing=str(session["timing"]),
        attributes=tuple(session_attributes),
        media=tuple(media),
        other=tuple(session_other),
    )


def _attribute_line(name: str, value: str | None) -> str:
    return f"a={name}\r\n" if value is None else f"a={name}:{value}\r\n"


def serialize_sdp(description: SessionDescription) -> bytes:
    """The SDP text of ``description`` (CRLF line ends, RFC 4566 §5 line order)."""
    out = ["v=0\r\n", f"o={description.origin}\r\n", f"s={description.session_name}\r\n"]
    out += [f"{k}={v}\r\n" for k, v in description.other if k in {"i", "u", "e", "p"}]
    if description.connection is not None:
        out.append(f"c={description.connection}\r\n")
    out += [f"{k}={v}\r\n" for k, v in description.other if k == "b"]
    out.append(f"t={description.timing}\r\n")
    out += [f"{k}={v}\r\n" for k, v in description.other if k not in {"i", "u", "e", "p", "b"}]
    out += [_attribute_line(name, value) for name, value in description.attributes]
    for media in description.media:
        out.append(f"m={media.media} {media.port} {media.proto} {' '.join(media.formats)}\r\n")
        out += [f"{k}={v}\r\n" for k, v in media.other if k == "i"]
        if media.connection is not None:
            out.append(f"c={media.connection}\r\n")
        out += [f"{k}={v}\r\n" for k, v in media.other if k != "i"]
        out += [_attribute_line(name, value) for name, value in media.attributes]
    return "".join(out).encode("utf-8")
