"""State benchmark: bytes per user in RocksDB, a worker's memory with many users, changelog restore.

Users get realistic histories: the number of distinct items per user and the item ids are
drawn from the largest real dataset (Taobao, ../shared/data) and encoded with the worker's own
codec (streaming/state.py), with the default 20-item history and a 10-item last list.

  A. RocksDB (rocksdict, as Faust's store): --users records written, flushed and compacted;
     bytes per user on disk and encoded, for the realistic mix and for exactly 50 items a user.
  B. Restore: the same records produced to a worker's state changelog topic (what the workers
     write), then a real worker (`python -m streaming.cli worker`) started on an empty data dir:
     time from start until it answers a probe event (restored and serving), records/s, and the
     worker's resident memory then, against the same worker with no users.

    python -m bench.state [--quick] [--users N] [--restore-users N] [--output bench/out/state.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench.common import machine, plot_setup, rss_bytes, tree_bytes, write_json

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4


def real_shape(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Distinct items per user and the item ids, from the largest real dataset (or a fallback)."""
    try:
        from recsys.datasets import load_dataset

        events = load_dataset("taobao")
        per_user: dict[str, set] = {}
        for e in events:
            per_user.setdefault(e.user, set()).add(e.item)
        lengths = np.array([len(s) for s in per_user.values()])
        items = sorted({e.item for e in events})
        return lengths, items
    except Exception as e:  # noqa: BLE001 - no shared data: say so, use a log-normal stand-in
        print(f"real dataset unavailable ({e}); using log-normal history lengths", file=sys.stderr)
        rng = np.random.default_rng(seed)
        return np.maximum(1, rng.lognormal(2.3, 1.0, 10_000).astype(int)), [str(1_000_000 + i) for i in range(100_000)]


POOL = 50_000  # distinct synthetic users; more users reuse their records under new keys


def make_records(n_users: int, lengths: np.ndarray, items: list[str], fixed_len: int | None = None,
                 seed: int = 0, max_items: int = 200):
    """Yield (key, encoded state) for n_users synthetic users shaped like the real ones (the first
    POOL are generated, then reused under new keys: building records in Python is the slow part)."""
    pool: list[bytes] = []
    for u, (_, value) in enumerate(_records(min(n_users, POOL), lengths, items, fixed_len, seed, max_items)):
        pool.append(value)
        yield f"u{1_000_000_000 + u}".encode(), value
    for u in range(len(pool), n_users):
        yield f"u{1_000_000_000 + u}".encode(), pool[(u * 7919) % len(pool)]


def _records(n_users: int, lengths: np.ndarray, items: list[str], fixed_len: int | None, seed: int, max_items: int):
    from recsys.confidence import ItemState
    from streaming.state import UserState, encode

    rng = np.random.default_rng(seed)
    n_items = len(items)
    base_ts = 1_700_000_000_000
    for u in range(n_users):
        k = fixed_len or int(min(max_items, lengths[rng.integers(len(lengths))]))
        rows = rng.integers(0, n_items, k)
        st = UserState()
        p = st.profile
        ts = base_ts + int(rng.integers(0, 86_400_000 * 30))
        for j, r in enumerate(rows):
            p.items[items[r]] = ItemState(float(0.25 * (1 + (j % 4))), ts - 60_000 * (k - j), 1 << (j % 3))
        p.last_ts, p.offset, p.events = ts, int(rng.integers(0, 10_000_000)), k + int(rng.integers(0, 10))
        p.history = [items[r] for r in rows[-20:]]
        st.last_items = [items[r] for r in rng.integers(0, n_items, 10)]
        st.last_version, st.last_published_ms = "20260101T000000Z-abcdef", ts
        yield f"u{1_000_000_000 + u}".encode(), encode(st)


