"""Batch training: user profiles -> confidence matrix -> `implicit` ALS (or BPR) -> Model."""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys.confidence import ConfidenceConfig, UserProfile
from recsys.errors import ConfigError, RecsysError
from recsys.fields import setting
from recsys.model.factors import Model
from recsys.model.store import new_version_name

KINDS = ("als", "bpr")


@dataclass(frozen=True)
class TrainConfig:
    """The model the retrain job fits; the `[train]` configuration section.

    ALS: factors and regularization as the search on a validation window picked them
    (`python -m bench.tune`, docs/evaluation.md "Searching the defaults")."""

    kind: str = setting("als", "model: als (implicit ALS) or bpr")
    factors: int = setting(128, "latent factors per item and user")
    regularization: float = setting(0.018, "L2 regularization (lambda)")
    iterations: int = setting(15, "training iterations (epochs)")
    learning_rate: float = setting(0.01, "learning rate (BPR only)")
    num_threads: int = setting(0, "training threads; 0: all cores")
    random_state: int | None = setting(42, "random seed; none: a different model each run")
    # A retrain starts from the serving version's item factors (matched by id): most of the
    # model is already there, so it converges in a few iterations (BENCHMARKS.md, "Retrain").
    warm_start: bool = setting(True, "ALS retrain: start from the serving model's item factors")
    # Measured on real data (BENCHMARKS.md, "Retrain"): a warm start's item factors move less than
    # 3.5% in its 4th-6th iteration, and its held-out MAP@10 is then a cold start's (15) within noise.
    converge_tol: float = setting(
        0.035,
        "warm start: stop once an iteration moves the item factors by less than this (relative "
        "Frobenius norm, on a sample of items); at most `iterations`; 0: always run them all",
    )
    min_iterations: int = setting(3, "warm start: at least this many iterations")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"train.kind must be one of {KINDS}, got {self.kind!r}")
        if self.factors < 1 or self.iterations < 1:
            raise ConfigError("train.factors and train.iterations must be >= 1")
        if not self.regularization >= 0:
            raise ConfigError(f"train.regularization must be >= 0, got {self.regularization}")
        if self.num_threads < 0:
            raise ConfigError("train.num_threads must be >= 0")
        if not self.converge_tol >= 0 or self.min_iterations < 1:
            raise ConfigError("train.converge_tol must be >= 0 and train.min_iterations >= 1")


# BPR, for comparison (`recsys evaluate --kinds als,bpr`, `--kind bpr`): the notebook's settings.
# On the same validation replays it stays behind ALS (docs/evaluation.md), so it is not the default.
BPR = TrainConfig(kind="bpr", factors=64, regularization=0.01, iterations=100, learning_rate=0.05)


def confidence_matrix(
    profiles: Mapping[str, UserProfile],
    cfg: ConfidenceConfig,
    item_ids: Sequence[str] | None = None,
) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """Users x items CSR of confidences c = 1 + alpha*r (`ConfidenceConfig.confidences`, the one
    formula). Items: `item_ids` if given (others dropped), else every item seen, in first-seen order."""
    users = list(profiles)
    index: dict[str, int] = {} if item_ids is None else {i: k for k, i in enumerate(item_ids)}
    grow = item_ids is None
    counts = np.fromiter((len(profiles[u].items) for u in users), np.int64, len(users))
    nnz = int(counts.sum())
    values = np.empty(nnz, np.float64)
    ages = np.empty(nnz, np.int64)
    cols: np.ndarray = np.empty(nnz, np.int64)
    k = 0
    for u in users:
        p = profiles[u]
        ref = p.last_ts
        for item, st in p.items.items():
            c = index.get(item)
            if c is None:
                if grow:
                    c = index[item] = len(index)
                else:
                    c = -1
            cols[k], values[k], ages[k] = c, st.value, ref - st.ts
            k += 1
    conf = cfg.confidences(values, ages).astype(np.float32)
    indptr = np.zeros(len(users) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    if not grow:
        keep = cols >= 0
        rows = np.repeat(np.arange(len(users)), counts)[keep]
        indptr = np.zeros(len(users) + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=len(users)), out=indptr[1:])
        cols, conf = cols[keep], conf[keep]
    items = list(index) if grow else list(item_ids)  # type: ignore[arg-type]
    m = sp.csr_matrix((conf, cols.astype(np.int32), indptr), shape=(len(users), len(items)))
    m.sort_indices()
    return m, users, items


