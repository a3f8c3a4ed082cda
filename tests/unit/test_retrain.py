"""The retrain gate: a broken candidate is not published; a sound one is."""

import random

from prometheus_client import CollectorRegistry

from recsys.confidence import ConfidenceConfig, build_profiles
from recsys.config import Settings
from recsys.events import Event
from recsys.model.store import ModelStore
from streaming.jobs.retrain import RetrainMetrics, retrain_once
from tests.helpers import clustered_events

CONFIDENCE = ConfidenceConfig()  # the project's defaults


def test_gate_rejects_a_candidate_that_lost_the_structure_and_keeps_serving(tmp_path):
    store = ModelStore(tmp_path / "models")
    metrics = RetrainMetrics(CollectorRegistry())
    settings = Settings(model_dir=str(store.root))
    events = clustered_events(n_users=600, n_items=90, per_user=10)
    good = build_profiles(events, CONFIDENCE)

    first = retrain_once(good, store, settings, metrics)
    assert first.result == "published" and first.gate["cases"] >= 30
    assert store.current() == first.version
    assert store.metadata(first.version)["holdout"]["MAP@10"] == first.gate["candidate_map10"] > 0.02

    # The same volume of data with the users' items shuffled at random: nothing to learn.
    rng = random.Random(0)
    items = [e.item for e in events]
    rng.shuffle(items)
    noise = build_profiles([Event(e.user, i, e.type, e.ts) for e, i in zip(events, items, strict=True)], CONFIDENCE)
    second = retrain_once(noise, store, settings, metrics)
    assert second.result == "rejected" and second.version is None
    assert second.gate["candidate_map10"] < first.gate["candidate_map10"] / 2
    assert store.current() == first.version  # still serving
    assert metrics.registry.get_sample_value("streamrec_retrain_runs_total", {"result": "rejected"}) == 1

    third = retrain_once(good, store, settings, metrics)
    assert third.result == "published" and store.current() == third.version


def test_too_little_data_to_judge_passes_and_says_so(tmp_path):
    store = ModelStore(tmp_path / "models")
    res = retrain_once(build_profiles(clustered_events(n_users=30), CONFIDENCE), store, Settings(), RetrainMetrics())
    assert res.result == "published" and "too few" in res.gate["note"]
