"""The retrain's LightGBM fit takes more threads once the ALS fit is done
(streaming/jobs/retrain.py `RankerJob`). The thread count must not change the stored ranker: the
same examples give the same file, byte for byte (so the same checksum), with one thread (row-wise
histograms, the faster on one thread) or two (col-wise: row-wise would add the threads' partial
histograms in another order), and the same trees as the fit before the histogram layout was
forced (LightGBM chose between col-wise and row-wise by timing both)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import lightgbm as lgb
import pytest

from recsys.candidates.ranker import Examples, RankerConfig, fit
from recsys.candidates.training import window_examples
from recsys.data.datasets import load_events
from recsys.model.train import TrainConfig
from tests.conftest import require_dataset

RCFG = RankerConfig(max_examples=600, model_max_events=8000, n_estimators=20)
TCFG = TrainConfig(factors=32, iterations=5)


def trees(data: bytes) -> bytes:
    return data.split(b"\nparameters:")[0]


@pytest.fixture(scope="module", params=["taobao_small", "yoochoose"])
def examples(request: pytest.FixtureRequest) -> Examples:
    events = sorted(load_events(require_dataset(request.param)), key=lambda e: e.ts)[-12_000:]
    ex, _ = window_examples(events, RCFG, tcfg=TCFG)
    assert ex.covered >= 100, ex.covered
    return ex


def test_the_ranker_file_is_the_same_whatever_the_thread_count(examples: Examples) -> None:
    one = fit(examples, RCFG, num_threads=1).to_bytes()
    assert fit(examples, RCFG, num_threads=2).to_bytes() == one
    assert fit(examples, replace(RCFG, seed=1), num_threads=2).to_bytes() != one  # the check can fail


def test_the_trees_are_the_ones_lightgbm_chose_before(examples: Examples, monkeypatch: pytest.MonkeyPatch) -> None:
    now = fit(examples, RCFG).to_bytes()
    train = lgb.train

    def former(params: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return train({k: v for k, v in params.items() if not k.startswith("force_")}, *args, **kwargs)

    monkeypatch.setattr(lgb, "train", former)
    before = fit(examples, RCFG).to_bytes()
    assert b"[force_row_wise: 0]" in before and b"[force_row_wise: 1]" in now
    assert trees(before) == trees(now)
