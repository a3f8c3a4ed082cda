"""The cold fit draws implicit's own initial factors (in place, to save memory): same model."""

import numpy as np
import scipy.sparse as sp

from recsys.model.train import TrainConfig, fit_factors


def test_cold_fit_is_implicits_own_fit_bit_for_bit():
    from implicit.als import AlternatingLeastSquares

    m = sp.random(2000, 300, density=0.03, format="csr", dtype=np.float32, random_state=1)
    m.data = m.data * 5 + 1
    cfg = TrainConfig(factors=16, iterations=3, num_threads=1)
    users, items = fit_factors(m, cfg)
    als = AlternatingLeastSquares(
        factors=16,
        regularization=cfg.regularization,
        alpha=1.0,
        iterations=3,
        dtype=np.float32,
        num_threads=1,
        random_state=cfg.random_state,
    )
    als.fit(m, show_progress=False)
    assert np.array_equal(users, als.user_factors)
    assert np.array_equal(items, als.item_factors)
