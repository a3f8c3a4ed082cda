"""State benchmark: bytes per user in RocksDB, a worker's memory with many users, changelog restore.

Users get realistic histories: the number of distinct items per user and the item ids are
drawn from the largest real dataset (Taobao, ../shared/data) and encoded with the worker's own
codec (streaming/worker/state.py), with the default 20-item history and a 10-item last list (with its scores, source and query).

  A. RocksDB (rocksdict, as Faust's store): --users records written, flushed and compacted;
     bytes per user on disk and encoded, for the realistic mix and for exactly 50 items a user.
  B. Restore: the same records produced to a worker's state changelog topic (what the workers
     write), then a real worker (`python -m streaming.cli.main worker`) started on an empty data dir
     (a lost disk, a new machine): time from start until it answers a probe event (restored and
     serving), records/s, the changelog-reading phase alone (from the worker's log), and the
     worker's resident memory then, against the same worker with no users.
  C. Restart: that worker stopped (SIGTERM) and started again on its own data dir, --restarts
     times, each after an empty worker's start (the baseline): time to serving, and how many
     changelog records lay past the offsets persisted in its RocksDB (what Faust replays; read
     from the data dir before each start) and whether its log shows any changelog read.

    python -m bench.state [--quick] [--users N] [--restore-users N] [--restarts 3] [--output bench/out/state.json]

`--users 0` skips A. STREAMREC_BULK_RESTORE=0 in the environment makes the workers restore
through Faust's own per-record recovery (streaming/worker/restore.py), for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import cast

import numpy as np

from bench.common import machine, median, plot_setup, rss_bytes, tree_bytes, worker_process, write_json

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4


def real_shape(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Distinct items per user and the item ids, from the largest real dataset (or a fallback)."""
    try:
        from recsys.data.datasets import load_dataset

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


