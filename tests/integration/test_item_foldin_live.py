"""New items before the next retrain, live: a real worker process on the real broker folds in an
item its model does not know from the users who touch it (streaming/worker/new_items.py), then
recommends it to a similar user and uses it as a query item; bad records on its topics are
dropped; a model swap replaces the folded rows."""

import json

import pytest

from recsys.confidence import ConfidenceConfig, build_profiles
from recsys.model.item_foldin import user_gram
from recsys.model.store import ModelStore
from recsys.model.train import TrainConfig, train
from streaming.jobs.retrain import announce
from streaming.kafka.admin import ensure_topics
from streaming.topics import topic_specs
from streaming.worker.new_items import encode_evidence, encode_row
from tests.helpers import T0, clustered_events, ev
from tests.stream_fixture import TopicReader, WorkerProcess, event_bytes, produce, stream_settings, wait_for

CONFIDENCE = ConfidenceConfig()  # the project's defaults

pytestmark = pytest.mark.kafka

CLUSTER1 = [f"i{k}" for k in range(1, 60, 3)]


def cluster1(items):
    return all(i in CLUSTER1 or i == "new-1" for i in items)


def train_with_gram(store, events, seed):
    # 4 factors for 3 clusters: the few spare directions hold little noise for the new rows to pick up
    model, x, _ = train(
        build_profiles(events, CONFIDENCE), CONFIDENCE, TrainConfig(factors=4, iterations=8, random_state=seed)
    )
    store.save(model, publish=True, user_gram=user_gram(x))
    return model


