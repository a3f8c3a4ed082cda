"""Scoring: what to show a shopper who is looking at a product now.

Two signals, as in the seed notebook:
  (a) similarity of each item to the *query item* on screen (item-item cosine), and
  (b) the user score xᵤ·yᵢ from the folded-in user factors.

The notebook added the raw values 0.5/0.5, but a dot product and a cosine live on different
scales, so the weight meant little. Here both terms project the item vector onto a *unit*
direction, so they share one scale:

    score(i) = yᵢ · (w·x̂ᵤ + (1−w)·ŷ_q) / ‖yᵢ‖^p

with x̂ᵤ, ŷ_q unit vectors. p=1 gives cosines for both terms; p=0 keeps the item norm, which
carries popularity. One matrix product and `implicit`'s top-k score a whole batch, with the
per-user filters applied inside the top-k. w and p are chosen by evaluation (docs/evaluation.md).

Fallbacks, so a non-empty catalogue never yields an empty list:
  user with history + known query -> blend     user only -> user score
  known query only               -> similar    neither   -> popularity
and any list short of N (filters, tiny catalogue) is padded with popular items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from .errors import ConfigError
from .events import EVENT_TYPES
from .model import Model

FILTERED = -1e30  # implicit's top-k scores filtered items at -FLT_MAX


@dataclass(frozen=True)
class ScoringConfig:
    n: int = 10
    user_weight: float = 0.9        # w above: 1 = user score only, 0 = query similarity only
    item_norm_power: float = 0.5    # p above
    exclude_types: tuple[str, ...] = ("transaction",)  # items the user did this to are not shown
    exclude_query: bool = True      # the item on screen is not recommended next to itself
    num_threads: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"scoring.n must be >= 1, got {self.n}")
        if not 0.0 <= self.user_weight <= 1.0:
            raise ConfigError(f"scoring.user_weight must be in [0, 1], got {self.user_weight}")
        if not 0.0 <= self.item_norm_power <= 1.0:
            raise ConfigError(f"scoring.item_norm_power must be in [0, 1], got {self.item_norm_power}")
        bad = set(self.exclude_types) - set(EVENT_TYPES)
        if bad:
            raise ConfigError(f"scoring.exclude_types: unknown event types {sorted(bad)}")


@dataclass
class Recommendations:
    items: list[str]
    scores: list[float]
    source: str          # blend | user | similar | popular
    model_version: str | None = None
    extra: dict = field(default_factory=dict)


class Scorer:
    def __init__(self, model: Model, cfg: ScoringConfig = ScoringConfig()):
        self.model, self.cfg = model, cfg
        norms = np.maximum(np.asarray(model.item_norms, np.float32), 1e-10)
        self._unit = np.asarray(model.item_factors, np.float32) / norms[:, None]   # for the query term
        self._div = norms ** np.float32(cfg.item_norm_power)
        self._cos_div = norms
        self._pop_order = np.argsort(-np.asarray(model.popularity), kind="stable")

    # ------------------------------------------------------------------------------------
    def recommend(self, user_factors: np.ndarray, has_user: Sequence[bool], queries: Sequence[str | None],
                  excludes: Sequence[set[str]], n: int | None = None) -> list[Recommendations]:
        """Score a batch: row k is user_factors[k] looking at queries[k], minus excludes[k]."""
        n = n or self.cfg.n
        m, idx = self.model, self.model.item_index
        rows = len(queries)
        if rows == 0:
            return []
        x = np.asarray(user_factors, np.float32).reshape(rows, m.factors)
        xn = np.linalg.norm(x, axis=1, keepdims=True)
        xhat = np.divide(x, xn, out=np.zeros_like(x), where=xn > 0)
        qrow = np.array([idx.get(q, -1) if q is not None else -1 for q in queries], np.int64)
        has_q = qrow >= 0
        has_u = np.asarray(has_user, bool) & (xn[:, 0] > 0)
        w = np.where(has_u & has_q, self.cfg.user_weight, np.where(has_u, 1.0, 0.0)).astype(np.float32)
        qhat = np.zeros_like(x)
        qhat[has_q] = self._unit[qrow[has_q]]
        query = w[:, None] * xhat + (1 - w[:, None]) * qhat
        source = np.where(has_u & has_q, "blend", np.where(has_u, "user", np.where(has_q, "similar", "popular")))

        # Per-row exclusions as a CSR over item rows, applied inside implicit's top-k.
        ex_rows = [self._excluded_rows(excludes[k], queries[k]) for k in range(rows)]
        filt = _rows_to_csr(ex_rows, m.n_items)
        scored = np.flatnonzero(has_u | has_q)
        out: list[Recommendations] = [None] * rows  # type: ignore[list-item]
        if len(scored):
            from implicit.cpu.topk import topk

            k = min(n, m.n_items)
            ids, scores = topk(self._items_for_topk(), query[scored], k, item_norms=self._div,
                               filter_query_items=filt[scored], num_threads=self.cfg.num_threads)
            for j, r in enumerate(scored):
                keep = scores[j] > FILTERED
                out[r] = Recommendations([m.item_ids[i] for i in ids[j][keep]], scores[j][keep].tolist(),
                                         str(source[r]), m.version)
        for r in range(rows):
            if out[r] is None:
                out[r] = Recommendations([], [], "popular", m.version)
            if len(out[r].items) < n:
                self._pad_with_popular(out[r], ex_rows[r], n)
        return out

    def similar(self, item: str, n: int | None = None, exclude: set[str] = frozenset()) -> Recommendations | None:
        """Items most similar to `item` (cosine of item factors); None if the model lacks it."""
        from implicit.cpu.topk import topk

        row = self.model.item_index.get(item)
        if row is None:
            return None
        n = n or self.cfg.n
        ex = self._excluded_rows(exclude, item)
        filt = _rows_to_csr([ex], self.model.n_items)
        ids, scores = topk(self._items_for_topk(), self._unit[row:row + 1], min(n, self.model.n_items),
                           item_norms=self._cos_div, filter_query_items=filt, num_threads=self.cfg.num_threads)
        keep = scores[0] > FILTERED
        return Recommendations([self.model.item_ids[i] for i in ids[0][keep]], scores[0][keep].tolist(),
                               "similar", self.model.version)

    def popular(self, n: int | None = None, exclude: set[str] = frozenset()) -> Recommendations:
        rec = Recommendations([], [], "popular", self.model.version)
        self._pad_with_popular(rec, self._excluded_rows(exclude, None), n or self.cfg.n)
        return rec

    # ------------------------------------------------------------------------------------
    def _items_for_topk(self) -> np.ndarray:
        return np.asarray(self.model.item_factors)

    def _excluded_rows(self, exclude: set[str], query: str | None) -> list[int]:
        idx = self.model.item_index
        rows = [idx[i] for i in exclude if i in idx]
        if self.cfg.exclude_query and query is not None and query in idx:
            rows.append(idx[query])
        return rows

    def _pad_with_popular(self, rec: Recommendations, excluded_rows: list[int], n: int) -> None:
        taken = set(rec.items)
        banned = set(excluded_rows)
        pop = self.model.popularity
        lowest = min(rec.scores) if rec.scores else 0.0
        for relaxed in (False, True):  # relax the filters only if nothing else is left
            for r in self._pop_order:
                if len(rec.items) >= n:
                    return
                item = self.model.item_ids[r]
                if item in taken or (not relaxed and int(r) in banned):
                    continue
                taken.add(item)
                rec.items.append(item)
                # Below every scored item, ordered by popularity.
                rec.scores.append(float(lowest - 1.0 - 1.0 / (1.0 + pop[r])) if rec.source != "popular" else float(pop[r]))
            if rec.items:
                return


def _rows_to_csr(rows: list[list[int]], n_cols: int) -> sp.csr_matrix:
    indptr = np.zeros(len(rows) + 1, np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.fromiter((c for r in rows for c in r), np.int32, count=int(indptr[-1]))
    return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(len(rows), n_cols))
