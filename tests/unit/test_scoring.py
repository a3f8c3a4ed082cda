import numpy as np
import pytest

from recsys.confidence import ConfidenceConfig, UserProfile
from recsys.errors import ConfigError
from recsys.model.train import TrainConfig, train
from recsys.serving.recommender import Recommender
from recsys.serving.scoring import Scorer, ScoringConfig
from tests.helpers import T0, clustered_events, ev, profiles_of, random_model


def brute_force(model, x, q, w, p, exclude, n):
    y = np.asarray(model.item_factors, np.float64)
    norms = np.linalg.norm(y, axis=1)
    xhat = x / np.linalg.norm(x)
    qhat = y[model.item_index[q]] / norms[model.item_index[q]]
    s = y @ (w * xhat + (1 - w) * qhat) / norms**p
    for i in exclude:
        s[model.item_index[i]] = -np.inf
    order = np.argsort(-s)[:n]
    return [model.item_ids[k] for k in order], s[order]


@pytest.mark.parametrize("w,p", [(0.5, 1.0), (0.9, 0.5), (0.3, 0.0)])
def test_blend_is_one_product_equal_to_the_formula(w, p):
    model = random_model(n_items=400, factors=10, seed=5)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 10)).astype(np.float32)
    queries = ["i7", "i100", "i399"]
    excludes = [{"i1", "i2"}, set(), {"i50"}]
    cfg = ScoringConfig(n=8, user_weight=w, item_norm_power=p, exclude_query=True)
    out = Scorer(model, cfg).recommend(x, [True] * 3, queries, excludes)
    for k in range(3):
        want, scores = brute_force(model, x[k], queries[k], w, p, excludes[k] | {queries[k]}, 8)
        assert out[k].items == want
        np.testing.assert_allclose(out[k].scores, scores, rtol=1e-4)
        assert out[k].source == "blend" and out[k].model_version == "v-test"


def test_filters_bought_items_and_query_item():
    cfg = ConfidenceConfig()
    profiles = profiles_of(clustered_events(), cfg)
    model, _, _ = train(profiles, cfg, TrainConfig(factors=8, iterations=10))
    rec = Recommender(model, cfg, ScoringConfig(n=10, exclude_types=("transaction",)))
    p = UserProfile()
    for k, (item, t) in enumerate([("i0", "view"), ("i3", "transaction"), ("i6", "view")]):
        p.apply(ev("x", item, t, T0 + k), cfg)
    out = rec.recommend([p], ["i9"], n=15)[0]
    assert "i3" not in out.items  # bought
    assert "i9" not in out.items  # on screen
    assert "i0" in out.items  # only viewed: shoppers come back to those
    # Explicit exclusions go through the scorer too.
    x, known = rec.fold_in([p.confidence(cfg)])
    out2 = rec.scorer.recommend(x, known, [None], [{"i0", "i6"}])[0]
    assert not {"i0", "i6"} & set(out2.items)


def test_learned_structure_recommends_from_the_right_cluster():
    cfg = ConfidenceConfig()
    profiles = profiles_of(clustered_events(), cfg)
    model, _, _ = train(profiles, cfg, TrainConfig(factors=8, iterations=15))
    rec = Recommender(model, cfg, ScoringConfig(n=5))
    p = UserProfile()
    p.apply(ev("new", "i4", "view"), cfg)  # cluster 1 = items k % 3 == 1
    out = rec.recommend([p], ["i7"])[0]
    assert out.source == "blend"
    assert all(int(i[1:]) % 3 == 1 for i in out.items)
    sim = rec.scorer.similar("i4", 5)
    assert all(int(i[1:]) % 3 == 1 for i in sim.items) and "i4" not in sim.items


def test_fallbacks_never_return_an_empty_list():
    model = random_model(n_items=50)
    s = Scorer(model, ScoringConfig(n=5))
    zero = np.zeros((4, model.factors), np.float32)
    x = zero.copy()
    x[0] = 1.0
    out = s.recommend(x, [True, False, False, False], [None, "i3", "unknown-item", None], [set()] * 4)
    assert [o.source for o in out] == ["user", "similar", "popular", "popular"]
    pop_top = [model.item_ids[k] for k in np.argsort(-model.popularity, kind="stable")[:5]]
    assert out[2].items == pop_top and out[3].items == pop_top
    assert all(len(o.items) == 5 for o in out)


def test_short_lists_are_padded_and_total_exclusion_still_answers():
    model = random_model(n_items=6, factors=4)
    s = Scorer(model, ScoringConfig(n=10))
    out = s.recommend(np.ones((1, 4), np.float32), [True], [None], [{"i0", "i1"}])[0]
    assert len(out.items) == 4 and not {"i0", "i1"} & set(out.items)
    everything = set(model.item_ids)
    out = s.recommend(np.ones((1, 4), np.float32), [True], [None], [everything])[0]
    assert len(out.items) == 6  # filters relaxed rather than showing nothing


def test_unknown_similar_item_is_none():
    assert Scorer(random_model()).similar("nope") is None


@pytest.mark.parametrize("kw", [{"n": 0}, {"user_weight": 1.5}, {"item_norm_power": -1}, {"exclude_types": ("x",)}])
def test_invalid_scoring_settings(kw):
    with pytest.raises(ConfigError):
        ScoringConfig(**kw)


# ---- per-user re-visit weight (repeat_rate_prior / repeat_rate_strength) ------------------


def _walk(items, cfg=ConfidenceConfig(), user="u"):
    p = UserProfile()
    for k, item in enumerate(items):
        p.apply(ev(user, item, "view", T0 + k * 1000), cfg)
    return p


