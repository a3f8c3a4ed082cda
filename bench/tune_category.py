"""The ranker with the category source, against today's ranker on the same validation events.

Split as bench/tune_ranker.py and `recsys stream-eval --validation` split: the last 20% of the
events are the test window (not read), the rest is split 80/20 into train / validation. With
this code (the category-popularity candidates and the category features) the ranker's training
examples (the last half of the train part, replayed after a model trained on its first half, as
`ranker_examples` does) and the validation replay's candidates are collected once (cached under
--cache), with the baselines' validation-tuned sources (docs/evaluation.md, "Fair parameters")
as bench/tune_ranker_examples on branch quality2 collected today's. Today's ranker is fit and
scored on those earlier caches (--base-cache: `<name>-w0.5-1.0.pkl`, `<name>-val.pkl`, the same
events in the same order); each setting here is fit and scored offline on the new caches: HR@10
and MRR@10 with their standard errors, and the paired standard error of the difference to
today's ranker.

A dataset without categories (YOOCHOOSE) has no category candidates: its rows are today's with
the new columns absent (`--reuse`: today's caches widened, not replayed again).

    python -m bench.tune_category --datasets rees46 --output /tmp/tune-category.json
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from recsys.candidates.ranker import _RANK_ABSENT, FEATURES, SOURCE_NAMES, Examples, RankerConfig, fit
from recsys.candidates.sources import SourcesConfig
from recsys.data.datasets import load, time_split
from recsys.evaluation.streaming import StreamEvalConfig, stream_evaluate

# the baselines' validation-tuned parameters (docs/evaluation.md, "Fair parameters"), which the
# cached candidates of today's ranker were collected with
TUNED: dict[str, dict[str, dict[str, Any]]] = {
    "yoochoose": {
        "covisit": {"covisit_back": 20, "covisit_backward": 1.0, "covisit_recent": 1},
        "vsknn": {"current_len": 3},
    },
    "taobao": {
        "covisit": {
            "covisit_window_s": 604800,
            "covisit_back": 20,
            "covisit_backward": 1.0,
            "covisit_recent": 10,
            "covisit_normalize": True,
        }
    },
    "rees46": {
        "covisit": {"covisit_recent": 5, "covisit_decay": 0.8, "covisit_normalize": True},
        "vsknn": {"current_len": 20, "k": 200},
        "stan": {"session_gap_s": 21600, "current_len": 20, "k": 200},
    },
}
OLD_FEATURES = 32  # today's FEATURES: the category source's 3 columns and the 2 category features are new


def base_config(name: str, sources: dict[str, Any], over_tuned: bool = False) -> StreamEvalConfig:
    """`sources` on today's defaults, under the baselines' tuned values (`over_tuned`: over them too)."""
    base = SourcesConfig().with_params(sources)
    over = {f: getattr(base, f) for f in sources} if over_tuned else {}
    return StreamEvalConfig(
        sources=base,
        baseline_sources={m: replace(base, **(p | over)) for m, p in TUNED[name].items()},
        methods=("system",),
    )


def _load(path: Path) -> Any:
    with path.open("rb") as fh:
        return pickle.load(fh)  # our own cache


def _cached(path: Path, make: Any) -> Any:
    if path.exists():
        return _load(path)
    t = time.time()
    value = make()
    print(f"  {path.name}: {time.time() - t:.0f}s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        pickle.dump(value, fh)
    return value


def widen(ex: Examples) -> Examples:
    """Today's rows with the new columns as the new code fills them when there are no categories."""
    at = 3 * SOURCE_NAMES.index("category")
    out = Examples(events=ex.events, covered=ex.covered, keep_all=ex.keep_all, meta=ex.meta, y=ex.y)
    for X in ex.X:
        assert X.shape[1] == OLD_FEATURES
        n = len(X)
        cat = np.zeros((n, 3), np.float32)
        cat[:, 1] = _RANK_ABSENT
        # the two category features, then the later rounds' columns (constant: never split on)
        rest = np.zeros((n, len(FEATURES) - OLD_FEATURES - 3), np.float32)
        out.X.append(np.hstack([X[:, :at], cat, X[:, at:], rest]))
    return out


def collect(
    name: str, cache: Path, sources: dict[str, Any], tag: str, over_tuned: bool = False
) -> tuple[Examples, Examples]:
    events, _ = load(name, progress=None)
    dev, _test = time_split(events, test_fraction=0.2)
    tr, val = time_split(dev, test_fraction=0.2)
    ecfg = base_config(name, sources, over_tuned)

    def train_examples() -> Examples:
        head, window = time_split(tr, test_fraction=0.5)
        ex = Examples()
        stream_evaluate(head, window, ecfg=ecfg, collect=ex)
        return ex

    def val_examples() -> Examples:
        ex = Examples(keep_all=True)
        stream_evaluate(tr, val, ecfg=ecfg, collect=ex)
        return ex

    return _cached(cache / f"{name}-{tag}-train.pkl", train_examples), _cached(
        cache / f"{name}-{tag}-val.pkl", val_examples
    )


