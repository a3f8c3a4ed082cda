"""`recsys retrain --once` trains the version's ranker from the recent clickstream on a real broker.

Real events (taobao_small) go into the clickstream; a real worker applies them (the state
changelog the retrain reads) and serves the version it started with, trained on their first 60%.
The retrain reads the clickstream window (records older than the window, and bad records, are
left out: the bad ones counted by reason), scores its examples with that serving version (it has
not seen the later 40%), fits the ranker, gates it against the blend's lists on held-out example
events and publishes it with the version, checksummed, its figures in the metadata and the JSON
line. The worker swaps to the version and serves ranked lists (source "ranker"). Without a
clickstream the version goes out without a ranker and the JSON line says why.
"""

import json
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from kafka import KafkaProducer

from recsys.candidates.ranker import Ranker
from recsys.confidence import build_profiles
from recsys.config import Config
from recsys.data.datasets import load_events, time_split
from recsys.model.store import ModelStore
from streaming.jobs.changelog import read_profiles
from streaming.jobs.retrain import retrain_once
from streaming.kafka import clients
from streaming.kafka.admin import ensure_topics
from streaming.topics import topic_specs
from streaming.worker.state import UserState, encode
from tests.conftest import require_dataset
from tests.stream_fixture import TopicReader, WorkerProcess, produce, settings_env, stream_settings, wait_for

pytestmark = pytest.mark.kafka

CFG = Config()
RANKER_ENV = {  # small enough for a test on taobao_small's 2,923 events
    "STREAMREC_RANKER_MAX_EXAMPLES": "1200",
    "STREAMREC_RANKER_N_ESTIMATORS": "30",
    "STREAMREC_RANKER_MIN_EXAMPLES": "50",
    "STREAMREC_RANKER_GATE_FRACTION": "0.3",
}


@pytest.fixture(scope="module")
def events():
    return sorted(load_events(require_dataset("taobao_small")), key=lambda e: e.ts)


def retrain(s, model_dir, **env) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "streaming.cli.main", "retrain", "--once"],
        env={**settings_env(s), "STREAMREC_MODEL_DIR": str(model_dir), **RANKER_ENV, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(done.stdout.strip().splitlines()[-1])


def test_the_retrain_publishes_a_gated_ranker_the_worker_serves(kafka_broker, tmp_path, events):
    s = stream_settings(kafka_broker.bootstrap, partitions=2, batch_within_s=0.02)
    ensure_topics(s.bootstrap, topic_specs(s))
    store = ModelStore(tmp_path / "models")
    head, _ = time_split(events, test_fraction=0.4)
    off = replace(CFG, ranker=replace(CFG.ranker, retrain=False))
    first = retrain_once(build_profiles(head, CFG.confidence), store, s, config=off)
    assert first.version and store.ranker(first.version) is None

    worker = WorkerProcess(s, tmp_path, store.root).start()
    recs = TopicReader(s.bootstrap, s.recommendations_topic)
    try:
        # Two days old by the brokers' clock: applied by the worker, outside the retrain's window.
        old = KafkaProducer(bootstrap_servers=s.bootstrap, acks="all", **clients.kafka_python())
        two_days_ago = int((time.time() - 48 * 3600) * 1000)
        for i in range(20):
            body = {"user": f"old-{i}", "item": events[i].item, "type": "view", "ts": two_days_ago}
            old.send(
                s.clickstream_topic, key=f"old-{i}".encode(), value=json.dumps(body).encode(), timestamp_ms=two_days_ago
            )
        old.flush()
        old.close()
        bad = [(b"u-bad", b"{not json"), (b"someone-else", json.dumps(events[0].to_dict()).encode())]
        produce(
            s.bootstrap,
            s.clickstream_topic,
            [(e.user.encode(), json.dumps(e.to_dict()).encode()) for e in events] + bad,
        )
        wait_for(
            lambda: sum(p.events for p in read_profiles(s.bootstrap, s.changelog_topic).values()) == len(events) + 20,
            120,
            "every event in the state changelog",
        )

        done, out = retrain(s, store.root)
        assert out["result"] == "published", out
        rk = out["ranker"]
        assert rk["published"], rk
        assert rk["window"]["records"] == len(events) + len(bad)  # the old records are outside the window
        assert rk["window"]["events"] == len(events)
        assert rk["window"]["skipped"] == {"bad_json": 1, "key_mismatch": 1}
        assert rk["model"] == f"serving {first.version}"  # it had not seen the example events
        assert "reading the clickstream window" in done.stderr
        version = out["version"]
        data = store.ranker(version)  # the checksum of the version's files verified
        assert data is not None
        Ranker.from_bytes(data, sha256=rk["sha256"])
        meta = store.metadata(version)
        assert meta["ranker"]["gate"]["passed"] and meta["ranker"]["gate_events"] >= 30
        assert set(meta["ranker"]["holdout"]) == {"ranker", "fallback"}
        assert {"ranker_read_s", "ranker_train_s", "ranker_wait_s"} <= set(out["phases"])

        wait_for(lambda: worker.get("/health")[1]["model_version"] == version, 60, "the worker swaps to it")
        user = events[-1].user  # a user with history: the ranker orders their list
        produce(
            s.bootstrap,
            s.clickstream_topic,
            [
                (
                    user.encode(),
                    json.dumps({**events[-1].to_dict(), "ts": events[-1].ts + 1000, "item": events[0].item}).encode(),
                )
            ],
        )

        def ranked(rs):
            return [
                m for m in (json.loads(r.value) for r in rs if r.key == user.encode()) if m["model_version"] == version
            ]

        got = ranked(recs.read_until(lambda rs: bool(ranked(rs)), timeout=60))
        assert got[-1]["source"] == "ranker", got[-1]
    finally:
        recs.close()
        worker.stop()


def test_without_a_clickstream_the_version_goes_out_without_a_ranker(kafka_broker, tmp_path, events):
    s = stream_settings(kafka_broker.bootstrap, partitions=2)
    ensure_topics(s.bootstrap, topic_specs(s))
    ensure_topics(s.bootstrap, {s.changelog_topic: 2}, config={"cleanup.policy": "compact"})  # as a worker makes it
    profiles = build_profiles(events, CFG.confidence)
    produce(s.bootstrap, s.changelog_topic, [(u.encode(), encode(UserState(p))) for u, p in profiles.items()])
    store = ModelStore(tmp_path / "models")
    done, out = retrain(s, store.root)
    assert out["result"] == "published" and store.current() == out["version"]
    assert not out["ranker"]["published"]
    assert "no ranker: no events in the window" in out["ranker"]["note"]
    assert "has no record in the window" in out["ranker"]["note"]
    assert store.ranker(out["version"]) is None  # the blend serves
