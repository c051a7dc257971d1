"""``xlgate eval dev`` (gateway/evaluate.py): the scoring helpers on hand-made inputs, and every subcommand end
to end on a tiny random model and a few short WAVs (a random model transcribes gibberish, so the end-to-end
tests check structure, not figures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gateway import evaluate as ev
from gateway.audio_files import write_wav
from gateway.runner import LanguageModel
from gateway.session import DecodingSettings
from streaming_model.checkpoint import load_checkpoint, save_checkpoint
from streaming_model.features import FbankConfig
from streaming_model.ngram import NgramLM
from streaming_model.tokenizer import CharTokenizer
from tests.conftest import make_chatty_model

TEXTS = ("my name is siobhan nakagawa", "is this a good time to talk", "the plan is ironclad fraud alert",
         "thank you for calling")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("evaluate")
    model = d / "tiny.safetensors"
    save_checkpoint(model, make_chatty_model(), features=FbankConfig(), tokenizer=CharTokenizer(),
                    trained=False)
    rng = np.random.default_rng(0)
    lines = []
    for n, text in enumerate(TEXTS):
        wav = d / "wav" / f"u{n}.wav"
        wav.parent.mkdir(exist_ok=True)
        seconds = 0.8 + 0.3 * n
        write_wav(wav, [(0.2 * rng.standard_normal(int(8000 * seconds))).astype(np.float32)], 8000)
        lines.append(json.dumps({"audio": f"wav/u{n}.wav", "text": text, "duration_s": seconds,
                                 "subset": "general" if n % 2 else "banking",
                                 "channel": "clean" if n < 2 else "band+mulaw",
                                 **({"voice": "flite:awb" if n % 2 else "espeak:en-gb+f1"} if n < 3 else {})}))
    manifest = d / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    lm = d / "lm.npz"
    NgramLM.train([*TEXTS, "can i help you", "my plan"], order=2).save(lm)
    hotwords = d / "hotwords.txt"
    hotwords.write_text("siobhan nakagawa\nironclad fraud alert\t3.0\nzephyrine beaumont\n")
    return {"dir": str(d), "model": str(model), "manifest": str(manifest), "lm": str(lm),
            "hotwords": str(hotwords)}


# ---------------------------------------------------------------------------------------------- helpers


def test_roc_auc() -> None:
    assert ev.roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert ev.roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert ev.roc_auc([0.5, 0.5, 0.5, 0.5], [False, True, False, True]) == 0.5
    # 3 of the 4 (positive, negative) pairs are ordered right.
    assert ev.roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    # A tie between a positive and a negative counts one half: (1 + 0.5) / 2.
    assert ev.roc_auc([0.2, 0.5, 0.5], [False, False, True]) == 0.75
    assert ev.roc_auc([0.3, 0.7], [True, True]) is None
    with pytest.raises(ValueError, match="length"):
        ev.roc_auc([0.1], [True, False])


def test_hotword_counts() -> None:
    phrases = ["Siobhan Nakagawa", "ironclad fraud alert", "zephyrine beaumont", "plan"]
    refs = ["my name is siobhan nakagawa", "I'd like Ironclad Fraud Alert please", "my plan", "hello"]
    hyps = ["my name is siobhan naka gawa", "i'd like ironclad fraud alert please", "my planet",
            "zephyrine beaumont plan"]
    counts = ev.hotword_counts(phrases, refs, hyps)
    # Spoken: siobhan (utt 0), ironclad (1), plan (2); only ironclad is recalled ("planet" is not "plan").
    assert (counts.spoken, counts.recalled, counts.false_insertions) == (3, 1, 2)
    assert counts.recall == pytest.approx(1 / 3)
    per = counts.to_json()["per_phrase"]
    assert per["plan"] == {"spoken": 1, "recalled": 0, "false_insertions": 1}
    assert per["zephyrine beaumont"] == {"spoken": 0, "recalled": 0, "false_insertions": 1}
    assert ev.hotword_counts(phrases, ["hello"], ["hello"]).recall is None


def test_label_hyp_words() -> None:
    words = [("The", 0.9), ("bat", 0.2), ("sat", 0.8), ("down", 0.1)]
    labels = ev.label_hyp_words("the cat sat", words)
    assert [(w, ok) for w, _, ok in labels] == [("the", True), ("bat", False), ("sat", True), ("down", False)]
    assert [c for _, c, _ in labels] == [0.9, 0.2, 0.8, 0.1]
    # A word that normalises into several gives each its confidence; an empty reference makes all wrong.
    assert ev.label_hyp_words("room forty two", [("room", 0.7), ("42", 0.6)]) == [
        ("room", 0.7, True), ("forty", 0.6, True), ("two", 0.6, True)]
    assert ev.label_hyp_words("", [("hello", 0.5)]) == [("hello", 0.5, False)]
    assert ev.label_hyp_words("hello", []) == []


def test_reliability_table() -> None:
    table = ev.reliability_table([0.05, 0.95, 1.0, 0.92], [False, True, True, False], bins=10)
    assert [r["words"] for r in table] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 3]
    assert table[9]["accuracy"] == pytest.approx(2 / 3)
    assert table[9]["mean_confidence"] == pytest.approx((0.95 + 1.0 + 0.92) / 3)
    assert table[1]["accuracy"] is None
    assert ev.expected_calibration_error(table) == pytest.approx(
        (1 * 0.05 + 3 * abs(2 / 3 - (0.95 + 1.0 + 0.92) / 3)) / 4)


def test_channel_group_and_oov() -> None:
    assert ev.channel_group("clean") == "clean"
    assert ev.channel_group("reverb+babble10+band+alaw") == "telephone"
    assert ev.channel_group("none") == "telephone"
    assert ev.channel_group(None) == "unknown"
    assert ev.voice_family("espeak:en-gb-x-rp+Andrea") == "espeak" and ev.voice_family("hibari:heart") == "hibari"
    assert ev.voice_family(None) == ev.voice_family("") == "unknown"
    assert ev.oov_counts(["Hello there", "room 42"], ["hello", "there", "room", "forty"]) == (1, 5)


def test_geometry_override_keeps_weights(setup: dict[str, str]) -> None:
    loaded = load_checkpoint(setup["model"])
    assert ev.with_geometry(loaded) is loaded
    other = ev.with_geometry(loaded, chunk_frames=8, mem_frames=16)
    assert (other.model.config.chunk_frames, other.model.config.mem_frames) == (8, 16)
    assert other.model.config.chunk_ms == 320
    before, after = loaded.model.state_dict(), other.model.state_dict()
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    feats = torch.randn(1, 50, loaded.features.n_mels)
    with torch.no_grad():
        logits, lengths = other.model(feats, torch.tensor([50]))
    assert logits.shape == (1, 16, loaded.model.config.vocab_size) and int(lengths[0]) == 13


def test_grid_decoding_matches_the_engine(setup: dict[str, str]) -> None:
    """tune's re-decoding of forward() log-probabilities gives the engine's transcripts."""
    loaded = load_checkpoint(setup["model"])
    items = ev.load_items(setup["manifest"])
    lm = LanguageModel(NgramLM.load(setup["lm"]), weight=0.5, word_bonus=1.0)
    log_probs = ev.utterance_log_probs(loaded, items)
    grid = [ev.decode_log_probs(lp, loaded, beam_size=4, lm=lm.model, lm_weight=0.5, word_bonus=1.0)
            for lp in log_probs]
    engine = ev.transcribe_items(loaded, items, decoding=DecodingSettings(method="beam", beam_size=4), lm=lm,
                                 settings=ev.EngineSettings(num_threads=1, max_parallel=4))
    assert any(grid)
    assert grid == engine.texts


# ------------------------------------------------------------------------------------------- end to end


def _run(setup: dict[str, str], *args: str) -> dict[str, Any]:
    out = Path(setup["dir"]) / f"{args[0]}-{len(list(Path(setup['dir']).glob('*.json')))}.json"
    code = ev.main([*args, "--manifest", setup["manifest"], "--model", setup["model"], "--out", str(out),
                    "--threads", "1"])
    assert code == 0
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["command"] == args[0]
    return data


def test_wer_command(setup: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    data = _run(setup, "wer", "--lm", "none")
    assert data["decoding"]["method"] == "greedy" and "oov" not in data
    assert set(data["subsets"]) == {"banking", "general"}
    assert set(data["channels"]) == {"clean", "telephone"}
    assert {k: v["utterances"] for k, v in data["voices"].items()} == {"espeak": 2, "flite": 1, "unknown": 1}
    assert data["overall"]["utterances"] == 4
    assert data["overall"]["ref_words"] == sum(len(t.split()) for t in TEXTS)
    assert {"wer", "cer"} <= set(data["overall"]) and len(data["per_utterance"]) == 4
    printed = capsys.readouterr().out
    assert "channel telephone" in printed and "voice flite" in printed

    data = _run(setup, "wer", "--decoding", "beam", "--beam-size", "4", "--lm", setup["lm"],
                "--lm-weight", "0.3", "--word-bonus", "0.5", "--chunk-frames", "8", "--mem-frames", "16",
                "--limit", "2")
    assert data["geometry"] == {"chunk_frames": 8, "mem_frames": 16, "right_frames": 0, "chunk_ms": 320,
                                "mem_ms": 640, "right_ms": 0}
    assert data["decoding"] == {"method": "beam", "beam_size": 4, "lm": setup["lm"], "lm_weight": 0.3,
                                "word_insertion_bonus": 0.5, "hotwords": 0}
    assert data["utterances"] == 2
    assert data["oov"]["ref_words"] == 12 and data["oov"]["oov_words"] == 0


def test_tune_command(setup: dict[str, str]) -> None:
    lm_json = Path(setup["dir"]) / "assets" / "lm.json"
    data = _run(setup, "tune", "--lm", setup["lm"], "--limit", "2", "--write-lm-json", str(lm_json))
    assert len(data["grid"]) == len(ev.LM_WEIGHTS) * len(ev.WORD_BONUSES)
    assert [r["beam_size"] for r in data["beams"]] == list(ev.BEAM_SIZES)
    assert data["timing"]["decodes"] == 22
    written = json.loads(lm_json.read_text())
    assert set(written) == {"lm_weight", "word_insertion_bonus", "beam_size", "tuned_on", "dev_wer"}
    assert written["tuned_on"] == setup["manifest"]
    assert written["lm_weight"] in ev.LM_WEIGHTS and written["beam_size"] in ev.BEAM_SIZES
    # The grid decodes exactly as the engine does, so the confirmation pass agrees with the grid.
    assert data["confirm"]["engine_wer"] == pytest.approx(data["chosen"]["grid_wer"])
    assert written["dev_wer"] == pytest.approx(data["chosen"]["dev_wer"], abs=1e-4)


def test_tune_grid_axes_from_flags(setup: dict[str, str]) -> None:
    data = _run(setup, "tune", "--lm", setup["lm"], "--limit", "2", "--no-confirm",
                "--lm-weights", "0.2,0.4", "--word-bonuses", "3,0", "--beam-sizes", "2,8")
    assert [(r["lm_weight"], r["word_insertion_bonus"]) for r in data["grid"]] == [
        (0.2, 3.0), (0.2, 0.0), (0.4, 3.0), (0.4, 0.0)]
    assert [r["beam_size"] for r in data["beams"]] == [2, 8]
    assert data["chosen"]["lm_weight"] in (0.2, 0.4) and data["chosen"]["beam_size"] in (2, 8)
    assert "confirm" not in data and data["timing"]["decodes"] == 5


@pytest.mark.parametrize("flag, value", [("--lm-weights", "0.3,x"), ("--lm-weights", "-1"),
                                         ("--word-bonuses", ""), ("--beam-sizes", "0,4"),
                                         ("--beam-sizes", "2.5")])
def test_tune_rejects_bad_grid_axes(setup: dict[str, str], flag: str, value: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ev.main(["tune", "--manifest", setup["manifest"], "--model", setup["model"], "--lm", setup["lm"],
                 "--out", str(Path(setup["dir"]) / "never.json"), flag, value])
    assert exc.value.code == 2 and "expected comma-separated" in capsys.readouterr().err


def test_tune_needs_an_lm(setup: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code = ev.main(["tune", "--manifest", setup["manifest"], "--model", setup["model"], "--lm", "none",
                    "--out", str(Path(setup["dir"]) / "never.json")])
    assert code == 2 and "needs a language model" in capsys.readouterr().err


def test_hotwords_command(setup: dict[str, str]) -> None:
    data = _run(setup, "hotwords", "--hotwords", setup["hotwords"], "--lm", setup["lm"], "--beam-size", "4")
    assert data["phrases"] == 3 and data["decoding"]["hotwords"] == 3
    for name in ("without", "with"):
        keys = {"wer", "cer", "spoken", "recalled", "recall", "false_insertions", "per_phrase", "hyps"}
        assert keys <= set(data[name])
        assert data[name]["spoken"] == 2  # siobhan nakagawa, ironclad fraud alert
    assert set(data["delta"]) == {"recall", "wer", "false_insertions"}
    assert {"recall_met", "wer_met"} <= set(data["targets"])


def test_confidence_command(setup: dict[str, str]) -> None:
    data = _run(setup, "confidence", "--lm", "none")
    assert {"auc", "ece", "reliability", "hyp_words", "correct_words", "wer"} <= set(data)
    assert len(data["reliability"]) == ev.CONFIDENCE_BINS
    assert sum(r["words"] for r in data["reliability"]) == data["hyp_words"] > 0


def test_calibrate_command_fits_writes_and_serves_the_map(tmp_path: Path) -> None:
    """The bundled model on synthetic speech, against references made of each utterance's more confident
    half of its own words: confidence then separates right from wrong, the fitted map is increasing, and
    once written into (a copy of) the checkpoint the engine serves it."""
    from streaming_model.checkpoint import bundled_checkpoint_path
    from streaming_model.data.voices import VoiceSpec, synthesize

    bundled = bundled_checkpoint_path()
    assert bundled is not None
    voice = VoiceSpec("espeak", "en-us", rate=160, pitch=50, word_gap=0, alpha=1.0, eq=())
    phrases = ("i would like to check my account balance please", "the card number is four four one two",
               "can you hear me okay", "i want to pay my bill today", "please transfer me to billing")
    lines = []
    for n, text in enumerate(phrases):
        audio = synthesize(text, voice, seed=n)
        write_wav(tmp_path / f"s{n}.wav", [np.clip(audio, -1, 1).astype(np.float32)], 8000)
        lines.append(json.dumps({"audio": f"s{n}.wav", "text": text, "duration_s": len(audio) / 8000}))
    (tmp_path / "speech.jsonl").write_text("\n".join(lines) + "\n")
    items = ev.load_items(tmp_path / "speech.jsonl")
    out = ev.transcribe_items(load_checkpoint(bundled), items, decoding=DecodingSettings(), lm=LanguageModel(None),
                              settings=ev.EngineSettings(num_threads=1))
    lines = []
    for item, finals in zip(items, out.finals, strict=True):
        words = [w for hyp in finals for w in hyp.words]
        cut = sorted(w.confidence for w in words)[len(words) // 2]
        keep = " ".join(w.text for w in words if w.confidence > cut)
        lines.append(json.dumps({"audio": item.path, "text": keep or "zzz", "duration_s": item.duration_s}))
    manifest = tmp_path / "selfref.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    model = tmp_path / "model.safetensors"
    model.write_bytes(Path(bundled).read_bytes())
    cal_json = tmp_path / "cal.json"
    assert ev.main(["calibrate", "--manifest", str(manifest), "--model", str(model), "--out", str(cal_json),
                    "--lm", "none", "--threads", "1", "--write-into", str(model)]) == 0
    report = json.loads(cal_json.read_text())
    assert report["calibration"]["scale"] > 0 and report["hyp_words"] >= 10
    assert 0 < report["correct_words"] < report["hyp_words"] and report["auc"] > 0.75
    assert {"ece_raw", "ece_cross_fitted", "reliability_raw", "reliability_cross_fitted"} <= set(report)
    written = load_checkpoint(model).info
    assert written["confidence_calibration"] == report["calibration"]
    assert written["confidence_calibration_fitted_on"] == str(manifest)
    conf_json = tmp_path / "conf.json"
    assert ev.main(["confidence", "--manifest", str(manifest), "--model", str(model), "--out", str(conf_json),
                    "--lm", "none", "--threads", "1"]) == 0
    conf = json.loads(conf_json.read_text())
    assert conf["auc"] == pytest.approx(report["auc"]) and conf["hyp_words"] == report["hyp_words"]
    mean_raw = sum(r["mean_confidence"] * r["words"] for r in report["reliability_raw"] if r["words"])
    mean_cal = sum(r["mean_confidence"] * r["words"] for r in conf["reliability"] if r["words"])
    assert abs(mean_cal - mean_raw) > 1e-3  # the served confidences are the mapped ones
    # Refitting on a calibrated checkpoint starts from the raw confidences again.
    again = tmp_path / "cal2.json"
    assert ev.main(["calibrate", "--manifest", str(manifest), "--model", str(model), "--out", str(again),
                    "--lm", "none", "--threads", "1"]) == 0
    assert json.loads(again.read_text())["calibration"] == pytest.approx(report["calibration"])


def test_calibrate_refuses_a_set_it_cannot_fit(setup: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code = ev.main(["calibrate", "--manifest", setup["manifest"], "--model", setup["model"], "--lm", "none",
                    "--threads", "1", "--out", str(Path(setup["dir"]) / "never.json")])
    assert code == 2 and "cannot fit a confidence calibration" in capsys.readouterr().err


def test_bad_manifest(tmp_path: Path, setup: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio": "x.wav"}\n')
    code = ev.main(["wer", "--manifest", str(bad), "--model", setup["model"],
                    "--out", str(tmp_path / "o.json")])
    assert code == 2 and "missing required field" in capsys.readouterr().err
