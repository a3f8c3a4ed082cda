"""The worker's batch logic without Kafka: validation, idempotence, coalescing, exact state."""

import json
import math

import pytest
from prometheus_client import CollectorRegistry

from recsys.confidence import ConfidenceConfig, build_profiles
from recsys.model.train import TrainConfig, train
from recsys.serving.recommender import Recommender
from streaming.worker.metrics import WorkerMetrics
from streaming.worker.processor import Incoming, Processor
from streaming.worker.serving import Serving
from tests.helpers import T0, clustered_events, ev, profiles_of

CFG = ConfidenceConfig()


def msg(user, item, type_="view", ts=T0, offset=0, partition=0, key=None, **extra):
    body = {"user": user, "item": item, "type": type_, "ts": ts, **extra}
    return Incoming(key if key is not None else user.encode(), json.dumps(body).encode(), partition, offset, ts)


class Store(dict):
    def load(self, key, _msg):
        return self.get(key)

    def apply(self, res):
        self.update(res.states)


@pytest.fixture
def proc():
    profiles = profiles_of(clustered_events(), CFG)
    model, _, _ = train(profiles, CFG, TrainConfig(factors=8, iterations=8))
    p = Processor(CFG, WorkerMetrics(CollectorRegistry()), top_n=5)
    p.serving.swap(Serving.of(Recommender(model, CFG)))
    return p


def sample(p, name, labels=None):
    v = p.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if v is None else v


BAD = [
    (Incoming(b"u", b"\xff\xfe", 0, 0, T0), "bad_utf8"),
    (Incoming(b"u", b"{nope", 0, 0, T0), "bad_json"),
    (Incoming(b"u", b"[" * 100_000 + b"]" * 100_000, 0, 0, T0), "too_large"),
    (Incoming(b"u", b"[" * 5000 + b"]" * 5000, 0, 0, T0), "bad_json"),  # nesting too deep to parse
    (Incoming(b"u", b"[1, 2]", 0, 0, T0), "not_an_object"),
    (Incoming(b"u", None, 0, 0, T0), "empty"),
    (Incoming(b"u", json.dumps({"item": "i", "type": "view", "ts": T0}).encode(), 0, 0, T0), "missing_user"),
    (Incoming(b"u", json.dumps({"user": "u", "item": 5.5, "type": "view", "ts": T0}).encode(), 0, 0, T0), "bad_item"),
    (Incoming(b"u", json.dumps({"user": "u", "item": "", "type": "view", "ts": T0}).encode(), 0, 0, T0), "bad_item"),
    (
        Incoming(b"u", json.dumps({"user": "u", "item": "i", "type": "teleport", "ts": T0}).encode(), 0, 0, T0),
        "unknown_type",
    ),
    (Incoming(b"u", json.dumps({"user": "u", "item": "i", "type": "view"}).encode(), 0, 0, T0), "missing_ts"),
    (Incoming(b"u", json.dumps({"user": "u", "item": "i", "type": "view", "ts": "soon"}).encode(), 0, 0, T0), "bad_ts"),
    (
        Incoming(b"u", json.dumps({"user": "u", "item": "i", "type": "view", "ts": 4e15}).encode(), 0, 0, T0),
        "ts_in_future",
    ),
    (Incoming(b"u", json.dumps({"user": "u", "item": "i", "type": "view", "ts": 5}).encode(), 0, 0, T0), "ts_too_old"),
    (
        Incoming(b"u", b'{"user": "u", "item": "i", "type": "view", "ts": 1700000000000, "dwell": NaN}', 0, 0, T0),
        "bad_dwell",
    ),
    (
        Incoming(
            b"u", json.dumps({"user": "u", "item": "i", "type": "view", "ts": T0, "dwell": -3}).encode(), 0, 0, T0
        ),
        "bad_dwell",
    ),
    (
        Incoming(
            b"u",
            json.dumps(
                {"user": "u", "item": "i", "type": "view", "ts": T0, "dwell": math.inf}, allow_nan=True
            ).encode(),
            0,
            0,
            T0,
        ),
        "bad_dwell",
    ),
    (
        Incoming(b"other", json.dumps({"user": "u", "item": "i", "type": "view", "ts": T0}).encode(), 0, 0, T0),
        "key_mismatch",
    ),
    (
        Incoming(None, json.dumps({"user": "u", "item": "i", "type": "view", "ts": T0}).encode(), 0, 0, T0),
        "missing_key",
    ),
    (
        Incoming(b"u", json.dumps({"user": "x" * 300, "item": "i", "type": "view", "ts": T0}).encode(), 0, 0, T0),
        "bad_user",
    ),
    (
        Incoming(
            b"u", json.dumps({"user": "u", "item": "i", "type": "view", "ts": T0, "category": ["a"]}).encode(), 0, 0, T0
        ),
        "bad_category",
    ),
    (
        Incoming(
            b"u",
            json.dumps({"user": "u", "item": "i", "type": "view", "ts": T0, "category": "c" * 300}).encode(),
            0,
            0,
            T0,
        ),
        "bad_category",
    ),
]


