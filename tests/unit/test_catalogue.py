"""The item catalogue without Kafka: record validation, eligibility, filters inside the top-k."""

import json

import numpy as np
import pytest

from recsys.catalogue import Catalogue, Item, ItemFilter, decode_item, encode_item, parse_item, rees46_categories
from recsys.errors import EventError
from recsys.serving.scoring import Scorer, ScoringConfig
from streaming.worker.requests import RECS_PARAMS, BadRequest, parse_query, validate_events
from tests.helpers import T0, random_model


@pytest.mark.parametrize(
    "obj,reason",
    [
        ([1], "not_object"),
        ({"available": True}, "missing_item"),
        ({"item": "a", "hiden": True}, "unknown_field"),
        ({"item": "a", "hidden": "yes"}, "bad_hidden"),
        ({"item": "a", "price": -1}, "bad_price"),
        ({"item": "a", "price": "cheap"}, "bad_price"),
        ({"item": "a", "categories": [["x"]]}, "bad_categories"),
        ({"item": "a", "categories": ["c"] * 17}, "bad_categories"),
        ({"item": "a", "updated": "yesterday"}, "bad_ts"),
    ],
)
def test_bad_records_name_their_reason(obj, reason):
    with pytest.raises(EventError) as e:
        parse_item(obj)
    assert e.value.reason == reason


def test_record_round_trip_and_tombstone():
    item = Item("a", available=False, categories=("x", "x.y"), brand="b", price=2.5, updated=T0)
    key, value = encode_item(item)
    assert decode_item(key, value) == item
    assert decode_item(b"a", None) is None  # a tombstone deletes
    with pytest.raises(EventError) as e:
        decode_item(b"other", value)
    assert e.value.reason == "key_mismatch"
    with pytest.raises(EventError):
        decode_item(b"a", b"{nope")


def test_eligibility_and_filters_mask_model_rows():
    model = random_model(n_items=50)
    cat = Catalogue(capacity=4)  # grows
    assert cat.mask(model) is None  # nothing hidden: no mask at all
    for k in range(20):
        cat.put(Item(f"i{k}", categories=("even" if k % 2 == 0 else "odd",), price=float(k), brand="b"))
    cat.put(Item("i3", hidden=True))
    cat.put(Item("i5", available=False))
    cat.apply(b"i7", None)
    m = cat.mask(model)
    assert not m.rows[[3, 5, 7]].any() and m.rows[[0, 1, 2, 4, 30]].all()  # i30: never listed, shown
    assert not m.allows("i3") and m.allows("i30") and not cat.allows("i7") and cat.allows("unknown")
    f = cat.mask(model, ItemFilter(categories=("even",), price_min=4, price_max=10))
    assert set(np.flatnonzero(f.rows)) == {4, 6, 8, 10}
    assert set(np.flatnonzero(cat.mask(model, ItemFilter(brands=("nope",))).rows)) == set()
    cat.put(Item("i3"))  # back
    assert cat.mask(model).rows[3] and cat.get("i3") == Item("i3")


@pytest.mark.parametrize("ann", [False, True])
def test_masked_items_never_in_a_list_and_lists_keep_n(ann):
    model = random_model(n_items=400, factors=8)
    # random factors have no cluster structure: the index is forced (ann_max_scan 1) to test its path
    cfg = ScoringConfig(repeat_weight=0.0, ann_min_items=1 if ann else 0, ann_max_scan=1.0)
    scorer = Scorer(model, cfg)
    assert (scorer.ann is not None) == ann
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 8)).astype(np.float32)
    plain = scorer.recommend(x, [True] * 20, [None] * 20, [set()] * 20, n=10)
    top = {i for r in plain for i in r.items}
    cat = Catalogue()
    for i in top:  # hide every item any user would have got
        cat.put(Item(i, hidden=True))
    mask = cat.mask(model)
    out = scorer.recommend(x, [True] * 20, [None] * 20, [set()] * 20, n=10, mask=mask, popular=sorted(top))
    for r in out:
        assert len(r.items) == 10 and not set(r.items) & top
    sim = scorer.similar("i0", 10, mask=mask)
    assert len(sim.items) == 10 and not set(sim.items) & top
    assert not set(scorer.popular(10, mask=mask).items) & top


