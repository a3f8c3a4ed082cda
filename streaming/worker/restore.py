"""Bulk restore of a RocksDB table from its changelog, ahead of Faust's own per-record recovery.

Faust 0.15 restores a table partition by passing every changelog record through its general
consumer pipeline: `Consumer._drain_messages` awaits `wait_first(callback(message), ...)` for
each record (four tasks and an `asyncio.wait`), the conductor decodes it into an event, a queue
hands it to `Recovery._slurp_changelogs`, which awaits `asyncio.wait_for(queue.get())` (one more
task and a timer) and recomputes the remaining-offsets counters, for every record. That is a few
hundred microseconds of event-loop work per record: ~2,200 state records/s on the project's
2-core box, ≈ 7.5 minutes for 1M users (BENCHMARKS.md, bench/state.py).

`TableManager` (given to `faust.App(TableManager=...)`) gives the app a `FastRecovery`, which
does one thing more than Faust's: when Faust is about to seek the active changelog partitions
to the offsets it will read from, it first bulk-loads each of those partitions with a private
consumer (no group, same broker settings and isolation level as Faust's) from the offset the
local RocksDB has to the highwater Faust has just measured. Each fetch is written with one
RocksDB WriteBatch per partition that also carries Faust's persisted-offset key, so data and
offset land together: a crash, a rebalance (the recovery cancels the step) or a stall
ending in the middle leaves every partition consistent at some offset, and Faust's own recovery
then reads from there: the rest, if any, and anything appended meanwhile. The records are
written byte for byte as Faust's `Store.apply_changelog_batch` writes them (a tombstone
deletes), into the same per-partition database.

While loading, a partition's database is switched to bulk-load mode: writes skip the WAL and
automatic compactions (and the L0 write-stall triggers) are off; at the end (also on failure or
cancellation) it is flushed to SST files and its options are put back as they were (read from
the database's OPTIONS file), so compaction catches up in the background while the worker
serves. Skipping the WAL is safe because the data and the offset key go into the same
memtable: a crash before the flush loses both together, back to the last flushed offset; and
the flush comes before Faust, or anything else, writes to the partition again. (In a 1M-record
test outside the worker this cut the write time per record by ~3x; fetching then dominates.)

Only active partitions of tables whose store is Faust's RocksDB store (rocksdict driver) and
that have no `on_changelog_event` callback are bulk-loaded; anything else (standbys, other
stores) takes Faust's path unchanged. A worker whose data dir is current (a normal restart)
has nothing to load: this is a no-op there. The `bulk_restore` setting (STREAMREC_BULK_RESTORE=0)
turns it off: the app then gets Faust's own TableManager.

No time budget: Faust awaits the seek step with a timeout (`broker_request_timeout`, 90 s by
default) and takes a timeout for the recovery service stopping, but the compat layer's Recovery
(`faust_compat.PreSeekRecovery`) restarts that timeout at every `progress()`, which the load calls
after every fetch it writes: a large changelog loads for as long as it takes (it used to stop at
54 s and leave the rest to Faust's per-record path, minutes more at 1M users under load). What
bounds it is a stall: no record for STALL_S and the load leaves the rest to Faust; a hang inside
one step still ends at Faust's own timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from faust.types import TP

from streaming import faust_compat

log = logging.getLogger("streamrec.restore")

FETCH_BYTES_PER_PARTITION = 16 << 20
FETCH_MAX_BYTES = 64 << 20
STALL_S = 15.0  # no progress for this long: leave the partition to Faust
PROGRESS_EVERY_S = 10.0  # a progress line in the log while loading
# Mutable RocksDB options changed for the bulk load, with the values they get while loading.
BULK_OPTIONS = {
    "disable_auto_compactions": "true",
    "level0_slowdown_writes_trigger": "1000",
    "level0_stop_writes_trigger": "1000",
}
ROCKSDB_DEFAULTS = {
    "disable_auto_compactions": "false",
    "level0_slowdown_writes_trigger": "20",
    "level0_stop_writes_trigger": "36",
}  # RocksDB 8's, if the OPTIONS file is unreadable


def _rocksdb_store(table: Any) -> Any:
    """The table's Faust RocksDB store (rocksdict driver), or None if bulk loading does not apply."""
    try:
        from faust.stores.rocksdb import Store
    except ImportError:  # pragma: no cover
        return None
    store = getattr(table, "data", None)
    if not isinstance(store, Store) or not store.use_rocksdict or getattr(store, "read_only", False):
        return None
    if faust_compat.has_changelog_callback(table):
        return None
    return store


