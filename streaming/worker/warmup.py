"""The candidate sources from the recent clickstream: at start, before the first batch
(`warm_up`), and for partitions a rebalance moves to a running worker (`Refill`).

Why a re-read of the input topic and not a table: streaming/worker/ranking.py ("Restart").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from recsys.candidates.sources import load_kernels
from recsys.errors import EventError
from recsys.events import Event, InputConfig
from streaming.jobs.window import plan
from streaming.kafka import clients
from streaming.worker.processor import Incoming, Processor, decode_event

log = logging.getLogger("streamrec.worker")


def recent_events(
    bootstrap: str,
    topic: str,
    group: str,
    window_s: float,
    max_events: int,
    mapping: InputConfig | None = None,
    *,
    partitions: Collection[int] | None = None,
    begin: Mapping[int, int] | None = None,
    now: float | None = None,
    timeout_s: float = 120.0,
) -> tuple[list[Event], dict[int, int]]:
    """The clickstream's events of the last `window_s` seconds (record timestamps), every
    partition (or those in `partitions`), from `begin[p]` on where given (what was counted
    already), up to `group`'s committed offsets (a partition it never committed: nothing, the
    worker's batches will read it all), at most `max_events` (each partition its newest same
    share of its window), validated as the worker validates them (bad ones are
    skipped), in arrival order (record timestamps); and each partition's committed offset (where the batches start)."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    since_ms = int(((time.time() if now is None else now) - window_s) * 1000)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamrec-sources", **clients.kafka_python())
    try:
        committed = {
            tp.partition: om.offset
            for tp, om in admin.list_group_offsets({group: None}).get(group, {}).items()
            if tp.topic == topic and om.offset >= 0
        }
    finally:
        admin.close()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="streamrec-sources",
        **clients.kafka_python(),
    )
    got: list[tuple[int, int, int, Event]] = []  # (record timestamp, partition, offset, event)
    try:
        # the group's committed partitions (a new consumer may not have the topic's metadata yet)
        tps = [
            TopicPartition(topic, p)
            for p in sorted(committed)
            if committed[p] > 0 and (partitions is None or p in partitions)
        ]
        if not tps:
            return [], committed
        consumer.assign(tps)
        found = consumer.offsets_for_times({tp: max(since_ms, 0) for tp in tps})
        end = {tp: committed[tp.partition] for tp in tps}
        by_time = {tp: at.offset if at is not None else None for tp, at in found.items()}
        floor = {tp: (begin or {}).get(tp.partition, 0) for tp in tps}
        start = plan(floor, end, by_time, max_events)  # the retrain's window, up to the committed offsets
        left = []
        for tp in tps:
            if start[tp] < end[tp]:
                consumer.seek(tp, start[tp])
                left.append(tp)
        consumer.pause(*[tp for tp in tps if tp not in left])
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500, max_records=5000).items():
                for r in records:
                    if r.offset >= end[tp]:
                        continue
                    with contextlib.suppress(EventError):  # the worker dead-lettered it when it came
                        e = decode_event(Incoming(r.key, r.value, r.partition, r.offset, r.timestamp), mapping)
                        got.append((r.timestamp, r.partition, r.offset, e))
            for tp in list(left):
                if consumer.position(tp) >= end[tp]:
                    left.remove(tp)
                    consumer.pause(tp)
        if left:
            log.warning("the sources' warm-up stopped after %.0fs with %d partitions unread", timeout_s, len(left))
    finally:
        consumer.close()
    got.sort(key=lambda g: g[:3])  # partitions interleave: the order they reached the broker
    return [g[3] for g in got], committed


def count_into(processor: Processor, events: Sequence[Event]) -> None:
    """Re-read events into the processor's sources, item counters and recent popularity (what a
    batch's events feed besides the users' state)."""
    assert processor.ranking is not None
    processor.ranking.observe(events, catalogue=processor.catalogue)
    for e in events:
        processor.recent_popularity.add(e.item, e.ts)


