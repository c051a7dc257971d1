"""Streaming polyphase FIR sample-rate conversion for any rational ratio.

Theory of operation
-------------------
Converting ``from_hz`` to ``to_hz`` is done at the common rate ``from_hz * up`` where
``up / down = to_hz / from_hz`` in lowest terms: the input is (conceptually) upsampled by ``up``
(zero stuffing), low-pass filtered by one linear-phase FIR ``h`` of odd length ``N`` running at the
common rate, and every ``down``-th sample is kept. Only the non-zero products are computed: output
``m`` reads the common-rate instant ``t = m * down + D``, where ``D = (N - 1) // 2`` is the filter's
group delay, so::

    y[m] = sum_l h[(t mod up) + l * up] * x[t // up - l]

i.e. each output is a dot product of ``L = ceil(N / up)`` input samples with one of ``up`` polyphase
branches. Reading at ``t = m * down + D`` instead of ``m * down`` cancels the group delay: output ``m``
is the signal at time ``m / to_hz`` exactly, so a click at input sample ``k`` peaks at output
``k * to_hz / from_hz`` (when that is an integer).

Filter: a Kaiser-windowed sinc (``scipy.signal.firwin``) with its stopband starting at the lower of the
two Nyquist frequencies and its passband ending at 85 % of it (3400 Hz for 8 kHz telephony), designed
for 80 dB stopband attenuation, so anything that would alias (downsampling) or image (upsampling) is
suppressed by at least 80 dB. DC gain is 1.

Streaming: the resampler keeps the last ``L - 1`` input samples it still needs, plus its input and
output counters, so feeding a signal in arbitrary pieces yields the same samples as feeding it whole
(computed in float64, returned as float32; pieces and whole agree to float32 rounding). Output ``m``
is emitted as soon as its last input sample ``t // up`` has arrived: the algorithmic latency is
:attr:`StreamingResampler.lookahead_s`. :meth:`StreamingResampler.flush` treats the signal as followed
by silence and emits the remaining outputs.

Output length: a signal of ``n`` input samples yields exactly ``ceil(n * to_hz / from_hz)`` output
samples in total (one per output instant ``m / to_hz`` that lies before the signal's end ``n / from_hz``),
which is within one sample of ``round(n * to_hz / from_hz)``. Equal rates pass samples through unchanged.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import firwin, kaiserord

from protocols.audio.errors import AudioFormatError

__all__ = ["StreamingResampler", "resample"]

#: Designed stopband attenuation (the contract is >= 60 dB; 80 leaves margin for coefficient rounding).
_STOPBAND_ATTENUATION_DB: Final = 80.0
#: Passband edge as a fraction of the lower Nyquist frequency (0.85 * 4000 Hz = 3400 Hz at 8 kHz).
_PASSBAND_FRACTION: Final = 0.85
#: Largest ``up`` factor accepted: the filter length grows with it (44100 -> 8000 needs 80 phases,
#: 11025 -> 8000 needs 320); a ratio such as 44100 -> 44101 would need millions of taps.
_MAX_PHASES: Final = 1024
#: Bound on the (outputs x taps) temporaries of one vectorised block, in elements.
_MAX_BLOCK_ELEMENTS: Final = 1 << 16


@dataclass(frozen=True, slots=True, eq=False)
class _PolyphaseFilter:
    """A designed filter split into polyphase branches (read-only arrays, shared between streams)."""

    up: int
    down: int
    # (up, L): branch p holds h[p + l * up] in reverse order (l = L-1 .. 0), so that a dot product
    # with the window x[j - L + 1 .. j] computes sum_l h[p + l * up] * x[j - l].
    branches: npt.NDArray[np.float64]
    delay: int  # group delay D = (N - 1) // 2, in common-rate samples

    @property
    def taps_per_phase(self) -> int:
        return int(self.branches.shape[1])


@functools.lru_cache(maxsize=64)
def _design_filter(from_hz: int, to_hz: int) -> _PolyphaseFilter:
    # Cached: every call session at a given rate pair shares one read-only filter (up to ~240 KiB).
    g = math.gcd(from_hz, to_hz)
    up, down = to_hz // g, from_hz // g
    common_hz = float(from_hz * up)
    stopband_edge_hz = min(from_hz, to_hz) / 2.0
    passband_edge_hz = _PASSBAND_FRACTION * stopband_edge_hz
    num_taps, beta = kaiserord(
        _STOPBAND_ATTENUATION_DB, (stopband_edge_hz - passband_edge_hz) / (common_hz / 2.0)
    )
    num_taps += 1 - num_taps % 2  # odd length: integer group delay, so alignment is exact
    cutoff_hz = (passband_edge_hz + stopband_edge_hz) / 2.0
    h = firwin(num_taps, cutoff_hz, window=("kaiser", beta), fs=common_hz) * up  # gain up: zero stuffing
    taps_per_phase = -(-num_taps // up)
    padded = np.zeros(taps_per_phase * up, dtype=np.float64)
    padded[:num_taps] = h
    branches = padded.reshape(taps_per_phase, up).T[:, ::-1].copy()  # (up, L), see _PolyphaseFilter
    branches.flags.writeable = False
    return _PolyphaseFilter(up=up, down=down, branches=branches, delay=(num_taps - 1) // 2)


def _check_rate(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AudioFormatError(f"{name} must be a positive integer, got {value!r}")


def _as_signal(x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    if not isinstance(x, np.ndarray) or x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
        shape = x.shape if isinstance(x, np.ndarray) else type(x).__name__
        dtype = x.dtype if isinstance(x, np.ndarray) else None
        raise AudioFormatError(f"expected a 1-D floating-point array, got {shape} of dtype {dtype}")
    return x.astype(np.float64)


class StreamingResampler:
    """Converts one mono stream from ``from_hz`` to ``to_hz``, piece by piece.

    See the module docstring for the algorithm and its guarantees. A resampler holds the state of one
    stream; after :meth:`flush` it is reset and may start a new stream.

    Args:
        from_hz: Input sample rate.
        to_hz: Output sample rate.

    Raises:
        AudioFormatError: A rate is not a positive integer, or the reduced ratio needs more than 1024
            polyphase branches.
    """

    def __init__(self, from_hz: int, to_hz: int) -> None:
        _check_rate("from_hz", from_hz)
        _check_rate("to_hz", to_hz)
        self._from_hz = from_hz
        self._to_hz = to_hz
        up = to_hz // math.gcd(from_hz, to_hz)
        if up > _MAX_PHASES:
            raise AudioFormatError(
                f"resampling {from_hz} Hz -> {to_hz} Hz needs {up} polyphase branches, "
                f"at most {_MAX_PHASES} are supported"
            )
        self._filter = _design_filter(from_hz, to_hz) if from_hz != to_hz else None
        self._reset()

    @property
    def from_hz(self) -> int:
        """Input sample rate."""
        return self._from_hz

    @property
    def to_hz(self) -> int:
        """Output sample rate."""
        return self._to_hz

    @property
    def lookahead_s(self) -> float:
        """How far past an output sample's instant the input must reach before it is emitted."""
        if self._filter is None:
            return 0.0
        return self._filter.delay / (self._filter.up * self._from_hz)

    def _reset(self) -> None:
        taps_per_phase = 1 if self._filter is None else self._filter.taps_per_phase
        # Input samples from global index _buffer_start on; negative indices are the silence before
        # the stream starts, so the first outputs need no special case.
        self._buffer = np.zeros(taps_per_phase - 1, dtype=np.float64)
        self._buffer_start = -(taps_per_phase - 1)
        self._num_in = 0
        self._num_out = 0

    def process(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Feed the next piece of the stream and return every output sample it completes.

        Args:
            x: 1-D float samples at ``from_hz`` (float32; other float dtypes are accepted), any length.

        Returns:
            New float32 samples at ``to_hz``, possibly none.

        Raises:
            AudioFormatError: ``x`` is not a 1-D floating-point array.
        """
        samples = _as_signal(x)
        if self._filter is None:
            self._num_in += samples.shape[0]
            return samples.astype(np.float32)
        self._buffer = np.concatenate([self._buffer, samples])
        self._num_in += samples.shape[0]
        f = self._filter
        # Last output whose newest input sample (m * down + D) // up has arrived.
        ready = max(0, (self._num_in * f.up - 1 - f.delay) // f.down + 1)
        return self._emit(ready)

    def flush(self) -> npt.NDArray[np.float32]:
        """End the stream: return the remaining outputs (the input is padded with silence) and reset.

        After a flush the total output length is ``ceil(n * to_hz / from_hz)`` for ``n`` input
        samples, and the resampler is ready for a new stream.
        """
        if self._filter is None:
            self._reset()
            return np.zeros(0, dtype=np.float32)
        f = self._filter
        total = -(-self._num_in * f.up // f.down)
        if total > self._num_out:
            last_input = ((total - 1) * f.down + f.delay) // f.up
            num_pad = max(0, last_input + 1 - self._num_in)
            self._buffer = np.concatenate([self._buffer, np.zeros(num_pad, dtype=np.float64)])
        out = self._emit(total)
        self._reset()
        return out

    def _emit(self, end: int) -> npt.NDArray[np.float32]:
        """Compute outputs ``_num_out .. end - 1`` from the buffer, then drop inputs no longer needed."""
        f = self._filter
        assert f is not None
        taps = f.taps_per_phase
        out = np.zeros(max(0, end - self._num_out), dtype=np.float32)
        if out.shape[0]:
            windows = sliding_window_view(self._buffer, taps)  # (len(buffer) - L + 1, L), a view
            block = max(1, _MAX_BLOCK_ELEMENTS // taps)
            for lo in range(0, out.shape[0], block):
                m = np.arange(self._num_out + lo, min(self._num_out + lo + block, end), dtype=np.int64)
                t = m * f.down + f.delay  # common-rate instant read by each output
                first = t // f.up - (taps - 1) - self._buffer_start  # buffer index of window start
                phase = t % f.up
                # (M, L) * (M, L) summed over L: one dot product per output.
                out[lo : lo + m.shape[0]] = np.einsum("ml,ml->m", windows[first], f.branches[phase])
            self._num_out = end
        keep_from = min((self._num_out * f.down + f.delay) // f.up - (taps - 1), self._num_in)
        if keep_from > self._buffer_start:
            self._buffer = self._buffer[keep_from - self._buffer_start :].copy()
            self._buffer_start = keep_from
        return out


def resample(x: npt.NDArray[np.float32], *, from_hz: int, to_hz: int) -> npt.NDArray[np.float32]:
    """Resample a whole mono signal (``StreamingResampler.process`` then ``flush``).

    Args:
        x: 1-D float samples at ``from_hz``.
        from_hz: Input sample rate.
        to_hz: Output sample rate.

    Returns:
        ``ceil(len(x) * to_hz / from_hz)`` float32 samples at ``to_hz``, time-aligned with ``x``.

    Raises:
        AudioFormatError: Bad rates or a bad input array (see :class:`StreamingResampler`).
    """
    resampler = StreamingResampler(from_hz, to_hz)
    head = resampler.process(x)
    return np.concatenate([head, resampler.flush()])
