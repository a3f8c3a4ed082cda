"""Candidates from several sources, ranked by a learned model (LightGBM LambdaRank).

One list = the union of each source's best `per_source` items for the user at that moment
(the system's blend with its re-visit term, co-visitation, V-SKNN, STAN, own items by recency,
recent popularity), minus bought items and the item on screen; every candidate gets the
features of `FEATURES`; the ranker orders them. Without a ranker the system's list serves.

Everything a feature reads is state from *before* the event the list is for: the user's
profile and the sources' scores are taken when the list is due (`Context`), and the stream-wide
counters (`ItemStats`: popularity, when an item was last seen) as of the start of the batch of
events the list belongs to (a worker's micro-batch, a stream-eval chunk), updated after it.
`build_examples` (called by `train_ranker`, which the retrain job can call) and the stream
evaluation's `ranker` method go through the same `candidates` function.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice, repeat
from typing import Any

import numpy as np

from recsys.candidates.native import NativeForest, compile_forest
from recsys.candidates.sources import top_items
from recsys.fields import setting
from recsys.model.factors import Model
from recsys.serving.popularity import RecentPopularity

SOURCE_NAMES = ("system", "covisit", "vsknn", "stan", "own-recent", "popularity", "category")
# the user's path before the item on screen (clicks-only shops have little else)
PATH_FEATURES = (
    "covisit_from_prev",
    "next_from_prev",
    "moves_ago",
    "prev_gap_log_s",
    "query_covisit_log_total",
    "query_next_log_total",
)
FEATURES = (
    *(f"{s}_{kind}" for s in SOURCE_NAMES for kind in ("score", "rank", "rel")),
    "n_sources",
    "own",
    "own_value",
    "own_log_minutes",
    "user_events",
    "user_items",
    "pop_log_count",
    "item_log_minutes_since_seen",
    "in_model",
    "cos_query",
    "cos_user",
    "covisit_from_query",
    "next_from_query",
    "pop_log_count_1h",
    "same_category_query",
    "same_category_recent",
    *PATH_FEATURES,
)
_RANK_ABSENT = 1000.0
_NEVER = np.iinfo(np.int64).min  # an item's last-seen time when it was never seen


class FeatureMismatch(ValueError):
    """A sound ranker file built for another feature set (another release's `FEATURES`)."""


@dataclass(frozen=True)
class RankerConfig:
    # 20 and 10: on validation every dataset's HR@10 / MRR@10 within a change of LightGBM's seed of 50
    # and 20's, for 55% fewer rows a list (docs/evaluation.md, "Fewer candidates per list")
    per_source: int = setting(
        20, "candidates taken from each source (the system's blend, co-visitation, V-SKNN, STAN, own items)"
    )
    pop_candidates: int = setting(10, "candidates taken from recent popularity")
    num_leaves: int = setting(31, "LightGBM: leaves per tree")
    learning_rate: float = setting(0.05, "LightGBM: learning rate")
    n_estimators: int = setting(100, "LightGBM: boosting rounds")
    min_child_samples: int = setting(50, "LightGBM: fewest examples in a leaf")
    feature_fraction: float = setting(0.8, "LightGBM: share of the features each tree may split on")
    example_fraction: float = setting(0.5, "the last share of the training events the ranker's examples come from")
    features: tuple[str, ...] = setting(
        (), "the features (recsys.candidates.ranker.FEATURES) the model reads; empty: all; the others are zeroed"
    )
    seed: int = setting(0, "LightGBM's seeds (training is deterministic for a seed)")
    native: bool = setting(
        True,
        "the worker compiles its version's ranker to native code when it loads it (lleaves: LightGBM's "
        "scores bit for bit, ~6x faster; ~2 s of CPU at 50 trees); off, or without lleaves: LightGBM predicts",
    )
    # The retrain job's ranker (streaming/jobs/retrain.py): its examples, their cost, its gate.
    retrain: bool = setting(
        True,
        "the retrain job trains a ranker on the recent clickstream and publishes it with the model when it "
        "passes its gate; off: versions carry no ranker and the blend serves",
    )
    window_hours: float = setting(
        24.0,
        "the retrain's ranker learns from this much of the recent clickstream (the brokers' record times; "
        "with --data FILE the file's last hours of event time)",
    )
    window_max_events: int = setting(
        30_000, "... at most this many events (the newest): the replay's state before the examples, and its cost"
    )
    max_examples: int = setting(
        1500,
        "the retrain replays at most this many of the window's latest events as the ranker's examples (its "
        "cost grows with them; 0: the whole example part)",
    )
    model_max_events: int = setting(
        20_000,
        "when no stored model has not seen the examples, the retrain trains one on at most this many "
        "events before them",
    )
    min_examples: int = setting(100, "fewer fit examples with the target among the candidates: no ranker this time")
    fit_threads: int = setting(
        1,
        "LightGBM threads of the retrain's ranker fit once the model's fit is done (one while it runs; 0: "
        "every core); the ranker is the same whatever the count. More help on idle cores only: OpenMP's "
        "threads wait on each other when the box is busy (two took 10-20x longer on a loaded 2-core box)",
    )
    retrain_max_estimators: int = setting(
        50,
        "the retrain's ranker fits at most this many boosting rounds (its capped examples: on the validation "
        "splits 50 ranked as well as 100 in half the fit time); 0: n_estimators",
    )
    gate_fraction: float = setting(
        0.25, "the last share of the example events kept out of the ranker's fit and used for its gate"
    )


class ItemStats:
    """Stream-wide item counters the features read: decayed popularity and last-seen time."""

    def __init__(self, half_life_s: float = 8 * 3600.0):
        self.pop = RecentPopularity(half_life_s)
        self.pop_1h = RecentPopularity(3600.0)
        self.last_seen: dict[str, int] = {}
        self.now = 0

    def add(self, item: str, ts: int) -> None:
        self.pop.add(item, ts)
        self.pop_1h.add(item, ts)
        if ts > self.last_seen.get(item, -1):
            self.last_seen[item] = ts
        self.now = max(self.now, ts)


@dataclass
class Context:
    """What one user's candidate list depends on, taken when the list is due."""

    user: str
    now: int  # the user's latest event time (when the worker computes the list)
    query: str | None
    banned: set[str]
    values: dict[str, float]  # the user's own items: decayed confidence values
    touched: dict[str, int]  # own item -> last touch (ms)
    events: int
    sources: dict[str, dict[str, float]] = field(default_factory=dict)  # covisit, vsknn, stan, own-recent
    covisit_query: Mapping[str, float] = field(default_factory=dict)  # co-visitation row of the query
    next_query: Mapping[str, float] = field(default_factory=dict)  # "viewed next" row of the query
    category: Mapping[str, str] = field(default_factory=dict)  # item -> category (the sources' map)
    recent_categories: list[str] = field(default_factory=list)  # of the user's latest items, latest first
    trimmed: bool = False  # `sources` hold each one's best per_source minus banned, best first (lists.context)
    history: Sequence[str] = ()  # the user's latest distinct moves, most recent last (UserProfile.history)
    covisit_prev: Mapping[str, float] = field(default_factory=dict)  # co-visitation row of the move before
    next_prev: Mapping[str, float] = field(default_factory=dict)  # "viewed next" row of the move before
    prev_gap_s: float = -1.0  # seconds from the move before the item on screen to `now` (-1: none)
    query_totals: tuple[float, float] = (0.0, 0.0)  # the query's co-visitation and "viewed next" row totals


def trim(scores: Mapping[str, float], n: int, banned: set[str]) -> dict[str, float]:
    """A source's best n items with their scores, minus banned."""
    return {i: scores[i] for i in top_items(scores, n, banned)}


class Features:
    """Builds candidates and their feature rows against one model."""

    def __init__(self, model: Model, cfg: RankerConfig = RankerConfig()):
        self.model, self.cfg = model, cfg
        y = np.asarray(model.item_factors, np.float32)
        self._unit = y / np.maximum(np.linalg.norm(y, axis=1), 1e-10)[:, None]

    def candidates(
        self,
        ctx: Context,
        system: tuple[Sequence[str], Sequence[float]],
        user_vec: np.ndarray | None,
        stats: ItemStats,
        popular: Sequence[str],
    ) -> tuple[list[str], np.ndarray]:
        """The candidate items of one list and their feature matrix (rows × FEATURES)."""
        ((items, X),) = self.candidates_many([ctx], [system], [user_vec], stats, [popular])
        return items, X

    def candidates_many(
        self,
        ctxs: Sequence[Context],
        systems: Sequence[tuple[Sequence[str], Sequence[float]]],
        user_vecs: Sequence[np.ndarray | None],
        stats: ItemStats,
        populars: Sequence[Sequence[str]],
    ) -> list[tuple[list[str], np.ndarray]]:
        """`candidates` of a batch of lists: row j's items and features (rows of one matrix).

        The per-item work of a batch is done once for all its rows: each source's columns are
        filled with one assignment over every row's candidates, the item counters (popularity,
        last seen, the model's index) are read once per distinct item of the batch; a row's own
        items and the query's co-visitation rows are looked up from their side (a few items)
        rather than by asking every candidate. The cosine columns stay one product per row: a
        product's rounding can depend on how many rows it covers."""
        cfg = self.cfg
        n_src = len(SOURCE_NAMES)
        # per source, over the batch: candidate row, score, rank, the row's divisor of `rel`
        s_rows: list[list[int]] = [[] for _ in range(n_src)]
        s_vals: list[list[float]] = [[] for _ in range(n_src)]
        s_ranks: list[list[int]] = [[] for _ in range(n_src)]
        s_divs: list[list[float]] = [[] for _ in range(n_src)]
        every: list[str] = []  # every row's candidates, one after the other
        bounds = [0]
        own_rows: list[int] = []
        own_vals: list[float] = []
        touch_rows: list[int] = []
        touch_vals: list[float] = []
        # the rows of the item on screen and of the move before it, by their column after the
        # sources' (co-visitation and "viewed next" of each): candidate row, share
        row_cols: dict[int, tuple[list[int], list[float]]] = {k: ([], []) for k in (10, 11, 15, 16)}
        user_consts: list[tuple[float, ...]] = []
        qcat_rows: list[int] = []
        rcat_rows: list[int] = []
        rcat_vals: list[float] = []
        mv_rows: list[int] = []
        mv_vals: list[float] = []
        for ctx, system, popular in zip(ctxs, systems, populars, strict=True):
            banned = ctx.banned
            sys_items = [i for i in system[0] if i not in banned]
            sys_scores = dict(zip(system[0], system[1], strict=False))
            lists: list[tuple[list[str], list[float]]] = [(sys_items, [sys_scores[i] for i in sys_items])]
            for s in SOURCE_NAMES[1:]:  # after the system's, in their columns' order
                d = ctx.sources.get(s, {})
                if s == "popularity":
                    top = list(islice((i for i in popular if i not in banned), cfg.pop_candidates))
                    lists.append((top, [1.0 / (1 + r) for r in range(len(top))]))
                elif ctx.trimmed and len(d) <= cfg.per_source:  # its own top_items (sorted, none banned)
                    lists.append((list(d), list(d.values())))
                else:
                    top = top_items(d, cfg.per_source, banned)
                    lists.append((top, [d[i] for i in top]))
            items = list(dict.fromkeys(chain.from_iterable(its for its, _ in lists)))  # first place kept
            base = len(every)
            every += items
            bounds.append(len(every))
            pos = dict(zip(items, range(base, base + len(items)), strict=True))
            for k, (its, scs) in enumerate(lists):
                if its:
                    s_rows[k] += map(pos.__getitem__, its)
                    s_vals[k] += scs
                    s_ranks[k] += range(1, len(its) + 1)
                    s_divs[k] += [max(scs) or 1.0] * len(its)
            values, touched, now = ctx.values, ctx.touched, ctx.now
            # the items both sides hold, in any order: each sets its own row of X
            hits = values.keys() & pos.keys()
            own_rows += map(pos.__getitem__, hits)
            own_vals += map(values.__getitem__, hits)
            hits = touched.keys() & pos.keys()
            touch_rows += map(pos.__getitem__, hits)
            touch_vals += [math.log1p(max(now - touched[i], 0) / 60_000.0) for i in hits]
            for row, (rows, vals) in zip(
                (ctx.covisit_query, ctx.next_query, ctx.covisit_prev, ctx.next_prev), row_cols.values(), strict=True
            ):
                if row:
                    hits = row.keys() & pos.keys()
                    rows += map(pos.__getitem__, hits)
                    vals += map(row.__getitem__, hits)
            gap = math.log1p(ctx.prev_gap_s) if ctx.prev_gap_s >= 0 else -1.0
            user_consts.append(
                (
                    math.log1p(ctx.events),
                    math.log1p(len(values)),
                    gap,
                    math.log1p(ctx.query_totals[0]),
                    math.log1p(ctx.query_totals[1]),
                )
            )
            moves: dict[str, int] = {}
            for ago, i in enumerate(reversed(ctx.history)):
                if i in pos and i not in moves:
                    moves[i] = ago
            mv_rows += map(pos.__getitem__, moves)
            mv_vals += moves.values()
            if ctx.recent_categories:
                cat_of, weight = ctx.category, {c: 0.5**j for j, c in enumerate(ctx.recent_categories)}
                qc = cat_of.get(ctx.query) if ctx.query is not None else None
                for r, i in enumerate(items, base):
                    c = cat_of.get(i)
                    if c is not None:
                        if c == qc:
                            qcat_rows.append(r)
                        w = weight.get(c)
                        if w is not None:
                            rcat_rows.append(r)
                            rcat_vals.append(w)
        n = len(every)
        X = np.zeros((n, len(FEATURES)), np.float32)
        if n:
            col = 0
            sels = []
            for k in range(n_src):
                X[:, col + 1] = _RANK_ABSENT
                if s_rows[k]:
                    sel = np.array(s_rows[k], np.intp)
                    # float64: a float32 score divided in float64 and rounded to float32 is the
                    # float32 quotient (double has more than twice float's precision)
                    v = np.array(s_vals[k], np.float64)
                    X[sel, col] = v
                    X[sel, col + 1] = s_ranks[k]
                    X[sel, col + 2] = v / np.array(s_divs[k], np.float64)
                    sels.append(sel)
                col += 3
            if sels:  # how many sources list each row
                X[:, col] = np.bincount(np.concatenate(sels), minlength=n)
            col += 1
            X[own_rows, col] = 1.0
            X[own_rows, col + 1] = own_vals
            X[:, col + 2] = 20.0
            X[touch_rows, col + 2] = touch_vals
            sizes = np.diff(bounds)
            consts = np.array(user_consts, np.float64).reshape(-1, 5)
            X[:, col + 3] = np.repeat(consts[:, 0], sizes)
            X[:, col + 4] = np.repeat(consts[:, 1], sizes)
            # item counters and model rows: once per distinct item of the batch
            uniq = list(dict.fromkeys(every))
            code = dict(zip(uniq, range(len(uniq)), strict=True))
            at = np.fromiter(map(code.__getitem__, every), np.intp, n)
            t_stats = stats.pop.last_ts
            X[:, col + 5] = np.fromiter(map(math.log1p, stats.pop.counts(uniq, t_stats)), np.float64, len(uniq))[at]
            # minutes since last seen: the same int and float operations as
            # log1p(max(now - seen, 0) / 60_000.0) item by item, math.log1p's values; never seen: 20
            last = np.fromiter(map(stats.last_seen.get, uniq, repeat(_NEVER)), np.int64, len(uniq))
            seen = last != _NEVER
            gone = np.full(len(uniq), 20.0)
            mins = np.maximum(stats.now - last[seen], 0) / 60_000.0
            gone[seen] = np.fromiter(map(math.log1p, mins.tolist()), np.float64, len(mins))
            X[:, col + 6] = gone[at]
            model_rows = np.fromiter(map(self.model.item_index.get, uniq, repeat(-1)), np.int64, len(uniq))[at]
            idx = self.model.item_index
            known = model_rows >= 0
            X[:, col + 7] = known
            for k, (rows, vals) in row_cols.items():
                X[rows, col + k] = vals
            X[:, col + 12] = np.fromiter(map(math.log1p, stats.pop_1h.counts(uniq, t_stats)), np.float64, len(uniq))[at]
            X[qcat_rows, col + 13] = 1.0
            X[rcat_rows, col + 14] = rcat_vals
            X[:, col + 17] = _RANK_ABSENT
            X[mv_rows, col + 17] = mv_vals
            X[:, col + 18] = np.repeat(consts[:, 2], sizes)
            X[:, col + 19] = np.repeat(consts[:, 3], sizes)
            X[:, col + 20] = np.repeat(consts[:, 4], sizes)
            for j, (ctx, user_vec) in enumerate(zip(ctxs, user_vecs, strict=True)):
                b0, b1 = bounds[j], bounds[j + 1]
                kn = known[b0:b1]
                if not kn.any():
                    continue
                vecs = self._unit[model_rows[b0:b1][kn]]
                Xj = X[b0:b1]
                q = idx.get(ctx.query, -1) if ctx.query is not None else -1
                if q >= 0:
                    Xj[kn, col + 8] = vecs @ self._unit[q]
                if user_vec is not None:
                    nu = float(np.linalg.norm(user_vec))
                    if nu > 0:
                        Xj[kn, col + 9] = vecs @ (user_vec / nu)
        return [(every[bounds[j] : bounds[j + 1]], X[bounds[j] : bounds[j + 1]]) for j in range(len(ctxs))]


class Ranker:
    """A trained LambdaRank model over `FEATURES`; `version` ties it to its model version."""

    def __init__(self, booster: Any, cfg: RankerConfig = RankerConfig(), meta: dict[str, Any] | None = None):
        self.booster, self.cfg = booster, cfg
        self.meta = meta or {}
        self.native: NativeForest | None = None  # compile_native: the same scores, compiled

    def scores(self, X: np.ndarray) -> np.ndarray:
        if not len(X):
            return np.zeros(0)
        if self.native is not None:
            s = self.native.scores(X)
            if s is not None:
                return s
        return np.asarray(self.booster.predict(X, num_threads=1))

    def compile_native(self) -> bool:
        """Compile the forest to native code for `scores` (recsys/candidates/native.py: the same
        scores, bit for bit); False when it cannot be (LightGBM keeps predicting)."""
        self.native = compile_forest(self.booster)
        return self.native is not None

    def rank(self, items: Sequence[str], X: np.ndarray, n: int) -> list[str]:
        s = self.scores(X)
        order = np.argsort(-s, kind="stable")[:n]
        return [items[j] for j in order]

    def to_bytes(self) -> bytes:
        return str(self.booster.model_to_string()).encode()

    @classmethod
    def from_bytes(cls, data: bytes, cfg: RankerConfig = RankerConfig(), sha256: str | None = None) -> Ranker:
        """The ranker in `data` (LightGBM's text form); `sha256`: refuse it unless it matches
        (LightGBM parses a truncated file without complaint when the cut misses the trees)."""
        import lightgbm as lgb

        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError("ranker file does not match its checksum")

        try:
            booster = lgb.Booster(model_str=data.decode())
        except (UnicodeDecodeError, lgb.basic.LightGBMError) as exc:
            raise ValueError(f"not a ranker model: {exc}") from exc
        if booster.num_feature() != len(FEATURES):
            raise FeatureMismatch(
                f"ranker has {booster.num_feature()} features, this code builds {len(FEATURES)}: "
                "trained by another release"
            )
        return cls(booster, cfg)

    def checksum(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()


@dataclass
class Examples:
    """Training rows: one group per event whose target was among its candidates (`keep_all`:
    every event, with `meta` = (segment, rank of the target in the fallback list or 0), for
    measuring a ranker offline on a replay's cached candidates)."""

    X: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    events: int = 0
    covered: int = 0
    keep_all: bool = False
    meta: list[tuple[str, int]] = field(default_factory=list)

    def add(self, items: Sequence[str], X: np.ndarray, target: str, meta: tuple[str, int] = ("", 0)) -> None:
        self.events += 1
        hit = target in items
        self.covered += hit
        if not self.keep_all and (not hit or len(items) < 2):
            return
        self.X.append(X)
        self.y.append(np.array([1.0 if i == target else 0.0 for i in items], np.float32))
        if self.keep_all:
            self.meta.append(meta)


def lightgbm_params(cfg: RankerConfig, seed: int, num_threads: int = 1) -> dict[str, Any]:
    """LightGBM's parameters for the ranker's LambdaRank fit (deterministic for a seed)."""
    return {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [10],
        "lambdarank_truncation_level": 20,
        "num_leaves": cfg.num_leaves,
        "learning_rate": cfg.learning_rate,
        "min_child_samples": cfg.min_child_samples,
        "feature_fraction": cfg.feature_fraction,
        "bagging_seed": seed,
        "feature_fraction_seed": seed,
        "seed": seed,
        "deterministic": True,
        "num_threads": num_threads,
        # row-wise on several threads would add the threads' partial histograms: another order
        "force_row_wise": num_threads == 1,
        "force_col_wise": num_threads != 1,
        "verbose": -1,
    }


def fit(ex: Examples, cfg: RankerConfig = RankerConfig(), num_threads: int = 1) -> Ranker:
    """LambdaRank on the examples' groups. `num_threads` (0: LightGBM's default, every core)
    changes the time, not the model: on several threads histograms are built a feature per
    thread (col-wise), each bin summed in row order as one thread's row-wise pass sums it (the
    faster of the two on one thread, ~25% of the fit here), and each group's gradients on its
    own sum in the same order whatever the count."""
    import lightgbm as lgb

    if not ex.X:
        raise ValueError("no training examples with the target among the candidates")
    keep = [j for j, a in enumerate(ex.y) if len(a) > 1 and a.any()]
    X = np.vstack([ex.X[j] for j in keep])
    if cfg.features:
        unknown = set(cfg.features) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown ranker features {sorted(unknown)}")
        X[:, [j for j, f in enumerate(FEATURES) if f not in cfg.features]] = 0.0  # constant: never split on
    y = np.concatenate([ex.y[j] for j in keep])
    group = [len(ex.y[j]) for j in keep]
    params = lightgbm_params(cfg, cfg.seed, num_threads)
    ds = lgb.Dataset(X, y, group=group, feature_name=list(FEATURES), free_raw_data=True)
    booster = lgb.train(params, ds, num_boost_round=cfg.n_estimators)
    if num_threads != 1:
        # the file lists the parameters; with the count and layout recorded as one thread's it is
        # byte for byte the one-thread fit's, so its checksum does not depend on the free threads
        text = (
            booster.model_to_string()
            .replace(f"\n[num_threads: {num_threads}]\n", "\n[num_threads: 1]\n", 1)
            .replace("\n[force_col_wise: 1]\n[force_row_wise: 0]\n", "\n[force_col_wise: 0]\n[force_row_wise: 1]\n", 1)
        )
        booster = lgb.Booster(model_str=text)
    meta = {"events": ex.events, "covered": ex.covered, "rows": int(len(y))}
    return Ranker(booster, cfg, meta)
