"""The candidate sources after a restart: the recent clickstream re-read before the first batch.

Why a re-read of the input topic and not a table: streaming/worker/ranking.py ("Restart").
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

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
    now: float | None = None,
    timeout_s: float = 120.0,
) -> tuple[list[Event], dict[int, int]]:
    """The clickstream's events of the last `window_s` seconds (record timestamps), every
    partition, up to `group`'s committed offsets (a partition it never committed: nothing, the
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
        tps = [TopicPartition(topic, p) for p in sorted(committed) if committed[p] > 0]
        if not tps:
            return [], committed
        consumer.assign(tps)
        found = consumer.offsets_for_times({tp: max(since_ms, 0) for tp in tps})
        end = {tp: committed[tp.partition] for tp in tps}
        by_time = {tp: at.offset if at is not None else None for tp, at in found.items()}
        start = plan({}, end, by_time, max_events)  # the retrain's window, up to the committed offsets
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


def warm_up(processor: Processor, settings: Any, mapping: InputConfig | None = None) -> int:
    """Fill `processor`'s sources, item counters and recent popularity from the clickstream's
    recent window (`settings.sources_window_hours`), before the worker's first batch. Returns
    the events read."""
    ranking = processor.ranking
    if ranking is None or settings.sources_window_hours <= 0:
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
    ranking.observe(events)
    ranking.through.update({p: offset - 1 for p, offset in committed.items()})
    for e in events:
        processor.recent_popularity.add(e.item, e.ts)
    log.info(
        "candidate sources warmed up from the last %gh of %s: %d events in %.1fs",
        settings.sources_window_hours,
        settings.clickstream_topic,
        len(events),
        time.monotonic() - t0,
    )
    return len(events)