def _options_in_file(db_dir: Path, names: Any) -> dict[str, str]:
    """The current values of some options, from the database's latest OPTIONS file."""
    out = dict(ROCKSDB_DEFAULTS)
    try:
        files = sorted(db_dir.glob("OPTIONS-*"), key=lambda f: int(f.name.split("-")[1]))
        for line in files[-1].read_text().splitlines() if files else []:
            k, _, v = line.strip().partition("=")
            if k in names:
                out[k] = v
    except (OSError, ValueError):
        pass
    return {k: out[k] for k in names}


class _BulkMode:
    """A partition database in bulk-load mode (see the module docstring) until close()."""

    def __init__(self, store: Any, partition: int):
        self.db = faust_compat.partition_db(store, partition)
        self.offset_key: bytes = store.offset_key
        self.saved = _options_in_file(Path(store.partition_path(partition)), BULK_OPTIONS)
        self.db.set_options(BULK_OPTIONS)
        from rocksdict import WriteOptions

        self.write_opt = WriteOptions()
        self.write_opt.disable_wal = True  # type: ignore[method-assign,assignment]  # a property; rocksdict's stub says method

    def close(self) -> None:
        try:
            self.db.flush(True)  # before anything writes with the WAL again: see the module docstring
        finally:
            self.db.set_options(self.saved)


