"""Pytest fixtures for tests that need a real Kafka broker.

``kafka_broker`` (session scope) starts one single-node KRaft broker in a tmp dir
for the whole session, or uses the cluster in ``STREAMREC_BOOTSTRAP`` if set.
``secure_kafka_broker`` (session scope) is a second one, secured (SASL_SSL and mutual TLS),
started only if a test asks for it.
``topic_factory`` (function scope) makes uniquely named topics on it and deletes
them afterwards, so tests sharing the session broker don't see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from devtools.broker import ENV_BOOTSTRAP, KafkaBroker, broker_from_env
from streaming.kafka.admin import delete_topics, ensure_topics


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    data_dir = None if os.environ.get(ENV_BOOTSTRAP) else tmp_path_factory.mktemp("kafka")
    broker = broker_from_env(data_dir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def secure_kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """The project's broker with a SASL_SSL listener (SCRAM) and a mutual-TLS one, its own CA and
    users made at start (`recsys broker start --secure --mtls`); one per session, started only
    by the tests that ask for it."""
    if os.environ.get(ENV_BOOTSTRAP):
        pytest.skip(f"{ENV_BOOTSTRAP} names a Kafka: the secured tests need the project's own broker")
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-secure"), security="both")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def topic_factory(kafka_broker: KafkaBroker, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """``topic_factory(partitions=1, prefix=None, config=None) -> name``."""
    made: list[str] = []
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]

    def make(partitions: int = 1, prefix: str | None = None, config: dict[str, str] | None = None) -> str:
        name = f"{prefix or base}-{uuid.uuid4().hex[:8]}"
        ensure_topics(kafka_broker.bootstrap, {name: partitions}, config=config)
        made.append(name)
        return name

    yield make
    if made and kafka_broker.is_running():
        with contextlib.suppress(Exception):  # cleanup must not mask the test's own outcome
            delete_topics(kafka_broker.bootstrap, made)
