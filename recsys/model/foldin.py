"""Fold-in: a user's factors from their confidences, against the model's FIXED item factors.

One ALS half-step for the user side, (YᵀY + Yᵀ(Cᵤ−I)Y + λI) xᵤ = YᵀCᵤp(u), solved by `implicit`'s
batched Cholesky solver (`recalculate_user`) for many users in one call. The same solver is
used whatever trained the item factors (ALS or BPR): it is the least-squares projection of
the user's confidences onto the item space.

Callers pin BLAS to one thread once per process (`recsys.model.threads.pin_blas_threads`): implicit
parallelises across users itself, and a threaded BLAS under it oversubscribes the cores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.model.factors import Model


class FoldIn:
    def __init__(self, model: Model, num_threads: int = 0):
        from implicit.als import AlternatingLeastSquares

        self.model = model
        # alpha=1: callers pass confidences c = 1 + alpha*r already (confidence.py).
        self._als = AlternatingLeastSquares(
            factors=model.factors,
            regularization=model.regularization,
            alpha=1.0,
            dtype=np.float32,
            num_threads=num_threads,
        )
        self._als.item_factors = model.item_factors
        # implicit computes YᵀY lazily into this cache and has no public setter; ours is stored with the model.
        self._als._YtY = np.ascontiguousarray(model.yty, dtype=np.float32)  # noqa: SLF001

    @property
    def als(self) -> Any:
        """implicit's own model object over the fixed item factors (benchmarks use its `recommend`)."""
        return self._als

    def matrix(self, confidences: Sequence[Mapping[str, float]]) -> sp.csr_matrix:
        """Rows of confidences over the model's items; items the model does not know are left out."""
        index = self.model.item_index
        indptr, indices, data = [0], [], []
        for conf in confidences:
            for item, c in conf.items():
                k = index.get(item)
                if k is not None:
                    indices.append(k)
                    data.append(c)
            indptr.append(len(indices))
        m = sp.csr_matrix(
            (np.asarray(data, np.float32), np.asarray(indices, np.int32), np.asarray(indptr, np.int64)),
            shape=(len(confidences), self.model.n_items),
        )
        m.sort_indices()
        return m

    def __call__(self, confidences: Sequence[Mapping[str, float]]) -> tuple[np.ndarray, np.ndarray]:
        """Factors for each user (zeros for a user with no known item) and which users had one."""
        m = self.matrix(confidences)
        known = np.diff(m.indptr) > 0
        if not len(confidences):
            return np.zeros((0, self.model.factors), np.float32), known
        x = self._als.recalculate_user(np.arange(m.shape[0]), m)
        x = np.asarray(x, np.float32).reshape(m.shape[0], self.model.factors)
        x[~known] = 0.0
        return x, known
