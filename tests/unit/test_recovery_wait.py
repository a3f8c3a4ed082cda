"""The recovery's wait policy (streaming/faust_compat.PreSeekRecovery.wait_step, which Faust's
`_wait` calls for every recovery step), on a real Faust Recovery without Kafka: a step that keeps
calling `progress()` may run far past Faust's step timeout; one that stops making progress ends
at that timeout as Faust ends it (the service stopped); a rebalance and a failure end the step as
in Faust; a step that never calls `progress()` gets Faust's fixed timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faust.tables.recovery import RebalanceAgain, ServiceStopped

from streaming import faust_compat

TIMEOUT = 0.3  # stands in for broker_request_timeout (90 s)


def recovery() -> faust_compat.PreSeekRecovery:
    app = faust_compat.App(
        "test-recovery-wait", broker="kafka://127.0.0.1:1", store="memory://", TableManager=faust_compat.TableManager
    )
    tables: Any = app.tables
    rec = tables.recovery
    assert isinstance(rec, faust_compat.PreSeekRecovery)
    return rec


def run(test):
    """`test(rec)` on a Recovery made in the running loop (a Service belongs to its loop)."""

    async def main():
        return await asyncio.wait_for(test(recovery()), 20)

    return asyncio.run(main())


def test_a_step_making_progress_runs_past_the_step_timeout():
    async def test(rec) -> float:
        async def load() -> None:
            for _ in range(12):  # 1.2 s in all, four step timeouts
                await asyncio.sleep(0.1)
                rec.progress()

        t0 = asyncio.get_running_loop().time()
        await rec.wait_step(load(), timeout=TIMEOUT)
        return asyncio.get_running_loop().time() - t0

    assert run(test) >= 1.2


def test_a_step_that_stops_making_progress_ends_at_the_timeout_and_is_cancelled():
    cancelled = []

    async def test(rec) -> float:
        async def load() -> None:
            try:
                for _ in range(3):
                    await asyncio.sleep(0.1)
                    rec.progress()
                await asyncio.sleep(30)  # a stall
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        t0 = asyncio.get_running_loop().time()
        with pytest.raises(ServiceStopped):
            await rec.wait_step(load(), timeout=TIMEOUT)
        await asyncio.sleep(0)  # the cancellation is delivered
        return asyncio.get_running_loop().time() - t0

    took = run(test)
    assert 0.3 + TIMEOUT <= took < 0.3 + TIMEOUT + 2 and cancelled == [True]


def test_a_step_that_never_calls_progress_gets_faust_s_fixed_timeout():
    async def test(rec) -> float:
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(ServiceStopped):
            await rec.wait_step(asyncio.sleep(30), timeout=TIMEOUT)
        return asyncio.get_running_loop().time() - t0

    assert TIMEOUT <= run(test) < TIMEOUT + 2


def test_a_rebalance_and_a_failure_end_the_step_as_in_faust():
    async def rebalance(rec) -> None:
        async def load() -> None:
            while True:
                await asyncio.sleep(0.05)
                rec.progress()

        async def later() -> None:
            await asyncio.sleep(0.4)
            rec.signal_recovery_start.set()

        signal = asyncio.ensure_future(later())
        with pytest.raises(RebalanceAgain):
            await rec.wait_step(load(), timeout=TIMEOUT)
        await signal

    async def failure(rec) -> None:
        async def load() -> None:
            rec.progress()
            await asyncio.sleep(0.05)
            raise OSError("disk full")

        with pytest.raises(OSError, match="disk full"):
            await rec.wait_step(load(), timeout=TIMEOUT)

    async def untimed(rec) -> str:
        await rec.wait_step(asyncio.sleep(0.05), timeout=None)  # Faust's own untimed waits pass through
        return "done"

    run(rebalance)
    run(failure)
    assert run(untimed) == "done"
