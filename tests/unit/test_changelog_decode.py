"""The retrain's changelog decoder (streaming/jobs/changelog/): state records straight into a
confidence CSR equal, bit for bit, to the one built from the users' UserProfiles."""

import logging
from typing import Any

import numpy as np
import pytest

from recsys.confidence import ConfidenceConfig, ItemState, UserProfile, build_profiles
from recsys.errors import RecsysError
from recsys.evaluation.offline import holdout_case, holdout_rank
from recsys.model.train import confidence_matrix
from streaming.jobs.changelog.table import ChangelogTable
from streaming.worker.state import UserState, decode, encode
from tests.conftest import require_dataset

CFG = ConfidenceConfig()


class Rec:
    def __init__(self, key, value):
        self.key, self.value = key, value


def records(profiles: dict[str, UserProfile], **state) -> list[Rec]:
    return [Rec(u.encode(), encode(UserState(p, **state))) for u, p in profiles.items()]


def table(recs, chunk=97, **kw) -> ChangelogTable:
    kw.setdefault("holdout_max", 0)
    t = ChangelogTable(CFG, chunk_records=chunk, **kw)
    t.add(recs)
    return t


def expected_from_profiles(t: ChangelogTable, profiles: dict[str, UserProfile], items: list[str]):
    """The matrix from UserProfiles in the decoder's row and column order, two ways: the batch
    path (confidence_matrix) and what the stream folds in per user (the confidences of
    `UserProfile.values`, as streaming/worker/ranking.py and recsys/serving/recommender.py take them)."""
    rows = [k.decode() for k in t.live_keys()]
    by_row = {u: profiles[u] for u in rows}
    batch, _, _ = confidence_matrix(by_row, CFG, item_ids=items)
    col = {i: k for k, i in enumerate(items)}
    stream = np.zeros((len(rows), len(items)), np.float32)
    for r, u in enumerate(rows):
        for item, c in CFG.to_confidences(by_row[u].values(CFG)).items():
            stream[r, col[item]] = np.float32(c)
    return batch, stream


def assert_same(got, want) -> None:
    assert got.shape == want.shape
    for part in ("indptr", "indices", "data"):
        a, b = getattr(got, part), getattr(want, part)
        assert np.array_equal(a, b), part
    assert got.data.tobytes() == want.data.tobytes()  # bit for bit, not just ==


@pytest.mark.data
def test_matrix_equals_the_userprofile_matrix_bit_for_bit_on_real_data():
    require_dataset("taobao")
    from recsys.data.datasets import load_dataset

    events = sorted(load_dataset("taobao", lenient=True), key=lambda e: e.ts)
    profiles = build_profiles(events, CFG)
    recs = records(profiles, last_items=["x"], last_scores=[0.5], last_source="blend", last_query="q")
    t = table(recs, chunk=1000)
    data = t.training_data()
    assert data.users == len(profiles) and data.skipped == 0
    assert set(data.items) == {i for p in profiles.values() for i in p.items}
    batch, stream = expected_from_profiles(t, profiles, data.items)
    assert_same(data.matrix, batch)
    assert np.array_equal(data.matrix.toarray(), stream)
    assert data.matrix.nnz > 40_000  # real data, real size
    assert data.last_ts_max == max(p.last_ts for p in profiles.values())


def profile(items: dict[str, tuple[float, int]], last_ts: int | None = None) -> UserProfile:
    p = UserProfile()
    p.items = {i: ItemState(v, ts, 1) for i, (v, ts) in items.items()}
    p.last_ts = last_ts if last_ts is not None else max(ts for _, ts in items.values())
    p.history = list(items)[-3:]
    return p


T = 1_700_000_000_000