@dataclass
class TrainingData:
    """What a retrain trains on, in arrays: the confidence matrix of the training users, its item
    ids (column order), and the held-out users' gate cases (recsys.evaluation.offline.EvalCase),
    kept out of the matrix. Made from the state changelog (streaming/jobs/changelog/) or from
    profiles (`from_profiles`). An engine turns it into a Model (`fit`)."""

    matrix: sp.csr_matrix  # users x items, float32 confidences, sorted indices
    items: list[str]
    cases: list[Any] = field(default_factory=list)
    last_ts_min: int = 0
    last_ts_max: int = 0
    source: str = ""
    skipped: int = 0  # unreadable or foreign records left out
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def users(self) -> int:
        return int(self.matrix.shape[0])


def fit_factors(
    matrix: sp.csr_matrix,
    cfg: TrainConfig,
    progress: bool = False,
    *,
    init_items: np.ndarray | None = None,
    stats: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train implicit on a confidence matrix; returns (user_factors, item_factors) as float32.

    `init_items` (ALS only): the item factors to start from (a warm start); the run then stops
    early once an iteration moves them by less than `cfg.converge_tol` (after at least
    `cfg.min_iterations`). `stats`, if given, receives the iterations run and the last change."""
    from implicit.als import AlternatingLeastSquares
    from implicit.bpr import BayesianPersonalizedRanking

    if matrix.nnz == 0:
        raise RecsysError("cannot train on an empty matrix: no events with a known user and item")
    stats = stats if stats is not None else {}
    callback = None
    if cfg.kind == "als":
        # alpha=1: the matrix already holds confidences (see confidence.py).
        model: Any = AlternatingLeastSquares(
            factors=cfg.factors,
            regularization=cfg.regularization,
            alpha=1.0,
            iterations=cfg.iterations,
            dtype=np.float32,
            num_threads=cfg.num_threads,
            random_state=cfg.random_state,
        )
        if init_items is not None:
            if init_items.shape != (matrix.shape[1], cfg.factors):
                raise RecsysError(f"warm start: item factors {init_items.shape} do not fit {matrix.shape}")
            model.item_factors = np.ascontiguousarray(init_items, np.float32)
            # The first half-iteration solves every user against the given items (conjugate
            # gradient from zero), so the users need no starting values of their own.
            model.user_factors = np.zeros((matrix.shape[0], cfg.factors), np.float32)
            callback = _ConvergenceCheck(model, cfg, stats)
        else:
            # implicit's own initialisation (same generator, same draws, same values), scaled in
            # place: `random(...) * 0.01` holds two copies of the user factors at once (5 GB
            # more at 10M users x 128 factors).
            rng = np.random.default_rng(cfg.random_state)
            for name, rows in (("user_factors", matrix.shape[0]), ("item_factors", matrix.shape[1])):
                init = rng.random((rows, cfg.factors), dtype=np.float32)
                init *= np.float32(0.01)
                setattr(model, name, init)
    else:
        model = BayesianPersonalizedRanking(
            factors=cfg.factors,
            learning_rate=cfg.learning_rate,
            regularization=cfg.regularization,
            iterations=cfg.iterations,
            dtype=np.float32,
            num_threads=cfg.num_threads,
            random_state=cfg.random_state,
        )
    stats["iterations"] = cfg.iterations
    release_free_heap()
    # implicit runs its own thread pool; a threaded BLAS underneath it oversubscribes the cores.
    t0 = time.perf_counter()
    with threadpool_limits(1, "blas"), contextlib.suppress(_Converged):  # the warm start's early stop
        model.fit(matrix, show_progress=progress, callback=callback)
    stats["implicit_fit_s"] = round(time.perf_counter() - t0, 3)  # implicit's own fit, alone
    return np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32)


def release_free_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc's malloc_trim) before the fit allocates
    its large arrays. Whatever built the matrix (the changelog's decoded chunks) was freed in
    blocks that small live objects sit between; glibc keeps such pages resident, and the fit's own
    arrays come from fresh mappings: at 10M users that was 4.5 GB more at the fit's peak."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to do
        return
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


class _Converged(Exception):
    """Raised by the convergence check to end implicit's iteration loop (it has no early stop)."""


class _ConvergenceCheck:
    """After each ALS iteration: how far did the item factors move? Relative Frobenius norm of
    the change over a fixed sample of rows (all of them up to 50k items), so checking costs
    little next to an iteration at millions of items."""

    SAMPLE = 50_000

    def __init__(self, model: Any, cfg: TrainConfig, stats: dict[str, Any]):
        self.model, self.cfg, self.stats = model, cfg, stats
        n = model.item_factors.shape[0]
        rng = np.random.default_rng(0)
        self.rows = np.sort(rng.choice(n, self.SAMPLE, replace=False)) if n > self.SAMPLE else slice(None)
        self.before = np.array(model.item_factors[self.rows], np.float32)
        stats["changes"] = []

    def __call__(self, iteration: int, elapsed: float, loss: float | None) -> None:
        now = np.array(self.model.item_factors[self.rows], np.float32)
        change = float(np.linalg.norm(now - self.before)) / max(float(np.linalg.norm(now)), 1e-12)
        self.before = now
        self.stats["changes"].append(round(change, 5))
        self.stats["iterations"] = iteration + 1
        if iteration + 1 >= self.cfg.min_iterations and change < self.cfg.converge_tol:
            raise _Converged


def warm_start_factors(items: Sequence[str], serving: Model, cfg: TrainConfig) -> tuple[np.ndarray, int]:
    """Starting item factors for `items`: the serving model's row for each item it knows, a small
    random vector (as implicit initialises every item) for each new one. Returns them and how
    many items matched."""
    rng = np.random.default_rng(cfg.random_state)
    y = rng.random((len(items), cfg.factors), dtype=np.float32) * 0.01
    index = serving.item_index
    pairs = [(k, j) for k, i in enumerate(items) if (j := index.get(i)) is not None]
    if pairs:
        mine, theirs = np.asarray(pairs, np.int64).T
        y[mine] = np.asarray(serving.item_factors)[theirs]
    return y, len(pairs)


def fit(
    data: TrainingData,
    ccfg: ConfidenceConfig,
    tcfg: TrainConfig,
    *,
    init: Model | None = None,
    version: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> tuple[Model, np.ndarray]:
    """Training data -> (Model, XᵀX of the training users): the engine seam of the retrain.
    `init`: the serving model, to warm-start from (ALS with `tcfg.warm_start` and the same
    number of factors; otherwise a cold start)."""
    from recsys.model.item_foldin import user_gram

    t0 = time.time()
    stats: dict[str, Any] = {}
    init_items = None
    warm = init is not None and tcfg.kind == "als" and tcfg.warm_start and init.factors == tcfg.factors and init.n_items
    if warm:
        assert init is not None
        init_items, matched = warm_start_factors(data.items, init, tcfg)
        stats.update(warm_start_from=init.version, items_matched=matched)
    elif init is not None:
        stats["cold_start"] = (
            f"the serving model {init.version} has {init.factors} factors, this training {tcfg.factors}"
            if init.factors != tcfg.factors
            else f"warm start is for ALS with train.warm_start on (kind {tcfg.kind})"
        )
    user_factors, item_factors = fit_factors(data.matrix, tcfg, progress, init_items=init_items, stats=stats)
    popularity = np.bincount(data.matrix.indices, minlength=len(data.items)).astype(np.float32)
    meta = {
        "kind": tcfg.kind,
        "train": asdict(tcfg),
        "confidence": {**asdict(ccfg), "weights": dict(ccfg.weights)},
        "n_users": data.users,
        "nnz": int(data.matrix.nnz),
        "data_window": {"last_event_ts_min": data.last_ts_min, "last_event_ts_max": data.last_ts_max},
        "fit": stats,
        "train_seconds": round(time.time() - t0, 3),
    }
    meta.update(metadata or {})
    model = Model.from_factors(
        version or new_version_name(),
        data.items,
        item_factors,
        tcfg.regularization,
        popularity=popularity,
        metadata=meta,
    )
    return model, user_gram(user_factors)


def train(
    profiles: Mapping[str, UserProfile],
    ccfg: ConfidenceConfig,
    tcfg: TrainConfig,
    *,
    progress: bool = False,
    version: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[Model, np.ndarray, list[str]]:
    """Train a model on user profiles. Returns (model, user_factors, user ids in row order)."""
    t0 = time.time()
    matrix, users, items = confidence_matrix(profiles, ccfg)
    user_factors, item_factors = fit_factors(matrix, tcfg, progress)
    popularity = np.bincount(matrix.indices, minlength=len(items)).astype(np.float32)
    first = min((p.last_ts for p in profiles.values()), default=0)
    meta = {
        "kind": tcfg.kind,
        "train": asdict(tcfg),
        "confidence": {**asdict(ccfg), "weights": dict(ccfg.weights)},
        "n_users": len(users),
        "nnz": int(matrix.nnz),
        "data_window": {
            "last_event_ts_min": first,
            "last_event_ts_max": max((p.last_ts for p in profiles.values()), default=0),
        },
        "train_seconds": round(time.time() - t0, 3),
    }
    meta.update(metadata or {})
    model = Model.from_factors(
        version or new_version_name(), items, item_factors, tcfg.regularization, popularity=popularity, metadata=meta
    )
    return model, user_factors, users
