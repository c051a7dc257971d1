"""Errors raised by :mod:`protocols.audio`.

``AudioError`` is the root of this package's errors and derives from the project root
:class:`~protocols.errors.GatewayError`. These errors carry no wire reply of their own: the protocol
that fed the audio decides what a bad payload means to its peer (for the WebSocket protocol, a
remote protocol error).
"""

from __future__ import annotations

import os
from typing import ClassVar

from protocols.errors import GatewayError

__all__ = ["AudioError", "AudioFileError", "AudioFormatError"]


class AudioError(GatewayError):
    """Base class of every error raised by :mod:`protocols.audio`."""

    code: ClassVar[str] = "audio_error"


class AudioFormatError(AudioError, ValueError):
    """Audio data or parameters do not match the expected format.

    Raised, for example, for PCM payloads of odd byte length, sample counts that are not a multiple
    of the channel count, unknown encoding names or unsupported sample rates. Also a ``ValueError``,
    so generic argument checks catch it.
    """

    code: ClassVar[str] = "audio_format_error"


class AudioFileError(AudioError):
    """An audio file could not be read or written.

    Attributes:
        path: The file's path, as given by the caller.
        reason: A short human-readable explanation (what was expected and what was found).
    """

    code: ClassVar[str] = "audio_file_error"

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type[AudioFileError], tuple[str, str]]:
        # Keeps the two-argument constructor working through pickle (multiprocessing data loaders).
        return (type(self), (self.path, self.reason))
