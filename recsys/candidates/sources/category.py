"""Category popularity: the recently popular items of the categories a user just looked at."""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING

from recsys.candidates.sources.base import trim
from recsys.candidates.sources.config import SourcesConfig
from recsys.confidence import UserProfile
from recsys.events import Event
from recsys.serving.popularity import RecentPopularity

if TYPE_CHECKING:
    from recsys.catalogue import ItemMask


class CategoryPopularity:
    """The recently popular items of the categories a user just looked at.

    Each item's category is what the events say (`Event.category`: the dataset files that carry
    one) or what the caller sets in `category` (a worker's catalogue). A user's score for item i
    is Σ_j 0.5^j · count(i) / count(best of c_j) over the distinct categories c_0 (latest),
    c_1, … of their last items, up to `category_recent` of them; counts decay with
    `category_half_life_s` (recsys.serving.popularity.RecentPopularity per category)."""

    def __init__(self, cfg: SourcesConfig = SourcesConfig()):
        self.cfg = cfg
        self.category: dict[str, str] = {}  # item -> category
        self._pop: dict[str, RecentPopularity] = {}

    def update(self, e: Event) -> None:
        if e.category is not None:
            self.category[e.item] = e.category
        c = self.category.get(e.item)
        if c is None or self.cfg.category_recent <= 0:
            return
        pop = self._pop.get(c)
        if pop is None:
            pop = self._pop[c] = RecentPopularity(self.cfg.category_half_life_s, self.cfg.category_max_items)
        pop.add(e.item, e.ts)

    def update_many(self, events: Iterable[Event]) -> None:
        for e in events:
            self.update(e)

    def recent_categories(self, profile: UserProfile | None) -> list[str]:
        """The distinct categories of the user's latest items, latest first."""
        out: list[str] = []
        if profile is None or self.cfg.category_recent <= 0:
            return out
        for item in reversed(profile.history):
            c = self.category.get(item)
            if c is not None and c not in out:
                out.append(c)
                if len(out) == self.cfg.category_recent:
                    break
        return out

    def top(
        self, profile: UserProfile | None, n: int, banned: AbstractSet[str], mask: ItemMask | None = None
    ) -> dict[str, float]:
        """The user's n best items with their scores, best first, none banned, all allowed by `mask`."""
        scores: dict[str, float] = {}
        for j, c in enumerate(self.recent_categories(profile)):
            pop = self._pop[c]
            best = pop.top(n + len(banned), banned)
            if mask is not None:
                best = [i for i in best if mask.allows(i)]
            if not best:
                continue
            counts = pop.counts(best)
            w = 0.5**j / (counts[0] or 1.0)
            for i, v in zip(best, counts, strict=True):
                scores[i] = scores.get(i, 0.0) + w * v
        return trim(scores, n, banned)
