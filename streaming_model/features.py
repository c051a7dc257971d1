"""Log-mel filterbank features for 8 kHz telephone audio, identical offline and streaming.

Framing (the one rule both paths follow): a 25 ms Hann window every 10 ms, where frame ``t`` covers
samples ``[hop*t - (win - hop), hop*t + hop)``. In words: frame ``t`` *ends* where hop ``t`` ends, and the
signal is treated as if ``win - hop`` zeros preceded it. A signal of ``N`` samples therefore has exactly
``ceil(N / hop)`` frames (the tail is zero-padded to a whole hop), and a streaming client that feeds audio
in whole hops gets one frame per hop with no look-ahead and no lag. The streaming caller keeps the last
``win - hop`` samples of each window as the left context of the next one (:class:`StreamingFbank`).

Two styles share that framing:

* ``"ln"`` (the from-scratch models): 64 HTK mel bins over 100-3800 Hz, natural log. Telephone channels
  pass roughly 300-3400 Hz (G.711), synthetic and wideband-sourced 8 kHz audio reaches up to 4 kHz, and
  filters below ~100 Hz would only see hum.
* ``"whisper"`` (models built on Whisper's encoder): Whisper's 80 Slaney mel bins of a 16 kHz, 400-point
  STFT, computed from the 8 kHz signal without resampling. A 200-point periodic Hann window at 8 kHz is
  the 400-point one at 16 kHz taken at even samples, so for audio band-limited to 4 kHz the 16 kHz STFT
  bin ``k`` (40 Hz apart in both) is twice the 8 kHz one: power x4, and the bins above 4 kHz are empty.
  Then Whisper's scaling: ``log10``, a floor 8 below a ceiling, ``(x + 4) / 4``. Whisper's ceiling is the
  utterance maximum, which a stream cannot know: a fixed ceiling (``log_ceiling``) stands in for it
  (research note pretrained-encoder-notes.md: training utterances peak at 0.58 in the median).

Dimension legend: B batch, N samples, T frames, F FFT bins, D mel bins.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

FEATURE_STYLES = ("ln", "whisper")


@dataclass(frozen=True, slots=True)
class FbankConfig:
    """Feature geometry. All fields are part of a checkpoint: changing one needs retraining."""

    sample_rate_hz: int = 8000
    win_samples: int = 200  # 25 ms
    hop_samples: int = 80  # 10 ms
    n_fft: int = 256
    n_mels: int = 64
    fmin_hz: float = 100.0
    fmax_hz: float = 3800.0
    log_floor: float = 1e-6
    style: str = "ln"  # "ln" or "whisper" (see the module docstring)
    log_ceiling: float = 1.5  # whisper style only: log10 power ceiling standing in for the utterance max

    def __post_init__(self) -> None:
        if self.style not in FEATURE_STYLES:
            raise ValueError(f"feature style must be one of {FEATURE_STYLES}, got {self.style!r}")
        if self.style == "whisper" and (self.sample_rate_hz, self.win_samples, self.hop_samples,
                                        self.n_fft, self.n_mels) != (8000, 200, 80, 200, 80):
            raise ValueError("whisper features are 8 kHz, 200-sample windows and FFT, 80-sample hop, 80 mels")

    @property
    def context_samples(self) -> int:
        """Samples of left context a streaming window carries over (``win - hop``)."""
        return self.win_samples - self.hop_samples

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def whisper_features() -> FbankConfig:
    """The feature geometry of models built on Whisper's encoder."""
    return FbankConfig(n_fft=200, n_mels=80, style="whisper", log_floor=1e-10)


