"""What the sources share: a user's recent distinct items, own items by recency, and the best n
of a source's scores (`top_items`, whose tie order every source keeps)."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

import recsys.candidates.sources.kernels as kernels  # the submodule, not the package (which imports this one)
from recsys.confidence import UserProfile
from recsys.events import Event

if TYPE_CHECKING:
    from recsys.catalogue import ItemMask

_SMALL = 160  # top_items: up to this many scored items, a plain sort (cheaper than numpy's fixed costs)
_HEAD = 256  # top_items: up to this many wanted, the compiled insertion (O(m·want) at worst)


def top_items(scores: Mapping[str, float], n: int, banned: Iterable[str] = ()) -> list[str]:
    """The n best-scored items minus `banned`, best first (ties: the item scored first)."""
    if n <= 0 or not scores:
        return []
    ban = banned if isinstance(banned, (set, frozenset, dict)) else set(banned)
    want = n + len(ban)
    m = len(scores)
    if m <= _SMALL:
        # a stable sort, reversed, keeps equal items in scoring order
        return [i for i in sorted(scores, key=scores.__getitem__, reverse=True)[:want] if i not in ban][:n]
    keys = list(scores)
    # struct packs a dict's floats about twice as fast as np.fromiter converts them
    vals = np.frombuffer(struct.pack(f"{m}d", *scores.values()))
    if want <= _HEAD:
        # an insertion into the best `want` so far, compiled: most scores fall below at once
        best = np.empty(min(want, m), np.int64)
        order: np.ndarray = best[: kernels.head(vals, 0, m, want, best, 0)]
    elif want < m:
        # every item at or above the want-th best score, in scoring order: a stable sort of
        # those is the stable sort of all, cut at `want`
        pick = np.flatnonzero(vals >= np.partition(vals, m - want)[m - want])
        order = pick[np.argsort(-vals[pick], kind="stable")]
    else:
        order = np.argsort(-vals, kind="stable")
    out: list[str] = []
    for j in order.tolist():
        if keys[j] not in ban:
            out.append(keys[j])
            if len(out) == n:
                break
    return out


def trim(
    scores: Mapping[str, float], n: int, banned: Iterable[str] = (), mask: ItemMask | None = None
) -> dict[str, float]:
    """A source's best n items that `mask` allows, minus banned, with their scores, best first."""
    if mask is not None:
        scores = {i: v for i, v in scores.items() if mask.allows(i)}
    return {i: scores[i] for i in top_items(scores, n, banned)}


def own_recent(profile: UserProfile | None) -> dict[str, float]:
    """The user's own items scored by recency of their last touch (latest = highest)."""
    if profile is None or not profile.items:
        return {}
    last = profile.last_ts
    return {i: 1.0 / (1.0 + max(last - s.ts, 0) / 60_000.0) for i, s in profile.items.items()}


class RecentItems:
    """Each user's last distinct items (latest last) with their last touch time."""

    def __init__(self, keep: int = 30, max_users: int = 1_000_000):
        self.keep, self.max_users = keep, max_users
        self._u: dict[str, dict[str, int]] = {}  # least recently active user first

    def update(self, e: Event) -> None:
        self.update_many((e,))

    def update_many(self, events: Iterable[Event]) -> None:
        """`update` of each event in turn."""
        users, keep, max_users = self._u, self.keep, self.max_users
        for e in events:
            d = users.pop(e.user, None)
            if d is None:
                d = {}
                if len(users) >= max_users:
                    del users[next(iter(users))]
            users[e.user] = d
            d.pop(e.item, None)
            d[e.item] = e.ts
            if len(d) > keep:
                del d[next(iter(d))]

    def items(self, user: str, n: int) -> list[str]:
        """The user's last n distinct items, latest last."""
        d = self._u.get(user)
        if not d:
            return []
        return list(d)[-n:]
