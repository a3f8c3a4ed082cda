"""The streaming pipeline against the real broker and a real worker process."""

import json
import shutil
import subprocess
import sys
import time

import pytest

from recsys.confidence import ConfidenceConfig, build_profiles
from recsys.events import Event
from recsys.model.store import ModelStore
from streaming.jobs.retrain import announce
from streaming.kafka.admin import ensure_topics
from streaming.topics import topic_specs
from streaming.worker.state import decode
from tests.helpers import clustered_events, train_into
from tests.stream_fixture import TopicReader, WorkerProcess, event_bytes, produce, settings_env, stream_settings

CONFIDENCE = ConfidenceConfig()  # the project's defaults

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def pipeline(kafka_broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    s = stream_settings(kafka_broker.bootstrap, partitions=3, batch_within_s=0.02)
    ensure_topics(s.bootstrap, topic_specs(s))
    store = ModelStore(tmp / "models")
    first = train_into(store, seed=1)
    worker = WorkerProcess(s, tmp, tmp / "models").start()
    recs = TopicReader(s.bootstrap, s.recommendations_topic)
    yield s, worker, store, first, recs, tmp
    recs.close()
    worker.stop()


def recs_for(reader, user, after_offset=-1):
    return [
        json.loads(r.value)
        for r in reader.records
        if r.key == user.encode() and json.loads(r.value)["offset"] > after_offset
    ]


def test_events_produce_a_recommendation_within_seconds_naming_the_model(pipeline):
    s, worker, store, first, recs, _ = pipeline
    t0 = time.time()
    produce(s.bootstrap, s.clickstream_topic, [event_bytes("alice", "i4"), event_bytes("alice", "i7")])
    recs.read_until(lambda rs: any(r.key == b"alice" for r in rs), timeout=15)
    got = recs_for(recs, "alice")[-1]
    assert got["model_version"] == first.version and got["source"] == "blend"
    assert len(got["items"]) == s.top_n
    assert all(int(i[1:]) % 3 == 1 for i in got["items"][:3])  # alice browses cluster 1
    assert got["published_ts"] - got["ingest_ts"] < 5000
    assert time.time() - t0 < 15


def test_stored_state_equals_recsys_confidence_exactly(pipeline, kafka_broker):
    s, worker, *_, recs, _ = pipeline
    ts = int(time.time() * 1000)
    events = [
        Event(
            "bob",
            f"i{k % 5}",
            ["view", "addtocart", "transaction", "favorite"][k % 4],
            ts + k * 1000,
            dwell=float(k * 3) if k % 2 else None,
        )
        for k in range(12)
    ]
    produce(s.bootstrap, s.clickstream_topic, [(b"bob", json.dumps(e.to_dict()).encode()) for e in events])
    recs.read_until(
        lambda rs: (
            sum(
                1
                for r in rs
                if r.key == b"bob"
                and json.loads(r.value)["offset"] >= 0
                and json.loads(r.value)["event_ts"] == events[-1].ts
            )
            >= 1
        ),
        timeout=15,
    )
    changelog = TopicReader(s.bootstrap, s.changelog_topic)
    try:
        changelog.read_until(lambda rs: any(r.key == b"bob" and decode(r.value).profile.events == 12 for r in rs))
        state = [decode(r.value) for r in changelog.records if r.key == b"bob"][-1]
    finally:
        changelog.close()
    expected = build_profiles(events, CONFIDENCE)["bob"]
    assert state.profile.confidence(CONFIDENCE) == expected.confidence(CONFIDENCE)
    assert state.profile.items == expected.items and state.profile.history == expected.history
    status, body = worker.get("/recommendations/bob/")
    assert status == 200 and body["items"] == recs_for(recs, "bob")[-1]["items"]


def test_malformed_messages_go_to_the_dlq_and_good_ones_around_them_are_applied(pipeline):
    s, worker, *_, recs, _ = pipeline
    now = int(time.time() * 1000)
    bad = [
        (b"carol", b"\xff\xfe not utf-8"),
        (b"carol", b"{broken json"),
        (b"carol", b"[1,2,3]"),
        (b"carol", json.dumps({"user": "carol", "type": "view", "ts": now}).encode()),
        (b"carol", json.dumps({"user": "carol", "item": ["x"], "type": "view", "ts": now}).encode()),
        (b"carol", json.dumps({"user": "carol", "item": "i1", "type": "teleport", "ts": now}).encode()),
        (b"carol", json.dumps({"user": "carol", "item": "i1", "type": "view", "ts": now + 10**10}).encode()),
        (b"carol", b'{"user":"carol","item":"i1","type":"view","ts":%d,"dwell":-1}' % now),
        (b"carol", b'{"user":"carol","item":"i1","type":"view","ts":%d,"dwell":NaN}' % now),
        (b"mallory", json.dumps({"user": "carol", "item": "i1", "type": "view", "ts": now}).encode()),
    ]
    reasons = {
        "bad_utf8",
        "bad_json",
        "not_an_object",
        "missing_item",
        "bad_item",
        "unknown_type",
        "ts_in_future",
        "bad_dwell",
        "key_mismatch",
    }
    good = [event_bytes("carol", f"i{k}", ts=now + k) for k in (1, 4, 7)]
    produce(s.bootstrap, s.clickstream_topic, [good[0], *bad[:5], good[1], *bad[5:], good[2]])
    dlq = TopicReader(s.bootstrap, s.dlq_topic)
    try:
        dlq.read_until(lambda rs: len(rs) >= len(bad), timeout=20)
        got = {(r.value, dict(r.headers)["reason"].decode()) for r in dlq.records}
    finally:
        dlq.close()
    assert {v for v, _ in got} >= {v for _, v in bad}  # original bytes kept
    assert {r for _, r in got} == reasons  # each with its reason
    assert worker.proc.poll() is None and worker.get("/health")[0] == 200
    recs.read_until(lambda rs: any(r.key == b"carol" and json.loads(r.value)["query"] == "i7" for r in rs))
    status, body = worker.get("/recommendations/carol/")
    assert status == 200 and body["events"] == 3
    assert worker.metric("streamrec_events_rejected_total") >= len(bad)
    assert worker.metric("streamrec_events_rejected_total", {"reason": "bad_dwell"}) >= 2


def test_http_lookup_similar_and_metrics(pipeline):
    s, worker, store, first, recs, _ = pipeline
    before = worker.metric("streamrec_events_in_total", {"type": "addtocart"})
    produce(
        s.bootstrap,
        s.clickstream_topic,
        [event_bytes("dave", "i2", "addtocart"), event_bytes("dave", "i5", "addtocart")],
    )
    recs.read_until(lambda rs: any(r.key == b"dave" and json.loads(r.value)["query"] == "i5" for r in rs))
    status, body = worker.get("/recommendations/dave/")
    assert status == 200 and body["items"] == recs_for(recs, "dave")[-1]["items"]
    assert worker.get("/recommendations/nobody-here/")[0] == 404
    status, body = worker.get("/similar/i4/?n=4")
    assert status == 200 and len(body["items"]) == 4 and "i4" not in body["items"]
    assert worker.get("/similar/no-such-item/")[0] == 404
    assert worker.metric("streamrec_events_in_total", {"type": "addtocart"}) == before + 2
    assert worker.metric("streamrec_model_info", {"version": first.version}) == 1
    assert worker.metric("streamrec_event_to_publish_seconds_count") >= 2
    assert worker.metric("streamrec_users_in_state") >= 1
    lag = worker.metric("streamrec_consumer_lag")
    assert lag >= 0


def test_retrain_lands_worker_swaps_and_corrupt_version_is_refused(pipeline):
    s, worker, store, first, recs, tmp = pipeline
    # Enough traffic for a retrain to learn from the state changelog.
    now = int(time.time() * 1000)
    traffic = [event_bytes(e.user, e.item, ts=now + k) for k, e in enumerate(clustered_events(n_users=60, seed=4))]
    produce(s.bootstrap, s.clickstream_topic, traffic)
    recs.read_until(lambda rs: sum(1 for r in rs if r.key == b"u59") >= 1, timeout=30)
    env = {**settings_env(s)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "streaming.cli.main",
            "retrain",
            "--once",
            "--bootstrap",
            s.bootstrap,
            "--model-dir",
            str(store.root),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**__import__("os").environ, **env},
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["result"] == "published" and result["users"] >= 60
    new = result["version"]
    assert new != first.version and store.current() == new

    def next_rec(user, item):
        produce(s.bootstrap, s.clickstream_topic, [event_bytes(user, item)])
        recs.read_until(lambda rs: any(r.key == user.encode() and json.loads(r.value)["query"] == item for r in rs))
        return [json.loads(x.value) for x in recs.records if x.key == user.encode()][-1]

    deadline = time.time() + 30
    while worker.get("/health")[1]["model_version"] != new and time.time() < deadline:
        time.sleep(0.2)
    assert next_rec("erin", "i1")["model_version"] == new

    # A corrupt version, announced: refused, the old one keeps serving.
    bad = train_into(store, seed=7)
    f = store.root / bad.version / "item_factors.npy"
    f.write_bytes(f.read_bytes()[:-16] + b"\x01" * 16)
    refused_before = worker.metric("streamrec_model_loads_total", {"result": "refused"})
    announce(s.bootstrap, s.model_updates_topic, bad.version)
    deadline = time.time() + 30
    while worker.metric("streamrec_model_loads_total", {"result": "refused"}) == refused_before:
        assert time.time() < deadline, worker.tail()
        time.sleep(0.2)
    assert next_rec("erin", "i2")["model_version"] == new
    shutil.rmtree(store.root / bad.version)
    store.publish(new)
