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
and any list short of N (filters, tiny catalogue) is padded with popular items. "Popular" is
the model's training-window popularity unless the caller passes `popular`: a ranking of item
ids, best first, e.g. `recsys.serving.popularity.RecentPopularity.top(...)` (what the stream saw
lately; on a live system the training window is days old). Those ids need not be in the model.

Re-visits (optional, `repeat_weight` β > 0, caller passes `own`): shoppers come back to what
they looked at, so the user's own items get a bonus on top of the blend,

    final(i) = score(i) + β · s_u(i)^γ · top_u      s_u(i) = r_ui / max_j r_uj  (own_item_scores)

where top_u is the row's best blend score (1 if none), so β is scale-free: β=1 lets the
user's strongest item tie the model's best candidate. It keeps the one-product design: the
bonus only touches the user's own items, so the exact top-N of `final` is the top-N of
(the blend's top-N ∪ the own items) — no second pass over the catalogue. Own items the model
does not know (new items) enter with blend score 0. Filters (bought, query) apply to them too.
Optionally β is per user (`repeat_rate_prior`, `repeat_weight_for`): scaled by the user's own
smoothed re-visit rate, from counts `own_item_scores` reads off the profile (off by default:
docs/evaluation.md "Per-user re-visit weight").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recsys.catalogue import ItemMask
from recsys.confidence import ConfidenceConfig, UserProfile
from recsys.errors import ConfigError
from recsys.events import EVENT_TYPES
from recsys.fields import setting
from recsys.model.factors import Model

log = logging.getLogger("streamrec.scoring")

FILTERED = -1e30  # implicit's top-k scores filtered items at -FLT_MAX


@dataclass(frozen=True)
class ScoringConfig:
    """How recommendations are scored; the `[scoring]` configuration section.

    w, p and β come from the search on a validation window, the re-visit half-life from its
    follow-up grid (`python -m bench.tune`, docs/evaluation.md "Searching the defaults")."""

    n: int = setting(10, "list length when the caller gives none")
    user_weight: float = setting(0.576, "blend: 1 = user score only, 0 = similarity to the item on screen only")
    item_norm_power: float = setting(0.592, "divide item scores by norm^p: 0 keeps popularity, 1 gives cosines")
    exclude_types: tuple[str, ...] = setting(
        ("transaction",), "items the user did this to are not recommended (e.g. already bought)"
    )
    exclude_query: bool = setting(True, "the item on screen is not recommended next to itself")
    # A worker is one process (more cores: more workers). OpenMP across the few users of a
    # micro-batch costs more than it saves: fold-in of 18 users took 33 ms on all cores, 7 ms on one.
    num_threads: int = setting(
        1, "threads of a batch's fold-in and scoring; 0: all cores (one process per core scales better)"
    )
    # Shoppers come back to what they looked at: Taobao gains up to β = 100 (the search's range
    # of 0-3 was too narrow, a 1-D follow-up went on), YOOCHOOSE stays flat.
    repeat_weight: float = setting(100.0, "bonus for items the user already looked at (re-visits); 0: off")
    repeat_power: float = setting(1.0, "the re-visit bonus uses strength^power: below 1 lifts weaker own items")
    # The items touched last come back first: a 2.4 h half-life on top of the confidence decay.
    repeat_half_life_days: float | None = setting(
        0.1,
        "own items' strength decays by the age of their last touch with this half-life "
        "(recency of re-visits); none: no extra decay",
    )
    # Per-user β (`repeat_weight_for`) is off: it lifts YOOCHOOSE (long sessions that move on) but
    # costs Taobao, whose shoppers come back to own items even when they have not yet; no (m, n0)
    # regresses neither dataset (docs/evaluation.md "Per-user re-visit weight").
    repeat_rate_prior: float | None = setting(
        None,
        "per-user re-visit weight: a user gets repeat_weight * min(1, r/m), r = their re-visit rate "
        "(returns / moves) smoothed toward m = this; none: every user gets repeat_weight "
        "(docs/evaluation.md: off, it costs Taobao)",
    )
    repeat_rate_strength: float = setting(
        0.01,
        "prior weight of repeat_rate_prior, in moves: a user who never returned gets repeat_weight * n0 / (moves + n0)",
    )
    ann_min_items: int = setting(
        1_000_000, "approximate top-k (recsys/serving/ann.py) for catalogues of at least this many items; 0: never"
    )
    ann_nprobe: int = setting(0, "IVF lists scanned per approximate query; 0: recsys.serving.ann's default")
    ann_max_scan: float = setting(
        0.05,
        "with ann_nprobe 0: keep the approximate index only if its tuned queries scan at most this share of "
        "the catalogue, else score exactly (a scanned row costs several times a row of the exact product)",
    )

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
        if not (self.repeat_weight >= 0 and np.isfinite(self.repeat_weight)):
            raise ConfigError(f"scoring.repeat_weight must be a finite number >= 0, got {self.repeat_weight}")
        if not 0.0 <= self.repeat_power <= 1.0:
            raise ConfigError(f"scoring.repeat_power must be in [0, 1], got {self.repeat_power}")
        if self.repeat_half_life_days is not None and not (
            np.isfinite(self.repeat_half_life_days) and self.repeat_half_life_days > 0
        ):
            raise ConfigError(f"scoring.repeat_half_life_days must be > 0 or None, got {self.repeat_half_life_days}")
        if self.repeat_rate_prior is not None and not 0.0 < self.repeat_rate_prior <= 1.0:
            raise ConfigError(f"scoring.repeat_rate_prior must be in (0, 1] or None, got {self.repeat_rate_prior}")
        if not (np.isfinite(self.repeat_rate_strength) and self.repeat_rate_strength > 0):
            raise ConfigError(
                f"scoring.repeat_rate_strength must be a finite number > 0, got {self.repeat_rate_strength}"
            )
        if self.ann_min_items < 0 or self.ann_nprobe < 0:
            raise ConfigError("scoring.ann_min_items and scoring.ann_nprobe must be >= 0")
        if not 0.0 < self.ann_max_scan <= 1.0:
            raise ConfigError(f"scoring.ann_max_scan must be in (0, 1], got {self.ann_max_scan}")


@dataclass
class Recommendations:
    items: list[str]
    scores: list[float]
    source: str  # blend | user | similar | popular
    model_version: str | None = None
    extra: dict = field(default_factory=dict)


class Scorer:
    def __init__(self, model: Model, cfg: ScoringConfig = ScoringConfig()):
        self.model, self.cfg = model, cfg
        norms = np.maximum(np.asarray(model.item_norms, np.float32), 1e-10)
        self._div = norms ** np.float32(cfg.item_norm_power)
        self._cos_div = norms
        self._pop_order = np.argsort(-np.asarray(model.popularity), kind="stable")
        from recsys.serving.ann import AnnConfig, MipsIndex, ScanTooWide, scaled_items

        self._scaled = scaled_items(model.item_factors, cfg.item_norm_power)  # yᵢ/‖yᵢ‖^p: one plain product
        self.ann = None  # recsys.serving.ann.MipsIndex over the same rows, built per model for big catalogues
        self.ann_skipped: str | None = None  # why a catalogue big enough for the index is scored exactly
        if cfg.ann_min_items and model.n_items >= cfg.ann_min_items:
            acfg = AnnConfig(nprobe=cfg.ann_nprobe, num_threads=cfg.num_threads, max_scan=cfg.ann_max_scan)
            try:
                self.ann = MipsIndex.build(self._scaled, acfg)
            except ScanTooWide as e:
                self.ann_skipped = f"{e}: exact top-k is cheaper"
                log.warning("model %s: %s", model.version, self.ann_skipped)

    # ------------------------------------------------------------------------------------
    def recommend(
        self,
        user_factors: np.ndarray,
        has_user: Sequence[bool] | np.ndarray,
        queries: Sequence[str | None],
        excludes: Sequence[AbstractSet[str]],
        n: int | None = None,
        own: Sequence[dict[str, float]] | None = None,
        popular: Sequence[str] | None = None,
        mask: ItemMask | None = None,
        popular_rows: Sequence[Sequence[str]] | None = None,
    ) -> list[Recommendations]:
        """Score a batch: row k is user_factors[k] looking at queries[k], minus excludes[k].

        `mask` (optional, one for the whole batch; `recsys.catalogue.Catalogue.mask`): items it
        rules out (hidden, unavailable, deleted, outside a request's filters) are never in a list:
        masked inside the top-k, skipped by the re-visit term and by every padding.
        `own[k]` (optional): the user's own items and strengths in [0, 1] (`own_item_scores`),
        boosted by `repeat_weight` (see the module docstring); ignored when it is 0.
        `popular` (optional): item ids, best first, for the rows with neither a usable user
        nor a known query and for padding short lists, instead of the training popularity
        (which still pads when `popular` runs out). Filters apply to it as to every list.
        `popular_rows[k]`: row k's own such ranking instead (a replay whose rows were due at
        different moments), so that one product scores them all."""
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
        qhat[has_q] = self._unit_rows(qrow[has_q])
        query = w[:, None] * xhat + (1 - w[:, None]) * qhat
        source = np.where(has_u & has_q, "blend", np.where(has_u, "user", np.where(has_q, "similar", "popular")))

        # Per-row exclusions (item rows), dropped from an over-fetched top-k.
        ex_rows = [self._excluded_rows(excludes[k], queries[k]) for k in range(rows)]
        scored = np.flatnonzero(has_u | has_q)
        out: list[Recommendations | None] = [None] * rows
        if len(scored):
            k = min(n, m.n_items)
            allowed = mask.rows if mask is not None else None
            if self.ann is not None:  # approximate: over-fetch, then drop each row's exclusions
                ids, scores = self.ann.search(query[scored], k, [ex_rows[r] for r in scored], allowed)
            else:  # exact: over-fetch + drop exclusions (cheaper than implicit's per-row sparse filter)
                from recsys.serving.ann import exact_search

                ids, scores = exact_search(
                    self._scaled,
                    query[scored],
                    k,
                    [ex_rows[r] for r in scored],
                    self.cfg.num_threads,
                    allowed,
                )
            for j, r in enumerate(scored.tolist()):
                keep = scores[j] > FILTERED
                out[r] = Recommendations(
                    [m.item_ids[i] for i in ids[j][keep]], scores[j][keep].tolist(), str(source[r]), m.version
                )
        own_rows = own if self.cfg.repeat_weight > 0 else None
        results: list[Recommendations] = []
        for r in range(rows):
            rec = out[r]
            if own_rows is not None and own_rows[r]:
                rec = self._add_own(
                    rec, query[r] if (has_u[r] or has_q[r]) else None, own_rows[r], excludes[r], queries[r], n, mask
                )
            if rec is None:
                rec = Recommendations([], [], "popular", m.version)
            ranking = popular_rows[r] if popular_rows is not None else popular
            if len(rec.items) < n and ranking is not None:
                self._pad_with_ranking(rec, ranking, excludes[r], queries[r], n, mask)
            if len(rec.items) < n:
                self._pad_with_popular(rec, ex_rows[r], n, mask)
            results.append(rec)
        return results

    def similar(
        self,
        item: str,
        n: int | None = None,
        exclude: AbstractSet[str] = frozenset(),
        mask: ItemMask | None = None,
    ) -> Recommendations | None:
        """Items most similar to `item` (cosine of item factors) that `mask` allows; None if
        the model lacks `item`."""
        from implicit.cpu.topk import topk

        row = self.model.item_index.get(item)
        if row is None:
            return None
        n = n or self.cfg.n
        ex = self._excluded_rows(exclude, item)
        filt = _rows_to_csr([ex], self.model.n_items)
        n_items = self.model.n_items
        # a mask: fetch in proportion to what it keeps, wider while the list is short
        fetch = min(n, n_items) if mask is None else min(n_items, math.ceil(n / max(mask.fraction, 1e-6)) + 16)
        while True:
            ids, scores = topk(
                self._items_for_topk(),
                self._unit_rows(np.array([row])),
                fetch,
                item_norms=self._cos_div,
                filter_query_items=filt,
                num_threads=self.cfg.num_threads,
            )
            if mask is None:
                break
            scores[0][~mask.rows[np.maximum(ids[0], 0)]] = FILTERED
            if fetch >= n_items or np.count_nonzero(scores[0] > FILTERED) >= n:
                break
            fetch = min(n_items, fetch * 4)
        keep = scores[0] > FILTERED
        if np.count_nonzero(keep) > n:
            keep &= np.cumsum(keep) <= n
        return Recommendations(
            [self.model.item_ids[i] for i in ids[0][keep]], scores[0][keep].tolist(), "similar", self.model.version
        )

    def popular(
        self, n: int | None = None, exclude: AbstractSet[str] = frozenset(), mask: ItemMask | None = None
    ) -> Recommendations:
        rec = Recommendations([], [], "popular", self.model.version)
        self._pad_with_popular(rec, self._excluded_rows(exclude, None), n or self.cfg.n, mask)
        return rec

    # ------------------------------------------------------------------------------------
    def _add_own(
        self,
        rec: Recommendations | None,
        qvec: np.ndarray | None,
        strengths: dict[str, float],
        exclude: AbstractSet[str],
        query: str | None,
        n: int,
        mask: ItemMask | None = None,
    ) -> Recommendations | None:
        """Merge the user's own items, with their re-visit bonus, into a row's top-N (exact):
        `rec` updated in place, or a new list when the row had none (None: nothing to merge)."""
        items, scores = (rec.items, rec.scores) if rec is not None else ([], [])
        scale = scores[0] if scores and scores[0] > 0 else 1.0
        beta = repeat_weight_for(self.cfg, strengths)
        final = dict(zip(items, scores, strict=True))
        idx, y = self.model.item_index, self.model.item_factors
        banned = set(exclude)
        if self.cfg.exclude_query and query is not None:
            banned.add(query)
        own = [
            (item, s)
            for item, s in strengths.items()
            if s > 0 and item not in banned and (mask is None or mask.allows(item))
        ]
        # Own items outside the top list enter with their blend score: one gathered product
        # for all of them (a dot product per item cost ~2 µs each, most of a batch's scoring).
        missing = [item for item, _ in own if item not in final]
        known = [(item, idx[item]) for item in missing if item in idx]
        base_of: dict[str, float] = {}  # item -> blend score; items the model lacks enter at 0
        if known and qvec is not None:
            k = np.asarray([row for _, row in known], np.int64)
            base_of = dict(zip((item for item, _ in known), ((y[k] @ qvec) / self._div[k]).tolist(), strict=True))
        power = self.cfg.repeat_power
        for item, s in own:
            base = final.get(item)
            if base is None:
                base = base_of.get(item, 0.0)
            final[item] = base + beta * s**power * scale
        if not final:
            return rec
        ranked = sorted(final.items(), key=lambda kv: -kv[1])[:n]  # stable: ties keep blend order
        if rec is None:
            rec = Recommendations([], [], "repeat", self.model.version)
        rec.items, rec.scores = [i for i, _ in ranked], [float(v) for _, v in ranked]
        rec.extra["own_added"] = len(missing)
        return rec

    def _unit_rows(self, rows: np.ndarray) -> np.ndarray:
        """yᵢ/‖yᵢ‖ for the given rows only: the query term needs a few rows a batch, and a
        normalised copy of the whole catalogue would cost one more item matrix of memory
        (2 GB at 4M items x 128)."""
        return np.asarray(self.model.item_factors[rows], np.float32) / self._cos_div[rows][:, None]

    def _items_for_topk(self) -> np.ndarray:
        return np.asarray(self.model.item_factors)

    def _excluded_rows(self, exclude: AbstractSet[str], query: str | None) -> list[int]:
        idx = self.model.item_index
        rows = [idx[i] for i in exclude if i in idx]
        if self.cfg.exclude_query and query is not None and query in idx:
            rows.append(idx[query])
        return rows

    def _pad_with_ranking(
        self,
        rec: Recommendations,
        ranking: Sequence[str],
        exclude: AbstractSet[str],
        query: str | None,
        n: int,
        mask: ItemMask | None = None,
    ) -> None:
        """Append items of `ranking` (best first), minus the row's filters, up to n. Scores:
        a "popular" list gets 1/(1+rank); padding sits below every scored item."""
        taken = set(rec.items)
        lowest = min(rec.scores) if rec.scores else 0.0
        popular = rec.source == "popular" and not rec.items
        for rank, item in enumerate(ranking):
            if len(rec.items) >= n:
                return
            if item in taken or item in exclude or (self.cfg.exclude_query and item == query):
                continue
            if mask is not None and not mask.allows(item):
                continue
            taken.add(item)
            rec.items.append(item)
            rec.scores.append(1.0 / (1.0 + rank) if popular else float(lowest - 1.0 - rank / (1.0 + len(ranking))))

    def _pad_with_popular(
        self, rec: Recommendations, excluded_rows: list[int], n: int, mask: ItemMask | None = None
    ) -> None:
        taken = set(rec.items)
        banned = set(excluded_rows)
        pop = self.model.popularity
        lowest = min(rec.scores) if rec.scores else 0.0
        order = self._pop_order if mask is None else self._pop_order[mask.rows[self._pop_order]]
        # relax the user's filters (bought, on screen) only if nothing else is left; never the mask
        for relaxed in (False, True):
            for r in order:
                if len(rec.items) >= n:
                    return
                item = self.model.item_ids[r]
                if item in taken or (not relaxed and int(r) in banned):
                    continue
                taken.add(item)
                rec.items.append(item)
                # Below every scored item, ordered by popularity.
                rec.scores.append(
                    float(lowest - 1.0 - 1.0 / (1.0 + pop[r])) if rec.source != "popular" else float(pop[r])
                )
            if rec.items:
                return


def _rows_to_csr(rows: list[list[int]], n_cols: int) -> sp.csr_matrix:
    indptr = np.zeros(len(rows) + 1, np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.fromiter((c for r in rows for c in r), np.int32, count=int(indptr[-1]))
    return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(len(rows), n_cols))


class OwnItems(dict):
    """`own_item_scores`' result: item -> re-visit strength, plus the user's re-visit counts
    (`revisit_counts`: `returns` among `moves`), which the per-user re-visit weight adapts to."""

    __slots__ = ("returns", "moves")

    def __init__(self, strengths=(), returns: int = 0, moves: int = 0):
        super().__init__(strengths)
        self.returns, self.moves = returns, moves


def revisit_counts(profile: UserProfile, ccfg: ConfidenceConfig) -> tuple[int, int]:
    """(returns, moves) of the user so far, from the profile alone (no extra state).

    A move is an event on another item than the one on screen; a return is a move to an item
    the user touched before. While `profile.history` holds every move (fewer than
    `ccfg.history_len`: no repeats in a row, so a reload or a cart on the product on screen is
    not a move) the counts are exact: moves = len(history), returns = moves − distinct items in
    it. Once it has overflowed, the event counts: moves = events, returns = events − distinct
    items (a reload then counts as a return; `items` is capped at `max_items`, which can only
    raise the rate). Both are 0 for a user with no events."""
    h = profile.history
    if len(h) < ccfg.history_len:
        return len(h) - len(set(h)), len(h)
    return max(profile.events - len(profile.items), 0), profile.events


def repeat_weight_for(cfg: ScoringConfig, own: dict[str, float] | None = None) -> float:
    """The re-visit weight β_u of one user (`Scorer._add_own`).

    `cfg.repeat_weight` (β) for everyone when `cfg.repeat_rate_prior` is None, or when `own`
    carries no counts (a plain dict). Otherwise β scaled by how much the user returns:

        β_u = β · min(1, r̂ / m)      r̂ = (returns + m·n0) / (moves + n0)

    r̂ is the user's re-visit rate smoothed toward the prior m = `repeat_rate_prior` with
    n0 = `repeat_rate_strength` pseudo-moves (a Beta(m·n0, (1−m)·n0) prior's posterior mean),
    and m is also the rate that earns the full β: a user with no moves yet gets β, a user who
    returns at least as often as m gets β, a user who keeps moving on gets β·n0/(moves + n0)."""
    beta = cfg.repeat_weight
    if cfg.repeat_rate_prior is None or not isinstance(own, OwnItems):
        return beta
    m, n0 = cfg.repeat_rate_prior, cfg.repeat_rate_strength
    rate = (own.returns + m * n0) / (own.moves + n0)
    return beta * min(1.0, rate / m)


def own_item_scores(
    profile: UserProfile,
    ccfg: ConfidenceConfig,
    half_life_days: float | None = None,
    values: Mapping[str, float] | None = None,
) -> OwnItems:
    """The user's own items with strengths in (0, 1]: raw value (decayed to the user's last
    event) over the largest one. Input of the re-visit term (`Scorer.recommend(own=...)`).

    `half_life_days` (`ScoringConfig.repeat_half_life_days`): each value is also multiplied by
    2^(−age / half-life), age = the user's last event − the item's last touch, so the items the
    shopper touched last come first more sharply than the confidence decay alone orders them
    (the profile keeps one decayed value per item, so the value cannot be re-decayed at another
    rate; this re-weights it by the item's last touch). `values`: `profile.values(ccfg)` when the
    caller has them already (the fold-in's confidences come from the same values)."""
    values = profile.values(ccfg) if values is None else values
    if half_life_days is not None:
        per_ms = 1.0 / (half_life_days * 86_400_000.0)
        last, items = profile.last_ts, profile.items
        values = {i: v * 2.0 ** (-max(last - items[i].ts, 0) * per_ms) for i, v in values.items()}
    returns, moves = revisit_counts(profile, ccfg)
    top = max(values.values(), default=0.0)
    if top <= 0:
        return OwnItems({}, returns, moves)
    return OwnItems({i: v / top for i, v in values.items() if v > 0}, returns, moves)
