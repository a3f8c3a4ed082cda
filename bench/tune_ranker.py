"""Choose the ranker's settings on the validation window (never the test window).

Split as bench/tune.py and `recsys stream-eval --validation` split: the last 20% of events are
the test window (not read), the rest is split 80/20 into train / validation. For each candidate
setting (example window, candidates per source) the ranker's training examples are built from
the train part (`recsys.candidates.training.ranker_examples`) and the validation replay's
candidates are collected once (the same replay and features `stream-eval` runs); LightGBM
settings and feature subsets are then scored offline on those cached candidates: HR@10 and
MRR@10 of each validation event, exactly what method `ranker` gets on that replay (users with no
event at all get the system's list, as there). Caches under --cache.

    python -m bench.tune_ranker --datasets yoochoose,taobao,rees46 --baselines /tmp/tune-baselines.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from recsys.candidates.ranker import FEATURES, Examples, RankerConfig, fit
from recsys.candidates.sources import SourcesConfig
from recsys.candidates.training import ranker_examples
from recsys.data.datasets import load, time_split
from recsys.evaluation.streaming import StreamEvalConfig, stream_evaluate


def tuned_sources(path: str | None, name: str) -> dict[str, SourcesConfig]:
    """The baselines' validation-tuned parameters (bench/tune_baselines.py's JSON)."""
    if not path or not Path(path).exists():
        return {}
    best = json.loads(Path(path).read_text()).get(name, {})
    return {m: SourcesConfig().with_params(r["best"]) for m, r in best.items()}


def collect(name: str, ecfg: StreamEvalConfig, cache: Path) -> tuple[Examples, Examples]:
    digest = hashlib.sha256(json.dumps(asdict(ecfg), sort_keys=True, default=str).encode()).hexdigest()[:12]
    key = f"{name}-{digest}"
    f = cache / f"{key}.pkl"
    if f.exists():
        with f.open("rb") as fh:
            return pickle.load(fh)  # our own cache
    events, _ = load(name, progress=None)
    dev, _test = time_split(events, test_fraction=0.2)
    tr, val = time_split(dev, test_fraction=0.2)
    t = time.time()
    train_ex = ranker_examples(tr, ecfg=ecfg)
    val_ex = Examples(keep_all=True)
    stream_evaluate(tr, val, ecfg=replace(ecfg, methods=("system",)), collect=val_ex)
    print(f"{name}: collected in {time.time() - t:.0f}s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    with f.open("wb") as fh:
        pickle.dump((train_ex, val_ex), fh)
    return train_ex, val_ex


def score(rcfg: RankerConfig, train_ex: Examples, val_ex: Examples) -> dict[str, Any]:
    ranker = fit(train_ex, rcfg)
    hr = mrr = 0.0
    segs: dict[str, list[float]] = {}
    for X, y, (seg, fb_rank) in zip(val_ex.X, val_ex.y, val_ex.meta, strict=True):
        if seg == "cold":
            r = fb_rank
        else:
            r = 0
            if y.any():
                s = ranker.scores(X)
                order = np.argsort(-s, kind="stable")[:10]
                hit = np.flatnonzero(y[order] > 0)
                r = int(hit[0]) + 1 if len(hit) else 0
        h, m = (1.0, 1.0 / r) if r else (0.0, 0.0)
        hr += h
        mrr += m
        a = segs.setdefault(seg, [0.0, 0.0, 0.0])
        a[0] += h
        a[1] += m
        a[2] += 1
    n = max(len(val_ex.meta), 1)
    return {
        "HR@10": hr / n,
        "MRR@10": mrr / n,
        "segments": {s: {"HR@10": a[0] / a[2], "MRR@10": a[1] / a[2], "n": a[2]} for s, a in segs.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="yoochoose,taobao,rees46")
    ap.add_argument("--baselines", default="/tmp/tune-baselines.json", help="bench/tune_baselines.py's output")
    ap.add_argument("--cache", default="/tmp/streamrec-tune-ranker")
    ap.add_argument("--fractions", default="0.25")
    ap.add_argument("--per-source", default="50")
    ap.add_argument("--grid", default="small", choices=("none", "trees", "small", "features"))
    ap.add_argument("--output", default="/tmp/tune-ranker.json")
    args = ap.parse_args()
    out: dict[str, Any] = {}
    for name in args.datasets.split(","):
        base = StreamEvalConfig(baseline_sources=tuned_sources(args.baselines, name))
        for frac in map(float, args.fractions.split(",")):
            for per in map(int, args.per_source.split(",")):
                ecfg = replace(base, ranker=replace(base.ranker, example_fraction=frac, per_source=per))
                train_ex, val_ex = collect(name, ecfg, Path(args.cache))
                cov = sum(1 for y in val_ex.y if y.any()) / max(len(val_ex.y), 1)
                print(
                    f"{name} fraction {frac} per_source {per}: {len(train_ex.X)} training groups, "
                    f"validation coverage {cov:.3f}",
                    flush=True,
                )
                trials: list[dict[str, Any]] = []
                grid: list[dict[str, Any]] = [{}]
                if args.grid == "trees":
                    grid += [{"n_estimators": 50}, {"n_estimators": 200}, {"min_child_samples": 200}]
                if args.grid == "small":
                    grid += [
                        {"n_estimators": 100},
                        {"n_estimators": 600, "learning_rate": 0.025},
                        {"num_leaves": 15},
                        {"num_leaves": 63},
                        {"min_child_samples": 200},
                    ]
                if args.grid == "features":
                    groups = {
                        "no own": [f for f in FEATURES if not f.startswith("own")],
                        "no item stats": [
                            f for f in FEATURES if f not in ("pop_log_count", "item_log_minutes_since_seen")
                        ],
                        "no cos": [f for f in FEATURES if not f.startswith("cos")],
                        "no rel": [f for f in FEATURES if not f.endswith("_rel")],
                    }
                    grid += [{"features": tuple(v), "_name": k} for k, v in groups.items()]
                for g in grid:
                    params = {k: v for k, v in g.items() if not k.startswith("_")}
                    rcfg = replace(ecfg.ranker, **params)
                    t = time.time()
                    r = score(rcfg, train_ex, val_ex)
                    label = g.get("_name") or {k: v for k, v in params.items()}
                    print(f"  {label}: {r['HR@10']:.4f} / {r['MRR@10']:.4f} ({time.time() - t:.0f}s)", flush=True)
                    trials.append({"params": str(label), **r})
                out.setdefault(name, {})[f"{frac}/{per}"] = {"coverage": cov, "trials": trials}
                Path(args.output).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
