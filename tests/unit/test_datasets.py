"""Tests for recsys.data.datasets: real-data figures, malformed input, canonical round trip, splits."""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from datetime import UTC, datetime
from itertools import islice, pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.data import datasets as ds
from recsys.data.datasets import (
    DATASETS,
    RETAILROCKET_EPOCH_MS,
    LoadStats,
    data_dir,
    dataset_path,
    detect_format,
    load_dataset,
    load_events,
    time_split,
    write_canonical,
)
from recsys.errors import ConfigError, DataError
from recsys.events import Event, parse_event
from tests.conftest import require_dataset


def utc_ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


# ------------------------------------------------------------------ real data (README figures)

# name -> (format, rows, users, items, sessions or None, {canonical type: count}, first, last)
README = {
    "taobao": (
        "taobao",
        61_453,
        814,
        41_887,
        None,
        {"view": 55_202, "addtocart": 3_253, "favorite": 1_670, "transaction": 1_328},
        utc_ms(2017, 9, 11, 8, 16, 39),
        utc_ms(2017, 12, 1, 15, 59, 24),
    ),
    "taobao_small": (
        "taobao",
        2_923,
        40,
        2_235,
        None,
        {"view": 2_675, "addtocart": 111, "favorite": 84, "transaction": 53},
        utc_ms(2017, 11, 24, 16, 0, 41),
        utc_ms(2017, 12, 1, 15, 58, 6),
    ),
    "yoochoose": (
        "yoochoose",
        70_278,
        17_794,
        2_933,
        17_794,
        {"click": 70_278},
        utc_ms(2014, 4, 1, 1, 2, 21) + 719,
        utc_ms(2014, 4, 7, 0, 43, 12) + 560,
    ),
    "rees46": (
        "rees46",
        13_884,
        3_732,
        5_436,
        4_184,
        {"view": 13_593, "transaction": 160, "addtocart": 131},
        utc_ms(2019, 10, 1),
        utc_ms(2019, 10, 1, 2, 43, 59),
    ),
    "rees46_small": (
        "rees46",
        3_000,
        1_199,
        1_517,
        1_281,
        {"view": 2_941, "transaction": 36, "addtocart": 23},
        utc_ms(2019, 10, 1),
        utc_ms(2019, 10, 1, 2, 23, 38),
    ),
    "retailrocket": (
        "retailrocket",
        92_487,
        3_431,
        8_885,
        None,
        {"view": 78_371, "addtocart": 9_028, "transaction": 5_088},
        RETAILROCKET_EPOCH_MS,
        RETAILROCKET_EPOCH_MS + 92_486,
    ),
    "otto": (
        "otto",
        862,
        20,
        510,
        20,
        {"click": 800, "addtocart": 52, "transaction": 10},
        utc_ms(2022, 7, 31, 22, 0, 0) + 25,
        utc_ms(2022, 8, 28, 21, 59, 57) + 885,
    ),
}


