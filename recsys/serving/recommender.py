"""Model + fold-in + scoring as one object: what a worker holds and swaps as a unit.

Swapping a model is replacing the Recommender reference between batches; every list it
returns names its model version.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from recsys.catalogue import ItemMask
from recsys.confidence import ConfidenceConfig, UserProfile, profile_values
from recsys.model.factors import Model
from recsys.model.foldin import FoldIn
from recsys.serving.scoring import Recommendations, Scorer, ScoringConfig, own_item_scores


class Recommender:
    def __init__(
        self,
        model: Model,
        ccfg: ConfidenceConfig = ConfidenceConfig(),
        scfg: ScoringConfig = ScoringConfig(),
        num_threads: int | None = None,
    ):
        self.model, self.ccfg, self.scfg = model, ccfg, scfg
        # fold-in threads: the scorer's (scfg.num_threads) unless given
        self.fold_in = FoldIn(model, num_threads=scfg.num_threads if num_threads is None else num_threads)
        self.scorer = Scorer(model, scfg)

    @property
    def version(self) -> str:
        return self.model.version

    def recommend(
        self,
        profiles: Sequence[UserProfile],
        queries: Sequence[str | None],
        n: int | None = None,
        timings: dict[str, float] | None = None,
        popular: Sequence[str] | None = None,
        mask: ItemMask | None = None,
        extra_excludes: Sequence[AbstractSet[str]] | None = None,
    ) -> list[Recommendations]:
        """Fold in every profile at once, then score the batch with one product + top-k (plus
        the user's own items when the re-visit term is on). The worker and the evaluations
        both come through here. `timings`, if given, receives fold-in and scoring seconds.
        `popular` (optional): a recent-popularity ranking (item ids, best first; e.g.
        `recsys.serving.popularity.RecentPopularity.top`) for users with neither usable history nor a
        known query, and for padding, instead of the model's training popularity. `mask`
        (`recsys.catalogue.Catalogue.mask`): what may be shown at all; `extra_excludes[k]`:
        more items kept out of row k's list (a request's `exclude=`)."""
        t0 = time.perf_counter()
        ccfg = self.ccfg
        values = profile_values(profiles, ccfg)  # once: confidences and re-visit strengths both start here
        x, known = self.fold_in([ccfg.to_confidences(vs) for vs in values])
        t1 = time.perf_counter()
        excludes = [p.items_with(self.scfg.exclude_types) for p in profiles]
        if extra_excludes is not None:
            excludes = [set(e) | set(x) for e, x in zip(excludes, extra_excludes, strict=True)]
        own = (
            [
                own_item_scores(p, ccfg, self.scfg.repeat_half_life_days, values=vs)
                for p, vs in zip(profiles, values, strict=True)
            ]
            if self.scfg.repeat_weight > 0
            else None
        )
        out = self.scorer.recommend(x, known, queries, excludes, n, own=own, popular=popular, mask=mask)
        if timings is not None:
            timings["foldin"], timings["scoring"] = t1 - t0, time.perf_counter() - t1
        return out