class FastRecovery(faust_compat.PreSeekRecovery):
    """Faust's Recovery plus a bulk load of the active changelog partitions before they are seeked."""

    async def before_seek(self, tps: set[Any], offsets: Any) -> None:
        try:
            await self._bulk_restore(set(tps), offsets)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - Faust's own path restores whatever is left
            log.warning("bulk changelog restore failed (%r); Faust's recovery reads the rest", e)

    def plan(self, tps: set, offsets: Any) -> dict[TP, tuple[Any, int, int]]:
        """tp -> (store, first offset to read, end offset) for the partitions worth bulk-loading."""
        plan = {}
        for tp in tps:
            table = self.tp_to_table.get(tp)
            store = _rocksdb_store(table) if table is not None else None
            highwater = self.active_highwaters.get(tp)  # last offset in the topic (end - 1)
            have = offsets.get(tp)
            if store is None or highwater is None or highwater < 0 or have is None:
                continue
            start = have + 1 if have >= 0 else 0
            if start <= highwater:
                plan[tp] = (store, start, highwater + 1)
        return plan

    async def _bulk_restore(self, tps: set, offsets: Any) -> None:
        plan = self.plan(tps, offsets)
        if not plan:
            return
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list

        app, conf = self.app, self.app.conf
        total = sum(end - start for _, start, end in plan.values())
        # Faust's own words for a restore (its "Restoring state from changelog topics..." only
        # appears if something is left for its per-record path), so that logs read the same.
        self.log.info(
            "Restoring state from changelog topics (bulk): %d records into %d partitions (stall limit %.0f s)",
            total,
            len(plan),
            STALL_S,
        )
        t0 = last_report = time.monotonic()
        transport: Any = app.transport  # the aiokafka driver's (TransportT lacks default_port)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=server_list(transport.url, transport.default_port),
            client_id=f"{conf.broker_client_id}-restore",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if app.in_transaction else "read_uncommitted",
            max_partition_fetch_bytes=max(FETCH_BYTES_PER_PARTITION, conf.consumer_max_fetch_size),
            fetch_max_bytes=FETCH_MAX_BYTES,
            fetch_max_wait_ms=100,
            request_timeout_ms=int(conf.broker_request_timeout * 1000),
            check_crcs=conf.broker_check_crcs,
            **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
        )
        ktp = {tp: TopicPartition(tp.topic, tp.partition) for tp in plan}
        left = {ktp[tp]: tp for tp in plan}
        done_records = 0
        modes: dict[TP, _BulkMode] = {}
        await consumer.start()
        try:
            for tp, (store, _, _) in plan.items():
                modes[tp] = _BulkMode(store, tp.partition)
            consumer.assign(list(left))
            for tp, (_, start, _) in plan.items():
                consumer.seek(ktp[tp], start)
            last_progress = time.monotonic()
            while left:
                fetched = await consumer.getmany(*left, timeout_ms=200)
                for ktp_, records in fetched.items():
                    got = left.get(ktp_)
                    if got is None or not records:
                        continue
                    done_records += self.apply_fetch(modes[got], got, records, offsets, plan[got][2])
                    last_progress = time.monotonic()
                    self.progress()  # Faust's timeout on this step restarts: see the module docstring
                if last_progress - last_report >= PROGRESS_EVERY_S:
                    last_report = last_progress
                    secs = last_progress - t0
                    self.log.info(
                        "Bulk restore: %d/%d records (%.0f%%) in %.0f s, %.0f records/s",
                        done_records,
                        total,
                        100 * done_records / max(total, 1),
                        secs,
                        done_records / max(secs, 1e-6),
                    )
                for ktp_, tp in list(left.items()):
                    end = plan[tp][2]
                    if await consumer.position(ktp_) >= end:
                        # everything below `end` consumed (compacted gaps, control records):
                        # the partition is as current as the highwater Faust measured
                        have = offsets.get(tp)
                        if have is None or have < end - 1:
                            modes[tp].db.put(modes[tp].offset_key, str(end - 1).encode(), modes[tp].write_opt)
                            offsets[tp] = end - 1
                        del left[ktp_]
                        consumer.pause(ktp_)
                if left and time.monotonic() - last_progress > STALL_S:
                    self.log.warning(
                        "Bulk restore: no progress for %.0f s on %s; Faust's recovery reads the rest",
                        STALL_S,
                        sorted(str(t) for t in left.values()),
                    )
                    break
                await asyncio.sleep(0)  # let the web server, heartbeats' callbacks etc. run
        finally:
            errors = []
            for mode in modes.values():
                try:
                    mode.close()
                except Exception as e:  # noqa: BLE001 - close every partition, then report
                    errors.append(e)
            await consumer.stop()
            if errors:
                raise errors[0]
        secs = time.monotonic() - t0
        self.log.info(
            "Bulk-loaded %d changelog records in %.1f s (%.0f records/s)%s",
            done_records,
            secs,
            done_records / max(secs, 1e-6),
            f"; Faust's recovery reads the rest of {len(left)} partitions" if left else "",
        )

    @staticmethod
    def apply_fetch(mode: _BulkMode, tp: TP, records: list, offsets: Any, end: int) -> int:
        """Write one fetch of one partition: its records and the persisted offset, in one batch."""
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        last = -1
        n = 0
        for r in records:
            if r.offset >= end:  # past the highwater Faust measured: Faust reads it itself
                break
            if r.value is None:
                batch.delete(r.key)
            else:
                batch.put(r.key, r.value)
            last = r.offset
            n += 1
        if n:
            batch.put(mode.offset_key, str(last).encode())
            mode.db.write(batch, mode.write_opt)
            offsets[tp] = last
        return n


class TableManager(faust_compat.TableManager):
    """Faust's TableManager with FastRecovery (`faust.App(TableManager=TableManager)`)."""

    recovery_class = FastRecovery
