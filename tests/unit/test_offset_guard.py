"""`checkpoint.OffsetGuard`: a hole in a partition's input offsets stops the worker before the
batch is acked; skipped messages this process already handled, or that are committed, do not.

The committed offsets come from a stand-in for the group coordinator (a dict read through an
awaitable, as the real lookup is); `fail_stop` is made to raise instead of ending the process."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from recsys.errors import ExitCode
from streaming.worker import checkpoint
from streaming.worker.checkpoint import OffsetGuard

TOPIC = "clicks"


class Stopped(Exception):
    def __init__(self, code: ExitCode, holes: list[tuple]):
        super().__init__(code, holes)
        self.code, self.holes = code, holes


@pytest.fixture(autouse=True)
def raising_fail_stop(monkeypatch):
    def fail_stop(code: ExitCode, message: str, *args: Any, **_: Any):
        raise Stopped(code, args[0])

    monkeypatch.setattr(checkpoint, "fail_stop", fail_stop)


class Coordinator:
    """The group's committed offsets; counts the lookups; `during` runs inside a lookup."""

    def __init__(self, **committed: int | None):
        self.committed = {int(k[1:]): v for k, v in committed.items()}
        self.lookups = 0
        self.during: Any = None

    async def __call__(self, tp: Any) -> int | None:
        self.lookups += 1
        await asyncio.sleep(0)
        if self.during is not None:
            self.during, during = None, self.during
            during()
        return self.committed.get(tp.partition)


def batch(partition: int, first: int, last: int) -> list[Any]:
    tp = TP(TOPIC, partition)
    return [
        SimpleNamespace(message=SimpleNamespace(partition=partition, offset=o, tp=tp)) for o in range(first, last + 1)
    ]


def check(guard: OffsetGuard, *batches: list[Any]) -> None:
    asyncio.run(guard.check([ev for b in batches for ev in b]))


def holes(guard: OffsetGuard, *batches: list[Any]) -> list[tuple]:
    with pytest.raises(Stopped) as stopped:
        check(guard, *batches)
    assert stopped.value.code == ExitCode.OFFSET_HOLE
    return stopped.value.holes


def test_the_rebalance_false_positive_of_bench_scale_is_not_a_hole():
    """The sequence bench.scale's restore step produced: partition 0 handled up to 16332 in a
    batch taken before the revocation and handled after it, its acks still settling (committed
    16332); the partition comes back to this worker and the consumer resumes at 16333. The guard
    stopped the worker there: (0, None, 16333, 16332). Nothing was skipped that this process had
    not handled."""
    coord = Coordinator(p0=16000)
    guard = OffsetGuard(app=None, committed=coord)  # type: ignore[arg-type]
    guard.forget()  # assigned
    check(guard, batch(0, 16000, 16300))
    guard.forget()  # revoked
    coord.committed[0] = 16301
    check(guard, batch(0, 16301, 16332))  # taken before the revocation, handled after it
    guard.forget()  # assigned: partition 0 again
    coord.committed[0] = 16332
    check(guard, batch(0, 16333, 16400))  # no stop
    assert guard.handled[0] == 16400


def test_the_lag_counts_from_what_was_handled_since_the_assignment():
    guard = OffsetGuard(app=None, committed=Coordinator(p0=0, p1=0))  # type: ignore[arg-type]
    check(guard, batch(0, 0, 10), batch(1, 0, 5))
    assert guard.handled_since_assignment() == {0: 10, 1: 5}
    guard.forget()
    assert guard.handled_since_assignment() == {}  # the consumer's position until a message comes
    check(guard, batch(1, 6, 8))
    assert guard.handled_since_assignment() == {1: 8} and guard.handled == {0: 10, 1: 8}


def test_a_resume_inside_what_this_process_handled_is_not_a_hole():
    coord = Coordinator(p0=100)
    guard = OffsetGuard(app=None, committed=coord)  # type: ignore[arg-type]
    check(guard, batch(0, 100, 200))
    guard.forget()
    guard.forget()
    check(guard, batch(0, 150, 250))  # committed still 100: 100..149 were handled here


def test_a_hole_inside_an_assignment_stops():
    guard = OffsetGuard(app=None, committed=Coordinator(p0=100))  # type: ignore[arg-type]
    check(guard, batch(0, 100, 110))
    assert holes(guard, batch(0, 115, 120)) == [(0, 110, 115, 100)]


def test_a_partition_started_past_its_committed_offset_stops():
    """The crash tests' case: a fresh worker whose first message of a partition is past the
    group's committed offset."""
    guard = OffsetGuard(app=None, committed=Coordinator(p0=50))  # type: ignore[arg-type]
    assert holes(guard, batch(0, 60, 70)) == [(0, None, 60, 50)]


def test_a_resume_past_what_was_handled_and_committed_stops():
    """Handled up to 16332 here; the partition comes back at 16340 with 16332 committed:
    16333..16339 were handled by no one."""
    coord = Coordinator(p0=16000)
    guard = OffsetGuard(app=None, committed=coord)  # type: ignore[arg-type]
    check(guard, batch(0, 16000, 16332))
    guard.forget()
    guard.forget()
    coord.committed[0] = 16332
    assert holes(guard, batch(0, 16340, 16350)) == [(0, 16332, 16340, 16332)]


