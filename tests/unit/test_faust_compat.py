"""Every private Faust/aiokafka internal the project uses still exists in the installed
versions (streaming/faust_compat.TOUCH_POINTS), and nothing outside the compat package reaches
for one. A failure names the touch point, so an upgrade shows what to look at."""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
from pathlib import Path

import pytest

from streaming.faust_compat import TOUCH_POINTS, TouchPoint

ROOT = Path(__file__).resolve().parents[2]


def _instance_has(cls: type, attr: str) -> bool:
    """Whether instances get `attr`: assigned in the class's (or a base's) __init__ or declared."""
    for klass in inspect.getmro(cls):
        if attr in getattr(klass, "__annotations__", {}) or attr in vars(klass):
            return True
        init = vars(klass).get("__init__")
        if init is not None:
            try:
                src = inspect.getsource(init)
            except (OSError, TypeError):
                continue
            if f"self.{attr}" in src:
                return True
    return False


@pytest.mark.parametrize("tp", TOUCH_POINTS, ids=lambda tp: f"{tp.module}:{tp.name}")
def test_touch_point_exists(tp: TouchPoint):
    mod = importlib.import_module(tp.module)
    *owners, attr = tp.name.split(".")
    obj = mod
    for part in owners:
        obj = getattr(obj, part, None)
        assert obj is not None, f"faust_compat touch point {tp.module}:{tp.name} ({tp.reason}): {part} is gone"
    if tp.instance_attr:
        assert isinstance(obj, type) and _instance_has(obj, attr), (
            f"faust_compat touch point {tp.module}:{tp.name} ({tp.reason}): instances no longer get {attr}"
        )
    else:
        assert hasattr(obj, attr), f"faust_compat touch point {tp.module}:{tp.name} ({tp.reason}) is gone"


def test_a_missing_touch_point_is_named():
    gone = TouchPoint("faust.streams", "_no_such_thing", "example")
    with pytest.raises(AssertionError, match="faust.streams:_no_such_thing"):
        test_touch_point_exists(gone)


def test_aiokafka_consumer_still_takes_its_fetch_wait_from_the_attribute():
    """aiokafka's Fetcher reads the wait from the consumer attribute the compat transport sets."""
    from aiokafka import AIOKafkaConsumer

    async def make():
        c = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
        return c._fetch_max_wait_ms  # noqa: SLF001 - the touch point under test

    assert asyncio.run(make()) == 500  # aiokafka's default: the attribute is what it uses
    fetcher_src = inspect.getsource(importlib.import_module("aiokafka.consumer.consumer").AIOKafkaConsumer.start)
    assert "_fetch_max_wait_ms" in fetcher_src


def test_no_private_faust_or_aiokafka_access_outside_the_compat_package():
    """Accesses like `x._name` on Faust/aiokafka objects belong in streaming/faust_compat (ruff's
    SLF rule enforces it for attribute access; this catches private imports too)."""
    offenders = []
    for pkg in ("recsys", "streaming", "devtools"):
        for f in (ROOT / pkg).rglob("*.py"):
            if "faust_compat" in f.parts:
                continue
            for node in ast.walk(ast.parse(f.read_text())):
                if (
                    isinstance(node, ast.ImportFrom)
                    and node.module
                    and node.module.split(".")[0] in ("faust", "aiokafka", "mode")
                ):
                    offenders += [
                        f"{f.relative_to(ROOT)}: from {node.module} import {a.name}"
                        for a in node.names
                        if a.name.startswith("_")
                    ]
    assert not offenders, offenders


