"""Candidate sources kept incrementally on the stream: co-visitation, session-kNN (V-SKNN, STAN),
own items by recency.

Every source is updated event by event (`update(event)`, O(1) amortised; a batch's events in one
call: `update_many(events)`, the same state) and asked for the scores of one user *before* that
user's next event (`scores(user)`): nothing looks ahead. The streaming evaluation uses them as
baselines (recsys/evaluation/streaming.py: methods `covisit`, `vsknn`, `stan`, `own-recent`) and
the learned ranker as candidate generators (recsys/candidates/ranker.py); one implementation
serves both.

One module a source, over what they share (`base`) and one settings object (`config`):

    session_knn.py   V-SKNN and STAN (an incremental index of sessions; the ranker's costliest step)
    kernels.py       compiled loops (numba): session-kNN's similarities, k best, votes; co-visitation's
                     update, sums and row heads; the features' log1p
    covisit.py       co-visitation and "viewed next" rows (in numba's dicts), their shares
    category.py      category popularity
    base.py          a user's recent items, own items by recency, `top_items`
    config.py        `SourcesConfig` (`[sources]`)

`Sources` below feeds them all from one stream and asks each for its best n; `load_kernels`
compiles their kernels (or loads them from numba's cache) before a worker's first batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING

import numpy as np

import recsys.candidates.sources.kernels as kernels
from recsys.candidates.sources.base import _SMALL, RecentItems, own_recent, top_items, trim
from recsys.candidates.sources.category import CategoryPopularity
from recsys.candidates.sources.config import SourcesConfig
from recsys.candidates.sources.covisit import CoVisitation
from recsys.candidates.sources.session_knn import SessionKNN
from recsys.confidence import UserProfile
from recsys.events import Event

if TYPE_CHECKING:
    from recsys.catalogue import ItemMask

__all__ = [
    "BASELINES",
    "CategoryPopularity",
    "CoVisitation",
    "load_kernels",
    "RecentItems",
    "SessionKNN",
    "Sources",
    "SourcesConfig",
    "own_recent",
    "top_items",
    "trim",
]

BASELINES = ("own-recent", "covisit", "vsknn", "stan")


class Sources:
    """All incremental sources fed by one stream: `update(event)` feeds each, `scores(method, ...)` and
    `top(method, ...)` give one source's scores or its best n for a user."""

    def __init__(self, cfg: SourcesConfig = SourcesConfig()):
        self.cfg = cfg
        self.sknn = SessionKNN(cfg)
        self.covisit = CoVisitation(cfg)
        self.category = CategoryPopularity(cfg)

    def update(self, e: Event) -> None:
        self.update_many((e,))

    def update_many(self, events: Sequence[Event]) -> None:
        """`update` of each event in turn: the sources share no state, so each takes them all in
        one pass (the worker's batches; the same state as event by event)."""
        self.sknn.update_many(events)
        self.covisit.update_many(events)
        self.category.update_many(events)

    def sizes(self) -> dict[str, int]:
        """How much each source holds (the worker's streamrec_sources_entries gauge)."""
        return {**self.covisit.sizes(), **self.sknn.sizes()}

    def scores(self, method: str, user: str, profile: UserProfile | None, now: int) -> dict[str, float]:
        if method == "own-recent":
            return own_recent(profile)
        if method == "covisit":
            return self.covisit.scores(user)
        if method in ("vsknn", "stan"):
            return self.sknn.scores(user, method, now)
        if method == "category":
            return self.category.top(profile, self.cfg.category_max_items, set())
        raise ValueError(f"unknown source {method!r}")

    def top(
        self,
        method: str,
        user: str,
        profile: UserProfile | None,
        now: int,
        n: int,
        banned: AbstractSet[str],
        mask: ItemMask | None = None,
    ) -> dict[str, float]:
        """The n best of `scores` that `mask` allows, minus `banned`, with their scores, best
        first (`top_items`' order); session-kNN's from its arrays."""
        if method in ("vsknn", "stan"):
            return self.sknn.top(user, method, now, n, banned, mask)
        if method == "category":
            return self.category.top(profile, n, banned, mask)
        if method == "covisit":
            return self.covisit.top(user, n, banned, mask)
        return trim(self.scores(method, user, profile, now), n, banned, mask)


def load_kernels() -> None:
    """Compile the sources' kernels (session-kNN's `prefetch`, co-visitation's), the features'
    `log1p_each` and `top_items`' insertion, or load them from numba's disk cache (~10 s or
    ~0.5 s of CPU): a session-kNN prefetch of two users over three events, and co-visitation's
    update, top, prefetch and a single row's head over the same, so the kernels get exactly the
    argument types the worker's batches give them. The worker calls it off the event loop
    before its first batch, which would otherwise pay it."""
    knn, cv = SessionKNN(), CoVisitation()
    events = [Event(user, item, "view", ts) for user, item, ts in (("a", "x", 1), ("a", "y", 2), ("b", "x", 3))]
    knn.update_many(events)
    cv.update_many(events)
    knn.prefetch(["a", "b"], [3, 3])
    cv.top("a", 1, set())
    cv.prefetch(["x", "y"])
    cv.shares("x", 100, set())  # past the prefetched head: the single row's
    kernels.log1p_each(np.zeros(1))  # the ranker features' (the same float64 array type)
    top_items({str(i): float(i) for i in range(_SMALL + 1)}, 1)  # `head` on a read-only array: its own type
