"""``streaming_model.scoring``: the one normaliser, reader and edit counts that every tool scores with."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from streaming_model import scoring
from streaming_model.scoring import ErrorCounts, TsvError, read_transcripts_tsv, score_by_id, score_pairs
from streaming_model.textnorm import normalise_for_scoring


def test_the_normaliser_is_the_scoring_one() -> None:
    assert scoring.normalise is normalise_for_scoring
    assert scoring.normalise("I owe $5, OK?") == "i owe five dollars ok"


def test_one_utterance_counts_words_and_characters() -> None:
    counts = scoring.score_utterance("The cat sat down.", "the cat sat up")
    assert (counts.utterances, counts.ref_words, counts.hits) == (1, 4, 3)
    assert (counts.substitutions, counts.deletions, counts.insertions) == (1, 0, 0)
    assert counts.wer == pytest.approx(0.25)
    assert counts.ref_chars == len("the cat sat down")
    assert counts.cer == pytest.approx(4 / len("the cat sat down"))


def test_digits_and_words_score_alike() -> None:
    assert scoring.score_utterance("call me at 9:30", "call me at nine thirty").wer == 0.0


def test_empty_sides() -> None:
    both = scoring.score_utterance("", "")
    assert both.wer is None and both.cer is None and both.utterances == 1
    insertion = scoring.score_utterance("", "noise")
    assert insertion.insertions == 1 and insertion.wer is None
    deletion = scoring.score_utterance("hello there", "")
    assert deletion.deletions == 2 and deletion.wer == 1.0


def test_corpus_rates_are_summed_edits_over_summed_words() -> None:
    pairs = [("one two three four", "one two three four"), ("five six", "five")]
    counts = score_pairs(pairs)
    assert counts.utterances == 2 and counts.ref_words == 6
    assert counts.wer == pytest.approx(1 / 6)  # not the mean of 0 and 1/2
    with_silence = [*pairs, ("", "noise")]
    assert score_pairs(with_silence).insertions == 1
    skipped = score_pairs(with_silence, skip_empty_refs=True)
    assert skipped.utterances == 2 and skipped.insertions == 0
    assert score_pairs([]).wer is None


def test_counts_add_and_serialise() -> None:
    total = ErrorCounts()
    total.add(scoring.score_utterance("a b", "a c"))
    total.add(scoring.score_utterance("d", "d"))
    data = total.to_json()
    assert data["utterances"] == 2 and data["ref_words"] == 3 and data["substitutions"] == 1
    assert data["wer"] == pytest.approx(1 / 3) and set(data) >= {"cer", "char_insertions", "hits"}


def test_score_by_id_subsets_missing_and_extra() -> None:
    refs = {"calls/1": "I owe $5", "calls/2": "good morning", "vm/a/1": "call me back", "plain": "hello"}
    hyps = {"calls/1": "i owe five dollars", "vm/a/1": "call me", "plain": "hello", "stray/9": "noise"}
    report = score_by_id(refs, hyps)
    assert sorted(report.subsets) == ["-", "calls", "vm"]
    assert report.subsets["calls"].wer == pytest.approx(2 / 6)  # "$5" counts as two words
    assert report.subsets["vm"].wer == pytest.approx(1 / 3)
    assert report.missing_ids == ["calls/2"] and report.extra_ids == ["stray/9"]
    assert report.to_json()["overall"]["utterances"] == 4


def test_reader(tmp_path: Path) -> None:
    tsv = tmp_path / "refs.tsv"
    tsv.write_bytes("\ufeffa\tfirst one\r\n\nsub/b\t\n#c\tthird\n".encode())
    assert read_transcripts_tsv(tsv) == {"a": "first one", "sub/b": "", "#c": "third"}
    tsv.write_text("# a comment\na\tfirst\n", encoding="utf-8")
    assert read_transcripts_tsv(tsv, comments=True) == {"a": "first"}


@pytest.mark.parametrize(("content", "line", "reason"), [
    ("a\tone\nno tab here\n", 2, "no tab"),
    ("\tone\n", 1, "empty id"),
    ("a\tone\nb\ttwo\na\tthree\n", 3, "duplicate id 'a' (first on line 1)"),
])
def test_reader_names_the_bad_line(tmp_path: Path, content: str, line: int, reason: str) -> None:
    tsv = tmp_path / "bad.tsv"
    tsv.write_text(content, encoding="utf-8")
    with pytest.raises(TsvError, match=r"id<TAB>text|empty id|duplicate") as info:
        read_transcripts_tsv(tsv)
    assert info.value.line == line and reason in info.value.reason
    assert isinstance(info.value, ValueError)


def test_reader_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(TsvError, match="cannot read") as info:
        read_transcripts_tsv(tmp_path / "missing.tsv")
    assert info.value.line is None


def test_trainer_and_load_generator_score_through_it() -> None:
    from loadtest.wer import word_error_rate
    from streaming_model.train import error_rates

    refs, hyps = ["Thank you, for calling.", "", "how can I help"], ["thank you calling", "noise", "how can I help you"]
    wer, cer = error_rates(refs, hyps)
    counts = score_pairs(zip(refs, hyps, strict=True), skip_empty_refs=True)
    assert wer == pytest.approx(counts.wer) and cer == pytest.approx(counts.cer)
    assert word_error_rate(list(zip(refs, hyps, strict=True)))["wer"] == pytest.approx(wer)
    assert all(math.isnan(x) for x in error_rates([""], ["x"]))
