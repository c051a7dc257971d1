"""The pure scheduler, driven by a fake clock."""

from __future__ import annotations

import pytest

from gateway.scheduler import ItemKind, NewStream, Scheduler, SchedulerError, WorkItem


def item(sid: int, t: float, kind: ItemKind = ItemKind.AUDIO) -> WorkItem:
    return WorkItem(stream_id=sid, kind=kind, arrival_s=t)


def make(batch: int = 3, wait: float = 0.010, pending: int = 2, streams: int = 5) -> Scheduler:
    s = Scheduler(max_slots=8, max_batch_size=batch, max_wait_s=wait, max_pending_per_stream=pending)
    for sid in range(streams):
        s.add_stream(sid)
    return s


def test_waits_for_window_then_runs_partial_batch() -> None:
    s = make()
    s.submit(item(0, 1.000))
    s.submit(item(1, 1.004))
    assert s.schedule(1.005) is None
    assert s.next_deadline() == pytest.approx(1.010)
    plan = s.schedule(1.010)
    assert plan is not None and [i.stream_id for i in plan.items] == [0, 1]


def test_full_batch_runs_at_once_oldest_first() -> None:
    s = make(batch=3)
    for sid, t in [(3, 1.003), (0, 1.000), (4, 1.004), (1, 1.001)]:
        s.submit(item(sid, t))
    plan = s.schedule(1.004)
    assert plan is not None and [i.stream_id for i in plan.items] == [0, 1, 3]
    s.complete(plan)
    # Stream 4 is left; it waits for its own window.
    assert s.schedule(1.005) is None
    plan2 = s.schedule(1.014)
    assert plan2 is not None and [i.stream_id for i in plan2.items] == [4]


def test_one_item_per_stream_per_step_in_order() -> None:
    s = make(batch=4)
    s.submit(item(0, 1.0))
    s.submit(item(0, 1.1))
    plan = s.schedule(2.0)
    assert plan is not None and len(plan.items) == 1 and plan.items[0].arrival_s == 1.0
    assert s.schedule(3.0) is None  # one step in flight at a time
    s.complete(plan)
    plan2 = s.schedule(3.0)
    assert plan2 is not None and plan2.items[0].arrival_s == 1.1


def test_end_items_do_not_wait_for_window() -> None:
    s = make()
    s.submit(item(2, 5.0, ItemKind.END), force=True)
    assert s.next_deadline() == 5.0
    assert s.schedule(5.0) is not None


def test_bounded_queue_and_force() -> None:
    s = make(pending=2)
    assert s.submit(item(0, 1.0)) and s.submit(item(0, 1.1))
    assert not s.has_room(0)
    assert not s.submit(item(0, 1.2))
    assert s.submit(item(0, 1.3, ItemKind.END), force=True)
    taken = []
    while (plan := s.schedule(9.0)) is not None:  # the queue holds all three, in order
        taken.extend(plan.items)
        s.complete(plan)
    assert taken == [item(0, 1.0), item(0, 1.1), item(0, 1.3, ItemKind.END)]


def test_in_flight_stream_not_planned_twice_and_removal() -> None:
    s = make(batch=1)
    s.submit(item(0, 1.0))
    plan = s.schedule(1.0)
    assert plan is not None
    s.submit(item(1, 1.0))
    assert s.schedule(9.0) is None
    s.remove_stream(1)  # its pending item goes with it
    s.complete(plan)
    assert s.next_deadline() is None
    with pytest.raises(SchedulerError):
        s.complete(plan)
    with pytest.raises(SchedulerError):
        s.submit(item(1, 2.0))


def test_validation() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        Scheduler(max_slots=1, max_batch_size=0, max_wait_s=0.0, max_pending_per_stream=1)
    with pytest.raises(ValueError, match="max_slots"):
        Scheduler(max_slots=0, max_batch_size=1, max_wait_s=0.0, max_pending_per_stream=1)
    s = make()
    with pytest.raises(SchedulerError):
        s.add_stream(0)


