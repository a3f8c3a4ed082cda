"""The retrain's ranker: the clickstream window's offsets and validation, the ranker's gate, and
a retrain that publishes a version with its ranker (checksummed, gate figures in the metadata)
or without one, saying why, never failing because of it."""

import json
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from recsys.candidates.ranker import Ranker, RankerConfig
from recsys.candidates.training import window_fit_config
from recsys.confidence import build_profiles
from recsys.config import Config, Settings
from recsys.data.datasets import load_events, time_split
from recsys.model.store import ModelStore
from streaming.jobs.retrain import RetrainMetrics, events_window, ranker_gate, retrain_once
from streaming.jobs.window import Window, decode, plan
from streaming.worker.messages import Incoming
from tests.conftest import require_dataset

# --- the window's offsets ------------------------------------------------------------------


def test_the_window_starts_at_the_first_record_at_or_after_its_time():
    begin, end = {0: 0, 1: 0}, {0: 100, 1: 50}
    assert plan(begin, end, {0: 40, 1: 10}, max_events=0) == {0: 40, 1: 10}


def test_a_partition_with_nothing_that_recent_is_not_read():
    assert plan({0: 0, 1: 0}, {0: 100, 1: 50}, {0: None, 1: 20}, max_events=0) == {0: 100, 1: 20}


def test_a_start_removed_by_retention_reads_from_the_oldest_kept_record():
    assert plan({0: 30}, {0: 100}, {0: 10}, max_events=0) == {0: 30}


def test_the_cap_keeps_the_newest_same_share_of_every_partition():
    start = plan({0: 0, 1: 0}, {0: 400, 1: 200}, {0: 0, 1: 100}, max_events=200)
    # 400 + 100 records in the window, 200 wanted: the newest 40% of each partition's
    assert start == {0: 240, 1: 160}
    assert sum(e - start[p] for p, e in {0: 400, 1: 200}.items()) == 200


def test_an_empty_topic_plans_nothing():
    assert plan({0: 0}, {0: 0}, {0: None}, max_events=10) == {0: 0}


# --- validation as the worker validates ------------------------------------------------------


def record(key, value, offset=0):
    """A consumed record's fields."""
    return Incoming(key, value, 0, offset, 1_700_000_000_000)


def test_bad_records_are_counted_by_reason_and_skipped():
    good = json.dumps({"user": "u1", "item": "i1", "type": "view", "ts": 1_700_000_000_000}).encode()
    w = Window()
    decode(
        [
            record(b"u1", good),
            record(b"u1", b"{not json"),
            record(None, good),
            record(b"u2", good),  # keyed by another user
            record(b"u1", None),
            record(b"u1", json.dumps({"user": "u1", "item": "i2", "type": "view"}).encode()),  # no time
        ],
        w,
        None,
    )
    assert [(e.user, e.item) for e in w.events] == [("u1", "i1")]
    assert w.records == 6 and sum(w.skipped.values()) == 5
    assert {"bad_json", "missing_key", "key_mismatch", "empty"} <= set(w.skipped)


# --- the ranker's gate -----------------------------------------------------------------------


def figures(ranker_mrr, fallback_mrr, se=0.01, n=400, ranker_hr=0.3, fallback_hr=0.3):
    fig = {"HR@10_se": 0.02, "MRR@10_se": se}
    return {
        "gate_events": n,
        "holdout": {
            "ranker": {**fig, "HR@10": ranker_hr, "MRR@10": ranker_mrr},
            "fallback": {**fig, "HR@10": fallback_hr, "MRR@10": fallback_mrr},
        },
    }


def test_a_ranker_better_than_the_fallback_passes():
    assert ranker_gate(figures(0.20, 0.15))[0]


def test_a_ranker_level_with_the_fallback_within_noise_passes():
    assert ranker_gate(figures(0.145, 0.15, se=0.01))[0]


def test_a_ranker_worse_than_the_fallback_by_more_than_noise_is_refused():
    passed, why = ranker_gate(figures(0.10, 0.15, se=0.01))
    assert not passed and why.startswith("MRR@10 below the fallback")


def test_a_ranker_that_loses_hits_is_refused_even_with_a_better_mrr():
    passed, why = ranker_gate(figures(0.20, 0.15, ranker_hr=0.25, fallback_hr=0.32))
    assert not passed and why.startswith("HR@10 below the fallback")


def test_too_few_held_out_events_refuse_the_ranker():
    passed, why = ranker_gate(figures(0.3, 0.1, n=12))
    assert not passed and "too few" in why


def test_the_retrain_ranker_fits_at_most_retrain_max_estimators_rounds():
    assert window_fit_config(RankerConfig()).n_estimators == RankerConfig().retrain_max_estimators == 50
    assert window_fit_config(RankerConfig(n_estimators=30)).n_estimators == 30
    assert window_fit_config(RankerConfig(retrain_max_estimators=0)).n_estimators == RankerConfig().n_estimators


# --- the retrain with its ranker -------------------------------------------------------------

# small enough for a unit test, large enough for a ranker on taobao_small
RCFG = replace(
    RankerConfig(), window_hours=24 * 365, max_examples=1200, n_estimators=30, min_examples=50, gate_fraction=0.3
)


