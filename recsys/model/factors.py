"""A trained model as the serving side needs it: fixed item factors and what derives from them.

A Model is immutable once built. A worker holds one, and swapping models is replacing one
reference between batches, so every recommendation comes from exactly one version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(eq=False)
class Model:
    version: str
    item_ids: Sequence[str]  # row i of item_factors is item_ids[i]
    item_factors: np.ndarray  # (n_items, factors) float32, possibly memory-mapped
    yty: np.ndarray  # (factors, factors) = YᵀY, for the fold-in
    item_norms: np.ndarray  # (n_items,) ‖yᵢ‖
    popularity: np.ndarray  # (n_items,) training users per item, for fallbacks
    regularization: float
    metadata: dict[str, Any] = field(default_factory=dict)
    item_index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.item_index = {item: i for i, item in enumerate(self.item_ids)}

    @property
    def n_items(self) -> int:
        return int(self.item_factors.shape[0])

    @property
    def factors(self) -> int:
        return int(self.item_factors.shape[1])

    def rows(self, items: Sequence[str]) -> np.ndarray:
        """Rows of known items (unknown ones are left out)."""
        idx = self.item_index
        return np.fromiter((idx[i] for i in items if i in idx), dtype=np.int64)

    @classmethod
    def from_factors(
        cls,
        version: str,
        item_ids: Sequence[str],
        item_factors: np.ndarray,
        regularization: float,
        popularity: np.ndarray | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Model:
        y = np.ascontiguousarray(item_factors, dtype=np.float32)
        pop = np.zeros(len(item_ids), np.float32) if popularity is None else popularity.astype(np.float32)
        return cls(
            version=version,
            item_ids=list(item_ids),
            item_factors=y,
            yty=(y.T @ y).astype(np.float32),
            item_norms=np.linalg.norm(y, axis=1).astype(np.float32),
            popularity=pop,
            regularization=float(regularization),
            metadata=dict(metadata or {}),
        )
