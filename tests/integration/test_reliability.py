"""Issue 5: no click lost or counted twice through crashes, restarts and broker restarts.

Real `recsys worker` processes on the real broker, killed with SIGKILL for real. The truth
is recsys.confidence.build_profiles over the events that were sent: the state codec is exact,
so every user's final state (read back from the table's changelog topic, which is what any
worker restores from) must equal it field for field: no event lost, none applied twice.

    STREAMREC_CRASH_REPEAT=20 .venv/bin/python -m pytest -q tests/integration/test_reliability.py -k crash

runs the crash test 20 times in a row (fresh topics, a fresh worker and a fresh random kill
schedule each time); the default run does it once. STREAMREC_CRASH_KILLS (default 3) sets
the SIGKILLs per run. Figures go to stdout (`-s`) and to out/reliability.jsonl.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devtools.broker import KafkaBroker
from recsys.confidence import ConfidenceConfig, build_profiles
from recsys.events import EVENT_TYPES, Event
from recsys.model.store import ModelStore
from recsys.model.train import TrainConfig, train
from streaming.jobs.replay import encode_event, make_producer, replay
from streaming.kafka.admin import ensure_topics
from streaming.topics import topic_specs
from tests.helpers import clustered_events
from tests.stream_fixture import (
    TopicReader,
    WorkerProcess,
    changelog_profiles,
    profile_diff,
    settings_env,
    stream_settings,
    wait_for,
)

CONFIDENCE = ConfidenceConfig()  # the project's defaults

pytestmark = pytest.mark.kafka

REPEAT = int(os.environ.get("STREAMREC_CRASH_REPEAT", "1"))
KILLS = int(os.environ.get("STREAMREC_CRASH_KILLS", "3"))
# A SIGKILLed worker keeps its partitions until its group session times out; the broker's
# minimum is 6 s. Production uses the worker's default (10 s, see streaming/worker/app.py).
FAST_GROUP = {"STREAMREC_BROKER_SESSION_TIMEOUT_S": "6", "STREAMREC_BROKER_HEARTBEAT_INTERVAL_S": "1"}
ROOT = Path(__file__).resolve().parents[2]


def report(name: str, **figures) -> None:
    """Print a test's figures and append them to out/reliability.jsonl (for docs/reliability.md)."""
    line = {"test": name, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures}
    print(f"\nRELIABILITY {json.dumps(line)}")
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    with open(out / "reliability.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def known_stream(n_events: int, n_users: int, seed: int, n_items: int = 60, t0: int | None = None) -> list[Event]:
    """A reproducible clickstream: skewed users, items i0..i{n_items-1} (the test model's
    catalogue), every event type, dwell on some, strictly increasing times (1 ms apart)."""
    rng = random.Random(seed)
    t0 = t0 if t0 is not None else int(time.time() * 1000) - 3_600_000
    users = [f"u{seed}-{k}" for k in range(n_users)]
    weights = [1.0 / (1 + k) ** 0.7 for k in range(n_users)]
    types = list(EVENT_TYPES)
    out = []
    for k in range(n_events):
        user = rng.choices(users, weights)[0]
        type_ = rng.choices(types, (50, 20, 10, 12, 8))[0]
        dwell = round(rng.uniform(0, 200), 3) if rng.random() < 0.3 else None
        out.append(Event(user, f"i{rng.randrange(n_items)}", type_, t0 + k, dwell=dwell))
    return out


class Feeder(threading.Thread):
    """Produces events at a steady rate (idempotent producer, acks=all) and counts progress."""

    def __init__(self, bootstrap: str, topic: str, events: list[Event], rate: float):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.events, self.rate = bootstrap, topic, events, rate
        self.submitted = 0
        self.acked = 0
        self.failed: list[BaseException] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        producer = make_producer(self.bootstrap)
        start = time.monotonic()
        try:
            for k, e in enumerate(self.events):
                due = start + k / self.rate
                while (left := due - time.monotonic()) > 0:
                    time.sleep(min(left, 0.05))
                key, value = encode_event(e)
                fut = producer.send(self.topic, key=key, value=value)
                fut.add_callback(self._ok)
                fut.add_errback(self._err)
                self.submitted = k + 1
            producer.flush(timeout=120)
        finally:
            producer.close(timeout=5)

    def _ok(self, _meta) -> None:
        with self.lock:
            self.acked += 1

    def _err(self, exc) -> None:
        with self.lock:
            self.failed.append(exc)


def train_small(store: ModelStore, seed: int = 1):
    profiles = build_profiles(clustered_events(seed=seed), CONFIDENCE)
    model, _, _ = train(profiles, CONFIDENCE, TrainConfig(factors=8, iterations=8, random_state=seed))
    store.save(model, publish=True)
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel-models")
    train_small(ModelStore(root))
    return root


def batches(worker: WorkerProcess) -> int:
    status, body = worker.get("/health", timeout=2)
    return body["batches"] if status == 200 and isinstance(body, dict) else -1


class Supervisor:
    """Restarts a worker that stopped itself on purpose (fail-stop: exit 70, a record it could
    not deliver; 71, offsets the consumer skipped), as systemd or a container runtime would."""

    def __init__(self, worker: WorkerProcess):
        self.worker, self.restarts = worker, 0

    def tick(self) -> bool:
        p = self.worker.proc
        if p is not None and p.poll() is not None and p.returncode in (70, 71):
            self.restarts += 1
            self.worker.start(wait_ready=False)
        return True

    def start(self, timeout: float = 180.0) -> None:
        """Start the worker and wait until it is ready, restarting it if it stops itself."""
        self.worker.start(wait_ready=False)
        deadline = time.monotonic() + timeout
        while True:
            self.tick()
            if self.worker.get("/ready", timeout=2)[0] == 200:
                return
            p = self.worker.proc
            if p.poll() is not None and p.returncode not in (70, 71):
                raise RuntimeError(f"worker exited with {p.returncode}:\n{self.worker.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready in {timeout}s:\n{self.worker.tail()}")
            time.sleep(0.3)


def wait_state(s, expected: dict, timeout: float, what: str, tick=lambda: True) -> dict:
    """Wait until the changelog holds exactly the expected profiles; return the last diff."""
    last = {}

    def matches():
        nonlocal last
        tick()
        last = profile_diff(expected, changelog_profiles(s.bootstrap, s.changelog_topic))
        return last["differ"] == 0

    with contextlib.suppress(TimeoutError):  # the caller asserts on the last difference
        wait_for(matches, timeout, what, interval=1.0)
    return last


# ------------------------------------------------------------------------------------ crashes


@pytest.mark.parametrize("rep", range(REPEAT))
def test_crash_sigkill_at_random_points_loses_and_doubles_nothing(kafka_broker, model_dir, tmp_path, rep):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    s = stream_settings(kafka_broker.bootstrap, partitions=4, batch_within_s=0.02, batch_max=200)
    ensure_topics(s.bootstrap, topic_specs(s))
    events = known_stream(n_events=6000, n_users=250, seed=seed % 100_000)
    expected = build_profiles(events, CONFIDENCE)
    worker = WorkerProcess(s, tmp_path, model_dir, env=FAST_GROUP).start()
    sup = Supervisor(worker)
    feeder = Feeder(s.bootstrap, s.clickstream_topic, events, rate=300.0)
    # Kill points: fractions of the stream sent, plus a random delay once the worker is busy.
    points = sorted(rng.uniform(0.05, 0.95) for _ in range(KILLS))
    wiped = 0
    t0 = time.monotonic()
    feeder.start()
    try:
        for k, frac in enumerate(points):
            wait_for(
                lambda: sup.tick() and (feeder.submitted >= frac * len(events) or not feeder.is_alive()),
                120,
                "the feeder reaching the kill point",
            )
            # Kill while the worker is busy: after it has handled one more batch. Once the whole
            # stream is sent and handled no batch will come, and a quiet worker is a kill point too.
            b0 = batches(worker)
            wait_for(
                lambda: sup.tick() and (batches(worker) > b0 or not feeder.is_alive()),
                60,
                "the worker processing a batch",
            )
            time.sleep(rng.uniform(0, 0.5))  # a random point in the worker's work, not a correctness wait
            worker.kill()
            # Every other restart also loses the worker's local RocksDB: it must then restore from
            # the changelog (the local-ahead-of-changelog case is what the idempotence must survive).
            if k % 2 == 1:
                shutil.rmtree(worker.data_dir, ignore_errors=True)
                wiped += 1
            sup.start()
        feeder.join(timeout=180)
        assert not feeder.is_alive() and not feeder.failed, feeder.failed[:3]
        assert feeder.acked == len(events)
        diff = wait_state(s, expected, 180, "the changelog reaching the uninterrupted run's state", tick=sup.tick)
        sup.tick()
        duplicates = worker.metric("streamrec_events_duplicate_total")
        report(
            "crash",
            rep=rep,
            seed=seed,
            events=len(events),
            users=len(expected),
            kills=KILLS,
            wiped_restarts=wiped,
            fail_stop_restarts=sup.restarts,
            lost=diff["lost"],
            doubled=diff["doubled"],
            users_differing=diff["differ"],
            redelivered_skipped_last_process=duplicates,
            seconds=round(time.monotonic() - t0, 1),
        )
        assert diff["differ"] == 0 and diff["lost"] == 0 and diff["doubled"] == 0, (diff, worker.tail())
        # The worker serves what the changelog holds (its local state agrees).
        for user in rng.sample(sorted(expected), 10):
            status, body = worker.get(f"/recommendations/{user}/")
            assert status == 200 and body["events"] == expected[user].events, (user, status, body)
        assert worker.proc.poll() is None
    finally:
        worker.kill()
        feeder.join(timeout=5)


# --------------------------------------------------------------------- clean restart and wipe


def snapshot(worker: WorkerProcess, users) -> dict:
    out = {}
    for u in users:
        status, body = worker.get(f"/recommendations/{u}/")
        assert status == 200, (u, status, body)
        out[u] = (body["items"], body["model_version"], body["events"], body["published_ts"])
    return out


def restarted_log(worker: WorkerProcess, since: int) -> str:
    return worker.log_path.read_bytes()[since:].decode(errors="replace")


def test_clean_restart_resumes_from_rocksdb_and_wiped_restart_restores_from_changelog(
    kafka_broker, model_dir, tmp_path
):
    s = stream_settings(kafka_broker.bootstrap, partitions=4, batch_within_s=0.02)
    ensure_topics(s.bootstrap, topic_specs(s))
    events = known_stream(n_events=1500, n_users=80, seed=7)
    first, second = events[:1000], events[1000:]
    worker = WorkerProcess(s, tmp_path, model_dir, env=FAST_GROUP).start()
    try:
        assert replay(first, s.bootstrap, s.clickstream_topic, retime=False, progress=False).failed == 0
        diff = wait_state(s, build_profiles(first, CONFIDENCE), 60, "state of the first part")
        assert diff["differ"] == 0, diff
        users = sorted({e.user for e in first})
        before = snapshot(worker, users)

        # 1. Clean stop (SIGTERM) and restart: resumes from its local RocksDB, reads nothing back.
        assert worker.stop() == 0
        assert any(worker.data_dir.rglob("*.sst")) or any(worker.data_dir.rglob("*.log"))
        mark = worker.log_path.stat().st_size
        worker.start()
        log_local = restarted_log(worker, mark)
        assert "Restoring state from changelog topics" not in log_local, log_local[-3000:]
        assert snapshot(worker, users) == before

        # 2. Wipe its local data and restart: restores every user from the changelog.
        assert worker.stop() == 0
        shutil.rmtree(worker.data_dir)
        mark = worker.log_path.stat().st_size
        worker.start()
        assert "Restoring state from changelog topics" in restarted_log(worker, mark)
        assert snapshot(worker, users) == before  # same lists, same model version, same counts

        # 3. Both go on from there: the rest of the stream lands exactly once.
        assert replay(second, s.bootstrap, s.clickstream_topic, retime=False, progress=False).failed == 0
        diff = wait_state(s, build_profiles(events, CONFIDENCE), 60, "state after the second part")
        assert diff["differ"] == 0, diff
        for u in users[:10]:
            assert worker.get(f"/recommendations/{u}/")[1]["events"] == build_profiles(events, CONFIDENCE)[u].events
        report("restart", events=len(events), users=len(users), clean_restart_equal=True, wiped_restart_equal=True)
    finally:
        worker.stop()


# ------------------------------------------------------------------- broker stop and restart


@pytest.fixture
def private_broker(tmp_path):
    """A broker of this test's own (the session broker is shared): stopped and restarted on
    the same ports."""
    broker = KafkaBroker(data_dir=tmp_path / "kafka")
    broker.start(timeout=120)
    try:
        yield broker
    finally:
        broker.stop()


def test_broker_restart_mid_stream_worker_replay_and_retrain_carry_on(private_broker, tmp_path):
    b = private_broker
    s = stream_settings(b.bootstrap, partitions=3, batch_within_s=0.02)
    ensure_topics(s.bootstrap, topic_specs(s))
    models = tmp_path / "models"
    first = train_small(ModelStore(models))
    worker = WorkerProcess(s, tmp_path, models, env=FAST_GROUP).start()
    events = known_stream(n_events=2000, n_users=120, seed=11)
    stats_box: dict = {}
    # The replay producer (streaming/jobs/replay.py) runs through the outage: paced, so it is mid-stream.
    t = threading.Thread(
        target=lambda: stats_box.update(
            stats=replay(events, s.bootstrap, s.clickstream_topic, rate=250, retime=False, progress=False)
        ),
        daemon=True,
    )
    retrain = None
    try:
        t.start()
        wait_for(lambda: batches(worker) > 5, 60, "the worker processing")
        b0 = batches(worker)
        b.stop()  # controlled shutdown of the only broker
        assert not b.is_running()
        # The retrain job starts while the broker is down: it has to wait for it, not die.
        with open(tmp_path / "retrain.log", "wb") as retrain_log:  # the child keeps its own copy of the descriptor
            retrain = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streaming.cli.main",
                    "retrain",
                    "--every",
                    "2s",
                    "--bootstrap",
                    s.bootstrap,
                    "--model-dir",
                    str(models),
                ],
                stdout=retrain_log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **settings_env(s)},
                cwd=ROOT,
            )
        outage_started = time.monotonic()
        wait_for(lambda: time.monotonic() - outage_started > 3, 10, "an outage of a few seconds")
        b.start(timeout=120)  # same data dir, same ports
        t.join(timeout=240)
        assert not t.is_alive()
        stats = stats_box["stats"]
        assert stats.failed == 0 and stats.sent == len(events), stats.summary()
        diff = wait_state(s, build_profiles(events, CONFIDENCE), 180, "state after the broker restart")
        assert worker.proc.poll() is None, worker.tail()
        assert batches(worker) > b0
        report(
            "broker_restart",
            events=len(events),
            sent=stats.sent,
            lost=diff["lost"],
            doubled=diff["doubled"],
            users_differing=diff["differ"],
        )
        assert diff["differ"] == 0 and diff["lost"] == 0 and diff["doubled"] == 0, diff

        # The retrain job rode out the outage (runs that found no broker are counted as failed,
        # the job goes on) and, once the broker is back, published from the changelog.
        def published():
            assert retrain.poll() is None, (tmp_path / "retrain.log").read_text()[-3000:]
            return [
                o
                for o in (
                    json.loads(line)
                    for line in (tmp_path / "retrain.log").read_text().splitlines()
                    if line.startswith("{")
                )
                if o["result"] == "published"
            ]

        wait_for(published, 240, "the retrain job publishing after the broker restart")
        wait_for(
            lambda: worker.get("/health")[1]["model_version"] not in (None, first.version),
            60,
            "the worker swapping to the retrained model",
        )
    finally:
        if retrain is not None and retrain.poll() is None:
            retrain.kill()
            retrain.wait()
        worker.kill()
        t.join(timeout=5)


