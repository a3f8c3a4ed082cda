"""The ranker's features of a batch (`Features.candidates_many`) equal, to the last bit and in the
same candidate order, what the per-item loops built one list at a time, on real data: the
ranker's lists cannot change with the batch code."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from recsys.candidates.lists import SOURCE_METHODS, context
from recsys.candidates.ranker import (
    _RANK_ABSENT,
    FEATURES,
    SOURCE_NAMES,
    Context,
    Features,
    ItemStats,
    RankerConfig,
)
from recsys.candidates.sources import Sources, SourcesConfig, top_items
from recsys.confidence import ConfidenceConfig, UserProfile
from recsys.data.datasets import load_events
from recsys.model.train import TrainConfig, train
from recsys.serving.recommender import Recommender
from recsys.serving.scoring import ScoringConfig, own_item_scores
from tests.conftest import require_dataset

CFG = ConfidenceConfig()
SCFG = ScoringConfig()


def loop_candidates(
    f: Features,
    ctx: Context,
    system: tuple[Sequence[str], Sequence[float]],
    user_vec: np.ndarray | None,
    stats: ItemStats,
    popular: Sequence[str],
) -> tuple[list[str], np.ndarray]:
    """`Features.candidates` as it was written before the batch code: one list, item by item."""
    cfg = f.cfg
    lists: dict[str, tuple[list[str], list[float]]] = {"system": ([i for i in system[0] if i not in ctx.banned], [])}
    sys_scores = dict(zip(system[0], system[1], strict=False))
    lists["system"] = (lists["system"][0], [sys_scores[i] for i in lists["system"][0]])
    for s in ("covisit", "vsknn", "stan", "own-recent"):
        d = ctx.sources.get(s, {})
        items = top_items(d, cfg.per_source, ctx.banned)
        lists[s] = (items, [d[i] for i in items])
    pop_items = [i for i in popular if i not in ctx.banned][: cfg.pop_candidates]
    lists["popularity"] = (pop_items, [1.0 / (1 + r) for r in range(len(pop_items))])
    d = ctx.sources.get("category", {})
    cat_items = top_items(d, cfg.per_source, ctx.banned)
    lists["category"] = (cat_items, [d[i] for i in cat_items])
    cand: dict[str, None] = {}
    for s in SOURCE_NAMES:
        cand.update(dict.fromkeys(lists[s][0]))
    items = list(cand)
    n = len(items)
    X = np.zeros((n, len(FEATURES)), np.float32)
    if not n:
        return items, X
    pos = {i: r for r, i in enumerate(items)}
    col = 0
    present = np.zeros(n, np.int64)
    for s in SOURCE_NAMES:
        its, scs = lists[s]
        X[:, col + 1] = _RANK_ABSENT
        if its:
            rows = np.fromiter(map(pos.__getitem__, its), np.intp, len(its))
            v = np.array(scs)
            X[rows, col] = v
            X[rows, col + 1] = np.arange(1, len(its) + 1)
            X[rows, col + 2] = v / (max(scs) or 1.0)
            present += np.bincount(rows, minlength=n)
        col += 3
    X[:, col] = present
    col += 1
    now = ctx.now
    X[:, col] = np.array([i in ctx.values for i in items], np.float32)
    X[:, col + 1] = [ctx.values.get(i, 0.0) for i in items]
    X[:, col + 2] = [math.log1p(max(now - ctx.touched[i], 0) / 60_000.0) if i in ctx.touched else 20.0 for i in items]
    X[:, col + 3] = math.log1p(ctx.events)
    X[:, col + 4] = math.log1p(len(ctx.values))
    t_stats = stats.pop.last_ts
    X[:, col + 5] = list(map(math.log1p, stats.pop.counts(items, t_stats)))
    seen = {i: t for i in items if (t := stats.last_seen(i)) is not None}
    X[:, col + 6] = [math.log1p(max(stats.now - seen[i], 0) / 60_000.0) if i in seen else 20.0 for i in items]
    idx = f.model.item_index
    rows = np.array([idx.get(i, -1) for i in items], np.int64)
    known = rows >= 0
    X[:, col + 7] = known
    q = idx.get(ctx.query, -1) if ctx.query is not None else -1
    unit = f._unit  # noqa: SLF001 - the reference reads the same unit vectors
    if known.any():
        vecs = unit[rows[known]]
        if q >= 0:
            X[known, col + 8] = vecs @ unit[q]
        if user_vec is not None:
            nu = float(np.linalg.norm(user_vec))
            if nu > 0:
                X[known, col + 9] = vecs @ (user_vec / nu)
    cq = ctx.covisit_query
    if cq:
        X[:, col + 10] = [cq.get(i, 0.0) for i in items]
    nq = ctx.next_query
    if nq:
        X[:, col + 11] = [nq.get(i, 0.0) for i in items]
    X[:, col + 12] = list(map(math.log1p, stats.pop_1h.counts(items, t_stats)))
    qc = ctx.category.get(ctx.query) if ctx.query is not None else None
    weight = {c: 0.5**j for j, c in enumerate(ctx.recent_categories)}
    cats = [ctx.category.get(i) for i in items]
    X[:, col + 13] = [1.0 if c is not None and c == qc else 0.0 for c in cats]
    X[:, col + 14] = [weight.get(c, 0.0) if c is not None else 0.0 for c in cats]
    X[:, col + 15] = [ctx.covisit_prev.get(i, 0.0) for i in items]
    X[:, col + 16] = [ctx.next_prev.get(i, 0.0) for i in items]
    hist = list(reversed(ctx.history))
    X[:, col + 17] = [hist.index(i) if i in hist else _RANK_ABSENT for i in items]
    X[:, col + 18] = math.log1p(ctx.prev_gap_s) if ctx.prev_gap_s >= 0 else -1.0
    X[:, col + 19] = math.log1p(ctx.query_totals[0])
    X[:, col + 20] = math.log1p(ctx.query_totals[1])
    return items, X


@pytest.mark.parametrize("dataset", ["yoochoose", "taobao_small", "rees46_small"])
def test_batch_features_equal_the_per_item_loops_on_real_data(dataset: str) -> None:
    _compare_on(dataset)


def test_batch_features_equal_the_loops_with_the_row_item_table_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose (row, item) table would pass its bound is looked up a block of rows at a time."""
    import recsys.candidates.ranker as ranker

    monkeypatch.setattr(ranker, "_TABLE", 3000)
    _compare_on("rees46_small")


