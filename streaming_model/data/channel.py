"""Telephone channel simulation at 8 kHz, in numpy/scipy.

Every function here keeps the length and the 8 kHz rate of its input except :func:`speed_perturb`, which
the generator applies before the channel. :func:`apply_channel` draws a random chain:

    reverb? -> noise at an SNR? (white / pink / babble / hold music) -> 300-3400 Hz band limit
    -> level change (+ clipping?) -> codec (mu-law, A-law, GSM 06.10, AMR-NB, or none) -> packet loss?

G.711 uses ``protocols.audio.g711``; GSM 06.10 and AMR-NB go through one ``sox`` round trip each when the
installed sox has those formats (checked once with ``sox -h``; otherwise they are skipped with a log
line and another codec is drawn). The ``tag`` returned with the audio is the manifest's ``channel`` field,
e.g. ``reverb+babble10+band+alaw+loss``.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.signal import ellip, fftconvolve, sosfilt

from protocols.audio.g711 import alaw_decode, alaw_encode, mulaw_decode, mulaw_encode
from protocols.audio.resample import resample

SAMPLE_RATE_HZ = 8000
MOH_DIR = Path("/usr/share/asterisk/moh")
SNRS_DB = (0, 5, 10, 15, 20, 30)
_LOG = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]


def to_int16(x: FloatArray) -> npt.NDArray[np.int16]:
    """Float [-1, 1) to PCM16, clipping."""
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def g711_roundtrip(x: FloatArray, *, law: str) -> FloatArray:
    """Encode and decode with G.711 mu-law (``law="mulaw"``) or A-law (``law="alaw"``)."""
    pcm = to_int16(x)
    if law == "mulaw":
        out = mulaw_decode(mulaw_encode(pcm))
    elif law == "alaw":
        out = alaw_decode(alaw_encode(pcm))
    else:
        raise ValueError(f"law must be 'mulaw' or 'alaw', got {law!r}")
    return out.astype(np.float32) / 32768.0


@functools.cache
def sox_formats() -> frozenset[str]:
    """The audio file formats the installed sox reports in ``sox -h`` (empty if sox is missing)."""
    sox = shutil.which("sox")
    if sox is None:
        return frozenset()
    out = subprocess.run([sox, "-h"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.startswith("AUDIO FILE FORMATS:"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.cache
def codec_available(codec: str) -> bool:
    """Whether sox can round-trip ``codec`` ("gsm" or "amr-nb"); logs once when it cannot."""
    ok = codec in sox_formats()
    if not ok:
        _LOG.warning("sox has no %s format here: that codec is skipped in the channel simulation", codec)
    return ok


def sox_codec_roundtrip(x: FloatArray, *, codec: str) -> FloatArray:
    """Encode and decode through sox (``gsm`` = GSM 06.10, ``amr-nb``); the length is kept.

    Raises:
        RuntimeError: if sox fails.
    """
    raw = ["-t", "raw", "-r", str(SAMPLE_RATE_HZ), "-e", "signed", "-b", "16", "-c", "1"]
    enc = subprocess.run(
        ["sox", *raw, "-", "-t", codec, "-"], input=to_int16(x).tobytes(), capture_output=True, check=False
    )
    if enc.returncode != 0:
        raise RuntimeError(f"sox {codec} encode failed: {enc.stderr.decode(errors='replace')[:200]}")
    dec = subprocess.run(
        ["sox", "-t", codec, "-", *raw, "-"], input=enc.stdout, capture_output=True, check=False
    )
    if dec.returncode != 0:
        raise RuntimeError(f"sox {codec} decode failed: {dec.stderr.decode(errors='replace')[:200]}")
    out = np.frombuffer(dec.stdout[: len(dec.stdout) // 2 * 2], "<i2").astype(np.float32) / 32768.0
    return _fit_length(out, len(x))


def _fit_length(x: FloatArray, n: int) -> FloatArray:
    if len(x) >= n:
        return x[:n]
    return np.concatenate([x, np.zeros(n - len(x), np.float32)])


@functools.cache
def _band_sos(low_hz: float, high_hz: float) -> npt.NDArray[np.float64]:
    return ellip(8, 0.5, 60, [low_hz, high_hz], btype="bandpass", fs=SAMPLE_RATE_HZ, output="sos")


def band_limit(x: FloatArray, *, low_hz: float = 300.0, high_hz: float = 3400.0) -> FloatArray:
    """Telephone band pass (elliptic, causal, so the length is kept)."""
    return sosfilt(_band_sos(low_hz, high_hz), x).astype(np.float32)


def power(x: FloatArray) -> float:
    """Mean square of a signal."""
    return float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0


def add_noise(x: FloatArray, noise: FloatArray, *, snr_db: float) -> FloatArray:
    """Add ``noise`` (same length) scaled so that signal power / noise power = ``snr_db``."""
    if len(noise) != len(x):
        raise ValueError(f"noise has {len(noise)} samples, signal {len(x)}")
    p_signal, p_noise = power(x), power(noise)
    if p_signal == 0 or p_noise == 0:
        return x.copy()
    scale = np.sqrt(p_signal / (p_noise * 10 ** (snr_db / 10)))
    return (x + scale * noise).astype(np.float32)


def white_noise(rng: np.random.Generator, n: int) -> FloatArray:
    """Gaussian white noise."""
    return rng.standard_normal(n).astype(np.float32)


def pink_noise(rng: np.random.Generator, n: int) -> FloatArray:
    """1/f noise made by shaping white noise's spectrum."""
    spectrum = np.fft.rfft(rng.standard_normal(max(n, 2)))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    return np.fft.irfft(spectrum / np.sqrt(freqs), n=max(n, 2))[:n].astype(np.float32)


