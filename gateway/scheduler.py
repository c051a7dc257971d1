"""The batch scheduler: pure bookkeeping that decides which streams' chunks go into the next model step.

Theory of operation
-------------------
Every live stream has a FIFO of :class:`WorkItem` s (audio chunks, or control items such as "finalize" and
"end of stream"), bounded by ``max_pending_per_stream``. A step takes at most one item per stream (a
stream's state is sequential) and at most ``max_batch_size`` streams, oldest head item first. A step is
planned as soon as the batch would be full, or the oldest waiting head item has waited ``max_wait_s``
(the batching window), or a control item that must not wait (end of stream) is at a head. One step is in
flight at a time; :meth:`Scheduler.complete` ends it.

Overflow policy: :meth:`Scheduler.submit` refuses an item when its stream's FIFO is full; the session then
waits (:meth:`Scheduler.has_room`) before reading more audio, which pushes back on the transport (the peer's
TCP window or RTP socket buffer). Audio is never dropped silently.

No asyncio, no torch, no clock: time comes in as ``now`` (seconds, any monotonic origin).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any


class ItemKind(enum.Enum):
    AUDIO = "audio"  # a full chunk of audio
    FINALIZE = "finalize"  # close the current utterance now (stream goes on)
    END = "end"  # the last (possibly short, possibly empty) chunk, then final results and release


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One unit of work for a stream's next model step.

    ``payload`` is opaque here (the runner's per-item input: sample window and parameters).
    ``arrival_s`` is when the item's last audio arrived (or the control request was made).
    """

    stream_id: int
    kind: ItemKind
    arrival_s: float
    payload: Any = None


@dataclass(frozen=True, slots=True)
class StepPlan:
    """The items of one model step, one per stream, in batch order."""

    step_id: int
    items: tuple[WorkItem, ...]
    planned_s: float

    @property
    def batch_size(self) -> int:
        return len(self.items)


@dataclass(slots=True)
class _StreamQueue:
    items: deque[WorkItem] = field(default_factory=deque)


class SchedulerError(RuntimeError):
    """Misuse of the scheduler by the engine (a bug, not a peer's fault)."""


class Scheduler:
    """Forms batches from the pending items of all live streams (see the module docstring)."""

    def __init__(self, *, max_batch_size: int, max_wait_s: float, max_pending_per_stream: int) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_pending_per_stream < 1:
            raise ValueError(f"max_pending_per_stream must be >= 1, got {max_pending_per_stream}")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_pending_per_stream = max_pending_per_stream
        self._queues: dict[int, _StreamQueue] = {}
        self._in_flight: StepPlan | None = None
        self._next_step_id = 0

    # -- streams ---------------------------------------------------------------------------------------
    def add_stream(self, stream_id: int) -> None:
        if stream_id in self._queues:
            raise SchedulerError(f"stream {stream_id} already added")
        self._queues[stream_id] = _StreamQueue()

    def remove_stream(self, stream_id: int) -> list[WorkItem]:
        """Forget a stream; returns the items it still had pending (not in flight)."""
        queue = self._queues.pop(stream_id, None)
        return list(queue.items) if queue else []

    def has_room(self, stream_id: int) -> bool:
        queue = self._queues.get(stream_id)
        return queue is not None and len(queue.items) < self.max_pending_per_stream

    def pending(self, stream_id: int) -> int:
        queue = self._queues.get(stream_id)
        return len(queue.items) if queue else 0

    @property
    def in_flight(self) -> StepPlan | None:
        return self._in_flight

    # -- items -----------------------------------------------------------------------------------------
    def submit(self, item: WorkItem, *, force: bool = False) -> bool:
        """Queue an item; False if the stream's FIFO is full (``force`` admits control items anyway)."""
        queue = self._queues.get(item.stream_id)
        if queue is None:
            raise SchedulerError(f"stream {item.stream_id} is not known to the scheduler")
        if len(queue.items) >= self.max_pending_per_stream and not force:
            return False
        queue.items.append(item)
        return True

    def _heads(self) -> list[WorkItem]:
        in_flight = {i.stream_id for i in self._in_flight.items} if self._in_flight else set()
        return [q.items[0] for sid, q in self._queues.items() if q.items and sid not in in_flight]

    def next_deadline(self) -> float | None:
        """When a step becomes due by the batching window, or None if nothing is waiting."""
        if self._in_flight is not None:
            return None
        heads = self._heads()
        if not heads:
            return None
        if len(heads) >= self.max_batch_size or any(h.kind is ItemKind.END for h in heads):
            return min(h.arrival_s for h in heads)
        return min(h.arrival_s for h in heads) + self.max_wait_s

    def schedule(self, now: float) -> StepPlan | None:
        """Plan the next step if one is due at ``now`` and none is in flight."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return None
        heads = sorted(self._heads(), key=lambda h: h.arrival_s)[: self.max_batch_size]
        for h in heads:
            self._queues[h.stream_id].items.popleft()
        plan = StepPlan(step_id=self._next_step_id, items=tuple(heads), planned_s=now)
        self._next_step_id += 1
        self._in_flight = plan
        return plan

    def complete(self, plan: StepPlan) -> None:
        """The step of ``plan`` has finished."""
        if self._in_flight is None or self._in_flight.step_id != plan.step_id:
            raise SchedulerError(f"step {plan.step_id} is not the step in flight")
        self._in_flight = None
