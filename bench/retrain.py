"""Retrain benchmark: `recsys retrain --once` on realistic user states in a real broker's state changelog.

For each user count: that many state records shaped like the real users (bench/state.py: item counts
and ids drawn from the Taobao data, encoded with the worker's codec) are produced into a fresh
changelog topic of the project's own Kafka broker; then, each in its own process:

  cold      `recsys retrain --once` with an empty model store: read + decode, fit (default model,
            128 factors x 15 iterations), gate, save; wall, peak RSS (the process's own), phases, and
            implicit's own `AlternatingLeastSquares.fit` call timed inside it on the same matrix: the
            floor a retrain is judged against
  fit       up to --direct-max-users: that fit again in a process of its own (the matrix read with the
            same reader, then `fit` timed alone, BLAS pinned the same way), a check of the above
  warm      `recsys retrain --once` again, the cold model now serving: a warm start

and reports wall / implicit's fit (same run), read + decode records/s, and the warm start's time and
iterations.
Then, on each real dataset: a model trained on the first 80% of the events serves; the retrain on
all of them is run cold and warm, interleaved, one seed per repeat: the time saved (medians) and
held-out MAP@10 of each on the same cases (--holdout of the users), warm over cold with a 95%
interval from the paired per-case differences, next to two cold seeds' own difference.

    python -m bench.retrain --users 100000,300000,1000000 [--quick] [--output bench/out/retrain.json]
                            [--plot docs/img/bench-retrain.png] [--items 1100000]

--items N draws the users' items from a catalogue of N synthetic ids instead of the Taobao slice's
41,887 (the history lengths stay real): a big catalogue's retrain, whose gate builds the approximate
index from `scoring.ann_min_items` items on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, median, plot_setup, write_json

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4


def _run_json(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[dict[str, Any], float]:
    """Run a child process; its last JSON line on stdout, and its wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-3:])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]), wall


