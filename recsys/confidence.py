"""From a shopper's events to their confidence per item (Hu, Koren & Volinsky 2008).

Each event adds its type's weight to the item's *raw value* r, scaled up by dwell time and
(optionally) decayed by age. The confidence handed to ALS is

    c = 1 + alpha * r

`implicit` uses the value it is given as the confidence itself: its solver weighs an item by
(c - 1), so a value below 1 would count *less* than an item the shopper never touched. The
explicit "1 +" keeps every positive interaction at c > 1, as in the paper; the model is then
trained and folded in with implicit's own alpha left at 1.

`UserProfile.apply` is the only place an event changes a user's state. The stream applies
events one by one as they arrive; the batch retrain applies a user's events in time order;
both therefore produce the same numbers, bit for bit. What ALS sees of that state, the matrix a
retrain trains on and the confidences the stream folds in, is decayed to the user's last event
by one vectorised function (`ConfidenceConfig.decayed`), so those agree bit for bit too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from recsys.errors import ConfigError
from recsys.events import EVENT_TYPES, TYPE_CODES, Event
from recsys.fields import setting


@dataclass(frozen=True)
class ConfidenceConfig:
    """Events to confidence, `c = 1 + alpha * r`; the `[confidence]` configuration section."""

    # Views and clicks are the unit; the other weights, alpha and the half-life come from the
    # search on a validation window, never the test window (`python -m bench.tune`,
    # docs/evaluation.md "Searching the defaults"). A cart is the strongest signal of what
    # comes next; a purchase adds almost nothing: bought items are filtered from lists, and a
    # purchase ends interest in the item rather than predicting the next one.
    weights: Mapping[str, float] = setting(
        doc="raw value one event of each type adds (keys: view, click, favorite, addtocart, transaction)",
        factory=lambda: {"view": 0.25, "click": 0.25, "favorite": 0.55, "addtocart": 1.76, "transaction": 0.06},
    )
    alpha: float = setting(80.8, "confidence scale: c = 1 + alpha * r")
    # Dwell is not searched (no shared dataset has dwell times): a long look counts up to 3 looks.
    dwell_unit_s: float = setting(30.0, "an event with dwell d seconds counts (1 + d / dwell_unit_s) times ...")
    dwell_cap: float = setting(3.0, "... at most this many times")
    # Recency dominates on both datasets: what a shopper did 17 hours ago counts half.
    half_life_days: float | None = setting(
        0.727, "recency decay: a raw value halves every this many days; none: no decay"
    )
    max_items: int = setting(200, "items kept per user; past it the weakest is dropped")
    history_len: int = setting(20, "recent item ids kept per user")

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(EVENT_TYPES)
        if unknown:
            raise ConfigError(f"confidence.weights: unknown event types {sorted(unknown)}")
        for t, w in self.weights.items():
            if not (math.isfinite(w) and w >= 0):
                raise ConfigError(f"confidence.weights.{t} must be a finite number >= 0, got {w}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ConfigError(f"confidence.alpha must be > 0, got {self.alpha}")
        if self.dwell_unit_s <= 0 or self.dwell_cap < 1:
            raise ConfigError("confidence.dwell_unit_s must be > 0 and confidence.dwell_cap >= 1")
        if self.half_life_days is not None and not self.half_life_days > 0:
            raise ConfigError(f"confidence.half_life_days must be > 0 or None, got {self.half_life_days}")
        if self.max_items < 1 or self.history_len < 1:
            raise ConfigError("confidence.max_items and confidence.history_len must be >= 1")

    def event_value(self, event: Event) -> float:
        """The raw value one event adds, before decay."""
        w = self.weights.get(event.type, 0.0)
        if event.dwell is not None and event.dwell > 0:
            w *= min(1.0 + event.dwell / self.dwell_unit_s, self.dwell_cap)
        return w

    def decay(self, value: float, age_ms: int) -> float:
        if self.half_life_days is None or age_ms <= 0:
            return value
        return value * 2.0 ** (-age_ms / (self.half_life_days * 86_400_000.0))

    def to_confidence(self, value: float) -> float:
        return 1.0 + self.alpha * value

    def decayed(self, values: np.ndarray, ages_ms: np.ndarray) -> np.ndarray:
        """Raw values decayed by their ages, vectorised (float64): what every ALS input starts
        from, the matrices a model trains on and the profiles the stream folds in alike.

        `values` are raw values as stored (ItemState.value), `ages_ms` the time from each one's
        reference time to `now` (the user's last event). One implementation, not a scalar one
        beside it: numpy's float64 `power` runs SIMD kernels where the CPU has them, and on an
        AVX-512 machine they differ from the C library's `pow` in the last bit on ~5% of
        decayed values. (`decay`, the scalar, is what `UserProfile.apply` stores: state, not input.)"""
        v = np.asarray(values, np.float64)
        if self.half_life_days is None:
            return v
        age = np.asarray(ages_ms, np.int64)
        with np.errstate(over="ignore"):  # ages <= 0 keep their value; their power is not used
            decayed = v * np.power(2.0, -age / (self.half_life_days * 86_400_000.0))
        return np.where(age > 0, decayed, v)

    def confidences(self, values: np.ndarray, ages_ms: np.ndarray) -> np.ndarray:
        """The confidence formula, vectorised: c = 1 + alpha * decayed(r, age), float64. Every
        matrix ALS trains on is made by it (the retrain from the changelog, `confidence_matrix`);
        `to_confidences` of `UserProfile.values` (the fold-in) gives the same numbers, bit for bit."""
        return 1.0 + self.alpha * self.decayed(values, ages_ms)

    def to_confidences(self, values: Mapping[str, float]) -> dict[str, float]:
        """Raw values per item (`UserProfile.values`) -> confidence per item."""
        return {i: 1.0 + self.alpha * v for i, v in values.items()}


class ItemState:
    """One item in a user's profile: raw value as of time `ts`, and which event types were seen."""

    __slots__ = ("value", "ts", "mask")

    def __init__(self, value: float, ts: int, mask: int):
        self.value, self.ts, self.mask = value, ts, mask

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ItemState) and (self.value, self.ts, self.mask) == (other.value, other.ts, other.mask)

    def __repr__(self) -> str:
        return f"ItemState(value={self.value!r}, ts={self.ts}, mask={self.mask:#x})"


