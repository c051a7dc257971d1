"""Training voices and pseudo-speakers, synthesised on this machine and brought to 8 kHz.

Voices (issue 3 §1): espeak-ng (its English accents x its voice variants, with rate, pitch and word gap),
flite ``awb`` and ``rms``, and hibari-tts ``heart`` (its bundled weights; it is never allowed to
download). Everything else (flite kal/kal16/slt, festival, Piper, recordings) is reserved for an
independent evaluation and must not appear here; :data:`RESERVED_FLITE_VOICES` is checked.

Pseudo-speakers: each utterance gets a vocal-tract-length / speed factor ``alpha`` applied by
resampling (the waveform synthesised at ``fs`` is declared to be at ``fs * alpha`` and resampled to
8 kHz, which scales pitch, formants and tempo together, as Kaldi's speed perturbation does), the
engine's own pitch/tempo controls (chosen independently, so formants and pitch decouple), and a random
equaliser. Settings are on grids: train uses the even grid points, dev the odd ones, so dev speaks with
held-out pitch/tempo settings; espeak-ng dev voices are whole accent+variant combinations never used in
training.
"""

from __future__ import annotations

import functools
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.signal import sosfilt

from protocols.audio.resample import resample
from streaming_model.data.text import is_dev_item

SAMPLE_RATE_HZ = 8000
ESPEAK_ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
FLITE_VOICES = ("awb", "rms")
HIBARI_VOICES = ("heart",)
RESERVED_FLITE_VOICES = frozenset({"kal", "kal16", "slt", "awb_time"})
# Share of utterances per engine. Per core espeak-ng runs ~300x real time, flite ~50x, hibari ~50x;
# these weights keep the whole pipeline above 50x on two cores while flite and hibari stay a real share.
ENGINE_WEIGHTS = {"espeak": 0.55, "flite": 0.2, "hibari": 0.25}
_VOICE_DEV_PERCENT = 15

FloatArray = npt.NDArray[np.float32]


class SynthesisError(RuntimeError):
    """A synthesiser is missing or failed; the message says which and how to install it."""


@dataclass(frozen=True, slots=True)
class VoiceSpec:
    """Everything needed to synthesise one utterance's voice, deterministically.

    ``engine`` is espeak / flite / hibari; ``name`` the engine's voice (espeak ``accent+variant``);
    ``rate`` is espeak words per minute, or a tempo factor for flite and hibari; ``pitch`` is espeak's
    0..99 pitch or flite's mean F0 in Hz (unused for hibari); ``word_gap`` is espeak's ``-g`` (10 ms
    units); ``alpha`` the resampling (VTLP/speed) factor; ``eq`` the equaliser's (freq_hz, gain_db) bands.
    """

    engine: str
    name: str
    rate: float
    pitch: float
    word_gap: int
    alpha: float
    eq: tuple[tuple[float, float], ...]

    @property
    def label(self) -> str:
        """The manifest's ``voice`` field, e.g. ``espeak:en-us+m3``."""
        return f"{self.engine}:{self.name}"


def _require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise SynthesisError(f"{binary} not found on PATH: install it with `apt-get install -y {package}`")
    return path


@functools.cache
def espeak_variants() -> tuple[str, ...]:
    """espeak-ng's installed voice variants (``m3``, ``f2``, ``klatt`` ...), sorted; '' is the plain voice."""
    espeak = _require("espeak-ng", "espeak-ng")
    out = subprocess.run([espeak, "--voices=variant"], capture_output=True, text=True, check=True).stdout
    names = set()
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5 and fields[4].startswith("!v/"):
            names.add(fields[4][3:])
    return ("", *sorted(names))


@functools.cache
def espeak_voices(split: str) -> tuple[str, ...]:
    """espeak-ng ``accent+variant`` names of a split: whole combinations are held out for dev."""
    combos = [f"{a}+{v}" if v else a for a in ESPEAK_ACCENTS for v in espeak_variants()]
    return tuple(c for c in combos if is_dev_item("voice:" + c, _VOICE_DEV_PERCENT) == (split == "dev"))


