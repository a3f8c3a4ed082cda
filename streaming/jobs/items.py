"""The item catalogue on Kafka: load it from a file, change one item, read one back.

    recsys items load FILE|NAME   one item record per item (docs/formats.md "Item records") to the
                                  items topic: from a JSON-lines file of item records, or from an
                                  interaction file that carries item attributes: REES46
                                  (category_code -> the code and its prefixes, plus category_id;
                                  brand; price; the item's latest row wins) or Taobao (category_id)
    recsys items set ITEM ...     read the item's current record, change the flags given, produce it
    recsys items delete ITEM      a tombstone
    recsys items show ITEM        the item's current record on the topic

A record is an item's whole state (the topic is compacted), so `set` reads the current record
first: the latest one with that key in the key's partition (records are keyed by item id and
partitioned like every Kafka client does, murmur2 of the key). That scan reads the partition once:
seconds for a million-item catalogue.

Rows that do not make a valid record are not produced: counted by reason, with examples, in the
result (the same validator as the workers', recsys.catalogue.parse_item).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.catalogue import Item, encode_item, parse_item, rees46_categories
from recsys.errors import DataError, EventError
from recsys.events import parse_time

FORMATS = ("auto", "jsonl", "rees46", "taobao")


@dataclass
class LoadStats:
    items: int = 0
    rows: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first detail
    sent: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        s = f"{self.sent} item records produced from {self.rows} rows in {self.seconds:.1f}s"
        if self.rejected:
            s += "; rejected: " + ", ".join(f"{r} {n} (e.g. {self.examples[r]})" for r, n in self.rejected.items())
        return s


def _open_text(path: Path) -> io.TextIOBase:
    raw = path.open("rb")
    head = raw.read(2)
    raw.seek(0)
    binary: Any = gzip.GzipFile(fileobj=raw, mode="rb") if head == b"\x1f\x8b" else raw
    return io.TextIOWrapper(binary, encoding="utf-8", newline="")


def detect_format(path: Path) -> str:
    with _open_text(path) as f:
        first = f.readline().strip()
    if first.startswith("{"):
        return "jsonl"
    cols = set(first.replace("\t", ",").split(","))
    if {"product_id", "category_code", "brand", "price"} <= cols:
        return "rees46"
    if {"item_id", "category_id"} <= cols:
        return "taobao"
    raise DataError(
        f"cannot tell the catalogue format of {path} from its first line {first[:120]!r}: expected JSON item "
        "records, or a REES46 (product_id,category_code,brand,price) or Taobao (item_id,category_id) CSV; "
        "give --format"
    )


def read_items(path: Path, fmt: str = "auto", stats: LoadStats | None = None) -> Iterator[Item]:
    """The item records a file gives, one per item (a later row of the same item wins)."""
    stats = stats if stats is not None else LoadStats()
    fmt = detect_format(path) if fmt == "auto" else fmt

    def reject(e: EventError) -> None:
        stats.rejected[e.reason] += 1
        stats.examples.setdefault(e.reason, e.detail[:160])

    if fmt == "jsonl":
        with _open_text(path) as f:
            for line in f:
                if not line.strip():
                    continue
                stats.rows += 1
                try:
                    try:
                        doc = json.loads(line)
                    except ValueError as ex:
                        raise EventError("bad_json", str(ex)[:160]) from None
                    yield parse_item(doc)
                except EventError as e:
                    reject(e)
        return
    latest: dict[str, dict[str, Any]] = {}
    with _open_text(path) as f:
        for row in csv.DictReader(f):
            stats.rows += 1
            obj: dict[str, Any]
            if fmt == "rees46":
                cats = rees46_categories(row.get("category_code") or "")
                if row.get("category_id"):
                    cats.append(row["category_id"])
                obj = {"item": row.get("product_id"), "categories": cats}
                if row.get("brand"):
                    obj["brand"] = row["brand"]
                if row.get("price"):
                    try:
                        obj["price"] = float(row["price"])
                    except ValueError:
                        obj["price"] = row["price"]  # parse_item names it
                if row.get("event_time"):
                    obj["updated"] = row["event_time"]
            else:  # taobao
                obj = {"item": row.get("item_id"), "categories": [row["category_id"]] if row.get("category_id") else []}
                if row.get("timestamp"):
                    try:
                        obj["updated"] = int(row["timestamp"]) * 1000
                    except ValueError:
                        obj["updated"] = row["timestamp"]
            item = obj.get("item") or ""
            latest.pop(item, None)  # re-insert: the dict keeps the latest row last
            latest[item] = obj
    for obj in latest.values():
        try:
            if isinstance(obj.get("updated"), str):
                obj["updated"] = parse_time(obj["updated"], "auto", "'updated'")
            yield parse_item(obj)
        except EventError as e:
            reject(e)


def load(bootstrap: str, topic: str, path: Path, fmt: str = "auto", limit: int | None = None) -> LoadStats:
    """Produce a file's item records to `topic`; raises DataError if any record was not delivered."""
    from streaming.jobs.replay import make_producer

    stats = LoadStats()
    t0 = time.perf_counter()
    producer = make_producer(bootstrap, {"client_id": "streamrec-items", "linger_ms": 20, "compression_type": None})
    failed: list[BaseException] = []
    try:
        for item in read_items(path, fmt, stats):
            if limit is not None and stats.items >= limit:
                break
            key, value = encode_item(item)
            producer.send(topic, key=key, value=value).add_errback(failed.append)
            stats.items += 1
        producer.flush()
    finally:
        producer.close(timeout=10)
    stats.sent = stats.items - len(failed)
    stats.seconds = time.perf_counter() - t0
    if failed:
        raise DataError(f"{len(failed)} item records were not delivered to {topic}: {failed[0]!r}")
    return stats


