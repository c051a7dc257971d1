"""The captured UniMRCP exchange (tests/fixtures/mrcp/unimrcp-exchange.txt) as exact wire bytes.

The file shows CRLF as plain line breaks; this loader rebuilds each message's bytes: CRLF after every
start and header line, and a body whose line ends (CRLF for SDP, LF for grammars and URI lists) and
trailing newline are chosen so its length equals Content-Length. Every message's rebuilt size is checked
against the byte count the capture announces, so a loader mistake cannot pass silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

EXCHANGE = Path(__file__).parent / "fixtures" / "mrcp" / "unimrcp-exchange.txt"

_FRAME = re.compile(
    r"^\[frame (\d+), t=\+[\d.]+s\] (\S+) (\S+)? ?(?:SIP|MRCP)? ?\S* -> .*\((UDP|TCP), (\d+) bytes\)"
)
_VARIANT = re.compile(r"^--- (client|server) -> (client|server) \((\d+) bytes\)")


@dataclass(frozen=True)
class Captured:
    """One captured message."""

    section: str  # "A" (SIP over UDP), "B" (SIP over TCP) or the variant ("3a", "3b", "3c")
    from_client: bool
    protocol: str  # "sip" or "mrcp"
    transport: str  # "UDP" or "TCP"
    data: bytes

    @property
    def start_line(self) -> str:
        return self.data.split(b"\r\n", 1)[0].decode()


def _build(lines: list[str], announced: int) -> bytes:
    while lines and not lines[-1].strip():
        lines.pop()
    try:
        blank = lines.index("")
    except ValueError:
        blank = len(lines)
    head = "".join(f"{line}\r\n" for line in lines[:blank]) + "\r\n"
    body_lines = lines[blank + 1 :]
    match = re.search(r"(?im)^content-length: *(\d+)", head)
    length = int(match.group(1)) if match else 0
    body = ""
    if length:
        for sep in ("\r\n", "\n"):
            joined = sep.join(body_lines)
            for candidate in (joined, joined + sep):
                if len(candidate.encode()) == length:
                    body = candidate
                    break
            if body:
                break
        assert body, f"no body layout matches Content-Length {length}"
    data = head.encode() + body.encode()
    assert len(data) == announced, f"rebuilt {len(data)} bytes, capture says {announced}: {lines[0]!r}"
    return data


def load_exchange() -> list[Captured]:
    """Every message of the capture, in file order."""
    text = EXCHANGE.read_text()
    lines = text.split("\n")
    out: list[Captured] = []
    section = "A"
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("2. SESSION B"):
            section = "B"
        variant = re.match(r"^(3[a-z])\. ", line)
        if variant:
            section = variant.group(1)
        frame = _FRAME.match(line)
        vmatch = _VARIANT.match(line)
        if frame and lines[i + 1].startswith("-----"):
            j = i + 2
            while j < len(lines) and not lines[j].startswith("=====") and not lines[j].startswith("RTP ("):
                j += 1
            body = lines[i + 2 : j]
            data = _build(body, int(frame.group(5)))
            protocol = "mrcp" if data.startswith(b"MRCP") else "sip"
            out.append(Captured(section, "client" in line.split("->")[0], protocol, frame.group(4), data))
            i = j
            continue
        if vmatch:
            j = i + 1
            while j < len(lines) and not (
                lines[j].startswith("--- ")
                or re.match(r"^3[a-z]\. ", lines[j])
                or lines[j].startswith("####")
            ):
                j += 1
            data = _build(lines[i + 1 : j], int(vmatch.group(3)))
            out.append(Captured(section, vmatch.group(1) == "client", "mrcp", "TCP", data))
            i = j
            continue
        i += 1
    return out


def mrcp_messages(*, from_client: bool | None = None) -> list[Captured]:
    """The MRCP messages, optionally only one direction."""
    return [
        c
        for c in load_exchange()
        if c.protocol == "mrcp" and (from_client is None or c.from_client == from_client)
    ]


def sip_messages(*, from_client: bool | None = None) -> list[Captured]:
    """The SIP messages, optionally only one direction."""
    return [
        c
        for c in load_exchange()
        if c.protocol == "sip" and (from_client is None or c.from_client == from_client)
    ]