def test_long_and_unicode_ids_format_1_and_2_latest_record_and_tombstones():
    users = {
        "a": profile({"short": (0.25, T), "an-item-id-of-many-bytes-0001": (1.0, T - 86_400_000)}),
        "b": profile({"an-item-id-of-many-bytes-0002": (0.5, T), "ünïcødé-ïtém": (0.3, T - 5), "short": (2.0, T)}),
        "c": profile({"12345678": (0.1, T), "1234567": (0.2, T + 10)}),  # late item: age < 0 keeps its value
        "d": profile({"gone": (1.0, T)}),
    }
    recs = records(users)
    v1 = encode(UserState(users["c"]))
    recs.append(Rec(b"c", b"\x01" + v1[1:-22]))  # the same user again, written by the previous release (format 1)
    assert decode(recs[-1].value).profile == users["c"]
    newer = profile({"short": (9.0, T + 1)})
    recs.append(Rec(b"a", encode(UserState(newer))))  # the latest record of a wins
    recs.append(Rec(b"d", None))  # d deleted
    t = table(recs, chunk=2)
    data = t.training_data()
    live = {"a": newer, "b": users["b"], "c": users["c"]}
    assert sorted(k.decode() for k in t.live_keys()) == ["a", "b", "c"]
    batch, stream = expected_from_profiles(t, live, data.items)
    assert_same(data.matrix, batch)
    assert np.array_equal(data.matrix.toarray(), stream)
    # items only in superseded or deleted records are not columns
    assert set(data.items) == {i for p in live.values() for i in p.items}


def test_unreadable_and_foreign_records_are_skipped_counted_and_logged_with_their_key(caplog):
    good = {f"u{i}": profile({f"i{i}": (1.0, T), f"i{i + 1}": (0.5, T - 1000)}) for i in range(20)}
    recs = records(good)
    enc = encode(UserState(profile({"x": (1.0, T)})))
    bad = {
        b"json": b'{"user": "u1", "items": []}',
        b"version9": b"\x09" + enc[1:],
        b"truncated": enc[:-5],
        b"trailing": enc + b"\x00\x00",
        b"tiny": b"\x02",
        b"huge-count": enc[:21] + b"\xff\xff" + enc[23:],
        b"bad-utf8": encode(UserState(profile({"ok": (1.0, T)}))).replace(b"ok", b"\xff\xfe"),
    }
    recs[5:5] = [Rec(k, v) for k, v in bad.items()]
    with caplog.at_level(logging.WARNING, "streamrec.retrain"):
        t = table(recs, chunk=8)
        data = t.training_data()
    assert data.skipped == len(bad)
    assert data.users == len(good)
    logged = caplog.text
    assert all(repr(k) in logged for k in bad), logged
    batch, _ = expected_from_profiles(t, good, data.items)
    assert_same(data.matrix, batch)


def test_an_empty_changelog_is_a_clear_error():
    with pytest.raises(RecsysError, match="no training data"):
        table([]).training_data(source="kafka:x-changelog")
    with pytest.raises(RecsysError, match="no training data"):
        table([Rec(b"a", encode(UserState(profile({"i": (1.0, T)})))), Rec(b"a", None)]).training_data()


def test_holdout_takes_the_lowest_ranked_users_out_of_the_matrix_as_gate_cases():
    users = {f"user{i}": profile({f"i{(i * 7 + j) % 50}": (1.0, T + j) for j in range(4 + i % 3)}) for i in range(400)}
    users["few"] = profile({"i1": (1.0, T)})  # too few items to be a case: trained on instead
    t = table(records(users), chunk=50, holdout_fraction=0.01, holdout_min=30, holdout_max=100)
    data = t.training_data()
    ranked = sorted(users, key=lambda u: (holdout_rank(u.encode()), u))
    want = [u for u in ranked if holdout_case(u, users[u]) is not None][:30]
    assert [c.user for c in sorted(data.cases, key=lambda c: (holdout_rank(c.user.encode()), c.user))] == want
    assert data.users + len(data.cases) == len(users)
    assert not {c.user for c in data.cases} & {k.decode() for k in t.live_keys()}
    c0 = data.cases[0]
    ref = holdout_case(c0.user, users[c0.user])
    assert ref is not None and (c0.query, c0.relevant, c0.profile) == (ref.query, ref.relevant, ref.profile)


