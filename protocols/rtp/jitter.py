"""A jitter buffer that reorders, fills losses with silence and never blocks.

Theory of operation: packets go in with their arrival time (``push``); ``pop(now)`` returns, in
sequence order, every frame that is ready *now* and never waits. The next expected packet is released
as soon as it is there; a missing one is declared lost once a later packet has waited
``max_wait_s`` (or the buffer holds ``max_packets``), and its gap is filled with silence sized from
the RTP timestamps, so the audio clock downstream stays exact. Late packets (already given up on) and
duplicates are dropped. Sequence numbers are extended to 32 bits across wrap-around (RFC 3550 A.1);
a jump beyond ``max_misorder`` restarts the stream (a sender restart).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["AudioFrame", "JitterBuffer"]

_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """Decoded audio released by the buffer; ``filled`` marks silence standing in for lost packets."""

    timestamp: int
    samples: npt.NDArray[np.int16]
    filled: bool = False


@dataclass
class _Held:
    timestamp: int
    samples: npt.NDArray[np.int16]
    arrived_s: float


class JitterBuffer:
    """Reorders one RTP stream's decoded packets (one SSRC; ``reset`` on a new one)."""

    def __init__(
        self,
        *,
        max_wait_s: float = 0.06,
        max_packets: int = 50,
        max_fill_samples: int = 8000,
        max_misorder: int = 100,
    ) -> None:
        """Args:
        max_wait_s: how long a later packet waits for a missing one before the gap is filled.
        max_packets: buffer bound; when exceeded, gaps are filled at once (overflow never blocks).
        max_fill_samples: the largest silence inserted for one gap (longer gaps are clipped).
        max_misorder: a sequence jump larger than this restarts the stream.
        """
        self.max_wait_s = max_wait_s
        self.max_packets = max_packets
        self.max_fill_samples = max_fill_samples
        self.max_misorder = max_misorder
        self.late_packets = 0
        self.duplicate_packets = 0
        self.lost_packets = 0
        self.reset()

    def reset(self) -> None:
        """Forget the stream (SSRC change or restart)."""
        self._held: dict[int, _Held] = {}
        self._next: int | None = None  # extended sequence number expected next
        self._cycles = 0
        self._last_seq: int | None = None
        self._next_timestamp: int | None = None  # where the released audio ends, in RTP units

    def _extend(self, sequence: int) -> int:
        if self._last_seq is None:
            self._last_seq = sequence
            return sequence
        delta = (sequence - self._last_seq) % _SEQ_MOD
        if delta < _SEQ_MOD // 2:
            if sequence < self._last_seq:
                self._cycles += _SEQ_MOD
            self._last_seq = sequence
            return self._cycles + sequence
        # an older packet: it may belong to the previous cycle
        cycles = self._cycles - _SEQ_MOD if sequence > self._last_seq else self._cycles
        return cycles + sequence

    def push(self, sequence: int, timestamp: int, samples: npt.NDArray[np.int16], now: float) -> None:
        """Add one decoded packet."""
        extended = self._extend(sequence)
        if self._next is None:
            self._next = extended
        elif abs(extended - self._next) > self.max_misorder and extended not in self._held:
            self.reset()  # a sender restart: start over from this packet
            extended = self._extend(sequence)
            self._next = extended
        if extended < self._next:
            self.late_packets += 1
            return
        if extended in self._held:
            self.duplicate_packets += 1
            return
        self._held[extended] = _Held(timestamp, samples, now)

    def next_deadline(self) -> float | None:
        """When ``pop`` would next release something by declaring a loss (None: nothing waits)."""
        if not self._held or self._next in self._held:
            return None
        return min(h.arrived_s for h in self._held.values()) + self.max_wait_s

    def pop(self, now: float) -> list[AudioFrame]:
        """Every frame ready at ``now``, in order; never waits."""
        frames: list[AudioFrame] = []
        while self._held and self._next is not None:
            held = self._held.pop(self._next, None)
            if held is None:
                oldest = min(h.arrived_s for h in self._held.values())
                if now - oldest < self.max_wait_s and len(self._held) < self.max_packets:
                    break
                following = min(self._held)
                self.lost_packets += following - self._next
                self._next = following
                held = self._held.pop(following)
                gap = 0 if self._next_timestamp is None else (held.timestamp - self._next_timestamp) % _TS_MOD
                if 0 < gap < _TS_MOD // 2:
                    fill = np.zeros(min(gap, self.max_fill_samples), dtype=np.int16)
                    frames.append(AudioFrame(self._next_timestamp or 0, fill, filled=True))
            frames.append(AudioFrame(held.timestamp, held.samples))
            self._next_timestamp = (held.timestamp + len(held.samples)) % _TS_MOD
            self._next += 1
        return frames

    def flush(self) -> list[AudioFrame]:
        """Release everything held, gaps filled (end of stream or SSRC change)."""
        frames: list[AudioFrame] = []
        while self._held:
            frames.extend(self.pop(float("inf")))
        return frames

    @property
    def held_packets(self) -> int:
        """Packets waiting in the buffer."""
        return len(self._held)
