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
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, count, filterfalse, islice, repeat
from typing import Any

import numpy as np

from recsys.candidates.native import NativeForest, compile_forest
from recsys.candidates.sources import kernels, trim
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
_EMPTY: dict[str, float] = {}
_POP = SOURCE_NAMES.index("popularity")
_TABLE = 1 << 22  # entries of a batch's (row, item) table at most (32 MB)
_DICT_SOURCES = SOURCE_NAMES[1:_POP] + SOURCE_NAMES[_POP + 1 :]  # the sources a Context holds
# the maps of a Context read from their side, by their column after the sources' and n_sources:
# own values, touch times, the co-visitation and "viewed next" rows of the query and of the move
# before it, moves ago (from `history`)
_MAPS = (1, 2, 10, 11, 15, 16, 17)


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
    """Stream-wide item counters the features read: decayed popularity and last-seen time.

    Each counted item has a slot (`slot`, in the order items were first counted) in arrays the
    features gather from: its last-seen time, its stored counts in `pop` and `pop_1h` (copies,
    taken again after a change of their `generation`), and its row in the model asked for last
    (`rows_in`), so that a batch looks an item up in one dict for all. The popularity counters are
    fed through `add` (`add_many`) only."""

    def __init__(self, half_life_s: float = 8 * 3600.0):
        self.pop = RecentPopularity(half_life_s)
        self.pop_1h = RecentPopularity(3600.0)
        self.slot: dict[str, int] = {}
        self._items: list[str] = []
        self._seen = array("q")  # each slot's last-seen time (_NEVER: no time above -1 yet)
        self._stored = (array("d"), array("d"))  # each slot's stored count in pop, pop_1h
        self._generations = (0, 0)  # of pop and pop_1h when `_stored` was right
        self._index: Mapping[str, int] | None = None
        self._rows = array("q")  # each slot's row in `_index` (-1: none), for the slots so far
        self.now = 0

    def add(self, item: str, ts: int) -> None:
        self.add_many(((item, ts),))

    def add_many(self, events: Iterable[tuple[str, int]]) -> None:
        """`add` of each (item, ts) in turn, the counters and arrays looked up once."""
        add, add_1h = self.pop.add, self.pop_1h.add
        slot, items, seen = self.slot, self._items, self._seen
        stored, stored_1h = self._stored
        now = self.now
        for item, ts in events:
            c, c_1h = add(item, ts), add_1h(item, ts)
            s = slot.get(item)
            if s is None:
                s = slot[item] = len(items)
                items.append(item)
                seen.append(_NEVER)
                stored.append(c)
                stored_1h.append(c_1h)
            else:
                stored[s] = c
                stored_1h[s] = c_1h
            if ts > seen[s] and ts > -1:
                seen[s] = ts
            if ts > now:
                now = ts
        self.now = now

    def counts_at(self, slots: np.ndarray, now: int | None) -> tuple[np.ndarray, np.ndarray]:
        """`pop.counts_array` and `pop_1h.counts_array` of slots' items at `now`: the same values."""
        pop, pop_1h = self.pop, self.pop_1h
        if (pop.generation, pop_1h.generation) != self._generations:  # rebased or trimmed since
            self._stored = (
                array("d", pop.stored(self._items).tobytes()),
                array("d", pop_1h.stored(self._items).tobytes()),
            )
            self._generations = (pop.generation, pop_1h.generation)
        stored, stored_1h = (np.frombuffer(a, np.float64)[slots] for a in self._stored)
        return pop.scaled(stored, now), pop_1h.scaled(stored_1h, now)

    def last_seen(self, item: str) -> int | None:
        """When `item` was last seen (None: never, or only at times below 0)."""
        s = self.slot.get(item)
        return None if s is None or self._seen[s] == _NEVER else self._seen[s]

    def last_seen_at(self, slots: np.ndarray) -> np.ndarray:
        """`last_seen` of slots (_NEVER: never)."""
        return np.frombuffer(self._seen, np.int64)[slots]

    def rows_in(self, index: Mapping[str, int], slots: np.ndarray) -> np.ndarray:
        """The row in `index` (a model's item index; -1: none) of each slot's item. The rows are
        kept for the index asked for last and extended as items are counted."""
        if index is not self._index:
            self._index, self._rows = index, array("q")
        if len(self._rows) < len(self._items):
            self._rows.extend(map(index.get, islice(self._items, len(self._rows), None), repeat(-1)))
        return np.frombuffer(self._rows, np.int64)[slots]


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