class UserProfile:
    """A user's confidence state, keyed by item id so it survives retrains.

    `offset` is the input position of the last applied event (set by the stream, -1 in batch):
    the worker uses it to skip redelivered events, so nothing counts twice.
    """

    __slots__ = ("items", "last_ts", "history", "offset", "events")

    def __init__(self) -> None:
        self.items: dict[str, ItemState] = {}
        self.last_ts: int = 0
        self.history: list[str] = []  # most recent last, no repeats in a row
        self.offset: int = -1
        self.events: int = 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UserProfile) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self) -> str:
        return f"UserProfile(items={len(self.items)}, last_ts={self.last_ts}, events={self.events})"

    def apply(self, event: Event, cfg: ConfidenceConfig) -> None:
        w = cfg.event_value(event)
        bit = 1 << TYPE_CODES[event.type]
        st = self.items.get(event.item)
        if st is None:
            self.items[event.item] = ItemState(w, event.ts, bit)
        elif event.ts >= st.ts:
            st.value = cfg.decay(st.value, event.ts - st.ts) + w
            st.ts, st.mask = event.ts, st.mask | bit
        else:  # late event: decay it to the item's reference time instead
            st.value += cfg.decay(w, st.ts - event.ts)
            st.mask |= bit
        self.last_ts = max(self.last_ts, event.ts)
        self.events += 1
        if not self.history or self.history[-1] != event.item:
            self.history.append(event.item)
            if len(self.history) > cfg.history_len:
                del self.history[: len(self.history) - cfg.history_len]
        if len(self.items) > cfg.max_items:
            self._evict(cfg)

    def _evict(self, cfg: ConfidenceConfig) -> None:
        # Drop the weakest items (decayed to now); ties go to the oldest, then by id, so the
        # outcome never depends on dict order.
        excess = len(self.items) - cfg.max_items
        ranked = sorted(
            self.items.items(), key=lambda kv: (cfg.decay(kv[1].value, self.last_ts - kv[1].ts), kv[1].ts, kv[0])
        )
        for item, _ in ranked[:excess]:
            del self.items[item]

    def values(self, cfg: ConfidenceConfig, now: int | None = None) -> dict[str, float]:
        """Raw values decayed to `now` (default: the user's last event)."""
        return profile_values([self], cfg, now)[0]

    def confidence(self, cfg: ConfidenceConfig, now: int | None = None) -> dict[str, float]:
        """Confidence per item, c = 1 + alpha * r, as ALS and the fold-in take it."""
        return profile_confidences([self], cfg, now)[0]

    def items_with(self, types: Iterable[str]) -> set[str]:
        """Items on which the user did any of `types` (e.g. bought: filtered from lists)."""
        mask = 0
        for t in types:
            mask |= 1 << TYPE_CODES[t]
        return {i for i, s in self.items.items() if s.mask & mask}


