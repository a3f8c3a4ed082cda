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
        # Users per active partition: counted by one key scan when the partition is first seen
        # recovered, then kept by the writes (a user is added when a batch writes a state its
        # load did not find). partition -> [its DB object, users]; a reassigned partition gets
        # a new DB object and is counted again.
        self._counts: dict[int, list[Any]] = {}
        self._unseen: set[bytes] = set()

    def load(self, key: bytes, event: Any) -> UserState | None:
        """A user's state, read in the partition of `event` (one of the user's events)."""
        with faust_compat.current_event(event):
            raw = self.table.get(key)
        if raw is None:
            self._unseen.add(key)
            return None
        return decode(raw)

    def write(self, key: bytes, state: UserState, event: Any) -> None:
        with faust_compat.current_event(event):
            self.table[key] = encode(state)
        if key in self._unseen:  # a user new to this worker's state: one more in its partition
            self._unseen.discard(key)
            counted = self._counts.get(event.message.partition)
            if counted is not None:
                counted[1] += 1

    def take_sent(self) -> list[Any]:
        """The futures of the changelog records sent since the last call."""
        sent, self.table.sent = self.table.sent, []
        return sent

    def get(self, user: str) -> UserState | None:
        """A user's state outside the stream (web views): with no current event, Faust's
        RocksDB store looks the key up in every local partition."""
        raw = self.table.get(user.encode())
        return decode(raw) if raw is not None else None

    def count_users(self, recovered: bool) -> int | None:
        """Users whose state this worker serves (its active partitions; standbys not counted).
        A partition not counted yet is scanned once, only when `recovered` (state restored, no
        rebalance under way); None while some active partition is still uncounted."""
        store = self.table.data
        dbs = faust_compat.active_partition_dbs(store)
        for p in list(self._counts):
            if dbs.get(p) is not self._counts[p][0]:
                del self._counts[p]
        for p, db in dbs.items():
            if p not in self._counts:
                if not recovered:
                    return None
                self._counts[p] = [db, faust_compat.count_keys(store, db)]
        return sum(n for _, n in self._counts.values())
