"""Live new-item fold-in without Kafka: the XᵀX artifact, evidence from a batch, the records'
validation, the solver's bounds, and the rows -> extended model -> model swap cycle."""

import asyncio
import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from recsys.confidence import ConfidenceConfig, build_profiles
from recsys.config import Settings
from recsys.errors import ModelStoreError
from recsys.model.item_foldin import fold_in_items, user_gram
from recsys.model.store import ModelStore
from recsys.model.train import TrainConfig, train
from recsys.serving.recommender import Recommender
from streaming.jobs.retrain import retrain_once
from streaming.worker.metrics import WorkerMetrics
from streaming.worker.new_items import (
    Evidence,
    EvidenceSolver,
    NewItems,
    decode_evidence,
    decode_row,
    encode_evidence,
    encode_row,
)
from streaming.worker.processor import Incoming, Processor
from streaming.worker.serving import Serving, ServingModel
from tests.helpers import T0, clustered_events

CFG = ConfidenceConfig()  # the project's defaults


@pytest.fixture(scope="module")
def trained():
    profiles = build_profiles(clustered_events(), CFG)
    model, x, users = train(profiles, CFG, TrainConfig(factors=8, iterations=8, random_state=1), version="v1")
    return model, x, users


def test_store_round_trips_the_user_gram_under_its_checksums(tmp_path, trained):
    model, x, _ = trained
    store = ModelStore(tmp_path)
    store.save(model, user_gram=user_gram(x))
    np.testing.assert_array_equal(store.user_gram("v1"), user_gram(x))
    assert "user_gram.npy" in store.metadata("v1")["files"]
    raw = bytearray((tmp_path / "v1" / "user_gram.npy").read_bytes())
    raw[-3] ^= 0xFF
    (tmp_path / "v1" / "user_gram.npy").write_bytes(bytes(raw))
    with pytest.raises(ModelStoreError, match="user_gram.npy fails its sha256"):
        store.load("v1")  # a corrupt XᵀX refuses the version like any file
    store2 = ModelStore(tmp_path / "plain")
    store2.save(model)
    assert store2.user_gram("v1") is None  # trained without it: fold-in off for that model
    with pytest.raises(ModelStoreError, match="shape"):
        store2.save(
            train(build_profiles(clustered_events(), CFG), CFG, TrainConfig(factors=4, iterations=2), version="v2")[0],
            user_gram=np.eye(3),
        )


def test_retrain_stores_the_user_gram(tmp_path):
    store = ModelStore(tmp_path)
    res = retrain_once(build_profiles(clustered_events(n_users=40), CFG), store, Settings())
    gram = store.user_gram(res.version)
    f = store.load(res.version).factors
    assert gram.shape == (f, f) and np.allclose(gram, gram.T) and np.all(np.linalg.eigvalsh(gram) > -1e-6)


def msg(user, item, offset, type_="view"):
    body = {"user": user, "item": item, "type": type_, "ts": T0 + offset}
    return Incoming(user.encode(), json.dumps(body).encode(), 0, offset, T0)


def test_a_batch_emits_evidence_for_new_items_only(trained):
    model, _, _ = trained
    proc = Processor(CFG, WorkerMetrics(CollectorRegistry()))
    rec = Recommender(model, CFG)
    proc.serving.swap(Serving.of(rec))
    batch = [msg("a", "i1", 1), msg("a", "new", 2), msg("a", "new", 3), msg("b", "new", 4), msg("c", "i4", 5)]
    assert proc.process(batch, lambda k, m: None).evidence == []  # off: no XᵀX, no item_base
    proc.serving.swap(Serving.of(Recommender(model, CFG), xtx=np.eye(model.factors, dtype=np.float32)))
    res = proc.process(
        [msg(m_.key.decode(), json.loads(m_.value)["item"], m_.offset + 10) for m_ in batch], lambda k, m: None
    )
    assert [k for k, _ in res.evidence] == [b"new"]  # b has no trained item: no place to lend; c: known item
    ev = decode_evidence(*res.evidence[0])
    assert (ev.version, ev.item, ev.user) == ("v1", "new", "a")
    x, _ = rec.fold_in([build_profiles([e for e in _events(batch[:3])], CFG)["a"].confidence(CFG)])
    np.testing.assert_allclose(ev.x, x[0], atol=1e-5)
    assert ev.c == pytest.approx(CFG.to_confidence(2 * CFG.weights["view"]), rel=1e-4)


def _events(msgs):
    from recsys.events import parse_event

    return [parse_event(json.loads(m.value)) for m in msgs]


GOOD = json.loads(encode_evidence("v1", "new", "u", np.ones(8), 2.0))


