"""Saved recognition audio (MRCP Save-Waveform, RFC 6787 §9.4.26): WAV files under one folder, on a budget.

Theory of operation: :class:`WaveformStore` owns one folder and every ``xlgate-*.wav`` file in it, oldest
first. :meth:`WaveformStore.open` starts a :class:`WaveformRecording` (16-bit mono PCM at the call's clock
rate); each :meth:`WaveformRecording.append` writes the samples and then the two RIFF sizes, with positioned
writes on an unbuffered descriptor, so the file on disk is a complete WAV of the audio so far at every
moment: a client may fetch it as soon as RECOGNITION-COMPLETE names it. The folder stays within
``max_files`` files and ``max_bytes`` bytes: room is made by deleting the oldest finished recordings; when
the recordings still being written fill the budget alone, a recording stops growing (its file and size stay
consistent) and a warning is logged. Call audio is personal data: nothing is saved unless a folder is
configured, and the folder is created private (0700).
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import os
import struct
import uuid
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["WAV_HEADER_BYTES", "WaveformRecording", "WaveformStore"]

log = logging.getLogger("xlgate.waveforms")

WAV_HEADER_BYTES = 44
_PREFIX = "xlgate-"
_SAMPLE_BYTES = 2


def _wav_header(*, sample_rate_hz: int, data_bytes: int) -> bytes:
    """The canonical 44-byte RIFF/WAVE header of 16-bit mono PCM."""
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack(
            "<IHHIIHH",
            16,
            1,
            1,
            sample_rate_hz,
            sample_rate_hz * _SAMPLE_BYTES,
            _SAMPLE_BYTES,
            8 * _SAMPLE_BYTES,
        )
        + b"data"
        + struct.pack("<I", data_bytes)
    )


class WaveformRecording:
    """One request's audio being saved; see the module docstring. Made by :meth:`WaveformStore.open`."""

    def __init__(self, store: WaveformStore, path: Path, *, sample_rate_hz: int) -> None:
        self.path = path
        self.sample_rate_hz = sample_rate_hz
        self._store = store
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._data_bytes = 0
        self._full_logged = False
        os.pwrite(self._fd, _wav_header(sample_rate_hz=sample_rate_hz, data_bytes=0), 0)

    @property
    def uri(self) -> str:
        """``file:///...`` of the recording."""
        return self.path.as_uri()

    @property
    def size_bytes(self) -> int:
        """The file's size: header and samples."""
        return WAV_HEADER_BYTES + self._data_bytes

    @property
    def duration_s(self) -> float:
        """Seconds of audio saved."""
        return self._data_bytes / _SAMPLE_BYTES / self.sample_rate_hz

    @property
    def closed(self) -> bool:
        """Whether the recording is finished."""
        return self._fd is None

    def append(self, samples: npt.NDArray[np.int16]) -> bool:
        """Write ``samples`` (int16, mono) and the header's new sizes.

        Returns:
            False when nothing was written: the recording is closed, or the store's budget is spent.
        """
        if self._fd is None:
            return False
        data = samples.astype("<i2", copy=False).tobytes()
        if not data:
            return True
        if not self._store._grow(self, len(data)):
            if not self._full_logged:
                self._full_logged = True
                log.warning(
                    "waveform %s: the folder's budget is spent; the recording stops here", self.path.name
                )
            return False
        os.pwrite(self._fd, data, WAV_HEADER_BYTES + self._data_bytes)
        self._data_bytes += len(data)
        os.pwrite(self._fd, struct.pack("<I", 36 + self._data_bytes), 4)
        os.pwrite(self._fd, struct.pack("<I", self._data_bytes), 40)
        return True

    def close(self) -> None:
        """Finish the recording (the file stays; the store may delete it later to make room)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._store._finished(self)


class WaveformStore:
    """The folder of saved recordings and its budget; see the module docstring."""

    def __init__(self, directory: Path, *, max_files: int, max_bytes: int) -> None:
        """Create (private) or adopt ``directory``; its existing ``xlgate-*.wav`` files count against the budget.

        Raises:
            ValueError: a limit below one file or one header.
            OSError: the folder cannot be created.
        """
        if max_files < 1:
            raise ValueError(f"max_files must be at least 1, got {max_files}")
        if max_bytes < WAV_HEADER_BYTES:
            raise ValueError(f"max_bytes must be at least {WAV_HEADER_BYTES}, got {max_bytes}")
        self.directory = directory.resolve()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_files = max_files
        self.max_bytes = max_bytes
        found = sorted((p.stat().st_mtime, p) for p in self.directory.glob(f"{_PREFIX}*.wav") if p.is_file())
        self._finished_files: collections.deque[tuple[Path, int]] = collections.deque(
            (p, p.stat().st_size) for _, p in found
        )
        self._open: dict[Path, WaveformRecording] = {}
        self._total_bytes = sum(size for _, size in self._finished_files)

    @property
    def file_count(self) -> int:
        """Recordings in the folder, finished or being written."""
        return len(self._finished_files) + len(self._open)

    @property
    def total_bytes(self) -> int:
        """Bytes the recordings take."""
        return self._total_bytes

    def open(self, *, sample_rate_hz: int) -> WaveformRecording | None:
        """A new recording, after deleting the oldest finished ones to stay within the budget.

        Returns:
            None when the recordings being written already hold every file or byte allowed (logged).
        """
        self._make_room(files=1, bytes_=WAV_HEADER_BYTES)
        if self.file_count + 1 > self.max_files or self._total_bytes + WAV_HEADER_BYTES > self.max_bytes:
            log.warning("waveform folder full with recordings in progress; this request's audio is not saved")
            return None
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        path = self.directory / f"{_PREFIX}{stamp}-{uuid.uuid4().hex[:12]}.wav"
        recording = WaveformRecording(self, path, sample_rate_hz=sample_rate_hz)
        self._open[path] = recording
        self._total_bytes += WAV_HEADER_BYTES
        return recording

    def _make_room(self, *, files: int, bytes_: int) -> None:
        while self._finished_files and (
            self.file_count + files > self.max_files or self._total_bytes + bytes_ > self.max_bytes
        ):
            path, size = self._finished_files.popleft()
            self._total_bytes -= size
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("waveform %s could not be deleted: %s", path.name, exc)

    def _grow(self, recording: WaveformRecording, num_bytes: int) -> bool:
        self._make_room(files=0, bytes_=num_bytes)
        if self._total_bytes + num_bytes > self.max_bytes:
            return False
        self._total_bytes += num_bytes
        return True

    def _finished(self, recording: WaveformRecording) -> None:
        if self._open.pop(recording.path, None) is not None:
            self._finished_files.append((recording.path, recording.size_bytes))

    def close(self) -> None:
        """Finish every recording still open (server shutdown)."""
        for recording in list(self._open.values()):
            recording.close()