# ---------------------------------------------------------------- one enormous user history


def test_enormous_user_stays_bounded_and_does_not_hold_up_others(kafka_broker, model_dir, tmp_path):
    s = stream_settings(kafka_broker.bootstrap, partitions=4, batch_within_s=0.02, batch_max=500)
    ensure_topics(s.bootstrap, topic_specs(s))
    worker = WorkerProcess(s, tmp_path, model_dir, env=FAST_GROUP).start()
    try:
        t0 = int(time.time() * 1000) - 3_600_000
        n = 12_000
        # 12,000 events on 4,000 distinct items (20 x max_items), then others' events.
        huge = [Event("whale", f"w{k % 4000}", "view", t0 + k) for k in range(n)]
        from kafka.partitioner.default import murmur2

        def partition_of(user: str) -> int:
            return (murmur2(user.encode()) & 0x7FFFFFFF) % s.partitions

        others = [u for u in (f"minnow{k}" for k in range(200)) if partition_of(u) != partition_of("whale")][:20]
        small = [Event(u, "i1", "view", t0 + n + k) for k, u in enumerate(others)]
        producer = make_producer(s.bootstrap)
        for e in huge + small:
            key, value = encode_event(e)
            producer.send(s.clickstream_topic, key=key, value=value)
        producer.flush()
        producer.close()
        wait_for(
            lambda: worker.get("/recommendations/whale/")[1].get("events") == n, 300, "the whale's history applied"
        )
        recs = TopicReader(s.bootstrap, s.recommendations_topic)
        try:
            smalls = {e.user.encode() for e in small}
            recs.read_until(
                lambda rs: smalls <= {r.key for r in rs} and sum(1 for r in rs if r.key == b"whale") >= 1, timeout=60
            )
            # Everything published so far is in: read to the current end of every partition.
            end = recs.consumer.end_offsets(list(recs.consumer.assignment()))
            recs.read_until(lambda rs: all(recs.consumer.position(tp) >= o for tp, o in end.items()), timeout=60)
            whale_recs = sorted((r.timestamp, json.loads(r.value)["offset"]) for r in recs.records if r.key == b"whale")
            last_whale_ts = whale_recs[-1][0]
            firsts = {r.key: r.timestamp for r in reversed(recs.records) if r.key in smalls}
        finally:
            recs.close()
        expected = build_profiles(huge + small, CONFIDENCE)
        got = changelog_profiles(s.bootstrap, s.changelog_topic)
        diff = profile_diff(expected, got)
        assert diff["differ"] == 0, diff
        assert len(got["whale"].items) == CONFIDENCE.max_items and got["whale"].events == n
        # Users on other partitions were served while the whale's backlog was still being worked
        # through: their recommendations came out before the whale's last one.
        assert len(firsts) == len(small)
        # Broker timestamps of the recommendation records (one clock: the broker's append time
        # for these producer-stamped records is the worker's send time).
        ahead = sum(1 for ts in firsts.values() if ts <= last_whale_ts)
        whale_batches = len(whale_recs)
        report(
            "enormous_user",
            whale_events=n,
            whale_items=len(got["whale"].items),
            whale_batches=whale_batches,
            others=len(small),
            others_served_before_whale_finished=ahead,
        )
        assert ahead == len(small), (ahead, len(small), whale_batches)
    finally:
        worker.stop()