def ranks(rcfg: RankerConfig, train_ex: Examples, val_ex: Examples) -> np.ndarray:
    """The target's rank in each validation event's top 10 (0: not there), as method `ranker`."""
    ranker = fit(train_ex, rcfg)
    out = np.zeros(len(val_ex.y), np.int64)
    for j, (X, y, (seg, fb_rank)) in enumerate(zip(val_ex.X, val_ex.y, val_ex.meta, strict=True)):
        if seg == "cold":
            out[j] = fb_rank
        elif y.any():
            order = np.argsort(-ranker.scores(X), kind="stable")[:10]
            hit = np.flatnonzero(y[order] > 0)
            out[j] = int(hit[0]) + 1 if len(hit) else 0
    return out


def _hr(r: np.ndarray) -> np.ndarray:
    return (r > 0).astype(float)


def _rr(r: np.ndarray) -> np.ndarray:
    return np.where(r > 0, 1.0 / np.maximum(r, 1), 0.0)


def figures(r: np.ndarray, base: np.ndarray | None) -> dict[str, float]:
    out: dict[str, float] = {}
    n = len(r)
    for m, f in (("HR@10", _hr), ("MRR@10", _rr)):
        v = f(r)
        out[m] = float(v.mean())
        out[f"{m}_se"] = float(v.std(ddof=1) / math.sqrt(n))
        if base is not None:
            d = v - f(base)
            out[f"{m}_diff"] = float(d.mean())
            out[f"{m}_diff_se"] = float(d.std(ddof=1) / math.sqrt(n))
    return out


def line(label: str, f: dict[str, float]) -> str:
    s = f"  {label}: HR@10 {f['HR@10']:.4f} ±{f['HR@10_se']:.4f}, MRR@10 {f['MRR@10']:.4f} ±{f['MRR@10_se']:.4f}"
    if "HR@10_diff" in f:
        s += (
            f"; vs today {f['HR@10_diff']:+.4f} ±{f['HR@10_diff_se']:.4f}, "
            f"{f['MRR@10_diff']:+.4f} ±{f['MRR@10_diff_se']:.4f}"
        )
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="rees46,taobao,yoochoose")
    ap.add_argument("--cache", default="/tmp/streamrec-tune-category")
    ap.add_argument("--base-cache", default="/tmp/streamrec-tune-ranker-examples")
    ap.add_argument(
        "--sources",
        default='{"category_recent": 3}',
        help="JSON: SourcesConfig fields for every source (category_*)",
    )
    ap.add_argument("--tag", default="cat", help="names this collection's cache files")
    ap.add_argument("--reuse", default="yoochoose", help="datasets without categories: today's caches widened")
    ap.add_argument("--collect-only", action="store_true")
    ap.add_argument("--output", default="/tmp/tune-category.json")
    args = ap.parse_args()
    out: dict[str, Any] = json.loads(Path(args.output).read_text()) if Path(args.output).exists() else {}
    rcfg = RankerConfig()
    no_cat_features = tuple(f for f in FEATURES if not f.startswith("same_category"))
    grid: dict[str, RankerConfig] = {
        "category candidates and features": rcfg,
        "without the same-category features": replace(rcfg, features=no_cat_features),
        "LightGBM seed 1": replace(rcfg, seed=1),
    }
    for name in args.datasets.split(","):
        base = Path(args.base_cache)
        old_train, old_val = _load(base / f"{name}-w0.5-1.0.pkl"), _load(base / f"{name}-val.pkl")
        if name in args.reuse.split(","):
            train_ex, val_ex = widen(old_train), widen(old_val)
        else:
            train_ex, val_ex = collect(name, Path(args.cache), json.loads(args.sources), args.tag)
        if [m[0] for m in val_ex.meta] != [m[0] for m in old_val.meta]:
            raise SystemExit(f"{name}: the validation events differ from today's cache")
        cov_old = np.mean([y.any() for y in old_val.y])
        cov_new = np.mean([y.any() for y in val_ex.y])
        size = np.mean([len(y) for y in val_ex.y])
        print(
            f"{name}: {len(val_ex.y)} validation events; candidates hold the target for {cov_old:.3f} today, "
            f"{cov_new:.3f} now ({size:.1f} per list); {train_ex.covered}/{train_ex.events} training events covered",
            flush=True,
        )
        if args.collect_only:
            continue
        res: dict[str, Any] = {"coverage_today": float(cov_old), "coverage": float(cov_new), "candidates": size}
        old_rcfg = RankerConfig()
        t = time.time()
        # today's FEATURES are 32 long: fit today's rows as they were
        today = ranks(old_rcfg, widen(old_train), widen(old_val))
        res["today"] = f = figures(today, None)
        print(line("today's ranker", f) + f" ({time.time() - t:.0f}s)", flush=True)
        for label, cfg in grid.items():
            t = time.time()
            res[label] = f = figures(ranks(cfg, train_ex, val_ex), today)
            print(line(label, f) + f" ({time.time() - t:.0f}s)", flush=True)
        out[f"{name}/{args.tag}"] = res
        Path(args.output).write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