def _grid(rng: np.random.Generator, low: float, high: float, steps: int, split: str) -> float:
    """A value on an evenly spaced grid: train takes even points, dev odd ones (held-out settings)."""
    first = 0 if split == "train" else 1
    k = int(rng.choice(np.arange(first, steps, 2)))
    return low + (high - low) * k / (steps - 1)


def sample_voice(rng: np.random.Generator, split: str) -> VoiceSpec:
    """Draw an engine, voice and pseudo-speaker settings for one utterance."""
    engines = list(ENGINE_WEIGHTS)
    engine = engines[int(rng.choice(len(engines), p=list(ENGINE_WEIGHTS.values())))]
    alpha = round(_grid(rng, 0.88, 1.12, 25, split), 3)
    eq = tuple(
        (float(rng.uniform(200, 3500)), float(rng.uniform(-8, 8))) for _ in range(int(rng.integers(0, 4)))
    )
    if engine == "espeak":
        voices = espeak_voices(split)
        return VoiceSpec(
            engine,
            voices[int(rng.integers(len(voices)))],
            rate=round(_grid(rng, 120, 230, 23, split)),
            pitch=round(_grid(rng, 15, 85, 15, split)),
            word_gap=int(rng.choice([0, 0, 0, 1, 2, 4, 7])),
            alpha=alpha,
            eq=eq,
        )
    if engine == "flite":
        return VoiceSpec(
            engine,
            FLITE_VOICES[int(rng.integers(2))],
            rate=round(_grid(rng, 0.8, 1.3, 11, split), 3),
            pitch=round(_grid(rng, 80, 160, 17, split)),
            word_gap=0,
            alpha=alpha,
            eq=eq,
        )
    return VoiceSpec(
        engine,
        "heart",
        rate=round(_grid(rng, 0.8, 1.3, 11, split), 3),
        pitch=0.0,
        word_gap=0,
        alpha=alpha,
        eq=eq,
    )


# --------------------------------------------------------------------------------------------------
def _parse_wav(data: bytes) -> tuple[FloatArray, int]:
    """PCM16 mono WAV bytes -> (float32 samples, rate). Tolerates the bogus sizes of a piped header."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SynthesisError(f"synthesiser did not return a WAV ({len(data)} bytes)")
    pos, rate = 12, 0
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk == b"fmt ":
            channels, rate = struct.unpack("<HI", data[pos + 10 : pos + 16])
            bits = struct.unpack("<H", data[pos + 22 : pos + 24])[0]
            if channels != 1 or bits != 16:
                raise SynthesisError(f"expected mono 16-bit WAV, got {channels} channels, {bits} bits")
        elif chunk == b"data":
            pcm = data[pos + 8 :]
            pcm = pcm[: len(pcm) // 2 * 2]
            return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0, rate
        pos += 8 + size
    raise SynthesisError("WAV has no data chunk")


def synth_espeak(text: str, voice: VoiceSpec) -> tuple[FloatArray, int]:
    """espeak-ng at its native rate (22050 Hz)."""
    espeak = _require("espeak-ng", "espeak-ng")
    cmd = [
        espeak,
        "-v",
        voice.name,
        "-s",
        str(int(voice.rate)),
        "-p",
        str(int(voice.pitch)),
        "-g",
        str(voice.word_gap),
        "--stdout",
        text,
    ]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise SynthesisError(
            f"espeak-ng failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[:200]}"
        )
    return _parse_wav(proc.stdout)


def synth_flite(text: str, voice: VoiceSpec) -> tuple[FloatArray, int]:
    """flite awb/rms at its native rate (16 kHz); rate is duration_stretch's inverse, pitch the mean F0."""
    if voice.name in RESERVED_FLITE_VOICES or voice.name not in FLITE_VOICES:
        raise ValueError(f"flite voice {voice.name!r} is not a training voice (allowed: {FLITE_VOICES})")
    flite = _require("flite", "flite")
    fd, path = tempfile.mkstemp(suffix=".wav")
    os.close(fd)
    try:
        cmd = [
            flite,
            "-voice",
            voice.name,
            "--setf",
            f"duration_stretch={1.0 / voice.rate:.3f}",
            "--setf",
            f"int_f0_target_mean={voice.pitch:.0f}",
            "-t",
            text,
            "-o",
            path,
        ]
        proc = subprocess.run(cmd, capture_output=True, check=False)
        if proc.returncode != 0:
            raise SynthesisError(
                f"flite failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[:200]}"
            )
        with open(path, "rb") as f:
            return _parse_wav(f.read())
    finally:
        os.unlink(path)


