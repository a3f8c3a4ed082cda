"""Grid search of the scoring blend on a validation window (never the test window).

For each dataset: hold out the last 20% of events (the test window, untouched here), split
the remaining 80% again by time into train / validation, train ALS on train, and score the
validation window with the notebook's protocol for every (item_norm_power, user_weight).

    python -m bench.tune_scoring [--datasets taobao,yoochoose] [--output out/tune_scoring.json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from recsys.config import Config
from recsys.data.datasets import load_dataset, time_split
from recsys.evaluation.offline import evaluate
from recsys.model.threads import pin_blas_threads

POWERS = (0.0, 0.5, 1.0)
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="taobao,yoochoose")
    ap.add_argument("--output", default="out/tune_scoring.json")
    args = ap.parse_args()
    pin_blas_threads()
    rows = []
    for name in args.datasets.split(","):
        development, _test = time_split(load_dataset(name), test_fraction=0.2)
        train, valid = time_split(development, test_fraction=0.2)
        for p in POWERS:
            for w in WEIGHTS:
                rep = evaluate(
                    train,
                    valid,
                    scfg=replace(Config().scoring, user_weight=w, item_norm_power=p),
                    kinds={"als": Config().train},
                )
                m = rep["methods"]["als:blend"]
                rows.append({"dataset": name, "item_norm_power": p, "user_weight": w, "cases": rep["cases"], **m})
                print(
                    f"{name:<10} p={p:<4} w={w:<5} MAP@10={m['MAP@10']:.4f} HR@10={m['HR@10']:.4f} "
                    f"NDCG@10={m['NDCG@10']:.4f}",
                    flush=True,
                )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