def test_evidence_records_are_json_dumps_bytes():
    x = np.array([0.1234567, -2.5e-7, 3.0, -0.0], np.float32)
    for user, item, c in (("u", "new", 2.0), ('é "q"', "ü/\\n", 1.000000449)):
        want = {
            "v": "v1",
            "item": item,
            "user": user,
            "x": np.round(x.astype(np.float64), 6).tolist(),
            "c": round(c, 6),
        }
        assert encode_evidence("v1", item, user, x, c) == json.dumps(want, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "key,value",
    [
        (b"new", b"{broken"),
        (b"new", b"[1]"),
        (b"new", None),
        (None, json.dumps(GOOD).encode()),
        (b"other", json.dumps(GOOD).encode()),
        (b"new", json.dumps({**GOOD, "x": [1.0, "a"]}).encode()),
        (b"new", json.dumps({**GOOD, "x": [float("nan")] * 8}).encode()),
        (b"new", json.dumps({**GOOD, "x": [1e300] * 8}).encode()),
        (b"new", json.dumps({**GOOD, "x": []}).encode()),
        (b"new", json.dumps({**GOOD, "c": 0.5}).encode()),
        (b"new", json.dumps({**GOOD, "c": True}).encode()),
        (b"new", json.dumps({**GOOD, "user": ""}).encode()),
        (b"new", json.dumps({**GOOD, "v": 3}).encode()),
        (b"new", b"[" * 100_000),
    ],
)
def test_malformed_evidence_is_a_value_error(key, value):
    with pytest.raises((ValueError, RecursionError)):
        decode_evidence(key, value)


def test_rows_round_trip_and_reject_garbage():
    row = decode_row(b"n", encode_row("v1", "n", np.arange(4, dtype=np.float32), 3))
    assert (row.version, row.item, row.users, row.y.tolist()) == ("v1", "n", 3, [0, 1, 2, 3])
    for bad in (b"{}", encode_row("v1", "n", np.ones(4), 3).replace(b'"users":3', b'"users":0')):
        with pytest.raises(ValueError):
            decode_row(b"n", bad)


def test_solver_keeps_the_latest_users_and_items_within_bounds(trained):
    model, x, users = trained
    s = EvidenceSolver(min_users=2, max_users=3, max_items=2)
    s.reset(model, user_gram(x))
    ev = lambda item, k, c=5.0, v="v1": Evidence(v, item, users[k], x[k], c)  # noqa: E731
    assert s.add(ev("i1", 0)) == "stale" and s.add(ev("n1", 0, v="v0")) == "stale"
    for k in range(5):
        assert s.add(ev("n1", k)) == "accepted"
    assert list(s.items["n1"]) == users[2:5]  # the latest max_users users
    s.add(ev("n2", 0))
    s.add(ev("n3", 0))
    assert list(s.items) == ["n2", "n3"]  # max_items: n1 was touched least recently
    with pytest.raises(ValueError):
        s.add(Evidence("v1", "n4", "u", np.ones(3, np.float32), 2.0))
    s.add(ev("n3", 1, c=9.0))
    ids, xs, cs = s.take(lambda item: 0)
    assert ids == ["n3"]  # n2 has one user (< min_users)
    np.testing.assert_allclose(
        fold_in_items(xs, cs, s.xtx, model.regularization),
        fold_in_items([x[[0, 1]]], [np.array([5.0, 9.0])], user_gram(x), model.regularization),
    )
    s.add(ev("n3", 2))
    assert s.take(lambda item: 5)[0] == []  # a row from more users serves: keep it


def test_rows_extend_the_served_model_and_a_swap_drops_them(trained):
    model, x, users = trained
    metrics = WorkerMetrics(CollectorRegistry())
    serving = ServingModel(metrics)
    app = SimpleNamespace(topic=lambda *a, **k: None)
    items = NewItems(app, serving, Settings())
    base = Recommender(model, CFG)
    serving.swap(Serving.of(base, user_gram(x)))  # NewItems hears of it (on_new_version)
    assert serving.snapshot.item_base is base and items.solver.model is model
    y = np.asarray(model.item_factors)[model.item_index["i4"]] * 1.1
    items.on_row(b"new", encode_row("v1", "new", y, 4))
    items.on_row(b"newer", encode_row("v9", "newer", y, 4))  # a model this worker has not swapped to
    items.on_row(b"bad", b"\xff")
    items.on_row(b"x", encode_row("v0", "x", y, 1))  # an older model's
    assert items.dirty
    asyncio.run(items.rebuild())
    rec = serving.snapshot.current
    assert rec is not base and rec.version == "v1" and rec.model.item_ids[-1] == "new"
    assert rec.scorer.similar("new", 3).items[0] == "i4" and serving.snapshot.item_base is base
    sample = metrics.registry.get_sample_value
    assert sample("streamrec_new_items_served") == 1
    assert {
        k: sample("streamrec_item_factor_rows_total", {"result": k}) for k in ("applied", "ignored", "rejected")
    } == {"applied": 1, "ignored": 2, "rejected": 1}

    other = Recommender(
        train(build_profiles(clustered_events(seed=2), CFG), CFG, TrainConfig(factors=8, iterations=4), version="v2")[
            0
        ],
        CFG,
    )
    serving.swap(Serving.of(other))  # v2 has no XᵀX
    assert serving.snapshot.item_base is None and set(items.rows) == {"v9"} and not items.dirty
    asyncio.run(items.rebuild())
    assert serving.snapshot.current is other and sample("streamrec_new_items_served") == 0


def test_an_extension_built_for_a_version_that_was_swapped_out_meanwhile_is_dropped(trained):
    model, x, _ = trained
    serving = ServingModel(WorkerMetrics(CollectorRegistry()))
    first = Serving.of(Recommender(model, CFG), user_gram(x))
    serving.swap(first)
    serving.swap(Serving.of(Recommender(model, CFG)))  # a new version lands while rows are built
    extended = dataclasses.replace(first, current=Recommender(model, CFG), new_items=1)
    assert not serving.swap(extended, based_on=first)
    assert serving.snapshot.trained is not first.trained
