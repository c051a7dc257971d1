"""Audio codecs and conversions shared by the ingress protocols, the session and the data pipeline.

Pure computation: nothing here imports asyncio, socket or time, or touches a file (recordings are read and
written on the transport side, by :mod:`gateway.audio_files`).
"""

from protocols.audio.errors import AudioError, AudioFileError, AudioFormatError
from protocols.audio.g711 import alaw_decode, alaw_encode, mulaw_decode, mulaw_encode
from protocols.audio.pcm import (
    WIRE_ENCODINGS,
    decode_audio,
    deinterleave,
    float32_to_int16,
    int16_to_float32,
    pcm16le_to_int16,
)
from protocols.audio.resample import StreamingResampler, resample

__all__ = [
    "WIRE_ENCODINGS",
    "AudioError",
    "AudioFileError",
    "AudioFormatError",
    "StreamingResampler",
    "alaw_decode",
    "alaw_encode",
    "decode_audio",
    "deinterleave",
    "float32_to_int16",
    "int16_to_float32",
    "mulaw_decode",
    "mulaw_encode",
    "pcm16le_to_int16",
    "resample",
]
