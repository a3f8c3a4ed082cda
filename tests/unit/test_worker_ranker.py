"""The worker's ranked lists (streaming/worker/ranking.py over recsys/candidates/lists.py): the
worker publishes what `recsys stream-eval`'s method `ranker` lists; the catalogue mask and bought
items apply to every candidate; a version's ranker loads with it and a corrupt one refuses it."""

from __future__ import annotations

import functools
import json
from dataclasses import replace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from recsys.candidates.lists import context, ranked_lists
from recsys.candidates.ranker import Features, ItemStats, Ranker, RankerConfig
from recsys.candidates.sources import Sources, SourcesConfig
from recsys.candidates.training import train_ranker
from recsys.catalogue import Catalogue, Item
from recsys.confidence import ConfidenceConfig, build_profiles
from recsys.data.datasets import load_events, time_split
from recsys.evaluation.streaming import StreamEvalConfig, stream_evaluate
from recsys.model.store import RANKER, ModelStore
from recsys.model.train import TrainConfig, train
from recsys.serving.recommender import Recommender
from recsys.serving.scoring import ScoringConfig
from streaming.worker.metrics import WorkerMetrics
from streaming.worker.processor import Incoming, Processor
from streaming.worker.serving import ModelUpdates, Serving, ServingModel
from streaming.worker.state import UserState
from tests.conftest import require_dataset
from tests.helpers import ranker_slice

CFG = ConfidenceConfig()
SCFG = ScoringConfig()
RCFG = replace(RankerConfig(), n_estimators=10, min_child_samples=5)


@pytest.fixture(scope="module")
def taobao():
    events = load_events(require_dataset("taobao_small"))
    tr, te = time_split(events, test_fraction=0.2)
    model, x, users = train(build_profiles(tr, CFG), CFG, TrainConfig(factors=16, iterations=10, num_threads=1))
    ranker = train_ranker(tr, ccfg=CFG, scfg=SCFG, ecfg=StreamEvalConfig(ranker=RCFG))
    return tr, te, model, x, users, ranker


def test_worker_ranked_lists_equal_stream_eval(taobao) -> None:
    """One event per batch, as the Kafka test sends them: the list the worker published after a
    user's event k-1 is stream-eval's `ranker` list for event k (chunk_max=1, popularity
    refreshed every event), on a slice where nothing happens between the two (`ranker_slice`)."""
    tr, te, model, x, users, ranker = taobao
    te, compared_events = ranker_slice(tr, te)
    proc = Processor(CFG, WorkerMetrics(CollectorRegistry()), top_n=10)
    proc.serving.swap(Serving.of(Recommender(model, CFG, SCFG), ranker=ranker))
    store: dict[bytes, UserState] = {}
    shown: dict[tuple[str, str, int], list[list[str] | None]] = {}  # a user may have two events in one ms
    sources = set()
    for off, e in enumerate(list(tr) + list(te)):
        key = e.user.encode()
        st = store.get(key)
        shown.setdefault((e.user, e.item, e.ts), []).append(st.last_items if st is not None else None)
        res = proc.process([Incoming(key, json.dumps(e.to_dict()).encode(), 0, off, e.ts)], lambda k, _m: store.get(k))
        store.update(res.states)
        (msg,) = res.messages
        sources.add(json.loads(msg[1])["source"])
    ecfg = StreamEvalConfig(methods=("system", "ranker"), chunk_max=1, pop_refresh=1, ranker=RCFG)
    rep = stream_evaluate(
        tr, te, ccfg=CFG, scfg=SCFG, model=model, user_factors=x, user_ids=users, ecfg=ecfg, ranker=ranker,
        keep_lists=("ranker",),
    )  # fmt: skip
    assert rep["skipped_same_item"] == 0 and len(rep["events"]) == len(te)
    want = {(e.user, e.item, e.ts) for e in compared_events}
    compared = 0
    for r in rep["events"]:
        before = shown[(r["user"], r["item"], r["ts"])].pop(0)
        if (r["user"], r["item"], r["ts"]) in want:
            assert r["lists"]["ranker"] == before, r
            compared += 1
    assert compared == len(compared_events) > 50
    assert sources == {"ranker"}
    # the ranker reorders: its lists are not the blend's
    assert rep["methods"]["ranker"]["all"]["MRR@10"] != rep["methods"]["system"]["all"]["MRR@10"]


