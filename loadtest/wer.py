"""Word error rate of the finals against reference transcripts, scored by :mod:`streaming_model.scoring`
(the normaliser, reader and edit counts every xlgate tool shares)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from streaming_model.scoring import read_transcripts_tsv, score_pairs

__all__ = ["load_refs", "ref_for", "wer_report", "word_error_rate"]


def load_refs(path: Path) -> dict[str, str]:
    """Read ``id<TAB>text`` lines (blank lines and ``#`` comments skipped).

    Raises:
        ValueError: a line has no tab, or an id appears twice (a
            :class:`streaming_model.scoring.TsvError`).
    """
    return {key.strip(): text.strip() for key, text in read_transcripts_tsv(path, comments=True).items()}


def ref_for(file_id: str, refs: Mapping[str, str]) -> str | None:
    """The reference of an audio file, by relative path, relative path without suffix, or stem."""
    no_suffix = file_id.rsplit(".", 1)[0]
    stem = no_suffix.rsplit("/", 1)[-1]
    for key in (file_id, no_suffix, stem):
        if key in refs:
            return refs[key]
    return None


def word_error_rate(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Corpus WER over ``(reference, hypothesis)`` pairs, both sides normalised alike.

    Pairs whose normalised reference is empty are skipped (WER is undefined on them).

    Returns:
        ``{"wer", "utterances", "ref_words", "substitutions", "deletions", "insertions", "hits"}``;
        ``wer`` is ``None`` when no pair is left.
    """
    counts = score_pairs(pairs, skip_empty_refs=True)
    return {"wer": counts.wer, "utterances": counts.utterances, "ref_words": counts.ref_words,
            "substitutions": counts.substitutions, "deletions": counts.deletions,
            "insertions": counts.insertions, "hits": counts.hits}


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
