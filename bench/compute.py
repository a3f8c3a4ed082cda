"""Compute benchmark: fold-in + top-N for a batch of users, against its baselines in the same run.

For each catalogue (items x factors) and one batch of users (synthetic histories of 1-50 items
over topic-clustered item factors, see bench.common):

  ceiling   bare matrix product + top-k: implicit.cpu.topk(Y, X, 10) on the batch's user factors
  batched   the worker's path: fold in the whole batch (implicit recalculate_user, one call), then
            recsys.serving.scoring.Scorer.recommend (blend with the query item in the same product,
            per-user exclusions inside implicit's top-k): recsys.serving.recommender's two calls
  naive     one implicit `AlternatingLeastSquares.recommend(0, row, N=10, recalculate_user=True)`
            call per event (timed on a sample of the batch)
  ann       the same Scorer.recommend with the approximate index (recsys.serving.ann) on catalogues of at
            least --ann-min items: build time (nprobe tuning included), scoring time against exact
            scoring, recall@10, and a sweep of nprobe around the tuned one

Variants are interleaved in each repeat and medians reported; ratios are of medians measured
in the same run.

    python -m bench.compute [--quick] [--output bench/out/compute.json] [--plot docs/img/bench-compute.png]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np

from bench.common import clustered_factors, machine, median, plot_setup, synthetic_users, write_json

FULL: dict[str, Any] = {
    "sizes": [50_000, 500_000, 2_000_000],
    "factors": [64, 128],
    "batch": 256,
    "repeats": 5,
    "naive_events": 64,
    "ann_min": 500_000,
}
QUICK: dict[str, Any] = {
    "sizes": [5_000],
    "factors": [16],
    "batch": 64,
    "repeats": 2,
    "naive_events": 16,
    "ann_min": 5_000,
}


def run_one(
    n: int, f: int, batch: int, repeats: int, naive_events: int, ann_min: int, threads: int = 1, log=print
) -> dict:
    from implicit.cpu.topk import topk

    from recsys.model.factors import Model
    from recsys.serving.recommender import Recommender
    from recsys.serving.scoring import Scorer, ScoringConfig

    t0 = time.perf_counter()
    y, assign = clustered_factors(n, f, seed=n + f)
    ids = [f"i{k}" for k in range(n)]
    pop = np.bincount(np.random.default_rng(0).integers(0, n, 20 * n), minlength=n).astype(np.float32)
    model = Model.from_factors(f"bench-{n}x{f}", ids, y, regularization=0.05, popularity=pop)
    del y
    scfg = replace(ScoringConfig(), ann_min_items=0, num_threads=threads)
    rec = Recommender(model, scfg=scfg, num_threads=threads)
    rows_conf, qrows, bought = synthetic_users(assign, batch, seed=f)
    confs = [{ids[r]: c for r, c in conf.items()} for conf in rows_conf]
    queries = [ids[q] for q in qrows]
    excludes = [{ids[r] for r in b} for b in bought]
    setup_s = time.perf_counter() - t0

    x, known = rec.fold_in(confs)  # warm-up (and the ceiling's input)
    exact = rec.scorer.recommend(x, known, queries, excludes)
    items_f = np.asarray(model.item_factors)
    topk(items_f, x, 10, num_threads=threads)

    scorer_ann, build_s = None, None
    if ann_min and n >= ann_min:
        t = time.perf_counter()
        scorer_ann = Scorer(model, replace(scfg, ann_min_items=ann_min))
        build_s = time.perf_counter() - t
        approx = scorer_ann.recommend(x, known, queries, excludes)
        hits = sum(len(set(a.items[:10]) & set(e.items[:10])) for a, e in zip(approx, exact, strict=True))
        recall = hits / sum(len(e.items[:10]) for e in exact)
    als = rec.fold_in.als
    sample = list(range(min(naive_events if n < 1_000_000 else naive_events // 4, batch)))
    naive_rows = [rec.fold_in.matrix([confs[j]]) for j in sample]
    als.recommend(0, naive_rows[0], N=10, recalculate_user=True)

    t_ceiling, t_fold, t_score, t_batched, t_naive, t_ann, t_exact_score = [], [], [], [], [], [], []
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        topk(items_f, x, 10, num_threads=threads)
        t_ceiling.append(time.perf_counter() - t)

        t = time.perf_counter()
        xb, kb = rec.fold_in(confs)
        t1 = time.perf_counter()
        rec.scorer.recommend(xb, kb, queries, excludes)
        t2 = time.perf_counter()
        t_fold.append(t1 - t)
        t_score.append(t2 - t1)
        t_batched.append(t2 - t)

        t = time.perf_counter()
        for row in naive_rows:
            als.recommend(0, row, N=10, recalculate_user=True)
        t_naive.append((time.perf_counter() - t) / len(naive_rows))

        if scorer_ann is not None:
            t = time.perf_counter()
            scorer_ann.recommend(xb, kb, queries, excludes)
            t_ann.append(time.perf_counter() - t)
            t_exact_score.append(t_score[-1])

    sweep = []
    ann = scorer_ann.ann if scorer_ann is not None else None
    if scorer_ann is not None and ann is not None:  # recall / speed against nprobe, same queries and exclusions
        base = ann.nprobe
        for npb in sorted({max(1, base // 2), base, base * 2}):
            ann.nprobe = npb
            ts = []
            for _ in range(max(2, repeats // 2)):
                t = time.perf_counter()
                approx = scorer_ann.recommend(x, known, queries, excludes)
                ts.append(time.perf_counter() - t)
            hits = sum(len(set(a.items[:10]) & set(e.items[:10])) for a, e in zip(approx, exact, strict=True))
            sweep.append(
                {
                    "nprobe": npb,
                    "recall_at_10": hits / sum(len(e.items[:10]) for e in exact),
                    "scoring_ms": median(ts) * 1e3,
                    "speedup_vs_exact": median(t_exact_score) / median(ts),
                }
            )
        ann.nprobe = base
    ceiling, batched = median(t_ceiling), median(t_batched)
    naive_per_event = median(t_naive)
    out: dict[str, Any] = {
        "items": n,
        "factors": f,
        "batch_users": batch,
        "repeats": repeats,
        "threads": threads,
        "setup_s": round(setup_s, 2),
        "ceiling_ms": ceiling * 1e3,
        "batched_ms": batched * 1e3,
        "foldin_ms": median(t_fold) * 1e3,
        "scoring_ms": median(t_score) * 1e3,
        "naive_ms_per_event": naive_per_event * 1e3,
        "ceiling_users_per_s": batch / ceiling,
        "batched_users_per_s": batch / batched,
        "naive_users_per_s": 1.0 / naive_per_event,
        "batched_over_ceiling": batched / ceiling,
        "batched_speedup_vs_naive": (batch / batched) * naive_per_event,
    }
    if ann is not None:
        out.update(
            {
                "ann_build_s": build_s,
                "ann_nlist": ann.nlist,
                "ann_nprobe": ann.nprobe,
                "ann_tuned_recall": ann.tuned_recall,
                "ann_scoring_ms": median(t_ann) * 1e3,
                "exact_scoring_ms": median(t_exact_score) * 1e3,
                "ann_speedup_vs_exact": median(t_exact_score) / median(t_ann),
                "ann_recall_at_10": recall,
                "ann_nprobe_sweep": sweep,
            }
        )
    log(_line(out))
    del rec, scorer_ann, ann, model
    gc.collect()
    return out


def _line(r: dict) -> str:
    s = (
        f"{r['items']:>9,} x {r['factors']:<3} batch {r['batch_users']}: ceiling {r['ceiling_ms']:.1f} ms, "
        f"batched {r['batched_ms']:.1f} ms (fold-in {r['foldin_ms']:.1f} + scoring {r['scoring_ms']:.1f}) "
        f"= {r['batched_over_ceiling']:.2f}x ceiling; naive {r['naive_ms_per_event']:.2f} ms/event -> "
        f"batched {r['batched_speedup_vs_naive']:.1f}x naive"
    )
    if "ann_recall_at_10" in r:
        tuned = f" tuned for R@10 {r['ann_tuned_recall']:.3f} on pseudo-queries" if r.get("ann_tuned_recall") else ""
        s += (
            f"; ANN (nlist {r['ann_nlist']}, nprobe {r['ann_nprobe']}{tuned}, built in {r['ann_build_s']:.0f} s): "
            f"scoring {r['ann_scoring_ms']:.1f} ms vs exact {r['exact_scoring_ms']:.1f} ms = "
            f"{r['ann_speedup_vs_exact']:.1f}x, recall@10 {r['ann_recall_at_10']:.3f}; sweep "
            + ", ".join(
                f"nprobe {w['nprobe']}: R@10 {w['recall_at_10']:.3f} {w['speedup_vs_exact']:.1f}x"
                for w in r["ann_nprobe_sweep"]
            )
        )
    return s


def plot(results: list[dict], path: str) -> None:
    plt = plot_setup()
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for f, mark in ((64, "o"), (128, "s"), (16, "^")):
        rs = [r for r in results if r["factors"] == f]
        if not rs:
            continue
        xs = [r["items"] for r in rs]
        ax[0].loglog(xs, [r["ceiling_users_per_s"] for r in rs], mark + "--", label=f"ceiling f={f}")
        ax[0].loglog(xs, [r["batched_users_per_s"] for r in rs], mark + "-", label=f"batched f={f}")
        ax[0].loglog(xs, [r["naive_users_per_s"] for r in rs], mark + ":", label=f"naive f={f}")
        ra = [r for r in rs if "ann_scoring_ms" in r]
        if ra:
            ax[1].loglog(
                [r["items"] for r in ra],
                [r["batch_users"] / r["ann_scoring_ms"] * 1e3 for r in ra],
                mark + "-",
                label=f"ANN scoring f={f}",
            )
            ax[1].loglog(
                [r["items"] for r in ra],
                [r["batch_users"] / r["exact_scoring_ms"] * 1e3 for r in ra],
                mark + "--",
                label=f"exact scoring f={f}",
            )
            for r in ra:
                ax[1].annotate(
                    f"R@10 {r['ann_recall_at_10']:.2f}",
                    (r["items"], r["batch_users"] / r["ann_scoring_ms"] * 1e3),
                    fontsize=7,
                )
    ax[0].set(xlabel="catalogue items", ylabel="users per second (fold-in + top-10)", title="fold-in + top-N")
    ax[1].set(xlabel="catalogue items", ylabel="users per second (scoring only)", title="approximate vs exact scoring")
    for a in ax:
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny catalogue, for CI: checks it runs")
    ap.add_argument("--sizes", help="comma-separated catalogue sizes (default 50000,500000,2000000)")
    ap.add_argument("--factors", help="comma-separated factor counts (default 64,128)")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--repeats", type=int)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="implicit/faiss threads for every variant (default 1: stable on a shared box; 0 = all cores)",
    )
    ap.add_argument("--output", default="bench/out/compute.json")
    ap.add_argument("--plot", default=None, help="PNG chart (e.g. docs/img/bench-compute.png)")
    args = ap.parse_args(argv)
    from recsys.model.threads import pin_blas_threads

    pin_blas_threads()
    cfg = dict(QUICK if args.quick else FULL)
    if args.sizes:
        cfg["sizes"] = [int(s) for s in args.sizes.split(",")]
    if args.factors:
        cfg["factors"] = [int(s) for s in args.factors.split(",")]
    cfg["batch"] = args.batch or cfg["batch"]
    cfg["repeats"] = args.repeats or cfg["repeats"]
    t0 = time.time()
    results = []
    for n in cfg["sizes"]:
        for f in cfg["factors"]:
            reps = cfg["repeats"] if n < 1_000_000 else min(cfg["repeats"], 3)
            results.append(run_one(n, f, cfg["batch"], reps, cfg["naive_events"], cfg["ann_min"], args.threads))
            sys.stdout.flush()
    report = {
        "bench": "compute",
        "quick": args.quick,
        "config": cfg,
        "machine": machine(),
        "seconds": round(time.time() - t0, 1),
        "results": results,
    }
    write_json(args.output, report)
    if args.plot:
        plot(results, args.plot)
    print(f"compute bench done in {report['seconds']} s -> {args.output}")
    return report


if __name__ == "__main__":
    main()
