"""Audio for the load generator: read a folder of WAV files, convert to the wire encoding, cut 20 ms frames.

The gateway's own helpers (``protocols.audio.resample`` and ``gateway.audio_files.read_audio_file``) are
used when they exist; otherwise a stdlib ``wave`` reader and a polyphase resampler stand in, so the load generator
works on a checkout where that package is not written yet.
"""

from __future__ import annotations

import importlib
import wave
from collections.abc import Callable
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FRAME_S = 0.020
ENCODINGS = ("pcm_s16le", "mulaw")
MAX_FILES = 10_000
MAX_FILE_S = 600.0

Int16Array = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class Utterance:
    """One audio file, already encoded for the wire and cut into frames.

    Attributes:
        file_id: path relative to the audio folder, POSIX separators (``sub/a.wav``).
        frames: the wire payloads, one per 20 ms (the last one may be shorter).
        frame_end_s: for each frame, how far into the file (seconds) its last sample lies.
    """

    file_id: str
    frames: tuple[bytes, ...]
    frame_end_s: tuple[float, ...]

    @property
    def duration_s(self) -> float:
        """Length of the audio in seconds."""
        return self.frame_end_s[-1] if self.frame_end_s else 0.0


def _optional(module: str, name: str) -> Callable[..., Any] | None:
    try:
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError):
        return None


def resample(x: npt.NDArray[np.float64], *, from_hz: int, to_hz: int) -> npt.NDArray[np.float64]:
    """Resample a mono float signal, through ``protocols.audio.resample`` when present.

    Args:
        x: samples in [-1, 1].
        from_hz: rate of ``x``.
        to_hz: wanted rate.

    Returns:
        The resampled signal (float64).
    """
    if from_hz == to_hz:
        return x
    shared = _optional("protocols.audio", "resample")
    if shared is not None:
        y = shared(x.astype(np.float32), from_hz=from_hz, to_hz=to_hz)
        return np.asarray(y, dtype=np.float64)
    from scipy.signal import resample_poly

    g = gcd(from_hz, to_hz)
    return np.asarray(resample_poly(x, to_hz // g, from_hz // g), dtype=np.float64)


def _read_wav(path: Path) -> tuple[npt.NDArray[np.float64], int]:
    with wave.open(str(path), "rb") as w:
        sample_rate_hz = w.getframerate()
        channels = w.getnchannels()
        width = w.getsampwidth()
        num_frames = w.getnframes()
        if num_frames > MAX_FILE_S * sample_rate_hz:
            raise ValueError(f"{path}: {num_frames / sample_rate_hz:.0f} s is longer than {MAX_FILE_S:.0f} s")
        raw = w.readframes(num_frames)
    if width != 2:
        raise ValueError(f"{path}: expected 16-bit samples, got {8 * width}-bit")
    x = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    x = x.reshape(-1, channels).mean(axis=1)  # (samples, channels) -> (samples,)
    return x, sample_rate_hz


def read_audio(path: Path, *, sample_rate_hz: int) -> Int16Array:
    """Read one audio file as mono int16 at ``sample_rate_hz``.

    Uses ``gateway.audio_files.read_audio_file`` when present (an ``AudioClip``: float32 channels in
    [-1, 1] and ``sample_rate_hz``; channels are averaged), else the stdlib WAV reader.

    Raises:
        ValueError: the stdlib reader met a file that is not 16-bit PCM, or one that is too long.
        protocols.audio.AudioError: the shared reader could not read the file.
    """
    x: npt.NDArray[np.float64]
    shared = _optional("gateway.audio_files", "read_audio_file")
    if shared is not None:
        clip = shared(path)
        if clip.duration_s > MAX_FILE_S:
            raise ValueError(f"{path}: {clip.duration_s:.0f} s is longer than {MAX_FILE_S:.0f} s")
        x = np.mean([np.asarray(c, dtype=np.float64) for c in clip.channels], axis=0)
        x = resample(x, from_hz=int(clip.sample_rate_hz), to_hz=sample_rate_hz)
    else:
        x, rate_hz = _read_wav(path)
        x = resample(x, from_hz=rate_hz, to_hz=sample_rate_hz)
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def mulaw_encode(x: Int16Array) -> bytes:
    """G.711 mu-law encode int16 samples, as the ITU reference does it (14-bit arithmetic shift).

    The fallback for ``protocols.audio.mulaw_encode``, with which it agrees on every int16 value.
    """
    v = x.astype(np.int32) >> 2
    mask = np.where(v < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(v), 8158) + 33  # 14-bit clip + bias (0x84 >> 2)
    segment = np.floor(np.log2(mag)).astype(np.int32) - 5  # 0..7
    mantissa = (mag >> (segment + 1)) & 0x0F
    out: bytes = (((segment << 4) | mantissa) ^ mask).astype(np.uint8).tobytes()
    return out


def encode(x: Int16Array, encoding: str) -> tuple[bytes, int]:
    """Encode samples for the wire.

    Returns:
        The payload and its bytes per sample.

    Raises:
        ValueError: unknown encoding.
    """
    if encoding == "pcm_s16le":
        return x.astype("<i2").tobytes(), 2
    if encoding == "mulaw":
        shared = _optional("protocols.audio", "mulaw_encode")
        payload: bytes = bytes(shared(x)) if shared is not None else mulaw_encode(x)
        return payload, 1
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")


def frame_utterance(
    file_id: str, x: Int16Array, *, sample_rate_hz: int, encoding: str, frame_s: float = FRAME_S
) -> Utterance:
    """Cut one file into wire frames of ``frame_s`` seconds."""
    payload, width = encode(x, encoding)
    per_frame = round(sample_rate_hz * frame_s)
    frames: list[bytes] = []
    ends: list[float] = []
    for start in range(0, len(x), per_frame):
        stop = min(start + per_frame, len(x))
        frames.append(payload[start * width : stop * width])
        ends.append(stop / sample_rate_hz)
    return Utterance(file_id=file_id, frames=tuple(frames), frame_end_s=tuple(ends))


def list_audio_files(audio_dir: Path, *, max_files: int = MAX_FILES) -> list[Path]:
    """The ``*.wav`` files under ``audio_dir`` (recursive, sorted, at most ``max_files``).

    Raises:
        FileNotFoundError: no WAV file there.
    """
    paths = sorted(p for p in audio_dir.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
    if not paths:
        raise FileNotFoundError(f"no .wav files under {audio_dir}")
    return paths[:max_files]


def load_utterances(
    audio_dir: Path, *, sample_rate_hz: int, encoding: str, max_files: int = MAX_FILES
) -> list[Utterance]:
    """Read, convert and frame every WAV file under ``audio_dir``."""
    return [
        frame_utterance(
            p.relative_to(audio_dir).as_posix(),
            read_audio(p, sample_rate_hz=sample_rate_hz),
            sample_rate_hz=sample_rate_hz,
            encoding=encoding,
        )
        for p in list_audio_files(audio_dir, max_files=max_files)
    ]