def test_what_one_partition_handled_does_not_excuse_another():
    guard = OffsetGuard(app=None, committed=Coordinator(p0=0, p1=500))  # type: ignore[arg-type]
    check(guard, batch(0, 0, 1000))
    assert holes(guard, batch(1, 501, 510), batch(0, 1001, 1010)) == [(1, None, 501, 500)]


def test_a_jump_to_or_below_the_committed_offset_is_not_a_hole():
    """Another worker processed the partition meanwhile and committed 200; a message from
    before that comes first after the assignment (an already-processed one)."""
    coord = Coordinator(p0=0)
    guard = OffsetGuard(app=None, committed=coord)  # type: ignore[arg-type]
    check(guard, batch(0, 0, 100))
    guard.forget()
    coord.committed[0] = 200
    check(guard, batch(0, 150, 160), batch(0, 200, 210))


def test_no_committed_offset_no_check():
    guard = OffsetGuard(app=None, committed=Coordinator(p0=None))  # type: ignore[arg-type]
    check(guard, batch(0, 40, 50))


def test_the_committed_offset_is_asked_once_per_assignment():
    coord = Coordinator(p0=1000)
    guard = OffsetGuard(app=None, committed=coord)  # type: ignore[arg-type]
    check(guard, batch(0, 0, 10), batch(0, 5, 6))  # the first message: asked; a redelivery: not
    assert coord.lookups == 1
    check(guard, batch(0, 12, 13), batch(0, 20, 20))  # jumps (below the committed offset): not again
    assert coord.lookups == 1
    guard.forget()
    check(guard, batch(0, 21, 25))  # in order, the first since the assignment: asked, for the record
    check(guard, batch(0, 40, 40))
    assert coord.lookups == 2
    guard.forget()
    check(guard, batch(0, 50, 50))
    assert coord.lookups == 3


def test_a_lookup_that_spans_a_rebalance_is_not_kept_for_the_next_assignment():
    """The committed offset read for a batch handled across a rebalance is the old
    assignment's; the next assignment asks again (an old, lower value would stop the worker
    for nothing; a newer one is what the consumer resumed from)."""
    coord = Coordinator(p0=100)
    guard = OffsetGuard(app=None, committed=coord)  # type: ignore[arg-type]
    coord.during = guard.forget  # the assignment arrives while the guard waits for the coordinator
    check(guard, batch(0, 100, 120))
    coord.committed[0] = 300  # what the new owner processed and committed meanwhile
    check(guard, batch(0, 300, 310))
    assert coord.lookups == 2


def test_read_offsets_set_after_the_revocation_are_forgotten_before_the_seek():
    """Faust's fetch loop, woken by a revocation in the middle of delivering a message, sets
    that partition's read offset after the revocation cleared it; left there, it makes the loop
    drop the partition's messages below it when the partition comes back (a hole). The guard
    forgets the input partitions' read offsets when the rebalance completes (before Faust's
    seek); the changelog's are Faust's recovery's own and stay."""
    from streaming import faust_compat

    app = faust_compat.App("tguard", broker="kafka://127.0.0.1:1", store="memory://")
    app.Table("user-state", partitions=4)
    read_offset = faust_compat.read_offsets(app)
    clicks, changelog = TP("tguard-clicks", 3), TP("tguard-user-state-changelog", 3)
    read_offset[clicks] = 21345  # seen in bench.scale: committed 20423, 20423..20615 dropped
    read_offset[changelog] = 4166
    guard = OffsetGuard(app)
    guard.on_rebalance_complete(app)
    assert read_offset.get(clicks) is None
    assert read_offset[changelog] == 4166


def test_a_batch_a_rebalance_made_stale_is_not_applied_nor_acked():
    """The worker's last await before its state writes is the guard's lookup; events whose
    partition was revoked meanwhile (another consumer generation, or flow control suspended by
    the revocation) are dropped there, unacked, so that only the partition's new owner applies
    them. The guard's check itself does not await."""
    from streaming import faust_compat
    from streaming.worker.batches import BatchReader

    app = faust_compat.App("tstale", broker="kafka://127.0.0.1:1", store="memory://")
    reader = BatchReader(app, app.topic("tstale-clicks"), max_events=10, within_s=0.01)
    app.consumer_generation_id = 7
    app.flow_control.resume()

    def events(generation: int) -> list[Any]:
        out = batch(0, 10, 12)
        for ev in out:
            ev.message.generation_id, ev.message.tracked = generation, True
        return out

    current = events(7)
    assert reader.still_current(current) == current
    assert reader.still_current(events(6)) == []  # taken before the rebalance
    app.flow_control.suspend()  # a revocation under way
    assert reader.still_current(events(7)) == []
    assert not asyncio.iscoroutinefunction(OffsetGuard.check_now)
