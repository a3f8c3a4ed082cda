"""Item-side fold-in: new items get factors from the users who touched them."""

import numpy as np
import scipy.sparse as sp

from recsys.confidence import ConfidenceConfig, UserProfile
from recsys.model.item_foldin import ItemFoldIn, extend_model, fold_in_items, user_gram
from recsys.model.train import TrainConfig, train
from recsys.serving.recommender import Recommender
from recsys.serving.scoring import ScoringConfig
from tests.helpers import T0, clustered_events, ev, profiles_of

CFG = ConfidenceConfig()


def trained(seed=1):
    profiles = profiles_of(clustered_events(seed=seed), CFG)
    model, x, users = train(profiles, CFG, TrainConfig(factors=8, iterations=15, random_state=seed))
    return profiles, model, x, users


def test_equals_implicits_recalculate_item():
    from implicit.als import AlternatingLeastSquares

    profiles, model, x, users = trained()
    item = "i4"
    rows = [k for k, u in enumerate(users) if item in profiles[u].items]
    conf = np.array([profiles[users[k]].confidence(CFG)[item] for k in rows], np.float32)
    ours = fold_in_items([x[rows]], [conf], user_gram(x), model.regularization)[0]

    als = AlternatingLeastSquares(
        factors=model.factors, regularization=model.regularization, alpha=1.0, dtype=np.float32
    )
    als.user_factors, als.item_factors = x, np.asarray(model.item_factors)
    item_users = sp.csr_matrix((conf, (np.zeros(len(rows), int), rows)), shape=(1, len(users)))
    theirs = als.recalculate_item(0, item_users)
    np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=2e-4)
    # ... and it lands close to the trained row of that item
    trained_row = np.asarray(model.item_factors)[model.item_index[item]]
    cos = ours @ trained_row / np.linalg.norm(ours) / np.linalg.norm(trained_row)
    assert cos > 0.9


def test_new_item_from_one_cluster_lands_in_that_cluster_and_can_be_recommended_and_queried():
    profiles, model, x, users = trained()
    cluster1 = [k for k, u in enumerate(users) if int(u[1:]) % 3 == 1][:20]
    folder = ItemFoldIn(model, user_gram(x))
    touched = {
        "brand-new": {users[k]: CFG.to_confidence(0.25) for k in cluster1},
        "i4": {users[0]: 5.0},
    }  # known: left alone
    ext = folder.extend(touched, {users[k]: x[k] for k in range(len(users))})
    assert ext.n_items == model.n_items + 1 and ext.item_ids[-1] == "brand-new"
    np.testing.assert_array_equal(np.asarray(ext.item_factors)[:-1], np.asarray(model.item_factors))
    assert ext.version == model.version and ext.metadata["folded_in_items"] == 1

    rec = Recommender(ext, CFG, ScoringConfig(n=5, item_norm_power=1.0))  # cosines: where it lands
    sim = rec.scorer.similar("brand-new", 5)  # usable as a query item
    assert all(int(i[1:]) % 3 == 1 for i in sim.items)
    p = UserProfile()
    for k, item in enumerate(["i1", "i7", "i10"]):  # a cluster-1 shopper
        p.apply(ev("s", item, "view", T0 + k), CFG)
    out = rec.recommend([p], ["i13"], n=ext.n_items)[0]
    rank = out.items.index("brand-new")
    ranks_other = [out.items.index(i) for i in out.items if i != "brand-new" and int(i[1:]) % 3 != 1]
    assert rank < min(ranks_other)  # recommended with its cluster
    q = rec.recommend([UserProfile()], ["brand-new"])[0]
    assert q.source == "similar" and all(int(i[1:]) % 3 == 1 for i in q.items)


def test_items_without_users_and_extend_skips_known():
    profiles, model, x, users = trained()
    y = fold_in_items([np.zeros((0, model.factors))], [np.zeros(0)], user_gram(x), model.regularization)
    assert y.shape == (1, model.factors) and not y.any()
    same = extend_model(model, ["i1"], np.ones((1, model.factors)))
    assert same.n_items == model.n_items
    assert ItemFoldIn(model, user_gram(x), min_users=2).extend({"new": {users[0]: 2.0}}, {users[0]: x[0]}) is model


def test_user_gram_in_blocks_equals_the_whole_product():
    x = np.random.default_rng(3).random((150_000, 16), dtype=np.float32)  # more rows than a block
    whole = x.astype(np.float64).T @ x.astype(np.float64)
    np.testing.assert_allclose(user_gram(x), whole, rtol=1e-12)
