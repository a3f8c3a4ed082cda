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

import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from recsys.errors import EventError, RecsysError
from recsys.events import Event, InputConfig
from streaming.worker.messages import Incoming, decode_event

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


def decode(records: Iterable[Incoming], window: Window, mapping: InputConfig | None) -> None:
    """Validate `records` as the worker does; events into `window`, the others counted by reason."""
    for r in records:
        window.records += 1
        try:
            event = decode_event(r, mapping)
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
    _read_bulk(bootstrap, topic, w, since_ms, max_events, mapping, stall_s, progress_every_s)
    w.events.sort(key=lambda e: e.ts)  # partitions interleave: one time order (stable within a user)
    w.seconds = time.monotonic() - t0
    return w


def _read_bulk(
    bootstrap: str,
    topic: str,
    w: Window,
    since_ms: int,
    max_events: int,
    mapping: InputConfig | None,
    stall_s: float,
    every_s: float,
) -> None:
    """The window's records through librdkafka (streaming/kafka/clients.py `BulkReader`, the
    changelog read's consumer): it fetches and parses record batches in its own threads, off the
    GIL, where aiokafka made a Python object per record in this one (a fifth of the read's time);
    what is left here is each record's validation."""
    from confluent_kafka import KafkaException, TopicPartition

    from streaming.kafka import clients

    with clients.BulkReader(bootstrap, topic, "streamrec-retrain-window", 8 << 20, timeout_s=stall_s) as reader:
        if not reader.partitions:
            w.note = f"the clickstream topic {topic} does not exist on {bootstrap}"
            return
        w.partitions = len(reader.partitions)
        marks = reader.watermarks()
        asked = [TopicPartition(topic, p, max(since_ms, 0)) for p in reader.partitions]
        try:
            found = reader.consumer.offsets_for_times(asked, timeout=stall_s)
        except KafkaException as e:
            raise reader.failure(f"the offsets of {topic} by time", e) from None
        # no record that recent: librdkafka answers the end (a negative logical offset)
        by_time = {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in found}
        end = {p: e for p, (_, e) in marks.items()}
        start = plan({p: b for p, (b, _) in marks.items()}, end, by_time, max_events)
        total = sum(end[p] - start[p] for p in end)
        if total == 0:
            w.note = f"the clickstream topic {topic} has no record in the window"
            return
        left = {p: end[p] for p in end if end[p] > start[p]}
        reader.start({p: start[p] for p in left})
        log.info("reading the clickstream window of %s: %d records in %d partitions", topic, total, len(end))
        t0 = last_report = last_progress = time.monotonic()
        while left:
            msgs = reader.consumer.consume(10_000, 0.5)
            now = time.monotonic()
            keep = []
            done = set()
            for m in msgs:
                err, p, off = m.error(), m.partition() or 0, m.offset() or 0
                if err is not None:  # librdkafka's own error codes are named with a leading underscore
                    if err.name() != "_PARTITION_EOF":
                        raise reader.failure(topic, KafkaException(err))
                    done.add(p)
                elif p in left:
                    if off < left[p]:  # later records: the next retrain's
                        keep.append(Incoming(m.key(), m.value(), p, off, m.timestamp()[1]))
                    if off >= left[p] - 1:
                        done.add(p)
            if keep:
                decode(keep, w, mapping)
                last_progress = now
            for p in done:
                if left.pop(p, None) is not None:
                    reader.pause(p)
            if left and now - last_progress > stall_s:
                if reader.errors:
                    raise reader.failure(topic)
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
