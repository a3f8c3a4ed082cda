"""The user-state table: a Faust table on RocksDB with a changelog, our codec on top.

Faust's RocksDB store and changelog take the partition of a table read or write from the
*current event*. A micro-batch holds events of several partitions, so each user's read and
write runs with that user's own event as current.

Every changelog record the table sends is kept (`take_sent`) until the batch that wrote it
settles: a committed input offset must imply its state is in the changelog
(streaming/worker/checkpoint.py).
"""

from __future__ import annotations

from typing import Any

import faust

from streaming import faust_compat
from streaming.worker.state import UserState, decode, encode

# RocksDB's Faust defaults are sized for big values: 64 MB x 3 write buffers and a 2 GB block
# cache *per partition*, so a worker's memory crept up for hours as memtables filled (the soak,
# bench/soak.py). State records are a few kB: 8 MB x 2 buffers and a 32 MB cache per partition
# bound memory; reads of hot users are served from the memtables and the cache.
ROCKSDB_OPTIONS = {
    "write_buffer_size": 8 << 20,
    "max_write_buffer_number": 2,
    "block_cache_size": 32 << 20,
    "block_cache_compressed_size": 8 << 20,
}


class ChangelogTrackingTable(faust.Table):
    """A Faust table that keeps the future of each changelog record it sends until taken."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.sent: list[Any] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        self.sent.append(fut)
        return fut


class UserStateTable:
    def __init__(self, app: faust.App, name: str, partitions: int):
        # bytes in, bytes out: Faust stores our own compact encoding (streaming/worker/state.py) as is.
        self.table = ChangelogTrackingTable(
            app,
            name=name,
            key_type=bytes,
            value_type=bytes,
            partitions=partitions,
            default=None,
            options=dict(ROCKSDB_OPTIONS),
            beacon=app.tables.beacon,
        )
        app.tables.add(self.table)

    def load(self, key: bytes, event: Any) -> UserState | None:
        """A user's state, read in the partition of `event` (one of the user's events)."""
        with faust_compat.current_event(event):
            raw = self.table.get(key)
        return decode(raw) if raw is not None else None

    def write(self, key: bytes, state: UserState, event: Any) -> None:
        with faust_compat.current_event(event):
            self.table[key] = encode(state)

    def take_sent(self) -> list[Any]:
        """The futures of the changelog records sent since the last call."""
        sent, self.table.sent = self.table.sent, []
        return sent

    def get(self, user: str) -> UserState | None:
        """A user's state outside the stream (web views): with no current event, Faust's
        RocksDB store looks the key up in every local partition."""
        raw = self.table.get(user.encode())
        return decode(raw) if raw is not None else None

    def estimated_users(self) -> int:
        """RocksDB's key estimate over this worker's partitions (cheap; counting exactly would
        scan every key)."""
        total = 0
        for db in faust_compat.open_partition_dbs(self.table.data):
            try:
                total += int(db.property_int_value("rocksdb.estimate-num-keys") or 0)
            except Exception:  # noqa: BLE001 - a partition being closed during a rebalance
                continue
        return total