def test_without_a_ranker_the_blend_serves_as_before(taobao) -> None:
    tr, _, model, *_ = taobao
    plain = Processor(CFG, WorkerMetrics(CollectorRegistry()), top_n=10, sources=None)
    fed = Processor(CFG, WorkerMetrics(CollectorRegistry()), top_n=10)
    for p in (plain, fed):
        p.serving.swap(Serving.of(Recommender(model, CFG, SCFG)))
    msgs = []
    for p in (plain, fed):
        store: dict[bytes, UserState] = {}
        out = []
        for off, e in enumerate(tr[:300]):
            key = e.user.encode()
            msg = Incoming(key, json.dumps(e.to_dict()).encode(), 0, off, e.ts)
            res = p.process([msg], functools.partial(lambda st, k, _m: st.get(k), store))
            store.update(res.states)
            out += [(json.loads(v)["items"], json.loads(v)["source"]) for _, v in res.messages]
        msgs.append(out)
    assert msgs[0] == msgs[1] and "ranker" not in {s for _, s in msgs[0]}


def _ranked_setup(taobao):
    tr, _, model, _, _, ranker = taobao
    src, stats = Sources(SourcesConfig()), ItemStats()
    for e in tr:
        src.update(e)
        stats.add(e.item, e.ts)
    profiles = build_profiles(tr, CFG)
    return tr, model, ranker, src, stats, profiles


def test_the_mask_and_bought_items_apply_to_every_candidate(taobao) -> None:
    tr, model, ranker, src, stats, profiles = _ranked_setup(taobao)
    rec = Recommender(model, CFG, SCFG)
    users = sorted(profiles, key=lambda u: -profiles[u].events)[:8]
    popular = [e.item for e in tr[-200:]]
    # hide every item any source or the blend would put first for these users
    ctxs0 = [
        context(
            u, profiles[u], profiles[u].history[-1], set(), profiles[u].confidence(CFG), [(src, ("covisit",))], 50, 0
        )
        for u in users
    ]
    hidden = {i for c in ctxs0 for i in list(c.sources["covisit"])[:5]}
    hidden |= {profiles[u].history[-2] for u in users if len(profiles[u].history) > 1}
    cat = Catalogue()
    for i in hidden:
        cat.put(Item(i, available=False))
    mask = cat.mask(model)
    assert mask is not None
    bought = {u: {profiles[u].history[0]} for u in users}
    feeds = [(src, ("own-recent", "covisit", "vsknn", "stan"))]
    ctxs = [
        context(
            u, profiles[u], profiles[u].history[-1], bought[u], profiles[u].confidence(CFG), feeds, 50, 0, mask=mask
        )
        for u in users
    ]
    seen: list[list[str]] = []
    out = ranked_lists(
        ctxs,
        rec,
        Features(model, RCFG),
        stats,
        ranker,
        10,
        [popular] * len(users),
        [bought[u] for u in users],
        lambda rows: [[] for _ in rows],
        mask=mask,
        on_candidates=lambda j, items, X: seen.append(items),
    )
    assert hidden and all(seen)
    for u, items, r in zip(users, seen, out, strict=True):
        assert not (set(items) & hidden), "a hidden item became a candidate"
        assert not (set(items) & bought[u]) and profiles[u].history[-1] not in items
        assert r.source == "ranker" and len(r.items) == 10 and set(r.items) <= set(items)
        assert r.scores == sorted(r.scores, reverse=True)


