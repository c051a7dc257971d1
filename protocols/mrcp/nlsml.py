"""NLSML recognition results (RFC 6787 §9.6, W3C NLSML as profiled by MRCPv2).

The shape follows what MRCPv2 clients parse (UniMRCP's ``nlsml`` parser, FreeSWITCH mod_unimrcp,
Asterisk res_speech_unimrcp): one ``<interpretation>`` per N-best entry with ``grammar`` and
``confidence`` (0.0 to 1.0 in MRCPv2), an ``<instance>`` and an ``<input mode="speech|dtmf">``.
No-input and no-match results carry ``<noinput/>`` / ``<nomatch/>`` inside ``<input>``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

__all__ = [
    "NLSML_CONTENT_TYPE",
    "NLSML_CONTENT_TYPE_LEGACY",
    "InputMode",
    "Interpretation",
    "build_nlsml",
    "build_no_input",
    "build_no_match",
]

NLSML_CONTENT_TYPE = "application/nlsml+xml"  # RFC 6787 §13.1.4
NLSML_CONTENT_TYPE_LEGACY = "application/x-nlsml"  # what UniMRCP's own server sends
_NAMESPACE = "urn:ietf:params:xml:ns:mrcpv2"


class InputMode(enum.StrEnum):
    """How the caller gave the input."""

    SPEECH = "speech"
    DTMF = "dtmf"


@dataclass(frozen=True, slots=True)
class Interpretation:
    """One N-best entry of a result."""

    grammar_uri: str
    confidence: float
    instance: str
    input_text: str
    input_mode: InputMode = InputMode.SPEECH
    properties: tuple[tuple[str, str], ...] = ()


def _instance(interpretation: Interpretation) -> str:
    if interpretation.properties:
        slots = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in interpretation.properties)
        return f"<instance>{slots}</instance>"
    return f"<instance>{escape(interpretation.instance)}</instance>"


def build_nlsml(interpretations: tuple[Interpretation, ...]) -> bytes:
    """The NLSML document for a successful result (at least one interpretation)."""
    parts = ['<?xml version="1.0"?>\n', f'<result xmlns="{_NAMESPACE}">\n']
    for item in interpretations:
        confidence = f"{min(max(item.confidence, 0.0), 1.0):.2f}"
        parts.append(f'  <interpretation grammar={quoteattr(item.grammar_uri)} confidence="{confidence}">\n')
        parts.append(f"    {_instance(item)}\n")
        parts.append(f'    <input mode="{item.input_mode.value}">{escape(item.input_text)}</input>\n')
        parts.append("  </interpretation>\n")
    parts.append("</result>")
    return "".join(parts).encode("utf-8")


def _empty(marker: str) -> bytes:
    return (
        '<?xml version="1.0"?>\n'
        f'<result xmlns="{_NAMESPACE}">\n'
        f"  <interpretation>\n    <instance/>\n    <input>{marker}</input>\n  </interpretation>\n"
        "</result>"
    ).encode()


def build_no_input() -> bytes:
    """The NLSML document of a no-input-timeout."""
    return _empty("<noinput/>")


def build_no_match() -> bytes:
    """The NLSML document of a no-match."""
    return _empty("<nomatch/>")
