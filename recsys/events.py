"""The one event form every loader, the simulator and the stream produce.

An event is one thing a shopper did to one item at one time. Ids are strings: shops use
numbers, SKUs and UUIDs alike, and a string survives all of them. Time is integer
milliseconds since the epoch (UTC).

`parse_event` is the single validator: the stream calls it on every message and the
canonical-format loader on every row, so what the worker accepts is exactly what a file
may contain. `parse_time` is the one reader of event times (ISO-8601, epoch seconds or
milliseconds), and `InputConfig` (the `[input]` configuration section) declares a shop's own
field and type names, applied alike to its files and to its stream.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from recsys.errors import ConfigError, EventError
from recsys.fields import setting

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

# The fields of an event, required ones first (the canonical file's columns, in this order).
CANONICAL_FIELDS: tuple[str, ...] = (
    "user", "item", "type", "ts", "dwell", "session", "price", "event_id", "category",
)  # fmt: skip
REQUIRED_FIELDS: tuple[str, ...] = CANONICAL_FIELDS[:4]
# How a `ts` is read. auto: a number is milliseconds, text is ISO-8601 (or a number as text).
TIME_FORMATS: tuple[str, ...] = ("auto", "iso8601", "epoch_s", "epoch_ms")
TIME_HELP = (
    "ISO-8601 with a timezone (2026-11-29T22:57:12Z, 2026-11-29 23:57:12+01:00, '... UTC'), "
    "or a number of epoch milliseconds; epoch seconds with --time-format epoch_s"
)

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
    # The item's category as the shop's event names it (GA4's item_category; the Taobao and
    # REES46 files' category_id): the category-popularity candidate source reads it. It travels in
    # the clickstream record (`to_dict`, `parse_event`: an optional field the `[input]` mapping
    # may rename), so a worker counts exactly the categories stream-eval counts for the same
    # events; a worker falls back to the catalogue's first category of the item when an event
    # has none (streaming/worker/ranking.py). Item data, not part of what happened, so events
    # that differ only in it compare equal.
    category: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"user": self.user, "item": self.item, "type": self.type, "ts": self.ts}
        for k in ("dwell", "session", "price", "event_id", "category"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class InputConfig:
    """The `[input]` configuration section: a shop's own names for the event fields and types, and
    how its times are written. Files and the stream read events through the same mapping, so
    an export `customer,sku,action,when` and a backend sending `{"customer": ..., "when": ...}`
    need no rewriting. The canonical names keep working next to the mapped ones."""

    columns: Mapping[str, str] = setting(
        doc="the shop's name of each event field: canonical field -> source column or JSON key "
        '(keys: user, item, type, ts, dwell, session, price, event_id, category), e.g. user = "customer"; '
        "also `--columns user=customer,ts=when`",
        factory=dict,
    )
    types: Mapping[str, tuple[str, ...]] = setting(
        doc="the shop's names of each event type: canonical type -> source names (keys: view, click, "
        'favorite, addtocart, transaction), e.g. addtocart = ["add_to_basket"]; also '
        "`--types addtocart=add_to_basket,transaction=order`",
        factory=dict,
    )
    time_format: str = setting(
        "auto",
        "how `ts` is written: auto (a number is epoch milliseconds, text is ISO-8601), iso8601, "
        "epoch_s (seconds, may be fractional) or epoch_ms; also `--time-format`",
    )

    def __post_init__(self) -> None:
        bad = sorted(set(self.columns) - set(CANONICAL_FIELDS))
        if bad:
            raise ConfigError(f"input.columns: unknown fields {bad}; the fields are {', '.join(CANONICAL_FIELDS)}")
        sources = [str(v).strip() for v in self.columns.values()]
        if any(not v for v in sources) or len(set(sources)) != len(sources):
            raise ConfigError(
                f"input.columns: each field needs its own non-empty source name, got {dict(self.columns)}"
            )
        bad = sorted(set(self.types) - set(EVENT_TYPES))
        if bad:
            raise ConfigError(f"input.types: unknown event types {bad}; the types are {', '.join(EVENT_TYPES)}")
        seen: dict[str, str] = {}
        for canon, names in self.types.items():
            for n in names:
                k = n.strip().lower()
                if not k or seen.get(k, canon) != canon:
                    raise ConfigError(f"input.types: {n!r} is mapped to {seen.get(k)} and {canon}")
                seen[k] = canon
        if self.time_format not in TIME_FORMATS:
            raise ConfigError(f"input.time_format must be one of {', '.join(TIME_FORMATS)}, got {self.time_format!r}")

    @cached_property
    def source_names(self) -> dict[str, str]:
        """canonical field -> the shop's name, for the mapped fields only."""
        return {k: str(v).strip() for k, v in self.columns.items()}

    @cached_property
    def type_names(self) -> dict[str, str]:
        """the shop's type name (lower case) -> canonical type."""
        return {n.strip().lower(): canon for canon, names in self.types.items() for n in names}

    def rename(self, d: Mapping[str, Any]) -> Mapping[str, Any]:
        """An event object with the shop's keys as canonical ones (a mapped key wins over a
        canonical key also present)."""
        names = self.source_names
        if not names:
            return d
        out = dict(d)
        for canon, src in names.items():
            if src in d:
                out[canon] = d[src]
        return out

    def label(self, field_name: str) -> str:
        """How messages name a field: the shop's name when mapped."""
        src = self.source_names.get(field_name)
        return f"{src!r} ({field_name})" if src else repr(field_name)


