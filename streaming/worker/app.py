"""The worker: a Faust app that turns the clickstream into recommendations.

    clickstream ──► BatchReader (micro-batches) ──► Processor ──► user-state table (RocksDB + changelog)
                                                    ├──► recommendations
                                                    ├──► clickstream-dlq
                                                    └──► <app_id>-item-evidence (key = item)
                    ... then Checkpoint: acked once all of it is at the broker
    model-updates ──► every worker (no consumer group) ──► ModelUpdates ──► ServingModel.swap
                      (stream.model_transport kafka: the version fetched from <model-artifacts> first)

    With stream.item_foldin on (streaming/worker/new_items.py), new items before the next retrain:
    <app_id>-item-evidence ──► evidence agent (same group) ──► <app_id>-item-factors (compacted)
    <app_id>-item-factors ──► every worker (no consumer group) ──► ServingModel.swap (model + rows)

The parts: batches.py (reading), processor.py (what a batch does, without Faust), table.py
(state), publish.py (output), checkpoint.py (when offsets may be committed), serving.py (the
model), new_items.py, web.py, metrics.py. Anything that needs Faust's internals is in
streaming/faust_compat.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import faust

from recsys.config import Config, load_config
from recsys.model.store import ModelStore
from streaming import faust_compat
from streaming.kafka import clients
from streaming.kafka.model_transport import ModelTransport
from streaming.worker.batches import BatchReader
from streaming.worker.checkpoint import Checkpoint, OffsetGuard, failed
from streaming.worker.metrics import WorkerMetrics
from streaming.worker.processor import Incoming, Processor
from streaming.worker.publish import BatchPublisher, dead_letter_record
from streaming.worker.serving import ModelUpdates, ServingModel
from streaming.worker.table import UserStateTable
from streaming.worker.warmup import Refill, warm_up

log = logging.getLogger("streamrec.worker")


class StreamWorker:
    """One worker process: reads a batch, applies it, writes and publishes what it produced,
    and hands it to the checkpoint."""

    def __init__(self, app: faust.App, config: Config, metrics: WorkerMetrics):
        s = config.stream
        self.app, self.settings, self.metrics = app, s, metrics
        self.serving = ServingModel(metrics)
        self.updates = ModelUpdates(
            ModelStore(s.model_dir),
            self.serving,
            config.confidence,
            config.scoring,
            with_user_gram=s.item_foldin,
            transport=ModelTransport.from_settings(s) if s.model_transport == "kafka" else None,
            ranker_cfg=config.ranker if s.candidate_sources else None,
        )
        self.processor = Processor(
            config.confidence,
            metrics,
            self.serving,
            top_n=s.top_n,
            popularity_half_life_s=s.popularity_half_life_s,
            input_config=config.input,
            sources=config.sources if s.candidate_sources else None,
        )
        self.refill = Refill(self.processor, s, config.input)  # partitions moved here: their recent events
        self.table = UserStateTable(app, s.table_name, s.partitions)
        self.publisher = BatchPublisher(app)
        self.guard = OffsetGuard(app)
        self.batches = 0
        self.catalogue: Any = None  # streaming/worker/catalogue.py CatalogueStore, set by create_app

    async def run(self, reader: BatchReader) -> None:
        """The clickstream loop. A batch that fails unexpectedly (a bug: bad input goes to the
        DLQ) stops the process before its offsets can be committed."""
        checkpoint = Checkpoint(reader, self.settings.max_unsettled_batches)
        if self.catalogue is not None:  # no list before the catalogue has caught up once
            await self.catalogue.ready.wait()
        # the candidate sources from the recent clickstream before the first list (ranking.py);
        # partitions assigned from here on are read by the refill before the next batch
        self.refill.started = True
        await asyncio.to_thread(warm_up, self.processor, self.settings, self.processor.input)
        freeze_heap()  # what the warm-up loaded (the compiled kernels' objects) too
        while True:
            events = await reader.next_batch()
            await self.refill.catch_up()
            await self.guard.look_up(events)
            # The last await before the state writes: a partition revoked during the awaits
            # above is another worker's now, and applying its events here would write its users'
            # states to the changelog beside the new owner's (docs/reliability.md).
            events = reader.still_current(events)
            if not events:
                continue
            try:
                sends = await self.handle(events)
            except Exception:  # noqa: BLE001 - a bug, not bad input: fail-stop
                from recsys.errors import ExitCode, fail_stop

                fail_stop(
                    ExitCode.BATCH_FAILED, "a batch failed: stopping before its offsets can be committed", exc_info=True
                )
            await checkpoint.ack_when_settled(sends, events)

    async def handle(self, events: list[Any]) -> list[Any]:
        """Apply a batch: state written (RocksDB at once, changelog queued), recommendations,
        dead letters and evidence queued. Returns the futures of everything it sent. Nothing
        awaits before the state writes (the caller has looked up what the guard needs)."""
        self.guard.check_now(events)
        incoming, faust_event = [], {}
        for ev in events:
            msg = ev.message
            inc = Incoming(msg.key, msg.value, msg.partition, msg.offset, int(msg.timestamp * 1000))
            incoming.append(inc)
            faust_event[id(inc)] = ev
        by_key: dict[bytes, Any] = {}

        def load(key: bytes, inc: Incoming) -> Any:
            ev = by_key[key] = faust_event[id(inc)]
            return self.table.load(key, ev)

        res = self.processor.process(incoming, load)
        for key, state in res.states.items():
            self.table.write(key, state, by_key[key])
        sends = self.table.take_sent()
        s = self.settings
        try:
            publish = self.publisher.publish
            sends += await publish(s.recommendations_topic, [(k, v, ()) for k, v in res.messages])
            dead = []
            for dl in res.dead:
                dead.append(dead_letter_record(dl, s.clickstream_topic))
                log.warning(
                    "dead-lettered %s/%d/%d: %s %s",
                    s.clickstream_topic,
                    dl.partition,
                    dl.offset,
                    dl.reason,
                    dl.detail[:200],
                    extra={"partition": dl.partition},
                )
            sends += await publish(s.dlq_topic, dead)
            if res.evidence:  # new-item evidence (only with item_foldin on)
                sends += await publish(s.item_evidence_topic, [(k, v, ()) for k, v in res.evidence])
        except Exception as e:  # noqa: BLE001 - e.g. a producer error at send(): the checkpoint fail-stops
            sends.append(failed(e))
        if res.repaired:
            log.info("re-sent the state of %d users whose redelivered events it already held", res.repaired)
        self.batches += 1
        return sends


def freeze_heap() -> None:
    """Exempt what is alive after start-up (Faust, aiokafka, the model's id index: ~10⁵
    containers) from the cyclic GC. Otherwise each full collection walks all of it, on the
    event loop: pauses of 100–300 ms every few seconds showed in the latency tail."""
    gc.collect()
    gc.freeze()


def create_app(config: Config | None = None, metrics: WorkerMetrics | None = None) -> faust.App:
    """The worker's Faust app, configured by `config` (default: `load_config()`)."""
    config = config if config is not None else load_config()
    settings = config.stream
    # Restore from the changelog in bulk (streaming/worker/restore.py): Faust's own per-record
    # path managed 2,200-7,000 records/s here, minutes for 1M users on an empty data dir.
    restore: dict[str, Any] = {"TableManager": "streaming.worker.restore:TableManager"} if settings.bulk_restore else {}
    app = faust_compat.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        store="rocksdb://",
        datadir=settings.data_dir,
        web_host=settings.web_host,
        web_bind=settings.web_bind,
        web_port=settings.web_port,
        topic_partitions=settings.partitions,
        table_standby_replicas=settings.standby_replicas,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=settings.producer_linger_ms,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        broker_commit_interval=1.0,
        # A worker killed without leaving its group holds its partitions until its session
        # times out: Faust's default (60 s) would be the fail-over time (stream.broker_session_timeout_s).
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
        stream_wait_empty=False,
        logging_config=None,
        # TLS / SASL (the [kafka] settings); the bulk restore's consumer takes them from here too
        **clients.faust(config.kafka),
        **restore,
    )
    worker = StreamWorker(app, config, metrics or WorkerMetrics())
    app.streamrec = worker  # type: ignore[attr-defined]  # tests and the web views reach the worker here

    clicks = app.topic(
        settings.clickstream_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )
    app.on_partitions_revoked.connect(worker.guard.forget)
    app.on_partitions_assigned.connect(worker.guard.forget)
    app.on_rebalance_complete.connect(worker.guard.on_rebalance_complete)  # before the seek to committed offsets
    app.on_partitions_assigned.connect(worker.refill.on_assigned)
    reader = BatchReader(app, clicks, settings.batch_max, settings.batch_within_s, settings.batch_behind_wait_s)

    # the item catalogue, whole on every worker: streaming/worker/catalogue.py
    from streaming.worker.catalogue import register as register_catalogue

    worker.catalogue = register_catalogue(app, worker, settings)
    worker.processor.catalogue = worker.catalogue.catalogue

    @app.task
    async def clickstream() -> None:
        await worker.run(reader)

    if settings.item_foldin:  # new items before the next retrain: streaming/worker/new_items.py
        from streaming.worker.new_items import register as register_item_foldin

        register_item_foldin(app, worker.serving, settings)

    @app.task
    async def start_models() -> None:
        await asyncio.to_thread(worker.updates.load_initial)
        freeze_heap()
        await worker.updates.listen(settings.bootstrap, settings.model_updates_topic)

    from streaming.worker.web import register_views

    register_views(app, worker)
    return app
