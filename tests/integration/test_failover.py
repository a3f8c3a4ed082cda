"""Issue 5: several workers in one consumer group; one is SIGKILLed; the others take over.

Two (and three) real `recsys worker` processes share the clickstream partitions. While a
steady stream flows, the owner of some partitions is killed. Checked:
  * its partitions move to the survivors, which restore their state (from the changelog, or
    from their standby copy with --standby-replicas) and carry on;
  * recommendations keep flowing for users on every partition;
  * nothing is lost or doubled: every user's final state (changelog) equals
    recsys.confidence.build_profiles over everything sent;
  * the HTTP lookup answers for any user from any worker, served by the partition's owner.

Fail-over time = from the SIGKILL to the first recommendation published for each of the
dead worker's partitions by a survivor (the slowest partition counts). It includes the group
session timeout (6 s here, the broker's minimum; 10 s by default) after which Kafka declares
the worker dead, the rebalance, the state restore and the first batch. The quick run does two
workers without standbys; the slow run (-m slow) measures 2 and 3 workers, with and without
standby replicas, after loading a larger state.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time

import pytest

from recsys.confidence import ConfidenceConfig, build_profiles
from recsys.events import Event
from streaming.jobs.replay import encode_event, make_producer
from streaming.kafka.admin import ensure_topics
from streaming.topics import topic_specs
from tests.integration.test_reliability import FAST_GROUP, Feeder, known_stream, report, train_small, wait_state
from tests.stream_fixture import TopicReader, WorkerProcess, stream_settings, wait_for

CONFIDENCE = ConfidenceConfig()  # the project's defaults


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from recsys.model.store import ModelStore

    root = tmp_path_factory.mktemp("failover-models")
    train_small(ModelStore(root))
    return root


class SupervisorThread(threading.Thread):
    """Restarts any worker that stopped itself on purpose (fail-stop exits 70 and 71, see
    streaming/worker/app.py), as systemd or a container runtime would; a SIGKILLed one stays dead."""

    def __init__(self, workers):
        super().__init__(daemon=True)
        self.workers, self.restarts, self.stopping = workers, 0, threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.3):
            for w in self.workers:
                p = w.proc
                if p is not None and p.poll() is not None and p.returncode in (70, 71):
                    self.restarts += 1
                    w.start(wait_ready=False)


def assignment(workers) -> dict[int, list[int]]:
    out = {}
    for w in workers:
        status, body = w.get("/ready", timeout=2)
        out[w.web_port] = body["partitions"] if status == 200 and isinstance(body, dict) else None
    return out


def stable_assignment(workers, partitions: int, timeout: float = 120) -> dict[int, list[int]]:
    """Wait until every worker is ready and they own disjoint sets covering every partition."""

    def ok():
        a = assignment(workers)
        if any(v is None or not v for v in a.values()):
            return None
        owned = [p for v in a.values() for p in v]
        return a if sorted(owned) == list(range(partitions)) else None

    return wait_for(ok, timeout, "a stable assignment of all partitions", interval=0.5)


def preload(s, n_users: int, t0: int) -> list[Event]:
    """One event each for many users, as fast as possible: a state the survivors must restore."""
    events = [Event(f"pre{k}", f"i{k % 60}", "view", t0 + k) for k in range(n_users)]
    producer = make_producer(s.bootstrap, {"linger_ms": 20})
    for e in events:
        key, value = encode_event(e)
        producer.send(s.clickstream_topic, key=key, value=value)
    producer.flush(timeout=120)
    producer.close()
    return events


def run_failover(
    kafka_broker, tmp_path, model_dir, *, n_workers: int, standby: int, preload_users: int, partitions: int = 6
) -> dict:
    s = stream_settings(kafka_broker.bootstrap, partitions=partitions, batch_within_s=0.02, standby_replicas=standby)
    ensure_topics(s.bootstrap, topic_specs(s))
    workers = [WorkerProcess(s, tmp_path, model_dir, env=FAST_GROUP) for _ in range(n_workers)]
    for w in workers:
        w.start(wait_ready=False)
    feeder = None
    sup = SupervisorThread(workers)
    sup.start()
    try:
        for w in workers:
            w.wait_ready(timeout=120)
        owners = stable_assignment(workers, partitions)
        t0 = int(time.time() * 1000) - 7_200_000
        pre = preload(s, preload_users, t0)
        live = known_stream(n_events=3000, n_users=150, seed=5, t0=t0 + preload_users + 10)
        expected = build_profiles(pre + live, CONFIDENCE)
        pre_expected = build_profiles(pre, CONFIDENCE)
        wait_state(s, pre_expected, 180, "the preloaded state")
        # Before the kill: any worker answers for any user, from the user's owner.
        http_before = check_routing(workers, stable_assignment(workers, partitions), s, pre_expected)
        wait_for(
            lambda: sum(w.metric("streamrec_users_in_state") for w in workers) == len(pre_expected),
            30,
            f"{len(pre_expected)} users in state over the workers",
        )
        recs = TopicReader(s.bootstrap, s.recommendations_topic)
        feeder = Feeder(s.bootstrap, s.clickstream_topic, live, rate=200.0)
        feeder.start()
        # Steady flow on every partition, then kill a worker in the middle of it.
        wait_for(lambda: feeder.submitted > len(live) // 4, 60, "the live stream under way")
        owners = stable_assignment(workers, partitions)
        victim = random.Random().choice(workers)
        moved = sorted(owners[victim.web_port])
        kill_ms = int(time.time() * 1000)
        victim.kill()
        survivors = [w for w in workers if w is not victim]

        def resumed(rs):
            seen = {}
            for r in rs:
                body = json.loads(r.value)
                if body["published_ts"] > kill_ms and body["partition"] in moved:
                    seen.setdefault(body["partition"], body["published_ts"])
            return seen if set(seen) == set(moved) else None

        recs.read_until(lambda rs: resumed(rs) is not None, timeout=180)
        firsts = resumed(recs.records)
        failover_s = (max(firsts.values()) - kill_ms) / 1000.0
        new_owners = stable_assignment(survivors, partitions)
        feeder.join(timeout=180)
        assert not feeder.failed and feeder.acked == len(live)
        diff = wait_state(s, expected, 180, "the state after the fail-over")
        # Recommendations flowed after the kill for users on every partition.
        recs.read_until(
            lambda rs: (
                {json.loads(r.value)["partition"] for r in rs if json.loads(r.value)["published_ts"] > kill_ms}
                == set(range(partitions))
            ),
            timeout=60,
        )
        recs.close()
        http_after = check_routing(survivors, new_owners, s, expected)
        # every user counted once, by the worker that now owns their partition (an exact count)
        wait_for(
            lambda: sum(w.metric("streamrec_users_in_state") for w in survivors) == len(expected),
            30,
            f"{len(expected)} users in state over the survivors",
        )
        http = {
            "http_lookups": http_before["http_lookups"] + http_after["http_lookups"],
            "http_routed_to_owner": http_before["http_routed_to_owner"] + http_after["http_routed_to_owner"],
        }
        figures = dict(
            workers=n_workers,
            standby_replicas=standby,
            partitions=partitions,
            preloaded_users=preload_users,
            events=len(pre) + len(live),
            moved_partitions=moved,
            failover_s=round(failover_s, 2),
            per_partition_s={p: round((t - kill_ms) / 1000, 2) for p, t in sorted(firsts.items())},
            lost=diff["lost"],
            doubled=diff["doubled"],
            users_differing=diff["differ"],
            fail_stop_restarts=sup.restarts,
            **http,
        )
        report("failover", **figures)
        assert diff["differ"] == 0 and diff["lost"] == 0 and diff["doubled"] == 0, diff
        assert all(w.proc.poll() is None for w in survivors)
        return figures
    finally:
        sup.stopping.set()
        sup.join(timeout=5)
        if feeder is not None:
            feeder.join(timeout=5)
        for w in workers:
            w.kill()


def check_routing(workers, owners, s, expected) -> dict:
    """Ask every worker about users of every partition: each answer comes from the owner."""
    from kafka.partitioner.default import murmur2

    owner_of = {p: port for port, ps in owners.items() for p in ps}
    by_partition: dict[int, list[str]] = {}
    for u in sorted(expected):
        p = (murmur2(u.encode()) & 0x7FFFFFFF) % s.partitions
        if len(by_partition.setdefault(p, [])) < 3:
            by_partition[p].append(u)
    asked = routed = 0
    for p, users in sorted(by_partition.items()):
        for u in users:
            answers = []
            for w in workers:
                status, body = w.get(f"/recommendations/{u}" + "/" * (asked % 2), timeout=10)  # both forms
                assert status == 200, (u, p, w.web_port, status, body)
                assert body["events"] == expected[u].events
                assert body["served_by"] == owner_of[p], (u, p, body["served_by"], owner_of)
                asked += 1
                routed += body["served_by"] != w.web_port
                answers.append((body["items"], body["events"], body["model_version"]))
            assert all(a == answers[0] for a in answers)
    assert routed > 0 or len(workers) == 1
    return {"http_lookups": asked, "http_routed_to_owner": routed}


def test_two_workers_one_killed_partitions_move_nothing_lost(kafka_broker, tmp_path, model_dir):
    run_failover(kafka_broker, tmp_path, model_dir, n_workers=2, standby=0, preload_users=2000, partitions=4)


@pytest.mark.slow
@pytest.mark.parametrize("n_workers", [2, 3])
@pytest.mark.parametrize("standby", [0, 1])
def test_failover_time_with_and_without_standbys(kafka_broker, tmp_path, model_dir, n_workers, standby):
    run_failover(
        kafka_broker,
        tmp_path,
        model_dir,
        n_workers=n_workers,
        standby=standby,
        preload_users=int(os.environ.get("STREAMREC_FAILOVER_USERS", "60000")),
        partitions=6,
    )
