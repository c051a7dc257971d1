"""Recognition grammars: builtins, inline SRGS XML, ``text/uri-list`` with ``session:`` references.

A :class:`Grammar` is what the recognizer state machine and the engine need from a grammar: whether it
takes speech or DTMF, and for closed grammars the list of phrases it accepts with their semantic
interpretation. The engine scores these phrases against the acoustic model (and biases decoding with
them as hotwords); nothing here matches free text. DTMF grammars are matched here, since digits are
exact.

Supported:

* ``builtin:speech/transcribe`` - free dictation (no phrase list);
* ``builtin:dtmf/digits`` with ``length``, ``minlength``, ``maxlength`` (VoiceXML 2.0 appendix P
  parameter syntax ``builtin:dtmf/digits?minlength=3;maxlength=5``);
* ``builtin:grammar/boolean``, ``builtin:speech/boolean``, ``builtin:dtmf/boolean`` (1 = yes, 2 = no);
* inline SRGS 1.0 XML (``application/srgs+xml``), mode voice or dtmf: rules, one-of, item with repeat,
  local ruleref, special NULL/VOID/GARBAGE, token, and tag literals (``out="x"``, ``out.slot="x"``, or a
  bare literal) expanded into a bounded phrase list;
* ``session:<content-id>`` references to grammars defined earlier with DEFINE-GRAMMAR.

Network URIs (``http:``, ``https:``, ``file:``, anything not builtin or session) are refused with
uri-failure unless a prefix allow-list admits them and a loader is injected: this layer never fetches.
"""

from __future__ import annotations

import enum
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from protocols.mrcp.errors import (
    GrammarCompilationFailure,
    GrammarLoadFailure,
    GrammarTooLarge,
    TooManyPhrases,
    UnsupportedEntity,
    UriFailure,
)

__all__ = [
    "DEFAULT_MAX_PHRASES",
    "Grammar",
    "GrammarKind",
    "GrammarLoader",
    "Phrase",
    "builtin_grammar",
    "define_grammar",
    "match_dtmf",
    "parse_srgs",
    "resolve_uri_list",
]

DEFAULT_MAX_PHRASES = 2000  # bound on an SRGS grammar's expansion (a hostile repeat="0-" is cut here)
_MAX_RULE_DEPTH = 16
_MAX_REPEAT = 255  # the largest repeat count of an <item> (a phrase repeating more is no phrase we score)
# Bound on the expansion's work (tokens and tags copied, elements visited): the phrase cap alone lets a
# hostile grammar run for hours (rules that each reference the next many times, long token sequences).
# Units: one token or tag copied; visiting an element costs _ELEMENT_WORK (about 20k visits at most).
_MAX_EXPANSION_WORK = 2_000_000
_ELEMENT_WORK = 100
_DIGITS = re.compile(r"[0-9]{1,9}")  # ASCII digits: str.isdigit() takes "²", which int() refuses
_SRGS_TYPES = {"application/srgs+xml", "application/grammar+xml"}
_URI_LIST = "text/uri-list"

GrammarLoader = Callable[[str], tuple[str, bytes]]
"""Fetches an allow-listed URI: returns (content type, body). Injected by the adapter; may raise."""


class GrammarKind(enum.StrEnum):
    """What a grammar accepts."""

    TRANSCRIBE = "transcribe"  # any speech
    PHRASES = "phrases"  # a closed set of spoken phrases (SRGS voice, boolean)
    DTMF = "dtmf"  # DTMF digit strings


@dataclass(frozen=True, slots=True)
class Phrase:
    """One sentence a closed grammar accepts, with its semantic interpretation.

    ``text`` is space-separated tokens (digits for DTMF grammars). ``instance`` is the interpretation
    written into NLSML ``<instance>``; ``properties`` are ``out.name = value`` slots, written as child
    elements of ``<instance>`` instead when present.
    """

    text: str
    instance: str
    properties: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Grammar:
    """A compiled grammar as the recognizer uses it.

    Attributes:
        uri: how results name it (``session:<content-id>`` or the builtin URI).
        kind: what it accepts.
        phrases: the accepted phrases (PHRASES and phrase-list DTMF grammars).
        min_digits, max_digits: length bounds of a digits grammar (DTMF without phrases).
        language: the grammar's xml:lang, if any.
    """

    uri: str
    kind: GrammarKind
    phrases: tuple[Phrase, ...] = ()
    min_digits: int = 1
    max_digits: int | None = None
    language: str | None = None

    @property
    def is_dtmf(self) -> bool:
        """True when the grammar takes DTMF input."""
        return self.kind is GrammarKind.DTMF