def test_every_truncation_of_a_record_is_skipped_wherever_it_sits_in_a_chunk():
    good = profile({"an-item-id-of-many-bytes-0001": (1.0, T), "short": (0.5, T - 1), "x": (2.0, T)})
    enc = encode(UserState(good, last_items=["a", "b"], last_scores=[0.5, 0.4], last_query="q"))
    other = records({"o1": profile({"i1": (1.0, T)}), "o2": profile({"i2": (1.0, T), "i3": (0.5, T)})})
    for cut in range(len(enc)):
        for where in (0, 1, 2):  # first, middle, last record of the chunk (the last ends the buffer)
            recs = list(other)
            recs.insert(where, Rec(b"cut", enc[:cut]))
            t = table(recs, chunk=len(recs))
            data = t.training_data()
            assert data.skipped == 1 and data.users == 2, (cut, where)
            assert sorted(k.decode() for k in t.live_keys()) == ["o1", "o2"]


def test_a_record_with_no_items_is_a_user_with_an_empty_row():
    users = {"empty": UserProfile(), "one": profile({"i": (1.0, T)})}
    users["empty"].last_ts = T
    t = table(records(users), chunk=10)
    data = t.training_data()
    assert data.skipped == 0 and data.users == 2 and data.matrix.nnz == 1
    batch, _ = expected_from_profiles(t, users, data.items)
    assert_same(data.matrix, batch)


def test_the_latest_record_per_key_wins_within_and_across_chunks_and_chunking_does_not_matter():
    import random

    rnd = random.Random(7)
    versions = {
        f"u{i}": [profile({f"i{(i + v) % 30}": (1.0 + v, T + v), f"j{i % 7}": (0.5, T)}) for v in range(4)]
        for i in range(60)
    }
    recs: list[Rec] = []
    latest: dict[str, UserProfile] = {}
    for _ in range(400):
        u = rnd.choice(sorted(versions))
        r = rnd.random()
        if r < 0.1:
            recs.append(Rec(u.encode(), None))  # deleted ...
            latest.pop(u, None)
        elif r < 0.13:
            recs.append(Rec(None, b"no key: ignored"))
        else:
            p = rnd.choice(versions[u])  # ... or written again
            recs.append(Rec(u.encode(), encode(UserState(p))))
            latest[u] = p
    for chunk in (1, 3, 50, 1000):
        t = table(recs, chunk=chunk)
        data = t.training_data()
        assert t.records == len(recs) and data.skipped == 0
        assert sorted(k.decode() for k in t.live_keys()) == sorted(latest), chunk
        batch, stream = expected_from_profiles(t, latest, data.items)
        assert_same(data.matrix, batch)
        assert np.array_equal(data.matrix.toarray(), stream)
        assert set(data.items) == {i for p in latest.values() for i in p.items}


def test_a_bad_record_counts_once_when_it_is_the_latest_and_not_at_all_once_replaced():
    ok = {f"u{i}": profile({f"i{i}": (1.0, T), "common": (0.5, T)}) for i in range(10)}
    recs = records(ok)
    recs.insert(3, Rec(b"u4", b"\x09garbage"))  # replaced by u4's good record, same chunk
    recs.append(Rec(b"late", b"\x09garbage"))  # the latest record of `late`
    recs.append(Rec(b"u1", encode(UserState(ok["u1"]))[:-3]))  # u1's latest is bad: u1 drops out
    t = table(recs, chunk=len(recs))
    data = t.training_data()
    assert data.skipped == 2
    assert sorted(k.decode() for k in t.live_keys()) == sorted(set(ok) - {"u1"})


