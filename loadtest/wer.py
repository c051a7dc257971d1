"""Word error rate of the finals against reference transcripts, with one normalisation for both sides."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jiwer

_APOSTROPHES = str.maketrans("", "", "'\u2019")
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lowercase, drop apostrophes (``don't`` -> ``dont``), turn other punctuation into spaces."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES)
    text = "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in text)
    return _SPACES.sub(" ", text).strip()


def load_refs(path: Path) -> dict[str, str]:
    """Read ``id<TAB>text`` lines (blank lines and ``#`` comments skipped).

    Raises:
        ValueError: a line has no tab, or an id appears twice.
    """
    refs: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, text = line.partition("\t")
        if not sep:
            raise ValueError(f"{path}:{lineno}: expected 'id<TAB>text', got {line!r}")
        if key in refs:
            raise ValueError(f"{path}:{lineno}: id {key!r} appears twice")
        refs[key.strip()] = text.strip()
    return refs


def ref_for(file_id: str, refs: Mapping[str, str]) -> str | None:
    """The reference of an audio file, by relative path, relative path without suffix, or stem."""
    no_suffix = file_id.rsplit(".", 1)[0]
    stem = no_suffix.rsplit("/", 1)[-1]
    for key in (file_id, no_suffix, stem):
        if key in refs:
            return refs[key]
    return None


def word_error_rate(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Corpus WER over ``(reference, hypothesis)`` pairs after :func:`normalize`.

    Pairs whose normalised reference is empty are skipped (WER is undefined on them).

    Returns:
        ``{"wer", "utterances", "ref_words", "substitutions", "deletions", "insertions", "hits"}``;
        ``wer`` is ``None`` when no pair is left.
    """
    refs: list[str] = []
    hyps: list[str] = []
    for ref, hyp in pairs:
        r = normalize(ref)
        if r:
            refs.append(r)
            hyps.append(normalize(hyp))
    if not refs:
        return {"wer": None, "utterances": 0, "ref_words": 0, "substitutions": 0, "deletions": 0,
                "insertions": 0, "hits": 0}
    out = jiwer.process_words(refs, hyps)
    ref_words = out.hits + out.substitutions + out.deletions
    return {
        "wer": (out.substitutions + out.deletions + out.insertions) / ref_words,
        "utterances": len(refs),
        "ref_words": ref_words,
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
        "hits": out.hits,
    }


def wer_report(
    load_hyps: Sequence[tuple[str, str]],
    refs: Mapping[str, str],
    *,
    baseline_hyps: Mapping[str, str] | None,
) -> dict[str, Any]:
    """WER of a load run, of the single-stream baseline on the same utterances, and their delta.

    Args:
        load_hyps: ``(file_id, hypothesis)`` for each complete session of the load run (a file sent
            several times appears several times).
        refs: references by id (see :func:`ref_for`).
        baseline_hyps: single-stream hypothesis per file id, or ``None`` when no baseline was run.

    Returns:
        ``{"load": ..., "baseline": ..., "delta": load - baseline or None, "missing_refs": [...]}``.
        The baseline is weighted like the load run (each file counted as often as it was sent under load),
        so the delta compares the same words.
    """
    missing: set[str] = set()
    load_pairs: list[tuple[str, str]] = []
    base_pairs: list[tuple[str, str]] = []
    no_baseline = 0
    for file_id, hyp in load_hyps:
        ref = ref_for(file_id, refs)
        if ref is None:
            missing.add(file_id)
            continue
        load_pairs.append((ref, hyp))
        if baseline_hyps is not None:
            if file_id in baseline_hyps:
                base_pairs.append((ref, baseline_hyps[file_id]))
            else:
                no_baseline += 1
    load = word_error_rate(load_pairs)
    baseline = word_error_rate(base_pairs) if baseline_hyps is not None else None
    delta = None
    if baseline is not None and baseline["wer"] is not None and load["wer"] is not None and no_baseline == 0:
        delta = load["wer"] - baseline["wer"]
    return {
        "load": load,
        "baseline": baseline,
        "delta": delta,
        "missing_refs": sorted(missing)[:20],
        "utterances_without_baseline": no_baseline,
    }
