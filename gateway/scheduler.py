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

Slots: the scheduler is the one owner of the runner's state slots (0 .. ``max_slots`` - 1), as vLLM's
scheduler owns the KV cache blocks. :meth:`Scheduler.add_stream` gives a stream a slot,
:meth:`Scheduler.remove_stream` takes it back, at once or, when the stream is in the step in flight, when
that step completes. Each :class:`StepPlan` tells the runner which slots changed hands since the last
plan (``freed_slots`` first, then ``new_streams``, as vLLM v1's ``SchedulerOutput`` carries finished and
new requests), so the runner resets a slot's state and creates or drops its decoder without ever
deciding about slots itself. A stream removed before any plan announced it is never announced.

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
class NewStream:
    """A stream the runner has not seen: reset ``slot``'s state and set it up from ``info`` (opaque here:
    the stream's settings)."""

    slot: int
    info: Any = None


@dataclass(frozen=True, slots=True)
class StepPlan:
    """One model step: its items (one per stream, in batch order) and the slot of each, and the slots that
    changed hands since the previous plan (apply ``freed_slots``, then ``new_streams``, then the items)."""

    step_id: int
    items: tuple[WorkItem, ...]
    slots: tuple[int, ...]
    planned_s: float
    new_streams: tuple[NewStream, ...] = ()
    freed_slots: tuple[int, ...] = ()

    @property
    def batch_size(self) -> int:
        return len(self.items)


@dataclass(slots=True)
class _StreamQueue:
    slot: int
    items: deque[WorkItem] = field(default_factory=deque)


class SchedulerError(RuntimeError):
    """Misuse of the scheduler by the engine (a bug, not a peer's fault)."""


class Scheduler:
    """Forms batches from the pending items of all live streams and owns their slots (see the module
    docstring)."""

    def __init__(self, *, max_slots: int, max_batch_size: int, max_wait_s: float,
                 max_pending_per_stream: int) -> None:
        if max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_pending_per_stream < 1:
            raise ValueError(f"max_pending_per_stream must be >= 1, got {max_pending_per_stream}")
        self.max_slots = max_slots
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_pending_per_stream = max_pending_per_stream
        self._queues: dict[int, _StreamQueue] = {}
        self._free_slots = list(range(max_slots - 1, -1, -1))  # popped from the end: 0 first
        self._new: dict[int, NewStream] = {}  # by stream id: added since the last plan
        self._freed: list[int] = []  # freed since the last plan, after the runner knew them
        self._freed_after_step: list[int] = []  # freed while in the step in flight
        self._in_flight: StepPlan | None = None
        self._next_step_id = 0

    # -- streams and slots -----------------------------------------------------------------------------
    @property
    def free_slots(self) -> int:
        """Slots a new stream could take now (a removed stream's slot is busy until its step ends)."""
        return len(self._free_slots)

    def add_stream(self, stream_id: int, *, info: Any = None) -> int:
        """Admit a stream; returns its slot. ``info`` reaches the runner in the next plan's ``new_streams``.

        Raises:
            SchedulerError: the stream is already known, or no slot is free (check :attr:`free_slots`).
        """
        if stream_id in self._queues:
            raise SchedulerError(f"stream {stream_id} already added")
        if not self._free_slots:
            raise SchedulerError(f"all {self.max_slots} slots are taken")
        slot = self._free_slots.pop()
        self._queues[stream_id] = _StreamQueue(slot)
        self._new[stream_id] = NewStream(slot, info)
        return slot

    def remove_stream(self, stream_id: int) -> None:
        """Forget a stream, drop the items it still had pending (not in flight), and free its slot."""
        queue = self._queues.pop(stream_id, None)
        if queue is None:
            return
        if self._new.pop(stream_id, None) is not None:
            self._free_slots.append(queue.slot)  # the runner never heard of it
        elif self._in_flight is not None and any(i.stream_id == stream_id for i in self._in_flight.items):
            self._freed_after_step.append(queue.slot)
        else:
            self._freed.append(queue.slot)
            self._free_slots.append(queue.slot)

    def has_room(self, stream_id: int) -> bool:
        queue = self._queues.get(stream_id)
        return queue is not None and len(queue.items) < self.max_pending_per_stream

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
        plan = StepPlan(step_id=self._next_step_id, items=tuple(heads),
                        slots=tuple(self._queues[h.stream_id].slot for h in heads), planned_s=now,
                        new_streams=tuple(self._new.values()), freed_slots=tuple(self._freed))
        self._new.clear()
        self._freed.clear()
        self._next_step_id += 1
        self._in_flight = plan
        return plan

    def complete(self, plan: StepPlan, *, failed: bool = False) -> None:
        """The step of ``plan`` has finished (or failed): slots freed during it become free.

        ``failed``: the step raised, so the runner may not have applied the plan's slot changes; they are
        told again in the next plan (freed slots, and the new streams still live: their slots are reset
        again, which is harmless for a stream that has not been stepped yet)."""
        if self._in_flight is None or self._in_flight.step_id != plan.step_id:
            raise SchedulerError(f"step {plan.step_id} is not the step in flight")
        self._in_flight = None
        if failed:
            owner = {queue.slot: stream_id for stream_id, queue in self._queues.items()}
            self._freed[:0] = plan.freed_slots
            again = {owner[new.slot]: new for new in plan.new_streams if new.slot in owner}
            self._new = {**again, **self._new}
        self._freed.extend(self._freed_after_step)
        self._free_slots.extend(self._freed_after_step)
        self._freed_after_step.clear()