_BOOLEAN_SPEECH = (
    ("yes", "true"), ("yeah", "true"), ("yep", "true"), ("correct", "true"), ("right", "true"),
    ("sure", "true"), ("true", "true"),
    ("no", "false"), ("nope", "false"), ("wrong", "false"), ("incorrect", "false"), ("false", "false"),
)  # fmt: skip


def _digit_params(query: str, uri: str) -> tuple[int, int | None]:
    params: dict[str, int] = {}
    for part in filter(None, re.split(r"[;&]", query)):
        name, sep, value = part.partition("=")
        if not sep or not _DIGITS.fullmatch(value) or name not in {"length", "minlength", "maxlength"}:
            raise GrammarCompilationFailure(f"unsupported parameter {part!r} in {uri!r}")
        params[name] = int(value)
    if "length" in params:
        return params["length"], params["length"]
    low = params.get("minlength", 1)
    high = params.get("maxlength")
    if high is not None and (high < low or high == 0):
        raise GrammarCompilationFailure(f"maxlength {high} below minlength {low} in {uri!r}")
    return low, high


def builtin_grammar(uri: str) -> Grammar:
    """The builtin grammar named by ``uri`` (``builtin:<mode>/<type>[?params]``).

    Raises:
        GrammarLoadFailure: no such builtin.
        GrammarCompilationFailure: bad parameters.
    """
    path, _, query = uri.partition("?")
    name = path.lower()
    if name in {"builtin:speech/transcribe", "builtin:speech/dictation", "builtin:grammar/transcribe"}:
        return Grammar(uri=uri, kind=GrammarKind.TRANSCRIBE)
    if name in {"builtin:dtmf/digits", "builtin:dtmf/number"}:
        low, high = _digit_params(query, uri)
        return Grammar(uri=uri, kind=GrammarKind.DTMF, min_digits=low, max_digits=high)
    if name in {"builtin:grammar/boolean", "builtin:speech/boolean", "builtin:voice/boolean"}:
        return Grammar(
            uri=uri, kind=GrammarKind.PHRASES, phrases=tuple(Phrase(t, v) for t, v in _BOOLEAN_SPEECH)
        )
    if name == "builtin:dtmf/boolean":
        phrases = (Phrase("1", "true"), Phrase("2", "false"))
        return Grammar(uri=uri, kind=GrammarKind.DTMF, phrases=phrases, min_digits=1, max_digits=1)
    raise GrammarLoadFailure(f"unknown builtin grammar {uri!r}")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


_Path = tuple[tuple[str, ...], tuple[str, ...]]  # (tokens, tags)


