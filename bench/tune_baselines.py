"""Tune the stream baselines' own parameters on the validation window (never the test window).

A baseline weakened by bad parameters would make the system's lift look larger than it is, so
each of covisit, vsknn and stan gets a coordinate search over its parameters on each dataset's
validation window (bench/tune.py's split: the last 20% of events are the test window and are not
read; the rest is split 80/20 into train / validation), the same replay `recsys stream-eval
--validation` runs. Objective: the mean of HR@10 and MRR@10 as ratios to the baseline's
defaults (recsys.candidates.sources.SourcesConfig). Prints one line per trial and the best
parameters per dataset and baseline as `--source` options; writes everything as JSON.

    python -m bench.tune_baselines --datasets yoochoose,taobao,rees46 --output /tmp/tune-baselines.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from recsys.candidates.sources import SourcesConfig
from recsys.data.datasets import load, time_split
from recsys.evaluation.streaming import StreamEvalConfig, stream_evaluate

GRID: dict[str, dict[str, list[Any]]] = {
    "covisit": {
        "covisit_recent": [1, 2, 3, 5, 10],
        "covisit_decay": [0.3, 0.5, 0.8],
        "covisit_backward": [0.0, 0.25, 0.5, 1.0],
        "covisit_window_s": [3600.0, 86_400.0, 604_800.0],
        "covisit_back": [3, 10, 20],
        "covisit_normalize": [False, True],
    },
    "vsknn": {
        "current_len": [2, 3, 5, 10, 20],
        "k": [50, 100, 200, 500],
        "sample": [250, 500, 1000, 2000],
        "session_gap_s": [1800.0, 21_600.0, 86_400.0],
    },
    "stan": {
        "current_len": [2, 3, 5, 10, 20],
        "k": [50, 100, 200, 500],
        "sample": [250, 500, 1000, 2000],
        "stan_l1": [0.0, 1.0, 3.0],
        "stan_l2_s": [3600.0, 86_400.0, 604_800.0],
        "stan_l3": [0.0, 1.0, 3.0, 10.0],
        "session_gap_s": [1800.0, 21_600.0, 86_400.0],
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="yoochoose,taobao,rees46")
    ap.add_argument("--methods", default="covisit,vsknn,stan")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--output", default="/tmp/tune-baselines.json")
    ap.add_argument("--resume", action="store_true", help="skip the dataset/baseline pairs --output holds")
    args = ap.parse_args()
    from recsys.confidence import ConfidenceConfig, build_profiles
    from recsys.model.train import TrainConfig, train

    results: dict[str, Any] = {}
    if args.resume and Path(args.output).exists():
        results = json.loads(Path(args.output).read_text())
    for name in args.datasets.split(","):
        events, _ = load(name, progress=None)
        dev, _test = time_split(events, test_fraction=0.2)
        tr, val = time_split(dev, test_fraction=0.2)
        ccfg = ConfidenceConfig()
        model, uf, uids = train(build_profiles(tr, ccfg), ccfg, TrainConfig(), version="tune")
        results.setdefault(name, {})
        for method in args.methods.split(","):
            if method in results[name]:
                continue

            def run(cfg: SourcesConfig, method: str = method, data: tuple = (tr, val, model, uf, uids)) -> tuple:
                ecfg = StreamEvalConfig(methods=(method,), sources=cfg)
                r = stream_evaluate(data[0], data[1], ecfg=ecfg, model=data[2], user_factors=data[3], user_ids=data[4])
                a = r["methods"][method]["all"]
                return a["HR@10"], a["MRR@10"]

            base = SourcesConfig()
            t = time.time()
            hr0, mrr0 = run(base)
            trials = [{"params": {}, "HR@10": hr0, "MRR@10": mrr0, "objective": 1.0}]
            print(f"{name} {method} defaults: {hr0:.4f} / {mrr0:.4f} ({time.time() - t:.0f}s)", flush=True)
            best, best_obj, cache = base, 1.0, {base: 1.0}
            for _ in range(args.rounds):
                improved = False
                for key, values in GRID[method].items():
                    for v in values:
                        cfg = best.with_params({key: v})
                        if cfg in cache:
                            continue
                        hr, mrr = run(cfg)
                        obj = (hr / max(hr0, 1e-9) + mrr / max(mrr0, 1e-9)) / 2
                        cache[cfg] = obj
                        diff = {k: v for k, v in asdict(cfg).items() if asdict(base)[k] != v}
                        trials.append({"params": diff, "HR@10": hr, "MRR@10": mrr, "objective": obj})
                        print(f"{name} {method} {diff}: {hr:.4f} / {mrr:.4f} obj {obj:.4f}", flush=True)
                        if obj > best_obj + 1e-9:
                            best, best_obj, improved = cfg, obj, True
                if not improved:
                    break
            diff = {k: v for k, v in asdict(best).items() if asdict(base)[k] != v}
            opts = " ".join(f"--source {method}.{k}={v}" for k, v in diff.items())
            print(f"BEST {name} {method}: objective {best_obj:.4f} {opts}", flush=True)
            results[name][method] = {"best": diff, "objective": best_obj, "options": opts, "trials": trials}
            with open(args.output, "w") as f:
                json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