def rocksdb_size(n_users: int, lengths, items, fixed_len: int | None, tmp: Path, seed: int) -> dict:
    from rocksdict import Rdict

    path = tmp / f"db-{fixed_len or 'mix'}-{uuid.uuid4().hex[:6]}"
    db = Rdict(str(path))
    t0 = time.perf_counter()
    raw = 0
    for key, value in make_records(n_users, lengths, items, fixed_len, seed):
        db[key] = value
        raw += len(key) + len(value)
    write_s = time.perf_counter() - t0
    db.flush()
    db.compact_range(None, None)
    # read back a sample, as a serving worker does
    t1 = time.perf_counter()
    from streaming.state import decode

    for i in range(0, n_users, max(1, n_users // 20_000)):
        decode(db[f"u{1_000_000_000 + i}".encode()])
    read_n = len(range(0, n_users, max(1, n_users // 20_000)))
    read_s = time.perf_counter() - t1
    db.close()
    disk = tree_bytes(path)
    shutil.rmtree(path, ignore_errors=True)
    return {"users": n_users, "items_per_user": fixed_len or "real mix", "encoded_bytes_per_user": raw / n_users,
            "disk_bytes_per_user": disk / n_users, "disk_mb": disk / 1e6, "write_users_per_s": n_users / write_s,
            "read_decode_us": read_s / read_n * 1e6}


def produce_changelog(bootstrap: str, topic: str, n_users: int, lengths, items, seed: int) -> dict:
    from streaming.replay import make_producer

    p = make_producer(bootstrap, {"linger_ms": 20, "batch_size": 512 * 1024, "compression_type": None,
                                  "client_id": "bench-state"})
    t0 = time.perf_counter()
    total = 0
    for key, value in make_records(n_users, lengths, items, None, seed):
        p.send(topic, key=key, value=value)
        total += len(key) + len(value)
    p.flush()
    p.close(timeout=10)
    return {"records": n_users, "mb": total / 1e6, "seconds": time.perf_counter() - t0}


def start_worker(bootstrap: str, name: str, tmp: Path, model_dir: Path):
    from streaming.broker import free_port

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "STREAMREC_APP_ID": name,
           "STREAMREC_CLICKSTREAM_TOPIC": f"{name}-clicks", "STREAMREC_RECOMMENDATIONS_TOPIC": f"{name}-recs",
           "STREAMREC_DLQ_TOPIC": f"{name}-dlq", "STREAMREC_MODEL_UPDATES_TOPIC": f"{name}-models",
           "STREAMREC_PARTITIONS": str(PARTITIONS), "STREAMREC_LOG_LEVEL": "warning"}
    log = open(tmp / f"{name}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "streaming.cli", "worker", "--bootstrap", bootstrap,
                             "--web-port", str(port), "--data-dir", str(tmp / f"{name}-data"),
                             "--model-dir", str(model_dir)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return proc, log


def time_to_serve(bootstrap: str, name: str, proc, timeout: float) -> float:
    """Seconds from now until the worker answers a probe event on its recommendations topic."""
    from kafka import KafkaConsumer, TopicPartition

    from streaming.replay import make_producer

    t0 = time.time()
    prod = make_producer(bootstrap, {"linger_ms": 0, "client_id": "bench-state-probe"})
    cons = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                         enable_auto_commit=False, fetch_max_wait_ms=20)
    topic = f"{name}-recs"
    cons.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
    try:
        k = 0
        while time.time() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited with {proc.returncode}")
            user = f"probe-{k}"
            prod.send(f"{name}-clicks", key=user.encode(), value=json.dumps(
                {"user": user, "item": "probe", "type": "view", "ts": int(time.time() * 1000)}).encode())
            prod.flush()
            end = time.time() + 1.0
            while time.time() < end:
                for recs in cons.poll(timeout_ms=100).values():
                    if any(r.key and r.key.startswith(b"probe-") for r in recs):
                        return time.time() - t0
            k += 1
        raise TimeoutError(f"worker {name} did not serve within {timeout}s")
    finally:
        prod.close(timeout=5)
        cons.close()


def restore(bootstrap: str, n_users: int, lengths, items, tmp: Path, model_dir: Path, seed: int,
            timeout: float) -> dict:
    from streaming.topics import ensure_topics

    name = f"bstate{uuid.uuid4().hex[:6]}"
    changelog = f"{name}-user-state-changelog"
    ensure_topics(bootstrap, {f"{name}-clicks": PARTITIONS, f"{name}-recs": PARTITIONS, f"{name}-dlq": 1,
                              f"{name}-models": 1, changelog: PARTITIONS}, config={"cleanup.policy": "compact"})
    prod = produce_changelog(bootstrap, changelog, n_users, lengths, items, seed) if n_users else None
    proc, log = start_worker(bootstrap, name, tmp, model_dir)
    try:
        serve_s = time_to_serve(bootstrap, name, proc, timeout)
        time.sleep(1.0)
        rss = rss_bytes(proc.pid)
        data = tree_bytes(tmp / f"{name}-data")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return {"users": n_users, "changelog": prod, "start_to_serving_s": serve_s,
            "restore_records_per_s": (n_users / serve_s) if n_users else None,
            "worker_rss_mb": rss / 1e6, "worker_data_dir_mb": data / 1e6}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--users", type=int, help="users in the RocksDB size test (default 1,000,000; quick 5,000)")
    ap.add_argument("--restore-users", type=int,
                    help="users in the changelog restore test (default 100,000; quick 2,000; 0 skips it)")
    ap.add_argument("--output", default="bench/out/state.json")
    ap.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    n_users = args.users or (5_000 if args.quick else 1_000_000)
    n_restore = args.restore_users if args.restore_users is not None else (2_000 if args.quick else 100_000)

    from recsys.confidence import build_profiles
    from recsys.defaults import CONFIDENCE
    from recsys.simulator import SimConfig, simulate
    from recsys.store import ModelStore
    from recsys.threads import pin_blas_threads
    from recsys.train import TrainConfig, train
    from streaming.broker import broker_from_env

    pin_blas_threads()
    t_all = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-state-"))
    lengths, items = real_shape()
    print(f"history lengths from real data: median {np.median(lengths):.0f}, mean {lengths.mean():.1f}, "
          f"p99 {np.percentile(lengths, 99):.0f} distinct items/user; {len(items)} item ids", flush=True)
    report: dict = {"bench": "state", "quick": args.quick, "machine": machine(),
                    "history_lengths": {"median": float(np.median(lengths)), "mean": float(lengths.mean()),
                                        "p99": float(np.percentile(lengths, 99))}}
    broker = None
    try:
        mix = rocksdb_size(n_users, lengths, items, None, tmp, 1)
        print(f"RocksDB, {mix['users']:,} users (real mix): {mix['disk_bytes_per_user']:.0f} B/user on disk, "
              f"{mix['encoded_bytes_per_user']:.0f} B/user encoded; decode {mix['read_decode_us']:.1f} us", flush=True)
        n50 = min(n_users, 100_000)
        fifty = rocksdb_size(n50, lengths, items, 50, tmp, 2)
        print(f"RocksDB, {n50:,} users x 50 items: {fifty['disk_bytes_per_user']:.0f} B/user on disk "
              f"(target < 2048), {fifty['encoded_bytes_per_user']:.0f} B/user encoded", flush=True)
        report["rocksdb"] = {"real_mix": mix, "fifty_items": fifty}
        if n_restore:
            broker = broker_from_env(tmp / "kafka")
            broker.start()
            model = train(build_profiles(simulate(SimConfig(events=20_000, n_items=5000, seed=3)), CONFIDENCE),
                          CONFIDENCE, TrainConfig(factors=64, iterations=5))[0]
            ModelStore(tmp / "models").save(model)
            empty = restore(broker.bootstrap, 0, lengths, items, tmp, tmp / "models", 0, 120)
            print(f"worker with no users: serving {empty['start_to_serving_s']:.1f} s after start, "
                  f"RSS {empty['worker_rss_mb']:.0f} MB", flush=True)
            full = restore(broker.bootstrap, n_restore, lengths, items, tmp, tmp / "models", 1, 900)
            full["rss_delta_bytes_per_user"] = (full["worker_rss_mb"] - empty["worker_rss_mb"]) * 1e6 / n_restore
            print(f"worker restoring {n_restore:,} users from the changelog ({full['changelog']['mb']:.0f} MB, "
                  f"produced in {full['changelog']['seconds']:.0f} s): serving {full['start_to_serving_s']:.1f} s "
                  f"after start ({full['restore_records_per_s']:,.0f} records/s; target < 60 s at 1M), "
                  f"RSS {full['worker_rss_mb']:.0f} MB ({full['rss_delta_bytes_per_user']:.0f} B/user over empty), "
                  f"data dir {full['worker_data_dir_mb']:.0f} MB", flush=True)
            report["restore"] = {"empty": empty, "full": full,
                                 "start_to_serving_ratio_vs_empty": full["start_to_serving_s"] / empty["start_to_serving_s"]}
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report["seconds"] = round(time.time() - t_all, 1)
    write_json(args.output, report)
    if args.plot:
        plot(report, args.plot)
    print(f"state bench done in {report['seconds']} s -> {args.output}")
    return report


def plot(report: dict, path: str) -> None:
    plt = plot_setup()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    r = report["rocksdb"]
    names = ["real mix", "50 items"]
    ax[0].bar(names, [r["real_mix"]["disk_bytes_per_user"], r["fifty_items"]["disk_bytes_per_user"]], label="on disk")
    ax[0].bar(names, [r["real_mix"]["encoded_bytes_per_user"], r["fifty_items"]["encoded_bytes_per_user"]],
              fill=False, edgecolor="k", label="encoded")
    ax[0].axhline(2048, color="r", ls=":", label="target 2 KB")
    ax[0].set(ylabel="bytes per user", title="RocksDB state size")
    ax[0].legend(fontsize=8)
    if "restore" in report:
        e, f = report["restore"]["empty"], report["restore"]["full"]
        ax[1].bar([f"0 users", f"{f['users']:,} users"], [e["start_to_serving_s"], f["start_to_serving_s"]])
        ax[1].axhline(60, color="r", ls=":", label="target 60 s")
        ax[1].set(ylabel="start -> serving (s)", title="restore from changelog")
        ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
