"""StreamingResampler: chunking invariance, anti-aliasing, length and time alignment."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.audio import AudioFormatError, StreamingResampler, resample

DOWN_TO_8K = [
    (16000, 8000),
    (48000, 8000),
    (44100, 8000),
    (11025, 8000),
    (22050, 8000),
    (32000, 8000),
    (24000, 8000),
]
ALL_PAIRS = [*DOWN_TO_8K, (8000, 16000)]
MIN_STOPBAND_DB = 60.0


@functools.cache
def noise(from_hz: int) -> np.ndarray:
    """A quarter second of reproducible white noise at ``from_hz``."""
    return (np.random.default_rng(from_hz).standard_normal(from_hz // 4) * 0.3).astype(np.float32)


def tone(freq_hz: float, *, sample_rate_hz: int, duration_s: float = 0.5) -> np.ndarray:
    t_s = np.arange(round(duration_s * sample_rate_hz)) / sample_rate_hz
    return np.sin(2 * np.pi * freq_hz * t_s).astype(np.float32)


def amplitude_at(y: np.ndarray, freq_hz: float, *, sample_rate_hz: int) -> float:
    """Amplitude of the ``freq_hz`` component of the middle half of ``y`` (edges hold start-up transients)."""
    mid = y[len(y) // 4 : 3 * len(y) // 4].astype(np.float64)
    t_s = np.arange(len(mid)) / sample_rate_hz
    window = np.hanning(len(mid))
    return float(2 * abs(np.sum(mid * window * np.exp(-2j * np.pi * freq_hz * t_s))) / np.sum(window))


def db(ratio: float) -> float:
    return 20 * math.log10(max(ratio, 1e-12))


@settings(max_examples=40, deadline=None)
@given(pair=st.sampled_from(ALL_PAIRS), cuts=st.lists(st.floats(0.0, 1.0), max_size=8))
def test_chunked_equals_whole(pair: tuple[int, int], cuts: list[float]) -> None:
    from_hz, to_hz = pair
    x = noise(from_hz)
    split_points = sorted(round(c * len(x)) for c in cuts)  # repeated points give empty pieces
    resampler = StreamingResampler(from_hz, to_hz)
    pieces = [resampler.process(piece) for piece in np.split(x, split_points)]
    chunked = np.concatenate([*pieces, resampler.flush()])
    whole = resample(x, from_hz=from_hz, to_hz=to_hz)
    assert chunked.dtype == whole.dtype == np.float32
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("from_hz", "to_hz"), ALL_PAIRS)
def test_sample_by_sample_equals_whole(from_hz: int, to_hz: int) -> None:
    x = noise(from_hz)[: from_hz // 50]
    resampler = StreamingResampler(from_hz, to_hz)
    chunked = np.concatenate([*(resampler.process(x[i : i + 1]) for i in range(len(x))), resampler.flush()])
    np.testing.assert_allclose(chunked, resample(x, from_hz=from_hz, to_hz=to_hz), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("from_hz", "to_hz"), ALL_PAIRS)
@pytest.mark.parametrize("num_samples", [0, 1, 2, 5, 441, 1000, 4001])
def test_output_length(from_hz: int, to_hz: int, num_samples: int) -> None:
    y = resample(np.zeros(num_samples, dtype=np.float32), from_hz=from_hz, to_hz=to_hz)
    assert len(y) == math.ceil(num_samples * to_hz / from_hz)
    assert abs(len(y) - round(num_samples * to_hz / from_hz)) <= 1


@pytest.mark.parametrize(("from_hz", "to_hz"), DOWN_TO_8K)
def test_aliasing_tones_are_attenuated(from_hz: int, to_hz: int) -> None:
    for freq_hz in [to_hz / 2 * 1.02, 5000.0, 7000.0, from_hz / 2 * 0.9]:
        y = resample(tone(freq_hz, sample_rate_hz=from_hz), from_hz=from_hz, to_hz=to_hz)
        rms = float(np.sqrt(np.mean(y[len(y) // 4 : 3 * len(y) // 4] ** 2)))
        assert db(rms / math.sqrt(0.5)) <= -MIN_STOPBAND_DB, (
            f"{freq_hz} Hz leaks at {db(rms / math.sqrt(0.5)):.1f} dB"
        )


def test_upsampling_images_are_attenuated() -> None:
    for freq_hz in [1000.0, 3000.0, 3500.0]:
        y = resample(tone(freq_hz, sample_rate_hz=8000), from_hz=8000, to_hz=16000)
        image = amplitude_at(y, 8000 - freq_hz, sample_rate_hz=16000)
        assert db(image) <= -MIN_STOPBAND_DB, f"image of {freq_hz} Hz at {db(image):.1f} dB"


@pytest.mark.parametrize(("from_hz", "to_hz"), ALL_PAIRS)
def test_passband_tone_keeps_its_amplitude(from_hz: int, to_hz: int) -> None:
    for freq_hz in [300.0, 1000.0, 3300.0]:
        y = resample(tone(freq_hz, sample_rate_hz=from_hz), from_hz=from_hz, to_hz=to_hz)
        assert abs(db(amplitude_at(y, freq_hz, sample_rate_hz=to_hz))) < 0.05


@pytest.mark.parametrize(("from_hz", "to_hz"), ALL_PAIRS)
def test_click_stays_time_aligned(from_hz: int, to_hz: int) -> None:
    g = math.gcd(from_hz, to_hz)
    step_in, step_out = from_hz // g, to_hz // g  # click positions that map to whole output samples
    first = step_in * -(-100 // step_in)  # far enough from the start to see both sides of the peak
    for k in [first, 7 * first]:
        x = np.zeros(k + from_hz // 20, dtype=np.float32)
        x[k] = 1.0
        y = resample(x, from_hz=from_hz, to_hz=to_hz)
        assert int(np.argmax(y)) == k // step_in * step_out
        # Symmetric (linear-phase) response around the peak.
        peak = int(np.argmax(y))
        np.testing.assert_allclose(y[peak - 5 : peak], y[peak + 5 : peak : -1], atol=1e-6)


def test_dc_gain_is_one() -> None:
    y = resample(np.full(4410, 0.5, dtype=np.float32), from_hz=44100, to_hz=8000)
    np.testing.assert_allclose(y[200:-200], 0.5, atol=1e-4)


def test_flush_resets_for_a_new_stream() -> None:
    x = noise(16000)
    resampler = StreamingResampler(16000, 8000)
    first = np.concatenate([resampler.process(x), resampler.flush()])
    second = np.concatenate([resampler.process(x), resampler.flush()])
    np.testing.assert_array_equal(first, second)
    assert resampler.flush().shape == (0,)


def test_equal_rates_pass_through() -> None:
    x = noise(8000)
    resampler = StreamingResampler(8000, 8000)
    np.testing.assert_array_equal(resampler.process(x), x)
    assert resampler.flush().shape == (0,)
    assert resampler.lookahead_s == 0.0


def test_properties() -> None:
    resampler = StreamingResampler(48000, 8000)
    assert (resampler.from_hz, resampler.to_hz) == (48000, 8000)
    assert 0 < resampler.lookahead_s < 0.01


@pytest.mark.parametrize(("from_hz", "to_hz"), [(0, 8000), (8000, -1), (True, 8000), (8000.0, 16000)])
def test_bad_rates_are_rejected(from_hz: int, to_hz: int) -> None:
    with pytest.raises(AudioFormatError, match="must be a positive integer"):
        StreamingResampler(from_hz, to_hz)


def test_ratio_needing_too_many_phases_is_rejected() -> None:
    with pytest.raises(AudioFormatError, match="polyphase branches"):
        StreamingResampler(44100, 44101)


def test_bad_input_arrays_are_rejected() -> None:
    resampler = StreamingResampler(16000, 8000)
    with pytest.raises(AudioFormatError, match="1-D floating-point"):
        resampler.process(np.zeros(4, dtype=np.int16))
    with pytest.raises(AudioFormatError, match="1-D floating-point"):
        resampler.process(np.zeros((2, 2), dtype=np.float32))
