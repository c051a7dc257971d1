"""gateway.waveforms: saved recognition audio is a valid WAV after every append, and the folder stays within
its file and byte budget (oldest finished recordings deleted first; a recording that alone fills the budget
stops growing)."""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import pytest

from gateway.waveforms import WAV_HEADER_BYTES, WaveformStore


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2")


def frame(value: int, n: int = 160) -> np.ndarray:
    return np.full(n, value, np.int16)


def test_a_recording_is_a_complete_wav_after_every_append(tmp_path: Path) -> None:
    store = WaveformStore(tmp_path / "w", max_files=10, max_bytes=1 << 20)
    rec = store.open(sample_rate_hz=8000)
    assert (
        rec is not None and rec.uri.startswith("file:///") and rec.path.parent == (tmp_path / "w").resolve()
    )
    assert read_wav(rec.path).size == 0 and rec.size_bytes == WAV_HEADER_BYTES
    for k in range(3):
        assert rec.append(frame(k - 1))
        assert rec.path.stat().st_size == rec.size_bytes == WAV_HEADER_BYTES + 320 * (k + 1)
        np.testing.assert_array_equal(read_wav(rec.path), np.repeat(np.arange(-1, k), 160).astype(np.int16))
    assert rec.duration_s == pytest.approx(0.06)
    rec.close()
    assert rec.closed and not rec.append(frame(5)) and rec.path.stat().st_size == WAV_HEADER_BYTES + 960


def test_oldest_recordings_make_room_by_count_and_by_bytes(tmp_path: Path) -> None:
    store = WaveformStore(tmp_path, max_files=2, max_bytes=WAV_HEADER_BYTES * 3 + 320 * 4)
    paths = []
    for k in range(3):
        rec = store.open(sample_rate_hz=8000)
        assert rec is not None
        rec.append(frame(k))
        rec.close()
        paths.append(rec.path)
    assert [p.exists() for p in paths] == [False, True, True] and store.file_count == 2
    # Bytes: one more recording of three frames needs the space of the older of the two.
    rec = store.open(sample_rate_hz=8000)
    assert rec is not None
    for k in range(3):
        assert rec.append(frame(k))
    assert [p.exists() for p in paths] == [False, False, True]
    assert store.total_bytes == sum(p.stat().st_size for p in tmp_path.glob("*.wav")) <= store.max_bytes
    rec.close()


def test_a_recording_that_fills_the_budget_alone_stops_growing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = WaveformStore(tmp_path, max_files=3, max_bytes=WAV_HEADER_BYTES + 320 * 2)
    rec = store.open(sample_rate_hz=8000)
    assert rec is not None
    assert rec.append(frame(1)) and rec.append(frame(2))
    assert not rec.append(frame(3))
    assert "budget is spent" in caplog.text
    np.testing.assert_array_equal(read_wav(rec.path), np.repeat([1, 2], 160).astype(np.int16))
    assert store.open(sample_rate_hz=8000) is None  # no finished recording to delete: nothing saved
    rec.close()
    assert store.open(sample_rate_hz=8000) is not None  # now the finished one makes room


def test_existing_recordings_count_and_other_files_are_left_alone(tmp_path: Path) -> None:
    old = tmp_path / "xlgate-20260101T000000-aaaaaaaaaaaa.wav"
    old.write_bytes(b"\0" * 100)
    os.utime(old, (1, 1))
    other = tmp_path / "notes.wav"
    other.write_bytes(b"keep")
    store = WaveformStore(tmp_path, max_files=1, max_bytes=1 << 20)
    assert store.file_count == 1 and store.total_bytes == 100
    rec = store.open(sample_rate_hz=8000)
    assert rec is not None and not old.exists() and other.exists()
    rec.close()


def test_limits_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_files"):
        WaveformStore(tmp_path, max_files=0, max_bytes=1 << 20)
    with pytest.raises(ValueError, match="max_bytes"):
        WaveformStore(tmp_path, max_files=1, max_bytes=10)
