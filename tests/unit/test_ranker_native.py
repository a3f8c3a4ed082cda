"""The ranker compiled to native code (recsys/candidates/native.py) scores every candidate row
exactly as LightGBM does, to the last bit, on real data: the worker's lists cannot change with it.
Values LightGBM takes for zero score as LightGBM scores them; without the compiler LightGBM
predicts."""

from __future__ import annotations

import builtins
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from recsys.candidates.ranker import Examples, Ranker, RankerConfig, fit
from recsys.candidates.training import window_examples
from recsys.data.datasets import load_events
from recsys.model.train import TrainConfig
from tests.conftest import require_dataset

# the retrain's ranker: its trees (50) on its capped examples
RCFG = replace(RankerConfig(max_examples=600, model_max_events=8000), n_estimators=50)
TCFG = TrainConfig(factors=32, iterations=5)


@pytest.fixture(scope="module", params=["yoochoose", "taobao_small", "rees46_small"])
def fitted(request: pytest.FixtureRequest) -> tuple[Examples, Ranker]:
    events = sorted(load_events(require_dataset(request.param)), key=lambda e: e.ts)[-12_000:]
    ex, _ = window_examples(events, replace(RCFG, min_examples=1), tcfg=TCFG)
    assert ex.covered >= 50, ex.covered
    return ex, fit(ex, RCFG)


def test_compiled_scores_are_lightgbms_bit_for_bit(fitted: tuple[Examples, Ranker]) -> None:
    ex, ranker = fitted
    X = np.vstack(ex.X)
    want = np.asarray(ranker.booster.predict(X, num_threads=1))
    assert ranker.compile_native()
    assert ranker.native is not None
    got = ranker.native.scores(X)
    assert got is not None and got.dtype == want.dtype
    assert np.array_equal(got, want)  # every bit: the same order, the same ties
    for Xj in ex.X:  # one list at a time, as a batch of one user is scored
        assert np.array_equal(ranker.scores(Xj), ranker.booster.predict(Xj, num_threads=1))


def test_values_lightgbm_takes_for_zero(fitted: tuple[Examples, Ranker]) -> None:
    """Tiny nonzero values (LightGBM's zero, lleaves's not) score as LightGBM scores them, on every
    row and column; NaN and exactly ±1e-35 leave the batch to LightGBM."""
    ex, ranker = fitted
    assert ranker.compile_native() and ranker.native is not None
    X = np.vstack(ex.X)[:400].copy()
    rng = np.random.default_rng(1)
    X[rng.random(X.shape) < 0.3] = rng.choice(np.array([1e-36, -3e-38, 1e-45, 9e-36], np.float32))
    got = ranker.native.scores(X)
    assert got is not None and np.array_equal(got, ranker.booster.predict(X, num_threads=1))
    for bad in (np.nan, 1e-35, -1e-35):
        Xb = np.vstack(ex.X)[:5].copy()
        Xb[0, 0] = bad
        assert ranker.native.scores(Xb) is None
        assert np.array_equal(ranker.scores(Xb), ranker.booster.predict(Xb, num_threads=1), equal_nan=True)


def test_without_the_compiler_lightgbm_predicts(fitted: tuple[Examples, Ranker], monkeypatch: Any) -> None:
    ex, ranker = fitted
    real_import = builtins.__import__

    def no_lleaves(name: str, *a: Any, **kw: Any) -> Any:
        if name == "lleaves":
            raise ImportError("lleaves not installed")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_lleaves)
    again = Ranker.from_bytes(ranker.to_bytes())
    assert not again.compile_native()
    assert again.native is None
    X = np.vstack(ex.X)[:50]
    assert np.array_equal(again.scores(X), ranker.booster.predict(X, num_threads=1))
