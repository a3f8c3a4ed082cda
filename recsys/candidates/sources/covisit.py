"""Co-visitation ("viewed next / viewed together"), kept incrementally on the stream.

When a user touches b, every distinct item a among their previous `covisit_back` moves within
`covisit_window_s` gains a→b weight 1/d (d = moves between them) and b→a `covisit_backward`/d;
the very next move after a also counts in a's "viewed next" row. A user's score for item i is
Σ_j decay^j · w(a_j → i) over their last `covisit_recent` distinct items a_0 (latest), a_1, …;
with `covisit_normalize` each row is divided by its total (≈ P(next = i | a)).

Between two updates (a batch's lists) a row `shares` reads keeps its `_Head` (its best items in
top_items' order, and its total): a row several lists of a batch read is sorted and summed once.
"""

from __future__ import annotations

import heapq
from collections.abc import Set as AbstractSet

from recsys.candidates.sources.base import RecentItems, top_items
from recsys.candidates.sources.config import SourcesConfig
from recsys.events import Event

_HEAD = 64  # items a head keeps at least: a list's 2 × per_source and a few banned


class _Head:
    """A row's total (`sum(row.values())`, in the row's order) and its best items (the first
    `size` of them, or all: `complete`) in top_items' order, with their values."""

    __slots__ = ("items", "vals", "complete", "total")

    def __init__(self, row: dict[str, float], size: int):
        self.total = sum(row.values())
        self.complete = len(row) <= size
        self.items = top_items(row, size)
        self.vals = [row[i] for i in self.items]


class CoVisitation:
    """Incremental item-to-item co-visitation counts ("viewed next / viewed together")."""

    def __init__(self, cfg: SourcesConfig = SourcesConfig()):
        self.cfg = cfg
        # user -> their last `covisit_back` moves (item, ms), oldest first; the least recently active
        # user first. Tuples, not deques: a tuple of strings and ints leaves the cyclic GC's view, so
        # a full collection does not walk a million users' buffers on the worker's event loop.
        self._buf: dict[str, tuple[tuple[str, int], ...]] = {}
        self._w: dict[str, dict[str, float]] = {}
        # a row's total before any pruning (the normalisation); the row of the item least recently
        # seen first (moved to the end on each event on its item; a new row joins at the end): the
        # one dropped past `covisit_max_pairs` (every row of _next has its row here)
        self._tot: dict[str, float] = {}
        self.pairs = 0  # entries over the rows of _w and _next
        self._next: dict[str, dict[str, float]] = {}  # a -> b: b was the very next move after a
        self.recent = RecentItems(max(cfg.covisit_recent, 1) * 3, cfg.max_users)
        self.version = 0  # updates so far: the heads hold until the next one
        self._heads: dict[tuple[bool, str], _Head] = {}  # (a "viewed next" row, item) -> its head
        self._heads_at = -1

    def _bounded(self, rows: dict[str, dict[str, float]], a: str, row: dict[str, float]) -> None:
        """A row past twice `covisit_max_row` (the callers check, once per move) keeps its heaviest
        `covisit_max_row` items."""
        rows[a] = dict(heapq.nlargest(self.cfg.covisit_max_row, row.items(), key=lambda kv: kv[1]))
        self.pairs -= len(row) - self.cfg.covisit_max_row

    def update(self, e: Event) -> None:
        self.version += 1
        buf = self._buf.pop(e.user, None)
        if buf is None:
            buf = ()
            if len(self._buf) >= self.cfg.max_users:
                del self._buf[next(iter(self._buf))]
        b = e.item
        tot = self._tot.pop(b, None)
        if tot is not None:
            self._tot[b] = tot
        self.recent.update(e)
        if buf and buf[-1][0] == b:  # a reload or an action on the product on screen: not a move
            self._buf[e.user] = (*buf[:-1], (b, e.ts))
            return
        back = self.cfg.covisit_back
        self._buf[e.user] = (*buf, (b, e.ts))[-back:] if back > 0 else ()
        window = self.cfg.covisit_window_s * 1000.0
        backward, cap = self.cfg.covisit_backward, 2 * self.cfg.covisit_max_row
        rows, tots = self._w, self._tot
        done: set[str] = {b}
        new = 0
        for d, (a, ta) in enumerate(reversed(buf), 1):
            if e.ts - ta > window:
                break
            if a in done:
                continue
            done.add(a)
            if d == 1:
                row = self._next.get(a)
                if row is None:
                    row = self._next[a] = {}
                n = len(row)
                row[b] = row.get(b, 0.0) + 1.0
                new += len(row) - n
                if len(row) > cap:
                    self._bounded(self._next, a, row)
            # a→b gains 1/d and b→a backward/d, each row's total with it (inline: ~20 times an
            # event in the worker's batch path); a row past `cap` is pruned
            w = 1.0 / d
            row = rows.get(a)
            if row is None:
                row = rows[a] = {}
            n = len(row)
            row[b] = row.get(b, 0.0) + w
            tots[a] = tots.get(a, 0.0) + w
            if len(row) > cap:
                self._bounded(rows, a, row)
            new += len(row) - n
            if backward > 0:
                w = backward / d
                row = rows.get(b)
                if row is None:
                    row = rows[b] = {}
                n = len(row)
                row[a] = row.get(a, 0.0) + w
                tots[b] = tots.get(b, 0.0) + w
                if len(row) > cap:
                    self._bounded(rows, b, row)
                new += len(row) - n
        self.pairs += new
        while self.pairs > self.cfg.covisit_max_pairs:
            self._drop_oldest_row()

    def _drop_oldest_row(self) -> None:
        a = next(iter(self._tot))
        del self._tot[a]
        self.pairs -= len(self._w.pop(a)) + len(self._next.pop(a, ()))

    def sizes(self) -> dict[str, int]:
        return {"covisit_pairs": self.pairs, "covisit_rows": len(self._tot), "covisit_users": len(self._buf)}

    def neighbours(self, item: str) -> dict[str, float]:
        return self._w.get(item, {})

    def next_items(self, item: str) -> dict[str, float]:
        """How often each item was the very next move after `item` (within the window)."""
        return self._next.get(item, {})

    def scores(self, user: str) -> dict[str, float]:
        out: dict[str, float] = {}
        w = 1.0
        for a in reversed(self.recent.items(user, self.cfg.covisit_recent)):
            row = self._w.get(a)
            if row:
                f = w / self._tot[a] if self.cfg.covisit_normalize else w
                if not out and f == 1.0:  # the first row as it is: 0.0 + 1.0·v is v
                    out = dict(row)
                else:
                    for b, v in row.items():
                        out[b] = out.get(b, 0.0) + f * v
            w *= self.cfg.covisit_decay
        return out

    def _head(self, item: str, size: int, following: bool) -> _Head | None:
        """The head of `item`'s row ("viewed next" when `following`) with at least `size`
        items (or all), kept until the next update; None for an empty row."""
        if self._heads_at != self.version:
            self._heads.clear()
            self._heads_at = self.version
        h = self._heads.get((following, item))
        if h is None or (len(h.items) < size and not h.complete):
            row = (self._next if following else self._w).get(item)
            if not row:
                return None
            h = self._heads[(following, item)] = _Head(row, max(size, _HEAD))
        return h

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