def warm_up(processor: Processor, settings: Any, mapping: InputConfig | None = None) -> int:
    """Fill `processor`'s sources, item counters and recent popularity from the clickstream's
    recent window (`settings.sources_window_hours`), before the worker's first batch. Returns
    the events read."""
    ranking = processor.ranking
    if ranking is None:
        return 0
    t0 = time.monotonic()
    load_kernels()  # the sources' compiled kernels, here rather than in the first batch
    log.info("the sources' kernels loaded in %.1fs", time.monotonic() - t0)
    if settings.sources_window_hours <= 0:
        return 0
    t0 = time.monotonic()
    events, committed = recent_events(
        settings.bootstrap,
        settings.clickstream_topic,
        settings.app_id,
        settings.sources_window_hours * 3600.0,
        settings.sources_window_max_events,
        mapping,
    )
    count_into(processor, events)
    ranking.through.update({p: offset - 1 for p, offset in committed.items()})
    processor.metrics.sources_reread.labels("start").inc(len(events))
    log.info(
        "candidate sources warmed up from the last %gh of %s: %d events in %.1fs",
        settings.sources_window_hours,
        settings.clickstream_topic,
        len(events),
        time.monotonic() - t0,
    )
    return len(events)


class Refill:
    """Partitions a rebalance moves to a running worker: their recent window into its sources.

    The warm-up read every partition up to the group's committed offsets once; from then on a
    worker counts only its own partitions' events, so a partition it takes over later lacks
    what its previous owner handled since (and a partition it had before, what others handled
    while it was away). Faust's `on_partitions_assigned` (`on_assigned`) notes the partitions
    new to this worker; before its next batch the clickstream loop calls `catch_up`, which reads
    each one's events from the first one this process has not counted (`WorkerRanking.through`)
    or the window's start (`stream.sources_window_hours`), whichever is later, up to the
    committed offset the batches start at (at most these partitions' share of
    `stream.sources_window_max_events`, the warm-up's cap):
    off the event loop in a thread, then counted on the loop in slices, with no batch in
    between (the batches' events come after these). Called before the warm-up: nothing to do
    (`started` is False), the warm-up reads every partition."""

    SLICE = 5000  # events counted per turn of the event loop (~0.1-0.3 s)

    def __init__(self, processor: Processor, settings: Any, mapping: InputConfig | None = None):
        self.processor, self.settings, self.mapping = processor, settings, mapping
        self.owned: set[int] = set()
        self.pending: set[int] = set()
        self.started = False  # the warm-up has begun: it covers what was assigned before it

    def on_assigned(self, *args: Any, **_: Any) -> None:
        """Faust's on_partitions_assigned receiver, (sender, assigned): the whole new assignment."""
        assigned: Collection[Any] = args[1] if len(args) > 1 else ()
        mine = {tp.partition for tp in assigned if tp.topic == self.settings.clickstream_topic}
        if self.started:
            self.pending |= mine - self.owned
        self.pending &= mine
        self.owned = mine

    async def catch_up(self) -> int:
        """Read the pending partitions' recent events into the sources; returns how many."""
        ranking = self.processor.ranking
        if not self.pending or ranking is None or self.settings.sources_window_hours <= 0:
            self.pending.clear()
            return 0
        parts, self.pending = sorted(self.pending), set()
        t0 = time.monotonic()
        s = self.settings
        begin = {p: ranking.through[p] + 1 for p in parts if p in ranking.through}
        # the warm-up's cap, these partitions' share of it: a takeover's first batch waits for this
        cap = s.sources_window_max_events
        cap = -(-cap * len(parts) // max(s.partitions, len(parts))) if cap > 0 else 0
        try:
            events, committed = await asyncio.to_thread(
                recent_events,
                s.bootstrap,
                s.clickstream_topic,
                s.app_id,
                s.sources_window_hours * 3600.0,
                cap,
                self.mapping,
                partitions=parts,
                begin=begin,
            )
        except Exception as e:  # noqa: BLE001 - the lists still serve, from sources without this window
            log.warning("candidate sources: could not read partitions %s moved to this worker: %r", parts, e)
            return 0
        await self.count(events)
        for p in parts:
            if p in committed:
                ranking.through[p] = max(ranking.through.get(p, -1), committed[p] - 1)
        self.processor.metrics.sources_reread.labels("rebalance").inc(len(events))
        log.info(
            "candidate sources: read %d recent events of partitions %s, moved to this worker, in %.1fs",
            len(events),
            parts,
            time.monotonic() - t0,
        )
        return len(events)

    async def count(self, events: Sequence[Event]) -> None:
        for a in range(0, len(events), self.SLICE):
            count_into(self.processor, events[a : a + self.SLICE])
            await asyncio.sleep(0)  # web requests and heartbeats between slices
