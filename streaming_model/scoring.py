"""Scoring transcripts: the one normaliser, the one ``id<TAB>text`` reader and the one set of edit counts.

Every tool that reports an error rate scores through this module: the trainer's held-out curve
(:mod:`streaming_model.train`, :mod:`streaming_model.distill`), ``xlgate eval score`` and the dev-set report
(``xlgate eval dev``), and the load generator's WER under load (:mod:`loadtest.wer`). It lives at the lowest
layer that all of them may import, and needs nothing but the standard library and jiwer.

References and hypotheses are normalised alike with :func:`normalise` (that is
:func:`streaming_model.textnorm.normalise_for_scoring`: lowercase, no punctuation, numbers spelled out) and
jiwer counts the word and character edits. Corpus rates are summed edits over summed reference lengths (not
a mean of per-utterance rates); a rate over no reference words is None.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from streaming_model.textnorm import normalise_for_scoring

__all__ = [
    "ErrorCounts",
    "IdReport",
    "TsvError",
    "normalise",
    "read_transcripts_tsv",
    "score_by_id",
    "score_pairs",
    "score_utterance",
    "subset_of",
]

SUBSET_WITHOUT_SLASH: Final = "-"

normalise = normalise_for_scoring


# ------------------------------------------------------------------------------------------------- reader


class TsvError(ValueError):
    """A references or hypotheses file is unreadable or has a malformed line."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(f"{path}" + (f" line {line}" if line is not None else "") + f": {reason}")


def read_transcripts_tsv(path: str | Path, *, comments: bool = False) -> dict[str, str]:
    """Read ``id<TAB>text`` lines (UTF-8, a BOM allowed; blank lines skipped; text may be empty), in file order.

    Args:
        path: The file.
        comments: Skip lines that start with ``#`` (hand-written reference lists). Off by default: a
            hypotheses file written by ``xlgate transcribe`` may hold a path that starts with ``#``.

    Raises:
        TsvError: the file cannot be read, or a line has no tab, an empty id, or an id seen before.
    """
    name = str(path)
    try:
        content = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TsvError(name, None, f"cannot read: {exc}") from exc
    rows: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, raw in enumerate(content.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip() or (comments and line.startswith("#")):
            continue
        utt_id, sep, text = line.partition("\t")
        if not sep:
            raise TsvError(name, number, f"expected 'id<TAB>text', got {line[:80]!r} (no tab)")
        if not utt_id.strip():
            raise TsvError(name, number, "empty id before the tab")
        if utt_id in rows:
            raise TsvError(name, number, f"duplicate id {utt_id!r} (first on line {first_line[utt_id]})")
        rows[utt_id] = text
        first_line[utt_id] = number
    return rows


# ------------------------------------------------------------------------------------------------- counts


@dataclass(slots=True)
class ErrorCounts:
    """Edit counts of a set of utterances, words and characters (spaces count as characters)."""

    utterances: int = 0
    ref_words: int = 0
    hits: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    ref_chars: int = 0
    char_substitutions: int = 0
    char_deletions: int = 0
    char_insertions: int = 0

    def add(self, other: ErrorCounts) -> None:
        """Add ``other``'s counts to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def wer(self) -> float | None:
        """Word error rate; None when there are no reference words."""
        errors = self.substitutions + self.deletions + self.insertions
        return errors / self.ref_words if self.ref_words else None

    @property
    def cer(self) -> float | None:
        """Character error rate; None when there are no reference characters."""
        errors = self.char_substitutions + self.char_deletions + self.char_insertions
        return errors / self.ref_chars if self.ref_chars else None

    def to_json(self) -> dict[str, Any]:
        """Every count, and ``wer`` and ``cer``, as a JSON-able dict."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        data["wer"] = self.wer
        data["cer"] = self.cer
        return data


def score_utterance(reference: str, hypothesis: str) -> ErrorCounts:
    """Counts for one utterance, both sides normalised with :func:`normalise`."""
    import jiwer

    ref = normalise(reference)
    hyp = normalise(hypothesis)
    counts = ErrorCounts(utterances=1, ref_words=len(ref.split()), ref_chars=len(ref))
    if not ref and not hyp:
        return counts
    words = jiwer.process_words(ref, hyp)
    chars = jiwer.process_characters(ref, hyp)
    counts.hits = words.hits
    counts.substitutions, counts.deletions, counts.insertions = (
        words.substitutions, words.deletions, words.insertions)
    counts.char_substitutions, counts.char_deletions, counts.char_insertions = (
        chars.substitutions, chars.deletions, chars.insertions)
    return counts


def score_pairs(pairs: Iterable[tuple[str, str]], *, skip_empty_refs: bool = False) -> ErrorCounts:
    """Corpus counts over ``(reference, hypothesis)`` pairs.

    Args:
        pairs: The utterances.
        skip_empty_refs: Leave out pairs whose normalised reference is empty (their insertions would count
            against no reference word); otherwise they are scored like any other.
    """
    total = ErrorCounts()
    for reference, hypothesis in pairs:
        if skip_empty_refs and not normalise(reference):
            continue
        total.add(score_utterance(reference, hypothesis))
    return total


# ----------------------------------------------------------------------------------------- by id, subset


def subset_of(utt_id: str) -> str:
    """The part of an id before its first ``/``; ids without one belong to subset ``-``."""
    head, sep, _ = utt_id.partition("/")
    return head if sep else SUBSET_WITHOUT_SLASH


@dataclass(slots=True)
class IdReport:
    """Overall and per-subset counts of hypotheses scored by id, and the ids found on one side only."""

    overall: ErrorCounts = field(default_factory=ErrorCounts)
    subsets: dict[str, ErrorCounts] = field(default_factory=dict)
    missing_ids: list[str] = field(default_factory=list)  # in refs, not in hyps: scored as all deletions
    extra_ids: list[str] = field(default_factory=list)  # in hyps, not in refs: ignored

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-able dict."""
        return {"overall": self.overall.to_json(),
                "subsets": {name: c.to_json() for name, c in sorted(self.subsets.items())},
                "missing_ids": self.missing_ids, "extra_ids": self.extra_ids}


def score_by_id(refs: Mapping[str, str], hyps: Mapping[str, str]) -> IdReport:
    """Score ``hyps`` against ``refs`` (id -> text), per subset (:func:`subset_of`); a missing hypothesis
    counts as empty."""
    report = IdReport()
    for utt_id, reference in refs.items():
        if utt_id not in hyps:
            report.missing_ids.append(utt_id)
        counts = score_utterance(reference, hyps.get(utt_id, ""))
        report.overall.add(counts)
        report.subsets.setdefault(subset_of(utt_id), ErrorCounts()).add(counts)
    report.extra_ids = [utt_id for utt_id in hyps if utt_id not in refs]
    return report
