"""The retrain gate's cost at a big catalogue: its held-out users through the serving path.

The gate (streaming/jobs/retrain.py `gate`) scores its held-out cases with `evaluate_model`:
fold-in, then the `Scorer`'s top-k. From `scoring.ann_min_items` items (1M by default) that
`Scorer` first builds the approximate index (recsys/serving/ann.py). This bench times the gate's
scoring on clustered synthetic items (bench/common.py) and synthetic cases (--history items each,
the latest the query, --history more the truth), with the index (the default) and exact, in the
same process, alternating; one BLAS thread (the retrain pins it); wall, CPU and the ratio.

    python -m bench.gate_cost [--quick] [--items 1100000] [--cases 10000] [--repeats 2]
                              [--modes index,exact] [--output bench/out/gate_cost.json]

Peak RSS is the process's (it only grows): `--modes index` alone gives the index's.
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import replace
from typing import Any

import numpy as np

from bench.common import clustered_factors, machine, median, write_json


def cases_for(item_ids: list[str], n_cases: int, history: int, seed: int = 0) -> list[Any]:
    from recsys.confidence import ItemState, UserProfile
    from recsys.evaluation.offline import EvalCase

    rng = np.random.default_rng(seed)
    out = []
    for u in range(n_cases):
        rows = rng.integers(0, len(item_ids), 2 * history)
        p = UserProfile()
        for t, r in enumerate(rows[:history]):
            p.items[item_ids[r]] = ItemState(1.0, 1_000 + t, 1)
        out.append(EvalCase(f"u{u}", item_ids[rows[history - 1]], {item_ids[r] for r in rows[history:]}, p))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, the index forced on: checks it runs")
    ap.add_argument("--items", type=int, help="catalogue (default 1,100,000: the full-size run's; quick 20,000)")
    ap.add_argument("--cases", type=int, help="held-out cases (default 10,000: the gate's at 1M users; quick 300)")
    ap.add_argument("--history", type=int, default=15, help="items in each case's profile")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modes", default="index,exact", help="which of index,exact to run (index first)")
    ap.add_argument("--output", default="bench/out/gate_cost.json")
    args = ap.parse_args(argv)

    from recsys.config import load_config
    from recsys.evaluation.offline import evaluate_model
    from recsys.model.factors import Model
    from recsys.model.threads import pin_blas_threads

    pin_blas_threads()
    n_items = args.items or (20_000 if args.quick else 1_100_000)
    n_cases = args.cases or (300 if args.quick else 10_000)
    cfg = load_config()
    factors = 16 if args.quick else cfg.train.factors
    y, _ = clustered_factors(n_items, factors, seed=1)
    ids = [str(1_000_000 + i) for i in range(n_items)]
    pop = np.random.default_rng(2).random(n_items).astype(np.float32)
    model = Model.from_factors("gate-cost", ids, y, cfg.train.regularization, popularity=pop)
    cases = cases_for(ids, n_cases, args.history)
    # the index as the gate builds it at this size (forced on in quick mode), and exact top-k
    variants = {
        "index": replace(cfg.scoring, ann_min_items=1 if args.quick else cfg.scoring.ann_min_items),
        "exact": replace(cfg.scoring, ann_min_items=0),
    }
    modes = args.modes.split(",")
    if not modes or set(modes) - set(variants):
        ap.error(f"--modes: a comma-separated subset of {','.join(variants)}")
    variants = {k: v for k, v in variants.items() if k in modes}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    print(f"{n_cases:,} cases over {n_items:,} items x {factors}", flush=True)
    for r in range(args.repeats):
        for name, scfg in variants.items():
            t, c = time.perf_counter(), time.process_time()
            figures = evaluate_model(model, cases, cfg.confidence, scfg)
            run = {
                "wall_s": time.perf_counter() - t,
                "cpu_s": time.process_time() - c,
                "map10": figures["MAP@10"],
                "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            }
            runs[name].append(run)
            print(
                f"  {name:5s} #{r + 1}: {run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} CPU s, "
                f"process peak RSS so far {run['peak_rss_gb']:.2f} GB",
                flush=True,
            )
    med = {k: {m: median([x[m] for x in v]) for m in ("wall_s", "cpu_s")} for k, v in runs.items()}
    ratio = med["index"]["wall_s"] / med["exact"]["wall_s"] if len(med) == 2 else None
    index_cfg = variants.get("index")
    uses_index = index_cfg is not None and bool(index_cfg.ann_min_items) and n_items >= index_cfg.ann_min_items
    print(
        f"gate scoring, medians of {args.repeats}: "
        + ", ".join(f"{k} {v['wall_s']:.1f} s" for k, v in med.items())
        + (f": {ratio:.2f}x" if ratio is not None else "")
        + ("" if uses_index or index_cfg is None else " (below scoring.ann_min_items: both exact)")
    )
    report = {
        "bench": "gate_cost",
        "quick": args.quick,
        "machine": machine(),
        "items": n_items,
        "cases": n_cases,
        "factors": factors,
        "uses_index": uses_index,
        "runs": runs,
        "medians": med,
        "index_over_exact": ratio,
    }
    write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()
