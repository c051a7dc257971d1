"""Word-confidence calibration (Platt scaling): the map, its fit, and its home in the checkpoint."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from streaming_model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, update_info
from streaming_model.decoding import ConfidenceCalibration, Hypothesis, Word, utterance_confidence
from streaming_model.features import FbankConfig
from streaming_model.tokenizer import CharTokenizer
from tests.conftest import make_tiny_model


def test_identity_and_monotone_map() -> None:
    ident = ConfidenceCalibration()
    assert ident.is_identity
    assert [ident.word(p) for p in (0.1, 0.5, 0.9)] == pytest.approx([0.1, 0.5, 0.9])
    cal = ConfidenceCalibration(scale=0.4, shift=-0.8)
    ps = np.linspace(0.0, 1.0, 101)
    mapped = [cal.word(float(p)) for p in ps]
    assert all(0.0 < m < 1.0 for m in mapped)  # finite at 0 and 1 (clipped logits)
    assert all(b > a for a, b in itertools.pairwise(mapped))  # increasing: ranking (AUC) kept
    assert cal.word(0.5) == pytest.approx(1 / (1 + math.exp(0.8)))


def test_hypothesis_is_mapped_word_by_word() -> None:
    words = (Word("card", 0.0, 0.3, 0.99), Word("number", 0.3, 0.7, 0.6))
    hyp = Hypothesis(text="card number", words=words, confidence=utterance_confidence(words), start_s=0.0,
                     end_s=0.7, stable_words=1)
    cal = ConfidenceCalibration(scale=0.5, shift=-1.0)
    out = cal.hypothesis(hyp)
    assert [w.confidence for w in out.words] == pytest.approx([cal.word(0.99), cal.word(0.6)])
    assert out.confidence == pytest.approx(math.sqrt(cal.word(0.99) * cal.word(0.6)))
    assert (out.text, out.stable_words, [w.start_s for w in out.words]) == ("card number", 1, [0.0, 0.3])
    assert ConfidenceCalibration().hypothesis(hyp) is hyp


def test_fit_recovers_a_known_map() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(3.0, 2.5, 40000)  # over-confident raw scores, mostly near 1
    raw = 1 / (1 + np.exp(-logits))
    truth = ConfidenceCalibration(scale=0.45, shift=-0.7)
    p_right = np.array([truth.word(float(p)) for p in raw])
    labels = list(rng.random(raw.shape[0]) < p_right)
    fitted = ConfidenceCalibration.fit(list(raw), labels)
    assert fitted.scale == pytest.approx(0.45, abs=0.03) and fitted.shift == pytest.approx(-0.7, abs=0.06)


def test_fit_refuses_what_it_cannot_fit() -> None:
    with pytest.raises(ValueError, match="both right and wrong"):
        ConfidenceCalibration.fit([0.9] * 20, [True] * 20)
    with pytest.raises(ValueError, match=">= 10 words"):
        ConfidenceCalibration.fit([0.9, 0.2], [True, False])
    with pytest.raises(ValueError, match="does not rank"):
        ConfidenceCalibration.fit([0.9] * 10 + [0.1] * 10, [False] * 9 + [True] + [True] * 9 + [False])
    with pytest.raises(ValueError, match="2 confidences for 3"):
        ConfidenceCalibration.fit([0.9, 0.2], [True, False, True])
    for bad in ({"scale": 0.0, "shift": 0.0}, {"scale": float("nan"), "shift": 0.0}):
        with pytest.raises(ValueError, match="finite scale > 0"):
            ConfidenceCalibration(**bad)


def test_from_info() -> None:
    assert ConfidenceCalibration.from_info({}).is_identity
    cal = ConfidenceCalibration.from_info({"confidence_calibration": {"scale": 0.5, "shift": -1}})
    assert (cal.scale, cal.shift) == (0.5, -1.0)
    for bad in ("x", {"scale": 0.5}, {"scale": "0.5", "shift": 0}):
        with pytest.raises(ValueError, match="confidence_calibration"):
            ConfidenceCalibration.from_info({"confidence_calibration": bad})


def test_update_info_writes_into_a_checkpoint_and_load_checks_it(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    model = make_tiny_model()
    save_checkpoint(path, model, features=FbankConfig(), tokenizer=CharTokenizer(), trained=True,
                    info={"steps": 3})
    before = load_checkpoint(path)
    info = update_info(path, {"confidence_calibration": {"scale": 0.5, "shift": -1.0}})
    assert info == {"steps": 3, "confidence_calibration": {"scale": 0.5, "shift": -1.0}}
    after = load_checkpoint(path)
    assert after.info == info and after.trained and not list(tmp_path.glob("*.tmp"))
    for name, tensor in before.model.state_dict().items():
        assert bool((after.model.state_dict()[name] == tensor).all()), name
    # A bad map is refused at load time, not at the first final.
    update_info(path, {"confidence_calibration": {"scale": -1.0, "shift": 0.0}})
    with pytest.raises(CheckpointError, match="finite scale > 0"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="finite scale > 0"):
        update_info(path, {"confidence_calibration": {"scale": 1.0, "shift": 0.0}})
    with pytest.raises(CheckpointError, match="does not exist"):
        update_info(tmp_path / "nope.safetensors", {})