def test_short_lists_are_padded_and_no_ranker_takes_the_fallback(taobao) -> None:
    tr, model, ranker, src, stats, profiles = _ranked_setup(taobao)
    rec = Recommender(model, CFG, SCFG)
    u = min(profiles, key=lambda u: profiles[u].events)
    ctx = context(u, profiles[u], profiles[u].history[-1], set(), profiles[u].confidence(CFG), [(src, ())], 50, 0)
    pad = [f"pad{k}" for k in range(20)]
    asked: list[list[int]] = []

    def fallback(rows: list[int]) -> list[list[str]]:
        asked.append(rows)
        return [pad for _ in rows]

    tiny = replace(RCFG, per_source=2, pop_candidates=1)
    (r,) = ranked_lists([ctx], rec, Features(model, tiny), stats, ranker, 10, [[]], [set()], fallback)
    assert r.source == "ranker" and len(r.items) == 10 and asked == [[0]]
    ranked = [i for i in r.items if not i.startswith("pad")]
    assert 0 < len(ranked) <= 3 and r.items[len(ranked) :] == pad[: 10 - len(ranked)]
    (r,) = ranked_lists([ctx], rec, Features(model, tiny), stats, None, 10, [[]], [set()], fallback)
    assert r.source == "fallback" and r.items == pad[:10]


