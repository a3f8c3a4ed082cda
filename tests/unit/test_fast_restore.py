"""streaming/worker/restore.py without Kafka: what a bulk-loaded fetch leaves in RocksDB.

The end-to-end checks (a wiped worker restores every user exactly; a clean restart reads
nothing) are tests/integration/test_reliability.py's, which run through the bulk path."""

from types import SimpleNamespace

from faust.stores.rocksdb import RocksDBOptions, Store
from faust.types import TP

from streaming.worker.restore import BULK_OPTIONS, FastRecovery, _BulkMode, _options_in_file

OFFSET_KEY = Store.offset_key


class _Store:
    """The two things _BulkMode uses of Faust's RocksDB store, on a real database."""

    offset_key = Store.offset_key

    def __init__(self, path):
        self.path = path
        self.db = RocksDBOptions(write_buffer_size=1 << 20).open(path)

    def _db_for_partition(self, partition):
        return self.db

    def partition_path(self, partition):
        return self.path


def rec(offset, key, value):
    return SimpleNamespace(offset=offset, key=key, value=value)


def test_a_fetch_is_written_with_tombstones_and_its_offset_and_options_come_back(tmp_path):
    store = _Store(tmp_path / "t-0.db")
    store.db.put(b"gone", b"old")
    before = _options_in_file(tmp_path / "t-0.db", BULK_OPTIONS)
    assert before["disable_auto_compactions"] == "false"
    mode = _BulkMode(store, 0)
    assert _options_in_file(tmp_path / "t-0.db", BULK_OPTIONS) == BULK_OPTIONS  # RocksDB persisted the change
    tp, offsets = TP("cl", 0), {}
    n = FastRecovery.apply_fetch(
        mode,
        tp,
        [rec(5, b"a", b"1"), rec(6, b"a", b"2"), rec(7, b"gone", None), rec(8, b"b", b"3"), rec(9, b"late", b"x")],
        offsets,
        end=9,
    )
    assert n == 4 and offsets[tp] == 8  # offset 9 is past the highwater measured: Faust reads it
    mode.close()
    db = store.db
    assert db.get(b"a") == b"2" and db.get(b"b") == b"3" and db.get(b"gone") is None and db.get(b"late") is None
    assert db.get(OFFSET_KEY) == b"8"  # Faust's persisted offset, as Store.set_persisted_offset writes it
    assert _options_in_file(tmp_path / "t-0.db", BULK_OPTIONS) == before
    db.close()
    again = RocksDBOptions().open(tmp_path / "t-0.db")  # flushed: all there after a reopen
    assert again.get(b"a") == b"2" and again.get(OFFSET_KEY) == b"8"
    again.close()


def test_plan_skips_current_partitions_and_starts_after_the_persisted_offset():
    rec_ = FastRecovery.__new__(FastRecovery)
    from faust.stores.rocksdb import Store

    store = Store.__new__(Store)
    store.use_rocksdict, store.read_only = True, False
    table = SimpleNamespace(data=store, _on_changelog_event=None)
    a, b, c = TP("cl", 0), TP("cl", 1), TP("cl", 2)
    rec_.tp_to_table = {a: table, b: table, c: table}
    rec_.active_highwaters = {a: 99, b: 50, c: -1}
    plan = rec_.plan({a, b, c}, {a: -1, b: 50, c: -1})
    assert plan == {a: (store, 0, 100)}  # b is current, c's topic is empty