@pytest.mark.data
@pytest.mark.parametrize("name", sorted(README))
def test_real_dataset_matches_readme(name):
    path = require_dataset(name)
    fmt, rows, users, items, sessions, types, first, last = README[name]
    assert detect_format(path) == fmt
    stats = LoadStats()
    evs = load_events(path, stats=stats)
    assert (stats.rows, stats.loaded, stats.skipped, stats.fmt) == (rows, rows, 0, fmt)
    assert len(evs) == rows
    assert len({e.user for e in evs}) == users
    assert len({e.item for e in evs}) == items
    if sessions is not None:
        assert len({e.session for e in evs}) == sessions
    assert dict(Counter(e.type for e in evs)) == types
    assert (evs[0].ts, evs[-1].ts) == (first, last)
    assert all(a.ts <= b.ts for a, b in pairwise(evs))
    # What a file yields is exactly what the stream would accept.
    now = int(time.time() * 1000)
    for e in evs[:: max(1, len(evs) // 2000)]:
        assert parse_event(e.to_dict(), now) == e


@pytest.mark.data
def test_taobao_keeps_stray_early_timestamps():
    evs = load_events(require_dataset("taobao"))
    early = [e for e in evs if e.ts < utc_ms(2017, 11, 24, 16)]
    assert len(early) == 35  # real, kept, just sorted to the front
    assert evs[:35] == early
    assert early[0].ts == utc_ms(2017, 9, 11, 8, 16, 39)
    assert evs[0].ts == 1505117799 * 1000  # seconds * 1000


@pytest.mark.data
@pytest.mark.parametrize("name", ["yoochoose", "otto"])
def test_sessions_are_users(name):
    evs = load_events(require_dataset(name))
    assert all(e.user == e.session for e in evs)


@pytest.mark.data
def test_rees46_price_and_session_kept():
    evs = load_events(require_dataset("rees46_small"))
    e = evs[0]
    assert (e.user, e.item, e.type, e.price) == ("541312140", "44600062", "view", 35.79)
    assert e.session == "72d76fde-8bb3-4e00-8c23-a032dfed738c"
    assert min(x.price for x in evs) >= 0.0


@pytest.mark.data
def test_retailrocket_synthetic_time_keeps_file_order():
    path = require_dataset("retailrocket")
    evs = load_events(path)
    with gzip.open(path, "rt") as f:
        next(f)
        head = [line.rstrip("\n").split(",") for line in islice(f, 5)]
    assert [[e.user, e.item, e.type] for e in evs[:5]] == head
    assert [e.ts for e in evs] == [RETAILROCKET_EPOCH_MS + i for i in range(len(evs))]
    assert utc_ms(2015, 5, 3) == RETAILROCKET_EPOCH_MS


def test_data_dir_and_dataset_path(monkeypatch, tmp_path):
    monkeypatch.delenv("STREAMREC_DATA", raising=False)
    assert data_dir() == Path(ds.__file__).resolve().parents[3] / "shared" / "data"
    monkeypatch.setenv("STREAMREC_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    with pytest.raises(DataError, match="STREAMREC_DATA") as ei:
        dataset_path("taobao")
    assert DATASETS["taobao"] in str(ei.value)
    with pytest.raises(DataError, match="unknown dataset"):
        dataset_path("movielens")
    (tmp_path / DATASETS["otto"]).write_bytes(gzip.compress(b"session,aid,ts,type\n0,1,1659304800025,clicks\n"))
    assert load_dataset("otto") == [Event("0", "1", "click", 1659304800025, None, "0")]


# ------------------------------------------------------------------ all formats, plain + gzip

SAMPLES = {
    "taobao": (
        "user_id,item_id,category_id,behavior,timestamp\n"
        "1,10,100,pv,1511544070\n1,11,100,buy,1511544071\n2,10,100,fav,1511544000\n"
        "2,12,101,cart,1511544070\n",
        [
            Event("2", "10", "favorite", 1511544000000),
            Event("1", "10", "view", 1511544070000),
            Event("2", "12", "addtocart", 1511544070000),
            Event("1", "11", "transaction", 1511544071000),
        ],
    ),
    "yoochoose": (
        "SessionId\tItemId\tTime\n3\t214716935\t1396437466.94\n3\t214832672\t1396438212.318\n",
        [
            Event("3", "214716935", "click", 1396437466940, None, "3"),
            Event("3", "214832672", "click", 1396438212318, None, "3"),
        ],
    ),
    "rees46": (
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        "2019-10-01 00:00:01 UTC,purchase,7,99,,,12.50,5,s1\n"
        "2019-10-01 00:00:00 UTC,cart,7,99,a.b,acme,,5,\n",
        [
            Event("5", "7", "addtocart", utc_ms(2019, 10, 1)),
            Event("5", "7", "transaction", utc_ms(2019, 10, 1, 0, 0, 1), None, "s1", 12.5),
        ],
    ),
    "retailrocket": (
        "visitorid,itemid,event\n1,1,view\n1,2,addtocart\n2,1,transaction\n",
        [
            Event("1", "1", "view", RETAILROCKET_EPOCH_MS),
            Event("1", "2", "addtocart", RETAILROCKET_EPOCH_MS + 1),
            Event("2", "1", "transaction", RETAILROCKET_EPOCH_MS + 2),
        ],
    ),
    "otto": (
        "session,aid,ts,type\n0,5,1659304800025,orders\n0,6,1659304800000,carts\n",
        [
            Event("0", "6", "addtocart", 1659304800000, None, "0"),
            Event("0", "5", "transaction", 1659304800025, None, "0"),
        ],
    ),
    "canonical": (
        "user,item,type,ts,dwell,shop,price\nu1,i1,view,2024-05-01T12:00:00.250+02:00,3.5,x,\n"
        "u1,i2,purchase,1714557600300,,y,9.99\n",
        [
            Event("u1", "i1", "view", utc_ms(2024, 5, 1, 10) + 250, 3.5),
            Event("u1", "i2", "transaction", 1714557600300, None, None, 9.99),
        ],
    ),
}


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
@pytest.mark.parametrize("gz", [False, True])
def test_each_format_plain_and_gzip(tmp_path, fmt, gz):
    text, expected = SAMPLES[fmt]
    path = tmp_path / ("sample.csv.gz" if gz else "sample.csv")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    stats = LoadStats()
    assert load_events(path, stats=stats) == expected
    assert load_events(path, fmt=fmt) == expected
    assert (stats.rows, stats.loaded, stats.skipped, stats.fmt) == (len(expected),) * 2 + (0, fmt)
    loader = getattr(ds, f"load_{fmt}")
    assert loader(path) == expected


def test_explicit_format_must_match_header(tmp_path):
    path = tmp_path / "o.csv"
    path.write_text(SAMPLES["otto"][0])
    with pytest.raises(DataError, match=r"o\.csv:1: .*does not match format 'taobao'"):
        load_events(path, fmt="taobao")
    with pytest.raises(DataError, match="unknown format"):
        load_events(path, fmt="csv")


def test_headerless_original_taobao_file_by_name(tmp_path):
    rows = "1,2268318,2520377,pv,1511544070\n1,2333346,2520771,pv,1511561733\n1,1,1,zz,1\n"
    path = tmp_path / "UserBehavior.csv"
    path.write_text(rows)
    with pytest.raises(DataError, match=r"UserBehavior\.csv:3: .*'zz'"):  # no header: data on line 1
        load_events(path)
    (other := tmp_path / "events.csv").write_text(rows)
    with pytest.raises(DataError, match="unknown header"):
        load_events(other)


def test_blank_lines_and_crlf_are_fine(tmp_path):
    path = tmp_path / "otto.csv"
    path.write_bytes(b"session,aid,ts,type\r\n\r\n0,5,1659304800025,orders\r\n\r\n")
    stats = LoadStats()
    assert load_events(path, stats=stats) == [Event("0", "5", "transaction", 1659304800025, None, "0")]
    assert stats.rows == 1


def test_rees46_remove_from_cart_is_skipped_and_counted(tmp_path):
    path = tmp_path / "rees.csv"
    path.write_text(SAMPLES["rees46"][0] + "2019-11-01 00:00:00 UTC,remove_from_cart,7,99,,,1.0,5,s1\n")
    stats = LoadStats()
    assert len(load_events(path, stats=stats)) == 2  # strict mode: not an error
    assert (stats.rows, stats.skipped, stats.reasons) == (3, 1, Counter(ignored_remove_from_cart=1))


# ------------------------------------------------------------------ malformed input

TAOBAO_HDR = "user_id,item_id,category_id,behavior,timestamp\n"
GOOD = "1,10,100,pv,1511544070\n"

# case -> (file text, bad line number, message fragment, reason code)
BAD_ROWS = {
    "column_count": (TAOBAO_HDR + GOOD + "1,10,100,pv\n" + GOOD, 3, "expected 5 columns", "column_count"),
    "bad_timestamp": (TAOBAO_HDR + GOOD + GOOD + "1,10,100,pv,yesterday\n", 4, "'yesterday'", "bad_ts"),
    "unknown_type": (TAOBAO_HDR + "1,10,100,like,1511544070\n" + GOOD, 2, "unknown behavior 'like'", "unknown_type"),
    "empty_user": (TAOBAO_HDR + GOOD + ",10,100,pv,1511544070\n", 3, "empty user", "empty_user"),
    "ts_too_old": (TAOBAO_HDR + "1,10,100,pv,15115440\n" + GOOD, 2, "before 2000", "ts_too_old"),
    "ts_in_future": (TAOBAO_HDR + GOOD + "1,10,100,pv,99999999999\n", 3, "after load time", "ts_in_future"),
    "rees46_bad_time": (
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        "2019-10-01 00:00:00 UTC,view,7,99,,,1.0,5,s\n2019-10-01 25:00:00 UTC,view,7,99,,,1.0,5,s\n",
        3,
        "unparseable time",
        "bad_ts",
    ),
    "rees46_bad_price": (
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        "2019-10-01 00:00:00 UTC,view,7,99,,,cheap,5,s\n2019-10-01 00:00:00 UTC,view,7,99,,,1.0,5,s\n",
        2,
        "price 'cheap'",
        "bad_price",
    ),
    "yoochoose_nan_time": (
        "SessionId\tItemId\tTime\n1\t2\tnan\n1\t2\t1396437466.94\n",
        2,
        "not Unix seconds",
        "bad_ts",
    ),
    "otto_empty_item": (
        "session,aid,ts,type\n0,,1659304800025,clicks\n0,5,1659304800025,clicks\n",
        2,
        "empty item",
        "empty_item",
    ),
    "canonical_naive_iso": (
        "user,item,type,ts\nu,i,view,2024-05-01T12:00:00\nu,i,view,1714557600000\n",
        2,
        "no timezone",
        "bad_ts",
    ),
    "canonical_unknown_type": (
        "user,item,type,ts\nu,i,view,1714557600000\nu,i,like,1714557600000\n",
        3,
        "'like'",
        "unknown_type",
    ),
    "canonical_bad_dwell": (
        "user,item,type,ts,dwell\nu,i,view,1714557600000,-3\nu,i,view,1714557600000,2\n",
        2,
        "dwell",
        "bad_dwell",
    ),
    "canonical_empty_user": (
        "user,item,type,ts\n,i,view,1714557600000\nu,i,view,1714557600000\n",
        2,
        "empty user",
        "empty_user",
    ),
    "jsonl_bad_json": (
        '{"user":"u","item":"i","type":"view","ts":1714557600000}\n{"user":\n',
        2,
        "not valid JSON",
        "bad_json",
    ),
    "jsonl_missing_item": (
        '\n{"user":"u","type":"view","ts":1714557600000}\n{"user":"u","item":"i","type":"view","ts":1714557600000}\n',
        2,
        "item",
        "missing_item",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
@pytest.mark.parametrize("gz", [False, True])
def test_bad_row_strict_names_file_line_and_problem(tmp_path, case, gz):
    text, line, fragment, reason = BAD_ROWS[case]
    name = f"bad_{case}." + ("jsonl" if case.startswith("jsonl") else "csv") + (".gz" if gz else "")
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    stats = LoadStats()
    with pytest.raises(DataError) as ei:
        load_events(path, stats=stats)
    msg = str(ei.value)
    assert name in msg and f":{line}:" in msg and fragment in msg, msg
    assert (ei.value.path, ei.value.line) == (str(path), line)
    data_rows_so_far = sum(1 for ln in text.splitlines()[:line] if ln.strip())
    assert stats.rows == data_rows_so_far - (0 if case.startswith("jsonl") else 1)
    assert stats.skipped == 0


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_lenient_skips_and_counts(tmp_path, case):
    text, _line, _fragment, reason = BAD_ROWS[case]
    path = tmp_path / ("bad.jsonl" if case.startswith("jsonl") else "bad.csv")
    path.write_text(text)
    stats = LoadStats()
    # a bad row of a type no other row has drops that type whole: allowed here, refused by default
    evs = load_events(path, lenient=True, stats=stats, allow_skip_type=True)
    good = sum(1 for ln in text.splitlines()[(0 if case.startswith("jsonl") else 1) :] if ln.strip()) - 1
    assert len(evs) == good == stats.loaded
    assert (stats.rows, stats.skipped, stats.reasons) == (good + 1, 1, Counter({reason: 1}))


def test_lenient_counts_several_reasons(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text(TAOBAO_HDR + GOOD + "1,10\n,1,1,pv,1511544070\n1,1,1,pv,x\n1,1,1,like,1511544070\n1,1,1\n" + GOOD)
    stats = LoadStats()
    assert len(load_events(path, lenient=True, stats=stats, allow_skip_type=True)) == 2
    assert stats.reasons == Counter(column_count=2, empty_user=1, bad_ts=1, unknown_type=1)
    assert (stats.rows, stats.loaded, stats.skipped) == (7, 2, 5)


@pytest.mark.parametrize("lenient", [False, True])
def test_file_level_problems_are_data_errors(tmp_path, lenient):
    cases = {
        "empty.csv": (b"", "empty file"),
        "empty.csv.gz": (gzip.compress(b""), "empty file"),
        "plain.csv.gz": (b"user,item,type,ts\nu,i,view,1714557600000\n", "not a gzip file"),
        "truncated.csv.gz": (gzip.compress((TAOBAO_HDR + GOOD * 5000).encode())[:-200], "gzip"),
        "header.csv": (b"uid;iid;when\n1;2;3\n", "unknown header"),
        "latin1.csv": (TAOBAO_HDR.encode() + "1,caf\xe9,1,pv,1511544070\n".encode("latin-1"), "UTF-8"),
    }
    for name, (data, fragment) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DataError) as ei:
            load_events(path, lenient=lenient)
        assert name in str(ei.value) and fragment in str(ei.value), str(ei.value)
    with pytest.raises(DataError, match="file not found") as ei:
        load_events(tmp_path / "missing.csv")
    assert "missing.csv" in str(ei.value)
    with pytest.raises(DataError, match="directory"):
        load_events(tmp_path)


def test_unknown_header_lists_supported_formats(tmp_path):
    path = tmp_path / "weird.tsv"
    path.write_text("a\tb\tc\n1\t2\t3\n")
    with pytest.raises(DataError) as ei:
        load_events(path)
    msg = str(ei.value)
    assert "weird.tsv:1:" in msg
    for fmt in ds.FORMATS:
        assert fmt in msg
    assert "user_id,item_id,category_id,behavior,timestamp" in msg


def test_leading_blank_lines_count_in_line_numbers(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("\n\nuser,item,type,ts\nu,i,view,1714557600000\nu,,view,1714557600000\n")
    with pytest.raises(DataError, match=r"c\.csv:5: "):
        load_events(path)
    (blank := tmp_path / "blank.csv").write_text("\n \n")
    with pytest.raises(DataError, match="empty file"):
        load_events(blank)


def test_header_only_file_is_empty_dataset(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text(TAOBAO_HDR)
    stats = LoadStats()
    assert load_events(path, stats=stats) == [] and stats.rows == 0


# ------------------------------------------------------------------ canonical round trip

ROUND = [
    Event("u1", "i1", "view", 1714557600000),
    Event("u1", "i2", "click", 1714557600000, dwell=12.25, session="s-1"),
    Event("u,2", 'i"3', "favorite", 1714557599999, price=0.0),
    Event(
        "42",
        "sku-ü",
        "addtocart",
        1500000000123,
        dwell=0.0,
        session="s 2",
        price=1999.99,
        event_id="e1",
        category="shoes",
    ),
    Event("u1", "i1", "transaction", 1714557600001, price=1e-3, event_id="e2"),
]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".jsonl", ".jsonl.gz"])
def test_write_canonical_round_trip(tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    assert write_canonical(ROUND, path) == len(ROUND)
    back = load_events(path, fmt="canonical")
    assert back == sorted(ROUND, key=lambda e: e.ts)
    assert [e.category for e in back] == [e.category for e in sorted(ROUND, key=lambda e: e.ts)]  # not compared
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == suffix.endswith(".gz")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp file gone
    if suffix == ".csv":
        assert path.read_text().splitlines()[0] == "user,item,type,ts,dwell,session,price,event_id,category"
    if suffix == ".jsonl":
        first = json.loads(path.read_text().splitlines()[0])
        assert first == {"user": "u1", "item": "i1", "type": "view", "ts": 1714557600000}


def test_gzip_output_is_reproducible(tmp_path):
    a, b = tmp_path / "a.csv.gz", tmp_path / "b.csv.gz"
    write_canonical(ROUND, a)
    write_canonical(ROUND, b)
    assert a.read_bytes() == b.read_bytes()


def test_canonical_iso_times_and_jsonl_extras(tmp_path):
    path = tmp_path / "shop.jsonl"
    path.write_text(
        "\n".join(
            [
                '{"user": 7, "item": "a", "type": "pv", "ts": "2024-05-01T10:00:00Z", "referrer": "x"}',
                '{"user": "7", "item": "b", "type": "add_to_cart", "ts": "2024-05-01T12:00:00.5+02:00", "dwell": 4}',
                '{"user": "7", "item": "c", "type": "order", "ts": 1714557600001, "price": 10}',
            ]
        )
        + "\n"
    )
    evs = load_events(path)
    t0 = utc_ms(2024, 5, 1, 10)
    assert evs == [
        Event("7", "a", "view", t0),
        Event("7", "c", "transaction", t0 + 1, price=10.0),
        Event("7", "b", "addtocart", t0 + 500, dwell=4.0),
    ]


def test_canonical_accepts_history_but_not_far_future(tmp_path):
    path = tmp_path / "c.csv"
    soon = int(time.time() * 1000) + 3600_000  # within a day: allowed
    later = int(time.time() * 1000) + 3 * 24 * 3600_000
    path.write_text(f"user,item,type,ts\nu,i,view,946684800000\nu,i,view,{soon}\nu,i,view,{later}\n")
    with pytest.raises(DataError, match=r"c\.csv:4: .*ts_in_future"):
        load_events(path)
    stats = LoadStats()
    assert [e.ts for e in load_events(path, lenient=True, stats=stats)] == [946684800000, soon]
    assert stats.reasons == Counter(ts_in_future=1)


def test_seconds_in_canonical_ts_are_rejected_as_too_old(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("user,item,type,ts\nu,i,view,1714557600\n")
    with pytest.raises(DataError, match="ts_too_old"):
        load_events(path)


# ------------------------------------------------------------------ ordering and splits


def test_sort_is_stable_for_equal_times(tmp_path):
    path = tmp_path / "c.csv"
    rows = [f"u{i % 3},i{i},view,{1714557600000 + (i % 4)}" for i in range(40)]
    path.write_text("user,item,type,ts\n" + "\n".join(rows) + "\n")
    evs = load_events(path)
    assert [e.ts for e in evs] == sorted(e.ts for e in evs)
    for ts in {e.ts for e in evs}:
        same = [int(e.item[1:]) for e in evs if e.ts == ts]
        assert same == sorted(same)  # file order kept within a timestamp


events_st = st.lists(
    st.builds(
        lambda u, i, t: Event(f"u{u}", f"i{i}", "view", 1_500_000_000_000 + t),
        st.integers(0, 5),
        st.integers(0, 1000),
        st.integers(0, 50),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(evs=events_st, frac=st.floats(0.0, 1.0))
def test_time_split_fraction_properties(evs, frac):
    train, test = time_split(evs, test_fraction=frac)
    assert sorted(train + test, key=lambda e: e.ts) == train + test
    assert Counter(train + test) == Counter(evs)
    if train and test:
        assert train[-1].ts < test[0].ts  # strictly before: no leakage
    assert len(test) >= len(evs) - int(len(evs) * (1 - frac)) or not test and len(evs) * frac < 1
    if frac == 0.0:
        assert test == []
    if frac == 1.0:
        assert train == []


@settings(max_examples=100, deadline=None)
@given(evs=events_st, at=st.integers(1_500_000_000_000 - 5, 1_500_000_000_000 + 55))
def test_time_split_at(evs, at):
    train, test = time_split(evs, at=at)
    assert all(e.ts < at for e in train) and all(e.ts >= at for e in test)
    assert len(train) + len(test) == len(evs)


def test_time_split_examples_and_errors():
    evs = [Event("u", str(i), "view", 1_500_000_000_000 + i) for i in range(10)]
    train, test = time_split(evs)
    assert (len(train), len(test)) == (8, 2)
    ties = [Event("u", str(i), "view", 1_500_000_000_000 + (i >= 7)) for i in range(10)]
    assert [len(x) for x in time_split(ties, 0.2)] == [7, 3]  # the whole tied ms goes to test
    assert time_split([], 0.2) == ([], [])
    for bad in (-0.1, 1.5, "0.2", True):
        with pytest.raises(ConfigError):
            time_split(evs, bad)
    with pytest.raises(ConfigError):
        time_split(evs, at=1.5e12)


@pytest.mark.data
def test_time_split_real_taobao():
    evs = load_events(require_dataset("taobao_small"))
    train, test = time_split(evs, 0.2)
    assert train[-1].ts < test[0].ts
    assert 0.2 <= len(test) / len(evs) < 0.21