def profile_values(
    profiles: Sequence[UserProfile], cfg: ConfidenceConfig, now: int | None = None
) -> list[dict[str, float]]:
    """`UserProfile.values` of each profile (`now`: default, each one's last event), in one numpy
    pass (`ConfidenceConfig.decayed`): numpy's fixed costs once, not per profile of a few items.
    The same numbers as profile by profile: every step is elementwise (float64 `power` is too,
    wherever an item sits in the array)."""
    return _per_profile(profiles, cfg.decayed(*_value_ages(profiles, now)))


def profile_confidences(
    profiles: Sequence[UserProfile], cfg: ConfidenceConfig, now: int | None = None
) -> list[dict[str, float]]:
    """`UserProfile.confidence` of each profile, in one numpy pass (`ConfidenceConfig.confidences`):
    the confidences of `profile_values`, bit for bit."""
    return _per_profile(profiles, cfg.confidences(*_value_ages(profiles, now)))


def _value_ages(profiles: Sequence[UserProfile], now: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Every item's stored raw value and its age at `now` (each profile's last event by default),
    profile after profile."""
    states = [p.items.values() for p in profiles]
    refs = [p.last_ts for p in profiles] if now is None else [now] * len(profiles)
    n = sum(map(len, states))
    values = np.fromiter((s.value for st in states for s in st), np.float64, n)
    ages = np.fromiter((ref - s.ts for st, ref in zip(states, refs, strict=True) for s in st), np.int64, n)
    return values, ages


def _per_profile(profiles: Sequence[UserProfile], flat: np.ndarray) -> list[dict[str, float]]:
    it = iter(flat.tolist())
    return [dict(zip(p.items, islice(it, len(p.items)), strict=True)) for p in profiles]


def build_profiles(events: Iterable[Event], cfg: ConfidenceConfig) -> dict[str, UserProfile]:
    """Apply events (in the order given: pass them time-sorted) to per-user profiles."""
    profiles: dict[str, UserProfile] = {}
    for e in events:
        p = profiles.get(e.user)
        if p is None:
            p = profiles[e.user] = UserProfile()
        p.apply(e, cfg)
    return profiles


def copy_profile(p: UserProfile) -> UserProfile:
    q = UserProfile()
    q.items = {i: ItemState(s.value, s.ts, s.mask) for i, s in p.items.items()}
    q.last_ts, q.history, q.offset, q.events = p.last_ts, list(p.history), p.offset, p.events
    return q
