"""A shop's own field names, type names and time format (`[input]`, `--columns`/`--types`/`--time-format`):
the same events from its export and from its stream, and messages that name the value and the fix."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from recsys.config import load_config
from recsys.data.datasets import LoadStats, load, load_events
from recsys.errors import ConfigError, DataError, EventError
from recsys.events import InputConfig, parse_event, parse_time
from streaming.worker.processor import Incoming, decode_event

SHOP = InputConfig(
    columns={"user": "customer", "item": "sku", "type": "action", "ts": "when"},
    types={"view": ("page_view",), "addtocart": ("add_to_basket",), "transaction": ("order",)},
)
ROWS = [
    ("c1", "sku-1", "page_view", "2026-11-01T10:00:00Z"),
    ("c1", "sku-2", "add_to_basket", "2026-11-01T10:01:00.250Z"),
    ("c2", "sku-1", "order", "2026-11-01T11:02:00+01:00"),
    ("c2", "sku-3", "page_view", "2026-11-01 10:03:00 UTC"),
    ("c3", "sku-3", "PAGE_VIEW", "2026-11-01T10:04:00Z"),
]
CLI_FLAGS = [
    "--columns",
    "user=customer,item=sku,type=action,ts=when",
    "--types",
    "view=page_view,addtocart=add_to_basket,transaction=order",
]


def ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


def shop_csv(tmp_path, rows=ROWS, header="customer,sku,action,when"):
    path = tmp_path / "shop.csv"
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def test_a_file_and_the_stream_give_the_same_events(tmp_path):
    from_file = load_events(shop_csv(tmp_path), mapping=SHOP)
    messages = [
        Incoming(c.encode(), json.dumps({"customer": c, "sku": s, "action": a, "when": w}).encode(), 0, k, 0)
        for k, (c, s, a, w) in enumerate(ROWS)
    ]
    from_stream = sorted((decode_event(m, SHOP) for m in messages), key=lambda e: e.ts)
    assert from_file == from_stream
    assert [e.type for e in from_file] == ["view", "addtocart", "transaction", "view", "view"]
    assert from_file[1].ts == ms(datetime(2026, 11, 1, 10, 1, 0, 250_000, tzinfo=UTC))
    # the same data as JSON lines with the shop's keys loads the same too
    jsonl = tmp_path / "shop.jsonl"
    jsonl.write_text("".join(json.dumps(json.loads(m.value)) + "\n" for m in messages))
    assert load_events(jsonl, mapping=SHOP) == from_file


def test_canonical_names_keep_working_next_to_the_mapping():
    e = parse_event({"user": "u", "item": "i", "type": "add_to_basket", "ts": "2026-11-01T10:00:00Z"}, mapping=SHOP)
    assert (e.user, e.type) == ("u", "addtocart")


def test_iso_times_on_the_stream_are_accepted_without_a_mapping():
    msg = Incoming(b"u1", b'{"user":"u1","item":"i","type":"view","ts":"2026-11-29T22:57:12Z"}', 0, 0, 0)
    assert decode_event(msg).ts == ms(datetime(2026, 11, 29, 22, 57, 12, tzinfo=UTC))


@pytest.mark.parametrize(
    "fmt,value,ms",
    [
        ("auto", 1714557600000, 1714557600000),
        ("auto", "1714557600000", 1714557600000),
        ("auto", "2024-05-01T10:00:00Z", 1714557600000),
        ("epoch_s", 1714557600, 1714557600000),
        ("epoch_s", "1714557600.5", 1714557600500),
        ("epoch_ms", 1714557600000.0, 1714557600000),
        ("iso8601", "2024-05-01T12:00:00+02:00", 1714557600000),
    ],
)
def test_one_time_parser(fmt, value, ms):
    assert parse_time(value, fmt) == ms


def test_epoch_seconds_file_with_time_format(tmp_path):
    path = shop_csv(tmp_path, [("c1", "s", "page_view", "1714557600")])
    with pytest.raises(DataError, match="looks like seconds"):
        load_events(path, mapping=SHOP)
    mapping = InputConfig(columns=SHOP.columns, types=SHOP.types, time_format="epoch_s")
    assert load_events(path, mapping=mapping)[0].ts == 1714557600000


# ------------------------------------------------------------------ messages that name the value and the fix


def reject(d, mapping=None, now_ms=None):
    with pytest.raises(EventError) as info:
        parse_event(d, now_ms, mapping)
    return info.value


def test_seconds_where_milliseconds_are_expected_say_so():
    e = reject({"user": "u", "item": "i", "type": "view", "ts": 1569888000})
    assert e.reason == "ts_too_old"
    assert "1569888000" in e.detail and "looks like seconds" in e.detail and "2019-10-01T00:00:00Z" in e.detail
    assert "--time-format epoch_s" in e.detail


def test_milliseconds_declared_as_seconds_say_so():
    e = reject({"user": "u", "item": "i", "type": "view", "ts": 1569888000000}, InputConfig(time_format="epoch_s"))
    assert e.reason == "ts_in_future"
    assert "looks like milliseconds" in e.detail and "--time-format epoch_ms" in e.detail


def test_unparseable_time_lists_the_formats_and_names_the_shops_field():
    e = reject({"customer": "u", "sku": "i", "action": "page_view", "when": "yesterday"}, SHOP)
    assert e.reason == "bad_ts"
    assert "'yesterday'" in e.detail and "'when' (ts)" in e.detail
    assert "ISO-8601" in e.detail and "epoch milliseconds" in e.detail and "epoch_s" in e.detail


def test_time_without_timezone_says_what_to_add():
    e = reject({"user": "u", "item": "i", "type": "view", "ts": "2026-11-01T10:00:00"})
    assert "no timezone" in e.detail and "add Z" in e.detail


def test_unknown_type_names_types_synonyms_and_how_to_map():
    e = reject({"user": "u", "item": "i", "type": "add_to_basket", "ts": 1714557600000})
    assert e.reason == "unknown_type"
    assert "'add_to_basket'" in e.detail
    assert "view, click, favorite, addtocart, transaction" in e.detail
    assert "add_to_cart->addtocart" in e.detail and "page_view->view" in e.detail  # the synonyms
    assert "--types addtocart=add_to_basket" in e.detail


def test_the_category_rides_in_the_record_under_the_shops_name():
    """An event's category reaches the worker as stream-eval reads it (the candidate source's
    input); the `[input]` mapping names the shop's own field (GA4: item_category)."""
    e = parse_event({"user": "u", "item": "i", "type": "view", "ts": 1714557600000, "category": 42})
    assert e.category == "42" and parse_event(e.to_dict()).category == "42"
    assert "category" not in parse_event({"user": "u", "item": "i", "type": "view", "ts": 1714557600000}).to_dict()
    m = InputConfig(columns={"category": "item_category"})
    body = {"user": "u", "item": "i", "type": "view", "ts": 1714557600000, "item_category": "shoes"}
    assert decode_event(Incoming(b"u", json.dumps(body).encode(), 0, 0, 0), m).category == "shoes"
    with pytest.raises(EventError) as info:
        parse_event({**body, "item_category": {"a": 1}}, mapping=m)
    assert info.value.reason == "bad_category" and "'item_category'" in info.value.detail