class _Expander:
    def __init__(self, rules: Mapping[str, ET.Element], max_phrases: int) -> None:
        self._rules = rules
        self._max = max_phrases
        self._work = 0

    def _spend(self, work: int) -> None:
        self._work += work
        if self._work > _MAX_EXPANSION_WORK:
            raise GrammarCompilationFailure(
                "grammar is too complex to expand (too many tokens or references)"
            )

    def _cap(self, paths: list[_Path]) -> list[_Path]:
        if len(paths) > self._max:
            raise TooManyPhrases(f"grammar expands to more than {self._max} phrases")
        return paths

    def _concat(self, left: list[_Path], right: list[_Path]) -> list[_Path]:
        if len(left) * len(right) > self._max:
            raise TooManyPhrases(f"grammar expands to more than {self._max} phrases")
        left_size = sum(len(a[0]) + len(a[1]) for a in left)
        right_size = sum(len(b[0]) + len(b[1]) for b in right)
        self._spend(len(right) * left_size + len(left) * right_size + 1)
        return [(a[0] + b[0], a[1] + b[1]) for a in left for b in right]

    def rule(self, rule_id: str, depth: int) -> list[_Path]:
        if depth > _MAX_RULE_DEPTH:
            raise GrammarCompilationFailure(
                f"rule references nest deeper than {_MAX_RULE_DEPTH} (recursive grammar?)"
            )
        rule = self._rules.get(rule_id)
        if rule is None:
            raise GrammarCompilationFailure(f"reference to undefined rule {rule_id!r}")
        return self.sequence(rule, depth)

    def sequence(self, element: ET.Element, depth: int) -> list[_Path]:
        paths: list[_Path] = [((), ())]
        if element.text and element.text.strip():
            paths = self._concat(paths, [(tuple(element.text.split()), ())])
        for child in element:
            paths = self._concat(paths, self.element(child, depth))
            if child.tail and child.tail.strip():
                paths = self._concat(paths, [(tuple(child.tail.split()), ())])
        return paths

    def element(self, element: ET.Element, depth: int) -> list[_Path]:
        self._spend(_ELEMENT_WORK)
        name = _local(element.tag) if isinstance(element.tag, str) else ""
        if name == "item":
            return self._repeat(self.sequence(element, depth), element.get("repeat"))
        if name == "one-of":
            paths: list[_Path] = []
            for child in element:
                paths.extend(self.element(child, depth))
                self._cap(paths)
            return paths
        if name == "ruleref":
            return self._ruleref(element, depth)
        if name == "token":
            return [(tuple((element.text or "").split()), ())]
        if name == "tag":
            return [((), ((element.text or "").strip(),))]
        if name in {"example", "meta", "metadata", "lexicon"}:
            return [((), ())]
        if name == "rule":
            return self.sequence(element, depth)
        raise GrammarCompilationFailure(f"unsupported SRGS element <{name}>")

    def _ruleref(self, element: ET.Element, depth: int) -> list[_Path]:
        special = (element.get("special") or "").upper()
        if special in {"NULL", "GARBAGE"}:
            return [((), ())]
        if special == "VOID":
            return []
        uri = element.get("uri") or ""
        if not uri.startswith("#"):
            raise GrammarCompilationFailure(f"external rule reference {uri!r} is not supported")
        return self.rule(uri[1:], depth + 1)

    def _repeat(self, paths: list[_Path], repeat: str | None) -> list[_Path]:
        if repeat is None:
            return paths
        match = re.fullmatch(r"\s*(\d+)\s*(?:(-)\s*(\d*))?\s*", repeat)
        if match is None:
            raise GrammarCompilationFailure(f"bad repeat {repeat!r}")
        low = int(match.group(1))
        high = low if match.group(2) is None else (int(match.group(3)) if match.group(3) else low + 3)
        if high < low:
            raise GrammarCompilationFailure(f"bad repeat {repeat!r}")
        if high > _MAX_REPEAT:
            raise GrammarCompilationFailure(f"repeat {repeat!r} exceeds {_MAX_REPEAT} repetitions")
        result: list[_Path] = []
        current: list[_Path] = [((), ())]
        for count in range(high + 1):
            if count >= low:
                result.extend(current)
                self._cap(result)
            if not current:
                break  # a VOID item: no further repetition can match either
            if count < high:
                current = self._concat(current, paths)
        return result


_OUT_LITERAL = re.compile(r"""^\s*out\s*=\s*(?:"([^"]*)"|'([^']*)'|([^;"'\s]+))\s*;?\s*$""")
_OUT_PROPERTY = re.compile(
    r"""^\s*out\.([A-Za-z_][\w]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^;"'\s]+))\s*;?\s*$"""
)


def _interpret(text: str, tags: tuple[str, ...]) -> Phrase:
    instance: str | None = None
    properties: dict[str, str] = {}
    for tag in tags:
        for statement in filter(None, (s.strip() for s in tag.split(";"))):
            literal = _OUT_LITERAL.match(statement)
            prop = _OUT_PROPERTY.match(statement)
            if literal:
                instance = next(g for g in literal.groups() if g is not None)
            elif prop:
                properties[prop.group(1)] = next(g for g in prop.groups()[1:] if g is not None)
            elif "=" not in statement and "(" not in statement:
                instance = statement.strip("\"'")  # semantics/1.0-literals: the tag is the value
    return Phrase(
        text=text, instance=instance if instance is not None else text, properties=tuple(properties.items())
    )


