"""Each training engine really synthesises at 8 kHz. These must not skip: a missing tool fails loudly."""

import numpy as np
import pytest

from streaming_model.data import voices
from streaming_model.data.voices import VoiceSpec, synthesize

TEXT = "thank you for calling how can i help"


@pytest.mark.parametrize(
    "voice",
    [
        VoiceSpec("espeak", "en-us+m3", rate=170, pitch=50, word_gap=0, alpha=1.0, eq=()),
        VoiceSpec(
            "espeak", "en-gb-scotland+f2", rate=150, pitch=60, word_gap=2, alpha=0.92, eq=((1000.0, 6.0),)
        ),
        VoiceSpec("flite", "awb", rate=1.0, pitch=110, word_gap=0, alpha=1.05, eq=()),
        VoiceSpec("flite", "rms", rate=1.1, pitch=100, word_gap=0, alpha=1.0, eq=()),
        VoiceSpec("hibari", "heart", rate=1.0, pitch=0, word_gap=0, alpha=0.96, eq=((2000.0, -4.0),)),
    ],
    ids=lambda v: v.label,
)
def test_engine_synthesises_8khz(voice: VoiceSpec) -> None:
    try:
        audio = synthesize(TEXT, voice, seed=0)
    except voices.SynthesisError as e:  # turn a missing tool into a clear failure, not a skip
        pytest.fail(f"training voice {voice.label} unavailable: {e}")
    assert audio.dtype == np.float32
    seconds = len(audio) / voices.SAMPLE_RATE_HZ
    assert 0.8 < seconds < 6.0
    assert np.sqrt(np.mean(audio**2)) > 0.01
    # 8 kHz output: nothing above the 4 kHz Nyquist can exist; check the energy sits in the speech band
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / voices.SAMPLE_RATE_HZ)
    assert spectrum[(freqs > 100) & (freqs < 3500)].sum() > 0.9 * spectrum.sum()


def test_reserved_voices_are_refused() -> None:
    for name in ("kal", "kal16", "slt"):
        with pytest.raises(ValueError, match="not a training voice"):
            synthesize(TEXT, VoiceSpec("flite", name, 1.0, 100, 0, 1.0, ()), seed=0)
    with pytest.raises(ValueError, match="not a training voice"):
        synthesize(TEXT, VoiceSpec("hibari", "emma", 1.0, 0, 0, 1.0, ()), seed=0)


def test_dev_espeak_voices_are_held_out() -> None:
    train, dev = set(voices.espeak_voices("train")), set(voices.espeak_voices("dev"))
    assert train and dev and not train & dev
    rng = np.random.default_rng(0)
    for _ in range(500):
        v = voices.sample_voice(rng, "train")
        assert v.engine != "espeak" or v.name in train
        if v.engine == "flite":
            assert v.name in ("awb", "rms")


def test_dev_pitch_tempo_settings_are_held_out() -> None:
    def settings(split: str) -> set[tuple[str, float, float, float]]:
        rng = np.random.default_rng(1)
        return {
            (v.engine, v.rate, v.pitch, v.alpha)
            for v in (voices.sample_voice(rng, split) for _ in range(400))
        }

    train, dev = settings("train"), settings("dev")
    for engine in ("flite", "hibari"):
        train_rates = {r for e, r, _, _ in train if e == engine}
        dev_rates = {r for e, r, _, _ in dev if e == engine}
        assert dev_rates and not train_rates & dev_rates
    assert not {a for *_, a in train} & {a for *_, a in dev}
