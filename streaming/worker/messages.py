"""One clickstream message -> a validated Event: what the worker accepts, and what the retrain's
clickstream window (streaming/jobs/window.py) accepts, without the worker's imports (Faust among
them: seconds of a retrain's start)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from recsys.errors import EventError
from recsys.events import Event, InputConfig, parse_event

MAX_MESSAGE_BYTES = 64 * 1024  # an event is a few hundred bytes; anything this big is not one


@dataclass
class Incoming:
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp_ms: int  # Kafka record timestamp: when the event reached the broker


def decode_event(msg: Incoming, mapping: InputConfig | None = None) -> Event:
    """Bytes -> validated Event, or EventError with a short reason code. `mapping`: the shop's
    field and type names and time format (the `[input]` section), as for its files."""
    if msg.value is None:
        raise EventError("empty", "message has no value")
    if len(msg.value) > MAX_MESSAGE_BYTES:
        raise EventError("too_large", f"{len(msg.value)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        text = msg.value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EventError("bad_utf8", str(e)) from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise EventError("bad_json", str(e)[:200]) from None
    event = parse_event(obj, mapping=mapping)
    if msg.key is None:
        raise EventError("missing_key", f"messages must be keyed by user id (here {event.user!r})")
    if msg.key != event.user.encode():
        key = msg.key.decode("utf-8", "replace")
        raise EventError(
            "key_mismatch",
            f"message key {key[:100]!r} differs from the event's user {event.user!r}: key each message "
            "by its user id, the same text as the user field",
            value=key,
        )
    return event
