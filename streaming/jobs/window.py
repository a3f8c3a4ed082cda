"""The recent clickstream, read once by the retrain for the ranker's training examples.

The input topic (`stream.clickstream_topic`) from the first offset at or after `now − window`
(the brokers' record timestamps, `offsets_for_times`) to the end offsets measured when the read
starts: records produced while it runs are the next retrain's. `max_events` caps the read: a
partition whose window holds more starts later, each partition keeping the same share of its
window (the newest records), so the partitions still cover about the same stretch of time.
Each record is validated as the worker validates it (streaming/worker/processor.py
`decode_event` with the `[input]` mapping); a bad one is counted by its reason and skipped,
never fatal. A missing or empty topic is an empty window, not an error: the retrain then
publishes its model without a ranker and says why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from recsys.errors import EventError, RecsysError
from recsys.events import Event, InputConfig

log = logging.getLogger("streamrec.retrain")
P = TypeVar("P")


@dataclass
class Window:
    """The events read (time-ordered) and what was skipped, by reason."""

    events: list[Event] = field(default_factory=list)
    records: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    partitions: int = 0
    seconds: float = 0.0
    note: str = ""  # why the window is empty, when it is

    def summary(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "events": len(self.events),
            "skipped": dict(self.skipped),
            "partitions": self.partitions,
            "read_s": round(self.seconds, 3),
            **({"note": self.note} if self.note else {}),
        }


def plan(
    begin: Mapping[P, int], end: Mapping[P, int], by_time: Mapping[P, int | None], max_events: int
) -> dict[P, int]:
    """Each partition's first offset to read. `by_time`: the first offset at or after the
    window's start (None: no record that recent, nothing to read). With more than `max_events`
    records in all, every partition keeps the newest same share of its own window."""
    start = {}
    for tp, e in end.items():
        t = by_time.get(tp)
        start[tp] = e if t is None else min(max(t, begin.get(tp, 0)), e)
    total = sum(end[tp] - start[tp] for tp in end)
    if max_events > 0 and total > max_events:
        share = max_events / total
        start = {tp: end[tp] - int((end[tp] - s) * share) for tp, s in start.items()}
    return start


def decode(records: Iterable[Any], window: Window, mapping: InputConfig | None) -> None:
    """Validate `records` (aiokafka ConsumerRecords) as the worker does; events into `window`,
    the others counted by reason."""
    from streaming.worker.processor import Incoming, decode_event

    for r in records:
        window.records += 1
        try:
            event = decode_event(Incoming(r.key, r.value, r.partition, r.offset, r.timestamp), mapping)
        except EventError as e:
            window.skipped[e.reason] += 1
            continue
        window.events.append(event)


def read_window(
    bootstrap: str,
    topic: str,
    *,
    window_s: float,
    max_events: int,
    mapping: InputConfig | None = None,
    stall_s: float = 60.0,
    progress_every_s: float = 5.0,
    now: float | None = None,
) -> Window:
    """The clickstream's last `window_s` seconds (at most `max_events` records), decoded."""
    t0 = time.monotonic()
    w = Window()
    since_ms = int(((time.time() if now is None else now) - window_s) * 1000)
    asyncio.run(_read(bootstrap, topic, w, since_ms, max_events, mapping, stall_s, progress_every_s))
    w.events.sort(key=lambda e: e.ts)  # partitions interleave: one time order (stable within a user)
    w.seconds = time.monotonic() - t0
    return w


async def _read(
    bootstrap: str,
    topic: str,
    w: Window,
    since_ms: int,
    max_events: int,
    mapping: InputConfig | None,
    stall_s: float,
    every_s: float,
) -> None:
    from streaming.kafka import clients

    async with clients.topic_reader(bootstrap, topic, "streamrec-retrain-window", 8 << 20) as (consumer, tps):
        if not tps:
            w.note = f"the clickstream topic {topic} does not exist on {bootstrap}"
            return
        w.partitions = len(tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        found = await consumer.offsets_for_times({tp: max(since_ms, 0) for tp in tps})
        start = plan(begin, end, {tp: o.offset if o is not None else None for tp, o in found.items()}, max_events)
        total = sum(end[tp] - start[tp] for tp in tps)
        if total == 0:
            w.note = f"the clickstream topic {topic} has no record in the window"
            return
        for tp in tps:
            consumer.seek(tp, start[tp])
        left = [tp for tp in tps if end[tp] > start[tp]]
        for tp in tps:
            if tp not in left:
                consumer.pause(tp)
        log.info("reading the clickstream window of %s: %d records in %d partitions", topic, total, len(tps))
        t0 = last_report = last_progress = time.monotonic()
        while left:
            fetched = await consumer.getmany(*left, timeout_ms=500)
            now = time.monotonic()
            for tp, records in fetched.items():
                stop = end[tp]
                records = [r for r in records if r.offset < stop]  # later records: the next retrain's
                if records:
                    decode(records, w, mapping)
                    last_progress = now
            for tp in list(left):
                if await consumer.position(tp) >= end[tp]:
                    left.remove(tp)
                    consumer.pause(tp)
            if left and now - last_progress > stall_s:
                raise RecsysError(
                    f"reading {topic} stalled: no record for {stall_s:.0f}s with {w.records} of {total} read "
                    "(stream.changelog_stall_s)"
                )
            if now - last_report >= every_s or not left:
                last_report = now
                log.info(
                    "reading %s %d/%d records (%.0f%%), %.0f records/s, %d skipped",
                    topic,
                    w.records,
                    total,
                    100 * w.records / total,
                    w.records / max(now - t0, 1e-9),
                    sum(w.skipped.values()),
                )
