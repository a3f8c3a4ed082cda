"""New items before the next retrain: item-side fold-in against the current user factors.

The user-side fold-in (foldin.py) solves a user's factors against FIXED item factors. This is
the mirror image, as Oryx 2's speed layer does it: an item the model does not know gets the
least-squares item factors from the users who touched it, against FIXED user factors X,

    (XᵀX + Xᵀ(Cⱼ−I)X + λI) yⱼ = XᵀCⱼp(j)

i.e. one ALS half-step for item j (implicit's `recalculate_item`), where the sums over Cⱼ run
over the users who touched j (p = 1, c = 1 + alpha·r from confidence.py) and XᵀX is the Gram
matrix of the model's user population (the training users' factors; it stands for "every other
user did not touch j"). The solution is in the same space as the trained item factors, so the
new row can be recommended (xᵤ·yⱼ) and used as a query item (cosine) at once.

    xtx = user_gram(user_factors_from_training)            # once per model version (f x f)
    y_new = fold_in_items([X_j for each new item], [c_j ...], xtx, model.regularization)
    model2 = extend_model(model, new_ids, y_new)            # rows appended; Recommender(model2)

Nothing here touches Kafka: see docs/evaluation.md ("New items before the next retrain") for
how a worker feeds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from recsys.model.factors import Model


def user_gram(user_factors: np.ndarray) -> np.ndarray:
    """XᵀX of the user population (float64, f x f), summed over blocks of rows: a float64 copy
    of all the factors at once would be twice their size (10 GB at 10M users x 128)."""
    x = np.asarray(user_factors)
    out = np.zeros((x.shape[1], x.shape[1]), np.float64)
    for a in range(0, len(x), 1 << 16):
        b = np.asarray(x[a : a + (1 << 16)], np.float64)
        out += b.T @ b
    return out


def fold_in_items(
    users: Sequence[np.ndarray], confidences: Sequence[np.ndarray], xtx: np.ndarray, regularization: float
) -> np.ndarray:
    """Item factors for each new item j from (users[j] = factors of the users who touched it,
    (n_j, f); confidences[j] = their c_uj, (n_j,)). Returns (n_new, f) float32; an item with
    no users gets zeros. All items are solved in one batched call."""
    f = xtx.shape[0]
    n = len(users)
    if n == 0:
        return np.zeros((0, f), np.float32)
    a = np.broadcast_to(np.asarray(xtx, np.float64) + regularization * np.eye(f), (n, f, f)).copy()
    b = np.zeros((n, f), np.float64)
    empty = np.zeros(n, bool)
    for j, (x, c) in enumerate(zip(users, confidences, strict=True)):
        x = np.asarray(x, np.float64).reshape(-1, f)
        c = np.asarray(c, np.float64).reshape(-1)
        if len(c) == 0:
            empty[j] = True
            continue
        a[j] += (x * (c - 1.0)[:, None]).T @ x  # Xᵀ(Cⱼ−I)X over the touching users
        b[j] = c @ x  # XᵀCⱼp(j)
    y = np.linalg.solve(a, b[:, :, None])[:, :, 0]
    y[empty] = 0.0
    return y.astype(np.float32)


def extend_model(
    model: Model,
    item_ids: Sequence[str],
    item_factors: np.ndarray,
    popularity: np.ndarray | None = None,
    version: str | None = None,
) -> Model:
    """A new Model with rows for `item_ids` appended (items it already has are skipped).

    Same version by default: the trained rows are unchanged, only the catalogue grew (the
    metadata says how much: `folded_in_items`). YᵀY and norms are recomputed over all rows, so
    the user fold-in and the scorer see the new items like any other."""
    keep = [k for k, i in enumerate(item_ids) if i not in model.item_index]
    ids = [item_ids[k] for k in keep]
    y_new = np.asarray(item_factors, np.float32).reshape(-1, model.factors)[keep]
    pop_new = np.zeros(len(keep), np.float32) if popularity is None else np.asarray(popularity, np.float32)[keep]
    meta = dict(model.metadata)
    meta["folded_in_items"] = meta.get("folded_in_items", 0) + len(ids)
    return Model.from_factors(
        version or model.version,
        list(model.item_ids) + ids,
        np.vstack([np.asarray(model.item_factors, np.float32), y_new]),
        model.regularization,
        popularity=np.concatenate([np.asarray(model.popularity, np.float32), pop_new]),
        metadata=meta,
    )


class ItemFoldIn:
    """Keeps XᵀX for one model version and folds in new items from user factors + confidences.

    `touched[item] = {user: confidence}`; `user_factors(users)` returns the current factors of
    those users (e.g. `Recommender.fold_in` of their profiles against the base model)."""

    def __init__(self, model: Model, xtx: np.ndarray, min_users: int = 1):
        self.model, self.xtx, self.min_users = model, np.asarray(xtx, np.float64), min_users

    def solve(
        self, touched: Mapping[str, Mapping[str, float]], factors_of: Mapping[str, np.ndarray]
    ) -> tuple[list[str], np.ndarray]:
        ids, xs, cs = [], [], []
        for item, by_user in touched.items():
            if item in self.model.item_index:
                continue
            users = [u for u in by_user if u in factors_of and np.any(factors_of[u])]
            if len(users) < self.min_users:
                continue
            ids.append(item)
            xs.append(np.stack([factors_of[u] for u in users]))
            cs.append(np.array([by_user[u] for u in users], np.float64))
        return ids, fold_in_items(xs, cs, self.xtx, self.model.regularization)

    def extend(self, touched: Mapping[str, Mapping[str, float]], factors_of: Mapping[str, np.ndarray]) -> Model:
        ids, y = self.solve(touched, factors_of)
        pop = np.array([len(touched[i]) for i in ids], np.float32)
        return extend_model(self.model, ids, y, popularity=pop) if ids else self.model
