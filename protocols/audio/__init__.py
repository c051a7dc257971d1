"""Audio codecs and conversions shared by the ingress protocols, the session and the data pipeline.

Pure computation except :mod:`protocols.audio.files`, which reads and writes files through
libsndfile. Nothing here imports asyncio, socket or time.
"""

from protocols.audio.errors import AudioError, AudioFileError, AudioFormatError
from protocols.audio.files import RAW_EXTENSIONS, AudioClip, read_audio_file, write_wav
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
    "RAW_EXTENSIONS",
    "WIRE_ENCODINGS",
    "AudioClip",
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
    "read_audio_file",
    "resample",
    "write_wav",
]