def test_key_mismatch_shows_the_key_and_the_user():
    msg = Incoming(b"u2", b'{"user":"u1","item":"i","type":"view","ts":1714557600000}', 0, 0, 0)
    with pytest.raises(EventError) as info:
        decode_event(msg)
    assert info.value.reason == "key_mismatch"
    assert "'u2'" in info.value.detail and "'u1'" in info.value.detail and "key each message" in info.value.detail


# ------------------------------------------------------------------ no silent loss


def test_lenient_refuses_to_drop_a_whole_type(tmp_path):
    path = shop_csv(tmp_path)
    partial = InputConfig(columns=SHOP.columns, types={"view": ("page_view",), "transaction": ("order",)})
    with pytest.raises(DataError) as info:
        load_events(path, lenient=True, mapping=partial)
    text = str(info.value)
    assert "every row of an event type" in text and "'add_to_basket'" in text and "unknown_type" in text
    assert "--allow-skip-type" in text and "--types" in text
    stats = LoadStats()
    assert len(load_events(path, lenient=True, mapping=partial, stats=stats, allow_skip_type=True)) == 4
    assert stats.types_seen["add_to_basket"] == 1


def test_lenient_report_has_reasons_with_line_and_value(tmp_path):
    rows = [*ROWS, ("c4", "sku-9", "page_view", "yesterday"), ("c5", "sku-9", "page_view", "1714557600")]
    stats = LoadStats()
    events = load_events(shop_csv(tmp_path, rows), lenient=True, mapping=SHOP, stats=stats)
    assert len(events) == len(ROWS)
    report = stats.report()
    assert "skipped 2 of 7 rows" in report
    assert "bad_ts: 1 rows (e.g. line 7: 'yesterday')" in report
    assert "ts_too_old: 1 rows (e.g. line 8: '1714557600')" in report and "looks like seconds" in report