@pytest.fixture(scope="module")
def taobao():
    events = load_events(require_dataset("taobao_small"))
    return sorted(events, key=lambda e: e.ts)


def config(**ranker):
    return replace(Config(), ranker=replace(RCFG, **ranker))


def test_the_retrain_publishes_its_ranker_with_the_version(tmp_path, taobao):
    store = ModelStore(tmp_path / "models")
    metrics = RetrainMetrics(CollectorRegistry())
    cfg = config()
    head, _ = time_split(taobao, test_fraction=0.4)
    first = retrain_once(build_profiles(head, cfg.confidence), store, Settings(), metrics, config=cfg)
    assert first.result == "published"
    assert store.metadata(first.version)["data_until_ts"] == max(e.ts for e in head)

    res = retrain_once(
        build_profiles(taobao, cfg.confidence),
        store,
        Settings(),
        metrics,
        config=cfg,
        window=events_window(taobao, RCFG),
    )
    assert res.result == "published" and res.ranker["published"], res.ranker
    # scored by the serving version, which had not seen the example events
    assert res.ranker["model"] == f"serving {first.version}"
    data = store.ranker(res.version)  # checksum verified
    assert data is not None
    Ranker.from_bytes(data, sha256=res.ranker["sha256"])
    meta = store.metadata(res.version)["ranker"]
    assert meta["gate"]["passed"] and meta["gate_events"] >= 30
    held = meta["holdout"]
    for m in ("HR@10", "MRR@10"):
        assert held["ranker"][m] + 2 * held["ranker"][f"{m}_se"] >= held["fallback"][m]
    assert {"ranker_train_s", "ranker_wait_s"} <= set(res.phases)
    sample = metrics.registry.get_sample_value
    assert sample("streamrec_retrain_ranker_runs_total", {"result": "published"}) == 1
    assert sample("streamrec_retrain_ranker_metric", {"metric": "MRR@10", "lists": "ranker"}) == pytest.approx(
        held["ranker"]["MRR@10"]
    )


def test_without_a_model_that_has_not_seen_the_window_one_is_trained_on_its_head(tmp_path, taobao):
    cfg = config(gate_fraction=0.02)  # 24 held-out events: refused, too few to judge
    store = ModelStore(tmp_path / "models")
    res = retrain_once(
        build_profiles(taobao, cfg.confidence),
        store,
        Settings(),
        config=cfg,
        window=events_window(taobao, cfg.ranker),
    )
    assert res.result == "published" and res.ranker["model"].startswith("trained on")
    assert not res.ranker["published"] and "too few" in res.ranker["note"]
    assert store.ranker(res.version) is None  # the blend serves
    assert store.metadata(res.version)["ranker"]["gate"]["passed"] is False


@pytest.mark.parametrize(
    ("window", "why"),
    [
        (lambda: Window(note="the clickstream topic clicks does not exist on k:9092"), "does not exist"),
        (lambda: (_ for _ in ()).throw(OSError("broker down")), "broker down"),
    ],
)
def test_no_clickstream_publishes_the_model_without_a_ranker_and_says_why(tmp_path, taobao, window, why):
    cfg = config()
    store = ModelStore(tmp_path / "models")
    metrics = RetrainMetrics(CollectorRegistry())
    res = retrain_once(build_profiles(taobao, cfg.confidence), store, Settings(), metrics, config=cfg, window=window)
    assert res.result == "published" and store.current() == res.version
    assert not res.ranker["published"] and why in res.ranker["note"]
    assert store.ranker(res.version) is None
    assert metrics.registry.get_sample_value("streamrec_retrain_ranker_runs_total", {"result": "absent"}) == 1


def test_too_few_events_for_examples_publish_without_a_ranker(tmp_path, taobao):
    cfg = config(min_examples=10_000)
    res = retrain_once(
        build_profiles(taobao, cfg.confidence),
        ModelStore(tmp_path / "models"),
        Settings(),
        config=cfg,
        window=events_window(taobao[:300], cfg.ranker),
    )
    assert res.result == "published" and not res.ranker["published"]
    assert "too few events for examples" in res.ranker["note"]


def test_the_examples_come_from_the_configured_sources(tmp_path, taobao):
    """The worker serves candidates from `[sources]`: the retrain's examples are built from the same
    (here the category source off: another ranker than with it on)."""
    import shutil

    cfg = config()
    head, _ = time_split(taobao, test_fraction=0.4)
    retrain_once(build_profiles(head, cfg.confidence), ModelStore(tmp_path / "serving"), Settings(), config=cfg)
    sums = {}
    for on in (3, 0):
        c = replace(cfg, sources=replace(cfg.sources, category_recent=on))
        root = tmp_path / f"models-{on}"
        shutil.copytree(tmp_path / "serving", root)
        res = retrain_once(
            build_profiles(taobao, c.confidence),
            ModelStore(root),
            Settings(),
            config=c,
            window=events_window(taobao, RCFG),
        )
        assert res.ranker["model"].startswith("serving"), res.ranker
        sums[on] = res.ranker.get("sha256") or res.ranker.get("holdout")
    assert sums[3] != sums[0]