def slaney_mel_filters(*, sample_rate_hz: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa's ``filters.mel`` with Slaney scale and area norm (Whisper's ``mel_filters.npz``): (D, F)."""
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        mel = f / (200.0 / 3)
        log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log_part, mel)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, dtype=np.float64)
        return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))

    fft_hz = np.linspace(0.0, sample_rate_hz / 2, n_fft // 2 + 1)
    mel_hz = mel_to_hz(np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(sample_rate_hz / 2.0)),
                                   n_mels + 2))
    fdiff = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]  # (D+2, F)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))  # (D, F)
    weights *= (2.0 / (mel_hz[2:n_mels + 2] - mel_hz[:n_mels]))[:, None]
    return weights.astype(np.float32)


def mel_filterbank(config: FbankConfig) -> np.ndarray:
    """The mel filters of a feature style, shape (F, D) with F = n_fft // 2 + 1."""
    if config.style == "whisper":  # Whisper's 16 kHz filters on the bins an 8 kHz signal fills
        filters = slaney_mel_filters(sample_rate_hz=16000, n_fft=400, n_mels=config.n_mels)  # (D, 201)
        return np.ascontiguousarray(filters[:, :config.n_fft // 2 + 1].T)
    n_bins = config.n_fft // 2 + 1
    bin_hz = np.arange(n_bins) * config.sample_rate_hz / config.n_fft
    mel_edges = np.linspace(_hz_to_mel(np.array(config.fmin_hz)), _hz_to_mel(np.array(config.fmax_hz)),
                            config.n_mels + 2)
    hz_edges = _mel_to_hz(mel_edges)
    fb = np.zeros((n_bins, config.n_mels), dtype=np.float64)
    for m in range(config.n_mels):
        lo, centre, hi = hz_edges[m], hz_edges[m + 1], hz_edges[m + 2]
        rising = (bin_hz - lo) / (centre - lo)
        falling = (hi - bin_hz) / (hi - centre)
        fb[:, m] = np.maximum(0.0, np.minimum(rising, falling))
    return fb.astype(np.float32)


class Fbank(torch.nn.Module):
    """Batched log-mel computation over sample windows that already include their left context.

    ``forward(windows)`` takes (B, N) float32 samples in [-1, 1] where ``N = context + k * hop`` and returns
    (B, k, D) log-mel frames. Both the offline and the streaming paths go through this one function.
    """

    def __init__(self, config: FbankConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.win_samples, periodic=True), persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel_filterbank(config)), persistent=False)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        num_frames = (windows.shape[-1] - cfg.context_samples) // cfg.hop_samples
        if num_frames <= 0:
            return windows.new_zeros((windows.shape[0], 0, cfg.n_mels))
        # (B, N) -> (B, T, win)
        frames = windows.unfold(-1, cfg.win_samples, cfg.hop_samples)[:, :num_frames]
        if cfg.style == "whisper":
            spec = torch.fft.rfft(frames * self.window, n=cfg.n_fft)  # (B, T, F)
            power = 4.0 * (spec.real.square() + spec.imag.square())  # the 16 kHz STFT's scale (docstring)
            log_mel = torch.log10((power @ self.mel).clamp_min(cfg.log_floor))  # (B, T, D)
            return (log_mel.clamp_min(cfg.log_ceiling - 8.0) + 4.0) / 4.0
        frames = frames - frames.mean(dim=-1, keepdim=True)  # remove DC per frame (telephone hum, codecs)
        spec = torch.fft.rfft(frames * self.window, n=cfg.n_fft)  # (B, T, F)
        power = spec.real.square() + spec.imag.square()
        mel = power @ self.mel  # (B, T, D)
        return torch.log(mel.clamp_min(cfg.log_floor))


def num_frames_for(num_samples: int, config: FbankConfig) -> int:
    """Frames produced for a whole signal of ``num_samples`` samples."""
    return math.ceil(num_samples / config.hop_samples)


def offline_windows(samples: np.ndarray, config: FbankConfig) -> np.ndarray:
    """The single window covering a whole signal: left context zeros, tail padded to a whole hop."""
    n = samples.shape[-1]
    total = num_frames_for(n, config) * config.hop_samples
    out = np.zeros(config.context_samples + total, dtype=np.float32)
    out[config.context_samples:config.context_samples + n] = samples
    return out


