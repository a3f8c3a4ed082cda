import math

import numpy as np
import pytest

from recsys.confidence import ConfidenceConfig, UserProfile, build_profiles, profile_confidences
from recsys.errors import ConfigError
from tests.conftest import require_dataset
from tests.helpers import T0, ev

DAY = 86_400_000
# The seed notebook's weights (0.25 per view/click, 1 per purchase), which these tests' numbers use.
NOTEBOOK_WEIGHTS = {"view": 0.25, "click": 0.25, "favorite": 0.5, "addtocart": 0.75, "transaction": 1.0}


def test_notebook_weights_and_one_plus_alpha():
    cfg = ConfidenceConfig(weights=NOTEBOOK_WEIGHTS, alpha=15.0, half_life_days=None)
    p = build_profiles([ev("u", "a", "click"), ev("u", "a", "click"), ev("u", "b", "transaction")], cfg)["u"]
    conf = p.confidence(cfg)
    assert conf["a"] == pytest.approx(1 + 15 * 0.5)
    assert conf["b"] == pytest.approx(1 + 15 * 1.0)


def test_every_positive_interaction_weighs_more_than_a_missing_item():
    # implicit weighs an item by (c - 1): with c = alpha*r a single view at alpha 1 would give
    # c = 0.25 < 1, i.e. *less* than an untouched item. c = 1 + alpha*r keeps it above 1.
    cfg = ConfidenceConfig(alpha=1.0, weights={"view": 0.01, "transaction": 1.0})
    conf = build_profiles([ev("u", "a", "view")], cfg)["u"].confidence(cfg)
    assert conf["a"] > 1.0
    assert 1.0 * 0.01 < 1.0  # the naive alpha*value would have been below 1


def test_zero_weight_event_type_still_counts_as_touched_but_adds_nothing():
    cfg = ConfidenceConfig(weights={"view": 0.0, "transaction": 1.0})
    conf = build_profiles([ev("u", "a", "view")], cfg)["u"].confidence(cfg)
    assert conf == {"a": 1.0}


def test_dwell_scales_weight_with_a_cap():
    cfg = ConfidenceConfig(dwell_unit_s=30, dwell_cap=3)
    short = build_profiles([ev("u", "a", "view", dwell=30.0)], cfg)["u"].values(cfg)["a"]
    long_ = build_profiles([ev("u", "a", "view", dwell=10_000.0)], cfg)["u"].values(cfg)["a"]
    assert short == pytest.approx(0.25 * 2)
    assert long_ == pytest.approx(0.25 * 3)


def test_recency_decay_half_life_and_order_independence_of_late_events():
    cfg = ConfidenceConfig(weights=NOTEBOOK_WEIGHTS, half_life_days=1.0)
    p = build_profiles([ev("u", "a", "transaction", T0), ev("u", "b", "transaction", T0 + DAY)], cfg)["u"]
    vals = p.values(cfg)
    assert vals["a"] == pytest.approx(0.5)
    assert vals["b"] == pytest.approx(1.0)
    # A late (out-of-order) event is decayed to the item's time: same value as in order.
    in_order = build_profiles([ev("u", "a", "view", T0), ev("u", "a", "view", T0 + DAY)], cfg)["u"].values(cfg)
    late = build_profiles([ev("u", "a", "view", T0 + DAY), ev("u", "a", "view", T0)], cfg)["u"].values(cfg)
    assert late["a"] == pytest.approx(in_order["a"])


def test_bound_on_items_drops_the_weakest():
    cfg = ConfidenceConfig(weights=NOTEBOOK_WEIGHTS, half_life_days=None, max_items=3)
    events = [ev("u", "buy", "transaction", T0)] + [ev("u", f"v{k}", "view", T0 + k + 1) for k in range(5)]
    p = build_profiles(events, cfg)["u"]
    assert len(p.items) == 3
    assert "buy" in p.items  # strongest kept
    assert set(p.items) == {"buy", "v3", "v4"}  # among equal views, the newest are kept


def test_history_and_bought_items():
    cfg = ConfidenceConfig(history_len=3)
    p = build_profiles(
        [
            ev("u", x, t, T0 + k)
            for k, (x, t) in enumerate(
                [("a", "view"), ("a", "view"), ("b", "addtocart"), ("c", "transaction"), ("d", "view")]
            )
        ],
        cfg,
    )["u"]
    assert p.history == ["b", "c", "d"]
    assert p.items_with(["transaction"]) == {"c"}
    assert p.items_with(["addtocart", "transaction"]) == {"b", "c"}
    assert p.events == 5 and p.last_ts == T0 + 4


def test_stream_and_batch_agree_exactly():
    cfg = ConfidenceConfig(half_life_days=0.5, dwell_unit_s=10)
    events = [
        ev("u", f"i{k % 7}", ["view", "addtocart", "transaction"][k % 3], T0 + k * 3_600_000, dwell=float(k % 5) * 7)
        for k in range(60)
    ]
    batch = build_profiles(events, cfg)["u"]
    stream = UserProfile()
    for e in events:  # the worker's path: one event at a time
        stream.apply(e, cfg)
    assert stream == batch
    assert stream.confidence(cfg) == batch.confidence(cfg)


def test_many_profiles_confidences_in_one_pass_are_each_ones():
    cfg = ConfidenceConfig(half_life_days=0.5, dwell_unit_s=10)
    events = [ev(f"u{k % 5}", f"i{k % 11}", "view", T0 + k * 1_234_567, dwell=float(k % 4) * 9) for k in range(90)]
    profiles = [*build_profiles(events, cfg).values(), UserProfile()]
    for now in (None, T0 + 200 * DAY):
        got = profile_confidences(profiles, cfg, now)
        for p, conf in zip(profiles, got, strict=True):
            one = profile_confidences([p], cfg, now)[0]
            assert list(conf.items()) == list(one.items())  # the same floats, in the profile's order


@pytest.mark.parametrize(
    "kw,name",
    [
        ({"alpha": 0}, "alpha"),
        ({"alpha": math.nan}, "alpha"),
        ({"weights": {"bogus": 1.0}}, "weights"),
        ({"weights": {"view": -1.0}}, "weights.view"),
        ({"half_life_days": 0}, "half_life_days"),
        ({"max_items": 0}, "max_items"),
    ],
)
def test_invalid_settings_name_the_setting(kw, name):
    with pytest.raises(ConfigError, match=name):
        ConfidenceConfig(**kw)


@pytest.mark.data
def test_the_fold_in_takes_the_training_matrix_confidences_in_float64_on_real_data():
    """What the stream folds in (the confidences of `UserProfile.values`) is what a retrain's
    matrix is cast from (`ConfidenceConfig.confidences`), to the last bit of the float64: one
    decay, not a scalar `pow` beside numpy's SIMD `power` (they differ in the last bit on a few
    per cent of values on AVX-512 machines)."""
    require_dataset("taobao")
    from recsys.data.datasets import load_dataset

    cfg = ConfidenceConfig()
    profiles = list(build_profiles(sorted(load_dataset("taobao", lenient=True), key=lambda e: e.ts), cfg).values())
    values = np.array([s.value for p in profiles for s in p.items.values()])
    ages = np.array([p.last_ts - s.ts for p in profiles for s in p.items.values()], np.int64)
    assert (ages > 0).mean() > 0.5  # most values decay: the power is exercised
    want = cfg.confidences(values, ages)
    folded = np.array([c for p in profiles for c in cfg.to_confidences(p.values(cfg)).values()])
    assert folded.tobytes() == want.tobytes()