def segment(rng: np.random.Generator, source: FloatArray, n: int) -> FloatArray:
    """A random ``n``-sample piece of ``source`` (tiled if it is shorter)."""
    if len(source) < n:
        source = np.tile(source, n // max(len(source), 1) + 1)
    start = int(rng.integers(0, len(source) - n + 1))
    return source[start : start + n]


def babble(rng: np.random.Generator, bank: list[FloatArray], n: int) -> FloatArray:
    """Several other utterances from ``bank`` summed at random offsets and levels."""
    out = np.zeros(n, np.float32)
    for _ in range(int(rng.integers(3, 7))):
        piece = segment(rng, bank[int(rng.integers(len(bank)))], n)
        out += piece * np.float32(10 ** (rng.uniform(-6, 0) / 20) / (np.sqrt(power(piece)) + 1e-9))
    return out


def synthetic_rir(rng: np.random.Generator, *, rt60_s: float) -> FloatArray:
    """Exponentially decaying noise room response with a unit direct path (RT60 = 60 dB decay time)."""
    n = max(int(rt60_s * SAMPLE_RATE_HZ), 8)
    t = np.arange(n) / SAMPLE_RATE_HZ
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)
    delay = int(rng.integers(8, 40))  # early reflections start 1-5 ms after the direct sound
    rir = np.zeros(n + delay)
    rir[0] = 1.0
    rir[delay:] += tail * 0.3 * rng.uniform(0.3, 1.0)
    return rir.astype(np.float32)


def reverberate(x: FloatArray, rir: FloatArray) -> FloatArray:
    """Convolve with a room response, keep the length and the level (power)."""
    y = fftconvolve(x, rir)[: len(x)].astype(np.float32)
    p_x, p_y = power(x), power(y)
    return y * np.float32(np.sqrt(p_x / p_y)) if p_y > 0 else y


def packet_loss(x: FloatArray, rng: np.random.Generator, *, max_gaps: int = 3) -> FloatArray:
    """Zero 1..max_gaps gaps of 20-60 ms (lost RTP packets without concealment)."""
    y = x.copy()
    for _ in range(int(rng.integers(1, max_gaps + 1))):
        gap = int(rng.choice([160, 320, 480]))
        if len(y) > gap:
            start = int(rng.integers(0, len(y) - gap))
            y[start : start + gap] = 0.0
    return y


