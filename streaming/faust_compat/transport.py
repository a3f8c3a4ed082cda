"""Faust's aiokafka transport with a short fetch wait: the worker's latency tail.

Faust builds the worker's aiokafka consumer with `fetch_max_wait_ms=1500`, fixed in code.
aiokafka keeps at most one fetch in flight per broker and leaves out of the next request the
partitions whose fetched records the application has not taken yet; a request that went out
for partitions with nothing new is answered only when one of *them* gets data or the wait
runs out. Meanwhile records on the other partitions sit at the broker. On one broker with a
steady stream this showed as gaps of 1.1–1.4 s in which the worker received nothing while
events waited (bench/e2e.py at half load: p99 1.9 s → 0.5 s with a 50 ms wait, same run
conditions). A short wait bounds the gap; an idle worker then sends ~20 empty fetches a
second, which a broker answers from memory.

    app = App(...)        # streaming.worker.app.create_app; a faust.App whose transport is this one
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

FETCH_MAX_WAIT_MS = 50
# The producer waits this long to fill a request. A micro-batch sends its records within a
# millisecond or two; at 1 ms they went out in several requests per batch, each one more
# wake-up of the broker competing for the same two cores (bench: 5 ms drained a backlog
# ~10% faster and cut p99 at 2,000 events/s from 1.1-1.6 s to 0.6-0.8 s while saturated).
PRODUCER_LINGER_MS = 5


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka hands this to its Fetcher when the consumer starts (after this returns).
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class App(faust.App):
    """A faust.App on the transport above (Faust picks transports by URL scheme only)."""

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)
