"""recsys.serving.ann: the approximate MIPS index and the exact over-fetch top-k, and the scorer's hook."""

import numpy as np
import pytest

from bench.common import clustered_factors
from recsys.errors import ConfigError
from recsys.model.factors import Model
from recsys.serving.ann import AnnConfig, MipsIndex, exact_search, recall_at_k, scaled_items
from recsys.serving.scoring import Scorer, ScoringConfig


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
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    # shaped like the scorer's blend w·x̂ + (1−w)·ŷ_q, with a user that points like some item
    q = 0.9 * u[rng.integers(0, len(z), 40)] + 0.1 * u[rng.integers(0, len(z), 40)]
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
        np.testing.assert_allclose(scores[r][ok], z[ids[r][ok]] @ q[r], rtol=1e-4)  # exact scores
        assert np.all(np.diff(scores[r][ok]) <= 1e-6)  # best first


def test_nprobe_is_tuned_for_the_target_recall(data):
    _, z, q = data
    low = MipsIndex.build(z, AnnConfig(num_threads=1, target_recall=0.8))
    high = MipsIndex.build(z, AnnConfig(num_threads=1, target_recall=0.99))
    assert low.tuned_recall >= 0.8 and high.tuned_recall >= 0.99
    assert 1 <= low.nprobe < high.nprobe <= high.nlist
    exact_ids, _ = exact_search(z, q, 10, None, num_threads=1)
    assert recall_at_k(high.search(q, 10)[0], exact_ids) >= recall_at_k(low.search(q, 10)[0], exact_ids)
    fixed = MipsIndex.build(z, AnnConfig(num_threads=1, nprobe=7))
    assert fixed.nprobe == 7 and fixed.tuned_recall is None


def test_probing_every_list_is_exact_for_any_query(data):
    """The tuning assumes users point like items; queries in random directions need more lists
    (an explicit nprobe), up to all of them, which is exact."""
    _, z, _ = data
    rng = np.random.default_rng(2)
    g = rng.standard_normal((40, z.shape[1])).astype(np.float32)
    exact_ids, _ = exact_search(z, g, 10, None, num_threads=1)
    index = MipsIndex.build(z, AnnConfig(num_threads=1))
    index.nprobe = index.nlist  # every list: exact
    assert recall_at_k(index.search(g, 10)[0], exact_ids) == 1.0


def test_exclusion_mask_matches_per_row_isin():
    from recsys.serving.ann import _excluded_mask

    rng = np.random.default_rng(4)
    cand = rng.integers(-1, 50, (30, 12))
    ex = [list(rng.integers(0, 50, rng.integers(0, 6))) for _ in range(30)]
    want = np.array([np.isin(c, e) & (c >= 0) for c, e in zip(cand, ex, strict=True)])
    np.testing.assert_array_equal(_excluded_mask(cand, ex), want)


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
    assert Scorer(model, ScoringConfig()).ann is None  # default: small catalogues stay exact
    exact = Scorer(model, ScoringConfig(ann_min_items=0))
    approx = Scorer(model, ScoringConfig(ann_min_items=1000, num_threads=1))
    assert approx.ann is not None and exact.ann is None
    rng = np.random.default_rng(5)
    x = y[rng.integers(0, len(y), 30)] + 0.1 * rng.standard_normal((30, 16)).astype(np.float32)  # users like items
    queries = [ids[i] for i in rng.integers(0, len(ids), 30)]
    excludes = [{ids[i] for i in rng.integers(0, len(ids), 3)} for _ in range(30)]
    a = approx.recommend(x, [True] * 30, queries, excludes)
    e = exact.recommend(x, [True] * 30, queries, excludes)
    hits = sum(len(set(r.items) & set(s.items)) for r, s in zip(a, e, strict=True))
    assert hits / sum(len(s.items) for s in e) >= 0.9
    for r, q, ex in zip(a, queries, excludes, strict=True):
        assert len(r.items) == 10 and q not in r.items and not set(r.items) & ex
        assert r.model_version == "v1" and r.source == "blend"


def test_unstructured_factors_are_scored_exactly_not_through_a_wide_index():
    """Factors without cluster structure need most lists for the target recall: the index would
    cost more than the exact product, so the scorer keeps exact top-k (and says why), and the
    index is built only when forced (ann_max_scan 1)."""
    from recsys.serving.ann import ScanTooWide

    rng = np.random.default_rng(7)
    y = rng.standard_normal((6000, 16)).astype(np.float32)
    with pytest.raises(ScanTooWide):
        MipsIndex.build(scaled_items(y, 0.5), AnnConfig(num_threads=1, max_scan=0.05))
    ids = [f"i{k}" for k in range(len(y))]
    model = Model.from_factors("v1", ids, y, 0.05, popularity=np.arange(len(y), dtype=np.float32))
    skipped = Scorer(model, ScoringConfig(ann_min_items=1000, num_threads=1))
    assert skipped.ann is None and "lists per query" in (skipped.ann_skipped or "")
    exact = Scorer(model, ScoringConfig(ann_min_items=0))
    x = rng.standard_normal((20, 16)).astype(np.float32)
    args = ([True] * 20, [None] * 20, [set()] * 20)
    assert [r.items for r in skipped.recommend(x, *args)] == [r.items for r in exact.recommend(x, *args)]
    forced = Scorer(model, ScoringConfig(ann_min_items=1000, num_threads=1, ann_max_scan=1.0))
    assert forced.ann is not None and forced.ann.nprobe > 0.05 * forced.ann.nlist


def test_config_validation():
    with pytest.raises(ConfigError):
        ScoringConfig(ann_min_items=-1)
    with pytest.raises(ConfigError):
        ScoringConfig(ann_max_scan=0.0)
    with pytest.raises(ConfigError):
        AnnConfig(max_scan=1.5)
    with pytest.raises(ConfigError):
        AnnConfig(nprobe=-1)
    with pytest.raises(ConfigError):
        AnnConfig(target_recall=0.0)


def test_index_added_in_chunks_answers_as_one_add(data, monkeypatch):
    """The build augments and adds the rows a chunk at a time (so no whole augmented copy is held
    beside faiss's own): the lists, the tuned nprobe and every answer are those of one add."""
    from recsys.serving import ann

    _, z, q = data
    cfg = AnnConfig(num_threads=1)
    whole = MipsIndex.build(z, cfg)  # 6,000 rows: one chunk
    monkeypatch.setattr(ann, "ADD_CHUNK", 700)
    chunked = MipsIndex.build(z, cfg)
    assert (chunked.nlist, chunked.nprobe, chunked.tuned_recall) == (whole.nlist, whole.nprobe, whole.tuned_recall)
    excl = [[r, r + 1] for r in range(len(q))]
    for a, b in zip(whole.search(q, 10, excl), chunked.search(q, 10, excl), strict=True):
        np.testing.assert_array_equal(a, b)
