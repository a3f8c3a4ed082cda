"""The Faust application: topics, the user-state table, the clickstream loop, model updates, web.

    clickstream ──► BatchReader (micro-batches) ──► Processor ──► user-state table (RocksDB + changelog)
                                                    ├──► recommendations
                                                    ├──► clickstream-dlq
                                                    └──► <app_id>-item-evidence (key = item)
    model-updates ──► every worker (no consumer group) ──► ModelHolder swap

    With stream.item_foldin on (streaming/worker/new_items.py), new items before the next retrain:
    <app_id>-item-evidence ──► evidence agent (same group) ──► <app_id>-item-factors (compacted)
    <app_id>-item-factors ──► every worker (no consumer group) ──► model + folded-in rows, swapped

The app is streaming.faust_compat.transport.App: a faust.App whose consumer waits at most 50 ms per fetch.

Faust's RocksDB store and changelog pick the partition of a table write from the *current
event*. A micro-batch holds events of several partitions, so each user's read and write runs
with that user's own event set as current (`_as_current`).

Durability (issue 5): a batch's events are acknowledged to Faust (so their offsets may be
committed) only once every record the batch produced (changelog, recommendations, dead
letters) is acknowledged by the broker (`_settle_then_ack`). Faust writes a table key to
RocksDB at once but sends its changelog record through a buffer in the background, and its
pre-commit flush gives up after 0.1 s of a stalled buffer, so its own flush is not enough: a
committed input offset must imply its state is in the changelog. The wait runs in the
background while the next batch is computed (the batches come from streaming/worker/batches.py,
which leaves acking to us). A send that fails for good stops the process (fail-stop) before
the offsets can be committed: the batch is redone on restart, and the per-user offset in the
state makes redoing it harmless. See docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import os
import weakref
from collections import deque
from typing import Any, Iterator

import faust
from faust.streams import _current_event

from recsys import defaults
from recsys.confidence import ConfidenceConfig
from recsys.serving.scoring import ScoringConfig
from recsys.model.store import ModelStore

from streaming.worker.batches import BatchReader
from streaming.kafka.broadcast import broadcast_consumer
from streaming.faust_compat.transport import PRODUCER_LINGER_MS, App
from streaming.worker.metrics import WorkerMetrics
from streaming.worker.serving import ModelHolder
from streaming.worker.processor import Incoming, Processor
from streaming.worker.publish import BatchPublisher
from recsys.settings import Settings
from streaming.worker.state import UserState, decode, encode

log = logging.getLogger("streamrec.worker")

# A dead letter is the original message plus ~1 KB of headers; Kafka takes ~1 MB per record
# (and Faust's producer max_request_size is 1,000,000 bytes). A message that was itself just
# under the limit cannot be copied whole: its DLQ copy keeps the first DLQ_MAX_BYTES (key and
# value together) and says so in the headers (truncated, original sizes, sha256 of the value).
DLQ_MAX_BYTES = 900_000
# Batches computed but not yet acknowledged by the broker: 2 lets one settle while the next
# is computed (the broker's ack took ~a third of a batch's time when each batch waited for it).
MAX_UNSETTLED = 2
ROCKSDB_OPTIONS = {"write_buffer_size": 8 << 20, "max_write_buffer_number": 2, "block_cache_size": 32 << 20,
                   "block_cache_compressed_size": 8 << 20}


@contextlib.contextmanager
def _as_current(event: Any) -> Iterator[None]:
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class StreamWorker:
    """Glue between Faust and the Processor; one per worker process."""

    def __init__(self, app: faust.App, settings: Settings, metrics: WorkerMetrics,
                 ccfg: ConfidenceConfig = defaults.CONFIDENCE, scfg: ScoringConfig = defaults.SCORING):
        self.app, self.settings, self.metrics = app, settings, metrics
        self.processor = Processor(ccfg, metrics, top_n=settings.top_n)
        self.models = ModelHolder(ModelStore(settings.model_dir), self.processor, ccfg, scfg, metrics)
        self.table: Any = None
        self.publisher = BatchPublisher(app)  # recommendations, dead letters, new-item evidence
        self.batches = 0
        self.listening = False  # positioned on model-updates: announcements from now on are heard
        self._pending: list[Any] = []  # this batch's changelog sends (FutureMessage), see track_changelog
        self._last_offset: dict[int, int] = {}  # input partition -> last offset handled since assignment
        self._committed_at_start: dict[Any, int | None] = {}  # input TP -> committed offset at assignment

    def forget_positions(self, *_: Any, **__: Any) -> None:
        """On a rebalance a partition may come back at any committed offset: start over."""
        self._last_offset.clear()
        self._committed_at_start.clear()

    async def _committed(self, tp: Any) -> int | None:
        """The group's committed offset for an input partition (asked once per assignment)."""
        if tp not in self._committed_at_start:
            try:
                thread = self.app.consumer._thread
                self._committed_at_start[tp] = await thread.call_thread(thread._ensure_consumer().committed, tp)
            except Exception as e:  # noqa: BLE001 - an unknown value only disables the first-message check
                log.warning("could not read the committed offset of %s: %r", tp, e)
                self._committed_at_start[tp] = None
        return self._committed_at_start[tp]

    async def check_contiguous(self, events: list[Any]) -> None:
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
        holes = []
        for ev in events:
            msg = ev.message
            p, o = msg.partition, msg.offset
            last = self._last_offset.get(p)
            if last is None or o > last + 1:
                committed = await self._committed(msg.tp)
                if committed is not None and committed >= 0 and o > committed and (last is None or o > last + 1):
                    holes.append((p, last, o, committed))
            if last is None or o > last:
                self._last_offset[p] = o
        if holes:
            log.critical("input offsets skipped by the consumer %s (partition, last handled, next, committed): "
                         "stopping before they can be committed, so that a restart reads them", holes[:10])
            logging.shutdown()
            os._exit(71)

    def track_changelog(self, table: Any) -> None:
        """Keep the future of every changelog record the table sends, so a batch can wait for them."""
        send = table.send_changelog

        def send_changelog(*args: Any, **kw: Any) -> Any:
            fut = send(*args, **kw)
            self._pending.append(fut)
            return fut

        table.send_changelog = send_changelog

    async def run(self, reader: BatchReader) -> None:
        """The clickstream loop. Each batch is computed, written and sent, then settles at the
        broker in the background while the next one is computed; its events are acked (their
        offsets may be committed) only once it has settled. At most MAX_UNSETTLED batches wait."""
        unsettled: deque[asyncio.Future[None]] = deque()
        while True:
            events = await reader.next_batch()
            try:
                sends = await self.handle(events)
            except Exception:  # noqa: BLE001 - a bug, not bad input (that goes to the DLQ): fail-stop
                log.critical("a batch failed: stopping before its offsets can be committed", exc_info=True)
                logging.shutdown()
                os._exit(72)
            unsettled.append(asyncio.ensure_future(self._settle_then_ack(sends, events, reader)))
            while unsettled and (len(unsettled) > MAX_UNSETTLED or unsettled[0].done()):
                await unsettled.popleft()

    async def handle(self, events: list[Any]) -> list[Any]:
        """Apply a batch: state written (RocksDB at once, changelog queued), recommendations,
        dead letters and evidence queued. Returns the futures of everything it sent."""
        await self.check_contiguous(events)
        incoming, faust_event = [], {}
        for ev in events:
            msg = ev.message
            inc = Incoming(msg.key, msg.value, msg.partition, msg.offset, int(msg.timestamp * 1000))
            incoming.append(inc)
            faust_event[id(inc)] = ev
        by_key: dict[bytes, Any] = {}

        def load(key: bytes, inc: Incoming) -> UserState | None:
            ev = by_key[key] = faust_event[id(inc)]
            with _as_current(ev):
                raw = self.table.get(key)
            return decode(raw) if raw is not None else None

        self._pending = []
        res = self.processor.process(incoming, load)
        for key, state in res.states.items():
            with _as_current(by_key[key]):
                self.table[key] = encode(state)
        sends = self._pending
        self._pending = []
        try:
            publish = self.publisher.publish
            sends += await publish(self.settings.recommendations_topic, [(k, v, ()) for k, v in res.messages])
            dead = []
            for dl in res.dead:
                dead.append(dead_letter_record(dl, self.settings.clickstream_topic))
                log.warning("dead-lettered %s/%d/%d: %s %s", self.settings.clickstream_topic, dl.partition,
                            dl.offset, dl.reason, dl.detail[:200], extra={"partition": dl.partition})
            sends += await publish(self.settings.dlq_topic, dead)
            if res.evidence:  # new-item evidence (only with item_foldin on)
                sends += await publish(self.settings.item_evidence_topic, [(k, v, ()) for k, v in res.evidence])
        except Exception as e:  # noqa: BLE001 - e.g. a producer error at send(): see _settle_then_ack
            sends.append(_failed(e))
        if res.repaired:
            log.info("re-sent the state of %d users whose redelivered events it already held", res.repaired)
        self.batches += 1
        return sends

    async def _settle_then_ack(self, sends: list[Any], events: list[Any], reader: BatchReader) -> None:
        """Wait until the broker has every record of a batch, then ack its events. On a lasting
        failure, stop the process instead: the batch is not acked, so it is redone on restart."""
        results = await asyncio.gather(*sends, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            log.critical("%d of %d records of a batch could not be delivered (%r): stopping so that the "
                         "batch is redone on restart instead of committed", len(errors), len(sends), errors[0])
            logging.shutdown()
            os._exit(70)
        reader.ack(events)

    def state_of(self, user: str) -> UserState | None:
        """A user's state outside the stream (web views): with no current event, Faust's
        RocksDB store looks the key up in every local partition."""
        raw = self.table.get(user.encode())
        return decode(raw) if raw is not None else None

    async def listen_for_models(self) -> None:
        """Read model-updates from its end on every worker (no consumer group: a broadcast)."""
        async with broadcast_consumer(self.settings.bootstrap, self.settings.model_updates_topic,
                                      from_beginning=False) as consumer:
            # Announcements made while this worker was starting: the store's pointer has them.
            current = self.models.store.current()
            if current and current != self.models.version:
                await self.models.on_announcement(json.dumps({"version": current}).encode())
            self.listening = True
            async for msg in consumer:
                await self.models.on_announcement(msg.value)


def freeze_heap() -> None:
    """Exempt what is alive after start-up (Faust, aiokafka, the model's id index: ~10⁵
    containers) from the cyclic GC. Otherwise each full collection walks all of it, on the
    event loop: pauses of 100–300 ms every few seconds showed in the latency tail."""
    gc.collect()
    gc.freeze()


def _failed(exc: BaseException) -> "asyncio.Future[Any]":
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_exception(exc)
    return fut


def dead_letter_record(dl: Any, source_topic: str) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """The DLQ record of a rejected message: its original bytes and the reason in headers;
    cut to DLQ_MAX_BYTES (and marked so) when the original would not fit in a record."""
    key, value = dl.key, dl.value if dl.value is not None else b""
    headers = dl.headers(source_topic)
    size = len(key or b"") + len(value)
    if size > DLQ_MAX_BYTES:
        headers += [("truncated", b"1"), ("original_key_bytes", str(len(key or b"")).encode()),
                    ("original_value_bytes", str(len(value)).encode()),
                    ("original_value_sha256", hashlib.sha256(value).hexdigest().encode())]
        if key is not None and len(key) > DLQ_MAX_BYTES // 2:
            key = key[:DLQ_MAX_BYTES // 2]
        value = value[:DLQ_MAX_BYTES - len(key or b"")]
    return key, value, headers


def create_app(settings: Settings, metrics: WorkerMetrics | None = None, config: Any = None) -> faust.App:
    """The worker's Faust app. `config` (recsys.config.Config) supplies the confidence and
    scoring settings; without it the library defaults apply."""
    app = App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        store="rocksdb://",
        datadir=settings.data_dir,
        web_host=settings.web_host,
        web_port=settings.web_port,
        topic_partitions=settings.partitions,
        table_standby_replicas=settings.standby_replicas,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=PRODUCER_LINGER_MS,
        broker_commit_interval=1.0,
        # A worker killed without leaving its group holds its partitions until its session
        # times out: Faust's default (60 s) would be the fail-over time. BROKER_SESSION_TIMEOUT
        # (seconds, Faust's own variable) overrides.
        broker_session_timeout=float(os.environ.get("BROKER_SESSION_TIMEOUT", 10.0)),
        broker_heartbeat_interval=float(os.environ.get("BROKER_HEARTBEAT_INTERVAL", 1.0)),
        stream_wait_empty=False,
        logging_config=None,
        # Restore from the changelog in bulk (streaming/worker/restore.py): Faust's own per-record
        # path managed 2,200-7,000 records/s here, minutes for 1M users on an empty data dir.
        **({"TableManager": "streaming.worker.restore:TableManager"} if settings.bulk_restore else {}),
    )
    worker = StreamWorker(app, settings, metrics or WorkerMetrics(),
                          *((config.confidence, config.scoring) if config is not None else ()))
    app.streamrec = worker  # type: ignore[attr-defined]

    clicks = app.topic(settings.clickstream_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw", partitions=settings.partitions)
    # bytes in, bytes out: Faust stores our own compact encoding (streaming/worker/state.py) as is.
    # RocksDB's Faust defaults are sized for big values: 64 MB x 3 write buffers and a 2 GB block
    # cache *per partition*, so a worker's memory creeps up for hours as memtables fill (the soak,
    # bench/soak.py, saw it). State records are a few kB: 8 MB x 2 buffers and a 32 MB cache per
    # partition bound memory; reads of hot users are served from the memtables and the cache.
    worker.table = app.Table(settings.table_name, key_type=bytes, value_type=bytes, partitions=settings.partitions,
                             default=None, options=dict(ROCKSDB_OPTIONS))
    worker.track_changelog(worker.table)
    app.on_partitions_revoked.connect(worker.forget_positions)
    app.on_partitions_assigned.connect(worker.forget_positions)

    reader = BatchReader(app, clicks, settings.batch_max, settings.batch_within_s)

    @app.task
    async def clickstream() -> None:
        await worker.run(reader)

    if settings.item_foldin:  # new items before the next retrain: streaming/worker/new_items.py
        from streaming.worker.new_items import register as register_item_foldin

        register_item_foldin(app, worker, settings)

    @app.task
    async def start_models() -> None:
        await asyncio.to_thread(worker.models.load_initial)
        freeze_heap()
        await worker.listen_for_models()

    from streaming.worker.web import register_views

    register_views(app, worker)
    return app
