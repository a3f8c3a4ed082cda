"""The item catalogue on every worker: the items topic, kept whole in RocksDB, applied between batches.

    recsys items load / set ──► [items] (compacted, key = item id, tombstone = deleted)
                                   │ every worker reads all partitions (no consumer group)
                                   ▼
    <data_dir>/catalogue (RocksDB: the records + the offset read per partition, one write batch)
                                   │ on start: read back, then the topic from the stored offsets on
                                   ▼
    recsys.catalogue.Catalogue (arrays) ──► Processor.eligibility: the mask inside every top-k

Why not Faust's GlobalTable: its standby path (how every worker gets the partitions it does not
own) has lost records after recovery (faust-streaming issue #212, robinhood/faust #716); it
restores through Faust's per-record recovery (~2,200 records/s here, minutes for a 1M-item
catalogue: streaming/worker/restore.py only speeds up active partitions); and its writes take the
partition of the current event, which a clickstream micro-batch does not have. The items topic is
itself the changelog: a compacted log of whole records, which this module reads like a standby
reads a changelog, into the same kind of local RocksDB, with the offsets in the same write batch
as the records, so a restart resumes where it stopped and a wiped data dir reads the topic again.
Tombstones are kept on the topic (delete.retention.ms, streaming/topics.py) so that a deletion
survives a re-read.

The clickstream loop waits for the first catch-up (to the end offsets measured at start), so no
list is ever published from a catalogue that is behind the topic as it was when the worker
started. Later records are applied as they arrive, between batches (one event loop): a change
reaches every list published from the next batch on.

A record that does not validate (recsys.catalogue.decode_item) is counted
(streamrec_catalogue_rejected{reason}) and skipped by every worker; the leader worker (Faust's
leader election) also sends it to the dead-letter topic with its reason, so it is dead-lettered
once, not once per worker (around a leader change a record may be dead-lettered twice).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from recsys.catalogue import Catalogue, decode_item
from recsys.errors import EventError

log = logging.getLogger("streamrec.catalogue")

ITEM_PREFIX, OFFSET_PREFIX = b"i:", b"o:"
FETCH_RECORDS = 5000  # per getmany: each is applied in one go, so this bounds an event-loop stall


class CatalogueMetrics:
    def __init__(self, registry: CollectorRegistry):
        r = registry
        self.items = Gauge("streamrec_catalogue_items", "Items listed in the catalogue (not deleted)", registry=r)
        self.hidden = Gauge(
            "streamrec_catalogue_blocked", "Catalogue items never shown: hidden, unavailable or deleted", registry=r
        )
        self.records = Counter("streamrec_catalogue_records", "Item records applied", registry=r)
        self.rejected = Counter(
            "streamrec_catalogue_rejected", "Item records skipped as invalid, by reason", ["reason"], registry=r
        )


class CatalogueStore:
    """The local RocksDB copy of the items topic and the in-memory Catalogue built from it."""

    def __init__(self, path: Path, registry: CollectorRegistry):
        self.path = path
        self.catalogue = Catalogue()
        self.metrics = CatalogueMetrics(registry)
        self.offsets: dict[int, int] = {}  # partition -> last offset applied
        self.ready = asyncio.Event()
        self._db: Any = None

    def open(self) -> None:
        """Open (or create) the local copy and read it back into memory."""
        from rocksdict import Options, Rdict

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(self.path), Options(raw_mode=True))
        t0 = time.perf_counter()
        n = 0
        it = self._db.iter()
        it.seek_to_first()
        chunk: list[tuple[bytes, Any]] = []
        while it.valid():
            key, value = it.key(), it.value()
            if key.startswith(OFFSET_PREFIX):
                self.offsets[int(key[len(OFFSET_PREFIX) :])] = int(value)
            elif key.startswith(ITEM_PREFIX):
                item = key[len(ITEM_PREFIX) :]
                chunk.append((item, decode_item(item, value) if value else None))
                n += 1
                if len(chunk) >= FETCH_RECORDS:
                    self.catalogue.apply_many(chunk)
                    chunk = []
            it.next()
        self.catalogue.apply_many(chunk)
        del it
        self._gauges()
        if n:
            log.info("catalogue: %d item records read back from %s in %.1fs", n, self.path, time.perf_counter() - t0)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def apply(self, records: list[Any]) -> list[tuple[Any, EventError]]:
        """Apply fetched records of the items topic (key, value, partition, offset): memory, then
        the records and the new offsets in one RocksDB write. Returns the rejected ones."""
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        bad: list[tuple[Any, EventError]] = []
        good: list[tuple[bytes, Any]] = []
        for r in records:
            self.offsets[r.partition] = r.offset
            try:
                item = decode_item(r.key, r.value)
            except EventError as e:
                bad.append((r, e))
                self.metrics.rejected.labels(e.reason).inc()
                continue
            good.append((r.key, item))
            # a deleted item keeps an empty value: re-read, it stays deleted
            batch.put(ITEM_PREFIX + r.key, r.value if r.value is not None else b"")
        self.catalogue.apply_many(good)
        applied = len(good)
        for p, off in self.offsets.items():
            batch.put(OFFSET_PREFIX + str(p).encode(), str(off).encode())
        if self._db is not None:
            self._db.write(batch)
        self.metrics.records.inc(applied)
        self._gauges()
        return bad

    def _gauges(self) -> None:
        self.metrics.items.set(len(self.catalogue))
        self.metrics.hidden.set(self.catalogue.hidden)

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.ready.is_set(),
            "items": len(self.catalogue),
            "blocked": self.catalogue.hidden,
            "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
        }


async def follow(store: CatalogueStore, bootstrap: str, topic: str, dead_letter: Any) -> None:
    """Read the items topic into `store` forever: from the stored offsets (or the beginning),
    `store.ready` set once the end offsets measured at start are reached. `dead_letter(records)`
    is awaited with the rejected (record, EventError) pairs."""

    from streaming.kafka.broadcast import broadcast_consumer

    async with broadcast_consumer(bootstrap, topic, from_beginning=True) as consumer:
        tps = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        for tp in tps:
            done = store.offsets.get(tp.partition)
            if done is not None:
                consumer.seek(tp, done + 1)
        ends = await consumer.end_offsets(tps)
        target = {tp.partition: end for tp, end in ends.items()}
        t0 = time.perf_counter()
        n = 0

        def caught_up() -> bool:
            return all(store.offsets.get(p, -1) + 1 >= end for p, end in target.items())

        if caught_up():
            store.ready.set()
        while True:
            got = await consumer.getmany(timeout_ms=500, max_records=FETCH_RECORDS)
            records = [r for tp in sorted(got, key=lambda t: t.partition) for r in got[tp]]
            if records:
                bad = store.apply(records)
                n += len(records)
                if bad:
                    await dead_letter(bad)
            if not store.ready.is_set():
                # positions, not offsets applied: a partition whose tail was compacted away
                # reaches its end offset without a record at end - 1
                pos = {tp.partition: await consumer.position(tp) for tp in tps}
                if all(pos[p] >= end for p, end in target.items()):
                    for p, end in target.items():
                        store.offsets.setdefault(p, end - 1)
                    store.ready.set()
                    log.info(
                        "catalogue: caught up with %s (%d records in %.1fs): %d items, %d never shown",
                        topic,
                        n,
                        time.perf_counter() - t0,
                        len(store.catalogue),
                        store.catalogue.hidden,
                    )
            if records:
                await asyncio.sleep(0)  # let a batch in between fetches during a long catch-up


def register(app: Any, worker: Any, settings: Any) -> CatalogueStore:
    """The catalogue of one worker: opened now, followed by an app task."""
    from streaming.worker.processor import DeadLetter
    from streaming.worker.publish import dead_letter_record

    store = CatalogueStore(Path(settings.data_dir) / "catalogue", worker.metrics.registry)
    store.open()

    def leader() -> bool:
        try:
            return bool(app.is_leader())
        except Exception:  # noqa: BLE001 - before the first assignment there is no leader yet
            return False

    async def dead_letter(bad: list[tuple[Any, EventError]]) -> None:
        for r, e in bad:
            log.warning(
                "catalogue: skipped %s/%d/%d: %s %s", settings.items_topic, r.partition, r.offset, e.reason, e.detail
            )
        if not leader():
            return
        records = [
            dead_letter_record(
                DeadLetter(r.key, r.value, e.reason, e.detail, r.partition, r.offset), settings.items_topic
            )
            for r, e in bad
        ]
        for fut in await worker.publisher.publish(settings.dlq_topic, records):
            await fut

    @app.task
    async def catalogue() -> None:
        try:
            while True:
                try:
                    await follow(store, settings.bootstrap, settings.items_topic, dead_letter)
                except Exception:  # e.g. the broker went away: what is held keeps serving
                    log.exception(
                        "catalogue: reading %s failed; resuming from the stored offsets in 5 s", settings.items_topic
                    )
                    await asyncio.sleep(5.0)
        finally:
            store.close()

    return store
