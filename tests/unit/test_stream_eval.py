"""Streaming evaluation (predict, then update): protocol, exact batching, parity with the worker."""

import json
from dataclasses import replace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from recsys.confidence import ConfidenceConfig, build_profiles
from recsys.data.datasets import load_events, time_split
from recsys.evaluation.streaming import (
    DEFAULT_METHODS,
    METHODS,
    StreamEvalConfig,
    format_markdown,
    format_table,
    stream_evaluate,
)
from recsys.model.train import TrainConfig, train
from recsys.serving.popularity import RecentPopularity
from recsys.serving.recommender import Recommender
from recsys.serving.scoring import ScoringConfig
from streaming.worker.metrics import WorkerMetrics
from streaming.worker.processor import Incoming, Processor
from streaming.worker.serving import Serving
from tests.conftest import require_dataset
from tests.helpers import T0, clustered_events, ev

CFG = ConfidenceConfig()
TCFG = TrainConfig(factors=8, iterations=10)


def small_taobao():
    events = load_events(require_dataset("taobao_small"))
    tr, te = time_split(events, test_fraction=0.2)
    profiles = build_profiles(tr, CFG)
    model, x, users = train(profiles, CFG, TrainConfig(factors=16, iterations=10, num_threads=1))
    return tr, te, model, x, users


EXACT = ("own-items", "similar", "static", "system", "system-norepeat")


def test_batched_replay_equals_event_by_event():
    """Batched: every list is computed from exactly the user state event-by-event gives; the
    lists agree up to float32 rounding among tied items (BLAS rounds a batch differently)."""
    tr, te, model, x, users = small_taobao()
    scfg = ScoringConfig(repeat_weight=0.7)
    kw = dict(ccfg=CFG, scfg=scfg, model=model, user_factors=x, user_ids=users, keep_lists=EXACT)
    big = stream_evaluate(tr, te, ecfg=StreamEvalConfig(chunk_max=512, methods=EXACT), **kw)
    one = stream_evaluate(tr, te, ecfg=StreamEvalConfig(chunk_max=1, methods=EXACT), **kw)
    assert big["chunks"] < one["chunks"] / 50  # real batches, several events per user in one
    assert big["scored_events"] == one["scored_events"] == len(te) - big["skipped_same_item"]
    assert [(e["user"], e["item"], e["query"], e["inputs"]) for e in big["events"]] == [
        (e["user"], e["item"], e["query"], e["inputs"]) for e in one["events"]
    ]
    assert [e["lists"]["own-items"] for e in big["events"]] == [e["lists"]["own-items"] for e in one["events"]]
    for m in EXACT:
        overlap = np.mean(
            [
                len(set(a["lists"][m]) & set(b["lists"][m])) / 10
                for a, b in zip(big["events"], one["events"], strict=True)
            ]
        )
        assert overlap > 0.75, m
        assert abs(big["methods"][m]["all"]["HR@10"] - one["methods"][m]["all"]["HR@10"]) < 0.03, m


