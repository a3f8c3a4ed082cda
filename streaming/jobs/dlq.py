"""Read the dead-letter topic: each rejected message with why it was rejected and where it came from.

A dead letter (streaming/worker/publish.py `dead_letter_record`) is the original key and value
bytes plus headers: `reason`, `detail`, `source` (`<topic>/<partition>/<offset>` of the rejected
message) and, for a message too big to copy whole, `truncated` and the original sizes.

Like `tail`, a plain KafkaConsumer with no consumer group (nothing committed, any number of
readers). By default every retained dead letter is read, up to the end the topic had when the
reader started; `follow` keeps reading what arrives after that.

CLI (``streaming/cli/dlq.py``)::

    recsys dlq [--reason R] [--follow] [--new] [-n N] [--json]
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from recsys.errors import ConfigError, RecsysError

__all__ = ["DeadLetterRecord", "read_dead_letters", "format_dead_letter"]


@dataclass
class DeadLetterRecord:
    partition: int  # of the dead-letter topic
    offset: int
    timestamp_ms: int  # when the worker dead-lettered it
    key: bytes | None
    value: bytes | None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return self.headers.get("reason", "?")

    @property
    def detail(self) -> str:
        return self.headers.get("detail", "")

    @property
    def source(self) -> tuple[str, int, int] | None:
        """(topic, partition, offset) of the rejected message, from the `source` header."""
        parts = self.headers.get("source", "").rsplit("/", 2)
        if len(parts) != 3:
            return None
        try:
            return parts[0], int(parts[1]), int(parts[2])
        except ValueError:
            return None

    def as_dict(self) -> dict[str, Any]:
        src = self.source
        return {
            "reason": self.reason,
            "detail": self.detail,
            "source_topic": src[0] if src else None,
            "source_partition": src[1] if src else None,
            "source_offset": src[2] if src else None,
            "key": _text(self.key),
            "value": _text(self.value),
            "dead_lettered_ts": self.timestamp_ms,
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
            **{k: v for k, v in self.headers.items() if k not in ("reason", "detail", "source")},
        }


def _text(b: bytes | None) -> str | None:
    return None if b is None else b.decode("utf-8", "backslashreplace")


def read_dead_letters(
    bootstrap: str,
    topic: str,
    *,
    reason: str | None = None,
    follow: bool = False,
    new_only: bool = False,
    max_messages: int | None = None,
    consumer_config: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[DeadLetterRecord]:
    """Dead letters of `topic`, in each partition's order (the topic has one partition).

    Without `follow`: those retained when called, then stop. With `follow`: then keep waiting
    for new ones (until `should_stop()` is true, asked every 0.5 s at most). `new_only`: skip
    the retained ones (only sensible with `follow`). `reason`: only dead letters with that reason."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError

    from streaming.kafka import clients

    cfg = {
        "client_id": "streamrec-dlq",
        "enable_auto_commit": False,
        "request_timeout_ms": 30_000,
        "reconnect_backoff_ms": 200,
        "reconnect_backoff_max_ms": 5_000,
        **clients.kafka_python(),
        **(consumer_config or {}),
    }
    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, **cfg)
    except (KafkaTimeoutError, KafkaConnectionError) as e:
        raise RecsysError(
            f"cannot reach Kafka at {bootstrap} ({e.__class__.__name__}): is it running "
            "(`recsys broker status`) and is stream.bootstrap right?"
        ) from None
    try:
        # the first metadata answer may not know a topic made a moment ago: ask for a few seconds
        deadline = time.monotonic() + 5.0
        while not (parts := consumer.partitions_for_topic(topic)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not parts:
            raise ConfigError(
                f"topic {topic!r} does not exist on {bootstrap} "
                "(it is created by `recsys topics` or a worker's start; set stream.dlq_topic if it has another name)"
            )
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if new_only:
            consumer.seek_to_end(*tps)
        else:
            consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        count = 0
        while True:
            if max_messages is not None and count >= max_messages:
                return
            if should_stop is not None and should_stop():
                return
            if not follow and all(consumer.position(tp) >= end[tp] for tp in tps):
                return
            polled = consumer.poll(timeout_ms=500)
            for tp in sorted(polled, key=lambda t: t.partition):
                for r in polled[tp]:
                    rec = DeadLetterRecord(
                        r.partition,
                        r.offset,
                        r.timestamp,
                        r.key,
                        r.value,
                        {k: v.decode("utf-8", "replace") for k, v in (r.headers or [])},
                    )
                    if reason is not None and rec.reason != reason:
                        continue
                    if max_messages is not None and count >= max_messages:
                        return
                    count += 1
                    yield rec
    finally:
        with contextlib.suppress(Exception):  # closing is best effort
            consumer.close()


def format_dead_letter(rec: DeadLetterRecord, width: int = 200) -> str:
    """One line: when, reason, source position, key, detail, the start of the value."""
    when = datetime.fromtimestamp(rec.timestamp_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    src = rec.source
    where = f"{src[0]}/{src[1]}/{src[2]}" if src else rec.headers.get("source", "?")
    value = _text(rec.value) or ""
    if len(value) > width:
        value = value[:width] + f"… ({len(rec.value or b'')} bytes)"
    extra = "  TRUNCATED" if rec.headers.get("truncated") else ""
    return f"{when}  {rec.reason:<14} source={where}  key={_text(rec.key)!r}  {rec.detail}{extra}\n    value: {value}"