def _first_places(
    e_rows: np.ndarray, e_codes: np.ndarray, q_rows: np.ndarray, q_codes: np.ndarray, n_rows: int, n_codes: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each entry (row, item code), the index of the first entry of that pair; for each query
    pair, the same, or -1 where the row has no such entry. Rows ascending in both. A dense table of
    rows × codes, built for a block of rows at a time when the whole would pass _TABLE entries."""
    n_e = len(e_rows)
    first_e = np.empty(n_e, np.intp)
    first_q = np.full(len(q_rows), -1, np.intp)
    step = max(1, _TABLE // max(n_codes, 1))
    for r0 in range(0, n_rows, step):
        r1 = min(r0 + step, n_rows)
        e0, e1 = np.searchsorted(e_rows, (r0, r1)).tolist()
        if e1 > e0:
            table = np.full((r1 - r0) * n_codes, n_e, np.intp)
            keys = (e_rows[e0:e1] - r0) * n_codes + e_codes[e0:e1]
            np.minimum.at(table, keys, np.arange(e0, e1))
            first_e[e0:e1] = table[keys]
            q0, q1 = np.searchsorted(q_rows, (r0, r1)).tolist()
            if q1 > q0:
                f = table[(q_rows[q0:q1] - r0) * n_codes + q_codes[q0:q1]]
                first_q[q0:q1] = np.where(f < n_e, f, -1)
    return first_e, first_q


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

        The per-item work of a batch is done once for all its rows: the batch's distinct items
        get codes, and the item counters (popularity, last seen, the model's index) are read once
        per code; one table of (row, code) gives each row's union of its source lists (first
        places kept) and the candidate of every list entry and of every key of a row's maps (own
        items, the co-visitation rows, its path: a few items, looked up from their side rather
        than by asking every candidate); each column is filled with one assignment. The cosine
        columns stay one product per row: a product's rounding can depend on how many rows it
        covers."""
        cfg = self.cfg
        n_src, n_maps, n_rows = len(SOURCE_NAMES), len(_MAPS), len(ctxs)
        per_source, n_pop = cfg.per_source, cfg.pop_candidates
        pop_scores = [1.0 / (1 + r) for r in range(n_pop)]
        # each row's source lists (by column: items, scores) and the maps looked up from their
        # side (_MAPS); every list's length
        e_items: list[Iterable[str]] = []
        e_vals: list[Iterable[float]] = []
        e_lens: list[int] = []
        maps: list[Mapping[str, float]] = []
        m_lens: list[int] = []
        for ctx, system, popular in zip(ctxs, systems, populars, strict=True):
            banned, sources = ctx.banned, ctx.sources
            sys_scores = dict(zip(system[0], system[1], strict=False))
            if len(sys_scores) == len(system[0]) and banned.isdisjoint(sys_scores):  # distinct, none banned
                its: list[Any] = [sys_scores]
                scs: list[Any] = [sys_scores.values()]
            else:
                top = [i for i in system[0] if i not in banned]
                its, scs = [top], [[sys_scores[i] for i in top]]
            ds = list(map(sources.get, _DICT_SOURCES, repeat(_EMPTY)))
            if not ctx.trimmed or max(map(len, ds)) > per_source:  # some are not their own top_items yet
                ds = [d if ctx.trimmed and len(d) <= per_source else trim(d, per_source, banned) for d in ds]
            its += ds
            scs += map(dict.values, ds)
            top = list(islice(filterfalse(banned.__contains__, popular), n_pop))
            its.insert(_POP, top)
            scs.insert(_POP, pop_scores[: len(top)])
            e_items += its
            e_vals += scs
            ls = list(map(len, its))
            e_lens += ls
            values, touched, h = ctx.values, ctx.touched, ctx.history
            if len(values) + len(touched) > sum(ls):  # a long profile: its keys that are candidates
                items = dict.fromkeys(chain.from_iterable(its))
                values = {i: values[i] for i in values.keys() & items.keys()}
                touched = {i: touched[i] for i in touched.keys() & items.keys()}
            row_maps: tuple[Mapping[str, float], ...] = (
                values,
                touched,
                ctx.covisit_query,
                ctx.next_query,
                ctx.covisit_prev,
                ctx.next_prev,
                dict(zip(h, range(len(h) - 1, -1, -1), strict=True)),  # moves ago: the latest move wins
            )
            maps += row_maps
            m_lens += map(len, row_maps)
        lens = np.array(e_lens, np.intp)
        n_entries = int(lens.sum())
        if not n_entries:
            return [([], np.zeros((0, len(FEATURES)), np.float32)) for _ in ctxs]
        # the batch's distinct items, coded in their first place's order: each entry sets its
        # item's place (the count at the item's first entry) or reads it, one dict pass; `dense`
        # turns places into codes
        flat = list(chain.from_iterable(e_items))
        place: dict[str, int] = {}
        e_places = np.fromiter(map(place.setdefault, flat, count()), np.intp, n_entries)
        uniq = list(place)
        dense = np.empty(n_entries, np.intp)
        dense[np.fromiter(place.values(), np.intp, len(uniq))] = np.arange(len(uniq))
        e_rows = np.repeat(np.arange(n_rows), lens.reshape(n_rows, n_src).sum(1))
        e_codes = dense[e_places]
        m_lens_a = np.array(m_lens, np.intp)
        n_keys = int(m_lens_a.sum())
        m_places = np.fromiter(map(place.get, chain.from_iterable(maps), repeat(-1)), np.intp, n_keys)
        listed = m_places >= 0  # a candidate of some row
        m_rows = np.repeat(np.arange(n_rows), m_lens_a.reshape(n_rows, n_maps).sum(1))[listed]
        first, m_first = _first_places(e_rows, e_codes, m_rows, dense[m_places[listed]], n_rows, len(uniq))
        # a row's candidates: its entries that come first among their item's, in their order
        firsts = np.flatnonzero(first == np.arange(n_entries))
        n = len(firsts)
        cand_of = np.empty(n_entries, np.intp)
        cand_of[firsts] = np.arange(n)
        rows = cand_of[first]  # each entry's candidate
        every = list(map(flat.__getitem__, firsts.tolist()))
        at = e_codes[firsts]
        sizes = np.bincount(e_rows[firsts], minlength=n_rows)
        bounds = [0, *np.cumsum(sizes).tolist()]
        X = np.zeros((n, len(FEATURES)), np.float32)
        # float64: a float32 score divided in float64 and rounded to float32 is the float32
        # quotient (double has more than twice float's precision)
        v = np.fromiter(chain.from_iterable(e_vals), np.float64, n_entries)
        starts = np.cumsum(lens) - lens
        cols = np.repeat(np.tile(np.arange(0, 3 * n_src, 3), n_rows), lens)
        X[:, 1 : 3 * n_src : 3] = _RANK_ABSENT
        X[rows, cols] = v
        X[rows, cols + 1] = np.arange(1, n_entries + 1) - np.repeat(starts, lens)
        # each list's divisor of `rel`: its best score (1 when that is 0); a NaN among the scores
        # takes Python's max, which depends on where it is
        full = np.flatnonzero(lens)
        best = np.maximum.reduceat(v, starts[full])
        for j in np.flatnonzero(np.isnan(best)).tolist():
            best[j] = max(e_vals[full[j]])
        X[rows, cols + 2] = v / np.repeat(np.where(best == 0.0, 1.0, best), lens[full])
        col = 3 * n_src
        X[:, col] = np.bincount(rows, minlength=n)  # how many sources list each row
        col += 1
        # the maps' keys that are candidates of their row, by map
        cand = np.full(n_keys, -1, np.intp)
        cand[listed] = np.where(m_first >= 0, cand_of[m_first], -1)
        hit = cand >= 0
        mid = np.repeat(np.tile(np.arange(n_maps), n_rows), m_lens_a)[hit]
        mr = cand[hit]
        mv = np.fromiter(chain.from_iterable(d.values() for d in maps), np.float64, n_keys)[hit]
        X[mr[mid == 0], col] = 1.0
        X[:, col + 2] = 20.0
        X[:, col + 17] = _RANK_ABSENT
        for m, off in enumerate(_MAPS):
            sel = mid == m
            if m == 1:
                # touch times: log1p(max(now - touched, 0) / 60_000.0), in doubles: the same
                # operations as Python's on int times (exact below 2**53 ms)
                r = mr[sel]
                nows = np.repeat(np.array([ctx.now for ctx in ctxs], np.float64), sizes)[r]
                X[r, col + off] = kernels.log1p_each(np.maximum(nows - mv[sel], 0.0) / 60_000.0)
            else:
                X[mr[sel], col + off] = mv[sel]
        # each row's constants: log1p of its events, own items, seconds since the move before the
        # query (-1: none) and the query's row totals
        user = np.array([(c.events, len(c.values), c.prev_gap_s, *c.query_totals) for c in ctxs], np.float64)
        consts = kernels.log1p_each(user.ravel()).reshape(-1, 5)
        consts[:, 2] = np.where(user[:, 2] >= 0, consts[:, 2], -1.0)
        X[:, [col + 3, col + 4, col + 18, col + 19, col + 20]] = np.repeat(consts, sizes, axis=0)
        counters, rows_u = self._item_counters(uniq, stats)
        X[:, [col + 5, col + 6, col + 7, col + 12]] = counters[at]
        model_rows = rows_u[at]
        known = model_rows >= 0
        qcat_rows, rcat_rows, rcat_vals = _category_rows(ctxs, every, bounds)
        X[qcat_rows, col + 13] = 1.0
        X[rcat_rows, col + 14] = rcat_vals
        cos_q, cos_u = self._cosines(ctxs, user_vecs, model_rows[known], np.cumsum(known), bounds)
        X[known, col + 8] = cos_q
        X[known, col + 9] = cos_u
        return [(every[b0:b1], X[b0:b1]) for b0, b1 in zip(bounds, bounds[1:], strict=False)]

    def _item_counters(self, uniq: list[str], stats: ItemStats) -> tuple[np.ndarray, np.ndarray]:
        """The item counters' four columns of each distinct item (log popularity, log minutes
        since last seen, in the model, log popularity of the last hour) and its model row."""
        # minutes since last seen: the same int and float operations as log1p(max(now - seen, 0)
        # / 60_000.0) item by item (math.log1p's values); never seen: 20
        t_stats = stats.pop.last_ts
        counters = np.zeros((len(uniq), 4))
        slots = np.fromiter(map(stats.slot.get, uniq, repeat(-1)), np.intp, len(uniq))
        counted = np.flatnonzero(slots >= 0)
        pops = stats.counts_at(slots[counted], t_stats)  # never counted: 0
        counters[counted, 0] = kernels.log1p_each(pops[0])
        counters[counted, 3] = kernels.log1p_each(pops[1])
        last_seen = np.full(len(uniq), _NEVER, np.int64)
        last_seen[counted] = stats.last_seen_at(slots[counted])
        seen = last_seen != _NEVER
        counters[:, 1] = 20.0
        counters[seen, 1] = kernels.log1p_each(np.maximum(stats.now - last_seen[seen], 0) / 60_000.0)
        idx = self.model.item_index
        rows_u = np.empty(len(uniq), np.int64)
        rows_u[counted] = stats.rows_in(idx, slots[counted])
        rest = np.flatnonzero(slots < 0)  # never counted: looked up in the model's index
        rows_u[rest] = np.fromiter(map(idx.get, map(uniq.__getitem__, rest.tolist()), repeat(-1)), np.int64, len(rest))
        counters[:, 2] = rows_u >= 0
        return counters, rows_u

    def _cosines(
        self,
        ctxs: Sequence[Context],
        user_vecs: Sequence[np.ndarray | None],
        rows: np.ndarray,
        known_upto: np.ndarray,
        bounds: list[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each known candidate's cosine to the query and to the folded-in user (`rows`: their
        model rows, in candidate order; `known_upto`: known candidates up to each candidate)."""
        # the unit vectors gathered once, then a product per row (one over several rows could round otherwise)
        unit = self._unit
        vecs = unit[rows]
        ends = np.concatenate(([0], known_upto))[bounds[1:]].tolist()
        idx = self.model.item_index
        cos_q, cos_u = np.zeros(len(vecs)), np.zeros(len(vecs))
        k0 = 0
        for ctx, user_vec, k1 in zip(ctxs, user_vecs, ends, strict=True):
            if k1 > k0:
                vj = vecs[k0:k1]
                q = idx.get(ctx.query, -1) if ctx.query is not None else -1
                if q >= 0:
                    cos_q[k0:k1] = vj @ unit[q]
                if user_vec is not None:
                    nu = float(np.sqrt(user_vec.dot(user_vec)))  # np.linalg.norm's operations
                    if nu > 0:
                        cos_u[k0:k1] = vj @ (user_vec / nu)
                k0 = k1
        return cos_q, cos_u


def _category_rows(
    ctxs: Sequence[Context], every: list[str], bounds: list[int]
) -> tuple[list[int], list[int], list[float]]:
    """The candidates (rows of X) in the query's category, and those in one of the user's recent
    categories with that category's weight (halving with each step back)."""
    qcat_rows: list[int] = []
    rcat_rows: list[int] = []
    rcat_vals: list[float] = []
    for ctx, b0, b1 in zip(ctxs, bounds, bounds[1:], strict=False):
        if ctx.recent_categories:
            cat_of, weight = ctx.category, {c: 0.5**j for j, c in enumerate(ctx.recent_categories)}
            qc = cat_of.get(ctx.query) if ctx.query is not None else None
            for r, i in enumerate(every[b0:b1], b0):
                c = cat_of.get(i)
                if c is not None:
                    if c == qc:
                        qcat_rows.append(r)
                    w = weight.get(c)
                    if w is not None:
                        rcat_rows.append(r)
                        rcat_vals.append(w)
    return qcat_rows, rcat_rows, rcat_vals


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
