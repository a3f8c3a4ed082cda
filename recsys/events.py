"""The one event form every loader, the simulator and the stream produce.

An event is one thing a shopper did to one item at one time. Ids are strings: shops use
numbers, SKUs and UUIDs alike, and a string survives all of them. Time is integer
milliseconds since the epoch (UTC).

`parse_event` is the single validator: the stream calls it on every message and the
canonical-format loader on every row, so what the worker accepts is exactly what a file
may contain.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recsys.errors import EventError

# Canonical event types, weakest signal first. Loaders map dataset vocabularies onto these.
EVENT_TYPES: tuple[str, ...] = ("view", "click", "favorite", "addtocart", "transaction")
TYPE_CODES: dict[str, int] = {t: i for i, t in enumerate(EVENT_TYPES)}

# Dataset and common synonyms -> canonical type.
TYPE_ALIASES: dict[str, str] = {
    "pv": "view",
    "views": "view",
    "page_view": "view",
    "clicks": "click",
    "fav": "favorite",
    "wishlist": "favorite",
    "cart": "addtocart",
    "carts": "addtocart",
    "add_to_cart": "addtocart",
    "buy": "transaction",
    "purchase": "transaction",
    "order": "transaction",
    "orders": "transaction",
}

MAX_ID_LEN = 256  # ids longer than this are rejected, not truncated
MAX_FUTURE_SKEW_MS = 24 * 3600_000  # events more than a day ahead of the clock are absurd
MIN_TS_MS = 946_684_800_000  # 2000-01-01: older times are corrupt, not history
MAX_DWELL_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Event:
    user: str
    item: str
    type: str  # one of EVENT_TYPES
    ts: int  # event time, ms since epoch, UTC
    dwell: float | None = None  # seconds the shopper spent on the item
    session: str | None = None
    price: float | None = None
    event_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"user": self.user, "item": self.item, "type": self.type, "ts": self.ts}
        for k in ("dwell", "session", "price", "event_id"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


def canonical_type(raw: str) -> str:
    t = raw.strip().lower()
    t = TYPE_ALIASES.get(t, t)
    if t not in TYPE_CODES:
        raise EventError("unknown_type", f"event type {raw!r} is not one of {', '.join(EVENT_TYPES)}")
    return t


def _id(d: Mapping[str, Any], key: str) -> str:
    if key not in d or d[key] is None:
        raise EventError(f"missing_{key}", f"field {key!r} is required")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise EventError(f"bad_{key}", f"{key!r} must be a string or integer, got {type(v).__name__}")
    s = str(v)
    if not s or len(s) > MAX_ID_LEN or not s.isprintable():
        raise EventError(f"bad_{key}", f"{key!r} must be 1..{MAX_ID_LEN} printable characters")
    return s


def _number(d: Mapping[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise EventError(f"bad_{key}", f"{key!r} must be a number, got {type(v).__name__}")
    f = float(v)
    if not math.isfinite(f) or f < lo or f > hi:
        raise EventError(f"bad_{key}", f"{key!r}={v!r} is outside [{lo}, {hi}]")
    return f


def parse_event(d: Any, now_ms: int | None = None) -> Event:
    """Validate a decoded JSON object and return the Event, or raise EventError(reason).

    Unknown fields are ignored (kept out of the way, never fatal).
    """
    if not isinstance(d, Mapping):
        raise EventError("not_an_object", f"expected a JSON object, got {type(d).__name__}")
    user, item = _id(d, "user"), _id(d, "item")
    raw_type = d.get("type")
    if raw_type is None:
        raise EventError("missing_type", "field 'type' is required")
    if not isinstance(raw_type, str):
        raise EventError("bad_type", f"'type' must be a string, got {type(raw_type).__name__}")
    etype = canonical_type(raw_type)
    ts = d.get("ts")
    if ts is None:
        raise EventError("missing_ts", "field 'ts' (event time, ms since epoch) is required")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise EventError("bad_ts", f"'ts' must be a finite number of milliseconds, got {ts!r}")
    ts = int(ts)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if ts < MIN_TS_MS:
        raise EventError("ts_too_old", f"ts={ts} is before 2000-01-01")
    if ts > now + MAX_FUTURE_SKEW_MS:
        raise EventError("ts_in_future", f"ts={ts} is more than a day ahead of now={now}")
    dwell = _number(d, "dwell", 0.0, MAX_DWELL_S)
    price = _number(d, "price", 0.0, 1e12)
    session = _id(d, "session") if d.get("session") is not None else None
    event_id = _id(d, "event_id") if d.get("event_id") is not None else None
    return Event(user, item, etype, ts, dwell, session, price, event_id)