def test_holdout_selection_is_the_same_whatever_the_chunking_and_follows_deletes_and_rewrites():
    users = {f"user{i}": profile({f"i{(i * 7 + j) % 50}": (1.0, T + j) for j in range(4 + i % 3)}) for i in range(300)}
    ranked = sorted(users, key=lambda u: (holdout_rank(u.encode()), u))
    first, second = ranked[0], ranked[1]  # the two lowest ranks: both would be cases
    recs = records(users)
    recs.append(Rec(first.encode(), None))  # deleted after being held: not a case, not a row
    newer = profile({"i1": (1.0, T), "i2": (1.0, T + 1), "i3": (1.0, T + 2), "i4": (1.0, T + 3)})
    recs += [Rec(second.encode(), None), Rec(second.encode(), encode(UserState(newer)))]  # deleted, rewritten
    live = {u: users[u] for u in users if u != first} | {second: newer}
    want = [u for u in ranked if u in live and holdout_case(u, live[u]) is not None][:20]
    for chunk in (1, 7, 64, 10_000):
        for cap in (20, 25, 1000):
            t = table(recs, chunk=chunk, holdout_fraction=0.0, holdout_min=20, holdout_max=cap)
            data = t.training_data()
            cases = sorted(data.cases, key=lambda c: (holdout_rank(c.user.encode()), c.user))
            assert [c.user for c in cases] == want, (chunk, cap)
            case = next(c for c in cases if c.user == second)
            ref = holdout_case(second, newer)
            assert ref is not None and (case.query, case.relevant, case.profile) == (
                ref.query,
                ref.relevant,
                ref.profile,
            )
            assert data.users + len(cases) == len(live)
            assert not {c.user for c in cases} & {k.decode() for k in t.live_keys()}
            rest = {u: live[u] for u in live if u not in set(want)}
            batch, _ = expected_from_profiles(t, rest, data.items)
            assert_same(data.matrix, batch)


def test_a_bad_held_out_record_counts_once_and_the_next_ranked_user_takes_its_place(caplog):
    users = {f"user{i}": profile({f"i{j}": (1.0, T + j) for j in range(5)}) for i in range(100)}
    ranked = sorted(users, key=lambda u: (holdout_rank(u.encode()), u))
    recs = records(users)
    bad_user = ranked[0]
    recs.append(Rec(bad_user.encode(), encode(UserState(users[bad_user]))[:-1]))  # the lowest rank: bad
    with caplog.at_level(logging.WARNING, "streamrec.retrain"):
        t = table(recs, chunk=16, holdout_fraction=0.0, holdout_min=5, holdout_max=50)
        data = t.training_data()
    assert data.skipped == 1 and repr(bad_user.encode()) in caplog.text
    assert sorted(c.user for c in data.cases) == sorted(ranked[1:6])
    assert data.users == len(users) - 1 - 5


def test_held_cases_from_arrays_equal_the_codec_s_record_by_record():
    """The gate's cases are built from the walked fields; whatever that path does not vouch for
    (non-ASCII strings, an item twice, a record that does not walk to its end) goes through the
    Python codec. Either way each result is `held_case`'s: the case, None, or the same error."""
    from streaming.jobs.changelog.codec import held_case, held_cases

    base = {f"i{j}": (0.25 * (1 + j % 4), T - 60_000 * (j % 5)) for j in range(7)}  # time ties: by id
    p = profile(base)
    few = profile({"i1": (1.0, T), "i2": (1.0, T + 1)})  # fewer than min_items
    uni = profile({"ünï": (1.0, T), "i2": (0.5, T - 1), "i3": (0.3, T - 2), "long-id-of-many-bytes": (1.0, T - 3)})
    odd = profile(base)
    odd.history = ["hïstory"]  # valid UTF-8, not ASCII: the codec
    full = UserState(p, last_items=["x", "y"], last_scores=[0.5], last_source="blend", last_query="q")
    v2, v1 = encode(full), encode(UserState(p))
    dup = bytearray(v2)  # the second item's id made the first's: the codec keeps the later state
    dup[dup.index(b"i1") + 1] = ord("0")
    bad_hist = bytearray(v2)
    bad_hist[v2.index(b"i6", v2.index(b"i6") + 2)] = 0xFF  # a history id that is not UTF-8
    bad_item = bytearray(v2)
    bad_item[v2.index(b"i3")] = 0xC3  # an item id that is not UTF-8
    recs = [
        (b"plain", v2),
        (b"format1", b"\x01" + v1[1:-22]),
        (b"few", encode(UserState(few))),
        (b"uni", encode(UserState(uni))),
        (b"odd", encode(UserState(odd))),
        (b"dup", bytes(dup)),
        (b"bad-history", bytes(bad_hist)),
        (b"bad-item", bytes(bad_item)),
        (b"truncated", v2[:-1]),
        (b"trailing", v2 + b"x"),
        (b"\xff\xfe-key", v2),
        (b"empty", b""),
        (b"plain-again", v2),
    ]
    assert decode(recs[1][1]).profile == p
    keys, values = [k for k, _ in recs], [v for _, v in recs]
    got = held_cases(keys, values, 3)
    want = [held_case(k, v, 3) for k, v in recs]

    def sig(c: Any) -> Any:
        return c if c is None or isinstance(c, str) else (c.user, c.query, c.relevant, c.profile)

    assert [sig(c) for c in got] == [sig(c) for c in want]
    assert [type(c).__name__ for c in got] == [
        "EvalCase", "EvalCase", "NoneType", "EvalCase", "EvalCase", "EvalCase", "str", "str", "str", "str", "str",
        "str", "EvalCase",
    ]  # fmt: skip
    assert held_cases([], [], 3) == []