@pytest.fixture(scope="module")
def live(kafka_broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("newitems")
    s = stream_settings(kafka_broker.bootstrap, partitions=2, batch_within_s=0.02)
    ensure_topics(s.bootstrap, topic_specs(s))
    store = ModelStore(tmp / "models")
    first = train_with_gram(store, clustered_events(seed=1), seed=1)
    worker = WorkerProcess(
        s, tmp, store.root, env={"STREAMREC_ITEM_FOLDIN_REFRESH_S": "0.3", "STREAMREC_TOP_N": "60"}
    ).start()
    recs = TopicReader(s.bootstrap, s.recommendations_topic)
    yield s, worker, store, first, recs
    recs.close()
    worker.stop()


def last_rec(recs, user, query):
    recs.read_until(lambda rs: any(r.key == user.encode() and json.loads(r.value)["query"] == query for r in rs))
    return [json.loads(r.value) for r in recs.records if r.key == user.encode()][-1]


def similar(worker, item, version):
    """/similar/<item>/ once the worker serves it under `version` (else None)."""
    status, body = worker.get(f"/similar/{item}/?n=5")
    return body if status == 200 and body["model_version"] == version else None


def similar_to_cluster1(worker, item, version):
    """... and its neighbours are cluster 1: a row from all its users is served (rows from the
    first users of a batch may come first)."""
    body = similar(worker, item, version)
    return body if body and cluster1(body["items"]) else None


def test_new_item_is_folded_in_recommended_and_used_as_query_before_any_retrain(live):
    s, worker, store, first, recs = live
    assert similar(worker, "new-1", first.version) is None  # the model does not know it
    shoppers = [f"a{k}" for k in range(6)]  # cluster-1 shoppers, each their own items, then the new one
    produce(
        s.bootstrap,
        s.clickstream_topic,
        [event_bytes(u, i) for k, u in enumerate(shoppers) for i in CLUSTER1[3 * k : 3 * k + 4]]
        + [event_bytes(u, "new-1", "addtocart") for u in shoppers],
    )
    rows = TopicReader(s.bootstrap, s.item_factors_topic)
    try:  # a row folded from all six users is published ...
        rows.read_until(lambda rs: any(json.loads(r.value)["users"] == 6 for r in rs), timeout=30)
        row = json.loads(rows.records[-1].value)
    finally:
        rows.close()
    assert rows.records[-1].key == b"new-1" and row["v"] == first.version and len(row["y"]) == first.factors
    # ... and served: similar to its cluster (the view) ...
    wait_for(lambda: similar_to_cluster1(worker, "new-1", first.version), 20, "new-1 served, near cluster 1")
    assert worker.metric("streamrec_new_items_served") == 1
    assert worker.metric("streamrec_items_folded_in_total") >= 1
    assert worker.metric("streamrec_item_evidence_sent_total") >= 6
    assert worker.metric("streamrec_item_evidence_total", {"result": "accepted"}) >= 6
    # ... recommended to a similar shopper ahead of every other cluster's item ...
    produce(s.bootstrap, s.clickstream_topic, [event_bytes("b", "i13"), event_bytes("b", "i16")])
    got = last_rec(recs, "b", "i16")
    assert got["model_version"] == first.version and "new-1" in got["items"]
    others = [r for r, i in enumerate(got["items"]) if i not in CLUSTER1 and i != "new-1"]
    assert got["items"].index("new-1") < min(others), got["items"]
    # ... and a query item: a shopper who saw only the new item gets its cluster (blend, not popular).
    produce(s.bootstrap, s.clickstream_topic, [event_bytes("c", "new-1")])
    got = last_rec(recs, "c", "new-1")
    assert got["source"] == "blend" and cluster1(got["items"][:5]), got


def test_bad_records_on_the_new_item_topics_are_dropped(live):
    s, worker, store, first, recs = live
    f = first.factors
    good = json.loads(encode_evidence(first.version, "new-9", "z", [0.1] * f, 2.0))
    produce(
        s.bootstrap,
        s.item_evidence_topic,
        [
            (b"new-9", b"{broken"),
            (None, b"[]"),
            (b"new-9", b"\xff\xfe"),
            (b"new-9", json.dumps({**good, "x": [0.1] * (f + 1)}).encode()),  # wrong dimension
            (b"new-9", json.dumps({**good, "c": float("nan")}).encode()),
            (b"other", json.dumps(good).encode()),  # key is not the item
        ],
    )
    y = [float(v) for v in first.item_factors[first.item_index["i4"]]]
    produce(
        s.bootstrap,
        s.item_factors_topic,
        [
            (b"new-8", b"{broken"),
            (b"new-6", encode_row(first.version, "new-5", y, 3)),  # key is not the item
            (b"new-8", encode_row(first.version, "new-8", [1.0] * (f + 2), 3)),  # wrong dimension: read, not served
            (b"new-7", encode_row(first.version, "new-7", y, 3)),  # well-formed: served after it
        ],
    )
    wait_for(
        lambda: worker.metric("streamrec_item_evidence_total", {"result": "rejected"}) >= 6, 20, "bad evidence counted"
    )
    wait_for(
        lambda: worker.metric("streamrec_item_factor_rows_total", {"result": "rejected"}) >= 2, 20, "bad rows counted"
    )
    assert wait_for(lambda: similar(worker, "new-7", first.version), 20, "the good row served")["items"][0] == "i4"
    assert similar(worker, "new-8", first.version) is None and similar(worker, "new-1", first.version)
    assert worker.proc.poll() is None and worker.metric("streamrec_new_items_served") == 2
    produce(s.bootstrap, s.clickstream_topic, [event_bytes("d", "i19")])
    assert last_rec(recs, "d", "i19")["model_version"] == first.version


def test_a_model_swap_replaces_the_folded_rows(live):
    s, worker, store, first, recs = live
    # The retrain saw new-1 (cluster-1 shoppers bought it): it is a trained item of the new model.
    extra = [ev(f"u{k}", "new-1", "view", T0 + 10**7 + k) for k in range(1, 120, 3)][:12]
    second = train_with_gram(store, clustered_events(seed=1) + extra, seed=3)
    assert "new-1" in second.item_index
    announce(s.bootstrap, s.model_updates_topic, second.version)
    wait_for(lambda: worker.get("/health")[1]["model_version"] == second.version, 30, "swap to the retrained model")
    assert worker.metric("streamrec_new_items_served") == 0  # the folded rows are gone ...
    assert cluster1(similar(worker, "new-1", second.version)["items"])  # ... new-1 is a trained row now
    # A new item under the new model is folded in again, against its own XᵀX; v1's rows stay out.
    produce(
        s.bootstrap,
        s.clickstream_topic,
        [event_bytes(f"e{k}", i) for k in range(4) for i in CLUSTER1[10 + 2 * k : 13 + 2 * k]]
        + [event_bytes(f"e{k}", "new-2", "addtocart") for k in range(4)],
    )
    wait_for(lambda: similar_to_cluster1(worker, "new-2", second.version), 20, "new-2 served under the new model")
    assert worker.metric("streamrec_new_items_served") == 1
