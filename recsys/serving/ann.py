"""Approximate maximum-inner-product search (MIPS) over a model's items, for large catalogues.

The scorer ranks items by  yᵢ·q / ‖yᵢ‖^p  (recsys/serving/scoring.py), i.e. by the inner product of
the query q with the *scaled* rows zᵢ = yᵢ/‖yᵢ‖^p. This index is built once per model version
over those rows and queried with the folded-in, blended query vectors themselves (implicit's
own ANN wrappers cannot recalculate users, so they are no use for fold-in).

Method: faiss-cpu's inverted file (IVF-Flat) after the classic MIPS -> nearest-neighbour
reduction (Bachrach et al. 2014): every row gets one extra coordinate √(M² − ‖zᵢ‖²), M the
largest row norm, and the query a 0. Then

    ‖ẑᵢ − q̂‖² = M² + ‖q‖² − 2 zᵢ·q

so the L2-nearest augmented rows are exactly the largest inner products: k-means partitions
the catalogue well (an inner-product IVF does not: big-norm centroids swallow the queries),
and each probed list is scanned exactly. Scores returned are the exact zᵢ·q of the found items
(recomputed), so they are comparable with the exact path's.

Lists: 4·√n, k-means on a subsample of 16 rows per list (training cost linear in n). nprobe is
chosen per catalogue at build time, not as a fixed fraction: the fewest lists that give
recall@10 >= target_recall (0.97) against exact on pseudo-queries (unit vectors of random rows,
i.e. users that point like items; queries in random directions need more lists).

Exclusions (bought items, the query item) are applied by over-fetching k + (that row's
exclusions) and dropping them; a row still short of k after that is topped up by the caller
(the scorer pads with popular items, as it does on the exact path).

    index = MipsIndex.build(scaled_rows, AnnConfig())
    ids, scores = index.search(queries, k, exclude_rows=[[3, 17], [], ...])   # -1 / -inf pad

Recall@10 against exact and the speed-up are measured by `python -m bench.compute` (see
BENCHMARKS.md); `recall_at_k` here is the measure.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recsys.errors import ConfigError

__all__ = ["AnnConfig", "MipsIndex", "ScanTooWide", "scaled_items", "exact_search", "recall_at_k"]


class ScanTooWide(Exception):
    """The tuned index would scan more of the catalogue per query than `AnnConfig.max_scan`."""

    def __init__(self, nprobe: int, nlist: int):
        super().__init__(
            f"the approximate index needs {nprobe} of its {nlist} lists per query ({nprobe / nlist:.0%} of the "
            "catalogue) for its target recall: the item factors have little cluster structure"
        )
        self.nprobe, self.nlist = nprobe, nlist


@dataclass(frozen=True)
class AnnConfig:
    nlist: int = 0  # inverted lists (k-means cells); 0: 4·√n
    nprobe: int = 0  # lists scanned per query; 0: tuned at build time for target_recall
    target_recall: float = 0.97  # recall@tune_k the tuned nprobe reaches on the build's pseudo-queries
    tune_queries: int = 256  # pseudo-queries for that tuning (an exact search of each at build)
    tune_k: int = 10
    train_per_list: int = 16  # k-means training sample: this many rows per list
    niter: int = 10  # k-means iterations
    extra_fetch: int = 8  # fetched beyond k + a row's exclusions
    num_threads: int = 0  # faiss OpenMP threads; 0: all cores
    seed: int = 1234
    max_scan: float = 1.0  # share of the lists a tuned query may scan; more: build raises ScanTooWide

    def __post_init__(self) -> None:
        if self.nlist < 0 or self.nprobe < 0 or self.train_per_list < 1 or self.niter < 1 or self.extra_fetch < 0:
            raise ConfigError("ann: nlist, nprobe, extra_fetch must be >= 0; train_per_list, niter >= 1")
        if not 0.0 < self.max_scan <= 1.0:
            raise ConfigError("ann: max_scan must be in (0, 1]")
        if not 0.0 < self.target_recall <= 1.0 or self.tune_queries < 1 or self.tune_k < 1:
            raise ConfigError("ann: target_recall must be in (0, 1]; tune_queries, tune_k >= 1")


def scaled_items(item_factors: np.ndarray, item_norm_power: float) -> np.ndarray:
    """zᵢ = yᵢ/‖yᵢ‖^p as float32, the rows the scorer's inner product ranks."""
    y = np.asarray(item_factors, np.float32)
    norms = np.maximum(np.linalg.norm(y, axis=1), 1e-10).astype(np.float32)
    return np.ascontiguousarray(y / (norms ** np.float32(item_norm_power))[:, None])


