"""Watch the recommendations topic: one line per recommendation as it is published.

`tail` reads with a plain KafkaConsumer: no consumer group (nothing is committed, any number
of tails can watch), every partition assigned, positioned at the end (only what is
published from now on) or at the beginning. Messages that are not JSON objects are skipped.

CLI (``streaming/cli/tail.py``)::

    recsys tail [--bootstrap B] [--topic recommendations] [--from-beginning]
                             [--user U] [-n/--max N]

A line: publish time, user, source, model version, both latencies, then the top items:
`since event` = published_ts - event_ts (from the event's own time, so it includes however late
the producer sent it) and `since ingest` = published_ts - ingest_ts (from the event's arrival in
Kafka: the pipeline's own latency, what streamrec_event_to_publish_seconds measures).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from recsys.errors import ConfigError

__all__ = ["tail", "Tail", "format_recommendation"]

DEFAULT_TOPIC = "recommendations"


class Tail(Iterator[dict]):
    """Iterator over recommendation dicts; positioned when constructed (see `tail`).

    Close it (or use it as a context manager) to release the consumer; it closes itself when
    exhausted.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        from_beginning: bool = False,
        max_messages: int | None = None,
        timeout_s: float | None = None,
        user: str | None = None,
        consumer_config: dict[str, Any] | None = None,
        wait_for_topic_s: float = 10.0,
        should_stop: Callable[[], bool] | None = None,
    ):
        from kafka import KafkaConsumer, TopicPartition

        from streaming.kafka import clients

        self.topic, self.user = topic, user
        self.max_messages, self.timeout_s = max_messages, timeout_s
        self.should_stop = should_stop  # asked between polls (every 0.5 s at most): True ends the iteration
        self.count = 0  # dicts yielded
        self.skipped = 0  # messages that were not JSON objects
        self._buf: list[dict] = []
        self._closed = False
        cfg = {
            "client_id": "streamrec-tail",
            "enable_auto_commit": False,
            "request_timeout_ms": 30_000,
            "reconnect_backoff_ms": 200,
            "reconnect_backoff_max_ms": 5_000,
            **clients.kafka_python(),
            **(consumer_config or {}),
        }
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, **cfg)
        try:
            parts = None
            deadline = time.monotonic() + wait_for_topic_s
            while True:
                parts = self._consumer.partitions_for_topic(topic)
                if parts or time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
            if not parts:
                raise ConfigError(f"tail: topic {topic!r} does not exist on {bootstrap}")
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            self._consumer.assign(tps)
            if from_beginning:
                self._consumer.seek_to_beginning(*tps)
            else:
                self._consumer.seek_to_end(*tps)
            for tp in tps:  # resolve the offsets now, not at the first poll
                self._consumer.position(tp)
        except BaseException:
            self.close()
            raise
        self._last = time.monotonic()

    def __next__(self) -> dict:
        while True:
            if (
                self._closed
                or (self.max_messages is not None and self.count >= self.max_messages)
                or (self.should_stop is not None and self.should_stop())
            ):
                self.close()
                raise StopIteration
            if self._buf:
                self.count += 1
                return self._buf.pop(0)
            wait_ms = 500
            if self.timeout_s is not None:
                left = self._last + self.timeout_s - time.monotonic()
                if left <= 0:
                    self.close()
                    raise StopIteration
                wait_ms = max(1, min(wait_ms, int(left * 1000)))
            polled = self._consumer.poll(timeout_ms=wait_ms)
            records = sorted(
                (r for rs in polled.values() for r in rs), key=lambda r: (r.timestamp, r.partition, r.offset)
            )
            for r in records:
                self._last = time.monotonic()
                try:
                    d = json.loads(r.value)
                except (ValueError, TypeError, UnicodeDecodeError):
                    self.skipped += 1
                    continue
                if not isinstance(d, dict):
                    self.skipped += 1
                    continue
                if self.user is not None:
                    who = d.get("user")
                    if who is None and r.key is not None:
                        who = r.key.decode("utf-8", "replace")
                    if str(who) != self.user:
                        continue
                self._buf.append(d)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):  # closing is best effort
                self._consumer.close()

    def __enter__(self) -> Tail:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):  # at interpreter exit anything may be gone
            self.close()


def tail(
    bootstrap: str,
    topic: str = DEFAULT_TOPIC,
    *,
    from_beginning: bool = False,
    max_messages: int | None = None,
    timeout_s: float | None = None,
    user: str | None = None,
) -> Tail:
    """Recommendation dicts from ``topic``, oldest first per poll.

    Positioned when called: at the end of every partition (only recommendations published
    after this call) or, with ``from_beginning``, at the start. Stops after ``max_messages``
    dicts or after ``timeout_s`` seconds without a new message; otherwise runs forever.
    ``user``: only that user's recommendations.
    """
    return Tail(
        bootstrap, topic, from_beginning=from_beginning, max_messages=max_messages, timeout_s=timeout_s, user=user
    )


# --------------------------------------------------------------------------- printing


def _clock(ms: Any) -> str:
    try:
        t = float(ms) / 1000.0
        return datetime.fromtimestamp(t).strftime("%H:%M:%S.") + f"{int(t * 1000) % 1000:03d}"
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.now().strftime("%H:%M:%S.%f")[:-3]


def _since(pub: Any, start: Any) -> str:
    ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (pub, start))
    return f"{int(pub - start)}ms" if ok else "-"


def format_recommendation(d: dict, top: int = 5) -> str:
    """One line: time, user, source, model version, latency, top items."""
    pub = d.get("published_ts")
    latency = f"since event {_since(pub, d.get('event_ts'))}, since ingest {_since(pub, d.get('ingest_ts'))}"
    items = d.get("items") or []
    if not isinstance(items, list):
        items = [items]
    shown = " ".join(str(i) for i in items[:top])
    if len(items) > top:
        shown += f" … (+{len(items) - top})"
    query = f" q={d['query']}" if d.get("query") is not None else ""
    return (
        f"{_clock(pub if pub is not None else None)}  user={d.get('user', '?')}  "
        f"src={d.get('source', '?')}  model={d.get('model_version', '-')}  "
        f"latency: {latency}{query}  [{shown}]"
    )
