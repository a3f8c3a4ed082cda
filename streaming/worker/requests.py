"""What the HTTP routes compute, without aiohttp: lists on request and events over HTTP.

    GET /recommendations/<user>/?n=&category=&brand=&price_min=&price_max=&exclude=&item=
        a fresh list from the user's state (fold-in + scoring as in the stream, the same
        catalogue mask, plus the request's filters); with no parameter, the last list published
        for the user, unless one of its items may no longer be shown (then a fresh one)
    GET /similar/<item>/?n=&category=&brand=&price_min=&price_max=&exclude=
    POST /events        one JSON event or an array of them, validated by the stream's validator
                        (streaming/worker/processor.py decode_event); all valid: produced to the
                        clickstream keyed by user, 202; any invalid: 400 naming each, nothing produced

`category`, `brand` and `exclude` take comma-separated values (or the parameter repeated):
any of the categories, any of the brands, none of the excluded items.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from recsys.catalogue import ItemFilter
from recsys.errors import EventError
from recsys.events import Event, InputConfig, parse_event

MAX_N = 1000
FILTER_PARAMS = ("n", "category", "brand", "price_min", "price_max", "exclude")
RECS_PARAMS = (*FILTER_PARAMS, "item")
SIMILAR_PARAMS = FILTER_PARAMS


class BadRequest(ValueError):
    """A request parameter is unknown or has a bad value: 400 with this message."""


class Query:
    """A request's parsed parameters."""

    def __init__(self, n: int, flt: ItemFilter, item: str | None, given: bool):
        self.n, self.filter, self.item, self.given = n, flt, item, given


def _values(query: Any, name: str) -> list[str]:
    raw = query.getall(name, []) if hasattr(query, "getall") else [query[name]] if name in query else []
    return [v.strip() for r in raw for v in r.split(",") if v.strip()]


def _price(query: Any, name: str) -> float | None:
    vals = query.getall(name, []) if hasattr(query, "getall") else [query[name]] if name in query else []
    if not vals:
        return None
    if len(vals) > 1:
        raise BadRequest(f"{name} given {len(vals)} times")
    try:
        v = float(vals[0])
    except ValueError:
        raise BadRequest(f"{name} must be a number, got {vals[0]!r}") from None
    if not math.isfinite(v) or v < 0:
        raise BadRequest(f"{name} must be a finite number >= 0, got {vals[0]!r}")
    return v


def parse_query(query: Mapping[str, str], allowed: Sequence[str], default_n: int) -> Query:
    """Parameters -> Query, or BadRequest naming what is wrong (unknown names, bad values)."""
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown parameter(s) {', '.join(unknown)}; this route takes {', '.join(allowed)}")
    n = default_n
    if "n" in query:
        raw = query.getall("n") if hasattr(query, "getall") else [query["n"]]
        if len(raw) > 1:
            raise BadRequest(f"n given {len(raw)} times")
        try:
            n = int(raw[0])
        except ValueError:
            n = 0
        if not 0 < n <= MAX_N:
            raise BadRequest(f"n must be an integer in 1..{MAX_N}, got {raw[0]!r}")
    lo, hi = _price(query, "price_min"), _price(query, "price_max")
    if lo is not None and hi is not None and lo > hi:
        raise BadRequest(f"price_min {lo:g} is above price_max {hi:g}")
    item = None
    if "item" in allowed and "item" in query:
        items = _values(query, "item")
        if len(items) != 1:
            raise BadRequest("item must name one item id (the one on screen)")
        item = items[0]
    for name in ("category", "brand", "exclude"):
        if name in query and not _values(query, name):
            raise BadRequest(f"{name} is empty")
    flt = ItemFilter(
        categories=tuple(_values(query, "category")),
        brands=tuple(_values(query, "brand")),
        price_min=lo,
        price_max=hi,
        exclude=frozenset(_values(query, "exclude")),
    )
    return Query(n, flt, item, given=bool(query))


def validate_events(
    body: bytes, mapping: InputConfig | None, max_count: int
) -> tuple[list[tuple[bytes, bytes]], list[dict[str, Any]]]:
    """A POST /events body -> (records to produce (key, value), rejections). Each event goes
    through the stream's own validator (the message is what the worker will read, keyed by its
    user); a rejection names the event's index, reason and detail. A body that is not JSON, or
    neither an object nor an array of objects, is one rejection with index None."""
    from streaming.worker.processor import Incoming, decode_event

    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        return [], [{"index": None, "reason": "bad_json", "detail": str(e)[:200]}]
    events = doc if isinstance(doc, list) else [doc]
    if not events:
        return [], [{"index": None, "reason": "empty", "detail": "the array holds no event"}]
    if len(events) > max_count:
        return [], [
            {
                "index": None,
                "reason": "too_many",
                "detail": f"{len(events)} events > {max_count} per request (stream.events_max_count): split it",
            }
        ]
    records: list[tuple[bytes, bytes]] = []
    rejected: list[dict[str, Any]] = []
    for i, obj in enumerate(events):
        try:
            value = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
            event: Event = parse_event(obj, mapping=mapping)  # the user, to key the message by
            key = event.user.encode()
            decode_event(Incoming(key, value, -1, -1, 0), mapping)  # exactly what the worker will check
        except EventError as e:
            rejected.append({"index": i, "reason": e.reason, "detail": e.detail})
            continue
        records.append((key, value))
    return records, rejected