def test_cli_lenient_refusal_exits_2(tmp_path, capsys):
    from streaming.cli.main import main

    path = shop_csv(tmp_path)
    argv = ["train", "--data", str(path), "--model-dir", str(tmp_path / "m"), "--lenient"]
    argv += ["--columns", "user=customer,item=sku,type=action,ts=when", "--types", "view=page_view"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "refusing to drop every row" in err and "all 1 'add_to_basket' rows (unknown_type)" in err


def test_unknown_header_suggests_the_mapping(tmp_path):
    with pytest.raises(DataError, match="--columns user=COL"):
        load_events(shop_csv(tmp_path))


# ------------------------------------------------------------------ the configuration


def test_flags_become_the_input_section_shown_by_config(capsys):
    from streaming.cli.main import main

    assert main(["config", *CLI_FLAGS, "--time-format", "iso8601"]) == 0
    out = capsys.readouterr().out
    assert '[input]\ntime_format = "iso8601"  # command line' in out
    assert 'user = "customer"  # command line' in out
    assert 'addtocart = ["add_to_basket"]  # command line' in out


def test_saved_mapping_reads_back(tmp_path):
    path = tmp_path / "shop.toml"
    path.write_text(
        '[input]\ntime_format = "iso8601"\n[input.columns]\nuser = "customer"\n'
        '[input.types]\naddtocart = ["add_to_basket", "basket"]\n'
    )
    cfg = load_config(path, env={})
    assert cfg.input.source_names == {"user": "customer"}
    assert cfg.input.type_names == {"add_to_basket": "addtocart", "basket": "addtocart"}
    # what `recsys config` prints reads back as the same mapping
    saved = tmp_path / "saved.toml"
    saved.write_text(cfg.to_toml())
    assert load_config(saved, env={}).input == cfg.input


def test_env_sets_the_mapping():
    cfg = load_config(env={"STREAMREC_INPUT_COLUMNS_USER": "customer", "STREAMREC_INPUT_TYPES_VIEW": "pv,page_view"})
    assert cfg.input.columns == {"user": "customer"} and cfg.input.types == {"view": ("pv", "page_view")}
    # and reaches the processes a command starts (the demo's worker) through their environment
    assert load_config(env=cfg.to_env(["input"])).input == cfg.input


@pytest.mark.parametrize(
    "setting,message",
    [
        ("input.columns.shopper=customer", "unknown fields"),
        ("input.types.basket=cart", "unknown event types"),
        ("input.time_format=seconds", "auto, iso8601, epoch_s, epoch_ms"),
    ],
)
def test_bad_mapping_is_a_config_error(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env={}, overrides=[setting])


def test_bad_flag_says_the_form(capsys):
    from streaming.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["config", "--columns", "customer"])
    assert info.value.code == 2
    assert "CANONICAL=NAME" in capsys.readouterr().err


def test_load_reports_skips(tmp_path, capsys):
    lines: list[str] = []
    load(
        str(shop_csv(tmp_path, [*ROWS, ("c4", "s", "page_view", "x")])),
        lenient=True,
        mapping=SHOP,
        progress=lines.append,
    )
    assert lines[0].startswith("loaded 5 events") and "bad_ts: 1 rows (e.g. line 7: 'x')" in lines[1]
