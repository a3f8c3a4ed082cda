"""Retrain benchmark: recsys.model.train.train on the largest real dataset against implicit called directly.

  project   recsys.model.train.train with the default configuration: confidence matrix from the users'
            profiles, implicit ALS fit (BLAS pinned to one thread), Model (YᵀY, norms, popularity)
  direct    implicit.als.AlternatingLeastSquares(same parameters).fit(same matrix), BLAS pinned
            the same way: the floor for this retrain

Runs alternate, medians reported; the ratio is project / direct, same run. Building the profiles
from the events (what a retrain from a history file also does) is timed separately.

    python -m bench.retrain [--quick] [--data NAME] [--repeats 3] [--output bench/out/retrain.json]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import machine, median, plot_setup, write_json

CANDIDATES = ("taobao", "yoochoose", "rees46", "retailrocket")


def largest_dataset(names=CANDIDATES):
    from recsys.data.datasets import DATASETS, data_dir, load_dataset

    best = None
    for name in names:
        if not (data_dir() / DATASETS[name]).exists():
            continue
        events = load_dataset(name, lenient=True)
        if best is None or len(events) > len(best[1]):
            best = (name, events)
    if best is None:
        raise SystemExit(f"no real dataset found in {data_dir()} (set STREAMREC_DATA)")
    return best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small dataset, 2 iterations: checks it runs")
    ap.add_argument("--data", help=f"dataset name (default: the largest of {', '.join(CANDIDATES)})")
    ap.add_argument("--repeats", type=int, help="default 3 (quick 1)")
    ap.add_argument("--output", default="bench/out/retrain.json")
    ap.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    from dataclasses import replace

    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from recsys.confidence import build_profiles
    from recsys.config import Config
    from recsys.data.datasets import load_dataset
    from recsys.model.threads import pin_blas_threads
    from recsys.model.train import confidence_matrix, train

    pin_blas_threads()
    ccfg, tdefault = Config().confidence, Config().train
    t_all = time.time()
    if args.quick:
        name, events = args.data or "taobao_small", None
        events = load_dataset(name, lenient=True)
        tcfg = replace(tdefault, iterations=2)
    elif args.data:
        name, events = args.data, load_dataset(args.data, lenient=True)
        tcfg = tdefault
    else:
        name, events = largest_dataset()
        tcfg = tdefault
    repeats = args.repeats or (1 if args.quick else 3)
    t0 = time.perf_counter()
    profiles = build_profiles(events, ccfg)
    profiles_s = time.perf_counter() - t0
    matrix, users, items = confidence_matrix(profiles, ccfg)
    print(
        f"{name}: {len(events):,} events, {len(users):,} users x {len(items):,} items, nnz {matrix.nnz:,}; "
        f"ALS {tcfg.factors} factors x {tcfg.iterations} iterations",
        flush=True,
    )

    def direct() -> float:
        als = AlternatingLeastSquares(
            factors=tcfg.factors,
            regularization=tcfg.regularization,
            alpha=1.0,
            iterations=tcfg.iterations,
            dtype=np.float32,
            num_threads=tcfg.num_threads,
            random_state=tcfg.random_state,
        )
        t = time.perf_counter()
        with threadpool_limits(1, "blas"):
            als.fit(matrix, show_progress=False)
        return time.perf_counter() - t

    def project() -> float:
        t = time.perf_counter()
        train(profiles, ccfg, tcfg)
        return time.perf_counter() - t

    def matrix_only() -> float:
        t = time.perf_counter()
        confidence_matrix(profiles, ccfg)
        return time.perf_counter() - t

    direct()  # warm-up (implicit's first fit loads its kernels)
    t_direct, t_project, t_matrix = [], [], []
    for _ in range(repeats):
        t_direct.append(direct())
        t_project.append(project())
        t_matrix.append(matrix_only())
    d, p = median(t_direct), median(t_project)
    res = {
        "bench": "retrain",
        "quick": args.quick,
        "machine": machine(),
        "dataset": name,
        "events": len(events),
        "users": len(users),
        "items": len(items),
        "nnz": int(matrix.nnz),
        "train": {"factors": tcfg.factors, "iterations": tcfg.iterations, "regularization": tcfg.regularization},
        "repeats": repeats,
        "profiles_s": profiles_s,
        "direct_s": d,
        "project_s": p,
        "matrix_s": median(t_matrix),
        "project_over_direct": p / d,
        "runs": {"direct": t_direct, "project": t_project},
        "seconds": round(time.time() - t_all, 1),
    }
    print(
        f"retrain: project {p:.2f} s vs implicit direct {d:.2f} s = {p / d:.2f}x "
        f"(confidence matrix {res['matrix_s']:.2f} s; profiles from events {profiles_s:.2f} s, once)"
    )
    write_json(args.output, res)
    if args.plot:
        plt = plot_setup()
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.bar(["implicit direct", "recsys.model.train.train"], [d, p], color=["#999", "#48c"])
        ax.bar(["recsys.model.train.train"], [res["matrix_s"]], color="#fa4", label="confidence matrix")
        ax.set(ylabel="seconds (median)", title=f"retrain on {name} ({len(events):,} events)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=90)
        plt.close(fig)
    print(f"retrain bench done in {res['seconds']} s -> {args.output}")
    return res


if __name__ == "__main__":
    main()
