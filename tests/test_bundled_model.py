"""The shipped checkpoint: it is what `make run` serves, it fits the serving budget, and it transcribes
synthetic telephone speech through the real `xlgate transcribe` path.

The quality bound below is a regression guard set from the bundled model's measured figure (docs/model.md),
not the trained-model issue's target (dev WER <= 8%), which this checkpoint does not reach yet.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf

from gateway.models import load_model
from streaming_model.checkpoint import bundled_checkpoint_path
from streaming_model.data.voices import VoiceSpec, synthesize

MAX_BYTES = 16 << 20
# Contact-centre phrases in an espeak-ng voice (a training voice family; these are smoke-test sentences,
# not the dev set, and nothing is tuned on them).
PHRASES = (
    "thank you for calling how can i help you today",
    "i would like to check my account balance",
    "can you hear me",
    "have a nice day",
    "i want to pay my bill",
)
VOICE = VoiceSpec("espeak", "en-us", rate=160, pitch=50, word_gap=0, alpha=1.0, eq=())
# Measured for the bundled cpu-char4 checkpoint (2026-11-21): CER 0.088 over the five phrases, and "can you
# hear me" word for word (the phrases were fixed before cpu-char3 was measured: 0.066; cpu-char2: 0.292).
# Five phrases are a smoke test, not a quality figure: on the 1.1 h dev set cpu-char4 is the better one.
MAX_CER = 0.15
EXACT = "can you hear me"


def test_bundled_checkpoint_is_served_by_default_and_fits_the_budget() -> None:
    path = bundled_checkpoint_path()
    assert path is not None and Path(path).is_file()
    assert Path(path).stat().st_size <= MAX_BYTES
    loaded = load_model("bundled", "cpu", warn=False)
    assert loaded.trained
    assert loaded.model.num_parameters() <= 8_000_000
    assert loaded.model.config.chunk_ms <= 160
    assert isinstance(loaded.info.get("dev_wer"), float)


def test_bundled_model_transcribes_synthetic_speech(tmp_path: Path) -> None:
    paths = []
    for i, text in enumerate(PHRASES):
        audio = synthesize(text, VOICE, seed=i)
        path = tmp_path / f"p{i}.wav"
        sf.write(path, np.clip(audio, -1, 1), 8000, subtype="PCM_16")
        paths.append(str(path))
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "transcribe", "--format", "tsv", *paths],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split("\t", 1) for line in proc.stdout.splitlines())
    assert sorted(lines) == sorted(paths)
    hyps = [lines[p].strip() for p in paths]
    cer = jiwer.cer(list(PHRASES), hyps)
    print("bundled model on espeak phrases:", list(zip(PHRASES, hyps, strict=True)), f"CER {cer:.3f}")
    assert cer <= MAX_CER, (cer, hyps)
    assert hyps[PHRASES.index(EXACT)] == EXACT