def test_holdout_ranks_are_holdout_rank_of_each_key():
    from streaming.jobs.changelog.table import holdout_ranks

    keys = [f"user{i}".encode() for i in range(500)] + [b"", "ünï".encode(), bytes(range(256))]
    assert holdout_ranks(keys).tolist() == [holdout_rank(k) for k in keys]


def test_a_reader_process_only_with_a_core_to_spare(monkeypatch):
    import os

    from streaming.jobs.changelog import read as changelog

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(changelog, "idle_cores", lambda: 1.9)  # a quiet machine: both cores
    assert changelog.spare_core()
    monkeypatch.setattr(changelog, "idle_cores", lambda: 0.7)  # something else holds a core
    assert not changelog.spare_core()
    monkeypatch.setattr(changelog, "idle_cores", lambda: None)  # no /proc/stat: the load average
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 1.0, 1.0))
    assert changelog.spare_core()
    monkeypatch.setattr(os, "getloadavg", lambda: (6.0, 5.0, 4.0))
    assert not changelog.spare_core()


def test_idle_cores_is_a_share_of_this_machines_cores():
    import os

    from streaming.jobs.changelog.read import idle_cores

    idle = idle_cores(0.05)
    assert idle is None or 0.0 <= idle <= (os.cpu_count() or 1) + 1e-9


def test_decoding_on_its_own_thread_gives_the_same_training_data_and_passes_on_its_failure():
    from streaming.jobs.changelog.fetch import DecodeThread

    users = {
        f"user{i}": profile({f"i{(i * 7 + j) % 50}": (1.0 + j, T + j) for j in range(4 + i % 3)}) for i in range(300)
    }
    recs = records(users)
    recs += [Rec(b"user3", None), Rec(b"bad", b"\x09garbage"), Rec(b"user5", encode(UserState(users["user7"])))]
    kw: dict[str, Any] = {"chunk_records": 16, "holdout_fraction": 0.0, "holdout_min": 10, "holdout_max": 40}

    def feed(t: ChangelogTable) -> None:  # as a consumer hands them over: a chunk once 16 have gathered
        for a in range(0, len(recs), 10):
            t.add(recs[a : a + 10])

    plain = ChangelogTable(CFG, **kw)
    feed(plain)
    want = plain.training_data()
    threaded = ChangelogTable(CFG, **kw)
    decoder = DecodeThread(threaded)
    threaded.sink = decoder.submit
    feed(threaded)
    threaded.flush()
    decoder.close()
    threaded.sink = threaded.put
    got = threaded.training_data()
    assert len(threaded.chunks) == 0 and got.skipped == want.skipped == 1 and got.items == want.items
    assert [c.user for c in got.cases] == [c.user for c in want.cases] and len(got.cases) == 10
    assert_same(got.matrix, want.matrix)
    assert threaded.live_keys() == plain.live_keys()

    failing = ChangelogTable(CFG, **kw)
    calls = []

    def put(keys, values):
        calls.append(len(keys))
        if len(calls) == 2:
            raise RecsysError("the second chunk does not decode")
        ChangelogTable.put(failing, keys, values)

    failing.put = put  # type: ignore[method-assign]
    decoder = DecodeThread(failing)
    failing.sink = decoder.submit
    with pytest.raises(RecsysError, match="second chunk"):
        feed(failing)  # the reading side stops at its next chunk once the failure is known ...
        failing.flush()
        decoder.close()  # ... or, at the latest, when it waits for the last one
    with pytest.raises(RecsysError, match="second chunk"):  # closing waits for the thread and says why again
        decoder.close()
    assert not decoder.thread.is_alive() and len(calls) >= 2


