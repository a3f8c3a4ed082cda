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
    offsets are contiguous, and the first message after an assignment should be the group's
    committed offset. Faust's stream was seen to skip messages around a (re)start: jumping
    ahead inside a partition, or starting a partition past its committed offset. Processing
    on would apply later events of the same users, and when the skipped ones came back after
    a later restart, the per-user offset ("already applied") would discard them: lost.
    Stopping here, before this batch is acknowledged and before anything after the hole is
    applied, keeps the committed offset before the hole: the restarted worker reads the
    skipped messages in order.

    A jump that ends at or below the committed offset is not a hole: right after a restore
    Faust may hand over a few already-processed messages from a fetch made before it seeks
    to the committed offsets."""

    def __init__(self, app: faust.App):
        self.app = app
        self.last: dict[int, int] = {}  # partition -> last offset handled since assignment
        self._committed_at_start: dict[Any, int | None] = {}  # TP -> committed offset at assignment

    def forget(self, *_: Any, **__: Any) -> None:
        """On a rebalance a partition may come back at any committed offset: start over."""
        self.last.clear()
        self._committed_at_start.clear()

    async def _committed(self, tp: Any) -> int | None:
        if tp not in self._committed_at_start:
            try:
                self._committed_at_start[tp] = await faust_compat.committed_offset(self.app, tp)
            except Exception as e:  # noqa: BLE001 - an unknown value only disables the first-message check
                log.warning("could not read the committed offset of %s: %r", tp, e)
                self._committed_at_start[tp] = None
        return self._committed_at_start[tp]

    async def check(self, events: list[Any]) -> None:
        holes = []
        for ev in events:
            msg = ev.message
            p, o = msg.partition, msg.offset
            last = self.last.get(p)
            if last is None or o > last + 1:
                committed = await self._committed(msg.tp)
                if committed is not None and committed >= 0 and o > committed and (last is None or o > last + 1):
                    holes.append((p, last, o, committed))
            if last is None or o > last:
                self.last[p] = o
        if holes:
            fail_stop(
                ExitCode.OFFSET_HOLE,
                "input offsets skipped by the consumer %s (partition, last handled, "
                "next, committed): stopping before they can be committed, so that a restart reads them",
                holes[:10],
            )
