import numpy as np
import pytest

from streaming_model.data import channel as ch

RATE_HZ = ch.SAMPLE_RATE_HZ


def _tone(freq_hz: float, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _speechlike(rng: np.random.Generator, n: int) -> np.ndarray:
    envelope = np.repeat(rng.uniform(0, 1, n // 800 + 1), 800)[:n]
    return (ch.pink_noise(rng, n) * envelope * 0.1).astype(np.float32)


def test_apply_channel_keeps_length_and_dtype() -> None:
    rng = np.random.default_rng(0)
    resources = ch.ChannelResources(
        babble_bank=[_speechlike(rng, 12000) for _ in range(4)], music=(_tone(440, 5.0),)
    )
    tags = set()
    for i in range(40):
        n = int(rng.integers(2000, 30000))
        x = _speechlike(rng, n)
        y, tag = ch.apply_channel(x, np.random.default_rng(i), resources)
        assert len(y) == n and y.dtype == np.float32
        assert np.all(np.isfinite(y)) and np.max(np.abs(y)) <= 1.0
        tags.update(tag.split("+"))
    assert {"band", "mulaw", "alaw"} <= tags


def test_apply_channel_is_deterministic() -> None:
    x = _speechlike(np.random.default_rng(1), 16000)
    resources = ch.ChannelResources()
    a = ch.apply_channel(x, np.random.default_rng(7), resources)
    b = ch.apply_channel(x, np.random.default_rng(7), resources)
    assert a[1] == b[1]
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_g711_round_trip(law: str) -> None:
    x = _tone(1000, amplitude=0.3)
    y = ch.g711_roundtrip(x, law=law)
    assert len(y) == len(x)
    snr_db = 10 * np.log10(ch.power(x) / ch.power(y - x))
    assert snr_db > 30  # G.711 gives ~38 dB SQNR on a loud tone
    # idempotent: decoded values are exactly representable
    np.testing.assert_array_equal(ch.g711_roundtrip(y, law=law), y)


@pytest.mark.parametrize("codec", ["gsm", "amr-nb"])
def test_sox_codecs_keep_length(codec: str) -> None:
    if not ch.codec_available(codec):
        pytest.skip(f"installed sox has no {codec} format")
    x = _tone(700, seconds=0.73, amplitude=0.3)
    y = ch.sox_codec_roundtrip(x, codec=codec)
    assert len(y) == len(x) and ch.power(y) > 0.1 * ch.power(x)


def test_band_limit_attenuates_out_of_band_tones() -> None:
    def gain_db(freq_hz: float) -> float:
        x = _tone(freq_hz, seconds=2.0)
        y = ch.band_limit(x)
        assert len(y) == len(x)
        return 10 * np.log10(ch.power(y[4000:]) / ch.power(x[4000:]))

    assert gain_db(1000) > -1.0
    assert gain_db(100) < -30
    assert gain_db(3800) < -30


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
@pytest.mark.parametrize("kind", ["white", "pink"])
def test_add_noise_snr(snr_db: float, kind: str) -> None:
    rng = np.random.default_rng(3)
    x = _tone(500, seconds=2.0)
    noise = ch.white_noise(rng, len(x)) if kind == "white" else ch.pink_noise(rng, len(x))
    y = ch.add_noise(x, noise, snr_db=snr_db)
    measured = 10 * np.log10(ch.power(x) / ch.power(y - x))
    assert abs(measured - snr_db) < 0.5


def test_reverb_and_packet_loss_keep_length() -> None:
    rng = np.random.default_rng(4)
    x = _speechlike(rng, 9000)
    y = ch.reverberate(x, ch.synthetic_rir(rng, rt60_s=0.4))
    assert len(y) == len(x)
    assert abs(ch.power(y) / ch.power(x) - 1) < 1e-3
    z = ch.packet_loss(x, rng)
    assert len(z) == len(x) and np.count_nonzero(z == 0) >= 160


def test_speed_perturb_changes_length_only() -> None:
    x = _tone(500, seconds=1.0)
    assert abs(len(ch.speed_perturb(x, 1.1)) - len(x) / 1.1) <= 2
    assert abs(len(ch.speed_perturb(x, 0.9)) - len(x) / 0.9) <= 2


def test_hold_music_is_8khz_when_installed() -> None:
    tracks = ch.hold_music()
    if not tracks:
        pytest.skip("asterisk-moh-opsound-wav not installed")
    assert all(t.dtype == np.float32 and len(t) > RATE_HZ for t in tracks)
