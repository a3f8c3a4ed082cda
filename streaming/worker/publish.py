"""Publish a batch's output records with one produce future per (topic, partition) batch.

A micro-batch publishes one recommendation per user, plus its dead letters and new-item
evidence: a few hundred records at full load. Sent one by one through Faust's `Topic.send`,
each record costs a Faust message wrapper, an aiokafka `send` coroutine and its own future:
~50 µs a record, a fifth of the worker's time per event at full load (bench/e2e.py, py-spy).
aiokafka's batch API takes the records of a partition in one `BatchBuilder` (its record
encoder) and gives one future for the lot, which is all the checkpoint (streaming/worker/checkpoint.py) needs: whether
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
import hashlib
from collections.abc import Sequence
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from streaming import faust_compat

Record = tuple[bytes | None, bytes, Sequence[tuple[str, bytes]]]  # key, value, headers

_partitioner = DefaultPartitioner()


class BatchPublisher:
    def __init__(self, app: Any):
        """`app`: the Faust app whose producer (and so whose acks, linger and retries) to use."""
        self.app = app

    async def publish(self, topic: str, records: Sequence[Record]) -> list[asyncio.Future[Any]]:
        """Queue `records` on `topic`; returns the futures of the produce batches (each resolves
        when the broker has acknowledged its records, or raises)."""
        if not records:
            return []
        producer = faust_compat.aiokafka_producer(self.app)
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
    async def _send(producer: Any, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        batch.close()  # ours alone: aiokafka would otherwise add producer.send() records to it
        return await producer.send_batch(batch, topic, partition=partition)


# A dead letter is the original message plus ~1 KB of headers; Kafka takes ~1 MB per record
# (and Faust's producer max_request_size is 1,000,000 bytes). A message that was itself just
# under the limit cannot be copied whole: its DLQ copy keeps the first DLQ_MAX_BYTES (key and
# value together) and says so in the headers (truncated, original sizes, sha256 of the value).
DLQ_MAX_BYTES = 900_000


def dead_letter_record(dl: Any, source_topic: str) -> Record:
    """The DLQ record of a rejected message: its original bytes and the reason in headers;
    cut to DLQ_MAX_BYTES (and marked so) when the original would not fit in a record."""
    key, value = dl.key, dl.value if dl.value is not None else b""
    headers = dl.headers(source_topic)
    size = len(key or b"") + len(value)
    if size > DLQ_MAX_BYTES:
        headers += [
            ("truncated", b"1"),
            ("original_key_bytes", str(len(key or b"")).encode()),
            ("original_value_bytes", str(len(value)).encode()),
            ("original_value_sha256", hashlib.sha256(value).hexdigest().encode()),
        ]
        if key is not None and len(key) > DLQ_MAX_BYTES // 2:
            key = key[: DLQ_MAX_BYTES // 2]
        value = value[: DLQ_MAX_BYTES - len(key or b"")]
    return key, value, headers
