"""The live system through Kafka gives the streaming evaluation's numbers (method `system`).

A small slice of real Taobao events goes through a real worker process on the real broker:
each user's training-window events first (in bulk), then their test events ONE AT A TIME,
waiting for the recommendation the worker publishes after each. The list on screen before
test event k is the one published after event k-1 (after the last training event for k=0).
`stream_evaluate` replays the same slice with the same model and configs, one event per
chunk (the worker scores one user per batch here, so the products are the same shape), and
must give the same lists, hence the same HR@10 / MRR@10.
"""

import json

import pytest

from recsys.confidence import build_profiles
from recsys.config import Config
from recsys.data.datasets import load_events, time_split
from recsys.evaluation.streaming import StreamEvalConfig, rank_of, stream_evaluate
from recsys.model.store import ModelStore
from recsys.model.train import TrainConfig, train
from streaming.kafka.admin import ensure_topics
from streaming.topics import topic_specs
from tests.conftest import require_dataset
from tests.stream_fixture import TopicReader, WorkerProcess, produce, stream_settings

pytestmark = pytest.mark.kafka


def worker_scoring():
    """The scoring the worker applies (Processor -> Recommender.recommend, re-visit term included)."""
    return Config().scoring


def test_worker_lists_and_hit_rate_equal_stream_eval(kafka_broker, tmp_path):
    events = load_events(require_dataset("taobao_small"))
    tr, te = time_split(events, test_fraction=0.2)
    ccfg = Config().confidence
    model, x, users = train(
        build_profiles(tr, ccfg), ccfg, TrainConfig(factors=16, iterations=10, num_threads=1), version="v-slice"
    )
    ModelStore(tmp_path / "models").save(model, publish=True)
    counts = {}
    for e in te:
        counts[e.user] = counts.get(e.user, 0) + 1
    slice_users = [u for u, c in sorted(counts.items(), key=lambda kv: -kv[1])][:3]
    test_slice = []
    for u in slice_users:
        test_slice += [e for e in te if e.user == u][:6]
    test_slice.sort(key=lambda e: e.ts)
    train_slice = [e for e in tr if e.user in slice_users]

    s = stream_settings(kafka_broker.bootstrap, partitions=2, batch_within_s=0.02)
    ensure_topics(s.bootstrap, topic_specs(s))
    worker = WorkerProcess(s, tmp_path, tmp_path / "models").start()
    recs = TopicReader(s.bootstrap, s.recommendations_topic)

    def send_and_wait(evs):
        last = evs[-1]
        produce(s.bootstrap, s.clickstream_topic, [(e.user.encode(), json.dumps(e.to_dict()).encode()) for e in evs])
        got = recs.read_until(
            lambda rs: any(
                r.key == last.user.encode()
                and json.loads(r.value)["event_ts"] == last.ts
                and json.loads(r.value)["query"] == last.item
                for r in rs
            ),
            timeout=30,
        )
        return [json.loads(r.value) for r in got if r.key == last.user.encode()][-1]

    try:
        on_screen = {}
        for u in slice_users:
            on_screen[u] = send_and_wait([e for e in train_slice if e.user == u])["items"]
        published_before = []  # the list on screen before each test event
        for e in test_slice:
            published_before.append(on_screen[e.user])
            msg = send_and_wait([e])
            assert msg["model_version"] == "v-slice"
            on_screen[e.user] = msg["items"]
    finally:
        recs.close()
        worker.stop()

    rep = stream_evaluate(
        train_slice,
        test_slice,
        ccfg=ccfg,
        scfg=worker_scoring(),
        model=model,
        user_factors=x,
        user_ids=users,
        keep_lists=("system",),
        ecfg=StreamEvalConfig(methods=("system",), chunk_max=1),
    )
    queries = {}
    live_ranks = []
    for e, shown in zip(test_slice, published_before, strict=True):  # the same skip rule: item already on screen
        p_query = (
            queries.get(e.user)
            or build_profiles([x for x in train_slice if x.user == e.user], ccfg)[e.user].history[-1]
        )
        queries[e.user] = e.item
        if e.item != p_query:
            live_ranks.append((e.user, e.item, shown, rank_of(e.item, shown, 10)))
    assert len(live_ranks) == rep["scored_events"] >= 10
    assert [(u, i, lst) for u, i, lst, _ in live_ranks] == [
        (r["user"], r["item"], r["lists"]["system"]) for r in rep["events"]
    ]
    hr = sum(r is not None for *_, r in live_ranks) / len(live_ranks)
    mrr = sum(1 / r for *_, r in live_ranks if r) / len(live_ranks)
    assert hr == pytest.approx(rep["methods"]["system"]["all"]["HR@10"])
    assert mrr == pytest.approx(rep["methods"]["system"]["all"]["MRR@10"])
