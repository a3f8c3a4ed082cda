"""The item catalogue: what may be shown, and the attributes requests filter on (no Kafka here).

An item record (the items topic, docs/formats.md "Item records"), keyed by item id:

    {"item": "i1", "available": true, "hidden": false, "categories": ["electronics", "electronics.audio"],
     "brand": "acme", "price": 19.99, "updated": 1764460800000}

Every field but `item` is optional; a record is the item's whole state (the topic is compacted:
only the latest record per item survives, so a record never patches an older one). A tombstone
(null value) deletes the item. Eligibility:

    hidden, unavailable or deleted  -> never shown (still in training: the catalogue only masks scores)
    listed and neither              -> shown
    never listed                    -> shown (the catalogue is optional; a new item may be
                                       recommended before its record arrives)

`Catalogue` keeps every item in compact arrays (one slot per item id ever seen) and answers, for a
model, which of its rows may be shown under a request's filters: `mask(model, ItemFilter(...))`
returns an `ItemMask`, the one eligibility object every scorer takes (recsys/serving/scoring.py
applies it inside the top-k; `ItemMask.allows` answers for ids outside the model).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsys.errors import EventError
from recsys.events import MAX_ID_LEN, parse_time, show

MAX_CATEGORIES = 16
MAX_LABEL_LEN = 256  # a category or brand
MAX_PRICE = 1e12
MAX_RECORD_BYTES = 16 * 1024
FIELDS = ("item", "available", "hidden", "categories", "brand", "price", "updated")

# flag bits of a slot; an item may be shown iff flags & _MASK is _SHOWN, or it was never listed (0)
_LISTED, _AVAILABLE, _HIDDEN, _DELETED = 1, 2, 4, 8
_MASK, _SHOWN = _LISTED | _AVAILABLE | _HIDDEN | _DELETED, _LISTED | _AVAILABLE


def _shown(flags: Any) -> Any:
    return (flags == 0) | ((flags & _MASK) == _SHOWN)


@dataclass(frozen=True)
class Item:
    item: str
    available: bool = True
    hidden: bool = False
    categories: tuple[str, ...] = ()
    brand: str | None = None
    price: float | None = None
    updated: int | None = None

    @property
    def eligible(self) -> bool:
        return self.available and not self.hidden

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"item": self.item, "available": self.available, "hidden": self.hidden}
        if self.categories:
            out["categories"] = list(self.categories)
        if self.brand is not None:
            out["brand"] = self.brand
        if self.price is not None:
            out["price"] = self.price
        if self.updated is not None:
            out["updated"] = self.updated
        return out


def _label(v: Any, what: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise EventError(f"bad_{what}", f"{what} must be a string, got {type(v).__name__} {show(v)}", value=v)
    s = str(v)
    if not s or len(s) > MAX_LABEL_LEN or not s.isprintable():
        raise EventError(f"bad_{what}", f"{what} must be 1..{MAX_LABEL_LEN} printable characters", value=v)
    return s


def parse_item(obj: Any) -> Item:
    """A decoded JSON object -> Item, or EventError(reason) naming the field and the fix."""
    if not isinstance(obj, dict):
        raise EventError("not_object", f"an item record must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise EventError(
            "unknown_field", f"unknown field(s) {unknown[:5]}; an item record has {list(FIELDS)}", value=unknown[0]
        )
    item = obj.get("item")
    if isinstance(item, bool) or not isinstance(item, (str, int)) or item == "":
        raise EventError("missing_item" if item in (None, "") else "bad_item", "field 'item' (the item id) is required")
    item = str(item)
    if len(item) > MAX_ID_LEN or not item.isprintable():
        raise EventError("bad_item", f"'item' must be 1..{MAX_ID_LEN} printable characters", value=item)
    flags = {}
    for name, default in (("available", True), ("hidden", False)):
        v = obj.get(name, default)
        if v is None:
            v = default
        if not isinstance(v, bool):
            raise EventError(f"bad_{name}", f"{name!r} must be true or false, got {show(v)}", value=v)
        flags[name] = v
    cats_raw = obj.get("categories")
    cats: tuple[str, ...] = ()
    if cats_raw is not None:
        if isinstance(cats_raw, (str, int)) and not isinstance(cats_raw, bool):
            cats_raw = [cats_raw]
        if not isinstance(cats_raw, list):
            raise EventError("bad_categories", f"'categories' must be a list of strings, got {show(cats_raw)}")
        if len(cats_raw) > MAX_CATEGORIES:
            raise EventError("bad_categories", f"at most {MAX_CATEGORIES} categories, got {len(cats_raw)}")
        cats = tuple(dict.fromkeys(_label(c, "categories") for c in cats_raw))
    brand = obj.get("brand")
    brand = None if brand is None else _label(brand, "brand")
    price = obj.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, (int, float)):
            raise EventError("bad_price", f"'price' must be a number, got {show(price)}", value=price)
        if not (math.isfinite(price) and 0 <= price <= MAX_PRICE):
            raise EventError("bad_price", f"'price'={show(price)} is outside [0, {MAX_PRICE:g}]", value=price)
        price = float(price)
    updated = obj.get("updated")
    if updated is not None:
        updated = parse_time(updated, "auto", "'updated'")
    return Item(item, flags["available"], flags["hidden"], cats, brand, price, updated)


def decode_item(key: bytes | None, value: bytes | None) -> Item | None:
    """A record of the items topic -> Item, or None for a tombstone (delete `key`); EventError
    with a reason code for anything else."""
    if key is None or not key:
        raise EventError("missing_key", "item records must be keyed by item id")
    if value is None:
        return None
    if len(value) > MAX_RECORD_BYTES:
        raise EventError("too_large", f"{len(value)} bytes > {MAX_RECORD_BYTES}")
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise EventError("bad_json", str(e)[:200]) from None
    item = parse_item(obj)
    if key != item.item.encode():
        k = key.decode("utf-8", "replace")[:100]
        raise EventError(
            "key_mismatch", f"record key {k!r} differs from its item {item.item!r}: key each record by its item id"
        )
    return item


def encode_item(item: Item) -> tuple[bytes, bytes]:
    return item.item.encode(), json.dumps(item.to_json(), separators=(",", ":")).encode()


# -- filters and masks ------------------------------------------------------------------------
@dataclass(frozen=True)
class ItemFilter:
    """A request's filters (all optional, all must hold): any of `categories`, any of `brands`,
    price_min <= price <= price_max, not in `exclude`. An attribute filter keeps only items whose
    record has that attribute."""

    categories: tuple[str, ...] = ()
    brands: tuple[str, ...] = ()
    price_min: float | None = None
    price_max: float | None = None
    exclude: frozenset[str] = frozenset()

    @property
    def on_attributes(self) -> bool:
        return bool(self.categories or self.brands or self.price_min is not None or self.price_max is not None)


@dataclass
class ItemMask:
    """Which items may be shown: `rows[r]` for the model's rows, `allows(item)` for any id (the
    popular items that pad a list need not be in the model). Scorers apply it inside the top-k."""

    rows: np.ndarray  # bool (n_items,)
    _allows: Any = None  # item id -> bool, for ids outside the model
    _blocked: np.ndarray | None = field(default=None, repr=False)
    _index: Mapping[str, int] = field(default_factory=dict, repr=False)

    @property
    def blocked(self) -> np.ndarray:
        """Rows that may not be shown (int32), for top-k filters that take a list."""
        if self._blocked is None:
            self._blocked = np.flatnonzero(~self.rows).astype(np.int32)
        return self._blocked

    @property
    def fraction(self) -> float:
        n = len(self.rows)
        return 1.0 if n == 0 else 1.0 - len(self.blocked) / n

    def allows(self, item: str) -> bool:
        r = self._index.get(item)
        if r is not None and r < len(self.rows):
            return bool(self.rows[r])
        return True if self._allows is None else bool(self._allows(item))


class Catalogue:
    """Every item's record in compact arrays; `generation` changes with every update."""

    def __init__(self, capacity: int = 1024):
        self.slot: dict[str, int] = {}
        self.ids: list[str] = []
        # np.ndarray: numpy 2.2's stubs type each array by its creation's shape, then refuse the grown ones
        self.flags: np.ndarray = np.zeros(capacity, np.uint8)
        self.price: np.ndarray = np.full(capacity, np.nan, np.float32)
        self.brand: np.ndarray = np.full(capacity, -1, np.int32)
        self.cats: np.ndarray = np.full((capacity, 1), -1, np.int32)
        self.updated: np.ndarray = np.zeros(capacity, np.int64)
        self.cat_code: dict[str, int] = {}
        self.cat_names: list[str] = []
        self.brand_code: dict[str, int] = {}
        self.brand_names: list[str] = []
        self.generation = 0
        self.hidden = 0  # listed items that may not be shown, and deleted ones
        self._maps: dict[int, tuple[Any, np.ndarray]] = {}  # id(model) -> (model, slot per row)
        self._masks: dict[int, tuple[Any, int, ItemMask]] = {}  # id(model) -> (model, generation, eligibility)

    def __len__(self) -> int:
        """Items listed now (deleted ones not counted)."""
        return int(np.count_nonzero(self.flags[: len(self.ids)] & _LISTED))

    # -- updates ----------------------------------------------------------------------------
    def _slot_for(self, item: str) -> int:
        s = self.slot.get(item)
        if s is not None:
            return s
        s = len(self.ids)
        if s >= len(self.flags):
            cap = 2 * len(self.flags)
            self.flags = np.resize(self.flags, cap)
            self.flags[s:] = 0
            self.price = np.concatenate([self.price, np.full(cap - s, np.nan, np.float32)])
            self.brand = np.concatenate([self.brand, np.full(cap - s, -1, np.int32)])
            self.cats = np.vstack([self.cats, np.full((cap - s, self.cats.shape[1]), -1, np.int32)])
            self.updated = np.concatenate([self.updated, np.zeros(cap - s, np.int64)])
        self.slot[item] = s
        self.ids.append(item)
        for model, slots in self._maps.values():  # models already mapped learn the new slot
            r = model.item_index.get(item)
            if r is not None:
                slots[r] = s
        return s

    @staticmethod
    def _code(name: str, codes: dict[str, int], names: list[str]) -> int:
        c = codes.get(name)
        if c is None:
            c = codes[name] = len(names)
            names.append(name)
        return c

    def _count(self, s: int, new_flags: int) -> None:
        self.hidden += int(not _shown(new_flags)) - int(not _shown(int(self.flags[s])))
        self.flags[s] = new_flags

    def put(self, item: Item) -> None:
        s = self._slot_for(item.item)
        self._count(s, _LISTED | (_AVAILABLE if item.available else 0) | (_HIDDEN if item.hidden else 0))
        self.price[s] = np.nan if item.price is None else item.price
        self.brand[s] = -1 if item.brand is None else self._code(item.brand, self.brand_code, self.brand_names)
        cats = [self._code(c, self.cat_code, self.cat_names) for c in item.categories]
        if len(cats) > self.cats.shape[1]:
            extra = np.full((len(self.cats), len(cats) - self.cats.shape[1]), -1, np.int32)
            self.cats = np.hstack([self.cats, extra])
        self.cats[s] = -1
        self.cats[s, : len(cats)] = cats
        self.updated[s] = item.updated or 0
        self.generation += 1

    def delete(self, item: str) -> None:
        s = self._slot_for(item)
        self._count(s, _DELETED)
        self.price[s], self.brand[s], self.cats[s], self.updated[s] = np.nan, -1, -1, 0
        self.generation += 1

    def apply(self, key: bytes, item: Item | None) -> None:
        """One record of the items topic (None: a tombstone for `key`)."""
        if item is None:
            self.delete(key.decode("utf-8", "replace"))
        else:
            self.put(item)

    def apply_many(self, records: list[tuple[bytes, Item | None]]) -> None:
        """Records of the items topic in order (the later of an item's records wins), with one
        array write per attribute: a fetch of thousands of records costs a few µs each, where
        `put` (numpy scalar writes) costs ~50 µs: a minute for a million-item catalogue."""
        last: dict[int, tuple[int, Item | None]] = {}
        for key, item in records:
            s = self._slot_for(item.item if item is not None else key.decode("utf-8", "replace"))
            last[s] = (s, item)
        if not last:
            return
        slots = np.fromiter(last, np.int64, count=len(last))
        flags = np.empty(len(slots), np.uint8)
        price = np.full(len(slots), np.nan, np.float32)
        brand = np.full(len(slots), -1, np.int32)
        updated = np.zeros(len(slots), np.int64)
        cats: list[list[int]] = []
        for j, (_, item) in enumerate(last.values()):
            if item is None:
                flags[j] = _DELETED
                cats.append([])
                continue
            flags[j] = _LISTED | (_AVAILABLE if item.available else 0) | (_HIDDEN if item.hidden else 0)
            if item.price is not None:
                price[j] = item.price
            if item.brand is not None:
                brand[j] = self._code(item.brand, self.brand_code, self.brand_names)
            updated[j] = item.updated or 0
            cats.append([self._code(c, self.cat_code, self.cat_names) for c in item.categories])
        width = max(len(c) for c in cats)
        if width > self.cats.shape[1]:
            self.cats = np.hstack([self.cats, np.full((len(self.cats), width - self.cats.shape[1]), -1, np.int32)])
        cat_rows = np.full((len(slots), self.cats.shape[1]), -1, np.int32)
        for j, c in enumerate(cats):
            cat_rows[j, : len(c)] = c
        self.hidden += int(np.count_nonzero(~_shown(flags))) - int(np.count_nonzero(~_shown(self.flags[slots])))
        self.flags[slots], self.price[slots], self.brand[slots] = flags, price, brand
        self.cats[slots], self.updated[slots] = cat_rows, updated
        self.generation += 1

    # -- reads --------------------------------------------------------------------------------
    def get(self, item: str) -> Item | None:
        """The item's record, None if it is not listed (never was, or deleted)."""
        s = self.slot.get(item)
        if s is None or not self.flags[s] & _LISTED:
            return None
        f = int(self.flags[s])
        p = float(self.price[s])
        return Item(
            item,
            available=bool(f & _AVAILABLE),
            hidden=bool(f & _HIDDEN),
            categories=tuple(self.cat_names[c] for c in self.cats[s] if c >= 0),
            brand=self.brand_names[self.brand[s]] if self.brand[s] >= 0 else None,
            price=None if math.isnan(p) else p,
            updated=int(self.updated[s]) or None,
        )

    def first_category(self, item: str) -> str | None:
        """The item's first category (None: not listed, or no category), without building its Item."""
        s = self.slot.get(item)
        if s is None or not self.flags[s] & _LISTED:
            return None
        c = int(self.cats[s, 0])
        return self.cat_names[c] if c >= 0 else None

    def deleted(self, item: str) -> bool:
        s = self.slot.get(item)
        return s is not None and bool(self.flags[s] & _DELETED)

    def allows(self, item: str, flt: ItemFilter | None = None) -> bool:
        """May `item` be shown (under `flt`)? Items never listed may, unless a filter asks for an attribute."""
        if flt is not None and item in flt.exclude:
            return False
        s = self.slot.get(item)
        if s is None:
            return flt is None or not flt.on_attributes
        if not _shown(int(self.flags[s])):
            return False
        if flt is None or not flt.on_attributes:
            return True
        return bool(self._attr_ok(np.array([s], np.int64), flt)[0])

    def _attr_ok(self, slots: np.ndarray, flt: ItemFilter) -> np.ndarray:
        """Attribute filters for `slots` (all >= 0)."""
        ok = np.ones(len(slots), bool)
        if flt.categories:
            codes = [self.cat_code[c] for c in flt.categories if c in self.cat_code]
            ok &= np.isin(self.cats[slots], codes).any(axis=1) if codes else False
        if flt.brands:
            codes = [self.brand_code[b] for b in flt.brands if b in self.brand_code]
            ok &= np.isin(self.brand[slots], codes) if codes else False
        if flt.price_min is not None or flt.price_max is not None:
            p = self.price[slots]
            lo = -np.inf if flt.price_min is None else flt.price_min
            hi = np.inf if flt.price_max is None else flt.price_max
            ok &= (p >= lo) & (p <= hi)  # NaN (no price) fails both
        return ok

    def slots_of(self, model: Any) -> np.ndarray:
        """The catalogue slot of each of the model's rows (-1: never listed), kept per model."""
        key = id(model)
        hit = self._maps.get(key)
        if hit is not None and hit[0] is model:
            return hit[1]
        get = self.slot.get
        slots = np.fromiter((get(i, -1) for i in model.item_ids), np.int64, count=len(model.item_ids))
        if len(self._maps) >= 4:  # the serving model, its trained base, one being swapped in
            self._maps.pop(next(iter(self._maps)))
            self._masks.clear()
        self._maps[key] = (model, slots)
        return slots

    def mask(self, model: Any, flt: ItemFilter | None = None) -> ItemMask | None:
        """Which of `model`'s rows may be shown (under `flt`); None when every row may (nothing
        hidden or deleted, no filter): the scorer then skips masking altogether."""
        plain = flt is None or (not flt.on_attributes and not flt.exclude)
        if plain and self.hidden == 0:
            return None
        key = id(model)
        if plain:
            hit = self._masks.get(key)
            if hit is not None and hit[0] is model and hit[1] == self.generation:
                return hit[2]
        slots = self.slots_of(model)
        known = slots >= 0
        safe = np.where(known, slots, 0)
        rows = ~known | _shown(self.flags[safe])
        if flt is not None and flt.on_attributes:
            rows &= known
            idx = np.flatnonzero(rows)
            rows[idx] = self._attr_ok(safe[idx], flt)
        if flt is not None and flt.exclude:
            for i in flt.exclude:
                r = model.item_index.get(i)
                if r is not None:
                    rows[r] = False
        m = ItemMask(rows, _allows=lambda item, f=flt: self.allows(item, f), _index=model.item_index)
        if plain:
            self._masks[key] = (model, self.generation, m)
        return m


def rees46_categories(code: str) -> list[str]:
    """REES46's dotted category_code as the code and its prefixes, so a filter on
    `electronics` matches `electronics.audio.headphone` ("electronics", "electronics.audio", ...)."""
    parts = [p for p in code.split(".") if p]
    return [".".join(parts[: k + 1]) for k in range(len(parts))]
