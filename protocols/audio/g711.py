"""ITU-T G.711 mu-law and A-law codecs, bit-exact, vectorised with lookup tables.

The tables are built once at import from the integer algorithm of the Sun Microsystems reference
implementation (``g711.c``, the code behind CPython's ``audioop`` and SoX), applied to 16-bit linear
PCM the way ``audioop.lin2ulaw``/``lin2alaw`` do: mu-law encodes the top 14 bits (``sample >> 2``),
A-law the top 13 bits (``sample >> 3``). Decoding expands to 16-bit PCM exactly as ``audioop.ulaw2lin``
and ``alaw2lin`` do, so ``encode(decode(code)) == code`` for every code except mu-law's negative zero
(``0x7F`` decodes to 0, which encodes as ``0xFF``).

Decoding indexes a 256-entry table by the code; encoding indexes a 65536-entry table by the sample's
bit pattern (the ``uint16`` view of the ``int16`` array). Both keep the input's shape.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import numpy.typing as npt

from protocols.audio.errors import AudioFormatError

__all__ = ["alaw_decode", "alaw_encode", "mulaw_decode", "mulaw_encode"]

_G = TypeVar("_G", bound=np.generic)

_MULAW_BIAS = 0x84  # bias added before the segment search (G.711 section 2, 16-bit scale)
_MULAW_CLIP = 8159  # largest magnitude representable on the 14-bit scale, minus the bias
# Upper end of each segment: mu-law on the biased 14-bit scale, A-law on the 13-bit scale.
_MULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _all_int16_in_uint16_order() -> npt.NDArray[np.int32]:
    """Every int16 value, ordered so that entry ``i`` has the bit pattern ``i``."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _frozen(table: npt.NDArray[_G]) -> npt.NDArray[_G]:
    table.flags.writeable = False
    return table


def _build_mulaw_encode_table() -> npt.NDArray[np.uint8]:
    value = _all_int16_in_uint16_order() >> 2  # 14-bit linear, arithmetic shift like the reference
    negative = value < 0
    mask = np.where(negative, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(value), _MULAW_CLIP) + (_MULAW_BIAS >> 2)
    segment = np.searchsorted(_MULAW_SEG_END, magnitude, side="left").astype(np.int32)
    in_range = segment < 8
    shift = np.minimum(segment, 7) + 1
    code = (np.minimum(segment, 7) << 4) | ((magnitude >> shift) & 0x0F)
    code = np.where(in_range, code, 0x7F)
    return _frozen((code ^ mask).astype(np.uint8))


def _build_mulaw_decode_table() -> npt.NDArray[np.int16]:
    inverted = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((inverted & 0x0F) << 3) + _MULAW_BIAS) << ((inverted & 0x70) >> 4)
    linear = np.where(inverted & 0x80, _MULAW_BIAS - t, t - _MULAW_BIAS)
    return _frozen(linear.astype(np.int16))


def _build_alaw_encode_table() -> npt.NDArray[np.uint8]:
    value = _all_int16_in_uint16_order() >> 3  # 13-bit linear
    negative = value < 0
    mask = np.where(negative, 0x55, 0xD5)
    magnitude = np.where(negative, -value - 1, value)  # one's-complement magnitude, 0..4095
    segment = np.searchsorted(_ALAW_SEG_END, magnitude, side="left").astype(np.int32)
    shift = np.maximum(segment, 1)  # segments 0 and 1 share the same step size
    code = (segment << 4) | ((magnitude >> shift) & 0x0F)
    return _frozen((code ^ mask).astype(np.uint8))


def _build_alaw_decode_table() -> npt.NDArray[np.int16]:
    toggled = np.arange(256, dtype=np.int32) ^ 0x55  # A-law inverts the even bits on the wire
    segment = (toggled & 0x70) >> 4
    t = (toggled & 0x0F) << 4
    t = np.where(segment == 0, t + 8, (t + 0x108) << np.maximum(segment - 1, 0))
    linear = np.where(toggled & 0x80, t, -t)
    return _frozen(linear.astype(np.int16))


_MULAW_ENCODE = _build_mulaw_encode_table()
_MULAW_DECODE = _build_mulaw_decode_table()
_ALAW_ENCODE = _build_alaw_encode_table()
_ALAW_DECODE = _build_alaw_decode_table()


def _as_codes(data: bytes | bytearray | memoryview | npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise AudioFormatError(f"G.711 codes must be uint8, got dtype {data.dtype}")
        return data
    return np.frombuffer(data, dtype=np.uint8)


def _as_pcm16(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint16]:
    if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16:
        actual = pcm.dtype if isinstance(pcm, np.ndarray) else type(pcm).__name__
        raise AudioFormatError(f"G.711 encoders take int16 PCM, got {actual}")
    return pcm.view(np.uint16)


def mulaw_decode(data: bytes | bytearray | memoryview | npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """Expand G.711 mu-law codes to 16-bit linear PCM.

    Args:
        data: Mu-law codes, one byte per sample (bytes-like or a ``uint8`` array of any shape).

    Returns:
        A new ``int16`` array of the same shape (1-D for bytes-like input).

    Raises:
        AudioFormatError: ``data`` is an array whose dtype is not ``uint8``.
    """
    return _MULAW_DECODE[_as_codes(data)]


def mulaw_encode(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """Compress 16-bit linear PCM to G.711 mu-law codes (bit-exact with ``audioop.lin2ulaw``).

    Args:
        pcm: ``int16`` samples, any shape.

    Returns:
        A new ``uint8`` array of the same shape; ``.tobytes()`` gives the wire payload.

    Raises:
        AudioFormatError: ``pcm`` is not an ``int16`` array.
    """
    return _MULAW_ENCODE[_as_pcm16(pcm)]


def alaw_decode(data: bytes | bytearray | memoryview | npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """Expand G.711 A-law codes (even bits inverted, as sent on the wire) to 16-bit linear PCM.

    Args:
        data: A-law codes, one byte per sample (bytes-like or a ``uint8`` array of any shape).

    Returns:
        A new ``int16`` array of the same shape (1-D for bytes-like input).

    Raises:
        AudioFormatError: ``data`` is an array whose dtype is not ``uint8``.
    """
    return _ALAW_DECODE[_as_codes(data)]


def alaw_encode(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """Compress 16-bit linear PCM to G.711 A-law codes (bit-exact with ``audioop.lin2alaw``).

    Args:
        pcm: ``int16`` samples, any shape.

    Returns:
        A new ``uint8`` array of the same shape; ``.tobytes()`` gives the wire payload.

    Raises:
        AudioFormatError: ``pcm`` is not an ``int16`` array.
    """
    return _ALAW_ENCODE[_as_pcm16(pcm)]
