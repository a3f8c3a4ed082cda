"""Recent popularity (recsys/serving/popularity.py) and the scorer's `popular` fallback."""

import numpy as np
import pytest

from recsys.confidence import ConfidenceConfig, UserProfile
from recsys.errors import ConfigError
from recsys.serving.popularity import RecentPopularity
from recsys.serving.recommender import Recommender
from recsys.serving.scoring import Scorer, ScoringConfig, own_item_scores
from tests.helpers import T0, ev, random_model

H = 3_600_000  # one hour in ms


def test_decayed_counts_by_hand():
    rp = RecentPopularity(half_life_s=3600)
    rp.add("a", T0)
    rp.add("a", T0)
    rp.add("b", T0 + 2 * H)
    # at T0 + 2h: a = 2 * 2^-2 = 0.5, b = 1
    assert rp.count("a") == pytest.approx(0.5)
    assert rp.count("b") == pytest.approx(1.0)
    assert rp.top(5) == ["b", "a"]
    rp.add("a", T0 + 2 * H)  # a = 1.5 now
    assert rp.top(5) == ["a", "b"]
    assert rp.count("a", now=T0 + 3 * H) == pytest.approx(0.75)
    assert rp.top(1, exclude={"a"}) == ["b"]
    assert rp.top(5, exclude=["a", "b"]) == []
    assert rp.count("never") == 0.0


def test_out_of_order_events_are_exact_and_ties_go_to_the_first_counted():
    rp = RecentPopularity(half_life_s=3600)
    rp.add("x", T0 + H)
    rp.add("y", T0)  # late: counts half at T0 + 1h
    rp.add("y", T0)
    assert rp.count("y") == pytest.approx(1.0) and rp.count("x") == pytest.approx(1.0)
    assert rp.top(2) == ["x", "y"]  # tie: x was counted first


def test_counts_array_is_counts_to_the_last_bit():
    rng = np.random.default_rng(3)
    empty = RecentPopularity(half_life_s=3600)
    assert empty.counts_array(["a"]).tolist() == [0.0]
    for half_life in (3600, None):
        rp = RecentPopularity(half_life_s=half_life)
        for _ in range(300):
            rp.add(f"i{rng.integers(60)}", T0 + int(rng.integers(0, 30 * H)))
        items = [f"i{k}" for k in range(80)]  # some never counted
        for now in (None, T0 + 40 * H, T0 - H):
            want = np.array(rp.counts(items, now))
            assert np.array_equal(rp.counts_array(items, now).view(np.int64), want.view(np.int64))


def test_add_returns_the_stored_count_and_generation_marks_rebases_and_trims():
    rp = RecentPopularity(half_life_s=1.0, max_items=2)
    c = rp.add("a", T0)
    assert rp.stored(["a", "b"]).tolist() == [c, 0.0] and rp.generation == 0
    assert rp.scaled(rp.stored(["a"]))[0] == rp.count("a")
    rp.add("b", T0 + 1000)
    rp.add("c", T0 + 2000)
    assert rp.generation == 0
    rp.add("d", T0 + 3000)  # four items: not past 2 x max_items yet
    assert rp.generation == 0
    rp.add("e", T0 + 4000)  # five: trimmed to the best two
    assert rp.generation == 1 and len(rp) == 2
    rp.add("e", T0 + 600_000)  # 600 half-lives on: rebased
    assert rp.generation == 2


def test_no_decay_is_plain_counts_and_rebase_keeps_the_ranking():
    rp = RecentPopularity(half_life_s=None)
    for item, n in (("a", 3), ("b", 5), ("c", 1)):
        for k in range(n):
            rp.add(item, T0 + k * 10**9)
    assert rp.top(3) == ["b", "a", "c"] and rp.count("b") == 5
    fast = RecentPopularity(half_life_s=1.0)  # thousands of half-lives: rescaled, no overflow
    fast.add("old", T0)
    for k in range(1, 5):
        fast.add("new", T0 + k * 600_000)
    assert fast.top(2) == ["new"]  # 2400 half-lives later "old" has decayed to nothing
    assert np.isfinite(fast.count("new")) and fast.count("new") == pytest.approx(1.0)


def test_bounded_memory_keeps_the_strongest():
    rp = RecentPopularity(half_life_s=3600, max_items=10)
    for k in range(25):
        rp.add(f"i{k}", T0 + k * 60_000)
    assert len(rp) <= 20 and rp.top(3) == ["i24", "i23", "i22"]
    with pytest.raises(ValueError):
        RecentPopularity(half_life_s=0)


