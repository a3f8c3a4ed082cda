"""Replay events into the clickstream topic, in time order, paced or as fast as possible.

Each event becomes one message: key = user id (UTF-8), value = compact UTF-8 JSON of
`Event.to_dict()`. Keying by user sends all of a shopper's events to one partition, so the
worker sees them in order.

Pacing:
  ``rate=R``       R events per second on a fixed schedule (event k is due at start + k/R:
                   a late send is caught up, the rate does not drift)
  ``speedup=X``    the original gaps between events, X times shorter (event k is due at
                   start + (ts_k - ts_0) / X)
  neither          as fast as the producer takes them

``retime=True`` (the default) rewrites each event's ``ts`` to the wall clock at send time,
so "now - event time" is the real end-to-end latency and old data is never rejected as too
old or in the future; ``retime=False`` sends the original times.

The producer is idempotent with ``acks=all`` and unlimited retries inside a delivery timeout,
and reconnects with backoff, so a broker restart in the middle of a replay delays messages
but loses none (unless it outlasts the delivery timeout). Every send's outcome is counted
from its callback/errback; the replay flushes at the end and reports sent/failed.

CLI (``streaming/cli/replay.py``)::

    recsys replay FILE|NAME [--bootstrap B] [--topic T] [--rate R | --speedup X]
                               [--no-retime] [--limit N] [--simulate N]
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from recsys.data.simulator import SimConfig
from recsys.errors import ConfigError
from recsys.events import Event, InputConfig

__all__ = ["ReplayStats", "replay", "send_raw", "encode_event", "make_producer", "events_from"]

DEFAULT_TOPIC = "clickstream"

PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,  # retries cannot duplicate or reorder a partition's records
    "retries": 2_147_483_647,  # bounded by delivery_timeout_ms instead
    "delivery_timeout_ms": 120_000,  # a record may wait this long for a restarting broker
    "request_timeout_ms": 30_000,
    "max_block_ms": 60_000,  # send() blocks at most this long for metadata / buffer
    "retry_backoff_ms": 200,
    "reconnect_backoff_ms": 200,
    "reconnect_backoff_max_ms": 5_000,
    "linger_ms": 5,
    "batch_size": 64 * 1024,
    "client_id": "streamrec-replay",
}


@dataclass
class ReplayStats:
    """Outcome of a replay. ``sent``: records the broker acknowledged; ``failed``: records
    not delivered (errback, send() error, or still pending when the final flush gave up);
    ``seconds``: first send to last acknowledgement; ``rate``: sent / seconds."""

    sent: int = 0
    failed: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    errors: Counter = field(default_factory=Counter)  # failure reason -> count
    first_ts: int | None = None  # ts of the first / last event as sent
    last_ts: int | None = None

    @property
    def attempted(self) -> int:
        return self.sent + self.failed

    def summary(self) -> str:
        s = f"sent {self.sent} events in {self.seconds:.2f}s ({self.rate:,.0f}/s)"
        if self.failed:
            why = ", ".join(f"{k}: {v}" for k, v in self.errors.most_common(3))
            s += f"; {self.failed} FAILED ({why})"
        return s


# --------------------------------------------------------------------------- bootstrap

# --------------------------------------------------------------------------- producing


def make_producer(bootstrap: str, producer_config: Mapping[str, Any] | None = None):
    from kafka import KafkaProducer

    from streaming.kafka import clients

    cfg = {**PRODUCER_DEFAULTS, **clients.kafka_python(), **(producer_config or {})}
    return KafkaProducer(bootstrap_servers=bootstrap, **cfg)


def encode_event(e: Event) -> tuple[bytes, bytes]:
    """(key, value) of an event's message."""
    return e.user.encode("utf-8"), json.dumps(e.to_dict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class _Outcomes:
    """Delivery callbacks (run on the producer's I/O thread) -> counts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.errors: Counter = Counter()
        self.last_ack = 0.0

    def on_ok(self, _meta: Any) -> None:
        with self.lock:
            self.ok += 1
            self.last_ack = time.monotonic()

    def on_err(self, exc: BaseException) -> None:
        with self.lock:
            self.failed += 1
            self.errors[type(exc).__name__] += 1

    def send_error(self, exc: BaseException) -> None:
        self.on_err(exc)


def _sleep_until(deadline: float) -> None:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


def replay(
    events: Iterable[Event],
    bootstrap: str,
    topic: str,
    *,
    rate: float | None = None,
    speedup: float | None = None,
    retime: bool = True,
    limit: int | None = None,
    progress: bool = True,
    producer_config: Mapping[str, Any] | None = None,
    flush_timeout: float | None = None,
) -> ReplayStats:
    """Produce ``events`` to ``topic`` in time order (stable sort by ts); see the module doc.

    ``limit``: at most this many events (the earliest). ``flush_timeout``: seconds to wait
    for outstanding deliveries at the end (default: the producer's delivery timeout + 10 s);
    what is still undelivered then counts as failed.
    """
    if rate is not None and speedup is not None:
        raise ConfigError("replay: give rate or speedup, not both")
    if rate is not None and not rate > 0:
        raise ConfigError(f"replay: rate must be > 0 events/s, got {rate!r}")
    if speedup is not None and not speedup > 0:
        raise ConfigError(f"replay: speedup must be > 0, got {speedup!r}")
    if limit is not None and limit < 0:
        raise ConfigError(f"replay: limit must be >= 0, got {limit!r}")
    evs: Sequence[Event] = list(events)
    if any(evs[k].ts > evs[k + 1].ts for k in range(len(evs) - 1)):
        evs = sorted(evs, key=lambda e: e.ts)
    if limit is not None:
        evs = evs[:limit]
    stats = ReplayStats()
    if not evs:
        return stats

    producer = make_producer(bootstrap, producer_config)
    out = _Outcomes()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=len(evs), unit="ev", file=sys.stderr, desc=f"replay -> {topic}", dynamic_ncols=True, mininterval=0.5
        )
    t0_event = evs[0].ts
    try:
        start = time.monotonic()
        shown = 0
        for k, e in enumerate(evs):
            if rate is not None:
                _sleep_until(start + k / rate)
            elif speedup is not None:
                _sleep_until(start + (e.ts - t0_event) / 1000.0 / speedup)
            if retime:
                e = replace(e, ts=int(time.time() * 1000))
            if stats.first_ts is None:
                stats.first_ts = e.ts
            stats.last_ts = e.ts
            key, value = encode_event(e)
            try:
                fut = producer.send(topic, key=key, value=value)
            except Exception as exc:  # noqa: BLE001 - e.g. KafkaTimeoutError after max_block_ms
                out.send_error(exc)
            else:
                fut.add_callback(out.on_ok)
                fut.add_errback(out.on_err)
            if bar is not None and (k & 63 == 63 or k == len(evs) - 1):
                bar.update(k + 1 - shown)
                shown = k + 1
        _flush(producer, out, len(evs), flush_timeout)
        end = max(out.last_ack, start) if out.ok else time.monotonic()
    finally:
        if bar is not None:
            bar.close()
        with contextlib.suppress(Exception):  # closing is best effort: the outcome is counted already
            producer.close(timeout=5)
    with out.lock:
        stats.sent = out.ok
        stats.failed = len(evs) - out.ok  # errbacks + send errors + never acknowledged
        stats.errors = Counter(out.errors)
        pending = len(evs) - out.ok - out.failed
        if pending > 0:
            stats.errors["undelivered_at_flush"] += pending
    stats.seconds = max(end - start, 1e-9)
    stats.rate = stats.sent / stats.seconds
    return stats


def _flush(producer: Any, out: _Outcomes, n: int, timeout: float | None) -> None:
    from kafka.errors import KafkaTimeoutError

    if timeout is None:
        timeout = producer.config.get("delivery_timeout_ms", 120_000) / 1000.0 + 10.0
    with contextlib.suppress(KafkaTimeoutError):  # what is still pending is counted as failed below
        producer.flush(timeout=timeout)
    # flush() returns when the batches are done; their callbacks may still be running.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        with out.lock:
            if out.ok + out.failed >= n:
                return
        time.sleep(0.01)


def send_raw(
    bootstrap: str,
    topic: str,
    items: Sequence[tuple[bytes | None, bytes]],
    *,
    producer_config: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
) -> int:
    """Send (key, value) byte pairs exactly as given (for malformed-message tests).

    Returns the number acknowledged; raises the first delivery error if any failed.
    """
    producer = make_producer(bootstrap, producer_config)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in items]
        producer.flush(timeout=timeout)
        for f in futures:
            f.get(timeout=timeout)
    finally:
        producer.close(timeout=5)
    return len(futures)


# --------------------------------------------------------------------------- sources


def events_from(
    source: str | None,
    simulate: SimConfig | None = None,
    lenient: bool = False,
    *,
    mapping: InputConfig | None = None,
    allow_skip_type: bool = False,
) -> list[Event]:
    """The events to replay: a file (any supported format), a shared dataset's name, or a
    simulation (`simulate`). ConfigError when the choice is missing, double or unknown.
    `mapping`: the shop's own column and type names (recsys.events.InputConfig); a lenient
    load reports what it skipped (recsys.data.datasets.load)."""
    if simulate is not None:
        if source:
            raise ConfigError("replay: give a FILE|NAME or --simulate N, not both")
        from recsys.data.simulator import simulate as run_simulation

        return run_simulation(simulate)
    if not source:
        raise ConfigError("replay: give an events FILE, a dataset NAME, or --simulate N")
    from recsys.data.datasets import DATASETS, dataset_path, load

    if source in DATASETS and not Path(source).exists():
        path = dataset_path(source)
    elif Path(source).exists():
        path = Path(source)
    else:
        raise ConfigError(f"replay: {source!r} is neither a file nor a dataset name ({', '.join(DATASETS)})")
    events, _ = load(path, lenient=lenient, mapping=mapping, allow_skip_type=allow_skip_type)
    return events
