"""A topic every worker reads whole: no consumer group, all partitions assigned by hand.

Model announcements (streaming/worker/app.py) and new-item rows (streaming/worker/new_items.py) are
broadcasts: each worker must see every record, so neither may join the workers' group.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from streaming import faust_compat
from streaming.kafka import clients


@contextlib.asynccontextmanager
async def broadcast_consumer(bootstrap: str, topic: str, *, from_beginning: bool) -> AsyncIterator[Any]:
    """An aiokafka consumer of all of `topic`'s partitions (waiting until the topic exists),
    positioned at its beginning or at its end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        **clients.aiokafka(),
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        while not parts:
            await asyncio.sleep(0.5)
            await faust_compat.refresh_metadata(consumer)
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await (consumer.seek_to_beginning(*tps) if from_beginning else consumer.seek_to_end(*tps))
        yield consumer
    finally:
        await consumer.stop()