# ---------------------------------------------------------------------------------------------------------
# Slots: one owner, and every change of hands reaches the runner through a plan.


def test_plans_announce_new_streams_once_with_their_info() -> None:
    s = Scheduler(max_slots=2, max_batch_size=4, max_wait_s=0.0, max_pending_per_stream=2)
    a = s.add_stream(10, info="settings-a")
    b = s.add_stream(11, info="settings-b")
    assert {a, b} == {0, 1} and s.free_slots == 0
    with pytest.raises(SchedulerError, match="slots"):
        s.add_stream(12)
    s.submit(item(10, 1.0))
    plan = s.schedule(1.0)
    assert plan is not None and plan.slots == (a,) and plan.freed_slots == ()
    assert plan.new_streams == (NewStream(a, "settings-a"), NewStream(b, "settings-b"))
    s.complete(plan)
    s.submit(item(11, 2.0))
    plan = s.schedule(2.0)
    assert plan is not None and plan.slots == (b,) and plan.new_streams == ()


def test_a_slot_in_the_step_in_flight_is_freed_when_the_step_completes() -> None:
    s = Scheduler(max_slots=1, max_batch_size=4, max_wait_s=0.0, max_pending_per_stream=2)
    slot = s.add_stream(1)
    s.submit(item(1, 1.0))
    plan = s.schedule(1.0)
    assert plan is not None
    s.remove_stream(1)
    assert s.free_slots == 0  # the runner is still using it
    s.complete(plan)
    assert s.free_slots == 1
    again = s.add_stream(2, info="next")
    assert again == slot
    s.submit(item(2, 2.0))
    plan = s.schedule(2.0)
    # Freed first, then new: the runner drops the old decoder, then resets the slot for the new owner.
    assert plan is not None and plan.freed_slots == (slot,) and plan.new_streams == (NewStream(slot, "next"),)


def test_a_stream_removed_before_any_plan_is_never_announced() -> None:
    s = Scheduler(max_slots=1, max_batch_size=4, max_wait_s=0.0, max_pending_per_stream=2)
    s.add_stream(1)
    s.remove_stream(1)
    assert s.free_slots == 1
    s.add_stream(2)
    s.submit(item(2, 1.0))
    plan = s.schedule(1.0)
    assert plan is not None and plan.freed_slots == () and [n.slot for n in plan.new_streams] == [0]


def test_a_failed_step_announces_its_slot_changes_again() -> None:
    """The runner may not have applied a failed plan's slot changes: its freed slots and its new streams
    that are still live come again in the next plan (a removed one does not)."""
    s = Scheduler(max_slots=4, max_batch_size=1, max_wait_s=0.0, max_pending_per_stream=2)
    for sid in (0, 1):
        s.add_stream(sid, info=f"settings {sid}")
    s.submit(item(0, 1.0))
    first = s.schedule(1.0)
    assert first is not None and [n.slot for n in first.new_streams] == [0, 1]
    s.complete(first)
    s.remove_stream(0)  # its slot is freed: told in the next plan
    s.add_stream(2, info="settings 2")
    s.submit(item(1, 2.0))
    failed = s.schedule(2.0)
    assert failed is not None and failed.freed_slots == (0,)
    assert [(n.slot, n.info) for n in failed.new_streams] == [(0, "settings 2")]  # stream 2 took slot 0
    s.complete(failed, failed=True)
    s.remove_stream(1)  # the engine fails the failed step's stream
    s.submit(item(2, 3.0))
    again = s.schedule(3.0)
    assert again is not None and [i.stream_id for i in again.items] == [2]
    assert again.freed_slots[0] == 0 and 1 in again.freed_slots
    assert [(n.slot, n.info) for n in again.new_streams] == [(0, "settings 2")]
    s.complete(again)
    s.submit(item(2, 4.0))
    later = s.schedule(4.0)
    assert later is not None and later.new_streams == () and later.freed_slots == ()
