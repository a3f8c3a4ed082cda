"""Replaying events into Kafka and tailing recommendations, against the real broker."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from devtools.broker import KafkaBroker
from recsys.data.simulator import SimConfig, simulate
from recsys.events import parse_event
from streaming.jobs.replay import replay, send_raw
from streaming.jobs.tail import format_recommendation, tail
from streaming.kafka.admin import ensure_topics

pytestmark = pytest.mark.kafka

SIM = SimConfig(n_users=60, n_items=300, n_topics=6, events=500, seed=11)


def read_all(bootstrap: str, topic: str, n: int, timeout: float = 30.0) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        got, deadline = [], time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(records)
        # anything extra would show up now
        for records in consumer.poll(timeout_ms=300).values():
            got.extend(records)
        return got
    finally:
        consumer.close()


def test_replay_round_trip_keyed_and_ordered(kafka_broker, topic_factory):
    topic = topic_factory(partitions=3)
    events = simulate(SIM)
    t_before = int(time.time() * 1000)
    stats = replay(events, kafka_broker.bootstrap, topic, progress=False)
    t_after = int(time.time() * 1000)
    assert (stats.sent, stats.failed) == (500, 0)
    assert stats.rate > 0 and stats.seconds > 0

    got = read_all(kafka_broker.bootstrap, topic, 500)
    assert len(got) == 500
    partitions_of_user = defaultdict(set)
    per_user = defaultdict(list)
    for r in sorted(got, key=lambda r: (r.partition, r.offset)):
        d = json.loads(r.value.decode("utf-8"))
        e = parse_event(d)  # the worker's validator accepts it
        assert r.key == e.user.encode("utf-8")
        assert b", " not in r.value and b": " not in r.value  # compact JSON
        partitions_of_user[e.user].add(r.partition)
        per_user[e.user].append(e)
        assert t_before <= e.ts <= t_after  # retimed to the wall clock at send
    assert all(len(p) == 1 for p in partitions_of_user.values())
    assert len({p for ps in partitions_of_user.values() for p in ps}) > 1
    # each user's events arrive in time order, and are the simulated ones in the same order
    originals = defaultdict(list)
    for e in events:
        originals[e.user].append(e)
    assert per_user.keys() == originals.keys()
    for user, evs in per_user.items():
        assert [e.ts for e in evs] == sorted(e.ts for e in evs)
        assert [(e.item, e.type, e.event_id) for e in evs] == [(e.item, e.type, e.event_id) for e in originals[user]]


def test_replay_no_retime_keeps_original_times_and_limit(kafka_broker, topic_factory):
    topic = topic_factory(partitions=1)
    events = simulate(SIM)
    stats = replay(events, kafka_broker.bootstrap, topic, retime=False, limit=50, progress=False)
    assert (stats.sent, stats.failed) == (50, 0)
    got = read_all(kafka_broker.bootstrap, topic, 50)
    assert [parse_event(json.loads(r.value)) for r in got] == events[:50]


def test_rate_pacing(kafka_broker, topic_factory):
    topic = topic_factory(partitions=1)
    events = simulate(SimConfig(n_users=20, n_items=100, n_topics=4, events=200, seed=1))
    t0 = time.monotonic()
    stats = replay(events, kafka_broker.bootstrap, topic, rate=400, progress=False)
    elapsed = time.monotonic() - t0
    assert (stats.sent, stats.failed) == (200, 0)
    assert elapsed >= 0.45  # 199 gaps of 1/400 s: the schedule holds sends back
    assert stats.seconds >= 0.45


def test_speedup_pacing(kafka_broker, topic_factory):
    from recsys.events import Event

    topic = topic_factory(partitions=1)
    t = 1_700_000_000_000
    events = [Event("u", f"i{k}", "view", t + k * 1000) for k in range(5)]  # 4 s of original time
    t0 = time.monotonic()
    stats = replay(events, kafka_broker.bootstrap, topic, speedup=10, progress=False)
    assert stats.sent == 5 and time.monotonic() - t0 >= 0.38


def test_rate_and_speedup_are_exclusive(kafka_broker):
    from recsys.errors import ConfigError

    with pytest.raises(ConfigError):
        replay([], kafka_broker.bootstrap, "x", rate=10, speedup=2)


def test_send_raw_bytes_unchanged(kafka_broker, topic_factory):
    topic = topic_factory(partitions=1)
    items = [(b"u1", b"not json"), (None, b'{"user": "u2"}'), (b"\xff\xfe", b"\x00\x01\x02"), (b"u3", b"")]
    assert send_raw(kafka_broker.bootstrap, topic, items) == 4
    got = read_all(kafka_broker.bootstrap, topic, 4)
    assert [(r.key, r.value) for r in got] == items


def _recommendation(user: str, k: int) -> dict:
    now = int(time.time() * 1000)
    return {
        "user": user,
        "items": [f"i{k}", f"i{k + 1}", f"i{k + 2}"],
        "scores": [0.9, 0.5, 0.1],
        "source": "blend",
        "model_version": "20260601-000000",
        "query": f"i{k + 9}",
        "event_ts": now - 40,
        "ingest_ts": now - 30,
        "published_ts": now,
    }


def test_tail_reads_recommendations(kafka_broker, topic_factory):
    topic = topic_factory(partitions=2)
    boot = kafka_broker.bootstrap
    recs = [_recommendation(f"u{k % 3}", k) for k in range(6)]
    producer = KafkaProducer(bootstrap_servers=boot)
    try:
        for r in recs:
            producer.send(topic, key=r["user"].encode(), value=json.dumps(r).encode())
        producer.send(topic, key=b"u0", value=b"garbage")  # skipped, not fatal
        producer.flush(timeout=30)

        got = list(tail(boot, topic, from_beginning=True, max_messages=6, timeout_s=20))
        assert sorted(got, key=lambda d: d["items"][0]) == sorted(recs, key=lambda d: d["items"][0])
        only_u1 = list(tail(boot, topic, from_beginning=True, user="u1", timeout_s=2))
        assert [d["user"] for d in only_u1] == ["u1", "u1"]

        # default position is the end: only what is published after the call
        it = tail(boot, topic, max_messages=1, timeout_s=20)
        fresh = _recommendation("u9", 100)
        producer.send(topic, key=b"u9", value=json.dumps(fresh).encode())
        producer.flush(timeout=30)
        assert list(it) == [fresh]
    finally:
        producer.close()

    line = format_recommendation(recs[0])
    assert "user=u0" in line and "src=blend" in line and "i0 i1 i2" in line
    assert "latency: since event 40ms, since ingest 30ms" in line


def test_replay_and_tail_commands_take_the_configuration(kafka_broker, topic_factory, tmp_path, capsys):
    """`recsys replay` and `recsys tail` read their topics and Kafka from the one configuration:
    a --config file and --set, like every command."""
    from streaming.cli.main import build_parser, run

    topic = topic_factory(partitions=2)
    conf = tmp_path / "streamrec.toml"
    conf.write_text(f'[stream]\nbootstrap = "{kafka_broker.bootstrap}"\nclickstream_topic = "{topic}"\n')
    assert (
        run(
            build_parser(),
            [
                "replay",
                "--simulate",
                "120",
                "--users",
                "10",
                "--items",
                "50",
                "--topics",
                "3",
                "--config",
                str(conf),
                "--no-progress",
            ],
        )
        == 0
    )
    assert "sent 120 events" in capsys.readouterr().err
    assert len(read_all(kafka_broker.bootstrap, topic, 120)) == 120
    # tail: the topic from --set, Kafka from the file (events are JSON objects too: printed as they are)
    assert (
        run(
            build_parser(),
            [
                "tail",
                "--config",
                str(conf),
                "--set",
                f"stream.recommendations_topic={topic}",
                "--from-beginning",
                "-n",
                "2",
                "--json",
            ],
        )
        == 0
    )
    out = capsys.readouterr()
    assert f"tailing {topic} at {kafka_broker.bootstrap}" in out.err
    assert len(out.out.splitlines()) == 2 and all(json.loads(line)["user"] for line in out.out.splitlines())


def test_cli_errors_are_one_line(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "streaming.cli.main",
            "replay",
            str(tmp_path / "missing.csv"),
            "--bootstrap",
            "127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_replay_survives_broker_restart(tmp_path):
    """Stop the broker mid-replay and start it again: every event is still delivered."""
    broker = KafkaBroker(tmp_path / "kafka")
    broker.start()
    try:
        topic = "restart-clicks"
        ensure_topics(broker.bootstrap, {topic: 2})
        events = simulate(SimConfig(n_users=30, n_items=100, n_topics=4, events=600, seed=5))
        result = {}
        th = threading.Thread(
            target=lambda: result.update(stats=replay(events, broker.bootstrap, topic, rate=100, progress=False))
        )
        th.start()
        time.sleep(1.5)
        broker.stop()
        time.sleep(1.0)
        broker.start()
        th.join(timeout=120)
        assert not th.is_alive()
        stats = result["stats"]
        assert (stats.sent, stats.failed) == (600, 0)
        got = read_all(broker.bootstrap, topic, 600)
        assert sorted(json.loads(r.value)["event_id"] for r in got) == sorted(e.event_id for e in events)
    finally:
        broker.stop()
