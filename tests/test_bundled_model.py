"""The shipped checkpoint: it is what `make run` serves, it fits the serving budget, and it transcribes
synthetic telephone speech through the real `xlgate transcribe` path.

The quality bound below is a regression guard set from the bundled model's measured figure (docs/model.md),
not issue 8's target (dev WER of finals <= 10%), which this checkpoint does not reach yet. The bundled
model is the Whisper-initialised streaming student distilled on CPU (distill-cpu2).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf

from gateway.models import load_model
from streaming_model.checkpoint import bundled_checkpoint_path
from streaming_model.data.voices import VoiceSpec, synthesize

MAX_BYTES = 24 << 20  # issue 8: the shipped checkpoint at most 24 MiB
# Contact-centre phrases in an espeak-ng voice (a training voice family; these are smoke-test sentences,
# not the dev set, and nothing is tuned on them).
PHRASES = (
    "thank you for calling how can i help you today",
    "i would like to check my account balance",
    "can you hear me",
    "have a nice day",
    "i want to pay my bill",
)
VOICE = VoiceSpec("espeak", "en-us", rate=160, pitch=50, word_gap=0, alpha=1.0, eq=())  # a training voice family
# espeak-ng accent+variant combinations held out of training (streaming_model.data.voices.espeak_voices("dev"))
HELD_OUT = ("en-us+Andrea", "en-us+Jacky", "en-us+Tweaky")
# Measured for the bundled distill-cpu2 checkpoint (2026-12-02): CER 0.124 over the five phrases in en-us and
# "can you hear me" word for word; in the held-out voices 0.124 / 0.124 / 0.109 (the earlier from-scratch
# cpu-char4: 0.088 in en-us, 0.168 / 0.182 / 0.124 held out). Five phrases are a smoke test, not a quality
# figure: docs/model.md has the dev-set figures.
MAX_CER = 0.15
EXACT = "can you hear me"


def test_bundled_checkpoint_is_served_by_default_and_fits_the_budget() -> None:
    path = bundled_checkpoint_path()
    assert path is not None and Path(path).is_file()
    assert Path(path).stat().st_size <= MAX_BYTES
    loaded = load_model("bundled", "cpu", warn=False)
    assert loaded.trained
    assert loaded.model.num_parameters() <= 8_500_000
    assert loaded.model.config.frontend == "whisper" and loaded.features.style == "whisper"
    assert loaded.model.config.chunk_ms <= 160
    assert isinstance(loaded.info.get("dev_wer"), float)


@pytest.mark.parametrize("voice", ["en-us", *HELD_OUT])
def test_bundled_model_transcribes_synthetic_speech(tmp_path: Path, voice: str) -> None:
    spec = VoiceSpec(VOICE.engine, voice, rate=VOICE.rate, pitch=VOICE.pitch, word_gap=0, alpha=1.0, eq=())
    paths = []
    for i, text in enumerate(PHRASES):
        audio = synthesize(text, spec, seed=i)
        path = tmp_path / f"p{i}.wav"
        sf.write(path, np.clip(audio, -1, 1), 8000, subtype="PCM_16")
        paths.append(str(path))
    # The checkpoint's own finals (CTC): this guards the acoustic model; the default second pass has its own
    # tests (tests/test_final_pass.py) and is worse than the CTC on these espeak voices (docs/model.md).
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "transcribe", "--format", "tsv", "--final-pass",
                           "none", *paths],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split("\t", 1) for line in proc.stdout.splitlines())
    assert sorted(lines) == sorted(paths)
    hyps = [lines[p].strip() for p in paths]
    cer = jiwer.cer(list(PHRASES), hyps)
    print("bundled model on espeak phrases:", list(zip(PHRASES, hyps, strict=True)), f"CER {cer:.3f}")
    assert cer <= MAX_CER, (cer, hyps)
    if voice in ("en-us", "en-us+Tweaky"):
        assert hyps[PHRASES.index(EXACT)] == EXACT
