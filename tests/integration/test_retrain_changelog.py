"""`recsys retrain --once` on a live worker's state changelog: read in arrays, trained once, gated,
published, and the worker swaps to it. A foreign record in the changelog is skipped and logged
with its key; an empty changelog is one clear error."""

import json
import subprocess
import sys

import pytest

from recsys.model.store import ModelStore
from streaming.jobs.changelog import read_profiles
from streaming.kafka.admin import ensure_topics
from streaming.topics import topic_specs
from tests.helpers import clustered_events, train_into
from tests.stream_fixture import WorkerProcess, event_bytes, produce, settings_env, stream_settings, wait_for

pytestmark = pytest.mark.kafka


def retrain_once(s, model_dir, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streaming.cli.main", "retrain", "--once"],
        env={
            **settings_env(s),
            "STREAMREC_MODEL_DIR": str(model_dir),
            "STREAMREC_TRAIN_FACTORS": "8",
            "STREAMREC_TRAIN_ITERATIONS": "6",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_retrain_once_on_the_changelog_publishes_a_model_the_worker_swaps_to(kafka_broker, tmp_path):
    s = stream_settings(kafka_broker.bootstrap, partitions=2, batch_within_s=0.02)
    ensure_topics(s.bootstrap, topic_specs(s))
    store = ModelStore(tmp_path / "models")
    first = train_into(store, seed=1)
    worker = WorkerProcess(s, tmp_path, store.root).start()
    try:
        events = clustered_events(n_users=300, seed=2)
        produce(s.bootstrap, s.clickstream_topic, [event_bytes(e.user, e.item, e.type, e.ts) for e in events])
        users = {e.user for e in events}
        wait_for(
            lambda: sum(p.events for p in read_profiles(s.bootstrap, s.changelog_topic).values()) == len(events),
            90,
            "every event in the state changelog",
        )
        produce(s.bootstrap, s.changelog_topic, [(b"intruder", b'{"not": "a state record"}')])

        done = retrain_once(s, store.root)
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["result"] == "published" and out["users"] == len(users)
        assert out["gate"]["cases"] >= 30  # held out of the one training, judged by fold-in
        assert {"read_decode_s", "fit_s", "gate_s", "save_s"} <= set(out["phases"]) and out["peak_rss_mb"] > 0
        assert "skipping unreadable state record for key b'intruder'" in done.stderr
        version = out["version"]
        assert version != first.version and store.current() == version
        meta = store.metadata(version)
        assert meta["n_users"] == len(users) - out["gate"]["cases"]  # trained once, without the held-out users
        assert meta["fit"]["warm_start_from"] == first.version  # started from the serving model's items

        wait_for(lambda: worker.get("/health")[1]["model_version"] == version, 60, "the worker swaps to it")
    finally:
        worker.stop()


def test_an_empty_changelog_is_one_clear_error(kafka_broker, tmp_path):
    s = stream_settings(kafka_broker.bootstrap, partitions=2)
    ensure_topics(s.bootstrap, topic_specs(s))
    missing = retrain_once(s, tmp_path / "models")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert f"the state changelog {s.changelog_topic} does not exist" in missing.stderr
    ensure_topics(s.bootstrap, {s.changelog_topic: 2}, config={"cleanup.policy": "compact"})
    empty = retrain_once(s, tmp_path / "models")
    assert empty.returncode != 0 and "Traceback" not in empty.stderr
    assert f"the state changelog {s.changelog_topic} is empty" in empty.stderr
