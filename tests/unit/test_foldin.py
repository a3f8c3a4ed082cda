import numpy as np

from recsys.confidence import ConfidenceConfig
from recsys.model.foldin import FoldIn
from recsys.model.train import TrainConfig, train
from tests.helpers import clustered_events, profiles_of, random_model


def direct_solve(model, conf: dict[str, float]) -> np.ndarray:
    """(YᵀY + Yᵀ(Cᵤ−I)Y + λI) xᵤ = YᵀCᵤp(u), written out with numpy."""
    y = np.asarray(model.item_factors, np.float64)
    a = y.T @ y + model.regularization * np.eye(model.factors)
    b = np.zeros(model.factors)
    for item, c in conf.items():
        if item in model.item_index:
            yi = y[model.item_index[item]]
            a += (c - 1.0) * np.outer(yi, yi)
            b += c * yi
    return np.linalg.solve(a, b)


def test_batched_fold_in_matches_the_normal_equations():
    model = random_model(n_items=200, factors=12)
    rng = np.random.default_rng(3)
    confs = [
        {f"i{k}": float(1 + 15 * rng.random()) for k in rng.choice(200, size=int(rng.integers(1, 30)), replace=False)}
        for _ in range(25)
    ]
    confs[4]["not-in-model"] = 50.0  # unknown items are ignored
    x, known = FoldIn(model)(confs)
    assert known.all()
    for k, conf in enumerate(confs):
        np.testing.assert_allclose(x[k], direct_solve(model, conf), rtol=2e-3, atol=2e-4)


def test_user_with_no_known_item_gets_zeros():
    model = random_model()
    x, known = FoldIn(model)([{"unknown": 5.0}, {}, {"i1": 4.0}])
    assert known.tolist() == [False, False, True]
    assert not x[0].any() and not x[1].any() and x[2].any()


def test_fold_in_reproduces_trained_user_factors():
    cfg = ConfidenceConfig()
    profiles = profiles_of(clustered_events(), cfg)
    model, user_factors, users = train(profiles, cfg, TrainConfig(factors=8, iterations=10, regularization=0.1))
    x, _ = FoldIn(model)([profiles[u].confidence(cfg) for u in users])
    cos = np.sum(x * user_factors, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(user_factors, axis=1))
    assert np.median(cos) > 0.98  # the last ALS user step is the same least squares


def test_empty_batch():
    x, known = FoldIn(random_model())([])
    assert x.shape == (0, 16) and known.shape == (0,)
