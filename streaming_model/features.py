"""Log-mel filterbank features for 8 kHz telephone audio, identical offline and streaming.

Framing (the one rule both paths follow): a 25 ms Hann window every 10 ms, where frame ``t`` covers
samples ``[hop*t - (win - hop), hop*t + hop)``. In words: frame ``t`` *ends* where hop ``t`` ends, and the
signal is treated as if ``win - hop`` zeros preceded it. A signal of ``N`` samples therefore has exactly
``ceil(N / hop)`` frames (the tail is zero-padded to a whole hop), and a streaming client that feeds audio
in whole hops gets one frame per hop with no look-ahead and no lag. The streaming caller keeps the last
``win - hop`` samples of each window as the left context of the next one (:class:`StreamingFbank`).

The mel range is 100-3800 Hz: telephone channels pass roughly 300-3400 Hz (G.711), synthetic and
wideband-sourced 8 kHz audio reaches up to 4 kHz, and filters below ~100 Hz would only see hum.

Dimension legend: B batch, N samples, T frames, F FFT bins, D mel bins.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch


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


def mel_filterbank(config: FbankConfig) -> np.ndarray:
    """Triangular HTK-style mel filters, shape (F, D) with F = n_fft // 2 + 1."""
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
