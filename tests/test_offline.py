"""``xlgate transcribe`` and ``xlgate eval score`` end to end, on real files and a tiny random model.

A random model transcribes gibberish, so transcription tests check structure (which lines, in which
order, on which stream) and equality with the live streaming path, not words.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway import offline
from gateway.audio_files import write_wav
from gateway.cli import main
from gateway.runner import ModelRunner
from gateway.session import DecodingMethod, DecodingSettings, EndpointingSettings, Hotword, StreamSettings
from protocols.audio.g711 import mulaw_encode
from streaming_model.checkpoint import load_checkpoint, save_checkpoint
from streaming_model.decoding import StreamDecoder
from streaming_model.features import FbankConfig
from streaming_model.tokenizer import CharTokenizer
from tests.conftest import engine_finals, make_tiny_model

TEXT_RE = re.compile(r"[a-z' ]*")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # The command installs a stderr handler on the root logger; capsys's stream dies with the test.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("offline")
    rng = np.random.default_rng(0)
    ckpt = d / "tiny.safetensors"
    save_checkpoint(ckpt, make_tiny_model(), features=FbankConfig(), tokenizer=CharTokenizer(), trained=False)
    stereo, mono, ulaw = d / "stereo16k.wav", d / "mono8k.wav", d / "call.ul"
    write_wav(stereo, [(0.2 * rng.standard_normal(16000 * 3 // 2)).astype(np.float32) for _ in range(2)], 16000)
    write_wav(mono, [(0.2 * rng.standard_normal(8000 * 2)).astype(np.float32)], 8000)
    ulaw.write_bytes(mulaw_encode((5000 * rng.standard_normal(8000 * 3 // 2)).astype(np.int16)).tobytes())
    garbage = d / "garbage.wav"
    garbage.write_bytes(b"this is not a wav file at all" * 20)
    return {"model": str(ckpt), "stereo": str(stereo), "mono": str(mono), "ulaw": str(ulaw),
            "garbage": str(garbage), "missing": str(d / "missing.wav")}


def _transcribe(capsys: pytest.CaptureFixture[str], files: dict[str, str], *names: str,
                extra: tuple[str, ...] = ()) -> tuple[int, list[str], str]:
    # A random model: the CTC's finals (Whisper's second pass over its gibberish means nothing here).
    rc = main(["transcribe", *(files[n] for n in names), "--model", files["model"], "--max-parallel", "4",
               "--final-pass", "none", *extra])
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err


def test_transcribe_tsv_good_and_bad_files(capsys: pytest.CaptureFixture[str], files: dict[str, str]) -> None:
    rc, lines, err = _transcribe(capsys, files, "stereo", "garbage", "mono", "missing", "ulaw")
    assert rc == 1
    f = files
    assert [line.split("\t")[0] for line in lines] == [f"{f['stereo']}#0", f"{f['stereo']}#1", f["mono"], f["ulaw"]]
    for line in lines:
        _, text = line.split("\t")  # exactly one tab
        assert TEXT_RE.fullmatch(text) and text == " ".join(text.split())
    assert f"xlgate transcribe: error: {f['garbage']}: " in err
    assert f"xlgate transcribe: error: {f['missing']}: no such file" in err
    assert "UNTRAINED MODEL" in err  # warnings go to stderr, never stdout


def test_transcribe_json(capsys: pytest.CaptureFixture[str], files: dict[str, str]) -> None:
    rc, lines, _ = _transcribe(capsys, files, "mono", "stereo", extra=("--format", "json"))
    assert rc == 0
    objs = [json.loads(line) for line in lines]
    assert [(o["path"], o["channel"], o["id"]) for o in objs] == [
        (files["mono"], 0, files["mono"]),
        (files["stereo"], 0, files["stereo"] + "#0"), (files["stereo"], 1, files["stereo"] + "#1")]
    for o in objs:
        assert o["text"] == " ".join(u["text"] for u in o["utterances"] if u["text"])
        for u in o["utterances"]:
            assert isinstance(u["start_ms"], int) and 0 <= u["start_ms"] <= u["end_ms"] <= 3000
            assert 0.0 <= u["confidence"] <= 1.0
            assert [w["word"] for w in u["words"]] == u["text"].split()
            assert all(set(w) == {"word", "start_ms", "end_ms", "confidence"} for w in u["words"])


def test_transcribe_equals_live_streaming(capsys: pytest.CaptureFixture[str], files: dict[str, str]) -> None:
    """The offline command is the streaming path: same finals as a live 20 ms-framed stream."""
    rc, lines, _ = _transcribe(capsys, files, "mono", extra=("--format", "json", "--endpoint-silence-ms", "300"))
    assert rc == 0
    offline_utts = [u["text"] for u in json.loads(lines[0])["utterances"]]

    from gateway.audio_files import read_audio_file
    from protocols.audio.pcm import float32_to_int16

    pcm = float32_to_int16(read_audio_file(files["mono"]).channels[0])
    loaded = load_checkpoint(files["model"])
    params = StreamSettings(sample_rate_hz=8000, endpointing=EndpointingSettings(silence_s=0.3),
                            decoding=DecodingSettings(method=DecodingMethod.GREEDY))
    live_utts = asyncio.run(engine_finals(loaded, pcm, params, piece_samples=160))
    assert offline_utts == live_utts
    assert offline_utts  # the comparison means something


def test_hotwords_and_decoding_reach_the_decoder(capsys: pytest.CaptureFixture[str], files: dict[str, str],
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[DecodingSettings] = []
    original = ModelRunner._default_decoder

    def spy(self: ModelRunner, params: DecodingSettings) -> StreamDecoder:
        seen.append(params)
        return original(self, params)

    monkeypatch.setattr(ModelRunner, "_default_decoder", spy)
    hotwords_file = tmp_path / "hot.txt"
    hotwords_file.write_text("# comment\nacme corp\t4\nre:invent\n", encoding="utf-8")
    rc, _, _ = _transcribe(capsys, files, "mono", extra=(
        "--decoding", "beam", "--beam-size", "4", "--hotwords-file", str(hotwords_file),
        "--hotword", "acme corp:5", "--hotword", "xl gate"))
    assert rc == 0
    assert seen == [DecodingSettings(method=DecodingMethod.BEAM, beam_size=4,
                                     hotwords=(Hotword("acme corp", 5.0), Hotword("re:invent", 2.0),
                                               Hotword("xl gate", 2.0)))]


@pytest.mark.parametrize(("text", "expected"), [
    ("acme", ("acme", 2.0)), ("acme:3.5", ("acme", 3.5)), ("re:invent", ("re:invent", 2.0)),
    ("re:invent:1", ("re:invent", 1.0))])
def test_parse_hotword(text: str, expected: tuple[str, float]) -> None:
    assert offline.parse_hotword(text) == expected


@pytest.mark.parametrize("text", [":3", "acme:0", "acme:-1", "acme:inf "])
def test_parse_hotword_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        offline.parse_hotword(text)


def test_failed_model_step_fails_only_that_file(capsys: pytest.CaptureFixture[str], files: dict[str, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    original = ModelRunner.run_step
    calls = 0

    def flaky(self: ModelRunner, items: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected step failure")
        return original(self, items)

    monkeypatch.setattr(ModelRunner, "run_step", flaky)
    rc, lines, err = _transcribe(capsys, files, "ulaw", "mono", extra=("--max-parallel", "1"))
    assert rc == 1
    assert [line.split("\t")[0] for line in lines] == [files["mono"]]
    assert f"xlgate transcribe: error: {files['ulaw']}: transcription failed: channel 0: " in err


def test_raw_encodings_match_the_codecs() -> None:
    from protocols.audio.pcm import WIRE_ENCODINGS

    assert offline.RAW_ENCODINGS == tuple(sorted(WIRE_ENCODINGS))


def test_transcribe_bad_model(capsys: pytest.CaptureFixture[str], files: dict[str, str]) -> None:
    rc = main(["transcribe", files["mono"], "--model", files["missing"]])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert "cannot load model" in err


# ------------------------------------------------------------------------------------------------- eval


def _eval(capsys: pytest.CaptureFixture[str], tmp_path: Path, refs: str, hyps: str) -> tuple[int, dict[str, Any], str]:
    (tmp_path / "refs.tsv").write_text(refs, encoding="utf-8")
    (tmp_path / "hyps.tsv").write_text(hyps, encoding="utf-8")
    out_json = tmp_path / "scores.json"
    rc = main(["eval", "score", "--refs", str(tmp_path / "refs.tsv"), str(tmp_path / "hyps.tsv"), "--json",
               str(out_json)])
    out, err = capsys.readouterr()
    data = json.loads(out_json.read_text(encoding="utf-8")) if out_json.exists() else {}
    return rc, data, out + err


def test_eval_one_substitution_in_four_words(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, data, out = _eval(capsys, tmp_path, "a\tThe cat sat down.\n", "a\tthe cat sat up\n")
    assert rc == 0
    overall = data["overall"]
    assert overall["wer"] == pytest.approx(0.25)
    assert (overall["substitutions"], overall["deletions"], overall["insertions"]) == (1, 0, 0)
    assert (overall["utterances"], overall["ref_words"]) == (1, 4)
    assert overall["cer"] == pytest.approx(4 / len("the cat sat down"))  # "down" -> "up": 2 sub, 2 del
    assert "25.00%" in out


def test_eval_subsets_missing_and_extra(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    refs = "calls/1\tI owe $5\ncalls/2\tgood morning\nvm/a/1\tcall me back\nplain\thello there\n"
    hyps = "calls/1\ti owe five dollars\nvm/a/1\tcall me\nplain\thello there\nstray/9\tnoise\n"
    rc, data, out = _eval(capsys, tmp_path, refs, hyps)
    assert rc == 0
    subsets = data["subsets"]
    assert sorted(subsets) == ["-", "calls", "vm"]
    assert subsets["calls"]["utterances"] == 2 and subsets["calls"]["ref_words"] == 6
    assert subsets["calls"]["deletions"] == 2 and subsets["calls"]["wer"] == pytest.approx(2 / 6)  # digits ok
    assert subsets["vm"]["wer"] == pytest.approx(1 / 3)
    assert subsets["-"]["wer"] == 0.0
    assert data["overall"]["ref_words"] == 11 and data["overall"]["deletions"] == 3
    assert data["missing_ids"] == ["calls/2"] and data["extra_ids"] == ["stray/9"]
    assert "calls/2" in out and "stray/9" in out


def test_eval_malformed_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, data, out = _eval(capsys, tmp_path, "a\tone\n", "a\tone\n\nno tab here\n")
    assert rc == 2 and not data
    assert f"{tmp_path / 'hyps.tsv'} line 3: expected 'id<TAB>text'" in out


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--beam-size", "0", "expected an integer between 1 and 256, got 0"),
    ("--endpoint-silence-ms", "5", "expected an integer number of milliseconds between 100 and 60000, got 5"),
    ("--decoding", "viterbi", "got 'viterbi'"),
])
def test_transcribe_takes_its_serve_options_from_the_one_declaration(
        capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str) -> None:
    """``transcribe`` reuses the serve options' declaration: their ranges and choices hold here too."""
    with pytest.raises(SystemExit):
        main(["transcribe", "a.wav", flag, value])
    assert message in capsys.readouterr().err
