"""PCM helpers and the wire-format decoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocols.audio import (
    WIRE_ENCODINGS,
    AudioFormatError,
    alaw_decode,
    alaw_encode,
    decode_audio,
    deinterleave,
    float32_to_int16,
    int16_to_float32,
    mulaw_decode,
    mulaw_encode,
    pcm16le_to_int16,
)

int16_arrays = hnp.arrays(np.int16, st.integers(0, 300))


def test_pcm16le_is_little_endian_and_writable() -> None:
    out = pcm16le_to_int16(b"\x01\x00\xff\xff\x00\x80\xff\x7f")
    np.testing.assert_array_equal(out, [1, -1, -32768, 32767])
    assert out.dtype == np.int16 and out.flags.writeable


@pytest.mark.parametrize("num_bytes", [1, 3, 321])
def test_pcm16le_rejects_odd_length(num_bytes: int) -> None:
    with pytest.raises(AudioFormatError, match=f"even number of bytes, got {num_bytes}"):
        pcm16le_to_int16(bytes(num_bytes))


@given(int16_arrays)
def test_pcm16le_round_trips(x: np.ndarray) -> None:
    np.testing.assert_array_equal(pcm16le_to_int16(x.astype("<i2").tobytes()), x)


@given(int16_arrays)
def test_int16_float32_round_trip_is_exact(x: np.ndarray) -> None:
    f = int16_to_float32(x)
    assert f.dtype == np.float32
    assert np.all((f >= -1.0) & (f < 1.0))
    np.testing.assert_array_equal(float32_to_int16(f), x)


def test_float32_to_int16_clips_rounds_and_zeroes_nan() -> None:
    x = np.array([2.0, -2.0, 1.0, -1.0, 0.5, 1.5 / 32768, 2.5 / 32768, np.nan, np.inf], dtype=np.float32)
    np.testing.assert_array_equal(float32_to_int16(x), [32767, -32768, 32767, -32768, 16384, 2, 2, 0, 32767])


def test_conversions_reject_wrong_dtypes() -> None:
    with pytest.raises(AudioFormatError, match="int16"):
        int16_to_float32(np.zeros(2, dtype=np.float32))
    with pytest.raises(AudioFormatError, match="floating"):
        float32_to_int16(np.zeros(2, dtype=np.int16))


@given(st.integers(1, 8), st.integers(0, 50))
def test_deinterleave_splits_frames(channels: int, num_frames: int) -> None:
    frames = np.arange(num_frames * channels, dtype=np.int32).reshape(num_frames, channels)
    out = deinterleave(frames.reshape(-1), channels)
    assert len(out) == channels
    for c, channel in enumerate(out):
        np.testing.assert_array_equal(channel, frames[:, c])
        assert channel.flags.c_contiguous and channel.dtype == np.int32


def test_deinterleave_rejects_partial_frames_and_bad_arguments() -> None:
    with pytest.raises(AudioFormatError, match="7 samples is not a whole number of 2-channel frames"):
        deinterleave(np.zeros(7, dtype=np.int16), 2)
    with pytest.raises(AudioFormatError, match="channels must be >= 1, got 0"):
        deinterleave(np.zeros(4, dtype=np.int16), 0)
    with pytest.raises(AudioFormatError, match="1-D"):
        deinterleave(np.zeros((2, 2), dtype=np.int16), 2)


@given(st.lists(st.integers(-32768, 32767), max_size=100), st.integers(1, 3))
def test_decode_audio_pcm_s16le(samples: list[int], channels: int) -> None:
    samples = samples[: len(samples) - len(samples) % channels]
    data = np.array(samples, dtype="<i2").tobytes()
    out = decode_audio(data, encoding="pcm_s16le", channels=channels)
    assert len(out) == channels
    for c in range(channels):
        np.testing.assert_array_equal(out[c], samples[c::channels])


@given(st.binary(max_size=200), st.integers(1, 4))
def test_decode_audio_g711(data: bytes, channels: int) -> None:
    data = data[: len(data) - len(data) % channels]
    for encoding, decode in [("mulaw", mulaw_decode), ("alaw", alaw_decode)]:
        out = decode_audio(data, encoding=encoding, channels=channels)
        whole = decode(data)
        for c in range(channels):
            np.testing.assert_array_equal(out[c], whole[c::channels])
            assert out[c].dtype == np.int16


def test_decode_audio_stereo_mulaw_payload() -> None:
    left = np.array([0, 1000, -1000], dtype=np.int16)
    right = np.array([5, -32768, 32767], dtype=np.int16)
    wire = np.stack([mulaw_encode(left), mulaw_encode(right)], axis=1).tobytes()  # (frames, 2)
    got_left, got_right = decode_audio(wire, encoding="mulaw", channels=2)
    np.testing.assert_array_equal(got_left, mulaw_decode(mulaw_encode(left)))
    np.testing.assert_array_equal(got_right, mulaw_decode(mulaw_encode(right)))
    assert alaw_encode(got_left).shape == (3,)


def test_decode_audio_errors() -> None:
    with pytest.raises(AudioFormatError, match="unknown audio encoding 'opus'"):
        decode_audio(b"\x00\x00", encoding="opus", channels=1)
    with pytest.raises(AudioFormatError, match="even number of bytes"):
        decode_audio(b"\x00\x00\x00", encoding="pcm_s16le", channels=1)
    with pytest.raises(AudioFormatError, match="whole number of 2-channel frames"):
        decode_audio(b"\x00\x00\x00", encoding="alaw", channels=2)
    with pytest.raises(AudioFormatError, match="whole number of 2-channel frames"):
        decode_audio(b"\x00\x00" * 3, encoding="pcm_s16le", channels=2)
    assert {"pcm_s16le", "mulaw", "alaw"} == WIRE_ENCODINGS


def test_format_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        pcm16le_to_int16(b"\x00")


def test_errors_share_the_project_root() -> None:
    from protocols.audio import AudioError, AudioFileError
    from protocols.errors import GatewayError

    assert issubclass(AudioFormatError, AudioError) and issubclass(AudioFileError, AudioError)
    assert issubclass(AudioError, GatewayError)
    assert AudioFileError("a.wav", "empty file").code == "audio_file_error"
