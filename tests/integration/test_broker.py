"""Real-broker tests for devtools.broker / streaming.kafka.admin (kafka-python and aiokafka clients)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from devtools.broker import BrokerNotReady, KafkaBroker, free_port, wait_until_ready
from streaming.kafka.admin import delete_topics, ensure_topics

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]


def _produce(bootstrap: str, topic: str, n: int) -> list[tuple[str, str]]:
    sent = [(f"user-{i % 10}", f"event-{i}") for i in range(n)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for k, v in sent:
            producer.send(topic, key=k.encode(), value=v.encode())
        producer.flush(timeout=30)
    finally:
        producer.close()
    return sent


def _consume_all(consumer: KafkaConsumer, n: int, timeout: float = 30.0) -> list:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(records)
    return got


def test_round_trip_consumer_group(kafka_broker, topic_factory):
    topic = topic_factory(partitions=3)
    sent = _produce(kafka_broker.bootstrap, topic, 100)

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_broker.bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        got = _consume_all(consumer, 100)
        consumer.commit()
        committed = {p: consumer.committed(TopicPartition(topic, p)) for p in range(3)}
    finally:
        consumer.close()

    assert len(got) == 100
    assert sorted((r.key.decode(), r.value.decode()) for r in got) == sorted(sent)
    # keyed messages: each key sticks to one partition, and the keys spread over partitions
    part_of_key: dict[bytes, set[int]] = {}
    for r in got:
        part_of_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(ps) == 1 for ps in part_of_key.values())
    assert len({r.partition for r in got}) > 1
    # the group coordinator stored the offsets
    assert sum(o or 0 for o in committed.values()) == 100


def test_ensure_topics_idempotent_and_delete(kafka_broker):
    boot = kafka_broker.bootstrap
    a, b = f"t-a-{uuid.uuid4().hex[:8]}", f"t-b-{uuid.uuid4().hex[:8]}"
    assert sorted(ensure_topics(boot, {a: 2, b: 1}, config={"cleanup.policy": "compact"})) == [a, b]
    assert ensure_topics(boot, {a: 2, b: 1}) == []
    with pytest.raises(ValueError, match="exists with 2 partitions"):
        ensure_topics(boot, {a: 4})
    delete_topics(boot, [a, b, "never-existed"])
    from kafka import KafkaAdminClient

    with KafkaAdminClient(bootstrap_servers=boot) as admin:
        assert not {a, b} & set(admin.list_topics())


def test_aiokafka_round_trip(kafka_broker, topic_factory):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = topic_factory(partitions=2)

    async def run() -> list[tuple[bytes, bytes]]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(50):
                await producer.send(topic, key=f"k{i % 7}".encode(), value=f"v{i}".encode())
            await producer.flush()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_broker.bootstrap,
            group_id=f"ag-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        got: list[tuple[bytes, bytes]] = []
        try:
            async with asyncio.timeout(30):
                while len(got) < 50:
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        got.extend((r.key, r.value) for r in records)
            await consumer.commit()
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(run())
    assert sorted(got) == sorted((f"k{i % 7}".encode(), f"v{i}".encode()) for i in range(50))


def test_restart_keeps_data_and_ports(tmp_path):
    broker = KafkaBroker(data_dir=tmp_path / "kafka")
    try:
        broker.start()
        boot = broker.bootstrap
        ensure_topics(boot, {"persist": 3})
        sent = _produce(boot, "persist", 30)
        broker.stop()
        assert not broker.is_running()

        again = KafkaBroker(data_dir=tmp_path / "kafka")  # fresh handle: ports come from broker.json
        broker = again
        again.start()
        assert again.bootstrap == boot
        consumer = KafkaConsumer(bootstrap_servers=boot, enable_auto_commit=False)
        try:
            tps = [TopicPartition("persist", p) for p in range(3)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            got = _consume_all(consumer, 30)
        finally:
            consumer.close()
        assert sorted((r.key.decode(), r.value.decode()) for r in got) == sorted(sent)
        # and it still accepts writes after the restart
        _produce(boot, "persist", 1)
    finally:
        broker.stop()


def test_wait_until_ready_closed_port_fails_fast():
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(BrokerNotReady, match=rf"127\.0\.0\.1:{port} not ready: timed out after 2s.*connect"):
        wait_until_ready(f"127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - t0 < 4


def test_cli_detached_start_status_stop(tmp_path):
    env = {**os.environ, "STREAMREC_KAFKA_DIR": str(tmp_path / "cli-kafka")}
    env.pop("STREAMREC_BOOTSTRAP", None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "streaming.cli.main", "broker", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    started = cli("start")
    try:
        assert started.returncode == 0, started.stderr
        assert "ready at 127.0.0.1:" in started.stdout
        # the starting python process has exited; the broker must still serve
        status = cli("status")
        assert status.returncode == 0 and "running pid=" in status.stdout
        boot = status.stdout.split("bootstrap=")[1].split()[0]
        wait_until_ready(boot, timeout=10)
    finally:
        stopped = cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert cli("status").returncode == 1


def test_cluster_ids_never_look_like_options():
    from devtools.broker import new_cluster_id

    ids = [new_cluster_id() for _ in range(5000)]  # about 1 in 64 raw draws starts with '-'
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