def test_a_version_with_a_corrupt_ranker_is_refused_and_the_previous_keeps_serving(taobao, tmp_path) -> None:
    from tests.helpers import random_model

    *_, ranker = taobao
    store = ModelStore(tmp_path)
    other = Ranker.from_bytes(ranker.to_bytes())
    store.save(random_model(version="v1"), ranker=ranker.to_bytes())
    metrics = WorkerMetrics(CollectorRegistry())
    serving = ServingModel(metrics)
    updates = ModelUpdates(store, serving, CFG, SCFG, with_user_gram=False, ranker_cfg=RCFG)
    assert updates.load_initial()
    assert serving.snapshot.ranker is not None and serving.snapshot.ranker.checksum() == ranker.checksum()
    assert serving.snapshot.features is not None
    vdir = store.save(random_model(version="v2"), ranker=other.to_bytes(), publish=False)
    raw = bytearray((vdir / RANKER).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (vdir / RANKER).write_bytes(bytes(raw))
    import asyncio

    assert not asyncio.run(updates.on_announcement(b'{"version": "v2"}'))
    assert serving.version == "v1" and serving.snapshot.ranker is not None
    assert metrics.registry.get_sample_value("streamrec_model_fetch_refused_total", {"reason": "ranker"}) == 1
    assert metrics.registry.get_sample_value("streamrec_model_loads_total", {"result": "refused"}) == 1
    # a ranker file that verifies but is not a ranker refuses its version too
    meta_ok = store.save(random_model(version="v3"), ranker=b"tree\nnot a model", publish=False)
    assert meta_ok.exists()
    assert not asyncio.run(updates.on_announcement(b'{"version": "v3"}'))
    assert serving.version == "v1"
    assert metrics.registry.get_sample_value("streamrec_model_fetch_refused_total", {"reason": "ranker"}) == 2
    # a version without a ranker: the blend serves
    store.save(random_model(version="v4"), publish=False)
    assert asyncio.run(updates.on_announcement(b'{"version": "v4"}'))
    assert serving.version == "v4" and serving.snapshot.ranker is None


def test_ranker_lists_with_no_history_take_the_fallback(taobao) -> None:
    tr, model, ranker, src, stats, _ = _ranked_setup(taobao)
    rec = Recommender(model, CFG, SCFG)
    ctx = context("nobody", None, None, set(), {}, [(src, ("covisit",))], 50, tr[-1].ts)
    (r,) = ranked_lists(
        [ctx], rec, Features(model, RCFG), stats, ranker, 10, [[e.item for e in tr[-50:]]], [set()],
        lambda rows: [["p1", "p2"] for _ in rows],
    )  # fmt: skip
    assert r.source == "fallback" and r.items == ["p1", "p2"]
    assert np.isfinite(r.scores).all()


def test_each_input_offset_is_counted_once_by_the_sources() -> None:
    """After a restart the warm-up stops at the group's committed offset; the batches then
    redeliver events the user state already holds: the sources count those (they never saw
    them), and nothing twice."""
    from tests.helpers import T0, ev

    proc = Processor(CFG, WorkerMetrics(CollectorRegistry()), top_n=10)
    assert proc.ranking is not None
    events = [ev("u", f"i{k}", "view", T0 + 1000 * k) for k in range(8)]
    msgs = [Incoming(b"u", json.dumps(e.to_dict()).encode(), 0, off, e.ts) for off, e in enumerate(events)]
    state: dict[bytes, UserState] = {}
    res = proc.process(msgs[:6], lambda k, _m: state.get(k))  # offsets 0-5 applied
    state.update(res.states)
    assert proc.ranking.observed == 6 and proc.ranking.through == {0: 5}
    # a restarted process: its warm-up read up to the committed offset 3 (offsets 0-2)
    again = Processor(CFG, WorkerMetrics(CollectorRegistry()), top_n=10)
    assert again.ranking is not None
    again.ranking.observe(events[:3], [(0, k) for k in range(3)])
    res = again.process(msgs[3:8], lambda k, _m: state.get(k))  # 3-5 redelivered, 6-7 new
    assert res.duplicates == 3 and res.accepted == 2
    state.update(res.states)
    assert again.ranking.observed == 8 and again.ranking.through == {0: 7}
    assert again.ranking.stats.pop.count("i4", events[-1].ts) == pytest.approx(
        proc.ranking.stats.pop.count("i4", events[-1].ts)
    )
    res = again.process(msgs[6:8], lambda k, _m: state.get(k))  # redelivered again: counted already
    assert again.ranking.observed == 8


def test_requests_rank_the_candidates_their_filters_allow(taobao) -> None:
    """GET /recommendations/<user>/?n=&category=... on a version with a ranker
    (`Processor.on_request`): unfiltered, the list the stream just published; filtered, the
    ranker's list over candidates that all pass the filter, the same list the stream would rank
    if the catalogue showed only those items; longer than `sources.per_source`: ranked too; a
    filter that lets fewer than n candidates through is filled from the blend's filtered list and
    says so ("ranker+blend")."""
    from recsys.catalogue import ItemFilter

    tr, te, model, _, _, ranker = taobao
    items = sorted({e.item for e in list(tr) + list(te)})
    cat_of = {i: f"c{k % 4}" for k, i in enumerate(items)}
    few = [i for i in model.item_ids if cat_of[i] == "c3"][:3]  # category x: 3 model items ...
    new = [f"new{k}" for k in range(30)]  # ... and 30 popular items the model does not know

    def processor(only: str | None) -> Processor:
        cat = Catalogue()
        for i in items:
            cat.put(
                Item(i, categories=(cat_of[i],) + (("x",) if i in few else ()), available=only in (None, cat_of[i]))
            )
        for i in new:
            cat.put(Item(i, categories=("x",), available=only is None))
        p = Processor(CFG, WorkerMetrics(CollectorRegistry()), top_n=10, catalogue=cat)
        p.serving.swap(Serving.of(Recommender(model, CFG, SCFG)))  # the blend while the sources fill
        return p

    user = max(build_profiles(tr, CFG).items(), key=lambda kv: kv[1].events)[0]
    last = max(k for k, e in enumerate(tr) if e.user == user)
    shown, only_c1 = processor(None), processor("c1")
    states = []
    for p in (shown, only_c1):
        store: dict[bytes, UserState] = {}
        msgs = [Incoming(e.user.encode(), json.dumps(e.to_dict()).encode(), 0, k, e.ts) for k, e in enumerate(tr)]
        for a in range(0, last, 200):
            store.update(p.process(msgs[a : min(a + 200, last)], lambda k, _m, st=store: st.get(k)).states)
        p.serving.swap(Serving.of(Recommender(model, CFG, SCFG), ranker=ranker))
        res = p.process([msgs[last]], lambda k, _m, st=store: st.get(k))
        states.append((json.loads(res.messages[0][1]), res.states[user.encode()]))
    (published, state), (_, state_c1) = states
    query = tr[last].item
    assert published["source"] == "ranker"

    unfiltered = shown.on_request(user, state, query, 10, ItemFilter())
    assert (unfiltered.items, unfiltered.source) == (published["items"], "ranker")

    c1 = shown.on_request(user, state, query, 10, ItemFilter(categories=("c1",)))
    assert c1.source == "ranker" and len(c1.items) == 10 and {cat_of[i] for i in c1.items} == {"c1"}
    assert c1.items == only_c1.on_request(user, state_c1, query, 10, ItemFilter()).items
    assert c1.items != [i for i in published["items"] if cat_of[i] == "c1"][:10]  # its own candidates, ranked

    long = shown.on_request(user, state, query, 80, ItemFilter(exclude=frozenset(published["items"][:2])))
    assert long.source == "ranker" and len(long.items) == 80 and not set(published["items"][:2]) & set(long.items)

    for k, i in enumerate(new):  # the most popular items right now
        for _ in range(50 - k):
            shown.recent_popularity.add(i, tr[-1].ts)
    narrow = shown.on_request(user, state, query, 30, ItemFilter(categories=("x",)))
    ranked = set(few) | set(new[: RankerConfig().pop_candidates])  # every candidate that passes
    assert narrow.source == "ranker+blend" and len(narrow.items) == 30
    assert set(narrow.items[: len(ranked)]) == ranked and set(narrow.items) <= set(few) | set(new)


def test_partitions_a_rebalance_moves_here_are_read_from_what_the_sources_lack(monkeypatch) -> None:
    """`warmup.Refill`: Faust's on_partitions_assigned names the whole assignment; the partitions
    new to this worker (after its warm-up, which reads every partition) are read before the next
    batch from the first offset its sources have not counted up to the committed offset, and
    nothing is read twice. (The read itself: tests/integration/test_catalogue_live.py.)"""
    import asyncio
    from types import SimpleNamespace

    from streaming.worker import warmup
    from tests.helpers import T0, ev

    proc = Processor(CFG, WorkerMetrics(CollectorRegistry()), top_n=10)
    assert proc.ranking is not None
    s = SimpleNamespace(
        bootstrap="b",
        app_id="g",
        clickstream_topic="clicks",
        partitions=3,
        sources_window_hours=24.0,
        sources_window_max_events=99,
    )
    refill = warmup.Refill(proc, s)

    def tps(*parts: int, topic: str = "clicks") -> list[SimpleNamespace]:
        return [SimpleNamespace(topic=topic, partition=p) for p in parts]

    refill.on_assigned(None, tps(0, 1))  # before the warm-up: it reads them itself
    assert refill.pending == set()
    refill.started = True
    proc.ranking.through.update({0: 9, 1: 4})  # what the warm-up counted
    refill.on_assigned(None, tps(0, 1) + tps(1, topic="other"))
    assert refill.pending == set()
    refill.on_assigned(None, tps(0))  # 1 leaves ...
    refill.on_assigned(None, tps(0, 1, 2))  # ... and comes back; 2 is new
    assert refill.pending == {1, 2}
    calls = []

    def read(bootstrap, topic, group, window_s, max_events, mapping, *, partitions, begin):
        calls.append((topic, group, window_s, max_events, list(partitions), dict(begin)))
        return [ev("u", "i1", ts=T0), ev("v", "i2", ts=T0 + 1)], {0: 10, 1: 7, 2: 3}

    monkeypatch.setattr(warmup, "recent_events", read)
    assert asyncio.run(refill.catch_up()) == 2
    # 2 of 3 partitions: 2/3 of the warm-up's cap; 1 from what was counted, 2 from the window's start
    assert calls == [("clicks", "g", 24 * 3600.0, 66, [1, 2], {1: 5})]
    assert proc.ranking.through == {0: 9, 1: 6, 2: 2} and proc.ranking.observed == 2
    assert proc.recent_popularity.top(5) and refill.pending == set()
    assert proc.metrics.registry.get_sample_value("streamrec_sources_reread_events_total", {"when": "rebalance"}) == 2
    assert asyncio.run(refill.catch_up()) == 0 and len(calls) == 1  # nothing pending: no read


def test_an_event_without_a_category_takes_the_catalogues_first() -> None:
    """The category source's input in a worker: the event's own category, else the catalogue's
    first category of the item (the worker's items topic), in the batches and in the warm-up."""
    from streaming.worker.warmup import count_into
    from tests.helpers import T0, ev

    cat = Catalogue()
    cat.put(Item("i1", categories=("shoes", "shoes.boots")))
    cat.put(Item("i2", categories=("bags",)))
    proc = Processor(CFG, WorkerMetrics(CollectorRegistry()), top_n=10, catalogue=cat)
    assert proc.ranking is not None and proc.ranking.cfg.category_recent > 0
    events = [ev("u", "i1", "view", T0), ev("u", "i3", "view", T0 + 1000)]
    tagged = replace(ev("u", "i2", "view", T0 + 2000), category="hats")
    msgs = [Incoming(b"u", json.dumps(e.to_dict()).encode(), 0, k, e.ts) for k, e in enumerate([*events, tagged])]
    proc.process(msgs, lambda _k, _m: None)
    assert proc.ranking.sources.category.category == {"i1": "shoes", "i2": "hats"}  # i3: none anywhere
    again = Processor(CFG, WorkerMetrics(CollectorRegistry()), top_n=10, catalogue=cat)
    assert again.ranking is not None
    count_into(again, events)
    assert again.ranking.sources.category.category == {"i1": "shoes"}


def test_a_ranker_of_another_release_is_left_out_and_the_next_retrains_serves(taobao, tmp_path) -> None:
    """A deploy that changes the features (32 -> 37 with the category source) finds the stored
    version's ranker built for the old ones: the version serves with the blend (logged, counted
    as ranker_features), and the next retrain's ranker, of this release's features, serves."""
    import asyncio

    import lightgbm as lgb

    from tests.helpers import random_model

    *_, ranker = taobao
    rng = np.random.default_rng(0)
    old = lgb.train(
        {"objective": "regression", "verbose": -1, "min_data_in_leaf": 1, "num_threads": 1},
        lgb.Dataset(rng.normal(size=(64, 32)), rng.normal(size=64)),
        num_boost_round=2,
    )
    store = ModelStore(tmp_path)
    store.save(random_model(version="v1"), ranker=old.model_to_string().encode())
    metrics = WorkerMetrics(CollectorRegistry())
    serving = ServingModel(metrics)
    updates = ModelUpdates(store, serving, CFG, SCFG, with_user_gram=False, ranker_cfg=RCFG)
    assert updates.load_initial()
    assert serving.version == "v1" and serving.snapshot.ranker is None and serving.snapshot.features is None
    assert metrics.registry.get_sample_value("streamrec_model_fetch_refused_total", {"reason": "ranker_features"}) == 1
    assert metrics.registry.get_sample_value("streamrec_model_fetch_refused_total", {"reason": "ranker"}) is None
    store.save(random_model(version="v2"), ranker=ranker.to_bytes(), publish=False)
    assert asyncio.run(updates.on_announcement(b'{"version": "v2"}'))
    assert serving.version == "v2" and serving.snapshot.ranker is not None
    assert serving.snapshot.ranker.checksum() == ranker.checksum()
