"""The ranker's forest compiled to native code (lleaves, through LLVM): LightGBM's scores, bit for bit.

LightGBM's predict walks its trees node by node for every row; lleaves turns each tree into
machine code (a branch per node), about 6x faster on the worker's candidate rows. The worker
compiles the serving version's ranker once, when it loads the version (ModelUpdates, off the
event loop: ~2 s of CPU at 50 trees); the code lives in memory with the Ranker, and only a
temporary copy of the model text, which lleaves reads, touches the disk.

Why the scores are LightGBM's to the last bit (the lists must not change):
* each node compares the row's float32 value, widened to double, with the same double threshold
  (both parse the same model text), as LightGBM's `fval <= threshold` does;
* a row's score is the sum of its trees in tree order, from 0, in double: LightGBM's order. The
  forest is compiled as one block (`fblocksize` = its tree count): lleaves's blocks would add
  partial sums, another rounding; LLVM does not reassociate float adds without fast-math;
* LambdaRank's score has no output transform;
* LightGBM takes a value within ±1e-35 (kZeroThreshold) for zero at a zero-as-missing node, where
  lleaves tests == 0.0: such values (Taobao's hourly popularity of an item last seen days ago)
  are read as 0.0, which every node reads as LightGBM reads them as long as no threshold lies
  strictly between -1e-35 and 1e-35 (LightGBM's bins put zero's bounds at ±1e-35; a forest with
  such a threshold is not compiled); NaN, and values of exactly ±1e-35, are left to LightGBM
  (it scores the batch); models with categorical splits are not compiled.
`compile_forest` checks the compiled forest against LightGBM on rows at every threshold, just
below and above it, and refuses it on any difference.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("streamrec.ranker")

_ZERO = np.float32(1e-35)  # LightGBM's kZeroThreshold: |x| at or below it is zero at a zero-as-missing node


class NativeForest:
    """A compiled forest: `scores(X)` is `booster.predict(X)`, or None when X holds a value the
    two would read differently (the caller asks LightGBM then)."""

    def __init__(self, model: Any):
        self._model = model

    def scores(self, X: np.ndarray) -> np.ndarray | None:
        a = np.abs(X)
        # NaN propagates through the sum (every term is >= 0, so no inf - inf)
        if np.isnan(a.sum()):
            return None
        small = (a <= _ZERO) & (a != 0)
        if small.any():
            if (a[small] == _ZERO).any():
                return None
            X = np.where(small, 0, X)  # LightGBM's zero: see the module's doc
        return np.asarray(self._model.predict(X, n_jobs=1))


def compile_forest(booster: Any) -> NativeForest | None:
    """LightGBM's `booster` compiled, or None: lleaves or llvmlite not importable, a model it
    cannot compile exactly, or one whose scores differ from LightGBM's on the check rows (logged)."""
    try:
        import lleaves
    except ImportError as e:
        log.info("ranker: LightGBM predicts (no compiler: %s)", e)
        return None
    model_text = booster.model_to_string()
    if any(line.startswith("num_cat=") and line != "num_cat=0" for line in model_text.splitlines()):
        log.info("ranker: LightGBM predicts (categorical splits are not compiled)")
        return None
    cuts = thresholds(booster)
    if any(-_ZERO < t < _ZERO for ts in cuts for t in ts):
        log.info("ranker: LightGBM predicts (a threshold between LightGBM's zero bounds)")
        return None
    t = time.process_time()
    try:
        with tempfile.TemporaryDirectory(prefix="streamrec-ranker-") as d:
            path = Path(d) / "model.txt"
            path.write_text(model_text)
            model = lleaves.Model(str(path))
            # one block: each row's trees summed in tree order, as LightGBM sums them
            model.compile(fblocksize=max(model.num_trees(), 1))
    except Exception as e:  # noqa: BLE001 - a compiler failure must not refuse a sound version
        log.warning("ranker: LightGBM predicts (compiling the forest failed: %s)", e)
        return None
    forest = NativeForest(model)
    X = check_rows(cuts)
    want, got = np.asarray(booster.predict(X, num_threads=1)), forest.scores(X)
    if got is None or not np.array_equal(want, got):
        log.warning("ranker: LightGBM predicts (the compiled forest's scores differ from LightGBM's)")
        return None
    log.info("ranker: forest compiled to native code in %.2f s of CPU", time.process_time() - t)
    return forest


def thresholds(booster: Any) -> list[list[float]]:
    """Each feature's split thresholds in the forest."""
    cuts: list[list[float]] = [[] for _ in range(booster.num_feature())]

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" in node:
            cuts[node["split_feature"]].append(float(node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return cuts


def check_rows(cuts: list[list[float]], n: int = 2000, seed: int = 0) -> np.ndarray:
    """Rows whose values sit at the forest's thresholds (`thresholds`), one float32 step below
    and above them, and at 0: every branch of every node is taken by some of them."""
    rng = np.random.default_rng(seed)
    X = np.empty((n, len(cuts)), np.float32)
    up, down = np.float32(np.inf), np.float32(-np.inf)
    for f, ts in enumerate(cuts):
        t = np.array(ts, np.float32)
        vals = np.concatenate([[0.0], t, np.nextafter(t, down), np.nextafter(t, up)]).astype(np.float32)
        X[:, f] = rng.choice(vals, n)
    X[np.abs(X) <= _ZERO] = 0.0  # next to LightGBM's ±1e-35 thresholds: rows `scores` leaves to LightGBM
    return X
