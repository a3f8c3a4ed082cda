"""Co-visitation ("viewed next / viewed together"), kept incrementally on the stream.

When a user touches b, every distinct item a among their previous `covisit_back` moves within
`covisit_window_s` gains a→b weight 1/d (d = moves between them) and b→a `covisit_backward`/d;
the very next move after a also counts in a's "viewed next" row. A user's score for item i is
Σ_j decay^j · w(a_j → i) over their last `covisit_recent` distinct items a_0 (latest), a_1, …;
with `covisit_normalize` each row is divided by its total (≈ P(next = i | a)).

Between two updates (a batch's lists) a row `top` or `shares` reads keeps its `_Head` (its best
items in top_items' order, and its total): a row several lists of a batch read is sorted and
summed once, and `top` reads a user's rows' heads, not their whole sum, when the rows are long
(past `_SUM_UP_TO` items). (Heads kept across updates, brought up to date as rows rise, cost the
update more than they saved: the rows a list reads are those its user's latest move has just
changed.)
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING

from recsys.candidates.sources.base import RecentItems, top_items, trim
from recsys.candidates.sources.config import SourcesConfig
from recsys.events import Event

if TYPE_CHECKING:
    from recsys.catalogue import ItemMask

_HEAD = 64  # items a head keeps at least: a list's 2 × per_source and a few banned
# `top` sums a user's rows when they hold this many items or fewer: cheaper than their heads
_SUM_UP_TO = 300


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
        self._places: dict[str, dict[str, int]] = {}  # item -> each key's place in its row (`top`'s ties)
        self._heads_at = -1

    def _bounded(self, rows: dict[str, dict[str, float]], a: str, row: dict[str, float]) -> None:
        """A row past twice `covisit_max_row` (the callers check, once per move) keeps its heaviest
        `covisit_max_row` items."""
        rows[a] = dict(heapq.nlargest(self.cfg.covisit_max_row, row.items(), key=lambda kv: kv[1]))
        self.pairs -= len(row) - self.cfg.covisit_max_row

    def update(self, e: Event) -> None:
        self.update_many((e,))

    def update_many(self, events: Sequence[Event]) -> None:
        """`update` of each event in turn (the same state), the settings and dicts looked up once
        a batch."""
        cfg = self.cfg
        back, window = cfg.covisit_back, cfg.covisit_window_s * 1000.0
        backward, cap = cfg.covisit_backward, 2 * cfg.covisit_max_row
        bufs, rows, nexts, tots = self._buf, self._w, self._next, self._tot
        self.recent.update_many(events)  # its own state: the same after a pass of its own
        for e in events:
            self.version += 1
            user, b, ts = e.user, e.item, e.ts
            buf = bufs.pop(user, None)
            if buf is None:
                buf = ()
                if len(bufs) >= cfg.max_users:
                    del bufs[next(iter(bufs))]
            tot = tots.pop(b, None)
            if tot is not None:
                tots[b] = tot
            if buf and buf[-1][0] == b:  # a reload or an action on the product on screen: not a move
                bufs[user] = (*buf[:-1], (b, ts))
                continue
            bufs[user] = (*buf, (b, ts))[-back:] if back > 0 else ()
            done: set[str] = {b}
            new = 0
            # b's row and total (b→a, every pair) are looked up once, at the first pair: a new row
            # or total joins its dict there, as it did when each pair looked it up
            row_b: dict[str, float] | None = None
            tot_b = 0.0
            for d, (a, ta) in enumerate(reversed(buf), 1):
                if ts - ta > window:
                    break
                if a in done:
                    continue
                done.add(a)
                # each pair adds to a row's entry (0.0 + w is w) and a new entry may take the row
                # past `cap` (pruned); inline: ~20 times an event in the worker's batch path
                if d == 1:
                    row = nexts.get(a)
                    if row is None:
                        row = nexts[a] = {}
                    v = row.get(b)
                    if v is None:
                        row[b] = 1.0
                        new += 1
                        if len(row) > cap:
                            self._bounded(nexts, a, row)
                    else:
                        row[b] = v + 1.0
                # a→b gains 1/d and b→a backward/d, each row's total with it
                w = 1.0 / d
                row = rows.get(a)
                if row is None:
                    row = rows[a] = {}
                v = row.get(b)
                if v is None:
                    row[b] = w
                    new += 1
                    if len(row) > cap:
                        self._bounded(rows, a, row)
                else:
                    row[b] = v + w
                tots[a] = tots.get(a, 0.0) + w
                if backward > 0:
                    w = backward / d
                    if row_b is None:
                        row_b = rows.get(b)
                        if row_b is None:
                            row_b = rows[b] = {}
                        tot_b = tots[b] = tots.get(b, 0.0)
                    v = row_b.get(a)
                    if v is None:
                        row_b[a] = w
                        new += 1
                        if len(row_b) > cap:
                            self._bounded(rows, b, row_b)
                            row_b = rows[b]
                    else:
                        row_b[a] = v + w
                    tot_b += w
            if row_b is not None:
                tots[b] = tot_b
            self.pairs += new
            while self.pairs > cfg.covisit_max_pairs:
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

    def top(self, user: str, n: int, banned: AbstractSet[str], mask: ItemMask | None = None) -> dict[str, float]:
        """The n best of `scores(user)` that `mask` allows, minus banned, best first: the same
        items, score bits and order as `top_items` over the whole sum (ties: the item the sum
        met first), without the sum.

        Fagin's threshold algorithm over the rows' heads (sorted once a batch): read the rows
        best first, side by side; each item met is scored exactly (its values summed in the
        order `scores` adds them); stop once the n-th best scored beats what an unread item
        could reach (each row's next value, weighted and summed the same way: a float sum is
        monotone in its terms). A user's 2-3 rows of ~200 items each cost ~30 reads, not ~500."""
        if n <= 0:
            return {}
        rows: list[tuple[str, float, dict[str, float]]] = []  # (item, weight, row), the latest item first
        w = 1.0
        for a in reversed(self.recent.items(user, self.cfg.covisit_recent)):
            row = self._w.get(a)
            if row:
                rows.append((a, w / self._tot[a] if self.cfg.covisit_normalize else w, row))
            w *= self.cfg.covisit_decay
        if not rows:
            return {}
        if sum(len(row) for _, _, row in rows) <= _SUM_UP_TO:
            return trim(self.scores(user), n, banned, mask)
        want = n + len(banned)
        heads = [self._head(a, want, False) for a, _, _ in rows]
        seen: set[str] = set()
        best: list[float] = []  # the n best scores so far (a min-heap)
        found: list[tuple[float, int, str]] = []  # (score, the first row it is in, item)
        depth = 0
        while True:
            bound = None  # what an item not read yet could score at most
            for j, (a, f, _) in enumerate(rows):
                h = heads[j]
                assert h is not None  # a non-empty row has a head
                if depth >= len(h.items) and not h.complete:
                    h = heads[j] = self._head(a, 2 * depth, False)
                    assert h is not None
                if depth < len(h.items):
                    t = f * h.vals[depth]
                    bound = t if bound is None else bound + t
            if bound is None or (len(best) == n and best[0] > bound):
                break
            for h in heads:
                assert h is not None
                if depth >= len(h.items):
                    continue
                b = h.items[depth]
                if b in seen:
                    continue
                seen.add(b)
                if b in banned or (mask is not None and not mask.allows(b)):
                    continue
                s: float | None = None
                first = 0
                for j, (_, f, row) in enumerate(rows):
                    v = row.get(b)
                    if v is not None:
                        if s is None:
                            s, first = f * v, j
                        else:
                            s += f * v
                assert s is not None
                found.append((s, first, b))
                if len(best) < n:
                    heapq.heappush(best, s)
                elif s > best[0]:
                    heapq.heapreplace(best, s)
            depth += 1
        found.sort(key=lambda t: -t[0])
        # ties keep the order in which the sum meets them: its first row, then the place there
        k = 0
        while k < min(n, len(found)):
            e = k + 1
            while e < len(found) and found[e][0] == found[k][0]:
                e += 1
            if e - k > 1:
                found[k:e] = sorted(found[k:e], key=lambda t: (t[1], self._place(rows[t[1]][0], t[2])))
            k = e
        return {b: s for s, _, b in found[:n]}

    def _place(self, item: str, key: str) -> int:
        """`key`'s place in `item`'s row (in the row's order), kept until the next update."""
        self._since_update()
        places = self._places.get(item)
        if places is None:
            places = self._places[item] = {k: p for p, k in enumerate(self._w[item])}
        return places[key]

    def _since_update(self) -> None:
        """Drop the heads and places of rows read before the last update."""
        if self._heads_at != self.version:
            self._heads.clear()
            self._places.clear()
            self._heads_at = self.version

    def _head(self, item: str, size: int, following: bool) -> _Head | None:
        """The head of `item`'s row ("viewed next" when `following`) with at least `size`
        items (or all), kept until the next update; None for an empty row."""
        self._since_update()
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
