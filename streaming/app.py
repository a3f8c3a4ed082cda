"""The Faust application: topics, the user-state table, the clickstream agent, model updates, web.

    clickstream ──► agent (micro-batches) ──► Processor ──► user-state table (RocksDB + changelog)
                                                    ├──► recommendations
                                                    └──► clickstream-dlq
    model-updates ──► every worker (no consumer group) ──► ModelHolder swap

Faust's RocksDB store and changelog pick the partition of a table write from the *current
event*. A micro-batch holds events of several partitions, so each user's read and write runs
with that user's own event set as current (`_as_current`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from typing import Any, Iterator

import faust
from faust.streams import _current_event

from recsys import defaults
from recsys.store import ModelStore

from .metrics import WorkerMetrics
from .models import ModelHolder
from .processor import Incoming, Processor
from .settings import Settings
from .state import UserState, decode, encode

log = logging.getLogger("streamrec.worker")


@contextlib.contextmanager
def _as_current(event: Any) -> Iterator[None]:
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class StreamWorker:
    """Glue between Faust and the Processor; one per worker process."""

    def __init__(self, app: faust.App, settings: Settings, metrics: WorkerMetrics):
        self.app, self.settings, self.metrics = app, settings, metrics
        self.processor = Processor(defaults.CONFIDENCE, metrics, top_n=settings.top_n)
        self.models = ModelHolder(ModelStore(settings.model_dir), self.processor, defaults.CONFIDENCE,
                                  defaults.SCORING, metrics)
        self.table: Any = None
        self.recs_topic: Any = None
        self.dlq_topic: Any = None
        self.batches = 0

    async def handle(self, events: list[Any]) -> None:
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

        res = self.processor.process(incoming, load)
        for key, state in res.states.items():
            with _as_current(by_key[key]):
                self.table[key] = encode(state)
        for key, payload in res.messages:
            await self.recs_topic.send(key=key, value=payload)
        for dl in res.dead:
            await self.dlq_topic.send(key=dl.key, value=dl.value if dl.value is not None else b"",
                                      headers=dl.headers(self.settings.clickstream_topic))
            log.warning("dead-lettered %s/%d/%d: %s %s", self.settings.clickstream_topic, dl.partition,
                        dl.offset, dl.reason, dl.detail[:200], extra={"partition": dl.partition})
        self.batches += 1

    def state_of(self, user: str) -> UserState | None:
        """A user's state outside the stream (web views): with no current event, Faust's
        RocksDB store looks the key up in every local partition."""
        raw = self.table.get(user.encode())
        return decode(raw) if raw is not None else None

    async def listen_for_models(self) -> None:
        """Read model-updates from its end on every worker (no consumer group: a broadcast)."""
        from aiokafka import AIOKafkaConsumer

        topic = self.settings.model_updates_topic
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap, enable_auto_commit=False,
                                    group_id=None, auto_offset_reset="latest")
        await consumer.start()
        try:
            from aiokafka import TopicPartition

            parts = consumer.partitions_for_topic(topic) or set()
            while not parts:
                await asyncio.sleep(0.5)
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in parts]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            # Announcements made while this worker was starting: the store's pointer has them.
            current = self.models.store.current()
            if current and current != self.models.version:
                await self.models.on_announcement(json.dumps({"version": current}).encode())
            async for msg in consumer:
                await self.models.on_announcement(msg.value)
        finally:
            await consumer.stop()

def create_app(settings: Settings, metrics: WorkerMetrics | None = None) -> faust.App:
    app = faust.App(
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
        producer_linger_ms=1,
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        logging_config=None,
    )
    worker = StreamWorker(app, settings, metrics or WorkerMetrics())
    app.streamrec = worker  # type: ignore[attr-defined]

    clicks = app.topic(settings.clickstream_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw", partitions=settings.partitions)
    worker.recs_topic = app.topic(settings.recommendations_topic, key_serializer="raw", value_serializer="raw")
    worker.dlq_topic = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")
    # bytes in, bytes out: Faust stores our own compact encoding (streaming/state.py) as is.
    worker.table = app.Table(settings.table_name, key_type=bytes, value_type=bytes, partitions=settings.partitions,
                             default=None)

    @app.agent(clicks, name="clickstream")
    async def clickstream(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            await worker.handle(list(events))

    @app.task
    async def start_models() -> None:
        await asyncio.to_thread(worker.models.load_initial)
        await worker.listen_for_models()

    from .web import register_views

    register_views(app, worker)
    return app
