"""Co-visitation ("viewed next / viewed together"), kept incrementally on the stream.

When a user touches b, every distinct item a among their previous `covisit_back` moves within
`covisit_window_s` gains a→b weight 1/d (d = moves between them) and b→a `covisit_backward`/d;
the very next move after a also counts in a's "viewed next" row. A user's score for item i is
Σ_j decay^j · w(a_j → i) over their last `covisit_recent` distinct items a_0 (latest), a_1, …;
with `covisit_normalize` each row is divided by its total (≈ P(next = i | a)).

The rows live in numba typed dicts keyed by interned item ids, and compiled loops
(kernels.py, `covisit_*`) update and sum them: the same operations in the same order as the
plain Python dicts they replace (tests/unit/test_candidate_sources.py keeps those as the
reference, `AddCoVisitation`), so every weight, total and order is the same to the last bit,
for about half the update's cost, and a user's whole sum costs less than the threshold
algorithm over the rows' heads that `top` needed with Python rows. A user's
last moves sit in two arrays, a row of `covisit_back` a buffer slot; the slots follow the
users' order of activity, the least recently active user's slot going to a new user past
`max_users`.

Between two updates a row `shares` reads keeps its `_Head` (its best items in top_items'
order, and its total): a row several lists of a batch read is sorted and summed once.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

import numpy as np

import recsys.candidates.sources.kernels as kernels  # the submodule, not the package (which imports this one)
from recsys.candidates.sources.base import RecentItems
from recsys.candidates.sources.config import SourcesConfig
from recsys.events import Event

if TYPE_CHECKING:
    from recsys.catalogue import ItemMask

_HEAD = 64  # items a head keeps at least: a list's 2 × per_source and a few banned


class _Head:
    """A row's total (its weights added in the row's order) and its best items (the first
    `size` of them, or all: `complete`) in top_items' order, with their weights."""

    __slots__ = ("items", "vals", "complete", "total")

    def __init__(self, items: list[str], vals: list[float], complete: bool, total: float):
        self.items, self.vals, self.complete, self.total = items, vals, complete, total