def test_system_lists_are_what_the_worker_published_before_each_event():
    """The worker (streaming.worker.processor, one event per batch) publishes after every event; the
    list on screen before event k of a user is the one published after event k-1. With one
    event per chunk the replay computes the same products, so the lists are identical."""
    events = clustered_events(n_users=30, per_user=6)
    tr, te = time_split(events, test_fraction=0.4)
    profiles = build_profiles(tr, CFG)
    model, x, users = train(profiles, CFG, TCFG)
    scfg = ScoringConfig(n=10)
    proc = Processor(CFG, WorkerMetrics(CollectorRegistry()), top_n=10)
    proc.serving.swap(Serving.of(Recommender(model, CFG, scfg)))
    store = {}
    shown = {}  # (user, ts) -> list on screen before the event
    for off, e in enumerate(list(tr) + list(te)):
        key = e.user.encode()
        shown[(e.user, e.ts)] = store[key].last_items if key in store else None
        res = proc.process([Incoming(key, json.dumps(e.to_dict()).encode(), 0, off, e.ts)], lambda k, _m: store.get(k))
        store.update(res.states)
    # Cold-start / padding list: the worker's recent popularity once it keeps one (a
    # RecentPopularity fed every applied event, as `Processor.recent_popularity`), else the model's
    # training popularity. stream_eval counts the same events; pop_refresh=1 makes the ranking the
    # one after event k-1, which is what the worker had when it published after event k-1.
    recent = getattr(proc, "recent_popularity", None)
    wired = isinstance(recent, RecentPopularity)
    ecfg = StreamEvalConfig(
        methods=("system",),
        chunk_max=1,
        pop_refresh=1,
        system_popular=wired,
        pop_half_life_hours=recent.half_life_s / 3600 if wired else 8.0,
    )
    rep = stream_evaluate(
        tr, te, ccfg=CFG, scfg=scfg, model=model, user_factors=x, user_ids=users, ecfg=ecfg, keep_lists=("system",)
    )
    assert len(rep["events"]) == len(te) - rep["skipped_same_item"] > 20
    compared = 0
    for r in rep["events"]:
        before = shown[(r["user"], r["ts"])]
        if before is None:  # a new user's first event: the worker showed nothing yet
            assert r["query"] is None
            continue
        assert r["lists"]["system"] == before, r
        compared += 1
    assert compared > 20