@pytest.mark.parametrize("bad,reason", BAD)
def test_every_kind_of_bad_input_is_dead_lettered_with_its_reason(proc, bad, reason):
    store = Store()
    good_before, good_after = msg("g", "i1", offset=1), msg("g", "i4", offset=3)
    bad.offset = 2
    res = proc.process([good_before, bad, good_after], store.load)
    assert [(d.reason, d.value, d.offset) for d in res.dead] == [(reason, bad.value, 2)]
    assert res.accepted == 2 and set(res.states[b"g"].profile.items) == {"i1", "i4"}
    assert sample(proc, "streamrec_events_rejected_total", {"reason": reason}) == 1


def test_unknown_fields_are_ignored(proc):
    res = proc.process([msg("g", "i1", offset=0, colour="blue", nested={"a": [1]})], Store().load)
    assert res.accepted == 1 and not res.dead


def test_one_message_per_user_per_batch_with_the_latest_item_as_query(proc):
    store = Store()
    batch = [msg("a", "i1", offset=0), msg("b", "i2", offset=1), msg("a", "i4", offset=2, ts=T0 + 5)]
    res = proc.process(batch, store.load)
    out = {k: json.loads(v) for k, v in res.messages}
    assert set(out) == {b"a", b"b"} and len(res.messages) == 2
    assert out[b"a"]["query"] == "i4" and out[b"a"]["event_ts"] == T0 + 5 and out[b"a"]["offset"] == 2
    assert out[b"a"]["model_version"] == proc.serving.version and out[b"a"]["source"] == "blend"
    assert len(out[b"a"]["items"]) == 5 and "i4" not in out[b"a"]["items"]
    assert sample(proc, "streamrec_recommendations_out_total", {"source": "blend"}) == 2
    assert sample(proc, "streamrec_event_to_publish_seconds_count") == 3


def test_redelivered_events_are_not_applied_twice(proc):
    store = Store()
    first = [msg("a", f"i{k}", offset=k, ts=T0 + k) for k in range(5)]
    store.apply(proc.process(first, store.load))
    # A crash before the input offset was committed: Kafka delivers 3..7 again, then new ones.
    again = [msg("a", f"i{k}", offset=k, ts=T0 + k) for k in range(3, 8)]
    res = proc.process(again, store.load)
    store.apply(res)
    assert res.duplicates == 2 and res.accepted == 3
    expected = build_profiles([ev("a", f"i{k}", "view", T0 + k) for k in range(8)], CFG)["a"]
    expected.offset = 7
    assert store[b"a"].profile == expected
    assert sample(proc, "streamrec_events_duplicate_total") == 2


def test_stored_state_equals_recsys_confidence_exactly(proc):
    store = Store()
    events = [
        ev("s", f"i{k % 4}", ["view", "addtocart", "transaction"][k % 3], T0 + k * 1000, dwell=float(k))
        for k in range(20)
    ]
    for k in range(0, 20, 6):  # in several batches
        chunk = [
            Incoming(b"s", json.dumps(e.to_dict()).encode(), 0, k + j, T0) for j, e in enumerate(events[k : k + 6])
        ]
        store.apply(proc.process(chunk, store.load))
    assert store[b"s"].profile.confidence(CFG) == build_profiles(events, CFG)["s"].confidence(CFG)


def test_cold_start_without_a_model_serves_stream_popularity():
    p = Processor(CFG, WorkerMetrics(CollectorRegistry()), top_n=3)
    store = Store()
    batch = [msg(f"u{k}", item, offset=k) for k, item in enumerate(["hot", "hot", "warm", "hot", "warm", "cold"])]
    res = p.process(batch, store.load)
    out = {json.loads(v)["user"]: json.loads(v) for _, v in res.messages}
    assert out["u5"]["source"] == "popular" and out["u5"]["model_version"] is None
    assert out["u5"]["items"] == ["hot", "warm", "cold"]


def test_live_hit_rate_hand_checked(proc):
    """Event 1 gives no check (nothing shown yet); each later event is checked against the list
    published after the previous batch."""
    store = Store()
    store.apply(proc.process([msg("h", "i1", offset=0)], store.load))
    shown = store[b"h"].last_items
    v = proc.serving.version
    store.apply(proc.process([msg("h", shown[0], offset=1, ts=T0 + 1)], store.load))  # hit
    missing = next(i for i in ("i2", "i5", "i8", "i11") if i not in store[b"h"].last_items)
    store.apply(proc.process([msg("h", missing, offset=2, ts=T0 + 2)], store.load))  # miss
    assert sample(proc, "streamrec_live_hit_checks_total", {"model_version": v}) == 2
    assert sample(proc, "streamrec_live_hits_total", {"model_version": v}) == 1
