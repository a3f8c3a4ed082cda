"""Every use of a private Faust or aiokafka internal, in one place, each with its reason.

The worker uses Faust's public API (apps, topics, tables, agents, tasks, sensors, the web
server, app settings) wherever it does the job. What it needs beyond that is here, and
nowhere else (ruff's SLF rule is on everywhere outside this package). `TOUCH_POINTS` lists
each internal; tests/unit/test_faust_compat.py fails, naming the touch point, when an
installed Faust or aiokafka no longer has one, so an upgrade shows at once what to look at.
Written against faust-streaming 0.15 and aiokafka 0.14.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Coroutine, Generator, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.streams import _current_event
from faust.tables.manager import TableManager as _FaustTableManager
from faust.tables.recovery import RebalanceAgain as _RebalanceAgain
from faust.tables.recovery import Recovery
from faust.tables.recovery import ServiceStopped as _ServiceStopped
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.services import WaitResults

# aiokafka keeps at most one fetch in flight per broker and answers a fetch for partitions
# with nothing new only when one of them gets data or the fetch wait runs out; meanwhile
# records on the other partitions wait at the broker. Faust fixes the wait at 1500 ms.
FAUST_FETCH_MAX_WAIT_MS = 1500


@dataclass(frozen=True)
class TouchPoint:
    module: str
    name: str  # attribute path inside the module ("Class.attr")
    reason: str
    instance_attr: bool = False  # set in __init__, so looked for on an instance


TOUCH_POINTS: tuple[TouchPoint, ...] = (
    TouchPoint(
        "faust.streams",
        "_current_event",
        "a table write takes its partition (RocksDB store and changelog) from the current event; "
        "a micro-batch writes users of several partitions, each under its own event",
    ),
    TouchPoint(
        "faust.transport.drivers.aiokafka",
        "AIOKafkaConsumerThread._ensure_consumer",
        "the committed offset of an input partition (offset-hole check); no public Faust call",
    ),
    TouchPoint(
        "faust.transport.drivers.aiokafka",
        "AIOKafkaConsumerThread._create_worker_consumer",
        "the hook where Faust builds the worker's aiokafka consumer (to shorten its fetch wait)",
    ),
    TouchPoint(
        "faust.transport.drivers.aiokafka",
        "Consumer._new_consumer_thread",
        "Faust's factory of the consumer thread above",
    ),
    TouchPoint("faust.app.base", "App._new_transport", "Faust picks transports by URL scheme only"),
    TouchPoint(
        "aiokafka.consumer.consumer",
        "AIOKafkaConsumer._fetch_max_wait_ms",
        "read by aiokafka's Fetcher at start; Faust passes a fixed 1500 ms",
        instance_attr=True,
    ),
    TouchPoint(
        "aiokafka.consumer.consumer",
        "AIOKafkaConsumer._client",
        "a metadata refresh, so that a consumer without a group sees a topic created after it started "
        "(AIOKafkaConsumer.topics() fetches metadata without keeping it)",
        instance_attr=True,
    ),
    TouchPoint(
        "faust.transport.drivers.aiokafka",
        "Producer._ensure_producer",
        "the app's aiokafka producer, for one produce batch per partition (send_batch)",
    ),
    TouchPoint(
        "faust.tables.recovery",
        "Recovery._seek_offsets",
        "the moment before Faust reads the active changelog partitions: the bulk restore runs there",
    ),
    TouchPoint(
        "faust.tables.recovery",
        "Recovery._wait",
        "how Recovery awaits each step with a fixed timeout (broker_request_timeout) and ends for good on "
        "one: the pre-seek step's timeout becomes a stall limit (PreSeekRecovery.progress)",
    ),
    TouchPoint("faust.tables.recovery", "ServiceStopped", "what Recovery._wait raises when the service stops"),
    TouchPoint("faust.tables.recovery", "RebalanceAgain", "what Recovery._wait raises when a rebalance starts"),
    TouchPoint(
        "faust.tables.manager", "TableManager._recovery", "where TableManager keeps its Recovery", instance_attr=True
    ),
    TouchPoint(
        "faust.transport.consumer",
        "Consumer.track_message",
        "events taken from a channel queue without a Stream are tracked as a Stream tracks them",
    ),
    TouchPoint(
        "faust.types.tuples", "Message.tracked", "the flag a Stream sets when it tracks a message", instance_attr=True
    ),
    TouchPoint("faust.events", "Event.ack", "acking without a Stream, as a Stream acks"),
    TouchPoint(
        "faust.transport.consumer",
        "Consumer._read_offset",
        "a read offset the fetch loop sets after a revocation outlives the rebalance and makes it skip "
        "input messages: cleared before the seek to the committed offsets (drop_stale_read_offsets)",
        instance_attr=True,
    ),
    TouchPoint(
        "faust.stores.rocksdb",
        "Store._db_for_partition",
        "a partition's rocksdict DB, for bulk WriteBatches that carry Faust's offset key",
    ),
    TouchPoint(
        "faust.tables.base",
        "Collection._on_changelog_event",
        "a table with a changelog callback must see every record: no bulk restore for it",
        instance_attr=True,
    ),
    TouchPoint(
        "faust.stores.rocksdb", "Store._dbs", "the open partition DBs, for RocksDB's key estimate", instance_attr=True
    ),
    TouchPoint(
        "mode.utils.queues",
        "FlowControlEvent._queues",
        "the queues a flow resume empties: the input channel's is taken out (channel_of)",
        instance_attr=True,
    ),
    TouchPoint(
        "faust.transport.consumer",
        "Consumer._drain_messages",
        "the fetch loop hands each message over with wait_first(callback(message), suspend_flow.wait()): "
        "_Consumer.wait_first runs that callback's first step in place (eager_first)",
    ),
    TouchPoint(
        "faust.transport.consumer",
        "Consumer.suspend_flow",
        "set while a rebalance has the flow stopped: then the fetch loop's wait_first is Faust's own",
        instance_attr=True,
    ),
)


# -- the current event ----------------------------------------------------------------------------
@contextlib.contextmanager
def current_event(event: Any) -> Iterator[None]:
    """Make `event` Faust's current event for table reads and writes in this block."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