@functools.cache
def _hibari() -> object:
    try:
        from hibari import Hibari
        from hibari.voices import voice_path
    except ImportError as e:
        raise SynthesisError("hibari-tts is not installed: pip install 'xlgate[train]' (hibari-tts)") from e
    # download_missing=False: only the bundled "heart" weights may ever be used.
    return Hibari(model=voice_path("heart", download_missing=False), threads=1)


def synth_hibari(text: str, voice: VoiceSpec, *, seed: int) -> tuple[FloatArray, int]:
    """hibari-tts ``heart`` (bundled weights only) at 24 kHz; ``seed`` fixes its noise component."""
    if voice.name not in HIBARI_VOICES:
        raise ValueError(f"hibari voice {voice.name!r} is not a training voice (allowed: {HIBARI_VOICES})")
    tts = _hibari()
    audio = tts(text, speed=voice.rate, seed=seed)  # type: ignore[operator]
    return np.asarray(audio, dtype=np.float32), int(tts.sample_rate)  # type: ignore[attr-defined]


def _peaking_sos(freq_hz: float, gain_db: float, q: float, rate_hz: int) -> npt.NDArray[np.float64]:
    """RBJ cookbook peaking EQ biquad as one second-order section."""
    a_gain = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * freq_hz / rate_hz
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a_gain, -2 * np.cos(w0), 1 - alpha * a_gain])
    a = np.array([1 + alpha / a_gain, -2 * np.cos(w0), 1 - alpha / a_gain])
    return np.concatenate([b / a[0], a / a[0]])[None, :]


def random_eq(
    x: FloatArray, bands: tuple[tuple[float, float], ...], rate_hz: int = SAMPLE_RATE_HZ
) -> FloatArray:
    """Apply peaking filters (freq_hz, gain_db), Q 1; keeps the length."""
    if not bands:
        return x
    sos = np.concatenate([_peaking_sos(f, g, 1.0, rate_hz) for f, g in bands if f < rate_hz / 2 * 0.95])
    if len(sos) == 0:
        return x
    return sosfilt(sos, x).astype(np.float32)


def synthesize(text: str, voice: VoiceSpec, *, seed: int) -> FloatArray:
    """Synthesise ``text`` with ``voice`` and return float32 audio at 8 kHz with the voice's EQ applied.

    The ``alpha`` factor is applied while resampling: audio made at ``fs`` is declared to be at
    ``fs * alpha`` (rounded to 400 Hz, so the polyphase resampler needs at most 20 phases).
    """
    if voice.engine == "espeak":
        audio, rate = synth_espeak(text, voice)
    elif voice.engine == "flite":
        audio, rate = synth_flite(text, voice)
    elif voice.engine == "hibari":
        audio, rate = synth_hibari(text, voice, seed=seed)
    else:
        raise ValueError(f"unknown engine {voice.engine!r}")
    declared_hz = round(rate * voice.alpha / 400.0) * 400
    audio = resample(audio, from_hz=declared_hz, to_hz=SAMPLE_RATE_HZ)
    return random_eq(audio, voice.eq)
