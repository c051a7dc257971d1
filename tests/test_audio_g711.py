"""G.711 codecs: bit-exact against CPython's audioop (the Sun reference) over every input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.audio import AudioFormatError, alaw_decode, alaw_encode, mulaw_decode, mulaw_encode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the oracle only; deprecated in 3.11, removed in 3.13

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)


def test_mulaw_encode_matches_audioop_for_every_sample() -> None:
    expected = np.frombuffer(audioop.lin2ulaw(ALL_PCM.tobytes(), 2), dtype=np.uint8)
    np.testing.assert_array_equal(mulaw_encode(ALL_PCM), expected)


def test_alaw_encode_matches_audioop_for_every_sample() -> None:
    expected = np.frombuffer(audioop.lin2alaw(ALL_PCM.tobytes(), 2), dtype=np.uint8)
    np.testing.assert_array_equal(alaw_encode(ALL_PCM), expected)


def test_mulaw_decode_matches_audioop_for_every_code() -> None:
    expected = np.frombuffer(audioop.ulaw2lin(ALL_CODES.tobytes(), 2), dtype=np.int16)
    np.testing.assert_array_equal(mulaw_decode(ALL_CODES), expected)
    np.testing.assert_array_equal(mulaw_decode(ALL_CODES.tobytes()), expected)


def test_alaw_decode_matches_audioop_for_every_code() -> None:
    expected = np.frombuffer(audioop.alaw2lin(ALL_CODES.tobytes(), 2), dtype=np.int16)
    np.testing.assert_array_equal(alaw_decode(ALL_CODES), expected)
    np.testing.assert_array_equal(alaw_decode(bytearray(ALL_CODES.tobytes())), expected)


@pytest.mark.parametrize(
    ("code", "linear"),
    [(0xFF, 0), (0x7F, 0), (0x80, 32124), (0x00, -32124), (0xFE, 8), (0x7E, -8)],
)
def test_mulaw_known_values(code: int, linear: int) -> None:
    assert mulaw_decode(bytes([code]))[0] == linear


@pytest.mark.parametrize(
    ("code", "linear"),
    [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0xD4, 24), (0x54, -24)],
)
def test_alaw_known_values(code: int, linear: int) -> None:
    assert alaw_decode(bytes([code]))[0] == linear


def test_encode_known_values() -> None:
    pcm = np.array([0, 32767, -32768], dtype=np.int16)
    np.testing.assert_array_equal(mulaw_encode(pcm), [0xFF, 0x80, 0x00])
    np.testing.assert_array_equal(alaw_encode(pcm), [0xD5, 0xAA, 0x2A])


def test_round_trip_of_every_code() -> None:
    # Every code survives decode then encode, except mu-law's negative zero, which becomes +0.
    mu = mulaw_encode(mulaw_decode(ALL_CODES))
    expected_mu = ALL_CODES.copy()
    expected_mu[0x7F] = 0xFF
    np.testing.assert_array_equal(mu, expected_mu)
    np.testing.assert_array_equal(alaw_encode(alaw_decode(ALL_CODES)), ALL_CODES)


def test_quantisation_is_idempotent_and_monotonic() -> None:
    for encode, decode in [(mulaw_encode, mulaw_decode), (alaw_encode, alaw_decode)]:
        quantised = decode(encode(ALL_PCM))
        np.testing.assert_array_equal(decode(encode(quantised)), quantised)
        assert np.all(np.diff(quantised.astype(np.int32)) >= 0)


@given(st.binary(max_size=512))
def test_decode_accepts_any_bytes_and_keeps_length(data: bytes) -> None:
    assert mulaw_decode(data).shape == (len(data),)
    assert alaw_decode(data).dtype == np.int16


def test_shape_is_preserved() -> None:
    pcm = ALL_PCM[:600].reshape(2, 300)
    assert mulaw_encode(pcm).shape == (2, 300)
    assert alaw_decode(alaw_encode(pcm)).shape == (2, 300)


def test_wrong_dtypes_are_rejected() -> None:
    with pytest.raises(AudioFormatError, match="int16"):
        mulaw_encode(np.zeros(4, dtype=np.float32))
    with pytest.raises(AudioFormatError, match="int16"):
        alaw_encode(np.zeros(4, dtype=np.int32))
    with pytest.raises(AudioFormatError, match="uint8"):
        mulaw_decode(np.zeros(4, dtype=np.int16))


def test_lookup_tables_are_read_only() -> None:
    out = mulaw_decode(b"\x00\x01")
    out[0] = 1  # the result is a fresh array, not a view of the table
    assert mulaw_decode(b"\x00")[0] == -32124