def test_a_flow_resume_leaves_the_input_channel_s_queue_alone():
    """Faust's recovery resumes the flow twice around its seek to the committed offsets; a resume
    empties the queues it manages, which wiped events the fetch loop had delivered in between
    (their offsets then skipped for good). The worker's input channel is not among them."""
    from streaming.faust_compat import App, channel_of

    async def main():
        app = App("compat-queue-test", broker="kafka://127.0.0.1:1", store="memory://")  # nothing connects
        topic = app.topic("clicks", value_serializer="raw")
        ours, plain = channel_of(app, topic), topic.__aiter__()
        for ch in (ours, plain):
            ch.queue.put_nowait("delivered between the two resumes")
        app.flow_control.resume()
        assert ours.queue.qsize() == 1
        assert plain.queue.qsize() == 0  # Faust's own behaviour, which this works around

    asyncio.run(main())


# -- the fetch loop's delivery: _Consumer.wait_first ----------------------------------------------
def test_the_fetch_loop_still_delivers_each_message_through_wait_first():
    """_Consumer.wait_first relies on this call's shape: (callback(message), suspend_flow.wait())."""
    from faust.transport.consumer import Consumer

    src = " ".join(inspect.getsource(Consumer._drain_messages).split())  # noqa: SLF001 - the touch point
    assert "await self.wait_first( callback(message), self.suspend_flow.wait() )" in src


def _consumer():
    from streaming.faust_compat import App

    app = App("compat-test", broker="kafka://127.0.0.1:1", store="memory://")  # nothing connects
    return app.consumer


def test_a_callback_that_does_not_block_runs_in_the_fetch_loop_s_task(recwarn):
    async def main():
        consumer, ran_in = _consumer(), []

        async def callback():
            ran_in.append(asyncio.current_task())
            return 5

        work = callback()
        res = await consumer.wait_first(work, consumer.suspend_flow.wait())
        assert (res.done, res.results, res.stopped) == ([work], [5], False)
        assert ran_in == [asyncio.current_task()]  # no task per message

    asyncio.run(main())
    import gc

    gc.collect()
    assert not [w for w in recwarn if "never awaited" in str(w.message)]  # the flow's wait was closed


def test_a_blocked_callback_finishes_in_a_task_with_what_it_awaited():
    async def main():
        consumer, fut, seen = _consumer(), asyncio.get_running_loop().create_future(), []

        async def callback():
            seen.append(await fut)
            seen.append(await asyncio.sleep(0, "after"))  # a bare yield to the loop on the way
            return "delivered"

        waiting = asyncio.ensure_future(consumer.wait_first(callback(), consumer.suspend_flow.wait()))
        await asyncio.sleep(0.01)
        assert not waiting.done() and seen == []
        fut.set_result("queue had room")
        res = await asyncio.wait_for(waiting, 5)
        assert res.results == ["delivered"] and not res.stopped
        assert seen == ["queue had room", "after"]

    asyncio.run(main())


def test_a_blocked_callback_is_cancelled_when_a_rebalance_suspends_the_flow():
    """As Faust has it: the fetch loop is never held by a blocked delivery past a revocation."""

    async def main():
        consumer, fut, events = _consumer(), asyncio.get_running_loop().create_future(), []

        async def callback():
            try:
                await fut
                events.append("delivered")
            except asyncio.CancelledError:
                events.append("cancelled")
                raise

        waiting = asyncio.ensure_future(consumer.wait_first(callback(), consumer.suspend_flow.wait()))
        await asyncio.sleep(0.01)
        consumer.suspend_flow.set()
        res = await asyncio.wait_for(waiting, 5)
        assert res.results == [True] and not res.stopped  # the flow's wait won
        await asyncio.sleep(0)
        assert events == ["cancelled"]

    asyncio.run(main())


@pytest.mark.parametrize("blocks_first", [False, True])
def test_a_callback_s_error_reaches_the_fetch_loop(blocks_first):
    async def main():
        consumer = _consumer()

        async def callback():
            if blocks_first:
                await asyncio.sleep(0.01)
            raise ValueError("bad message")

        with pytest.raises(ValueError, match="bad message"):
            await consumer.wait_first(callback(), consumer.suspend_flow.wait())

    asyncio.run(main())
