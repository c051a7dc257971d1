"""Reading and writing call recordings (``xlgate transcribe``, ``xlgate stream``, ``xlgate eval dev``, the tests).

This is file I/O, so it lives on the transport side (``gateway/``), not in the sans-I/O ``protocols/``; the
codecs it uses (G.711, PCM conversions) are there.

Containers and codecs are handled by libsndfile through the ``soundfile`` package: WAV with PCM
(8/16/24/32-bit, float), mu-law, A-law, GSM 6.10 and the ADPCMs, FLAC, OGG Vorbis/Opus, and MP3 where
the bundled libsndfile is 1.1 or newer (``soundfile.available_formats()`` lists ``"MP3"``). Files are
recognised by their content, not their name.

Headerless telephony dumps are recognised by extension (or forced with ``raw_encoding``) and decoded
with this package's exact G.711 codecs:

==========================================  ==============
extensions                                  encoding
==========================================  ==============
``.ul`` ``.ulaw`` ``.mulaw`` ``.pcmu``      ``mulaw``
``.al`` ``.alaw`` ``.pcma``                 ``alaw``
``.raw`` ``.pcm`` ``.sln``                  ``pcm_s16le``
==========================================  ==============

Raw files carry no sample rate or channel count: they are taken from ``raw_sample_rate_hz`` (default
8000, the telephony rate) and ``raw_channels`` (default 1; channels interleaved by sample frame).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import soundfile as sf

from protocols.audio.errors import AudioFileError, AudioFormatError
from protocols.audio.g711 import alaw_decode, alaw_encode, mulaw_decode, mulaw_encode
from protocols.audio.pcm import WIRE_ENCODINGS, decode_audio, float32_to_int16, int16_to_float32

__all__ = ["RAW_EXTENSIONS", "AudioClip", "read_audio_file", "write_wav"]

#: Headerless file extensions (lower case, with the dot) and the encoding they imply.
RAW_EXTENSIONS: Final = MappingProxyType(
    {
        ".ul": "mulaw",
        ".ulaw": "mulaw",
        ".mulaw": "mulaw",
        ".pcmu": "mulaw",
        ".al": "alaw",
        ".alaw": "alaw",
        ".pcma": "alaw",
        ".raw": "pcm_s16le",
        ".pcm": "pcm_s16le",
        ".sln": "pcm_s16le",
    }
)

_READ_BLOCK_FRAMES: Final = 1 << 20

_WAV_SUBTYPES: Final = MappingProxyType({"pcm_s16le": "PCM_16", "mulaw": "ULAW", "alaw": "ALAW"})


@dataclass(frozen=True, slots=True, eq=False)
class AudioClip:
    """Decoded audio: one float32 array per channel, samples in ``[-1, 1]``.

    Attributes:
        channels: One 1-D float32 array per channel, all of the same length.
        sample_rate_hz: Samples per second of every channel.

    Raises:
        AudioFormatError: No channels, channels of different lengths or dtypes other than float32,
            or a non-positive sample rate.
    """

    channels: list[npt.NDArray[np.float32]]
    sample_rate_hz: int

    def __post_init__(self) -> None:
        if not self.channels:
            raise AudioFormatError("an AudioClip needs at least one channel")
        lengths = {c.shape for c in self.channels}
        if len(lengths) != 1 or any(c.ndim != 1 or c.dtype != np.float32 for c in self.channels):
            raise AudioFormatError(
                "AudioClip channels must be 1-D float32 arrays of equal length, got "
                + ", ".join(f"{c.shape} {c.dtype}" for c in self.channels)
            )
        if self.sample_rate_hz <= 0:
            raise AudioFormatError(f"sample_rate_hz must be positive, got {self.sample_rate_hz}")

    @property
    def num_channels(self) -> int:
        """Number of channels."""
        return len(self.channels)

    @property
    def num_frames(self) -> int:
        """Samples per channel."""
        return int(self.channels[0].shape[0])

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return self.num_frames / self.sample_rate_hz


def read_audio_file(
    path: str | os.PathLike[str],
    *,
    raw_encoding: str | None = None,
    raw_sample_rate_hz: int = 8000,
    raw_channels: int = 1,
) -> AudioClip:
    """Read a recording into float32 channels.

    Args:
        path: The file to read.
        raw_encoding: Treat the file as headerless audio in this encoding (one of ``"pcm_s16le"``,
            ``"mulaw"``, ``"alaw"``) whatever its extension. When ``None``, extensions in
            :data:`RAW_EXTENSIONS` select raw decoding and anything else goes to libsndfile.
        raw_sample_rate_hz: Sample rate of a headerless file (ignored for files with a header).
        raw_channels: Interleaved channel count of a headerless file (ignored otherwise).

    Returns:
        The clip at the file's own sample rate (no resampling). Float files are clipped to ``[-1, 1]``.

    Raises:
        AudioFileError: The file is missing, not a regular file, unreadable, empty (0 bytes or no
            samples), in an unsupported or unrecognised format, or a raw file that is not a whole
            number of sample frames.
        AudioFormatError: ``raw_encoding``, ``raw_sample_rate_hz`` or ``raw_channels`` is invalid.
    """
    if raw_encoding is not None and raw_encoding not in WIRE_ENCODINGS:
        raise AudioFormatError(
            f"unknown raw_encoding {raw_encoding!r}, expected one of {sorted(WIRE_ENCODINGS)}"
        )
    if raw_sample_rate_hz <= 0:
        raise AudioFormatError(f"raw_sample_rate_hz must be positive, got {raw_sample_rate_hz}")
    if raw_channels < 1:
        raise AudioFormatError(f"raw_channels must be >= 1, got {raw_channels}")
    file_path = Path(path)
    try:
        stat = file_path.stat()
    except FileNotFoundError:
        raise AudioFileError(path, "no such file") from None
    except OSError as e:
        raise AudioFileError(path, f"cannot access file: {e.strerror or e}") from e
    if not file_path.is_file():
        raise AudioFileError(path, "not a regular file")
    if stat.st_size == 0:
        raise AudioFileError(path, "empty file (0 bytes)")
    encoding = raw_encoding or RAW_EXTENSIONS.get(file_path.suffix.lower())
    if encoding is not None:
        return _read_raw(path, encoding=encoding, sample_rate_hz=raw_sample_rate_hz, channels=raw_channels)
    return _read_with_libsndfile(path)


def _read_raw(
    path: str | os.PathLike[str], *, encoding: str, sample_rate_hz: int, channels: int
) -> AudioClip:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise AudioFileError(path, f"cannot read file: {e.strerror or e}") from e
    try:
        pcm = decode_audio(data, encoding=encoding, channels=channels)
    except AudioFormatError as e:
        raise AudioFileError(path, f"not valid raw {encoding} audio with {channels} channel(s): {e}") from e
    return AudioClip(channels=[int16_to_float32(c) for c in pcm], sample_rate_hz=sample_rate_hz)


def _libsndfile_reason(e: Exception) -> str:
    # LibsndfileError.error_string is libsndfile's message without the path, which we add ourselves.
    return str(getattr(e, "error_string", None) or e)


def _read_with_libsndfile(path: str | os.PathLike[str]) -> AudioClip:
    try:
        with sf.SoundFile(os.fspath(path)) as f:
            sample_rate_hz = int(f.samplerate)
            # Read in blocks: some codecs (GSM 6.10 in WAV, for one) are not seekable, so libsndfile
            # cannot tell the frame count up front.
            blocks: list[npt.NDArray[np.float32]] = []
            while True:
                block = f.read(_READ_BLOCK_FRAMES, dtype="float32", always_2d=True)  # (frames, channels)
                if block.shape[0] == 0:
                    break
                blocks.append(block)
            frames = np.concatenate(blocks) if blocks else np.zeros((0, f.channels), dtype=np.float32)
    except (sf.SoundFileError, RuntimeError) as e:
        raise AudioFileError(path, f"unreadable or unsupported audio format: {_libsndfile_reason(e)}") from e
    except OSError as e:
        raise AudioFileError(path, f"cannot read file: {e.strerror or e}") from e
    if frames.shape[0] == 0:
        raise AudioFileError(path, "contains no audio samples")
    np.clip(frames, -1.0, 1.0, out=frames)
    channels = [np.ascontiguousarray(frames[:, c]) for c in range(frames.shape[1])]
    return AudioClip(channels=channels, sample_rate_hz=sample_rate_hz)


def _to_int16(channel: npt.NDArray[Any]) -> npt.NDArray[np.int16]:
    if channel.dtype == np.int16:
        return channel
    if np.issubdtype(channel.dtype, np.floating):
        return float32_to_int16(channel)
    raise AudioFormatError(f"channels must be int16 or float arrays, got dtype {channel.dtype}")


def write_wav(
    path: str | os.PathLike[str],
    channels: list[npt.NDArray[Any]],
    sample_rate_hz: int,
    *,
    encoding: str = "pcm_s16le",
) -> None:
    """Write channels to a WAV file.

    Args:
        path: Destination; overwritten if it exists.
        channels: One 1-D array per channel, all the same length: ``int16`` PCM, or floats in
            ``[-1, 1]`` (converted with :func:`~protocols.audio.pcm.float32_to_int16`).
        sample_rate_hz: Sample rate stored in the header.
        encoding: ``"pcm_s16le"`` (WAV subtype PCM_16), ``"mulaw"`` (ULAW) or ``"alaw"`` (ALAW).
            G.711 files hold exactly the codes :func:`~protocols.audio.g711.mulaw_encode` /
            :func:`~protocols.audio.g711.alaw_encode` produce.

    Raises:
        AudioFormatError: Unknown encoding, no channels, channels that are not 1-D or differ in
            length, unsupported dtypes, or a non-positive sample rate.
        AudioFileError: The file could not be written.
    """
    subtype = _WAV_SUBTYPES.get(encoding)
    if subtype is None:
        raise AudioFormatError(f"unknown WAV encoding {encoding!r}, expected one of {sorted(_WAV_SUBTYPES)}")
    if sample_rate_hz <= 0:
        raise AudioFormatError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
    if not channels:
        raise AudioFormatError("write_wav needs at least one channel")
    if any(c.ndim != 1 for c in channels) or len({c.shape[0] for c in channels}) != 1:
        raise AudioFormatError(
            "channels must be 1-D arrays of equal length, got shapes "
            + ", ".join(str(c.shape) for c in channels)
        )
    pcm = np.stack([_to_int16(c) for c in channels], axis=1)  # (num_frames, num_channels)
    # libsndfile's own G.711 encoder rounds some negative samples differently from G.711's reference;
    # snapping to the exact codec's grid first makes libsndfile emit exactly the reference codes.
    if encoding == "mulaw":
        pcm = mulaw_decode(mulaw_encode(pcm))
    elif encoding == "alaw":
        pcm = alaw_decode(alaw_encode(pcm))
    try:
        sf.write(os.fspath(path), pcm, sample_rate_hz, subtype=subtype, format="WAV")
    except (sf.SoundFileError, RuntimeError) as e:
        raise AudioFileError(path, f"cannot write WAV: {_libsndfile_reason(e)}") from e
    except OSError as e:
        raise AudioFileError(path, f"cannot write file: {e.strerror or e}") from e
