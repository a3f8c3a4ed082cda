"""The worker's Faust app uses the compat transport, whose consumer waits at most
`stream.fetch_max_wait_ms` for a fetch (Faust fixes 1,500 ms in code: the 1.1–1.4 s delivery gaps
of streaming/faust_compat). Fails if the consumer the worker would start has any other wait."""

from __future__ import annotations

import asyncio
import dataclasses

from recsys.config import load_config
from streaming import faust_compat
from streaming.worker.app import create_app
from tests.stream_fixture import stream_settings


def test_worker_consumer_fetch_wait_is_short(kafka_broker, tmp_path):
    async def build():
        s = stream_settings(kafka_broker.bootstrap, data_dir=str(tmp_path / "data"))
        app = create_app(dataclasses.replace(load_config(env={}), stream=s))
        assert isinstance(app, faust_compat.App)
        consumer = app.consumer._thread._create_worker_consumer(app.transport)  # noqa: SLF001 - the touch point under test
        try:
            return consumer._fetch_max_wait_ms, consumer._group_id, s  # noqa: SLF001
        finally:
            await consumer.stop()

    wait, group, s = asyncio.run(build())
    assert wait == s.fetch_max_wait_ms < faust_compat.FAUST_FETCH_MAX_WAIT_MS
    assert group  # the worker's consumer-group consumer, not a client-only one