class ScriptedReader:
    """clients.BulkReader's interface over a script of batches (the read loop's logic without a
    broker; the real reader on a real broker: tests/integration/test_changelog_read.py)."""

    def __init__(self, ends: dict[int, int], script: list, *_: Any, **__: Any):
        self.ends, self.script = ends, list(script)
        self.errors: list[Any] = []
        self.paused: list[int] = []
        self.partitions = sorted(ends)
        self.pos = dict.fromkeys(ends, -1001)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def watermarks(self):
        return {p: (0, end) for p, end in self.ends.items()}

    def start(self, begin):
        self.started = begin

    def batch(self, max_records, timeout_s):
        import time

        if not self.script:
            time.sleep(timeout_s)
            return [], [], [], 0
        part, recs, eof = self.script.pop(0)
        self.pos[part] = self.pos[part] if self.pos[part] >= 0 else 0
        self.pos[part] += len(recs)
        return [r.key for r in recs], [r.value for r in recs], [part] if eof else [], len(recs)

    def positions(self):
        return dict(self.pos)

    def pause(self, p):
        self.paused.append(p)


def test_the_bulk_read_ends_at_every_partition_s_end_logs_its_progress_and_fails_on_a_stall(monkeypatch, caplog):
    from streaming.jobs.changelog import fetch as changelog
    from streaming.kafka import clients

    users = {f"u{i}": profile({f"i{i % 9}": (1.0, T), "c": (0.5, T)}) for i in range(40)}
    recs = records(users)
    # partition 0 ends where its position reaches the end offset; partition 1 says so (EOF) with
    # its end offset above its last record (compacted away)
    script = [(0, recs[:10], False), (1, recs[20:30], False), (0, recs[10:20], False), (1, recs[30:], True)]
    monkeypatch.setattr(clients, "BulkReader", lambda *a, **k: ScriptedReader({0: 20, 1: 25}, script))
    t = ChangelogTable(CFG, chunk_records=8, holdout_max=0)
    with caplog.at_level(logging.INFO, "streamrec.retrain"):
        changelog.read_bulk("x", "cl", t, stall_s=5, every_s=0)
    assert t.records == 40 and t.training_data().users == 40
    assert "reading cl [" in caplog.text and "records/s" in caplog.text  # the progress line

    stalled = [(0, recs[:10], False)]  # partition 0 never reaches its end
    monkeypatch.setattr(clients, "BulkReader", lambda *a, **k: ScriptedReader({0: 20}, stalled))
    with pytest.raises(RecsysError, match=r"reading cl stalled: no record for 0s with 10 of 20 read"):
        changelog.read_bulk("x", "cl", ChangelogTable(CFG, holdout_max=0), stall_s=0.3, every_s=60)