def parse_srgs(body: bytes, *, uri: str, max_phrases: int = DEFAULT_MAX_PHRASES) -> Grammar:
    """Compile an inline SRGS 1.0 XML grammar into its phrase list.

    Raises:
        GrammarCompilationFailure: not well-formed XML, not a <grammar>, no root rule, unsupported
            constructs, or more than ``max_phrases`` phrases.
    """
    try:
        root = ET.fromstring(body)
    except (ET.ParseError, ValueError, LookupError) as exc:  # LookupError: an unknown encoding= name
        raise GrammarCompilationFailure(f"grammar is not well-formed XML: {exc}") from None
    if _local(root.tag) != "grammar":
        raise GrammarCompilationFailure(f"root element is <{_local(root.tag)}>, expected <grammar>")
    rules = {
        rule.get("id", ""): rule
        for rule in root.iter()
        if isinstance(rule.tag, str) and _local(rule.tag) == "rule"
    }
    root_rule = root.get("root") or next(iter(rules), None)
    if not root_rule:
        raise GrammarCompilationFailure("grammar has no rules")
    try:
        paths = _Expander(rules, max_phrases).rule(root_rule, 0)
    except RecursionError:
        raise GrammarCompilationFailure("grammar elements nest too deeply") from None
    phrases: dict[str, Phrase] = {}
    for tokens, tags in paths:
        text = " ".join(tokens)
        if text and text not in phrases:
            phrases[text] = _interpret(text, tags)
    if not phrases:
        raise GrammarCompilationFailure("grammar accepts no phrase")
    mode = (root.get("mode") or "voice").lower()
    language = root.get("{http://www.w3.org/XML/1998/namespace}lang")
    if mode == "dtmf":
        cleaned = tuple(Phrase(p.text.replace(" ", ""), p.instance, p.properties) for p in phrases.values())
        longest = max(len(p.text) for p in cleaned)
        return Grammar(
            uri=uri,
            kind=GrammarKind.DTMF,
            phrases=cleaned,
            min_digits=1,
            max_digits=longest,
            language=language,
        )
    return Grammar(uri=uri, kind=GrammarKind.PHRASES, phrases=tuple(phrases.values()), language=language)


def _content_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def resolve_uri(
    uri: str,
    *,
    session_grammars: Mapping[str, Grammar],
    allowed_uri_prefixes: tuple[str, ...] = (),
    loader: GrammarLoader | None = None,
) -> Grammar:
    """The grammar a URI names.

    Raises:
        GrammarLoadFailure: an undefined ``session:`` grammar or unknown builtin.
        UriFailure: a URI the server refuses or cannot fetch.
    """
    if uri.lower().startswith("builtin:"):
        return builtin_grammar(uri)
    if uri.lower().startswith("session:"):
        grammar = session_grammars.get(uri[len("session:") :])
        if grammar is None:
            raise GrammarLoadFailure(f"{uri!r} was not defined with DEFINE-GRAMMAR")
        return grammar
    if loader is None or not any(uri.startswith(prefix) for prefix in allowed_uri_prefixes):
        raise UriFailure(
            f"grammar URI {uri[:200]!r} is not allowed (only builtin:, session: and allow-listed URIs)"
        )
    try:
        content_type, body = loader(uri)
    except Exception as exc:  # the loader is the adapter's I/O; any failure is a URI failure to the peer
        raise UriFailure(f"could not load {uri[:200]!r}: {type(exc).__name__}") from None
    if _content_type(content_type) not in _SRGS_TYPES:
        raise GrammarCompilationFailure(
            f"{uri[:200]!r} has content type {content_type!r}, expected application/srgs+xml"
        )
    return parse_srgs(body, uri=uri)