# ------------------------------------------------ the redelivery repair, without Kafka (exact)


def test_redelivered_events_already_in_state_rewrite_the_state_for_the_changelog():
    """The bug the crash test found: a worker killed after its RocksDB write but before the
    changelog record left holds a state *ahead* of the changelog. On restart the input is
    redelivered, the per-user offset says "already applied", and without a write the changelog
    stays behind for good once those offsets are committed (a wiped worker, a standby or the
    next owner then restores the old state: events lost). The batch must write it again."""
    from prometheus_client import CollectorRegistry

    from streaming.worker.metrics import WorkerMetrics
    from streaming.worker.processor import Incoming, Processor
    from streaming.worker.state import decode, encode

    proc = Processor(CONFIDENCE, WorkerMetrics(CollectorRegistry()))
    events = known_stream(n_events=40, n_users=3, seed=3)
    msgs = [Incoming(e.user.encode(), json.dumps(e.to_dict()).encode(), 0, k, e.ts) for k, e in enumerate(events)]
    local: dict[bytes, bytes] = {}
    res = proc.process(msgs, lambda key, _m: decode(local[key]) if key in local else None)
    local.update({k: encode(v) for k, v in res.states.items()})  # the RocksDB write; changelog lost
    assert res.accepted == 40 and res.repaired == 0
    # Redelivery of the whole batch (input offsets were not committed):
    again = proc.process(msgs, lambda key, _m: decode(local[key]) if key in local else None)
    assert again.accepted == 0 and again.duplicates == 40 and again.messages == []
    assert set(again.states) == set(local) and again.repaired == len(local)  # written again
    for key, state in again.states.items():
        assert encode(state) == local[key]  # unchanged, exactly
    # A partial redelivery (some old, some new events) applies only the new ones.
    tail_ = proc.process(
        msgs[30:] + [Incoming(msgs[-1].key, msgs[-1].value, 0, 40, msgs[-1].timestamp_ms)],
        lambda key, _m: decode(local[key]) if key in local else None,
    )
    assert tail_.accepted == 1 and tail_.duplicates == 10
