"""Batch training: user profiles -> confidence matrix -> `implicit` ALS (or BPR) -> Model."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
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

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"train.kind must be one of {KINDS}, got {self.kind!r}")
        if self.factors < 1 or self.iterations < 1:
            raise ConfigError("train.factors and train.iterations must be >= 1")
        if not self.regularization >= 0:
            raise ConfigError(f"train.regularization must be >= 0, got {self.regularization}")
        if self.num_threads < 0:
            raise ConfigError("train.num_threads must be >= 0")


# BPR, for comparison (`recsys evaluate --kinds als,bpr`, `--kind bpr`): the notebook's settings.
# On the same validation replays it stays behind ALS (docs/evaluation.md), so it is not the default.
BPR = TrainConfig(kind="bpr", factors=64, regularization=0.01, iterations=100, learning_rate=0.05)


def confidence_matrix(
    profiles: Mapping[str, UserProfile],
    cfg: ConfidenceConfig,
    item_ids: Sequence[str] | None = None,
) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """Users x items CSR of confidences c = 1 + alpha*r. Items: `item_ids` if given (others
    dropped), else every item seen, in first-seen order."""
    users = list(profiles)
    index: dict[str, int] = {} if item_ids is None else {i: k for k, i in enumerate(item_ids)}
    grow = item_ids is None
    indptr, indices, data = [0], [], []
    for u in users:
        for item, c in profiles[u].confidence(cfg).items():
            k = index.get(item)
            if k is None:
                if not grow:
                    continue
                k = index[item] = len(index)
            indices.append(k)
            data.append(c)
        indptr.append(len(indices))
    items = list(index) if grow else list(item_ids)  # type: ignore[arg-type]
    m = sp.csr_matrix(
        (np.asarray(data, np.float32), np.asarray(indices, np.int32), np.asarray(indptr, np.int64)),
        shape=(len(users), len(items)),
    )
    m.sort_indices()
    return m, users, items


def fit_factors(matrix: sp.csr_matrix, cfg: TrainConfig, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Train implicit on a confidence matrix; returns (user_factors, item_factors) as float32."""
    from implicit.als import AlternatingLeastSquares
    from implicit.bpr import BayesianPersonalizedRanking

    if matrix.nnz == 0:
        raise RecsysError("cannot train on an empty matrix: no events with a known user and item")
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
    # implicit runs its own thread pool; a threaded BLAS underneath it oversubscribes the cores.
    with threadpool_limits(1, "blas"):
        model.fit(matrix, show_progress=progress)
    return np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32)


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
