"""recsys.ann: the approximate MIPS index and the exact over-fetch top-k, and the scorer's hook."""

import numpy as np
import pytest

from bench.common import clustered_factors
from recsys.ann import AnnConfig, MipsIndex, exact_search, recall_at_k, scaled_items
from recsys.errors import ConfigError
from recsys.model import Model
from recsys.scoring import Scorer, ScoringConfig


def brute(rows, q, k, exclude):
    s = rows @ q
    s[list(exclude)] = -np.inf
    order = np.argsort(-s, kind="stable")[:k]
    return order, s[order]


@pytest.fixture(scope="module")
def data():
    y, assign = clustered_factors(6000, 16, seed=3)
    z = scaled_items(y, 0.5)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((40, 16)).astype(np.float32)
    q = 0.7 * q / np.linalg.norm(q, axis=1, keepdims=True) + 0.3 * z[rng.integers(0, len(z), 40)]
    return y, z, q.astype(np.float32)


def test_scaled_items_divide_by_norm_power():
    y = np.array([[3.0, 4.0], [0.0, 1.0]], np.float32)
    np.testing.assert_allclose(scaled_items(y, 1.0), [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(scaled_items(y, 0.0), y)


def test_exact_search_matches_brute_force_with_exclusions(data):
    _, z, q = data
    excl = [[int(i) for i in np.argsort(-(z @ q[r]))[:3]] if r % 2 else [] for r in range(len(q))]
    ids, scores = exact_search(z, q, 10, excl, num_threads=1)
    for r in range(len(q)):
        want, ws = brute(z, q[r], 10, excl[r])
        assert list(ids[r]) == list(want)
        np.testing.assert_allclose(scores[r], ws, rtol=1e-4)
        assert not set(ids[r]) & set(excl[r])


def test_index_recall_and_exact_scores_and_exclusions(data):
    _, z, q = data
    index = MipsIndex.build(z, AnnConfig(num_threads=1))
    assert index.n_items == len(z) and 1 <= index.nprobe <= index.nlist
    excl = [[int(np.argmax(z @ q[r]))] for r in range(len(q))]
    ids, scores = index.search(q, 10, excl)
    exact_ids, _ = exact_search(z, q, 10, excl, num_threads=1)
    assert recall_at_k(ids, exact_ids, 10) >= 0.9
    for r in range(len(q)):
        assert excl[r][0] not in ids[r]
        ok = ids[r] >= 0
        np.testing.assert_allclose(scores[r][ok], z[ids[r][ok]] @ q[r], rtol=1e-4)   # exact scores
        assert np.all(np.diff(scores[r][ok]) <= 1e-6)                                 # best first


def test_index_pads_when_k_exceeds_what_is_left():
    z = scaled_items(np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32), 0.5)
    index = MipsIndex.build(z, AnnConfig(num_threads=1))
    ids, scores = index.search(z[:1], 5, [[0, 1]])
    assert sorted(int(i) for i in ids[0] if i >= 0) == [2, 3, 4]
    assert list(ids[0][3:]) == [-1, -1] and np.all(np.isneginf(scores[0][3:]))


def test_recall_at_k():
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[1, 2, 4]]), 3) == pytest.approx(2 / 3)
    assert recall_at_k(np.array([[-1, -1]]), np.array([[-1, -1]]), 2) == 1.0


def test_scorer_uses_index_only_above_the_threshold(data):
    y, _, _ = data
    ids = [f"i{k}" for k in range(len(y))]
    model = Model.from_factors("v1", ids, y, 0.05, popularity=np.arange(len(y), dtype=np.float32))
    assert Scorer(model, ScoringConfig()).ann is None                # default: small catalogues stay exact
    exact = Scorer(model, ScoringConfig(ann_min_items=0))
    approx = Scorer(model, ScoringConfig(ann_min_items=1000, num_threads=1))
    assert approx.ann is not None and exact.ann is None
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 16)).astype(np.float32)
    queries = [ids[i] for i in rng.integers(0, len(ids), 30)]
    excludes = [{ids[i] for i in rng.integers(0, len(ids), 3)} for _ in range(30)]
    a = approx.recommend(x, [True] * 30, queries, excludes)
    e = exact.recommend(x, [True] * 30, queries, excludes)
    hits = sum(len(set(r.items) & set(s.items)) for r, s in zip(a, e))
    assert hits / sum(len(s.items) for s in e) >= 0.9
    for r, q, ex in zip(a, queries, excludes):
        assert len(r.items) == 10 and q not in r.items and not set(r.items) & ex
        assert r.model_version == "v1" and r.source == "blend"


def test_config_validation():
    with pytest.raises(ConfigError):
        ScoringConfig(ann_min_items=-1)
    with pytest.raises(ConfigError):
        AnnConfig(nprobe=-1)