def current(bootstrap: str, topic: str, item: str, timeout_s: float = 60.0) -> tuple[bool, Item | None]:
    """(found, record) of `item` on the topic: (False, None) never written, (True, None) deleted."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.partitioner.default import murmur2

    from streaming.kafka import clients

    key = item.encode()
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **clients.kafka_python())
    try:
        parts = None
        deadline = time.monotonic() + timeout_s
        while not parts:
            parts = c.partitions_for_topic(topic)
            if not parts:
                if time.monotonic() > deadline:
                    raise DataError(f"topic {topic} not found at {bootstrap}: create it with `recsys topics`")
                c.topics()  # refresh metadata
                time.sleep(0.2)
        n = len(parts)
        tp = TopicPartition(topic, (murmur2(key) & 0x7FFFFFFF) % n)
        c.assign([tp])
        c.seek_to_beginning(tp)
        end = c.end_offsets([tp])[tp]
        found, value = False, None
        while c.position(tp) < end and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500, max_records=10_000).values():
                for r in recs:
                    if r.key == key:
                        found, value = True, r.value
        if c.position(tp) < end:
            raise DataError(f"could not read {topic} to its end within {timeout_s:.0f}s")
    finally:
        c.close()
    if not found or value is None:
        return found, None
    return True, parse_item(json.loads(value))


def produce_one(bootstrap: str, topic: str, key: bytes, value: bytes | None) -> None:
    from streaming.jobs.replay import make_producer

    producer = make_producer(bootstrap, {"client_id": "streamrec-items"})
    try:
        producer.send(topic, key=key, value=value).get(timeout=60)
    finally:
        producer.close(timeout=10)


def set_item(bootstrap: str, topic: str, item: str, **changes: Any) -> Item:
    """Read the item's record, apply `changes` (fields of Item; None leaves one as it is),
    stamp `updated`, produce it. An item with no record starts from the defaults."""
    _, old = current(bootstrap, topic, item)
    obj = (old or Item(item)).to_json()
    obj.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in changes.items() if v is not None})
    obj["updated"] = int(time.time() * 1000)
    new = parse_item(obj)
    produce_one(bootstrap, topic, *encode_item(new))
    return new