DEFAULT_INPUT = InputConfig()

# What a type name suggests, for the hint of an unknown type.
_TYPE_HINTS = (
    ("cart", "addtocart"),
    ("basket", "addtocart"),
    ("bag", "addtocart"),
    ("buy", "transaction"),
    ("order", "transaction"),
    ("purchase", "transaction"),
    ("checkout", "transaction"),
    ("sale", "transaction"),
    ("fav", "favorite"),
    ("wish", "favorite"),
    ("like", "favorite"),
    ("click", "click"),
    ("view", "view"),
    ("visit", "view"),
    ("impression", "view"),
)


def canonical_type(raw: str, mapping: InputConfig | None = None) -> str:
    t = raw.strip().lower()
    if mapping is not None and mapping.types:
        mapped = mapping.type_names.get(t)
        if mapped is not None:
            return mapped
    t = TYPE_ALIASES.get(t, t)
    if t not in TYPE_CODES:
        raise EventError("unknown_type", unknown_type_message(raw, mapping), value=raw)
    return t


def unknown_type_message(raw: str, mapping: InputConfig | None = None) -> str:
    """Names the accepted types, the synonyms, and how to map this one."""
    low = raw.strip().lower()
    guess = next((canon for hint, canon in _TYPE_HINTS if hint in low), "<type>")
    synonyms = dict(TYPE_ALIASES)
    if mapping is not None:
        synonyms.update(mapping.type_names)
    syn = ", ".join(f"{k}->{v}" for k, v in synonyms.items())
    name = raw.strip() or raw
    return (
        f"event type {show(raw)} is not one of {', '.join(EVENT_TYPES)} nor a known synonym ({syn}); "
        f'map it with --types {guess}={name} (or [input.types] {guess} = ["{name}"] in the configuration)'
    )


def show(v: Any, limit: int = 80) -> str:
    """`repr(v)`, cut to `limit` characters: a message names the value, not all 64 KB of it."""
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _fmt_ms(ts: float) -> str:
    try:
        return (_EPOCH + int(ts) * _MS).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError):
        return f"{ts} ms"


def parse_iso(s: str, label: str = "'ts'") -> int:
    """ISO-8601 with a timezone (``Z``, ``+02:00`` or a trailing `` UTC``) -> ms, or EventError('bad_ts')."""
    t = s.strip()
    if t.endswith("UTC"):
        t = t[:-3].rstrip() + "+00:00"
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise EventError("bad_ts", f"unparseable time {show(s)} in {label}; expected {TIME_HELP}", value=s) from None
    if dt.tzinfo is None:
        raise EventError(
            "bad_ts", f"time {show(s)} in {label} has no timezone: add Z (UTC) or +hh:mm, it is not guessed", value=s
        )
    return (dt - _EPOCH) // _MS


def parse_time(v: Any, time_format: str = "auto", label: str = "'ts'") -> int:
    """An event time -> integer ms since the epoch, or EventError('bad_ts') naming the value and the
    formats expected. The one time reader of files and the stream: `time_format` is
    `InputConfig.time_format` (numbers, and numbers written as text, are milliseconds unless it
    says epoch_s; text is ISO-8601)."""
    if isinstance(v, str):
        text = v.strip()
        try:
            num: float = int(text)
        except ValueError:
            try:
                num = float(text)
            except ValueError:
                if time_format in ("epoch_s", "epoch_ms"):
                    raise EventError(
                        "bad_ts",
                        f"{label}={show(v)} is not a number of {time_format[6:]} (input.time_format = {time_format}); "
                        "for ISO-8601 times use --time-format iso8601 or auto",
                        value=v,
                    ) from None
                return parse_iso(text, label)
        if isinstance(num, float) and not math.isfinite(num):
            raise EventError("bad_ts", f"{label}={show(v)} is not a finite time; expected {TIME_HELP}", value=v)
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        num = v
        if isinstance(num, float) and not math.isfinite(num):
            raise EventError("bad_ts", f"{label}={show(v)} is not a finite time; expected {TIME_HELP}", value=v)
    else:
        raise EventError(
            "bad_ts", f"{label} must be a time, got {type(v).__name__} {show(v)}; expected {TIME_HELP}", value=v
        )
    if time_format == "iso8601":
        raise EventError(
            "bad_ts",
            f"{label}={show(v)} is a number but input.time_format is iso8601; "
            "declare --time-format epoch_ms (or epoch_s, or auto)",
            value=v,
        )
    if time_format == "epoch_s":
        return round(num * 1000)
    return int(num)