def test_a_narrow_filter_scores_only_matching_items():
    model = random_model(n_items=400, factors=8)
    scorer = Scorer(model, ScoringConfig(repeat_weight=0.0))
    cat = Catalogue()
    for k in range(0, 400, 40):
        cat.put(Item(f"i{k}", categories=("rare",)))
    mask = cat.mask(model, ItemFilter(categories=("rare",)))
    x = np.random.default_rng(1).normal(size=(1, 8)).astype(np.float32)
    out = scorer.recommend(x, [True], [None], [set()], n=5, mask=mask)[0]
    assert len(out.items) == 5 and all(int(i[1:]) % 40 == 0 for i in out.items)


def test_rees46_category_prefixes():
    assert rees46_categories("electronics.audio.headphone") == [
        "electronics",
        "electronics.audio",
        "electronics.audio.headphone",
    ]


def test_request_parameters():
    from multidict import MultiDict

    q = parse_query(
        MultiDict([("n", "5"), ("category", "a,b"), ("category", "c"), ("price_max", "9")]), RECS_PARAMS, 10
    )
    assert q.n == 5 and q.filter.categories == ("a", "b", "c") and q.filter.price_max == 9.0 and q.given
    for bad in (
        {"nn": "1"},
        {"n": "0"},
        {"n": "x"},
        {"price_min": "-1"},
        {"price_min": "5", "price_max": "1"},
        {"category": ""},
    ):
        with pytest.raises(BadRequest):
            parse_query(MultiDict(bad), RECS_PARAMS, 10)


def test_posted_events_use_the_stream_validator():
    good = {"user": "u1", "item": "i1", "type": "view", "ts": T0}
    records, rejected = validate_events(json.dumps([good, {"user": "u1", "type": "view", "ts": T0}]).encode(), None, 10)
    assert [r["reason"] for r in rejected] == ["missing_item"] and rejected[0]["index"] == 1
    records, rejected = validate_events(json.dumps(good).encode(), None, 10)
    assert not rejected and records[0][0] == b"u1"
    assert validate_events(b"{", None, 10)[1][0]["reason"] == "bad_json"
    assert validate_events(json.dumps([good] * 3).encode(), None, 2)[1][0]["reason"] == "too_many"


def test_apply_many_equals_one_record_at_a_time():
    rng = np.random.default_rng(2)
    records = []
    for k in range(500):
        item = f"i{int(rng.integers(60))}"
        if rng.random() < 0.1:
            records.append((item.encode(), None))
        else:
            cats = tuple(f"c{int(c)}" for c in rng.integers(0, 9, int(rng.integers(0, 4))))
            records.append(
                (item.encode(), Item(item, bool(rng.random() < 0.8), bool(rng.random() < 0.2), cats, "b", float(k)))
            )
    one, many = Catalogue(capacity=2), Catalogue(capacity=2)
    for key, item in records:
        one.apply(key, item)
    for k in range(0, len(records), 37):
        many.apply_many(records[k : k + 37])
    model = random_model(n_items=80)
    assert one.hidden == many.hidden and len(one) == len(many)
    assert all(one.get(f"i{k}") == many.get(f"i{k}") for k in range(60))
    assert (one.mask(model).rows == many.mask(model).rows).all()


@pytest.mark.data
def test_catalogues_of_the_real_datasets():
    from streaming.jobs.items import LoadStats, read_items
    from tests.conftest import require_dataset

    stats = LoadStats()
    items = {i.item: i for i in read_items(require_dataset("rees46_small"), "auto", stats)}
    assert len(items) == 1517 and stats.rows == 3000 and not stats.rejected
    first = items["44600062"]  # the month's first row: no category_code, brand shiseido, 35.79
    assert first.brand == "shiseido" and first.price == 35.79 and first.categories == ("2103807459595387724",)
    coded = items["3900821"]  # appliances.environment.water_heater: the code and its prefixes
    assert coded.categories[:3] == ("appliances", "appliances.environment", "appliances.environment.water_heater")
    stats = LoadStats()
    taobao = list(read_items(require_dataset("taobao_small"), "auto", stats))
    assert len(taobao) == 2235 and all(len(i.categories) == 1 and i.price is None for i in taobao)