def make_records(
    n_users: int,
    lengths: np.ndarray,
    items: list[str],
    fixed_len: int | None = None,
    seed: int = 0,
    max_items: int = 200,
):
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
    from streaming.worker.state import UserState, encode

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
        # the rest of the last message (state format 2): scores, source, the query item, times, partition
        st.last_scores = sorted(rng.random(10).tolist(), reverse=True)
        st.last_source, st.last_query = "blend", p.history[-1]
        st.last_event_ts, st.last_ingest_ts, st.last_partition = ts, ts + 12, int(rng.integers(0, PARTITIONS))
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
    from streaming.worker.state import decode

    for i in range(0, n_users, max(1, n_users // 20_000)):
        decode(cast(bytes, db[f"u{1_000_000_000 + i}".encode()]))  # rocksdict's stub: Any | None; a miss raises
    read_n = len(range(0, n_users, max(1, n_users // 20_000)))
    read_s = time.perf_counter() - t1
    db.close()
    disk = tree_bytes(path)
    shutil.rmtree(path, ignore_errors=True)
    return {
        "users": n_users,
        "items_per_user": fixed_len or "real mix",
        "encoded_bytes_per_user": raw / n_users,
        "disk_bytes_per_user": disk / n_users,
        "disk_mb": disk / 1e6,
        "write_users_per_s": n_users / write_s,
        "read_decode_us": read_s / read_n * 1e6,
    }


def produce_changelog(bootstrap: str, topic: str, n_users: int, lengths, items, seed: int) -> dict:
    """The records into the changelog topic, partitioned by key as Faust's producer does
    (murmur2), in record batches built by aiokafka's C builder (per-record sends through a
    Python producer took ~0.5 ms a record here: 10 minutes for 1M users)."""
    return asyncio.run(_produce_changelog(bootstrap, topic, make_records(n_users, lengths, items, None, seed)))


async def _produce_changelog(bootstrap: str, topic: str, records) -> dict:
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    prod = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=1 << 20, client_id="bench-state"
    )
    await prod.start()
    t0 = time.perf_counter()
    n = total = 0
    try:
        parts = sorted(await prod.partitions_for(topic))
        partition_of = DefaultPartitioner()
        batches = {p: prod.create_batch() for p in parts}
        inflight: list = []
        for key, value in records:
            p = partition_of(key, parts, parts)
            while batches[p].append(key=key, value=value, timestamp=None) is None:  # full: send it
                inflight.append(await prod.send_batch(batches[p], topic, partition=p))
                batches[p] = prod.create_batch()
                if len(inflight) >= 64:
                    await asyncio.gather(*inflight)
                    inflight = []
            n += 1
            total += len(key) + len(value)
        for p, b in batches.items():
            if b.record_count():
                inflight.append(await prod.send_batch(b, topic, partition=p))
        await asyncio.gather(*inflight)
    finally:
        await prod.stop()
    return {"records": n, "mb": total / 1e6, "seconds": time.perf_counter() - t0}


def start_worker(
    bootstrap: str,
    name: str,
    tmp: Path,
    model_dir: Path,
    data_dir: Path | None = None,
    tag: str = "",
    extra_env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], Path]:
    """A real worker process; JSON logs at info level in tmp/<name><tag>.log (the recovery phases
    are read from them, see recovery_phases). Returns the process and its log's path."""
    from devtools.broker import free_port

    cmd, env = worker_process(
        bootstrap,
        name,
        free_port(),
        data_dir or tmp / f"{name}-data",
        model_dir,
        PARTITIONS,
        {"STREAMREC_LOG_LEVEL": "info", "STREAMREC_LOG_FORMAT": "json", **(extra_env or {})},
    )
    log_path = tmp / f"{name}{tag}.log"
    with open(log_path, "ab") as log:  # the worker keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return proc, log_path


def time_to_serve(bootstrap: str, name: str, proc, timeout: float, t0: float | None = None) -> float:
    """Seconds from t0 (default now) until the worker answers a probe event on its
    recommendations topic. Probe users are new each call and only answers published after the
    call began count, so the same app can be timed again (a restart)."""
    from kafka import KafkaConsumer, TopicPartition

    from streaming.jobs.replay import make_producer

    t0 = time.time() if t0 is None else t0
    prefix = f"probe-{uuid.uuid4().hex[:8]}-"
    prod = make_producer(bootstrap, {"linger_ms": 0, "client_id": "bench-state-probe"})
    cons = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
    )
    topic = f"{name}-recs"
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    cons.assign(tps)
    cons.seek_to_end(*tps)
    for tp in tps:
        cons.position(tp)  # resolve the end now: earlier answers (an earlier start) do not count
    want = prefix.encode()
    try:
        k = 0
        while time.time() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited with {proc.returncode}")
            user = f"{prefix}{k}"
            prod.send(
                f"{name}-clicks",
                key=user.encode(),
                value=json.dumps(
                    {"user": user, "item": "probe", "type": "view", "ts": int(time.time() * 1000)}
                ).encode(),
            )
            prod.flush()
            end = time.time() + 1.0
            while time.time() < end:
                for recs in cons.poll(timeout_ms=100).values():
                    if any(r.key and r.key.startswith(want) for r in recs):
                        return time.time() - t0
            k += 1
        raise TimeoutError(f"worker {name} did not serve within {timeout}s")
    finally:
        prod.close(timeout=5)
        cons.close()


PHASES = {
    "bulk_started": "Restoring state from changelog topics (bulk)",
    "bulk_done": "Bulk-loaded",
    "restore_started": "Restoring state from changelog topics...",
    "restore_done": "Done reading from changelog",
    "worker_ready": "Worker ready",
}


def recovery_phases(log_path: Path, t_start: float) -> dict:
    """Seconds after process start at which the worker logged each recovery phase (first
    occurrence): the bulk load (streaming/worker/restore.py), then Faust's own record-by-record
    recovery; a phase is absent when there was nothing for it to read from the changelog."""
    import calendar

    out: dict = {}
    for line in Path(log_path).read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        msg = str(rec.get("message", ""))
        for key, pat in PHASES.items():
            if key not in out and pat in msg:
                ts = rec["ts"]  # 2026-01-01T00:00:00.123Z (UTC)
                t = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000
                out[key] = round(t - t_start, 3)
    return out


def changelog_tail(bootstrap: str, topic: str, data_dir: Path) -> dict:
    """What a worker starting on data_dir will replay: per changelog partition, the offset Faust
    persisted in the partition's RocksDB (key "__faust\\0offset__") against the topic's last offset.
    Read with the worker stopped (RocksDB allows one writer)."""
    from kafka import KafkaConsumer, TopicPartition
    from rocksdict import AccessType, Options, Rdict

    cons = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        ends = cons.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    finally:
        cons.close()
    parts = {}
    for p in range(PARTITIONS):
        found = sorted(data_dir.rglob(f"*-{p}.db"))
        persisted = None
        if found:
            db = Rdict(str(found[0]), options=Options(raw_mode=True), access_type=AccessType.read_only())
            try:
                raw = db.get(b"__faust\0offset__")
            finally:
                db.close()
            persisted = int(raw) if raw is not None else None
        last = ends[TopicPartition(topic, p)] - 1
        parts[p] = {
            "persisted": persisted,
            "last": last,
            "to_replay": last - (persisted if persisted is not None else -1),
        }
    return {"partitions": parts, "records_to_replay": sum(v["to_replay"] for v in parts.values())}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run_worker(
    bootstrap: str,
    name: str,
    tmp: Path,
    model_dir: Path,
    timeout: float,
    tag: str,
    extra_env: dict[str, str] | None = None,
) -> dict:
    """Start a worker on tmp/<name>-data, time it to serving, measure it, stop it (SIGTERM)."""
    t_start = time.time()
    proc, log_path = start_worker(bootstrap, name, tmp, model_dir, tag=tag, extra_env=extra_env)
    try:
        serve_s = time_to_serve(bootstrap, name, proc, timeout, t0=t_start)
        cpu = cpu_seconds(proc.pid)
        time.sleep(1.0)
        rss = rss_bytes(proc.pid)
        data = tree_bytes(tmp / f"{name}-data")
    finally:
        _stop(proc)
    return {
        "start_to_serving_s": serve_s,
        "worker_cpu_s_to_serving": cpu,
        "phases_s": recovery_phases(log_path, t_start),
        "worker_rss_mb": rss / 1e6,
        "worker_data_dir_mb": data / 1e6,
    }


def restore(
    bootstrap: str,
    n_users: int,
    lengths,
    items,
    tmp: Path,
    model_dir: Path,
    seed: int,
    timeout: float,
    restarts_n: int = 0,
    baseline=None,
    extra_env: dict[str, str] | None = None,
) -> dict:
    """n_users state records in a fresh changelog; a worker restores them into an empty data dir
    and serves. Then, restarts_n times: that worker is stopped (SIGTERM) and started again on its
    data dir (the normal restart), each after a call of baseline() (an empty worker's start)."""
    from streaming.kafka.admin import ensure_topics

    name = f"bstate{uuid.uuid4().hex[:6]}"
    changelog = f"{name}-user-state-changelog"
    ensure_topics(
        bootstrap,
        {
            f"{name}-clicks": PARTITIONS,
            f"{name}-recs": PARTITIONS,
            f"{name}-dlq": 1,
            f"{name}-models": 1,
            changelog: PARTITIONS,
        },
        config={"cleanup.policy": "compact"},
    )
    prod = produce_changelog(bootstrap, changelog, n_users, lengths, items, seed) if n_users else None
    out = {
        "users": n_users,
        "changelog": prod,
        **run_worker(bootstrap, name, tmp, model_dir, timeout, "-restore", extra_env),
    }
    out["restore_records_per_s"] = (n_users / out["start_to_serving_s"]) if n_users else None
    ph = out["phases_s"]
    began = [ph[k] for k in ("bulk_started", "restore_started") if k in ph]
    ended = [ph[k] for k in ("bulk_done", "restore_done") if k in ph]
    if n_users and began and ended:
        out["changelog_read_s"] = max(ended) - min(began)
        out["changelog_read_records_per_s"] = n_users / max(1e-3, out["changelog_read_s"])
    restarts, empties = [], []
    for i in range(restarts_n):
        if baseline is not None:  # an empty worker's start, interleaved with the restarts
            empties.append(baseline())
        tail = changelog_tail(bootstrap, changelog, tmp / f"{name}-data")
        again = run_worker(bootstrap, name, tmp, model_dir, timeout, f"-restart{i}", extra_env)
        again["changelog_tail"] = tail
        again["read_changelog"] = any(k in again["phases_s"] for k in ("bulk_started", "restore_started"))
        restarts.append(again)
    if restarts:
        out["restarts"] = restarts
        out["restart_to_serving_s_median"] = median([r["start_to_serving_s"] for r in restarts])
    if empties:
        out["empty_starts"] = empties
    shutil.rmtree(tmp / f"{name}-data", ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--users", type=int, help="users in the RocksDB size test (default 1,000,000; quick 5,000; 0 skips it)"
    )
    ap.add_argument(
        "--restore-users",
        type=int,
        help="users in the changelog restore test and the restarts (default 1,000,000, the target's "
        "size; quick 2,000; 0 skips them)",
    )
    ap.add_argument(
        "--restarts",
        type=int,
        help="restarts of the restored worker on its own data dir, each after an empty worker's "
        "start (default 3; quick 1)",
    )
    ap.add_argument("--output", default="bench/out/state.json")
    ap.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    n_users = args.users if args.users is not None else (5_000 if args.quick else 1_000_000)
    n_restore = args.restore_users if args.restore_users is not None else (2_000 if args.quick else 1_000_000)

    from devtools.broker import broker_from_env
    from recsys.confidence import ConfidenceConfig, build_profiles
    from recsys.data.simulator import SimConfig, simulate
    from recsys.model.store import ModelStore
    from recsys.model.threads import pin_blas_threads
    from recsys.model.train import TrainConfig, train

    pin_blas_threads()
    t_all = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-state-"))
    lengths, items = real_shape()
    print(
        f"history lengths from real data: median {np.median(lengths):.0f}, mean {lengths.mean():.1f}, "
        f"p99 {np.percentile(lengths, 99):.0f} distinct items/user; {len(items)} item ids",
        flush=True,
    )
    report: dict = {
        "bench": "state",
        "quick": args.quick,
        "machine": machine(),
        "history_lengths": {
            "median": float(np.median(lengths)),
            "mean": float(lengths.mean()),
            "p99": float(np.percentile(lengths, 99)),
        },
    }
    broker = None
    try:
        if n_users:
            mix = rocksdb_size(n_users, lengths, items, None, tmp, 1)
            print(
                f"RocksDB, {mix['users']:,} users (real mix): {mix['disk_bytes_per_user']:.0f} B/user on disk, "
                f"{mix['encoded_bytes_per_user']:.0f} B/user encoded; decode {mix['read_decode_us']:.1f} us",
                flush=True,
            )
            n50 = min(n_users, 100_000)
            fifty = rocksdb_size(n50, lengths, items, 50, tmp, 2)
            print(
                f"RocksDB, {n50:,} users x 50 items: {fifty['disk_bytes_per_user']:.0f} B/user on disk "
                f"(target < 2048), {fifty['encoded_bytes_per_user']:.0f} B/user encoded",
                flush=True,
            )
            report["rocksdb"] = {"real_mix": mix, "fifty_items": fifty}
        if n_restore:
            broker = broker_from_env(tmp / "kafka")
            broker.start()
            ccfg = ConfidenceConfig()
            model = train(
                build_profiles(simulate(SimConfig(events=20_000, n_items=5000, seed=3)), ccfg),
                ccfg,
                TrainConfig(factors=64, iterations=5),
            )[0]
            ModelStore(tmp / "models").save(model)

            def empty_start() -> dict:
                return restore(broker.bootstrap, 0, lengths, items, tmp, tmp / "models", 0, 120)

            empty = empty_start()
            print(
                f"worker with no users: serving {empty['start_to_serving_s']:.1f} s after start, "
                f"RSS {empty['worker_rss_mb']:.0f} MB",
                flush=True,
            )
            full = restore(
                broker.bootstrap,
                n_restore,
                lengths,
                items,
                tmp,
                tmp / "models",
                1,
                3600,
                restarts_n=args.restarts if args.restarts is not None else (1 if args.quick else 3),
                baseline=empty_start,
            )
            full["rss_delta_bytes_per_user"] = (full["worker_rss_mb"] - empty["worker_rss_mb"]) * 1e6 / n_restore
            read = (
                (
                    f"; changelog read {full['changelog_read_s']:.1f} s = "
                    f"{full['changelog_read_records_per_s']:,.0f} records/s"
                )
                if "changelog_read_s" in full
                else ""
            )
            print(
                f"worker restoring {n_restore:,} users from the changelog ({full['changelog']['mb']:.0f} MB, "
                f"produced in {full['changelog']['seconds']:.0f} s): serving {full['start_to_serving_s']:.1f} s "
                f"after start ({full['restore_records_per_s']:,.0f} records/s; target < 60 s at 1M){read}, "
                f"RSS {full['worker_rss_mb']:.0f} MB ({full['rss_delta_bytes_per_user']:.0f} B/user over empty), "
                f"data dir {full['worker_data_dir_mb']:.0f} MB",
                flush=True,
            )
            report["restore"] = {
                "empty": empty,
                "full": full,
                "start_to_serving_ratio_vs_empty": full["start_to_serving_s"] / empty["start_to_serving_s"],
            }
            if full.get("restarts"):
                rs, es = full["restarts"], full["empty_starts"]
                replayed = [r["changelog_tail"]["records_to_replay"] for r in rs]
                report["restart"] = {
                    "users": n_restore,
                    "restarts": len(rs),
                    "start_to_serving_s_median": median([r["start_to_serving_s"] for r in rs]),
                    "empty_start_to_serving_s_median": median([e["start_to_serving_s"] for e in [empty, *es]]),
                    "changelog_records_to_replay": replayed,
                    "read_changelog": [r["read_changelog"] for r in rs],
                }
                rr = report["restart"]
                print(
                    f"restart of that worker on its own data dir ({n_restore:,} users, {len(rs)} restarts): serving "
                    f"{rr['start_to_serving_s_median']:.1f} s after start (median; "
                    f"{_secs(rs)}) vs an empty worker "
                    f"{rr['empty_start_to_serving_s_median']:.1f} s "
                    f"({_secs([empty, *es])}); changelog records past the "
                    f"persisted offsets: {replayed}; read the changelog at start: {rr['read_changelog']}",
                    flush=True,
                )
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


def _secs(runs: list[dict]) -> str:
    return ", ".join(f"{r['start_to_serving_s']:.1f}" for r in runs)


def plot(report: dict, path: str) -> None:
    plt = plot_setup()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    r = report.get("rocksdb")
    if r:
        names = ["real mix", "50 items"]
        ax[0].bar(
            names, [r["real_mix"]["disk_bytes_per_user"], r["fifty_items"]["disk_bytes_per_user"]], label="on disk"
        )
        ax[0].bar(
            names,
            [r["real_mix"]["encoded_bytes_per_user"], r["fifty_items"]["encoded_bytes_per_user"]],
            fill=False,
            edgecolor="k",
            label="encoded",
        )
        ax[0].axhline(2048, color="r", ls=":", label="target 2 KB")
        ax[0].set(ylabel="bytes per user", title="RocksDB state size")
        ax[0].legend(fontsize=8)
    else:
        ax[0].axis("off")
    if "restore" in report:
        e, f = report["restore"]["empty"], report["restore"]["full"]
        empty_s = median([r["start_to_serving_s"] for r in [e, *f.get("empty_starts", [])]])
        names, secs = ["empty worker", f"{f['users']:,} users\nfrom changelog"], [empty_s, f["start_to_serving_s"]]
        if "restart" in report:
            names.append(f"{f['users']:,} users\nrestart (local state)")
            secs.append(report["restart"]["start_to_serving_s_median"])
        ax[1].bar(names, secs)
        ax[1].axhline(60, color="r", ls=":", label="target 60 s at 1M")
        ax[1].set(ylabel="start -> serving (s)", title="worker start")
        ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
