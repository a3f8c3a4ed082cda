"""BatchReader (streaming/worker/batches.py): how micro-batches are cut from a channel queue, which
events it drops and how acks reach the consumer. The Faust side is reduced to what the reader
touches (queue, consumer high-water marks, generation, flow control, sensors); the real
worker runs it against the broker in tests/integration/test_stream.py and tests/integration/test_reliability.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from streaming.worker.batches import BatchReader


class Msg:
    def __init__(self, partition: int, offset: int, generation: int = 1):
        self.tp = ("clicks", partition)
        self.partition, self.offset, self.generation_id = partition, offset, generation
        self.tracked = False


class Ev:
    def __init__(self, msg: Msg, acks: list):
        self.message, self._acks = msg, acks

    def ack(self) -> bool:
        self._acks.append(self.message.offset)
        return self.message.offset % 2 == 0  # odd offsets: another reference is still held


class Fake:
    """The app and topic the reader sees."""

    def __init__(self, highwater: dict[int, int] | None = None):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.highwater = highwater or {}
        self.tracked: list[int] = []
        self.out: list[int] = []
        self.acks: list[int] = []
        self.app = SimpleNamespace(
            consumer=SimpleNamespace(
                highwater=lambda tp: self.highwater[tp[1]], track_message=lambda m: self.tracked.append(m.offset)
            ),
            consumer_generation_id=1,
            flow_control=SimpleNamespace(is_active=lambda: True, _queues=set()),
            sensors=SimpleNamespace(on_message_out=lambda tp, offset, msg: self.out.append(offset)),
        )
        self.topic = SimpleNamespace(__aiter__=lambda: SimpleNamespace(queue=self.queue))

    def put(self, partition: int, offsets, generation: int = 1) -> None:
        for o in offsets:
            self.queue.put_nowait(Ev(Msg(partition, o, generation), self.acks))


def offsets(events) -> list[int]:
    return [e.message.offset for e in events]


def test_a_batch_is_what_came_within_the_window_when_not_behind():
    async def main():
        f = Fake(highwater={0: 2})  # nothing more at the broker
        reader = BatchReader(f.app, f.topic, max_events=10, within_s=0.01)
        f.put(0, [0, 1])
        late = asyncio.get_running_loop().call_later(0.5, f.put, 0, [2])
        first = await reader.next_batch()
        assert offsets(first) == [0, 1]  # closed after 10 ms, not waiting for offset 2
        assert offsets(await reader.next_batch()) == [2]
        late.cancel()

    asyncio.run(main())


def test_a_worker_behind_fills_the_batch_from_the_broker():
    async def main():
        f = Fake(highwater={0: 10})  # offsets 2..9 are waiting at the broker
        # behind_wait_s: bounded by max_events here, not time
        reader = BatchReader(f.app, f.topic, max_events=10, within_s=0.01, behind_wait_s=30.0)
        f.put(0, [0, 1])
        asyncio.get_running_loop().call_later(0.05, f.put, 0, range(2, 12))
        batch = await reader.next_batch()
        assert offsets(batch) == list(range(10))  # past the 10 ms window, up to max_events
        assert offsets(await reader.next_batch()) == [10, 11]

    asyncio.run(main())


def test_filling_stops_at_the_cap_when_the_waiting_events_do_not_come():
    async def main():
        f = Fake(highwater={0: 100})
        reader = BatchReader(f.app, f.topic, max_events=10, within_s=0.01, behind_wait_s=0.05)
        f.put(0, [0, 1, 2])
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        batch = await reader.next_batch()
        assert offsets(batch) == [0, 1, 2] and loop.time() - t0 >= 0.05

    asyncio.run(main())


def test_max_events_bounds_a_batch_and_the_rest_waits_in_order():
    async def main():
        f = Fake(highwater={0: 7, 1: 3})
        reader = BatchReader(f.app, f.topic, max_events=4, within_s=0.01)
        f.put(0, range(7))
        f.put(1, range(3))
        got = [offsets(await reader.next_batch()) for _ in range(3)]
        assert got == [[0, 1, 2, 3], [4, 5, 6, 0], [1, 2]]

    asyncio.run(main())


def test_events_of_an_old_generation_are_dropped_untracked_and_unacked():
    async def main():
        f = Fake(highwater={0: 6})
        reader = BatchReader(f.app, f.topic, max_events=10, within_s=0.01)
        f.put(0, [0, 1], generation=0)  # fetched before the last rebalance
        f.put(0, [2, 3, 4, 5])
        batch = await reader.next_batch()
        assert offsets(batch) == [2, 3, 4, 5] and f.tracked == [2, 3, 4, 5]
        reader.ack(batch)
        assert f.acks == [2, 3, 4, 5]  # every current event acked once
        assert f.out == [2, 4]  # the consumer hears of the final acks only

    asyncio.run(main())


def test_a_batch_of_only_stale_events_is_skipped_not_returned_empty():
    async def main():
        f = Fake(highwater={0: 3})
        f.app.flow_control = SimpleNamespace(is_active=lambda: f.active, _queues=set())
        f.active = False  # suspended: a rebalance is under way
        reader = BatchReader(f.app, f.topic, max_events=10, within_s=0.01)
        f.put(0, [0, 1])
        waiting = asyncio.ensure_future(reader.next_batch())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        f.active = True
        f.put(0, [2])
        assert offsets(await waiting) == [2]

    asyncio.run(main())


@pytest.mark.parametrize("within", [0.0001, 0.2])
def test_a_window_longer_than_the_cap_is_still_the_window(within):
    async def main():
        f = Fake(highwater={0: 100})
        reader = BatchReader(f.app, f.topic, max_events=10, within_s=within, behind_wait_s=0.05)
        f.put(0, [0])
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert offsets(await reader.next_batch()) == [0]
        assert loop.time() - t0 >= max(within, 0.05) - 0.001

    asyncio.run(main())