class MipsIndex:
    """An IVF-Flat index answering top-k by inner product with the rows it was built on.

    `tuned_recall`: the recall@tune_k the build measured at the chosen nprobe on its
    pseudo-queries (None when nprobe was given)."""

    def __init__(
        self,
        index,
        rows: np.ndarray,
        max_norm: float,
        cfg: AnnConfig,
        build_seconds: float,
        tuned_recall: float | None = None,
    ):
        self._index, self.rows, self.max_norm, self.cfg = index, rows, max_norm, cfg
        self.build_seconds, self.tuned_recall = build_seconds, tuned_recall

    @property
    def n_items(self) -> int:
        return int(self.rows.shape[0])

    @property
    def nlist(self) -> int:
        return int(self._index.nlist)

    @property
    def nprobe(self) -> int:
        return int(self._index.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._index.nprobe = int(max(1, min(value, self.nlist)))

    @classmethod
    def build(cls, rows: np.ndarray, cfg: AnnConfig = AnnConfig()) -> MipsIndex:
        """Index `rows` (n, f) for inner-product search and tune nprobe. At 2M rows on one
        thread: ~1 min for 64 factors, ~2.5 min for 128 (k-means and assigning rows to lists)."""
        faiss = _faiss()

        t0 = time.perf_counter()
        rows = np.ascontiguousarray(rows, np.float32)
        n = rows.shape[0]
        if n == 0:
            raise ConfigError("ann: cannot index an empty catalogue")
        _threads(faiss, cfg.num_threads)
        aug = _Augmented(rows)
        nlist = cfg.nlist or max(1, min(int(4 * math.sqrt(n)), n // 8 or 1))
        index = _train_ivf(faiss, aug, nlist, cfg)
        tuned = None
        if cfg.nprobe:
            index.nprobe = min(nlist, cfg.nprobe)
        else:  # the tuning needs only the trained centroids: an index not worth it is never filled
            index.nprobe, tuned = _tune_nprobe(index.quantizer, rows, aug, cfg)
            if index.nprobe > cfg.max_scan * nlist:
                raise ScanTooWide(index.nprobe, nlist)
        # augmented a chunk at a time: faiss keeps its own copy, a whole one here would be a
        # second (2 GB at 4M items x 128). 65,536 is faiss's own add batch, so the lists are
        # the same as from one add.
        for a in range(0, n, ADD_CHUNK):
            index.add(aug.rows(np.arange(a, min(n, a + ADD_CHUNK))))
        return cls(index, rows, aug.max_norm, cfg, time.perf_counter() - t0, tuned)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude_rows: Sequence[Sequence[int]] | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by inner product for each query, minus that query's exclude_rows and the
        rows `allowed` (bool per row, for every query: the catalogue's mask) rules out.

        Returns (ids int64 (q, k), scores float32 (q, k)), best first; slots that could not be
        filled hold id -1 and score -inf."""
        faiss = _faiss()

        q = np.ascontiguousarray(queries, np.float32)
        nq = q.shape[0]
        k = int(min(k, self.n_items))
        ids_out = np.full((nq, k), -1, np.int64)
        sc_out = np.full((nq, k), -np.inf, np.float32)
        if nq == 0 or k == 0:
            return ids_out, sc_out
        _threads(faiss, self.cfg.num_threads)
        n_ex = max((len(e) for e in exclude_rows), default=0) if exclude_rows is not None else 0
        fetch = k + n_ex + (self.cfg.extra_fetch if n_ex or allowed is not None else 0)
        if allowed is not None:  # over-fetch in proportion to what the mask rules out
            fetch = math.ceil(fetch / max(float(np.count_nonzero(allowed)) / max(len(allowed), 1), 0.01))
        fetch = int(min(self.n_items, fetch))
        _, cand = self._index.search(_query_side(q), fetch)
        # exact scores of the candidates (the L2 order is the inner-product order; recomputing
        # gives the same numbers as the exact path and ignores the -1 fillers)
        safe = np.where(cand >= 0, cand, 0)
        scores = np.einsum("qkf,qf->qk", self.rows[safe], q)
        if allowed is not None:
            scores[~allowed[safe]] = -np.inf
        ids, sc = _drop_excluded(cand, scores, exclude_rows if n_ex else None, k)
        ids_out[:, : ids.shape[1]], sc_out[:, : sc.shape[1]] = ids, sc
        return ids_out, sc_out


ADD_CHUNK = 65_536


class _Augmented:
    """Rows plus the coordinate √(M² − ‖zᵢ‖²), made for the rows asked for: every augmented row
    has norm M."""

    def __init__(self, rows: np.ndarray):
        self._rows = rows
        self._norms2 = np.einsum("ij,ij->i", rows, rows)
        self._max2 = float(self._norms2.max())
        self.max_norm = math.sqrt(self._max2)
        self.n, self.dim = rows.shape[0], rows.shape[1] + 1

    def rows(self, which: np.ndarray) -> np.ndarray:
        f = self.dim - 1
        out = np.empty((len(which), self.dim), np.float32)
        out[:, :f] = self._rows[which]
        out[:, f] = np.sqrt(np.maximum(self._max2 - self._norms2[which], 0.0))
        return out


def _query_side(q: np.ndarray) -> np.ndarray:
    """Queries with the extra coordinate 0, scaled to unit norm: the ranking within a query does
    not depend on its norm, but which lists are probed does, so every query (and the build's
    pseudo-queries) gets the same one."""
    nq, f = q.shape
    qa = np.zeros((nq, f + 1), np.float32)
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    np.divide(q, norms, out=qa[:, :f], where=norms > 0)
    return qa


def _train_ivf(faiss, aug: _Augmented, nlist: int, cfg: AnnConfig):
    """IVF-Flat (L2) with k-means trained on at most train_per_list sampled rows per list:
    training cost stays proportional to n, not n·nlist."""
    n, d = aug.n, aug.dim
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist, faiss.METRIC_L2)
    index.cp.niter = cfg.niter
    index.cp.seed = cfg.seed
    index.cp.max_points_per_centroid = cfg.train_per_list
    index.cp.min_points_per_centroid = 1
    n_train = nlist * cfg.train_per_list
    rng = np.random.default_rng(cfg.seed)
    index.train(aug.rows(np.arange(n) if n <= n_train else np.sort(rng.choice(n, n_train, replace=False))))
    return index


def _tune_nprobe(quantizer, rows: np.ndarray, aug: _Augmented, cfg: AnnConfig) -> tuple[int, float]:
    """The fewest lists to probe for recall@tune_k >= target_recall on pseudo-queries, and the
    recall it gives. Pseudo-queries are unit vectors of random rows with that row excluded (like
    the query item on screen); on the bench's blended user queries they are the harder set.
    IVF-Flat scans its lists exactly, so a true neighbour is found iff its list is among the
    probed ones: one ranking of all lists per query gives the recall at every nprobe."""
    n, nlist = rows.shape[0], quantizer.ntotal
    k = min(cfg.tune_k, n - 1)
    if k < 1:
        return nlist, 1.0
    pick = np.random.default_rng(cfg.seed + 1).choice(n, min(cfg.tune_queries, n), replace=False)
    pq = rows[pick] / np.maximum(np.linalg.norm(rows[pick], axis=1, keepdims=True), 1e-10)
    true_ids, _ = exact_search(rows, pq, k, [[int(i)] for i in pick], cfg.num_threads)
    qi, slot = np.nonzero(true_ids >= 0)
    home = quantizer.assign(aug.rows(true_ids[qi, slot]), 1).ravel()  # the list each neighbour is in
    _, order = quantizer.search(_query_side(pq), nlist)  # each query's lists, nearest first
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(nlist), order.shape), axis=1)
    need = np.sort(rank[qi, home] + 1)  # probes that reach each neighbour
    if len(need) == 0:
        return nlist, 1.0
    nprobe = int(need[max(0, math.ceil(cfg.target_recall * len(need)) - 1)])
    return nprobe, float(np.mean(need <= nprobe))


_blas_limits = None


def _faiss():
    """faiss, with the BLAS it brings pinned to one thread like the rest (recsys.model.threads): it
    parallelises with OpenMP itself, and implicit warns about any threaded BLAS in the process."""
    global _blas_limits
    import faiss

    if _blas_limits is None:
        from threadpoolctl import threadpool_limits

        _blas_limits = threadpool_limits(1, "blas")
    return faiss


def _threads(faiss, n: int) -> None:
    faiss.omp_set_num_threads(n if n > 0 else (os.cpu_count() or 1))


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int = 10) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / |exact top-k| (ignoring -1 slots)."""
    hits, total = 0, 0
    for a, e in zip(approx_ids, exact_ids, strict=True):
        e = [x for x in e[:k] if x >= 0]
        if not e:
            continue
        hits += len(set(int(x) for x in a[:k] if x >= 0) & set(int(x) for x in e))
        total += len(e)
    return hits / total if total else 1.0


def exact_search(
    rows: np.ndarray,
    queries: np.ndarray,
    k: int,
    exclude_rows: Sequence[Sequence[int]] | None = None,
    num_threads: int = 0,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product with pre-scaled rows (one product + implicit's top-k), with
    exclusions applied by over-fetching k + (most exclusions of any row) and dropping them:
    no per-row sparse filter, whose row slicing costs more than the product at 50k items.
    `allowed` (bool per row, all queries: the catalogue's mask): what it rules out is dropped
    the same way, from a fetch scaled by the share it keeps (fetched again, wider, for the rows
    it leaves short); a mask keeping under a quarter of the rows (a category filter) scores only
    the kept rows. (implicit's own filter_items took ~20 ms a query at 20k items.)
    Same return convention as MipsIndex.search."""
    from implicit.cpu.topk import topk

    q = np.ascontiguousarray(queries, np.float32)
    n = int(rows.shape[0])
    n_ex = max((len(e) for e in exclude_rows), default=0) if exclude_rows is not None else 0
    ex = exclude_rows if n_ex else None
    if allowed is None:
        k = int(min(k, n))
        ids, scores = topk(rows, q, int(min(n, k + n_ex)), num_threads=num_threads)
        return _drop_excluded(np.asarray(ids, np.int64), np.asarray(scores, np.float32), ex, k)
    kept = int(np.count_nonzero(allowed))
    if kept < 0.25 * n:
        keep = np.flatnonzero(allowed)
        if kept == 0:
            return np.full((len(q), 0), -1, np.int64), np.full((len(q), 0), -np.inf, np.float32)
        pos = np.full(n, -1, np.int64)
        pos[keep] = np.arange(kept)
        sub_ex = [[int(pos[r]) for r in e if pos[r] >= 0] for e in ex] if ex is not None else None
        sub_ids, sc = exact_search(np.ascontiguousarray(rows[keep]), q, k, sub_ex, num_threads)
        return np.where(sub_ids >= 0, keep[np.maximum(sub_ids, 0)], -1), sc
    k = int(min(k, kept))
    fetch = int(min(n, math.ceil((k + n_ex) * n / kept) + 16))
    while True:
        ids, scores = topk(rows, q, fetch, num_threads=num_threads)
        ids = np.asarray(ids, np.int64)
        scores = np.asarray(scores, np.float32)
        scores[~allowed[np.maximum(ids, 0)]] = -np.inf
        top_ids, top_sc = _drop_excluded(ids, scores, ex, k)
        if fetch >= n or (top_ids >= 0).all():
            return top_ids, top_sc
        fetch = int(min(n, fetch * 4))


def _drop_excluded(cand: np.ndarray, scores: np.ndarray, exclude_rows, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.where(cand >= 0, scores, -np.inf).astype(np.float32)
    scores[scores <= -3e38] = -np.inf  # implicit's -FLT_MAX fillers
    if exclude_rows is not None:
        scores[_excluded_mask(cand, exclude_rows)] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_ids = np.take_along_axis(cand, order, 1)
    top_sc = np.take_along_axis(scores, order, 1)
    valid = np.isfinite(top_sc)
    return np.where(valid, top_ids, -1), np.where(valid, top_sc, -np.inf).astype(np.float32)


def _excluded_mask(cand: np.ndarray, exclude_rows) -> np.ndarray:
    """cand[r, j] in exclude_rows[r], for all rows with one isin over (row, id) keys: a
    per-row isin costs ~50 µs a row, 13 ms of a 256-query batch."""
    lens = np.fromiter((len(e) for e in exclude_rows), np.int64, count=len(exclude_rows))
    ex = np.fromiter((i for e in exclude_rows for i in e), np.int64, count=int(lens.sum()))
    ex_keys = np.repeat(np.arange(len(lens), dtype=np.int64), lens) << 32 | ex
    cand_keys = np.arange(cand.shape[0], dtype=np.int64)[:, None] << 32 | np.maximum(cand, 0)
    return np.isin(cand_keys, ex_keys) & (cand >= 0)
