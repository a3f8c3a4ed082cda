"""The ranker with the user's path features, against the same ranker without them, on validation.

Split as bench/tune_category.py splits (the last 20% of the events are the test window, not read;
the rest 80/20 into train / validation). The ranker's training examples and the validation
replay's candidates are collected once with this code (`bench.tune_category.collect`: the
baselines' validation-tuned sources, today's defaults otherwise; cached under --cache). Each
setting is then fit and scored offline as method `ranker` scores: HR@10 and MRR@10 with their
standard errors and the paired standard error of the difference to the ranker that reads
today's features only (the new columns zeroed: constant, LightGBM never splits on them, so it is
today's ranker on the same rows).

    python -m bench.tune_path --datasets yoochoose,rees46,taobao --output /tmp/tune-path.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.tune_category import collect, figures, line, ranks
from recsys.candidates.ranker import FEATURES, PATH_FEATURES, RankerConfig

PATH = PATH_FEATURES
TODAY = tuple(f for f in FEATURES if f not in PATH)


def grid(rcfg: RankerConfig) -> dict[str, RankerConfig]:
    def without(*names: str) -> RankerConfig:
        return replace(rcfg, features=tuple(f for f in FEATURES if f not in names))

    return {
        "path features": rcfg,
        "without the previous move's rows": without("covisit_from_prev", "next_from_prev"),
        "without the query's row totals": without("query_covisit_log_total", "query_next_log_total"),
        "LightGBM seed 1": replace(rcfg, seed=1),
        "200 trees": replace(rcfg, n_estimators=200),
        "min_child_samples 200": replace(rcfg, min_child_samples=200),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="yoochoose,rees46,taobao")
    ap.add_argument("--cache", default="/tmp/streamrec-tune-path")
    ap.add_argument("--tag", default="path", help="names this collection's cache files")
    ap.add_argument("--settings", default="", help="comma-separated names of the grid (empty: all)")
    ap.add_argument("--output", default="/tmp/tune-path.json")
    args = ap.parse_args()
    out: dict[str, Any] = json.loads(Path(args.output).read_text()) if Path(args.output).exists() else {}
    rcfg = RankerConfig()
    settings = grid(rcfg)
    chosen = [s for s in args.settings.split(",") if s] or list(settings)
    for name in args.datasets.split(","):
        train_ex, val_ex = collect(name, Path(args.cache), {}, args.tag)
        cov = float(np.mean([y.any() for y in val_ex.y]))
        print(
            f"{name}: {len(val_ex.y)} validation events, candidates hold the target for {cov:.3f}; "
            f"{train_ex.covered}/{train_ex.events} training events covered",
            flush=True,
        )
        res: dict[str, Any] = {"coverage": cov}
        t = time.time()
        today = ranks(replace(rcfg, features=TODAY), train_ex, val_ex)
        res["today's features"] = f = figures(today, None)
        print(line("today's features", f) + f" ({time.time() - t:.0f}s)", flush=True)
        for label in chosen:
            t = time.time()
            res[label] = f = figures(ranks(settings[label], train_ex, val_ex), today)
            print(line(label, f) + f" ({time.time() - t:.0f}s)", flush=True)
        out[f"{name}/{args.tag}"] = res
        Path(args.output).write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
