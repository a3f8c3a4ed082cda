"""The worker's Faust app uses our aiokafka transport, whose consumer waits at most
FETCH_MAX_WAIT_MS for a fetch (Faust fixes 1,500 ms in code: the 1.1–1.4 s delivery gaps
of streaming/faust_compat/transport.py). Guards the override against Faust or aiokafka changing the
internals it relies on: the test fails if the consumer the worker would start has any other wait."""

from __future__ import annotations

import asyncio

from streaming.worker.app import create_app
from streaming.faust_compat.transport import FETCH_MAX_WAIT_MS, Transport
from tests.stream_fixture import stream_settings


def test_worker_consumer_fetch_wait_is_short(kafka_broker, tmp_path):
    async def build():
        app = create_app(stream_settings(kafka_broker.bootstrap, data_dir=str(tmp_path / "data")))
        assert isinstance(app.transport, Transport)
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_max_wait_ms, consumer._group_id
        finally:
            await consumer.stop()

    wait, group = asyncio.run(build())
    assert wait == FETCH_MAX_WAIT_MS < 1500
    assert group  # the worker's consumer-group consumer, not a client-only one
