"""When a batch's input offsets may be committed: write state → produce → settle → ack.

A batch's events are acknowledged to Faust (so their offsets may be committed) only once
every record the batch produced (changelog, recommendations, dead letters, new-item
evidence) is acknowledged by the broker. Faust writes a table key to RocksDB at once but
sends its changelog record through a buffer in the background, and its pre-commit flush
gives up after 0.1 s of a stalled buffer, so its own flush is not enough. The wait runs in
the background while the next batch is computed; a send that fails for good stops the
process (fail-stop) before the offsets can be committed: the batch is redone on restart,
and the per-user offset in the state makes redoing it harmless (docs/reliability.md).

`OffsetGuard` stops the worker before a hole in a partition's offsets can be committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from recsys.errors import ExitCode, fail_stop
from streaming import faust_compat
from streaming.worker.batches import BatchReader

log = logging.getLogger("streamrec.worker")


class Checkpoint:
    def __init__(self, reader: BatchReader, max_unsettled: int):
        self.reader, self.max_unsettled = reader, max_unsettled
        self._unsettled: deque[asyncio.Future[None]] = deque()

    async def ack_when_settled(self, sends: list[Any], events: list[Any]) -> None:
        """Ack `events` once every future in `sends` has resolved (in the background); waits
        here while more than `max_unsettled` batches are unsettled."""
        self._unsettled.append(asyncio.ensure_future(self._settle_then_ack(sends, events)))
        while self._unsettled and (len(self._unsettled) > self.max_unsettled or self._unsettled[0].done()):
            await self._unsettled.popleft()

    async def _settle_then_ack(self, sends: list[Any], events: list[Any]) -> None:
        results = await asyncio.gather(*sends, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            fail_stop(
                ExitCode.DELIVERY_FAILED,
                "%d of %d records of a batch could not be delivered (%r): stopping "
                "so that the batch is redone on restart instead of committed",
                len(errors),
                len(sends),
                errors[0],
            )
        self.reader.ack(events)


def failed(exc: BaseException) -> asyncio.Future[Any]:
    """A future that has failed with `exc` (a send that raised at once settles as a failure)."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_exception(exc)
    return fut


class OffsetGuard:
    """Fail-stop on a hole in a partition's offsets, before the batch can be acked.

    The input topic is written without transactions and never compacted, so a partition's
    offsets are contiguous. Faust's stream was seen to skip messages around a (re)start or a
    rebalance: jumping ahead inside a partition, or starting a partition past its committed
    offset. Processing on would apply later events of the same users, and when the skipped ones
    came back after a later restart, the per-user offset ("already applied") would discard them:
    lost. Stopping here, before this batch is acknowledged and before anything after the hole is
    applied, keeps the committed offset before the hole: the restarted worker reads the skipped
    messages in order.

    A message is in order when it is at most one past the highest offset this process has
    handled on its partition (the next one, or a redelivery). Otherwise every message it skips
    must be committed already: it must be at or below the group's committed offset (asked once
    per assignment; right after a restore Faust may hand over a few already-processed messages
    from a fetch made before it seeks to the committed offsets). Anything else is a hole.

    The highest offset handled is kept across rebalances, because a batch's acks settle in the
    background: a batch handled just before a revocation (before, since the worker drops what a
    revocation made stale before applying it) may not be committed yet when the partition comes
    back, so the committed offset may still be below what was handled, and the consumer may resume
    past it: Faust's fetch loop can drop the first messages it fetches of a returning partition
    (faust_compat.drop_stale_read_offsets, cleared by `on_rebalance_complete`). Skipped messages
    that were handled here are not a hole: every offset from the committed one to the highest
    handled was handled by this process (a message past that range is let through only at or
    below the committed offset, which only grows). Ones that were not are: in bench.scale a batch
    of partition 3 up to 20452 was handled across a rebalance, the partition came back with
    20423 committed, and the consumer resumed at 20616, 20453-20615 read by no one."""

    def __init__(self, app: faust.App, committed: Callable[[Any], Awaitable[int | None]] | None = None):
        self.app = app
        self._lookup = committed or (lambda tp: faust_compat.committed_offset(app, tp))
        self.handled: dict[int, int] = {}  # partition -> highest offset handled by this process
        self._committed_at_start: dict[Any, int | None] = {}  # TP -> committed offset at assignment
        self._seen: set[int] = set()  # partitions with a message since the assignment
        self._assignment = 0  # counts forget() calls: a lookup that spans one is not kept

    def forget(self, *_: Any, **__: Any) -> None:
        """On a rebalance a partition may come back at any committed offset: ask again."""
        self._committed_at_start.clear()
        self._seen.clear()
        self._assignment += 1

    async def _committed(self, tp: Any) -> int | None:
        if tp in self._committed_at_start:
            return self._committed_at_start[tp]
        assignment = self._assignment
        try:
            committed = await self._lookup(tp)
        except Exception as e:  # noqa: BLE001 - an unknown value only disables the check
            log.warning("could not read the committed offset of %s: %r", tp, e)
            committed = None
        if assignment == self._assignment:  # asked before a rebalance: not this assignment's value
            self._committed_at_start[tp] = committed
        return committed

    async def check(self, events: list[Any]) -> None:
        await self.look_up(events)
        self.check_now(events)

    async def look_up(self, events: list[Any]) -> None:
        """Ask for the committed offsets `check_now` may need: one per partition and assignment.
        The worker awaits this first, then drops what a rebalance meanwhile made stale, then calls
        `check_now`, which marks offsets handled and must not await (nothing may be revoked
        between it and the state writes)."""
        for tp in {ev.message.tp for ev in events}:
            await self._committed(tp)

    def check_now(self, events: list[Any]) -> None:
        holes = []
        for ev in events:
            msg = ev.message
            p, o = msg.partition, msg.offset
            handled = self.handled.get(p)
            if handled is None or o > handled + 1:
                committed = self._committed_at_start.get(msg.tp)
                if committed is not None and committed >= 0 and o > committed:
                    holes.append((p, handled, o, committed))
            elif p not in self._seen:  # in order, but past the committed offset? (said, for the record)
                committed = self._committed_at_start.get(msg.tp)
                if committed is not None and committed >= 0 and o > committed:
                    log.info(
                        "partition %d resumed at %d, past its committed offset %d but within what this "
                        "process handled (up to %d, acks settling): not a hole",
                        p,
                        o,
                        committed,
                        handled,
                    )
            self._seen.add(p)
            if handled is None or o > handled:
                self.handled[p] = o
        if holes:
            fail_stop(
                ExitCode.OFFSET_HOLE,
                "input offsets skipped by the consumer %s (partition, highest handled, next, "
                "committed): stopping before they can be committed, so that a restart reads them",
                holes[:10],
            )

    def handled_since_assignment(self) -> dict[int, int]:
        """The highest offset handled on each partition that has had a message since the
        assignment (the worker's lag: before a partition's first one, the consumer's position
        says more than an offset handled before it went away)."""
        return {p: self.handled[p] for p in self._seen}

    def on_rebalance_complete(self, *_: Any, **__: Any) -> None:
        """Before Faust seeks the input partitions to their committed offsets after a rebalance:
        forget the read offsets its fetch loop set after the revocation (faust_compat.drop_stale_read_offsets)."""
        stale = faust_compat.drop_stale_read_offsets(self.app)
        if stale:
            log.info(
                "forgot the consumer's read offsets set after the revocation %s: the partitions are read "
                "from their committed offsets",
                {f"{tp.topic}/{tp.partition}": off for tp, off in stale.items()},
            )