def test_scorer_uses_the_popular_ranking_for_cold_rows_and_padding_only():
    model = random_model(n_items=50, factors=6, seed=2)
    sc = Scorer(model, ScoringConfig(n=5))
    rng = np.random.default_rng(0)
    x = np.vstack([np.zeros(6), rng.normal(size=6)]).astype(np.float32)
    ranking = ["new-item", "i7", "i3", "i9", "i4", "i11", "i12"]
    plain = sc.recommend(x, [False, True], [None, "i1"], [set(), set()])
    out = sc.recommend(x, [False, True], [None, "i1"], [{"i3"}, set()], popular=ranking)
    # cold row: the given ranking, minus the row's filters (ids need not be in the model)
    assert out[0].items == ["new-item", "i7", "i9", "i4", "i11"] and out[0].source == "popular"
    assert out[0].scores == sorted(out[0].scores, reverse=True)
    # a scored row is untouched; with nothing passed the training popularity is used as before
    assert out[1].items == plain[1].items and out[1].source == "blend"
    assert plain[0].items == [model.item_ids[r] for r in np.argsort(-model.popularity, kind="stable")[:5]]
    # a short ranking is padded from the training popularity
    short = sc.recommend(x[:1], [False], [None], [set()], popular=["i7"])
    assert short[0].items[0] == "i7" and len(short[0].items) == 5
    # padding a row whose own filters leave it short: below every scored item
    tiny = Scorer(model, ScoringConfig(n=5))
    ex = {model.item_ids[r] for r in range(model.n_items)} - {"i1", "i2"}
    pad = tiny.recommend(x[1:], [True], [None], [ex], popular=["i1", "q", "i2", "z"])
    assert set(pad[0].items[:2]) == {"i1", "i2"} and pad[0].items[2:] == ["q", "z"] + pad[0].items[4:]


def test_recommender_passes_popular_through():
    model = random_model(n_items=40, factors=6, seed=1)
    rec = Recommender(model, ConfidenceConfig(), ScoringConfig(n=3))
    out = rec.recommend([UserProfile()], [None], popular=["zz", "i5", "i6", "i7"])
    assert out[0].items == ["zz", "i5", "i6"]
    assert rec.recommend([UserProfile()], [None])[0].items == Scorer(model, ScoringConfig(n=3)).popular().items


def test_revisit_recency_half_life_orders_own_items_by_last_touch():
    cfg = ConfidenceConfig(half_life_days=None)
    p = UserProfile()
    p.apply(ev("u", "a", "addtocart", T0), cfg)  # strongest value, touched long ago
    p.apply(ev("u", "b", "view", T0 + 24 * H), cfg)
    p.apply(ev("u", "c", "view", T0 + 48 * H), cfg)  # touched last
    plain = own_item_scores(p, cfg)
    assert max(plain, key=plain.get) == "a"
    s = own_item_scores(p, cfg, half_life_days=0.1)  # 2.4 h: a day is 10 half-lives
    assert s["c"] == pytest.approx(1.0)
    assert s["b"] == pytest.approx(2.0**-10)
    assert s["a"] == pytest.approx(cfg.weights["addtocart"] / cfg.weights["view"] * 2.0**-20)
    with pytest.raises(ConfigError):
        ScoringConfig(repeat_half_life_days=0)


@pytest.mark.parametrize("half_life_s,max_items", [(None, 100_000), (3600.0, 100_000), (None, 150), (60.0, 150)])
def test_top_kept_incrementally_matches_ranking_everything(half_life_s, max_items):
    """`top` ranks a candidate set between full passes: after any sequence of adds it must equal
    sorting every counted item (count desc, ties to the item counted first), including plain
    counts (many ties), trimming past max_items and rebasing."""
    rng = np.random.default_rng(3)
    rp = RecentPopularity(half_life_s=half_life_s, max_items=max_items)
    first_seen: dict[str, int] = {}
    ts = T0
    for step in range(6000):
        item = f"i{int(rng.zipf(1.3)) % 400}"
        ts += int(rng.integers(0, 120_000))
        rp.add(item, ts)
        if step % 37 == 0:
            n = int(rng.choice([int(rng.integers(1, 40)), 124]))  # 124 + 3 excluded: the floor position shows
            exclude = {f"i{int(k)}" for k in rng.integers(0, 20, size=int(rng.integers(0, 4)))}  # up to 3
            raw = rp._c  # noqa: SLF001 - the reference: the stored counts, in first-counted order
            counted = list(raw)  # first-counted order, as the reference tie-break
            order = {i: k for k, i in enumerate(counted)}
            want = sorted(counted, key=lambda i: (-raw[i], order[i]))
            assert rp.top(n, exclude) == [i for i in want if i not in exclude][:n]
            first_seen.update({i: step for i in counted if i not in first_seen})
    assert len(first_seen) > 150