def test_revisit_counts_are_returns_among_moves():
    from recsys.serving.scoring import revisit_counts

    cfg = ConfidenceConfig()
    assert revisit_counts(UserProfile(), cfg) == (0, 0)
    assert revisit_counts(_walk(["a", "b", "c", "d"]), cfg) == (0, 4)  # keeps moving on
    assert revisit_counts(_walk(["a", "b", "a", "c", "b"]), cfg) == (2, 5)  # came back twice
    assert revisit_counts(_walk(["a", "a", "a", "b"]), cfg) == (0, 2)  # reloads are not moves
    # Once the history has overflowed: the event counts (events - distinct items of events).
    small = ConfidenceConfig(history_len=3)
    p = _walk(["a", "b", "c", "a", "b", "d"], small)
    assert len(p.history) == 3 and revisit_counts(p, small) == (6 - 4, 6)


def test_repeat_weight_for_limits():
    from recsys.serving.scoring import OwnItems, repeat_weight_for

    off = ScoringConfig(repeat_weight=100.0)
    on = ScoringConfig(repeat_weight=100.0, repeat_rate_prior=0.2, repeat_rate_strength=0.5)
    # off, or no counts (a plain dict): everyone gets β
    assert repeat_weight_for(off, OwnItems({"a": 1.0}, 0, 50)) == 100.0
    assert repeat_weight_for(on, {"a": 1.0}) == 100.0
    assert repeat_weight_for(on, None) == 100.0
    # no moves yet: the prior, which earns the full β
    assert repeat_weight_for(on, OwnItems({}, 0, 0)) == pytest.approx(100.0)
    # returns at (or above) the prior rate: full β, never more
    assert repeat_weight_for(on, OwnItems({}, 2, 10)) == pytest.approx(100.0)
    assert repeat_weight_for(on, OwnItems({}, 9, 10)) == pytest.approx(100.0)
    # never returned: β·n0 / (moves + n0), falling toward 0 with every move
    assert repeat_weight_for(on, OwnItems({}, 0, 10)) == pytest.approx(100.0 * 0.5 / 10.5)
    assert repeat_weight_for(on, OwnItems({}, 0, 1000)) < 0.1
    # in between: proportional to the smoothed rate
    assert repeat_weight_for(on, OwnItems({}, 1, 10)) == pytest.approx(100.0 * (1 + 0.1) / 10.5 / 0.2)
    # monotone: more returns among the same moves, more weight
    ws = [repeat_weight_for(on, OwnItems({}, k, 20)) for k in range(6)]
    assert ws == sorted(ws) and ws[0] < ws[-1]


def test_a_user_who_moves_on_gets_a_smaller_revisit_boost_than_one_who_returns():
    from recsys.serving.scoring import own_item_scores

    cfg = ConfidenceConfig()
    profiles = profiles_of(clustered_events(), cfg)
    model, _, _ = train(profiles, cfg, TrainConfig(factors=8, iterations=10))
    base = dict(n=5, repeat_weight=100.0)
    adaptive = Recommender(model, cfg, ScoringConfig(**base, repeat_rate_prior=0.2, repeat_rate_strength=0.01))
    fixed = Recommender(model, cfg, ScoringConfig(**base))
    # Same last item on screen, same set of items; one came back to i0 and i3, the other never returned.
    mover = _walk(["i0", "i3", "i6", "i9", "i12", "i15", "i18"], cfg, "m")
    returner = _walk(["i0", "i3", "i0", "i6", "i3", "i9", "i12", "i15", "i18"], cfg, "r")
    q = "i18"
    own_m, own_r = own_item_scores(mover, cfg), own_item_scores(returner, cfg)
    assert (own_m.returns, own_m.moves) == (0, 7) and (own_r.returns, own_r.moves) == (2, 9)
    mine = set(mover.items) - {q}
    rm, rr = adaptive.recommend([mover, returner], [q, q])
    # the returner keeps the full boost: own items fill the top, as with a fixed β
    assert rr.items == fixed.recommend([returner], [q])[0].items
    assert set(rr.items[:5]) <= mine
    # the mover's own items get a boost of β·n0/(moves+n0) ~ 0.14 · the best blend score: the
    # model's own picks come back into the list
    fm = fixed.recommend([mover], [q])[0]
    assert set(fm.items) <= mine
    assert set(rm.items) - mine
    # and the bonus on an own item is smaller for the mover (same strength, same blend score)
    scorer = adaptive.scorer
    x, known = adaptive.fold_in([mover.confidence(cfg)])
    strong = {"i0": 1.0}
    from recsys.serving.scoring import OwnItems

    top_moving = scorer.recommend(x, known, [q], [set()], 50, own=[OwnItems(strong, 0, 20)])[0]
    top_return = scorer.recommend(x, known, [q], [set()], 50, own=[OwnItems(strong, 5, 20)])[0]
    assert top_return.items[0] == "i0"
    s_moving = top_moving.scores[top_moving.items.index("i0")]
    assert s_moving < top_return.scores[0]


@pytest.mark.parametrize(
    "kw",
    [
        {"repeat_rate_prior": 0.0},
        {"repeat_rate_prior": 1.5},
        {"repeat_rate_strength": 0.0},
        {"repeat_rate_strength": float("inf")},
        {"repeat_rate_strength": -1.0},
    ],
)
def test_invalid_repeat_rate_settings(kw):
    with pytest.raises(ConfigError):
        ScoringConfig(**kw)