def _compare_on(dataset: str) -> None:
    events = sorted(load_events(require_dataset(dataset)), key=lambda e: e.ts)[-6000:]
    head, tail = events[: len(events) // 2], events[len(events) // 2 :]
    from recsys.confidence import build_profiles

    model, _, _ = train(build_profiles(head, CFG), CFG, TrainConfig(factors=16, iterations=4, num_threads=1))
    rec = Recommender(model, CFG, SCFG)
    features = Features(model, RankerConfig(per_source=30, pop_candidates=15))
    src, stats = Sources(SourcesConfig(category_recent=3)), ItemStats()
    profiles: dict[str, UserProfile] = {}
    compared = 0
    for chunk in range(0, len(tail), 250):
        batch = tail[chunk : chunk + 250]
        for e in batch:
            src.update(e)
            stats.add(e.item, e.ts)
            profiles.setdefault(e.user, UserProfile()).apply(e, CFG)
        users = list(dict.fromkeys(e.user for e in batch))
        profs = [profiles[u] for u in users]
        values = [p.values(CFG) for p in profs]
        confs = [CFG.to_confidences(v) for v in values]
        queries = [p.history[-1] if p.history else None for p in profs]
        bought = [p.items_with(("transaction",)) for p in profs]
        ctxs = [
            context(u, p, q, b, c, [(src, SOURCE_METHODS)], 30, p.last_ts)
            for u, p, q, b, c in zip(users, profs, queries, bought, confs, strict=True)
        ]
        x, known = rec.fold_in(confs)
        own = [
            own_item_scores(p, CFG, SCFG.repeat_half_life_days, values=v) for p, v in zip(profs, values, strict=True)
        ]
        recs = rec.scorer.recommend(x, np.asarray(known, bool), queries, bought, 30, own=own)
        systems = [(r.items, r.scores) for r in recs]
        vecs = [x[j] if known[j] else None for j in range(len(users))]
        # a different recent-popularity list per row: the batch must not share one row's
        popular = [[e.item for e in batch[-60 - j :]][::-1] for j in range(len(users))]
        got = features.candidates_many(ctxs, systems, vecs, stats, popular)
        for j, (items, X) in enumerate(got):
            want_items, want_X = loop_candidates(features, ctxs[j], systems[j], vecs[j], stats, popular[j])
            assert items == want_items
            assert X.dtype == want_X.dtype and X.shape == want_X.shape
            assert np.array_equal(X.view(np.uint32), want_X.view(np.uint32)), FEATURES
            compared += len(items) > 0
    assert compared > 100


def test_path_features_read_the_moves_before_the_item_on_screen() -> None:
    """The columns of the user's path: how many moves ago a candidate was seen, the co-visitation and
    "viewed next" rows of the move before the item on screen (as shares of their totals), the seconds
    since the move before it, and the totals of the query's rows (how much its shares rest on)."""
    from recsys.events import Event
    from recsys.model.factors import Model

    unit = np.eye(4, dtype=np.float32)
    unit[3] = [0.6, 0.8, 0.0, 0.0]
    ids = ["a", "b", "c", "d"]
    model = Model("v", ids, unit, unit.T @ unit, np.ones(4, np.float32), np.ones(4), 0.1)
    src, stats = Sources(SourcesConfig(covisit_backward=0.0, covisit_window_s=3600)), ItemStats()
    # others walked b -> d twice and b -> a once, and our user b -> c: b's row is d 2/4, a 1/4, c 1/4
    other = [("v", "b", 0), ("v", "d", 1), ("w", "b", 2), ("w", "d", 3), ("x", "b", 4), ("x", "a", 5)]
    ours = [("u", "a", 10_000), ("u", "b", 20_000), ("u", "c", 50_000)]  # c is on screen, b the move before
    p = UserProfile()
    for user, item, ts in other + ours:
        e = Event(user, item, "view", ts)
        src.update(e)
        stats.add(item, ts)
        if user == "u":
            p.apply(e, CFG)
    ctx = context("u", p, "c", set(), CFG.to_confidences(p.values(CFG)), [(src, SOURCE_METHODS)], 30, p.last_ts)
    assert ctx.prev_gap_s == 30.0
    assert ctx.covisit_prev == pytest.approx({"d": 0.5, "a": 0.25})  # c is on screen: never a candidate
    items, X = Features(model).candidates(ctx, (["a", "d"], [0.5, 0.4]), None, stats, [])
    col = {f: X[:, FEATURES.index(f)] for f in FEATURES}
    at = {i: r for r, i in enumerate(items)}
    assert set(at) >= {"a", "d"}
    assert col["moves_ago"][at["a"]] == 2 and col["moves_ago"][at["d"]] == _RANK_ABSENT
    assert col["covisit_from_prev"][at["d"]] == pytest.approx(0.5)
    assert col["next_from_prev"][at["d"]] == pytest.approx(0.5)
    assert col["next_from_prev"][at["a"]] == pytest.approx(0.25)
    assert np.all(col["prev_gap_log_s"] == np.float32(math.log1p(30.0)))
    # c's rows: c was followed by nothing yet, and co-visited with b (1, backward off: b -> c only)
    assert np.all(col["query_covisit_log_total"] == 0.0) and np.all(col["query_next_log_total"] == 0.0)


def test_odd_rows_equal_the_loops() -> None:
    """Rows the real data rarely holds: a NaN or only zeros among a list's scores (its `rel`
    divisor is Python's max of them, or 1), a system list with a banned item, a row without
    candidates, more own items than candidates, an item twice in the path."""
    from recsys.model.factors import Model

    rng = np.random.default_rng(5)
    ids = [f"i{k}" for k in range(40)]
    y = rng.standard_normal((40, 8)).astype(np.float32)
    model = Model("v", ids, y, y.T @ y, np.ones(40, np.float32), np.ones(40), 0.1)
    stats = ItemStats()
    for k in range(200):
        stats.add(f"i{rng.integers(50)}", 1_000_000 + 1000 * k)
    nan = float("nan")

    def ctx(user: str, **kw: object) -> Context:
        base: dict = dict(user=user, now=1_300_000, query="i1", banned={"i1"}, values={}, touched={}, events=3)
        return Context(**{**base, **kw})  # type: ignore[arg-type]

    many = {f"i{k}": 0.1 * k for k in range(2, 40)}
    ctxs = [
        ctx("a", sources={"covisit": {"i2": 1.0, "i3": nan, "i4": 2.0}, "stan": {"i5": 0.0, "i6": 0.0}}),
        ctx("b", sources={"vsknn": {"i7": nan, "i8": 3.0}}, history=["i9", "i2", "i9", "i1"], values=many),
        ctx("c", query=None, banned=set()),
        ctx("d", touched={i: 1_200_000 for i in many}, values=many, covisit_prev={"i3": 0.5, "zz": 1.0}),
    ]
    systems: list[tuple[list[str], list[float]]] = [
        (["i1", "i2", "i10"], [0.9, 0.5, 0.1]),
        (["i11", "i12"], [nan, 0.2]),
        ([], []),
        (["i13", "i13x"], [0.0, 0.0]),
    ]
    vecs = [None, y[3] * 2, None, y[5]]
    popular = [["i1", "i14", "i15"], [], [], ["i16"]]
    features = Features(model, RankerConfig(per_source=5, pop_candidates=2))
    got = features.candidates_many(ctxs, systems, vecs, stats, popular)
    assert len(got[2][0]) == 0 and got[2][1].shape == (0, len(FEATURES))
    for j, (items, X) in enumerate(got):
        want_items, want_X = loop_candidates(features, ctxs[j], systems[j], vecs[j], stats, popular[j])
        assert items == want_items
        assert np.array_equal(X.view(np.uint32), want_X.view(np.uint32)), j


def test_item_stats_last_seen_and_model_rows_by_slot() -> None:
    """An item's last-seen time is its latest above -1 (out-of-order events too); its model row
    follows the index asked for, extended as items are counted and rebuilt for another index."""
    stats = ItemStats()
    for item, ts in (("a", 5), ("b", -3), ("a", 2), ("c", 0), ("a", 9), ("b", 4)):
        stats.add(item, ts)
    assert [stats.last_seen(i) for i in "abcz"] == [9, 4, 0, None]
    stats.add("d", -7)
    assert stats.last_seen("d") is None and stats.now == 9
    slots = np.array([stats.slot[i] for i in "dcba"])
    assert stats.last_seen_at(slots).tolist() == [np.iinfo(np.int64).min, 0, 4, 9]
    first = {"a": 0, "c": 1}
    assert stats.rows_in(first, slots).tolist() == [-1, 1, -1, 0]
    stats.add("e", 10)
    assert stats.rows_in(first, np.array([stats.slot["e"], stats.slot["a"]])).tolist() == [-1, 0]
    assert stats.rows_in({"e": 3, "d": 2}, slots).tolist() == [2, -1, -1, -1]


def test_item_stats_counts_follow_rebases_and_trims() -> None:
    """The counts the features gather by slot are `counts_array`'s, to the bit, across the
    counters' rebases (short half-life) and trims (few items kept)."""
    from recsys.serving.popularity import RecentPopularity

    rng = np.random.default_rng(11)
    stats = ItemStats()
    stats.pop, stats.pop_1h = RecentPopularity(0.05, max_items=6), RecentPopularity(0.002, max_items=1000)
    items = [f"i{k}" for k in range(30)]
    ts = 1_000_000
    for step in range(40):
        for _ in range(int(rng.integers(1, 30))):
            ts += int(rng.integers(0, 40))
            stats.add(items[int(rng.integers(len(items)))], ts)
        slots = np.array([stats.slot[i] for i in items if i in stats.slot])
        counted = [i for i in items if i in stats.slot]
        for now in (stats.pop.last_ts, ts + 500):
            got = stats.counts_at(slots, now)
            for p, g in zip((stats.pop, stats.pop_1h), got, strict=True):
                assert np.array_equal(g.view(np.int64), p.counts_array(counted, now).view(np.int64)), step
    assert stats.pop.generation > 3 and stats.pop_1h.generation > 3  # it did rebase and trim