def child_env(bootstrap: str, app_id: str, model_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    from recsys.config import child_env as inherited

    # this run's settings only: none of the caller's STREAMREC_* (its bootstrap, model dir, ...)
    env = {k: v for k, v in inherited().items() if not k.startswith("STREAMREC_")}
    env.update(
        STREAMREC_BOOTSTRAP=bootstrap,
        STREAMREC_APP_ID=app_id,
        STREAMREC_MODEL_DIR=str(model_dir),
        STREAMREC_MODEL_UPDATES_TOPIC=f"{app_id}-models",
        STREAMREC_LOG_LEVEL="info",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)  # the caller's settings win (bench.scale passes its run's topic names too)
    return env


def fit_only(bootstrap: str, topic: str) -> dict[str, Any]:
    """(child) The retrain's matrix, then implicit's own fit on it, timed alone."""
    from dataclasses import replace

    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from recsys.config import load_config
    from recsys.model.threads import pin_blas_threads
    from streaming.jobs.retrain import peak_rss_mb, read_changelog

    pin_blas_threads()
    cfg = load_config()
    tcfg = cfg.train
    data = read_changelog(replace(cfg.stream, bootstrap=bootstrap), cfg.confidence, topic)
    rss_read = peak_rss_mb()
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
        als.fit(data.matrix, show_progress=False)
    return {
        "fit_s": time.perf_counter() - t,
        "users": data.users,
        "items": len(data.items),
        "nnz": int(data.matrix.nnz),
        "csr_mb": (data.matrix.data.nbytes + data.matrix.indices.nbytes + data.matrix.indptr.nbytes) / 1e6,
        "peak_rss_mb_after_read": rss_read,
        "peak_rss_mb": peak_rss_mb(),
    }


def one_size(
    bootstrap: str,
    n_users: int,
    lengths,
    items,
    tmp: Path,
    extra_env: dict[str, str],
    timeout: float,
    direct_max: int,
    cold_iterations: int | None = None,
):
    from bench.state import produce_changelog
    from recsys.model.store import ModelStore
    from streaming.kafka.admin import ensure_topics

    app_id = f"bretrain{n_users}x{uuid.uuid4().hex[:6]}"
    topic = f"{app_id}-user-state-changelog"
    ensure_topics(bootstrap, {topic: PARTITIONS}, config={"cleanup.policy": "compact"})
    ensure_topics(bootstrap, {f"{app_id}-models": 1})
    prod = produce_changelog(bootstrap, topic, n_users, lengths, items, seed=1)
    print(f"{n_users:,} users: {prod['mb']:.0f} MB of state records produced in {prod['seconds']:.0f} s", flush=True)
    models = tmp / f"models-{n_users}"
    env = child_env(bootstrap, app_id, models, extra_env)
    retrain = [sys.executable, "-m", "streaming.cli.main", "retrain", "--once"]
    cold_env = {**env, "STREAMREC_TRAIN_WARM_START": "0"}
    warm_env = env
    if cold_iterations:
        # Fewer iterations cold (a large size in the time there is). From such an unconverged base a
        # warm start would iterate on towards convergence (a 3-iteration base at 1M: 11 more), which is
        # no longer a warm start's cost; capped at the same count, it runs what a warm start from a
        # converged model runs (train.min_iterations, 3).
        cold_env["STREAMREC_TRAIN_ITERATIONS"] = str(cold_iterations)
        warm_env = {**env, "STREAMREC_TRAIN_ITERATIONS": str(cold_iterations)}
    cold, cold_wall = _run_json(retrain, cold_env, timeout)
    print(
        f"  cold retrain: {cold['result']} in {cold_wall:.1f} s wall, peak RSS {cold['peak_rss_mb']:.0f} MB; "
        f"phases {cold['phases']}",
        flush=True,
    )
    store = ModelStore(models)
    cold_fit = store.metadata(cold["version"])["fit"]
    print(
        f"  implicit's own fit inside it: {cold_fit['implicit_fit_s']:.1f} s ({cold_fit['iterations']} iterations)",
        flush=True,
    )
    direct: dict[str, Any] = {}
    if n_users <= direct_max:
        direct, _ = _run_json([sys.executable, "-m", "bench.retrain", "--fit-only", topic], env, timeout)
        print(
            f"  implicit's own fit on the same matrix in a process of its own ({direct['users']:,} x "
            f"{direct['items']:,}, nnz {direct['nnz']:,}): {direct['fit_s']:.1f} s, peak RSS "
            f"{direct['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    warm, warm_wall = _run_json(retrain, warm_env, timeout)
    warm_fit = store.metadata(warm["version"])["fit"] if warm.get("version") else {}
    print(
        f"  warm retrain: {warm['result']} in {warm_wall:.1f} s wall ({warm_fit.get('iterations')} iterations), "
        f"peak RSS {warm['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    records = cold["phases"].get("records") or n_users
    read_s = cold["phases"]["read_decode_s"]
    meta = store.metadata(cold["version"])
    nnz = int(meta["nnz"])
    csr_mb = (nnz * 8 + (meta["n_users"] + 1) * 8) / 1e6  # int32 indices + float32 data + int64 indptr
    fit_s = cold_fit["implicit_fit_s"]
    row = {
        "users": n_users,
        "changelog_mb": prod["mb"],
        "produce_s": prod["seconds"],
        "nnz": nnz,
        "items": meta["n_items"],
        "csr_mb": csr_mb,
        "cold": {**cold, "wall_s": cold_wall, "fit": cold_fit},
        "implicit_fit_s": fit_s,
        "direct": direct,
        "warm": {**warm, "wall_s": warm_wall, "fit": warm_fit},
        "read_decode_records_per_s": records / read_s if read_s else None,
        "read_records": records,
        "wall_over_fit": cold_wall / fit_s,
        "in_process_over_fit": cold["seconds"] / fit_s,
        "peak_rss_over_csr": cold["peak_rss_mb"] / csr_mb,
    }
    print(
        f"  => wall / fit {row['wall_over_fit']:.2f}x; read + decode {row['read_decode_records_per_s']:,.0f} "
        f"records/s; peak RSS {cold['peak_rss_mb'] / 1024:.2f} GB ({row['peak_rss_over_csr']:.1f}x the CSR); "
        f"warm {warm_wall:.0f} s",
        flush=True,
    )
    return row


CANDIDATES = ("taobao", "yoochoose", "rees46", "retailrocket")


def real_datasets(names: str | None) -> list[str]:
    """The named shared datasets (comma-separated), else every one of CANDIDATES present."""
    from recsys.data.datasets import DATASETS, data_dir

    if names:
        return [n for n in names.split(",") if n]
    found = [c for c in CANDIDATES if (data_dir() / DATASETS[c]).exists()]
    if not found:
        raise SystemExit(f"no real dataset found in {data_dir()} (set STREAMREC_DATA)")
    return found


def _paired(cold: np.ndarray, warm: np.ndarray) -> dict[str, float]:
    """warm's MAP@10 over cold's on the same cases, with a 95% interval from the paired per-case
    differences (the case-to-case spread cancels: only the models' disagreement is noise here)."""
    d = warm - cold
    base = float(cold.mean())
    se = float(d.std() / np.sqrt(len(d))) if len(d) > 1 else 0.0
    if base <= 0:
        return {"ratio": float("nan"), "low": float("nan"), "high": float("nan")}
    return {
        "ratio": float(warm.mean()) / base,
        "low": 1 + (float(d.mean()) - 2 * se) / base,
        "high": 1 + (float(d.mean()) + 2 * se) / base,
    }


def warm_one(name: str, repeats: int, iterations: int | None, holdout: float) -> dict[str, Any]:
    """A model on the first 80% of a real dataset serves; retrain on all of it, cold vs warm, each
    repeat with its own seed (the warm start's base stays the same). Both are judged on the same
    held-out cases (a `holdout` share of the users), per case, so the comparison is paired."""
    from dataclasses import replace

    from recsys.confidence import build_profiles
    from recsys.config import Config, Settings
    from recsys.data.datasets import load_dataset
    from recsys.evaluation.offline import case_average_precisions, case_lists
    from recsys.model.store import ModelStore
    from streaming.jobs.retrain import data_from_profiles, retrain_once

    events = sorted(load_dataset(name, lenient=True), key=lambda e: e.ts)
    cfg = Config()
    if iterations:
        cfg = replace(cfg, train=replace(cfg.train, iterations=iterations))
    ccfg = cfg.confidence
    cut = int(len(events) * 0.8)
    settings = Settings(retrain_holdout_fraction=holdout, retrain_holdout_max=10**9)
    old, new = build_profiles(events[:cut], ccfg), build_profiles(events, ccfg)
    data = data_from_profiles(new, ccfg, settings, name)
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-warm-"))
    runs: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
    aps: dict[str, list[np.ndarray]] = {"cold": [], "warm": []}
    try:
        base = ModelStore(tmp / "base")
        retrain_once(data_from_profiles(old, ccfg, settings, name), base, settings, config=cfg)
        for r in range(repeats):
            seed = (cfg.train.random_state or 0) + r
            for mode in ("cold", "warm"):
                store = ModelStore(tmp / f"{mode}{r}")
                shutil.copytree(base.root, store.root)
                c = replace(cfg, train=replace(cfg.train, warm_start=mode == "warm", random_state=seed))
                res = retrain_once(data, store, replace(settings, retrain_tolerance=0.99), config=c)
                if res.version is None:
                    raise RuntimeError(f"{name} {mode} retrain published nothing: {res.gate}")
                meta = store.metadata(res.version)
                model = store.load(res.version)
                aps[mode].append(case_average_precisions(case_lists(model, data.cases, ccfg, cfg.scoring), data.cases))
                runs[mode].append(
                    {"fit_s": res.phases["fit_s"], "iterations": meta["fit"].get("iterations"), "seed": seed}
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cold, warm = np.mean(aps["cold"], axis=0), np.mean(aps["warm"], axis=0)
    out: dict[str, Any] = {"dataset": name, "events": len(events), "users": data.users, "cases": len(data.cases)}
    for mode in runs:
        out[mode] = {k: median([x[k] for x in runs[mode]]) for k in ("fit_s", "iterations")}
        out[mode]["map10"] = float(np.mean(aps[mode]))
        out[mode]["runs"] = runs[mode]
    out["speedup"] = out["cold"]["fit_s"] / out["warm"]["fit_s"]
    out["map10"] = _paired(cold, warm)
    # how far one cold model is from another by its seed alone: the floor any "equal" is read against
    out["seed_floor"] = _paired(aps["cold"][0], aps["cold"][1]) if repeats > 1 else None
    out["aps"] = {"cold": cold.tolist(), "warm": warm.tolist()}
    m = out["map10"]
    floor = out["seed_floor"]
    print(
        f"warm start on {name} ({len(events):,} events, {data.users:,} users, {len(data.cases):,} held-out cases): "
        f"cold {out['cold']['fit_s']:.2f} s / {out['cold']['iterations']} iterations, MAP@10 "
        f"{out['cold']['map10']:.4f}; warm {out['warm']['fit_s']:.2f} s / {out['warm']['iterations']} iterations, "
        f"MAP@10 {out['warm']['map10']:.4f} => {out['speedup']:.2f}x faster, MAP@10 warm/cold {m['ratio']:.3f} "
        f"[{m['low']:.3f}, {m['high']:.3f}]"
        + (f"; cold seed vs seed {floor['ratio']:.3f} [{floor['low']:.3f}, {floor['high']:.3f}]" if floor else ""),
        flush=True,
    )
    return out


def warm_on_real(names: str | None, repeats: int, iterations: int | None, holdout: float) -> dict[str, Any]:
    """warm_one on each real dataset; pooled, every held-out case of every dataset weighs the same."""
    per = [warm_one(n, repeats, iterations, holdout) for n in real_datasets(names)]
    cold = np.concatenate([np.asarray(r["aps"]["cold"]) for r in per])
    warm = np.concatenate([np.asarray(r["aps"]["warm"]) for r in per])
    pooled = _paired(cold, warm)
    speedup = median([r["speedup"] for r in per])
    print(
        f"warm start, {len(per)} datasets pooled ({len(cold):,} cases): MAP@10 warm/cold {pooled['ratio']:.3f} "
        f"[{pooled['low']:.3f}, {pooled['high']:.3f}], median speed-up {speedup:.2f}x",
        flush=True,
    )
    for r in per:
        del r["aps"]  # the report keeps the figures, not every case
    return {"datasets": per, "pooled": pooled, "cases": len(cold), "speedup": speedup}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", default="100000,300000,1000000", help="comma-separated user counts")
    ap.add_argument("--quick", action="store_true", help="2,000 users, 2 iterations, 32 factors: checks it runs")
    ap.add_argument(
        "--data", help="real datasets for the warm-start comparison, comma-separated (default: every shared one)"
    )
    ap.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="share of users held out in the warm-start comparison (more cases than the retrain's 1%%: a tighter "
        "interval; default 0.2)",
    )
    ap.add_argument("--repeats", type=int, help="repeats of the real-data warm/cold comparison (default 3; quick 1)")
    ap.add_argument("--output", default="bench/out/retrain.json")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--timeout", type=float, default=7200, help="per child process (seconds)")
    ap.add_argument(
        "--direct-max-users",
        type=int,
        default=300_000,
        help="up to this many users, also time implicit's fit in a process of its own on the same matrix "
        "(a check of the fit timed inside the retrain; default 300,000)",
    )
    ap.add_argument(
        "--cold-iterations",
        type=int,
        help="iterations of the cold run (default: the model's, 15), and the warm run's cap (a warm start from a "
        "converged model runs train.min_iterations, 3). At 10M users a full cold fit is over an hour here: a "
        "shorter one still shows its memory, and its wall / fit ratio is an upper bound of the full fit's (the "
        "fixed costs weigh more)",
    )
    ap.add_argument("--skip-real", action="store_true", help="skip the warm-start comparison on real data")
    ap.add_argument("--items", type=int, help="a catalogue of this many synthetic item ids (default: Taobao's)")
    ap.add_argument("--fit-only", metavar="TOPIC", help=argparse.SUPPRESS)
    ap.add_argument("--report", metavar="JSON", help="print the table (and --plot) of an earlier run's JSON")
    args = ap.parse_args(argv)
    if args.report:
        done = json.loads(Path(args.report).read_text())
        print(table(done))
        if args.plot:
            plot(done, args.plot)
        return done
    if args.fit_only:
        from recsys.config import load_config

        res = fit_only(load_config().stream.bootstrap, args.fit_only)
        print(json.dumps(res), flush=True)
        return res

    from bench.state import real_shape
    from devtools.broker import broker_from_env
    from recsys.model.threads import pin_blas_threads

    pin_blas_threads()
    sizes = [2000] if args.quick else [int(x) for x in args.users.split(",") if x]
    extra = (
        {"STREAMREC_TRAIN_ITERATIONS": "2", "STREAMREC_TRAIN_FACTORS": "32", "STREAMREC_TRAIN_MIN_ITERATIONS": "1"}
        if args.quick
        else {}
    )
    t_all = time.time()
    lengths, items = real_shape()
    if args.items:
        items = [str(1_000_000 + i) for i in range(args.items)]
    report: dict[str, Any] = {"bench": "retrain", "quick": args.quick, "machine": machine(), "sizes": []}
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-retrain-"))
    broker = broker_from_env(tmp / "kafka")
    try:
        broker.start(timeout=300)  # a loaded machine can take minutes
        for n in sizes:
            report["sizes"].append(
                one_size(
                    broker.bootstrap,
                    n,
                    lengths,
                    items,
                    tmp,
                    extra,
                    args.timeout,
                    args.direct_max_users,
                    args.cold_iterations,
                )
            )
            write_json(args.output, report)
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if not args.skip_real:
        report["warm_real"] = warm_on_real(
            args.data or ("taobao_small" if args.quick else None),
            args.repeats or (1 if args.quick else 3),
            2 if args.quick else None,
            args.holdout,
        )
    report["seconds"] = round(time.time() - t_all, 1)
    write_json(args.output, report)
    print(table(report))
    if args.plot:
        plot(report, args.plot)
    print(f"retrain bench done in {report['seconds']} s -> {args.output}")
    return report


def table(report: dict[str, Any]) -> str:
    rows = [
        "| users | nnz | cold wall | peak RSS | read+decode | fit | gate | save | records/s | implicit fit (iterations) | "
        "wall / fit | warm wall (iterations) | warm peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(report["sizes"], key=lambda r: r["users"]):
        c, w, ph = r["cold"], r["warm"], r["cold"]["phases"]
        rows.append(
            f"| {r['users']:,} | {r['nnz']:,} | {c['wall_s']:.1f} s | {c['peak_rss_mb'] / 1024:.2f} GB | "
            f"{ph['read_decode_s']:.1f} s | {ph['fit_s']:.1f} s | {ph['gate_s']:.1f} s | {ph['save_s']:.1f} s | "
            f"{r['read_decode_records_per_s']:,.0f} | {r['implicit_fit_s']:.1f} s ({c['fit'].get('iterations')}) | "
            f"{r['wall_over_fit']:.2f}x | "
            f"{w['wall_s']:.1f} s ({w['fit'].get('iterations')}) | {w['peak_rss_mb'] / 1024:.2f} GB |"
        )
    return "\n".join(rows)


def plot(report: dict[str, Any], path: str) -> None:
    plt = plot_setup()
    rs = sorted(report["sizes"], key=lambda r: r["users"])
    users = [r["users"] for r in rs]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    # per iteration: comparable across sizes whose cold run had fewer iterations (--cold-iterations)
    per_it = [r["implicit_fit_s"] / max(r["cold"]["fit"].get("iterations") or 1, 1) for r in rs]
    rss = [r["cold"]["peak_rss_mb"] / 1024 for r in rs]

    def linear(ys: list[float]) -> list[float]:
        """y proportional to users through the smallest size: what "linear in users" looks like."""
        return [ys[0] * u / users[0] for u in users]

    ax[0].plot(users, per_it, "o-", label="cold fit, per iteration")
    ax[0].plot(users, [r["warm"]["wall_s"] for r in rs], "s-", label="warm retrain, whole (wall)")
    ax[0].plot(users, linear(per_it), ":", color="#999", label="linear in users")
    ax[0].set(xlabel="users", ylabel="seconds", title="retrain time")
    ax[0].legend(fontsize=8)
    ax[1].plot(users, rss, "o-", label="retrain peak RSS")
    ax[1].plot(users, [r["csr_mb"] / 1024 for r in rs], "^--", color="#999", label="the CSR itself")
    ax[1].plot(users, linear(rss), ":", color="#999", label="linear in users")
    ax[1].axhline(4, color="r", ls=":", label="target at 1M: 4 GB")
    if max(users) >= 10_000_000:
        ax[1].axhline(20, color="m", ls=":", label="target at 10M: 20 GB")
    ax[1].set(xlabel="users", ylabel="GB", title="retrain memory")
    ax[1].legend(fontsize=8)
    from matplotlib.ticker import FuncFormatter, NullFormatter

    def count(x: float, _: object) -> str:
        return f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k"

    for a in ax:  # log-log: sizes span 100x, and a straight line of slope 1 is linear growth
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xticks(users)
        a.xaxis.set_major_formatter(FuncFormatter(count))
        a.xaxis.set_minor_formatter(NullFormatter())
        a.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        a.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}" if f"{y:g}"[0] in "25" else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