def resolve_uri_list(
    body: bytes,
    *,
    session_grammars: Mapping[str, Grammar],
    allowed_uri_prefixes: tuple[str, ...] = (),
    loader: GrammarLoader | None = None,
) -> tuple[Grammar, ...]:
    """Every grammar a ``text/uri-list`` body names, one URI a line (RFC 2483; ``#`` lines are comments).

    Raises:
        GrammarLoadFailure, UriFailure, GrammarCompilationFailure: as :func:`resolve_uri`.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise GrammarLoadFailure("text/uri-list body is not UTF-8") from None
    uris = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not uris:
        raise GrammarLoadFailure("text/uri-list body names no grammar")
    return tuple(
        resolve_uri(
            u, session_grammars=session_grammars, allowed_uri_prefixes=allowed_uri_prefixes, loader=loader
        )
        for u in uris
    )


def define_grammar(
    content_type: str | None,
    body: bytes,
    *,
    content_id: str,
    session_grammars: Mapping[str, Grammar],
    allowed_uri_prefixes: tuple[str, ...] = (),
    loader: GrammarLoader | None = None,
    max_bytes: int | None = None,
    max_phrases: int = DEFAULT_MAX_PHRASES,
) -> Grammar:
    """Compile the body of a DEFINE-GRAMMAR (or an inline RECOGNIZE grammar) as ``session:<content_id>``.

    A ``text/uri-list`` body must name exactly one grammar, which becomes known under the new id.

    Args:
        max_bytes: the largest inline SRGS body compiled (None: no bound beyond the message's).
        max_phrases: the most phrases an inline SRGS grammar may expand to.

    Raises:
        UnsupportedEntity: a content type that is not a grammar we compile.
        GrammarTooLarge: an SRGS body over ``max_bytes``.
        TooManyPhrases: an SRGS grammar that expands to more than ``max_phrases``.
        GrammarCompilationFailure, GrammarLoadFailure, UriFailure: as named.
    """
    kind = _content_type(content_type)
    uri = f"session:{content_id}"
    if kind in _SRGS_TYPES:
        if max_bytes is not None and len(body) > max_bytes:
            raise GrammarTooLarge(f"grammar of {len(body)} bytes exceeds {max_bytes}")
        return parse_srgs(body, uri=uri, max_phrases=max_phrases)
    if kind == _URI_LIST:
        grammars = resolve_uri_list(
            body, session_grammars=session_grammars, allowed_uri_prefixes=allowed_uri_prefixes, loader=loader
        )
        if len(grammars) != 1:
            raise GrammarCompilationFailure(
                f"DEFINE-GRAMMAR with a uri-list must name one grammar, got {len(grammars)}"
            )
        return Grammar(
            uri=uri,
            kind=grammars[0].kind,
            phrases=grammars[0].phrases,
            min_digits=grammars[0].min_digits,
            max_digits=grammars[0].max_digits,
            language=grammars[0].language,
        )
    raise UnsupportedEntity(
        f"grammar content type {content_type!r} is not supported (application/srgs+xml, text/uri-list)"
    )


@dataclass(frozen=True, slots=True)
class DtmfMatch:
    """How a digit string fares against a DTMF grammar."""

    complete: bool  # the digits are a full match
    extendable: bool  # more digits could still make a (longer) match
    phrase: Phrase | None  # the matched phrase (phrase-list grammars) or None


def match_dtmf(grammar: Grammar, digits: str) -> DtmfMatch:
    """Match ``digits`` against a DTMF grammar (exact; no model involved)."""
    if grammar.phrases:
        exact = next((p for p in grammar.phrases if p.text == digits), None)
        longer = any(p.text.startswith(digits) and len(p.text) > len(digits) for p in grammar.phrases)
        return DtmfMatch(complete=exact is not None, extendable=longer, phrase=exact)
    valid = all(c in "0123456789" for c in digits)
    long_enough = len(digits) >= grammar.min_digits
    room = grammar.max_digits is None or len(digits) < grammar.max_digits
    complete = valid and long_enough and (grammar.max_digits is None or len(digits) <= grammar.max_digits)
    return DtmfMatch(complete=complete, extendable=valid and room, phrase=None)