class CoVisitation:
    """Incremental item-to-item co-visitation counts ("viewed next / viewed together")."""

    def __init__(self, cfg: SourcesConfig = SourcesConfig()):
        self.cfg = cfg
        self._id: dict[str, int] = {}  # item -> id (never reused) and back
        self._name: list[str] = []
        # user -> their buffer slot; the least recently active user first
        self._slot: dict[str, int] = {}
        self._slots = 0  # slots handed out (a user evicted past `max_users` hands theirs on)
        back = max(cfg.covisit_back, 0)
        self._buf_items = np.zeros((0, back), np.int64)  # a slot's last moves, oldest first
        self._buf_ts = np.zeros((0, back), np.int64)
        self._buf_len = np.zeros(0, np.int64)
        self._w: Any = kernels.new_rows()  # a -> b -> weight
        self._next: Any = kernels.new_rows()  # a -> b: b was the very next move after a
        # a row's total before any pruning (the normalisation); the row of the item least recently
        # seen first (moved to the end on each event on its item; a new row joins at the end): the
        # one dropped past `covisit_max_pairs` (every row of _next has its row here)
        self._tot: Any = kernels.new_totals()
        self.pairs = 0  # entries over the rows of _w and _next
        self._rows = 0  # rows (of _tot), as the update leaves them: no len() of numba's dict from Python
        self.recent = RecentItems(max(cfg.covisit_recent, 1) * 3, cfg.max_users)
        self.version = 0  # updates so far: the heads hold until the next one
        self._heads: dict[tuple[bool, str], _Head] = {}  # (a "viewed next" row, item) -> its head
        self._heads_at = -1
        self._acc = np.full(0, -1, np.int32)  # covisit_sum's lookup, one entry an item id

    def update(self, e: Event) -> None:
        self.update_many((e,))

    def update_many(self, events: Sequence[Event]) -> None:
        """`update` of each event in turn: items interned and users given their buffer slots here,
        the rest in one compiled pass (kernels.covisit_update)."""
        cfg = self.cfg
        self.recent.update_many(events)  # its own state: the same after a pass of its own
        m = len(events)
        slots, items, ts = np.empty(m, np.int64), np.empty(m, np.int64), np.empty(m, np.int64)
        fresh = np.zeros(m, np.bool_)
        ids, names, slot_of, max_users = self._id, self._name, self._slot, cfg.max_users
        for k, e in enumerate(events):
            it = ids.get(e.item)
            if it is None:
                it = ids[e.item] = len(names)
                names.append(e.item)
            s = slot_of.pop(e.user, None)
            if s is None:
                fresh[k] = True
                if len(slot_of) >= max_users:
                    s = slot_of.pop(next(iter(slot_of)))
                else:
                    s = self._slots
                    self._slots += 1
            slot_of[e.user] = s
            slots[k], items[k], ts[k] = s, it, e.ts
        if self._slots > len(self._buf_len):
            self._grow(self._slots)
        self.pairs, self._rows = kernels.covisit_update(
            self._w,
            self._next,
            self._tot,
            self._buf_items,
            self._buf_ts,
            self._buf_len,
            slots,
            items,
            ts,
            fresh,
            cfg.covisit_window_s * 1000.0,
            float(cfg.covisit_backward),
            cfg.covisit_max_row,
            cfg.covisit_max_pairs,
            self.pairs,
        )
        self.version += m

    def _grow(self, need: int) -> None:
        size = max(need, 2 * len(self._buf_len), 1024)
        for name in ("_buf_items", "_buf_ts", "_buf_len"):
            old = getattr(self, name)
            new = np.zeros((size, *old.shape[1:]), np.int64)
            new[: len(old)] = old
            setattr(self, name, new)

    def sizes(self) -> dict[str, int]:
        return {"covisit_pairs": self.pairs, "covisit_rows": self._rows, "covisit_users": len(self._slot)}

    def neighbours(self, item: str) -> dict[str, float]:
        return self._as_dict(self._w, item)

    def next_items(self, item: str) -> dict[str, float]:
        """How often each item was the very next move after `item` (within the window)."""
        return self._as_dict(self._next, item)

    def _as_dict(self, rows: Any, item: str) -> dict[str, float]:
        a = self._id.get(item)
        if a is None:
            return {}
        ids, vals, _ = kernels.covisit_row(rows, a)
        return dict(zip(map(self._name.__getitem__, ids.tolist()), vals.tolist(), strict=True))

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain Python (rows, totals and users in their orders, each user's
        moves): what two co-visitations that saw the same events hold alike."""
        names = self._name
        return {
            "rows": {names[a]: self.neighbours(names[a]) for a in self._w},
            "next": {names[a]: self.next_items(names[a]) for a in self._next},
            "totals": {names[a]: v for a, v in self._tot.items()},
            "moves": {
                u: [
                    (names[i], t)
                    for i, t in zip(self._buf_items[s, :n].tolist(), self._buf_ts[s, :n].tolist(), strict=True)
                ]
                for u, s in self._slot.items()
                for n in (int(self._buf_len[s]),)
            },
            "pairs": self.pairs,
            "recent": self.recent,
        }

    def _sum(self, user: str) -> tuple[np.ndarray, np.ndarray]:
        """`scores(user)` as (item ids, sums), in the order the sum meets the items."""
        ids = self._id
        recent = np.array([ids[a] for a in reversed(self.recent.items(user, self.cfg.covisit_recent))], np.int64)
        if len(self._acc) < len(self._name):
            self._acc = np.full(max(len(self._name), 2 * len(self._acc), 1024), -1, np.int32)
        cfg = self.cfg
        return kernels.covisit_sum(self._w, self._tot, recent, cfg.covisit_normalize, cfg.covisit_decay, self._acc)

    def scores(self, user: str) -> dict[str, float]:
        got, sums = self._sum(user)
        return dict(zip(map(self._name.__getitem__, got.tolist()), sums.tolist(), strict=True))

    def top(self, user: str, n: int, banned: AbstractSet[str], mask: ItemMask | None = None) -> dict[str, float]:
        """The n best of `scores(user)` that `mask` allows, minus banned, best first: the same
        items, score bits and order as `top_items` over the whole sum (ties: the item the sum
        met first). The sum and its best n + banned are compiled; past them (a mask that
        refuses many), a stable sort of all."""
        if n <= 0:
            return {}
        got, sums = self._sum(user)
        m = len(got)
        if not m:
            return {}
        name = self._name
        want = min(n + len(banned), m)
        best = np.empty(want, np.int64)
        order = best[: kernels.head(sums, 0, m, want, best, 0)]
        out: dict[str, float] = {}
        for rest in (False, True):
            if rest:  # too few allowed among the first: the others in order
                order = np.argsort(-sums, kind="stable")[want:]
            for i, v in zip(got[order].tolist(), sums[order].tolist(), strict=True):
                b = name[i]
                if b not in banned and (mask is None or mask.allows(b)):
                    out[b] = v
                    if len(out) == n:
                        return out
            if want == m:
                break
        return out

    def prefetch(self, items: Sequence[str | None]) -> None:
        """The heads of `items`' rows, both kinds, in one compiled pass, kept until the next
        update (`shares` reads them): the worker's batch asks for the rows of its users' items on
        screen and of the moves before them, most of them a row no other list reads."""
        self._since_update()
        self._build_heads([i for i in dict.fromkeys(items) if i is not None and (False, i) not in self._heads], _HEAD)

    def _build_heads(self, items: list[str], size: int) -> None:
        """Both heads (co-visitation, "viewed next") of each of `items`' rows, at least `size`
        items long (or whole), into the cache."""
        if not items:
            return
        ids = np.fromiter((self._id.get(i, -1) for i in items), np.int64, len(items))
        got, vals, bounds, totals, lens = kernels.covisit_heads(self._w, self._next, ids, size)
        name = self._name
        names = [name[i] for i in got.tolist()]
        weights, at, tots, ms = vals.tolist(), bounds.tolist(), totals.tolist(), lens.tolist()
        for j in range(2 * len(items)):
            self._heads[(bool(j % 2), items[j // 2])] = _Head(
                names[at[j] : at[j + 1]], weights[at[j] : at[j + 1]], ms[j] <= size, tots[j]
            )

    def _since_update(self) -> None:
        """Drop the heads of rows read before the last update."""
        if self._heads_at != self.version:
            self._heads.clear()
            self._heads_at = self.version

    def _head(self, item: str, size: int, following: bool) -> _Head | None:
        """The head of `item`'s row ("viewed next" when `following`) with at least `size`
        items (or all), kept until the next update; None for an empty row."""
        self._since_update()
        h = self._heads.get((following, item))
        if h is None or (len(h.items) < size and not h.complete):
            self._build_heads([item], max(size, _HEAD))
            h = self._heads[(following, item)]
        return h if h.items else None  # an empty row (or none)

    def shares(
        self, item: str, n: int, banned: AbstractSet[str], following: bool = False
    ) -> tuple[dict[str, float], float]:
        """`item`'s co-visitation (or "viewed next") row: its best n items minus banned, each
        as its share of the whole row, and the row's total (what the shares rest on)."""
        h = self._head(item, n + len(banned), following)
        if h is None:
            return {}, 0  # an empty row's sum
        total = h.total
        div = total or 1.0
        out: dict[str, float] = {}
        if n > 0:
            for i, v in zip(h.items, h.vals, strict=True):
                if i not in banned:
                    out[i] = v / div
                    if len(out) == n:
                        break
        return out, total