def speed_perturb(x: FloatArray, factor: float) -> FloatArray:
    """Play ``factor`` times faster by resampling (pitch and tempo together); changes the length."""
    declared_hz = round(SAMPLE_RATE_HZ * factor / 100.0) * 100
    return resample(x, from_hz=declared_hz, to_hz=SAMPLE_RATE_HZ)


@functools.cache
def hold_music() -> tuple[FloatArray, ...]:
    """Asterisk's music-on-hold tracks (no speech), 8 kHz; empty if the package is missing."""
    import soundfile as sf

    tracks = []
    for path in sorted(MOH_DIR.glob("*.wav")):
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        if rate != SAMPLE_RATE_HZ:
            audio = resample(audio, from_hz=rate, to_hz=SAMPLE_RATE_HZ)
        tracks.append(audio)
    if not tracks:
        _LOG.warning(
            "no hold music in %s (apt-get install asterisk-moh-opsound-wav): music noise skipped", MOH_DIR
        )
    return tuple(tracks)


@dataclass
class ChannelResources:
    """Noise sources shared by many calls: babble bank (other utterances) and hold music."""

    babble_bank: list[FloatArray] = field(default_factory=list)
    music: tuple[FloatArray, ...] = ()


def apply_channel(
    x: FloatArray, rng: np.random.Generator, resources: ChannelResources
) -> tuple[FloatArray, str]:
    """Pass 8 kHz audio through a random telephone channel; returns (audio of the same length, tag)."""
    n = len(x)
    tags = []
    y = x.astype(np.float32, copy=True)
    if rng.random() < 0.3:
        y = reverberate(y, synthetic_rir(rng, rt60_s=float(rng.uniform(0.1, 0.5))))
        tags.append("reverb")
    if rng.random() < 0.7:
        kinds = (
            ["white", "pink"]
            + (["babble"] * 2 if resources.babble_bank else [])
            + (["music"] if resources.music else [])
        )
        kind = kinds[int(rng.integers(len(kinds)))]
        snr = float(SNRS_DB[int(rng.integers(len(SNRS_DB)))])
        if kind == "white":
            noise = white_noise(rng, n)
        elif kind == "pink":
            noise = pink_noise(rng, n)
        elif kind == "babble":
            noise = babble(rng, resources.babble_bank, n)
        else:
            noise = segment(rng, resources.music[int(rng.integers(len(resources.music)))], n)
        y = add_noise(y, noise, snr_db=snr)
        tags.append(f"{kind}{snr:.0f}")
    if rng.random() < 0.85:
        y = band_limit(y)
        tags.append("band")
    peak = float(np.max(np.abs(y))) if n else 0.0
    if peak > 0:
        if rng.random() < 0.1:
            y = y * np.float32(rng.uniform(1.2, 3.0) / peak)  # overdriven: clip hard
            tags.append("clip")
        else:
            y = y * np.float32(10 ** (rng.uniform(-30, -1) / 20) / peak)
        y = np.clip(y, -1.0, 32767 / 32768).astype(np.float32)
    codec = str(rng.choice(["mulaw", "mulaw", "alaw", "alaw", "gsm", "amr-nb", "none"]))
    if codec in ("gsm", "amr-nb") and not codec_available(codec):
        codec = "mulaw"
    if codec in ("mulaw", "alaw"):
        y = g711_roundtrip(y, law=codec)
    elif codec != "none":
        y = sox_codec_roundtrip(y, codec=codec)
    if codec != "none":
        tags.append(codec)
    if rng.random() < 0.15:
        y = packet_loss(y, rng)
        tags.append("loss")
    assert len(y) == n, "channel must keep the length"
    return y.astype(np.float32), "+".join(tags) or "none"
