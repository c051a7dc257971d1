"""Word n-gram LM: normalisation, ARPA and npz round trips, OOV handling, the training command."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from streaming_model.ngram import BOS, EOS, UNK, NgramLM, main

CORPUS = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "the cat ate the fish",
    "a dog chased the cat",
    "i would like to check my balance",
    "i would like to speak to an agent",
    "my balance is low",
    "the cat sat",
    "check my data plan",
    "upgrade to premium plus",
]


@pytest.fixture(scope="module")
def lm() -> NgramLM:
    return NgramLM.train(CORPUS * 3 + ["the cat"], order=3)


def vocab_sum(lm: NgramLM, context: list[str]) -> float:
    return sum(math.exp(lm.score(context, w)) for w in lm.vocab if w != BOS)


@pytest.mark.parametrize("context", [[], [BOS], [BOS, "the"], ["the", "cat"], ["sat", "on"], ["cat", "dog"],
                                     ["never", "seen"], ["my", "data"], ["to", "check"]])
def test_probabilities_sum_to_one(lm: NgramLM, context: list[str]) -> None:
    assert vocab_sum(lm, context) == pytest.approx(1.0, abs=1e-6)


def test_unigram_order_sums_to_one() -> None:
    lm1 = NgramLM.train(CORPUS, order=1)
    assert vocab_sum(lm1, ["whatever"]) == pytest.approx(1.0, abs=1e-6)


def test_seen_continuations_beat_unseen_and_oov_gets_unk(lm: NgramLM) -> None:
    assert lm.score([BOS, "the"], "cat") > lm.score([BOS, "the"], "agent")
    assert lm.score(["the"], "zebra") == lm.score(["the"], UNK)
    assert math.isfinite(lm.score(["the"], UNK)) and lm.score(["the"], UNK) < lm.score(["the"], "cat")
    assert lm.sentence_logprob(["the", "cat", "sat"]) > lm.sentence_logprob(["thecat", "sat"])
    assert lm.score([BOS, "the", "cat"], "sat") == lm.score(["the", "cat"], "sat")  # order-1 context


def test_arpa_round_trip(lm: NgramLM, tmp_path: Path) -> None:
    arpa = lm.to_arpa()
    assert "\\3-grams:" in arpa and "\\end\\" in arpa
    back = NgramLM.from_arpa(arpa)
    assert back.to_arpa() == arpa
    path = tmp_path / "lm.arpa"
    path.write_text(arpa)
    loaded = NgramLM.load(path)
    for ctx in ([BOS], [BOS, "the"], ["the", "cat"], ["sat", "on"], ["zzz", "the"]):
        for w in ("cat", "sat", EOS, UNK, "agent", "nope"):
            assert loaded.score(ctx, w) == pytest.approx(lm.score(ctx, w), abs=1e-5)


def test_npz_round_trip_and_cli(lm: NgramLM, tmp_path: Path) -> None:
    text = tmp_path / "train.txt"
    text.write_text("\n".join(CORPUS * 3 + ["the cat"]) + "\n")
    out = tmp_path / "lm.npz"
    assert main(["train", "--text", str(text), "--out", str(out), "--order", "3"]) == 0
    loaded = NgramLM.load(out)
    assert loaded.order == 3 and loaded.vocab == lm.vocab
    for n in range(3):
        np.testing.assert_array_equal(loaded.keys[n], lm.keys[n])
    assert loaded.score([BOS, "the"], "cat") == pytest.approx(lm.score([BOS, "the"], "cat"), abs=1e-6)
    assert vocab_sum(loaded, ["the", "cat"]) == pytest.approx(1.0, abs=1e-5)
