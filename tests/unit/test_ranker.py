"""The learned ranker (recsys/candidates/ranker.py, training.py): trained from a replayed
window, it serves stream-eval's `ranker` lists; its file round-trips and a foreign one is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest

from recsys.candidates.ranker import FEATURES, Ranker
from recsys.candidates.training import ranker_examples, train_ranker
from recsys.data.datasets import load_dataset, time_split
from recsys.evaluation.streaming import StreamEvalConfig, stream_evaluate


@pytest.fixture(scope="module")
def data():
    events = load_dataset("rees46_small")
    return time_split(events, test_fraction=0.2)


def test_examples_label_the_next_item_among_the_candidates(data) -> None:
    train, _ = data
    ex = ranker_examples(train)
    assert ex.events > 100 and 0 < ex.covered <= ex.events
    for X, y in zip(ex.X, ex.y, strict=True):
        assert X.shape == (len(y), len(FEATURES))
        assert y.sum() == 1.0  # exactly the target is positive


def test_ranker_lists_in_stream_eval(data) -> None:
    train, test = data
    ecfg = StreamEvalConfig(
        methods=("popularity", "system", "covisit", "ranker"),
        ranker=replace(StreamEvalConfig().ranker, n_estimators=20),
    )
    ranker = train_ranker(train, ecfg=ecfg)
    rep = stream_evaluate(train, test, ecfg=ecfg, ranker=ranker, keep_lists=("ranker", "system"))
    assert rep["methods"]["ranker"]["all"]["n"] == rep["scored_events"]
    for r in rep["events"]:
        lst = r["lists"]["ranker"]
        assert len(lst) == 10 and len(set(lst)) == 10
        assert r["query"] not in lst
    # a user with no event at all is shown the system's list (recent popularity)
    cold = [r for r in rep["events"] if r["query"] is None]
    assert cold and all(r["lists"]["ranker"] == r["lists"]["system"] for r in cold)


def test_ranker_file_round_trips_and_a_foreign_one_is_refused(data) -> None:
    train, _ = data
    ranker = train_ranker(train, ecfg=StreamEvalConfig(ranker=replace(StreamEvalConfig().ranker, n_estimators=5)))
    again = Ranker.from_bytes(ranker.to_bytes(), sha256=ranker.checksum())
    assert again.checksum() == ranker.checksum()
    with pytest.raises(ValueError):
        Ranker.from_bytes(b"tree\nversion=v4\nnot a model")
    with pytest.raises(ValueError):
        Ranker.from_bytes(ranker.to_bytes()[:-200], sha256=ranker.checksum())


def test_ranker_is_stored_with_its_model_version_and_a_corrupt_file_is_refused(data, tmp_path) -> None:
    from recsys.errors import ModelStoreError
    from recsys.model.store import RANKER, ModelStore
    from tests.helpers import random_model

    train, _ = data
    ranker = train_ranker(train, ecfg=StreamEvalConfig(ranker=replace(StreamEvalConfig().ranker, n_estimators=5)))
    store = ModelStore(tmp_path)
    plain = random_model(version="v1")
    store.save(plain)
    assert store.ranker("v1") is None  # without a ranker the blend serves as before
    m = random_model(version="v2")
    vdir = store.save(m, ranker=ranker.to_bytes())
    assert Ranker.from_bytes(store.ranker("v2") or b"").checksum() == ranker.checksum()
    raw = bytearray((vdir / RANKER).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (vdir / RANKER).write_bytes(bytes(raw))
    with pytest.raises(ModelStoreError, match="checksum"):
        store.ranker("v2")