def test_protocol_by_hand():
    """Two users, hand-checked: query = previous item, segments, same-item events skipped."""
    tr = [ev("old", f"i{k}", "view", T0 + k) for k in (1, 4, 7, 1)] + [
        ev(f"u{k}", f"i{j}", "view", T0 + 10 + k * 10 + j) for k in range(20) for j in range(0, 30, 3)
    ]
    te = [
        ev("old", "i4", "view", T0 + 1000),  # own-items: i4 is 2nd by confidence? i1 has 2 views
        ev("new", "i2", "view", T0 + 1001),  # cold: nothing known
        ev("new", "i2", "addtocart", T0 + 1002),  # same item as on screen: not scored
        ev("new", "x-unknown", "view", T0 + 1003),  # new 2-5, target unknown to the model
        ev("old", "i1", "view", T0 + 1004),
        ev("old", "i7", "transaction", T0 + 1005),  # a conversion target (query i1)
    ]  # query i4 now; own-items: i1 first
    rep = stream_evaluate(tr, te, ccfg=CFG, tcfg=TCFG, ecfg=StreamEvalConfig(retrain_hours=1e-6))
    assert rep["skipped_same_item"] == 1 and rep["scored_events"] == 5
    own = rep["methods"]["own-items"]
    # old, event 1: query i1 (last training item), own items minus i1 = [i7, i4] (0.25 each, the more
    # recent first) -> i4 at rank 2. new, event 1: no items. new, "x-unknown": own = [] (i2 is on screen).
    # old, event 2: query i4, own = [i1 (0.5), i7] -> i1 at rank 1.
    # old, event 3 (the purchase of i7): query i1, own = [i4, i7] by recency -> i7 at rank 2.
    assert own["known"]["n"] == 3 and own["known"]["HR@10"] == 1.0
    assert own["known"]["MRR@10"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert own["known"]["NDCG@10"] == pytest.approx((2 / np.log2(3) + 1) / 3)
    # only the purchase is a conversion target: the cart on the item on screen is not scored
    assert own["target conversion"]["n"] == 1 and own["target conversion"]["MRR@10"] == pytest.approx(1 / 2)
    assert own["cold"]["n"] == 1 and own["cold"]["HR@10"] == 0.0
    assert own["new 2-5"]["n"] == 1 and own["target new"]["n"] == 2  # i2 and x-unknown
    assert set(rep["methods"]) == set(DEFAULT_METHODS)
    assert len(rep["retrains"]) >= 1
    text = format_table(rep)
    assert "system+retrain" in text and "cold" in text and "| events |" in format_markdown(rep)


def test_cli_writes_table_json_and_chart(tmp_path, capsys):
    require_dataset("taobao_small")
    from streaming.cli.main import main

    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert (
        main(
            [
                "stream-eval",
                "--data",
                "taobao_small",
                "--factors",
                "8",
                "--iterations",
                "3",
                "--output",
                str(out),
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    rep = json.loads(out.read_text())
    assert set(rep["methods"]) == set(METHODS) and png.stat().st_size > 10_000
    assert "HR@10" in capsys.readouterr().out


def test_revisit_term_is_exact_top_n_of_blend_plus_bonus():
    """scoring.py's re-visit term: top-N of score(i) + β·s(i)·top over the whole catalogue."""
    from recsys.serving.scoring import Scorer
    from tests.helpers import random_model

    model = random_model(n_items=300, factors=10, seed=3)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 10)).astype(np.float32)
    own = [{"i5": 1.0, "i77": 0.4, "i200": 0.1, "unknown-item": 0.9, "i9": 1.0}, {}]
    excludes = [{"i9"}, set()]
    cfg = ScoringConfig(n=8, user_weight=0.6, item_norm_power=0.5, repeat_weight=1.3)
    out = Scorer(model, cfg).recommend(x, [True, True], ["i1", "i2"], excludes, own=own)
    plain = Scorer(model, replace(cfg, repeat_weight=0.0)).recommend(x, [True, True], ["i1", "i2"], excludes)
    assert out[1].items == plain[1].items  # no own items: unchanged
    y = np.asarray(model.item_factors, np.float64)
    norms = np.linalg.norm(y, axis=1)
    q = 0.6 * x[0] / np.linalg.norm(x[0]) + 0.4 * y[model.item_index["i1"]] / norms[model.item_index["i1"]]
    s = y @ q / norms**0.5
    s[[model.item_index["i1"], model.item_index["i9"]]] = -np.inf  # on screen, bought
    top = np.max(s)
    scores = {model.item_ids[k]: s[k] for k in range(len(s))}
    for item, st in own[0].items():
        if item in scores and np.isfinite(scores[item]):
            scores[item] += 1.3 * st * top
        elif item == "unknown-item":
            scores[item] = 1.3 * st * top  # a new item: blend score 0
    want = sorted(scores, key=lambda i: -scores[i])[:8]
    assert out[0].items == want
    assert "i5" in out[0].items and "unknown-item" in out[0].items and "i9" not in out[0].items


def test_cold_start_list_is_the_recent_popularity_baseline():
    """A new user's first event: the system shows the popularity baseline's list (decayed recent
    counts, the same RecentPopularity ranking), not the training window's popularity."""
    events = clustered_events(n_users=40, per_user=6)
    tr, te = time_split(events, test_fraction=0.4)
    te = te + [ev(f"newcomer{k}", f"i{k}", "view", te[-1].ts + 1000 * (k + 1)) for k in range(5)]
    profiles = build_profiles(tr, CFG)
    model, x, users = train(profiles, CFG, TCFG)
    kw = dict(
        ccfg=CFG,
        scfg=ScoringConfig(n=10),
        model=model,
        user_factors=x,
        user_ids=users,
        keep_lists=("popularity", "system", "system-norepeat"),
    )
    methods = ("popularity", "system", "system-norepeat")
    rep = stream_evaluate(tr, te, ecfg=StreamEvalConfig(methods=methods), **kw)
    cold = [r for r in rep["events"] if r["query"] is None]
    assert len(cold) >= 5
    for r in cold:
        assert r["lists"]["system"] == r["lists"]["popularity"] == r["lists"]["system-norepeat"]
    assert rep["methods"]["system"]["cold"] == rep["methods"]["popularity"]["cold"]
    old = stream_evaluate(tr, te, ecfg=StreamEvalConfig(methods=methods, system_popular=False), **kw)
    train_pop = Recommender(model, CFG, ScoringConfig(n=10)).scorer.popular().items
    assert all(r["lists"]["system"] == train_pop for r in old["events"] if r["query"] is None)