def _check_range(ts: int, raw: Any, now: int, time_format: str, label: str) -> None:
    """MIN_TS_MS <= ts <= now + a day, or EventError with a hint when the unit looks wrong."""
    latest = now + MAX_FUTURE_SKEW_MS
    if MIN_TS_MS <= ts <= latest:
        return
    if ts < MIN_TS_MS:
        if time_format != "epoch_s" and MIN_TS_MS <= ts * 1000 <= latest:
            raise EventError(
                "ts_too_old",
                f"{label}={show(raw)} is before 2000-01-01 as milliseconds: it looks like seconds "
                f"({_fmt_ms(ts * 1000)}); declare --time-format epoch_s "
                '(or [input] time_format = "epoch_s"), or send milliseconds',
                value=raw,
            )
        raise EventError("ts_too_old", f"{label}={show(raw)} ({_fmt_ms(ts)}) is before 2000-01-01", value=raw)
    if MIN_TS_MS <= ts // 1000 <= latest:
        unit, fix = (
            ("milliseconds", "declare --time-format epoch_ms")
            if time_format == "epoch_s"
            else ("microseconds", "send milliseconds")
        )
        raise EventError(
            "ts_in_future",
            f"{label}={show(raw)} is far in the future: it looks like {unit} ({_fmt_ms(ts // 1000)}); {fix}",
            value=raw,
        )
    raise EventError(
        "ts_in_future",
        f"{label}={show(raw)} ({_fmt_ms(ts)}) is more than a day ahead of now ({_fmt_ms(now)}): check the sender's clock",
        value=raw,
    )


def _id(d: Mapping[str, Any], key: str, m: InputConfig = DEFAULT_INPUT) -> str:
    if key not in d or d[key] is None:
        raise EventError(f"missing_{key}", f"field {m.label(key)} is required")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise EventError(f"bad_{key}", f"{m.label(key)} must be a string or integer, got {type(v).__name__}", value=v)
    s = str(v)
    if not s or len(s) > MAX_ID_LEN or not s.isprintable():
        raise EventError(f"bad_{key}", f"{m.label(key)} must be 1..{MAX_ID_LEN} printable characters", value=v)
    return s


def _number(d: Mapping[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise EventError(f"bad_{key}", f"{key!r} must be a number, got {type(v).__name__}")
    f = float(v)
    if not math.isfinite(f) or f < lo or f > hi:
        raise EventError(f"bad_{key}", f"{key!r}={show(v)} is outside [{lo}, {hi}]")
    return f


def parse_event(
    d: Any, now_ms: int | None = None, mapping: InputConfig | None = None, *, renamed: bool = False
) -> Event:
    """Validate a decoded JSON object and return the Event, or raise EventError(reason).

    `mapping` (the `[input]` section): the shop's field and type names and time format;
    `renamed`: `d` has canonical keys already (a mapped file's row), messages still use the
    shop's names. Unknown fields are ignored (kept out of the way, never fatal).
    """
    if not isinstance(d, Mapping):
        raise EventError("not_an_object", f"expected a JSON object, got {type(d).__name__}")
    m = mapping or DEFAULT_INPUT
    if m.columns and not renamed:
        d = m.rename(d)
    user, item = _id(d, "user", m), _id(d, "item", m)
    raw_type = d.get("type")
    if raw_type is None:
        raise EventError("missing_type", f"field {m.label('type')} is required")
    if not isinstance(raw_type, str):
        raise EventError(
            "bad_type", f"{m.label('type')} must be a string, got {type(raw_type).__name__}", value=raw_type
        )
    etype = canonical_type(raw_type, m)
    raw_ts = d.get("ts")
    if raw_ts is None:
        raise EventError("missing_ts", f"field {m.label('ts')} (event time) is required; expected {TIME_HELP}")
    if type(raw_ts) is int and m.time_format in ("auto", "epoch_ms"):
        ts = raw_ts  # the common case on the stream, without parse_time's checks
    else:
        ts = parse_time(raw_ts, m.time_format, m.label("ts"))
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if not MIN_TS_MS <= ts <= now + MAX_FUTURE_SKEW_MS:
        _check_range(ts, raw_ts, now, m.time_format, m.label("ts"))
    dwell = _number(d, "dwell", 0.0, MAX_DWELL_S)
    price = _number(d, "price", 0.0, 1e12)
    session = _id(d, "session", m) if d.get("session") is not None else None
    event_id = _id(d, "event_id", m) if d.get("event_id") is not None else None
    category = _id(d, "category", m) if d.get("category") is not None else None
    return Event(user, item, etype, ts, dwell, session, price, event_id, category)
