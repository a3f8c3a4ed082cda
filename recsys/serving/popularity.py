"""Recent popularity: exponentially decayed event counts per item, for cold-start lists.

A shopper with no usable history and no known item on screen (a new session's first click,
or an item the model has never seen) gets popular items. The model's own popularity is the
*training window's*: days old on a live system. `RecentPopularity` counts what the stream
shows now, every event weighted by its age:

    count(i, t) = Σ over events e on item i of  w_e · 2^(−(t − t_e) / half_life)

Every count decays by the same factor as time passes, so the *ranking* never changes without
an event, and a count can be kept as one number per item scaled to a reference time t₀:
c(i) = Σ w_e · 2^((t_e − t₀)/h). `add` is O(1). Between rebases a count only grows, so the
best K items (K = 128, or what `top` asks for) are kept as candidates: an item joins them when
its count reaches the weakest candidate's at the last ranking. `top` then sorts the candidates
(a few hundred) instead of every counted item (a worker ranks once per micro-batch: ~2 ms at
20k items, ~20 ms at 200k). Out-of-order events are exact (an old event simply adds less). The reference time moves forward (all counts rescaled) when it falls far
behind, so nothing overflows; items whose count has decayed to nothing are dropped past
`max_items`, the weakest first.

The streaming evaluation's `popularity` baseline and the system's cold-start / padding list
(`Scorer.recommend(popular=...)`) both come from this class (recsys/evaluation/streaming.py); the
worker can hold one and feed it every applied event (docs/evaluation.md).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from itertools import repeat

import numpy as np

_REBASE = 512.0  # rescale when the newest event is this many half-lives past t₀
_CANDIDATES = 128  # items kept ranked between full passes (top asks for n + 64 in the worker)


class RecentPopularity:
    def __init__(self, half_life_s: float | None = 86_400.0, max_items: int = 200_000):
        """`half_life_s`: a count halves every this many seconds of event time (None: plain
        counts, nothing decays). `max_items`: items kept; past 2x that the weakest are dropped."""
        if half_life_s is not None and not (math.isfinite(half_life_s) and half_life_s > 0):
            raise ValueError(f"half_life_s must be > 0 or None, got {half_life_s}")
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.half_life_s, self.max_items = half_life_s, max_items
        self._per_ms = 0.0 if half_life_s is None else 1.0 / (half_life_s * 1000.0)
        self._t0: int | None = None  # reference time (ms) of the stored counts
        self._c: dict[str, float] = {}  # insertion order = the order items were first counted
        self._ranked: list[str] | None = None  # cache: the best items, best first (None: stale)
        # Candidates for the top: every item that can rank in the best len(ranking) (None: unknown,
        # rank all), and the count an item needs to join them (the weakest at the last ranking).
        self._cand: set[str] | None = None
        self._floor = -math.inf
        self._seq: dict[str, int] = {}  # first-counted order, to break ties as `_c` does
        self._next_seq = 0
        self.last_ts: int | None = None
        # bumped whenever stored counts change other than by `add` on one item (a rebase, a trim):
        # what a copy of some stored counts (`stored`, `add`'s value) needs to know
        self.generation = 0

    def __len__(self) -> int:
        return len(self._c)

    def add(self, item: str, ts: int, weight: float = 1.0) -> float:
        """Count one event on `item` at event time `ts` (ms since the epoch); returns the item's
        stored count (see `stored`)."""
        if self._t0 is None:
            self._t0 = ts
        elif (ts - self._t0) * self._per_ms > _REBASE:
            self._rebase(self._t0, ts)
        old = self._c.get(item)
        if old is None:
            self._seq[item] = self._next_seq
            self._next_seq += 1
        c = self._c[item] = (old or 0.0) + weight * 2.0 ** ((ts - self._t0) * self._per_ms)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        self._ranked = None
        if self._cand is not None and item not in self._cand and c >= self._floor:
            self._cand.add(item)
        if len(self._c) > 2 * self.max_items:
            keep = set(heapq.nlargest(self.max_items, self._c, key=self._c.__getitem__))
            self._c = {i: v for i, v in self._c.items() if i in keep}  # first-counted order kept
            self._seq = {i: q for i, q in self._seq.items() if i in keep}
            self._cand = None
            self.generation += 1
        return c

    def update(self, events: Iterable[tuple[str, int]]) -> None:
        for item, ts in events:
            self.add(item, ts)

    def count(self, item: str, now: int | None = None) -> float:
        """The decayed count of `item` at `now` (ms; default: the latest event time seen)."""
        return self.counts((item,), now)[0]

    def counts(self, items: Iterable[str], now: int | None = None) -> list[float]:
        """`count(i, now)` of each of `items` (one decay factor for all)."""
        now = self.last_ts if now is None else now
        if self._t0 is None or now is None:  # nothing counted yet
            return [0.0 for _ in items]
        f = 2.0 ** ((self._t0 - now) * self._per_ms)
        return [c * f if c else 0.0 for c in map(self._c.get, items, repeat(0.0))]

    def counts_array(self, items: Sequence[str], now: int | None = None) -> np.ndarray:
        """`counts(items, now)` as a float64 array: the same products, in numpy."""
        return self.scaled(self.stored(items), now)

    def stored(self, items: Sequence[str]) -> np.ndarray:
        """The stored counts of `items` (0: not counted), scaled to the reference time: `scaled`
        turns them into counts at a time."""
        return np.fromiter(map(self._c.get, items, repeat(0.0)), np.float64, len(items))

    def scaled(self, stored: np.ndarray, now: int | None = None) -> np.ndarray:
        """Counts at `now` (ms; default: the latest event time seen) of stored counts taken since
        the last change of `generation`: `counts`' products."""
        now = self.last_ts if now is None else now
        out = np.zeros(len(stored))
        if self._t0 is None or now is None:  # nothing counted yet
            return out
        f = 2.0 ** ((self._t0 - now) * self._per_ms)
        return np.multiply(stored, f, out=out, where=stored != 0.0)

    def top(self, n: int, exclude: Iterable[str] = ()) -> list[str]:
        """The `n` items with the highest decayed counts, best first, minus `exclude` (ties:
        the item counted first comes first)."""
        ex = exclude if isinstance(exclude, (set, frozenset, dict)) else set(exclude)
        need = n + len(ex)
        if self._ranked is None or (len(self._ranked) < need and len(self._ranked) < len(self._c)):
            self._ranked = self._rank(max(need, _CANDIDATES))
        if not ex:
            return self._ranked[:n]
        return [i for i in self._ranked if i not in ex][:n]

    def _rank(self, k: int) -> list[str]:
        """The best k items, best first; ties go to the item counted first."""
        c = self._c
        if self._cand is not None and k <= _CANDIDATES:
            # Every candidate outranks every other item: those have counts below the floor, or
            # at it and counted after the candidates that sit at it.
            seq = self._seq
            ranked = sorted(self._cand, key=lambda i: (-c[i], seq[i]))[:k]
        else:
            # nlargest == sorted(..., reverse=True)[:k]: stable, and dicts keep insertion order.
            ranked = heapq.nlargest(k, c, key=c.__getitem__)
        if k <= _CANDIDATES:
            self._cand = set(ranked)
            self._floor = c[ranked[-1]] if len(ranked) == k else -math.inf
        return ranked

    def _rebase(self, t0: int, ts: int) -> None:
        """Move the reference time of the stored counts from t0 to ts."""
        f = 2.0 ** ((t0 - ts) * self._per_ms)
        self._c = {i: c * f for i, c in self._c.items() if c * f > 1e-300}
        self._seq = {i: q for i, q in self._seq.items() if i in self._c}
        self._t0 = ts
        self._cand = None
        self.generation += 1