# -- consumer -------------------------------------------------------------------------------------
async def committed_offset(app: faust.App, tp: Any) -> int | None:
    """The consumer group's committed offset of `tp` (None: none committed)."""
    thread = app.consumer._thread  # type: ignore[attr-defined]  # the aiokafka driver's consumer thread
    result: int | None = await thread.call_thread(thread._ensure_consumer().committed, tp)
    return result


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        app: Any = self.app  # our App (below): AppT does not declare fetch_max_wait_ms
        consumer._fetch_max_wait_ms = app.fetch_max_wait_ms  # the Fetcher takes it when the consumer starts
        return consumer


class _Resume:
    """Awaiting it finishes `coro`, a coroutine already stepped once that yielded `blocked_on`:
    the task awaiting it waits on what `coro` yields, as it would have for `coro` itself."""

    def __init__(self, coro: Coroutine[Any, Any, Any], blocked_on: Any):
        self.coro, self.blocked_on = coro, blocked_on

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.blocked_on
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # noqa: BLE001 - the task's cancellation, among others: `coro` handles it
                try:
                    value = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as done:
                    return done.value


def eager_first(work: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run `work` up to its first suspension in the calling task: (True, its result) when it
    completes without one, else (False, an awaitable that finishes it in whatever task awaits it).
    An exception `work` raises on the way propagates."""
    try:
        blocked_on = work.send(None)
    except StopIteration as done:
        return True, done.value
    return False, _Resume(work, blocked_on)


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        """Faust's fetch loop delivers each message with `wait_first(callback(message),
        suspend_flow.wait())`: four tasks and an asyncio.wait per message, ~16% of the worker's
        event loop at full load (py-spy). The callback nearly always completes without blocking,
        so it runs here first, in the loop's own task; one that blocks (a full channel queue, the
        flow control, the producer's buffer) goes on in a task raced against the flow's
        suspension, the stop and the crash, as Faust has it."""
        if (
            len(coros) == 2
            and timeout is None
            and all(asyncio.iscoroutine(c) for c in coros)
            and not (self.suspend_flow.is_set() or self.should_stop)
        ):
            work, flow = coros
            try:
                done, value = eager_first(work)
            except BaseException:
                flow.close()  # never started
                raise
            if done:
                flow.close()
                return WaitResults([work], [value], False)
            coros = (value, flow)
        return await super().wait_first(*coros, timeout=timeout)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class App(faust.App):
    """A faust.App whose worker consumer waits at most `fetch_max_wait_ms` per fetch."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int = FAUST_FETCH_MAX_WAIT_MS, **kwargs: Any):
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


# -- micro-batches straight from a topic's channel (streaming/worker/batches.py) ------------------
# What a Faust Stream does per event on receipt and on ack, for events taken from the
# channel's queue without a Stream (its per-event overhead is what batches.py avoids).
def channel_of(app: faust.App, topic: Any) -> Any:
    """The channel the conductor delivers `topic`'s events to (iterating a topic clones it as
    one and subscribes the consumer to it, as an agent does when it starts).

    Its queue is not emptied when the flow resumes. Faust's recovery resumes the flow, then
    resumes the input partitions and seeks them to their committed offsets (coordinator round
    trips, up to half a second under load) while the fetch loop delivers from them, then resumes
    the flow again, which empties every queue it manages: the events delivered in that window
    and not yet taken were gone, the consumer's position past them, and the offset guard stopped
    the worker (bench.scale: a batch took 20279-20528 of a partition, 20529-20656 were wiped,
    the next event was 20657). What a queue holds from before a rebalance is dropped by
    `take_current_events` (an older consumer generation) instead."""
    channel = topic.__aiter__()
    app.flow_control._queues.discard(channel.queue)  # managed: emptied on every resume
    return channel


def take_current_events(app: faust.App, events: Sequence[Any]) -> list[Any]:
    """The events fetched in the current consumer generation, each tracked as pending until
    acked (what a Stream does on receipt); older ones are dropped, not acked, as a Stream drops
    them: the partition's new owner reads them again from the committed offset."""
    consumer, generation, active = app.consumer, app.consumer_generation_id, app.flow_control.is_active()
    out = []
    for ev in events:
        msg = ev.message
        if not active or msg.generation_id != generation:
            continue
        if not msg.tracked:
            msg.tracked = True
            consumer.track_message(msg)
        out.append(ev)
    return out


def ack_events(app: faust.App, events: Sequence[Any]) -> None:
    """Ack events (what a Stream does after processing): the consumer may commit an offset
    once every event at or below it is acked."""
    on_message_out = app.sensors.on_message_out
    for ev in events:
        if ev.ack():  # the last reference: the consumer may commit it
            msg = ev.message
            on_message_out(msg.tp, msg.offset, msg)


def read_offsets(app: faust.App) -> MutableMapping[Any, int | None]:
    """The consumer's read offset per partition: its fetch loop drops a fetched message below it."""
    read_offset: MutableMapping[Any, int | None] = app.consumer._read_offset  # type: ignore[attr-defined]
    return read_offset


def drop_stale_read_offsets(app: faust.App) -> dict[Any, int]:
    """Forget the consumer's read offsets of the input partitions (changelogs aside) when a
    rebalance's recovery completes, before Faust resumes them and seeks them to the committed
    offsets; returns what was forgotten (partition -> offset).

    Faust's fetch loop drops a fetched message below its partition's read offset (a duplicate
    of one it delivered). A revocation clears the revoked partitions' read offsets, but the loop
    may be inside the delivery of a message then (waiting on a full channel queue): woken by the
    revocation, it sets that partition's read offset to that message's offset all the same. The
    entry outlives the rebalance. When the partition comes back, Faust's seek to the committed
    offsets asks the coordinator for one partition after another, seeking each as its answer
    comes, and replaces the read offsets only after the last answer: a window of round trips,
    wide on a loaded machine, in which the loop fetches from the committed offset and drops what
    lies below the stale entry. Nothing seeks back after it: the consumer has skipped those
    messages (bench.scale: 20423-20615 of a partition, its stale entry 21345, its committed
    offset 20423). Between the revocation and this point the input
    partitions are paused, so every such entry is stale; without one the loop delivers what it
    fetches, and the seek at most makes it deliver some of it twice (harmless: the per-user
    offset in the state)."""
    read_offset = read_offsets(app)
    changelogs = app.tables.changelog_topics
    stale = {tp: off for tp, off in read_offset.items() if off is not None and tp.topic not in changelogs}
    for tp in stale:
        read_offset.pop(tp, None)  # as the revocation left it
    return stale


async def refresh_metadata(consumer: Any) -> None:
    """Refresh an aiokafka consumer's cluster metadata (`partitions_for_topic` reads it)."""
    await consumer._client.force_metadata_update()


# -- producer -------------------------------------------------------------------------------------
def aiokafka_producer(app: faust.App) -> Any:
    """The app's aiokafka producer (made when the app starts): its acks, linger and retries."""
    return app.producer._ensure_producer()  # type: ignore[attr-defined]  # the aiokafka driver's producer


# -- table recovery -------------------------------------------------------------------------------
class PreSeekRecovery(Recovery):
    """Faust's Recovery with a hook, `before_seek`, awaited just before it seeks the active
    changelog partitions to the offsets it will read from (subclasses override it).

    Faust awaits each recovery step (`_wait`) with a fixed timeout, broker_request_timeout, and
    takes a timeout for the service stopping: the recovery loop ends for good and the worker never
    serves. A hook that loads a large changelog can take longer than that and still be making
    progress, so here the timeout counts from the step's start or its last `progress()` call: a
    stall limit, not a limit on the whole step. A step that calls `progress()` never (every step of
    Faust's own) waits exactly as in Faust."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._progressed = asyncio.Event()

    def progress(self) -> None:
        """The current step is making progress: its timeout starts again from now."""
        self._progressed.set()

    async def _wait(self, coro: Any, timeout: Any = None) -> None:
        await self.wait_step(coro, timeout)

    async def wait_step(self, coro: Any, timeout: Any = None) -> None:
        """How every recovery step is awaited (Faust's `_wait`, with the timeout above)."""
        if timeout is None:
            return await super()._wait(coro, timeout)
        # (asyncio events: wait_first waits on anything with a `.wait()`; mode's types say mode's Event)
        progressed: Any = self._progressed
        signal: Any = self.signal_recovery_start
        progressed.clear()
        task = asyncio.ensure_future(coro)
        try:
            while True:
                # shielded: a `progress()` ends this round's wait_first, which cancels what it waited for
                step = asyncio.shield(task)
                res = await self.wait_first(step, signal, progressed, timeout=timeout)
                if res.stopped:  # stopped, crashed, or `timeout` without progress: as in Faust
                    raise _ServiceStopped()
                if signal in res.done:
                    raise _RebalanceAgain()
                if task.done():
                    task.result()
                    return None
                progressed.clear()
        finally:
            if not task.done():
                task.cancel()

    async def before_seek(self, tps: set[Any], offsets: Any) -> None:
        """`offsets`: tp -> last offset the local store holds; a hook may advance them (and
        call `progress()` as it goes: see the class docstring)."""

    async def _seek_offsets(self, consumer: Any, tps: set[Any], offsets: Any, title: str) -> None:
        if title == "active" and tps:
            await self.before_seek(set(tps), offsets)
        await super()._seek_offsets(consumer, tps, offsets, title)


class TableManager(_FaustTableManager):
    """Faust's TableManager whose Recovery is `recovery_class` (`faust.App(TableManager=...)`)."""

    recovery_class: type[Recovery] = PreSeekRecovery

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = self.recovery_class(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


# -- RocksDB store --------------------------------------------------------------------------------
def partition_db(store: Any, partition: int) -> Any:
    """The rocksdict DB of one partition of a Faust RocksDB store (opened if needed)."""
    return store._db_for_partition(partition)


def open_partition_dbs(store: Any) -> Sequence[Any]:
    """The partition DBs a Faust RocksDB store has open now."""
    return list(getattr(store, "_dbs", {}).values())


def active_partition_dbs(store: Any) -> dict[int, Any]:
    """Partition -> DB of a Faust RocksDB store, for the partitions this worker is active for
    (standby copies left out)."""
    actives = store.app.assignor.assigned_actives()
    topic = store.table.changelog_topic_name
    return {p: db for p, db in list(getattr(store, "_dbs", {}).items()) if TP(topic, p) in actives}


def count_keys(store: Any, db: Any) -> int:
    """The table keys in one partition DB (Faust's own offset key left out): a full key scan."""
    return sum(1 for _ in store._visible_keys(db))


def has_changelog_callback(table: Any) -> bool:
    """Whether the table was given an `on_changelog_event` callback."""
    return getattr(table, "_on_changelog_event", None) is not None
