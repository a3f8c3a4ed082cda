"""The spark engine against the implicit engine: where does `--engine spark` start to pay?

For each user count: that many realistic state records (bench/state.py's shapes: item counts and
ids drawn from the Taobao data, the worker's codec) in a fresh changelog topic of the project's
own broker; then, alternating, each in its own process with an empty model store:

  implicit  `recsys retrain --once --cold`                      (this process reads and trains)
  spark     `recsys retrain --once --engine spark` on local[2]   (Spark reads and trains; 4 GB driver)

Wall time of the whole command (Spark's start-up included), the phases each reports, and the
peak resident memory of the process tree (the Spark driver's JVM and its Python workers summed,
sampled every 0.2 s), the held-out MAP@10 each model scored at the gate; medians of --repeats.

    python -m bench.spark_engine --users 2000,10000,30000 [--factors 128 --iterations 15] [--repeats 1]
                                 [--output bench/out/spark_engine.json]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import machine, median, write_json

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4


def _tree_rss(pid: int) -> int:
    total = 0
    seen: set[int] = set()
    frontier = [pid]
    while frontier:  # descendants, breadth first (a JVM's Python workers are its children)
        p = frontier.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        frontier.extend(int(c) for c in children)
    return total


def run_tree(cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run a command; its last JSON line, wall time and the peak RSS of its process tree."""
    import json

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.2):
            peak = max(peak, _tree_rss(proc.pid))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        done.set()
        th.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-4:])} failed ({proc.returncode}):\n{err[-3000:]}")
    res = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    res.update(wall_s=round(wall, 2), tree_peak_rss_mb=round(peak / 2**20, 1))
    return res


def one_size(bootstrap: str, n_users: int, lengths, items, tmp: Path, extra: dict[str, str], args) -> dict[str, Any]:
    from bench.retrain import child_env
    from bench.state import produce_changelog
    from streaming.kafka.admin import ensure_topics

    app_id = f"bspark{n_users}x{uuid.uuid4().hex[:6]}"
    topic = f"{app_id}-user-state-changelog"
    ensure_topics(bootstrap, {topic: PARTITIONS}, config={"cleanup.policy": "compact"})
    ensure_topics(bootstrap, {f"{app_id}-models": 1})
    prod = produce_changelog(bootstrap, topic, n_users, lengths, items, seed=1)
    print(f"{n_users:,} users: {prod['mb']:.0f} MB of state records produced in {prod['seconds']:.0f} s", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"implicit": [], "spark": []}
    base = [sys.executable, "-m", "streaming.cli.main", "retrain", "--once"]
    cmds = {"implicit": [*base, "--cold"], "spark": [*base, "--engine", "spark", "--spark-master", args.spark_master]}
    for r in range(args.repeats):
        for engine, cmd in cmds.items():
            env = child_env(bootstrap, app_id, tmp / f"models-{n_users}-{engine}-{r}", extra)
            res = run_tree(cmd, env, args.timeout)
            runs[engine].append(res)
            print(
                f"  {engine:<8} {res['result']} in {res['wall_s']:.1f} s, peak RSS (tree) "
                f"{res['tree_peak_rss_mb']:.0f} MB, held-out MAP@10 {res['gate'].get('candidate_map10', float('nan')):.4f}; "
                f"phases {res.get('phases')}",
                flush=True,
            )

    def summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "wall_s": median([r["wall_s"] for r in rs]),
            "tree_peak_rss_mb": median([r["tree_peak_rss_mb"] for r in rs]),
            "map10": median([r["gate"].get("candidate_map10", float("nan")) for r in rs]),
            "phases": rs[-1].get("phases"),
            "runs": rs,
        }

    sums = {e: summary(rs) for e, rs in runs.items()}
    return {
        "users": n_users,
        "produce": prod,
        **sums,
        "spark_over_implicit_wall": sums["spark"]["wall_s"] / sums["implicit"]["wall_s"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", default="2000,10000,30000", help="comma-separated user counts")
    ap.add_argument("--factors", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--spark-master", default="local[2]")
    ap.add_argument("--timeout", type=float, default=7200, help="per child process (seconds)")
    ap.add_argument("--output", default="bench/out/spark_engine.json")
    args = ap.parse_args(argv)

    from bench.state import real_shape
    from devtools.broker import broker_from_env

    sizes = [int(x) for x in args.users.split(",") if x]
    extra = {"STREAMREC_TRAIN_FACTORS": str(args.factors), "STREAMREC_TRAIN_ITERATIONS": str(args.iterations)}
    lengths, items = real_shape()
    report: dict[str, Any] = {
        "bench": "spark_engine",
        "machine": machine(),
        "factors": args.factors,
        "iterations": args.iterations,
        "spark_master": args.spark_master,
        "sizes": [],
    }
    t_all = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-spark-bench-"))
    broker = broker_from_env(tmp / "kafka")
    try:
        broker.start()
        for n in sizes:
            report["sizes"].append(one_size(broker.bootstrap, n, lengths, items, tmp, extra, args))
            write_json(args.output, report)
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report["seconds"] = round(time.time() - t_all, 1)
    write_json(args.output, report)
    print(table(report))
    return report


def table(report: dict[str, Any]) -> str:
    rows = [
        "| users | implicit wall | implicit peak RSS | spark local[2] wall | spark peak RSS (driver JVM + workers) "
        "| spark / implicit | MAP@10 implicit / spark |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["sizes"]:
        i, s = r["implicit"], r["spark"]
        rows.append(
            f"| {r['users']:,} | {i['wall_s']:.1f} s | {i['tree_peak_rss_mb'] / 1024:.2f} GB | {s['wall_s']:.1f} s | "
            f"{s['tree_peak_rss_mb'] / 1024:.2f} GB | {r['spark_over_implicit_wall']:.1f}x | "
            f"{i['map10']:.4f} / {s['map10']:.4f} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
