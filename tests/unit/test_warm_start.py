"""Warm start (recsys.model.train.fit with init): the serving model's item factors, matched by id,
are where ALS starts; it stops once converged; the held-out score is a cold start's."""

from dataclasses import replace

import numpy as np

from recsys.config import Config, Settings
from recsys.evaluation.offline import evaluate_model
from recsys.model.train import TrainConfig, fit, warm_start_factors
from streaming.jobs.retrain import data_from_profiles
from tests.helpers import clustered_events, profiles_of

CFG = Config()
TRAIN = TrainConfig(factors=8, iterations=15)


def data(seed: int):
    return data_from_profiles(profiles_of(clustered_events(n_users=600, seed=seed)), CFG.confidence, Settings())


def test_items_matched_by_id_and_new_items_start_small():
    d = data(1)
    serving, _ = fit(d, CFG.confidence, TRAIN)
    items = ["brand-new", *reversed(d.items)]
    y, matched = warm_start_factors(items, serving, TRAIN)
    assert matched == len(d.items)
    assert np.array_equal(y[1:], np.asarray(serving.item_factors)[::-1])
    assert y[0].min() >= 0 and y[0].max() < 0.01  # as implicit starts every item


def test_warm_start_converges_in_fewer_iterations_to_the_same_held_out_score():
    old, new = data(1), data(2)
    serving, _ = fit(old, CFG.confidence, TRAIN)
    cold, _ = fit(new, CFG.confidence, TRAIN)
    warm, gram = fit(new, CFG.confidence, TRAIN, init=serving)
    stats = warm.metadata["fit"]
    assert stats["warm_start_from"] == serving.version and stats["items_matched"] == len(new.items)
    assert TRAIN.min_iterations <= stats["iterations"] < TRAIN.iterations
    assert stats["changes"][-1] < TRAIN.converge_tol <= stats["changes"][-2]
    assert gram.shape == (8, 8)
    cold_map = evaluate_model(cold, new.cases, CFG.confidence, CFG.scoring)["MAP@10"]
    warm_map = evaluate_model(warm, new.cases, CFG.confidence, CFG.scoring)["MAP@10"]
    assert warm_map >= cold_map * 0.95 and cold_map > 0.05


def test_a_serving_model_of_another_shape_means_a_cold_start_that_says_why():
    d = data(1)
    serving, _ = fit(d, CFG.confidence, TRAIN)
    model, _ = fit(d, CFG.confidence, replace(TRAIN, factors=6), init=serving)
    assert "warm_start_from" not in model.metadata["fit"]
    assert "8 factors" in model.metadata["fit"]["cold_start"]
    assert model.metadata["fit"]["iterations"] == TRAIN.iterations
