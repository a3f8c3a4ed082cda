"""Where implicit's ALS fit spends its time as the users grow: the user step and the item step apart.

One ALS iteration is two half-steps of implicit's conjugate-gradient kernel: each user's factors
against the item factors (a pass over the user's items), then each item's against the user
factors (a pass over the item's users). Each half-step runs `cg_steps` + 1 passes over a row's
factors, so its speed depends on whether one row's working set stays in cache: for the user step
the whole item-factor matrix (read at random), for the item step one item's users' factors
(users per item x factors x 4 bytes). `bench.retrain`'s curve keeps the catalogue fixed (the
Taobao slice's items) while the users grow, so users per item grow with the users; a shop whose
catalogue grows with its users keeps them flat. This bench times both half-steps on synthetic
matrices of both shapes (histories drawn like bench/state's: the Taobao slice's distinct items
per user, capped at 200, items uniform) and prints nanoseconds per non-zero, the figure that is
flat when time is linear in the data.

    python -m bench.als_kernel --users 300000,1000000,3000000,10000000 --repeats 2

It calls implicit's native solver (`implicit.cpu._als.least_squares_cg`, what
`AlternatingLeastSquares.fit` calls twice per iteration) directly, to time the half-steps apart.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from bench.common import machine, median, write_json
from bench.state import real_shape
from recsys.model.train import TrainConfig

FACTORS = TrainConfig().factors  # the default model's, what the retrain fits
CG_STEPS = 3  # implicit's default, what the retrain runs


def matrix(n_users: int, n_items: int, lengths: np.ndarray, seed: int = 0) -> sp.csr_matrix:
    """Confidence-valued user x item CSR, histories shaped like bench/state's users."""
    rng = np.random.default_rng(seed)
    k = np.minimum(200, lengths[rng.integers(0, len(lengths), n_users)]).astype(np.int64)
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(k, out=indptr[1:])
    cols = rng.integers(0, n_items, int(indptr[-1]), dtype=np.int32)
    vals = rng.choice(np.array([0.25, 0.5, 0.75, 1.0], np.float32), cols.size)
    vals *= 15.0  # in place: at 10M users every temporary is 2 GB
    vals += 1.0
    m = sp.csr_matrix((vals, cols, indptr), shape=(n_users, n_items))
    m.sum_duplicates()
    return m


def half_steps(n_users: int, n_items: int, lengths: np.ndarray, repeats: int, threads: int) -> dict[str, Any]:
    from implicit.cpu import _als

    t0 = time.perf_counter()
    cui = matrix(n_users, n_items, lengths)
    ciu = cui.T.tocsr()
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    x = rng.random((n_users, FACTORS), dtype=np.float32) * 0.01
    y = rng.random((n_items, FACTORS), dtype=np.float32) * 0.01
    user_ns: list[float] = []
    item_ns: list[float] = []
    for _ in range(repeats):
        t = time.perf_counter()
        _als.least_squares_cg(cui, x, y, 0.01, num_threads=threads, cg_steps=CG_STEPS)
        user_ns.append((time.perf_counter() - t) / cui.nnz * 1e9)
        t = time.perf_counter()
        _als.least_squares_cg(ciu, y, x, 0.01, num_threads=threads, cg_steps=CG_STEPS)
        item_ns.append((time.perf_counter() - t) / cui.nnz * 1e9)
    nnz = cui.nnz
    del cui, ciu, x, y
    gc.collect()
    return {
        "users": n_users,
        "items": n_items,
        "nnz": nnz,
        "users_per_item": round(nnz / n_items),
        "item_row_kb": round(nnz / n_items * FACTORS * 4 / 1024),
        "item_factors_mb": round(n_items * FACTORS * 4 / 2**20, 1),
        "build_s": round(build_s, 1),
        "user_step_ns": [round(v, 1) for v in user_ns],
        "item_step_ns": [round(v, 1) for v in item_ns],
        "user_step_ns_median": round(median(user_ns), 1),
        "item_step_ns_median": round(median(item_ns), 1),
        "iteration_ns_median": round(median(user_ns) + median(item_ns), 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", default="300000,1000000,3000000", help="comma-separated user counts")
    ap.add_argument("--repeats", type=int, default=2, help="timed iterations per size (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="solver threads (0: all cores, as the retrain)")
    ap.add_argument(
        "--items-per-million",
        type=int,
        default=0,
        help="items per 1M users in the growing-catalogue shape (0: the fixed catalogue's count, so both shapes match at 1M)",
    )
    ap.add_argument("--shapes", default="fixed,growing", help="which catalogue shapes to run: fixed, growing or both")
    ap.add_argument("--output", default="bench/out/als-kernel.json")
    ap.add_argument("--quick", action="store_true", help="20k and 60k users, one repeat (CI)")
    args = ap.parse_args(argv)
    sizes = [20_000, 60_000] if args.quick else [int(s) for s in args.users.split(",")]
    repeats = 1 if args.quick else args.repeats
    lengths, items = real_shape()
    fixed = len(items)
    per_million = args.items_per_million or fixed
    report: dict[str, Any] = {"bench": "als_kernel", "machine": machine(), "factors": FACTORS, "rows": []}
    print(
        f"{'shape':<18}{'users':>11}{'items':>9}{'users/item':>11}{'item row':>10}{'user step':>11}{'item step':>11}{'sum':>8}"
    )
    for n in sizes:
        for shape, n_items in (
            ("fixed catalogue", fixed),
            ("growing catalogue", max(fixed, per_million * n // 1_000_000)),
        ):
            if shape.split()[0] not in args.shapes.split(","):
                continue
            if shape == "growing catalogue" and n_items == fixed and "fixed" in args.shapes:
                continue  # same matrix as the fixed shape at this size
            row = half_steps(n, n_items, lengths, repeats, args.threads)
            row["shape"] = shape
            row["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
            report["rows"].append(row)
            print(
                f"{shape:<18}{n:>11,}{n_items:>9,}{row['users_per_item']:>11,}{row['item_row_kb']:>8} KB"
                f"{row['user_step_ns_median']:>8.0f} ns{row['item_step_ns_median']:>8.0f} ns{row['iteration_ns_median']:>5.0f} ns",
                flush=True,
            )
    base = report["rows"][0]["iteration_ns_median"]
    for row in report["rows"]:
        row["vs_smallest"] = round(row["iteration_ns_median"] / base, 2)
    print(
        "ns per non-zero per iteration against the smallest size's: "
        + ", ".join(f"{r['users']:,} {r['shape'].split()[0]} {r['vs_smallest']}x" for r in report["rows"])
    )
    write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()
