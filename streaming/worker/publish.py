"""Publish a batch's output records with one produce future per (topic, partition) batch.

A micro-batch publishes one recommendation per user, plus its dead letters and new-item
evidence: a few hundred records at full load. Sent one by one through Faust's `Topic.send`,
each record costs a Faust message wrapper, an aiokafka `send` coroutine and its own future:
~50 µs a record, a fifth of the worker's time per event at full load (bench/e2e.py, py-spy).
aiokafka's batch API takes the records of a partition in one `BatchBuilder` (its record
encoder) and gives one future for the lot, which is all `StreamWorker._settle_then_ack` needs: whether
the broker has every record of the batch.

Records keep the key partitioning every Kafka client uses (aiokafka's DefaultPartitioner:
murmur2 of the key, as the Java client), so a consumer of the recommendations sees a user's
messages on the same partition as before; keyless records (a dead letter of a message with
no key) go to a random partition, as Faust would send them.

    publisher = BatchPublisher(app)
    futures = await publisher.publish("recs", [(key, value, headers), ...])   # then await them
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from aiokafka.partitioner import DefaultPartitioner

Record = tuple[bytes | None, bytes, Sequence[tuple[str, bytes]]]   # key, value, headers

_partitioner = DefaultPartitioner()


class BatchPublisher:
    def __init__(self, app: Any):
        """`app`: the Faust app whose producer (and so whose acks, linger and retries) to use."""
        self.app = app

    async def publish(self, topic: str, records: Sequence[Record]) -> list["asyncio.Future[Any]"]:
        """Queue `records` on `topic`; returns the futures of the produce batches (each resolves
        when the broker has acknowledged its records, or raises)."""
        if not records:
            return []
        producer = self.app.producer._ensure_producer()  # aiokafka's, made when the app starts
        partitions = sorted(await producer.partitions_for(topic))
        by_partition: dict[int, list[Record]] = {}
        for rec in records:
            by_partition.setdefault(_partitioner(rec[0], partitions, partitions), []).append(rec)
        futures = []
        for partition, recs in by_partition.items():
            batch = producer.create_batch()
            for key, value, headers in recs:
                if batch.append(key=key, value=value, timestamp=None, headers=list(headers)) is None:
                    # full (an empty batch takes any record): send it, go on in a new one
                    futures.append(await self._send(producer, batch, topic, partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None, headers=list(headers))
            futures.append(await self._send(producer, batch, topic, partition))
        return futures

    @staticmethod
    async def _send(producer: Any, batch: Any, topic: str, partition: int) -> "asyncio.Future[Any]":
        batch.close()  # ours alone: aiokafka would otherwise add producer.send() records to it
        return await producer.send_batch(batch, topic, partition=partition)