def compute_fbank(samples: np.ndarray, config: FbankConfig, fbank: Fbank | None = None) -> torch.Tensor:
    """Offline features of one signal, shape (T, D)."""
    module = fbank if fbank is not None else Fbank(config)
    window = torch.from_numpy(offline_windows(np.asarray(samples, dtype=np.float32), config))
    with torch.no_grad():
        return module(window.unsqueeze(0))[0]


class StreamingFbank:
    """Cuts one stream's samples into model-sized windows that carry their left context.

    It is pure bookkeeping (no torch), so it can live with a session while the batched :class:`Fbank`
    runs in the model runner. Feed samples with :meth:`accept`; :meth:`take` returns the next window of
    exactly ``num_frames`` frames (``context + num_frames * hop`` samples) once enough audio is buffered;
    :meth:`take_rest` returns the final, shorter window at the end of the stream (tail zero-padded to a
    whole hop, as :func:`offline_windows` does).

    With look-ahead a window also covers ``lookahead_frames`` frames after its chunk but advances by the
    chunk only, so consecutive windows overlap; :meth:`take_final` drains the end of a stream that way.
    """

    def __init__(self, config: FbankConfig) -> None:
        self.config = config
        self._buffer = np.zeros(config.context_samples, dtype=np.float32)
        self.samples_taken = 0  # real samples consumed into windows so far

    @property
    def buffered_samples(self) -> int:
        """Real samples waiting for the next window (excluding carried context)."""
        return self._buffer.shape[0] - self.config.context_samples

    def accept(self, samples: np.ndarray) -> None:
        self._buffer = np.concatenate([self._buffer, np.asarray(samples, dtype=np.float32)])

    def can_take(self, num_frames: int, lookahead_frames: int = 0) -> bool:
        return self.buffered_samples >= (num_frames + lookahead_frames) * self.config.hop_samples

    def take(self, num_frames: int, lookahead_frames: int = 0) -> np.ndarray:
        """The window of ``num_frames + lookahead_frames`` frames; advances by ``num_frames``."""
        cfg = self.config
        need, span = num_frames * cfg.hop_samples, (num_frames + lookahead_frames) * cfg.hop_samples
        if self.buffered_samples < span:
            raise ValueError(f"need {span} buffered samples for {num_frames}+{lookahead_frames} frames, "
                             f"have {self.buffered_samples}")
        window = self._buffer[:cfg.context_samples + span].copy()
        self._buffer = self._buffer[need:]
        self.samples_taken += need
        return window

    def take_final(self, num_frames: int, lookahead_frames: int = 0) -> list[tuple[np.ndarray, int]]:
        """End of stream: (window, real frames) for every chunk still buffered, each window as long as a
        full one and zero-padded past the audio, then :meth:`take_rest`'s window (possibly 0 frames)."""
        cfg = self.config
        hop, span = cfg.hop_samples, (num_frames + lookahead_frames) * cfg.hop_samples
        out: list[tuple[np.ndarray, int]] = []
        while self.buffered_samples > num_frames * hop:
            real = min(num_frames + lookahead_frames, math.ceil(self.buffered_samples / hop))
            window = np.zeros(cfg.context_samples + span, dtype=np.float32)
            part = self._buffer[:cfg.context_samples + span]
            window[:part.shape[0]] = part
            self._buffer = self._buffer[num_frames * hop:]
            self.samples_taken += num_frames * hop
            out.append((window, real))
        out.append(self.take_rest())
        return out

    def take_rest(self) -> tuple[np.ndarray, int]:
        """Window for the remaining samples (zero-padded to a whole hop) and its number of frames."""
        cfg = self.config
        rest = self.buffered_samples
        frames = math.ceil(rest / cfg.hop_samples)
        window = np.zeros(cfg.context_samples + frames * cfg.hop_samples, dtype=np.float32)
        window[:self._buffer.shape[0]] = self._buffer
        self._buffer = np.zeros(cfg.context_samples, dtype=np.float32)
        self.samples_taken += rest
        return window, frames
