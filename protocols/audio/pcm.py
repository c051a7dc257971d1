"""Linear PCM helpers and the wire-format decoder shared by every ingress protocol.

Sample conventions used across xlgate:

* ``int16`` is 16-bit signed linear PCM, the common currency of the codecs.
* ``float32`` is the same signal scaled to ``[-1, 1)``: ``float = int16 / 32768``. The scale is a
  power of two, so ``int16 -> float32 -> int16`` is lossless.
* Multi-channel wire payloads are interleaved by sample frame (``L0 R0 L1 R1 ...``); this module turns
  them into one contiguous array per channel.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import numpy as np
import numpy.typing as npt

from protocols.audio.errors import AudioFormatError
from protocols.audio.g711 import alaw_decode, mulaw_decode

__all__ = [
    "WIRE_ENCODINGS",
    "decode_audio",
    "deinterleave",
    "float32_to_int16",
    "int16_to_float32",
    "pcm16le_to_int16",
]

#: Encoding names accepted by :func:`decode_audio` (the WebSocket protocol's ``encoding`` values).
WIRE_ENCODINGS: Final = frozenset({"pcm_s16le", "mulaw", "alaw"})

_INT16_SCALE: Final = 32768.0

_S = TypeVar("_S", bound=np.generic)


def pcm16le_to_int16(data: bytes | bytearray | memoryview) -> npt.NDArray[np.int16]:
    """Parse signed 16-bit little-endian PCM bytes.

    Args:
        data: The raw payload; two bytes per sample.

    Returns:
        A new, writable, native-endian ``int16`` array with ``len(data) // 2`` samples.

    Raises:
        AudioFormatError: ``data`` has an odd number of bytes.
    """
    num_bytes = memoryview(data).nbytes
    if num_bytes % 2:
        raise AudioFormatError(f"pcm_s16le payload must have an even number of bytes, got {num_bytes}")
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def deinterleave(x: npt.NDArray[_S], channels: int) -> list[npt.NDArray[_S]]:
    """Split frame-interleaved samples into one contiguous array per channel.

    Args:
        x: 1-D interleaved samples (``c0 c1 ... c0 c1 ...``).
        channels: The number of channels, at least 1.

    Returns:
        ``channels`` new arrays of ``len(x) // channels`` samples each, of ``x``'s dtype.

    Raises:
        AudioFormatError: ``channels < 1``, ``x`` is not 1-D, or ``len(x)`` is not a multiple of
            ``channels``.
    """
    if channels < 1:
        raise AudioFormatError(f"channels must be >= 1, got {channels}")
    if x.ndim != 1:
        raise AudioFormatError(f"interleaved samples must be 1-D, got shape {x.shape}")
    if x.shape[0] % channels:
        raise AudioFormatError(f"{x.shape[0]} samples is not a whole number of {channels}-channel frames")
    frames = x.reshape(-1, channels)  # (num_frames, channels)
    return [np.ascontiguousarray(frames[:, c]) for c in range(channels)]


def int16_to_float32(x: npt.NDArray[np.int16]) -> npt.NDArray[np.float32]:
    """Scale 16-bit PCM to float32 in ``[-1, 1)`` (``x / 32768``, exact).

    Raises:
        AudioFormatError: ``x`` is not an ``int16`` array.
    """
    if x.dtype != np.int16:
        raise AudioFormatError(f"expected int16 samples, got dtype {x.dtype}")
    return x.astype(np.float32) * np.float32(1.0 / _INT16_SCALE)


def float32_to_int16(x: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.int16]:
    """Convert float samples in ``[-1, 1]`` to 16-bit PCM.

    Samples are scaled by 32768, rounded half-to-even, and clipped to ``[-32768, 32767]``, so values
    outside ``[-1, 1)`` (and infinities) saturate instead of wrapping. NaN becomes 0. This is the exact inverse of
    :func:`int16_to_float32`.

    Raises:
        AudioFormatError: ``x`` is not a floating-point array.
    """
    if not np.issubdtype(x.dtype, np.floating):
        raise AudioFormatError(f"expected floating-point samples, got dtype {x.dtype}")
    finite = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    scaled = np.rint(np.clip(finite, -1.0, 1.0) * _INT16_SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def decode_audio(
    data: bytes | bytearray | memoryview, *, encoding: str, channels: int
) -> list[npt.NDArray[np.int16]]:
    """Decode a wire payload to 16-bit PCM, one array per channel.

    Args:
        data: The payload: interleaved sample frames.
        encoding: One of :data:`WIRE_ENCODINGS`: ``"pcm_s16le"`` (2 bytes a sample), ``"mulaw"`` or
            ``"alaw"`` (G.711, 1 byte a sample).
        channels: The number of interleaved channels, at least 1.

    Returns:
        ``channels`` ``int16`` arrays of equal length.

    Raises:
        AudioFormatError: Unknown encoding, odd ``pcm_s16le`` length, or a payload that is not a whole
            number of frames.
    """
    if encoding == "pcm_s16le":
        samples = pcm16le_to_int16(data)
    elif encoding == "mulaw":
        samples = mulaw_decode(data)
    elif encoding == "alaw":
        samples = alaw_decode(data)
    else:
        raise AudioFormatError(
            f"unknown audio encoding {encoding!r}, expected one of {sorted(WIRE_ENCODINGS)}"
        )
    return deinterleave(samples, channels)