def test_the_read_runs_without_the_cyclic_gc_and_restores_it(monkeypatch):
    import gc

    from streaming.jobs.changelog import read as changelog
    from streaming.kafka import clients

    recs = records({f"u{i}": profile({f"i{i}": (1.0, T), "c": (0.5, T)}) for i in range(40)})
    seen = []

    class Watched(ScriptedReader):
        def batch(self, max_records, timeout_s):
            seen.append(gc.isenabled())
            return super().batch(max_records, timeout_s)

    monkeypatch.setattr(clients, "BulkReader", lambda *a, **k: Watched({0: 40}, [(0, recs, True)]))
    data = changelog.read_training_data("x", "cl", CFG, holdout_max=0)
    assert data.users == 40 and seen and set(seen) == {False}
    assert gc.isenabled()
    monkeypatch.setattr(clients, "BulkReader", lambda *a, **k: Watched({0: 40}, []))  # stalls
    with pytest.raises(RecsysError, match="stalled"):
        changelog.read_training_data("x", "cl", CFG, holdout_max=0, stall_s=0.2)
    assert gc.isenabled()


def test_a_decoding_failure_on_its_thread_ends_the_bulk_read_with_that_failure(monkeypatch):
    from streaming.jobs.changelog import fetch as changelog
    from streaming.kafka import clients

    recs = records({f"u{i}": profile({f"i{i}": (1.0, T)}) for i in range(40)})
    script = [(0, recs[:20], False), (0, recs[20:], True)]
    monkeypatch.setattr(clients, "BulkReader", lambda *a, **k: ScriptedReader({0: 40}, script))
    t = ChangelogTable(CFG, chunk_records=8, holdout_max=0)

    def put(keys, values):
        raise RecsysError("cannot decode")

    t.put = put  # type: ignore[method-assign]
    with pytest.raises(RecsysError, match="cannot decode"):
        changelog.read_bulk("x", "cl", t, stall_s=5, every_s=60)


@pytest.mark.parametrize("dropped", [0.001, 0.02, 0.5])
def test_the_kept_rows_copied_by_runs_equal_the_masked_copy(dropped):
    """The assembly copies a chunk's kept rows as slices when they make few runs, else by a mask:
    both give the kept rows' non-zeros in order."""
    from streaming.jobs.changelog.codec import Chunk
    from streaming.jobs.changelog.table import copy_kept

    rng = np.random.default_rng(7)
    counts = rng.integers(0, 60, 5000)
    nnz = int(counts.sum())
    ch = Chunk(
        5000,
        counts,
        rng.integers(0, 1 << 30, nnz).astype(np.int32),
        rng.random(nnz).astype(np.float32),
        np.zeros(5000, np.int64),
        np.zeros(5000, bool),
    )
    keep_rows = rng.random(5000) >= dropped
    keep = np.repeat(keep_rows, counts)
    col, data = np.full(nnz + 5, -1, np.int32), np.full(nnz + 5, -1, np.float32)
    n = copy_kept(keep_rows, ch, col, data)
    assert n == int(keep.sum())
    assert np.array_equal(col[:n], ch.cols[keep]) and np.array_equal(data[:n], ch.conf[keep])
    assert (col[n:] == -1).all()


def test_the_key_table_finds_every_key_put_in_and_no_other():
    """Item interning's hash table, filled in batches past several growths, against a dict:
    colliding keys probe on, absent keys (in a probed chain or at an empty slot) give -1."""
    from streaming.jobs.changelog.codec import KeyTable

    rng = np.random.default_rng(3)
    t, want = KeyTable(bits=4), dict[int, int]()
    for _ in range(6):
        new = np.unique(rng.integers(0, 1 << 62, 3000, dtype=np.int64).astype(np.uint64))
        new = new[[int(k) not in want for k in new]]
        vals = np.arange(len(want), len(want) + len(new))
        t.insert(new, vals)
        want.update(zip(map(int, new), vals.tolist(), strict=True))
        probe = np.concatenate([np.fromiter(want, np.uint64), rng.integers(0, 1 << 62, 2000).astype(np.uint64)])
        assert t.lookup(probe).tolist() == [want.get(int(k), -1) for k in probe]
