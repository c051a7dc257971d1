"""Reading and writing recordings: WAV subtypes, other containers, raw telephony dumps, errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from gateway.audio_files import RAW_EXTENSIONS, AudioClip, read_audio_file, write_wav
from protocols.audio import (
    AudioFileError,
    AudioFormatError,
    alaw_decode,
    alaw_encode,
    int16_to_float32,
    mulaw_decode,
    mulaw_encode,
)

RNG = np.random.default_rng(7)
PCM = RNG.integers(-20000, 20000, size=1600, dtype=np.int16)
ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)


def wav_data_chunk(path: Path) -> bytes:
    data = path.read_bytes()
    start = data.index(b"data") + 8
    return data[start : start + int.from_bytes(data[start - 4 : start], "little")]


@pytest.mark.parametrize("sample_rate_hz", [8000, 16000])
def test_pcm16_wav_round_trip_is_exact(tmp_path: Path, sample_rate_hz: int) -> None:
    path = tmp_path / "call.wav"
    write_wav(path, [PCM], sample_rate_hz)
    clip = read_audio_file(path)
    assert (clip.sample_rate_hz, clip.num_channels, clip.num_frames) == (sample_rate_hz, 1, len(PCM))
    assert clip.duration_s == pytest.approx(len(PCM) / sample_rate_hz)
    assert clip.channels[0].dtype == np.float32
    np.testing.assert_array_equal(clip.channels[0], int16_to_float32(PCM))


def test_stereo_wav_keeps_channels_apart(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    left, right = PCM, (-PCM[::-1]).astype(np.int16)
    write_wav(str(path), [left, right], 16000)
    clip = read_audio_file(str(path))
    assert clip.num_channels == 2
    np.testing.assert_array_equal(clip.channels[0], int16_to_float32(left))
    np.testing.assert_array_equal(clip.channels[1], int16_to_float32(right))
    assert all(c.flags.c_contiguous for c in clip.channels)


@pytest.mark.parametrize(
    ("encoding", "encode", "decode"),
    [("mulaw", mulaw_encode, mulaw_decode), ("alaw", alaw_encode, alaw_decode)],
)
def test_g711_wav_holds_reference_codes(
    tmp_path: Path,
    encoding: str,
    encode: Callable[[np.ndarray], np.ndarray],
    decode: Callable[[np.ndarray], np.ndarray],
) -> None:
    path = tmp_path / f"{encoding}.wav"
    write_wav(path, [ALL_PCM], 8000, encoding=encoding)
    assert wav_data_chunk(path) == encode(ALL_PCM).tobytes()
    clip = read_audio_file(path)
    np.testing.assert_array_equal(clip.channels[0], int16_to_float32(decode(encode(ALL_PCM))))


def test_write_wav_accepts_float_channels(tmp_path: Path) -> None:
    path = tmp_path / "float.wav"
    write_wav(path, [np.array([0.5, -1.0, 2.0, 0.0], dtype=np.float32)], 8000)
    np.testing.assert_array_equal(read_audio_file(path).channels[0], [0.5, -1.0, 32767 / 32768, 0.0])


@pytest.mark.parametrize(
    ("subtype", "atol"),
    [("PCM_U8", 1 / 128), ("PCM_24", 1e-6), ("PCM_32", 1e-6), ("FLOAT", 0), ("GSM610", None)],
)
def test_other_wav_subtypes_are_read(tmp_path: Path, subtype: str, atol: float | None) -> None:
    path = tmp_path / f"{subtype}.wav"
    signal = int16_to_float32(PCM)
    sf.write(path, signal, 8000, subtype=subtype, format="WAV")
    clip = read_audio_file(path)
    assert clip.sample_rate_hz == 8000 and clip.channels[0].dtype == np.float32
    if atol is None:  # lossy speech codec: only check that speech-like energy comes back
        assert clip.num_frames >= len(PCM) and np.max(np.abs(clip.channels[0])) > 0.05
    else:
        np.testing.assert_allclose(clip.channels[0], signal, atol=atol)


@pytest.mark.parametrize(
    ("fmt", "subtype", "sample_rate_hz"),
    [
        ("FLAC", "PCM_16", 16000),
        ("OGG", "VORBIS", 16000),
        ("OGG", "OPUS", 48000),
        ("MP3", "MPEG_LAYER_III", 16000),
    ],
)
def test_compressed_containers_are_read(tmp_path: Path, fmt: str, subtype: str, sample_rate_hz: int) -> None:
    if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile cannot write {fmt}/{subtype}")
    t_s = np.arange(sample_rate_hz // 2) / sample_rate_hz
    signal = (0.5 * np.sin(2 * np.pi * 440 * t_s)).astype(np.float32)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, np.stack([signal, signal], axis=1), sample_rate_hz, subtype=subtype, format=fmt)
    clip = read_audio_file(path)
    assert (clip.sample_rate_hz, clip.num_channels) == (sample_rate_hz, 2)
    assert 0.3 < float(np.max(np.abs(clip.channels[1]))) <= 1.0


@pytest.mark.parametrize("suffix", sorted(RAW_EXTENSIONS))
def test_raw_files_by_extension(tmp_path: Path, suffix: str) -> None:
    encoding = RAW_EXTENSIONS[suffix]
    if encoding == "mulaw":
        payload, expected = mulaw_encode(PCM).tobytes(), mulaw_decode(mulaw_encode(PCM))
    elif encoding == "alaw":
        payload, expected = alaw_encode(PCM).tobytes(), alaw_decode(alaw_encode(PCM))
    else:
        payload, expected = PCM.astype("<i2").tobytes(), PCM
    path = tmp_path / f"dump{suffix.upper()}"  # extensions match case-insensitively
    path.write_bytes(payload)
    clip = read_audio_file(path)
    assert clip.sample_rate_hz == 8000
    np.testing.assert_array_equal(clip.channels[0], int16_to_float32(expected))


def test_raw_encoding_overrides_extension_with_rate_and_channels(tmp_path: Path) -> None:
    path = tmp_path / "capture.bin"
    stereo = np.stack([PCM, PCM // 2], axis=1)  # (frames, 2)
    path.write_bytes(stereo.astype("<i2").tobytes())
    clip = read_audio_file(path, raw_encoding="pcm_s16le", raw_sample_rate_hz=16000, raw_channels=2)
    assert (clip.sample_rate_hz, clip.num_channels, clip.num_frames) == (16000, 2, len(PCM))
    np.testing.assert_array_equal(clip.channels[1], int16_to_float32((PCM // 2).astype(np.int16)))


def test_raw_file_with_partial_frame_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "odd.raw"
    path.write_bytes(b"\x00\x01\x02")
    with pytest.raises(AudioFileError, match="not valid raw pcm_s16le audio") as info:
        read_audio_file(path)
    assert info.value.path == str(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioFileError, match="no such file") as info:
        read_audio_file(path)
    assert info.value.reason == "no such file"
    assert str(info.value) == f"{path}: no such file"


def test_directory_is_not_a_recording(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError, match="not a regular file"):
        read_audio_file(tmp_path)


@pytest.mark.parametrize("name", ["empty.wav", "empty.ul", "empty"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(AudioFileError, match=r"empty file \(0 bytes\)"):
        read_audio_file(path)


@pytest.mark.parametrize(
    "payload", [b"RIFF\x00\x00garbage" * 20, b"hello, this is not audio\n" * 10, bytes(range(256))]
)
def test_garbage_is_reported_as_unsupported(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "garbage.wav"
    path.write_bytes(payload)
    with pytest.raises(AudioFileError, match="unreadable or unsupported audio format"):
        read_audio_file(path)


def test_wav_without_samples(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    write_wav(path, [np.zeros(0, dtype=np.int16)], 8000)
    with pytest.raises(AudioFileError, match="contains no audio samples"):
        read_audio_file(path)


def test_bad_arguments() -> None:
    with pytest.raises(AudioFormatError, match="unknown raw_encoding 'gsm'"):
        read_audio_file("x.ul", raw_encoding="gsm")
    with pytest.raises(AudioFormatError, match="raw_channels"):
        read_audio_file("x.ul", raw_channels=0)
    with pytest.raises(AudioFormatError, match="unknown WAV encoding 'opus'"):
        write_wav("x.wav", [PCM], 8000, encoding="opus")
    with pytest.raises(AudioFormatError, match="equal length"):
        write_wav("x.wav", [PCM, PCM[:10]], 8000)
    with pytest.raises(AudioFormatError, match="at least one channel"):
        write_wav("x.wav", [], 8000)
    with pytest.raises(AudioFormatError, match="int16 or float"):
        write_wav("x.wav", [PCM.astype(np.int32)], 8000)


def test_write_to_missing_directory_is_a_file_error(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError, match="cannot write"):
        write_wav(tmp_path / "no" / "such" / "dir.wav", [PCM], 8000)


def test_audio_clip_validates() -> None:
    with pytest.raises(AudioFormatError, match="at least one channel"):
        AudioClip(channels=[], sample_rate_hz=8000)
    with pytest.raises(AudioFormatError, match="equal length"):
        AudioClip(channels=[np.zeros(3, np.float32), np.zeros(4, np.float32)], sample_rate_hz=8000)
    with pytest.raises(AudioFormatError, match="float32"):
        AudioClip(channels=[np.zeros(3, np.float64)], sample_rate_hz=8000)
    with pytest.raises(AudioFormatError, match="sample_rate_hz"):
        AudioClip(channels=[np.zeros(3, np.float32)], sample_rate_hz=0)
