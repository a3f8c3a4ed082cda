import numpy as np
import pytest

from recsys.confidence import ConfidenceConfig, UserProfile
from recsys.errors import ConfigError
from recsys.recommender import Recommender
from recsys.scoring import Scorer, ScoringConfig
from recsys.train import TrainConfig, train
from tests.helpers import T0, clustered_events, ev, profiles_of, random_model


def brute_force(model, x, q, w, p, exclude, n):
    y = np.asarray(model.item_factors, np.float64)
    norms = np.linalg.norm(y, axis=1)
    xhat = x / np.linalg.norm(x)
    qhat = y[model.item_index[q]] / norms[model.item_index[q]]
    s = y @ (w * xhat + (1 - w) * qhat) / norms ** p
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
    assert "i0" in out.items      # only viewed: shoppers come back to those
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
