"""Full-size run: 1M users' state, a 1M+-item catalogue and a 10M-event stream through 2 workers while a retrain runs.

One broker (STREAMREC_BOOTSTRAP if set, else devtools.broker's own Kafka in a temp dir) and, in order:

  seed      --users state records shaped like the real users (bench/state.py: history lengths from
            Taobao, the worker's codec) over --items synthetic item ids, produced into the state
            changelog; a first model ("v0": clustered synthetic factors over the same ids) published
  workers   --workers real worker processes (`python -m streaming.cli.main worker`, one app, own
            data dirs, started empty: they restore their partitions from the changelog)
  stream    --events click events (sessions of the seeded users, Zipf-popular items, 85% views /
            12% carts / 3% buys) produced as fast as the producer goes; the workers drain them
  retrain   once the workers serve and the stream flows: `recsys retrain --once` (cold) on the
            changelog the workers are writing; its wall and peak RSS; the workers swap to it
  restore   the last worker stopped, its data dir deleted, started again: time until it is
            /ready (restored from the changelog) and its recovery phases
  swaps     synthetic models of --swap-items items published and announced one after another
            (the remaining workers swap to each)

Sampled every --sample-s seconds: each worker's consumer lag and events in (its /metrics) and
every process's RSS. A consumer process counts the recommendation lists per second and per
model version. For each swap: announce → "serving model" in the worker's log (load + ANN
build off the event loop), and the lists published in between, by the version that served
them (the old one: the worker never stops serving).

    python -m bench.scale [--quick] [--users 1000000] [--items 1200000] [--events 10000000]
                          [--swap-items 1000000,4000000] [--output bench/out/scale.json]
                          [--plot docs/img/bench-scale.png]
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import json
import multiprocessing as mp
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import clustered_factors, machine, plot_setup, rss_bytes, tree_bytes, worker_process, write_json

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4
USER_BASE = 1_000_000_000  # bench.state's user keys: u<USER_BASE + i>
ITEM_BASE = 1_000_000
BINS = 10  # list arrivals are counted per 1/BINS s


def item_ids(n: int) -> list[str]:
    return [str(ITEM_BASE + i) for i in range(n)]


# ----------------------------------------------------------------------------- the stream
def stream_records(n_events: int, n_users: int, n_items: int, seed: int = 11, chunk: int = 200_000) -> Iterator:
    """(key, value) click events: sessions (geometric length, mean 6) of the seeded users, the
    active users more active (u ~ n·r²), items Zipf-popular (i ~ n·r³); ~200 sessions interleaved
    at a time; ts = the production time."""
    rng = np.random.default_rng(seed)
    kinds = np.array([b"view", b"cart", b"buy"])
    done = 0
    while done < n_events:
        m = min(chunk, n_events - done)
        lens = rng.geometric(1 / 6, m // 3 + 1)
        lens = lens[: np.searchsorted(np.cumsum(lens), m) + 1]
        users = (n_users * rng.random(len(lens)) ** 2).astype(np.int64)
        per_event_user = np.repeat(users, lens)[:m]
        items = np.minimum(n_items - 1, (n_items * rng.random(m) ** 3).astype(np.int64))
        kind = np.searchsorted([0.85, 0.97], rng.random(m))
        # concurrent sessions interleave: each session shifted by up to 1,200 positions (the
        # stable sort keeps a session's own order)
        shift = np.repeat(rng.integers(0, 1200, len(lens)), lens)[:m]
        order = np.argsort(np.arange(m) + shift, kind="stable")
        ts = int(time.time() * 1000)
        for j in order:
            u = f"u{USER_BASE + int(per_event_user[j])}"
            yield (
                u.encode(),
                b'{"user":"%s","item":"%d","type":"%s","ts":%d}'
                % (u.encode(), ITEM_BASE + int(items[j]), kinds[kind[j]], ts),
            )
        done += m


def seed_records(n_users: int, lengths: np.ndarray, items: list[str], seed: int) -> Iterator:
    """bench.state's user states with no input offset (-1, as a batch-built profile): its random
    offsets would make the worker drop this stream's events as already applied."""
    from bench.state import make_records
    from streaming.worker.state import decode, encode

    fixed: dict[int, bytes] = {}  # make_records reuses its first records' values (kept alive): by identity
    for key, value in make_records(n_users, lengths, items, None, seed):
        out = fixed.get(id(value))
        if out is None:
            st = decode(value)
            st.profile.offset = -1
            fixed[id(value)] = out = encode(st)
        yield key, out


def produce(bootstrap: str, topic: str, records: Iterator) -> dict:
    """bench.state's batch producer (aiokafka's C record batches, keys partitioned as Faust's)."""
    from bench.state import _produce_changelog

    return asyncio.run(_produce_changelog(bootstrap, topic, records))


# ----------------------------------------------------------------------------- lists per second per version
def _count_lists(bootstrap: str, topic: str, out: mp.Queue, stop: EventType) -> None:
    """(child) Reads the recommendations topic; every ~0.5 s sends {second: {version: lists}}."""
    from bench.common import topic_reader

    c = topic_reader(bootstrap, topic, stop, fetch_max_wait_ms=50, max_poll_records=5000)
    counts: dict[int, dict[str, int]] = {}
    last = time.time()
    while not stop.is_set():
        got = c.poll(timeout_ms=50)
        for recs in got.values():
            for r in recs:
                # the record's own timestamp (set by the worker's producer), not the arrival here:
                # this consumer falls behind on a loaded machine, and arrival would move lists in time
                sec = int(r.timestamp / 1000 * BINS)
                try:
                    ver = str(json.loads(r.value).get("model_version"))
                except (ValueError, AttributeError):
                    ver = "unreadable"
                row = counts.setdefault(sec, {})
                row[ver] = row.get(ver, 0) + 1
        if counts and time.time() - last > 0.5:
            out.put(counts)
            counts, last = {}, time.time()
    if counts:
        out.put(counts)
    c.close()


class ListCounter:
    def __init__(self, bootstrap: str, topic: str):
        ctx = mp.get_context("spawn")
        self.q, self.stop_ev = ctx.Queue(), ctx.Event()
        self.proc = ctx.Process(target=_count_lists, args=(bootstrap, topic, self.q, self.stop_ev), daemon=True)
        self.proc.start()
        self.per_second: dict[int, dict[str, int]] = {}

    def drain(self) -> None:
        while True:
            try:
                batch = self.q.get_nowait()
            except queue.Empty:
                return
            for sec, row in batch.items():
                mine = self.per_second.setdefault(sec, {})
                for v, n in row.items():
                    mine[v] = mine.get(v, 0) + n

    def between(self, t0: float, t1: float) -> dict[str, Any]:
        """Lists that arrived in [t0, t1] by version, and the 0.1 s bins in it with none."""
        self.drain()
        by: dict[str, int] = {}
        empty = 0
        for sec in range(int(t0 * BINS), int(t1 * BINS) + 1):
            row = self.per_second.get(sec, {})
            if not row:
                empty += 1
            for v, n in row.items():
                by[v] = by.get(v, 0) + n
        return {
            "lists_by_version": by,
            "bins": int(t1 * BINS) - int(t0 * BINS) + 1,
            "bins_without_a_list": empty,
            "bin_s": 1 / BINS,
        }

    def first_of(self, version: str) -> float | None:
        """When the first list of `version` arrived (to the bin)."""
        self.drain()
        hits = [b for b, row in self.per_second.items() if version in row]
        return min(hits) / BINS if hits else None

    def close(self) -> None:
        self.stop_ev.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
        self.drain()


# ----------------------------------------------------------------------------- workers
class Worker:
    def __init__(self, bootstrap: str, name: str, idx: int, tmp: Path, model_dir: Path, tag: str = ""):
        from devtools.broker import free_port

        self.idx, self.port = idx, free_port()
        self.data_dir = tmp / f"worker{idx}-data"
        self.log_path = tmp / f"worker{idx}{tag}.log"
        cmd, env = worker_process(
            bootstrap,
            name,
            self.port,
            self.data_dir,
            model_dir,
            PARTITIONS,
            {"STREAMREC_LOG_LEVEL": "info", "STREAMREC_LOG_FORMAT": "json"},
        )
        self.started = time.time()
        with open(self.log_path, "ab") as log:  # the worker keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.ready_s: float | None = None

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except OSError:
            return 0, ""

    def wait_ready(self, timeout: float) -> float:
        while time.time() - self.started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.idx} exited ({self.proc.returncode}):\n{self.log_tail()}")
            if self.get("/ready")[0] == 200:
                self.ready_s = time.time() - self.started
                return self.ready_s
            time.sleep(0.5)
        raise TimeoutError(f"worker {self.idx} not ready in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the worker's log (what it said before it stopped)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError as e:
            return f"(no log: {e})"

    def metrics(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        status, text = self.get("/metrics")
        out: dict[str, float] = {}
        if status != 200:
            return out
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name in ("streamrec_consumer_lag", "streamrec_events_in_total", "streamrec_users_in_state"):
                    out[s.name] = out.get(s.name, 0.0) + s.value
        return out

    def log_times(self, needle: str) -> list[tuple[float, str]]:
        """(unix time, message) of each JSON log line whose message contains `needle`."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{") or needle not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            msg, ts = str(rec.get("message", "")), rec.get("ts", "")
            if needle in msg and ts:
                out.append((calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1e3, msg))
        return out

    def swapped_at(self, version: str) -> float | None:
        hits = [t for t, msg in self.log_times("serving model") if version in msg]
        return hits[0] if hits else None

    def served_ranker(self, version: str) -> bool | None:
        """Whether the worker serves `version` with its ranker (None: not serving it yet)."""
        hits = [msg for _, msg in self.log_times("serving model") if version in msg]
        return ("with its ranker" in hits[0]) if hits else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Sampler(threading.Thread):
    """Every `every` s: the input topic's lag behind the workers' consumer group (its end offsets
    minus the group's committed offsets, read from the broker: restarts and rebalances do not
    disturb it), the committed total, each worker's users and RSS, the other processes' RSS."""

    def __init__(self, every: float, t0: float, bootstrap: str, group: str, topic: str):
        super().__init__(daemon=True)
        self.every, self.t0 = every, t0
        self.bootstrap, self.group, self.topic = bootstrap, group, topic
        self.workers: list[Worker] = []
        self.others: dict[str, int] = {}  # name -> pid (the broker, the retrain)
        self.rows: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        cons = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        tps = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
        try:
            while not self.halt.wait(self.every):
                row: dict[str, Any] = {"t": round(time.time() - self.t0, 2), "workers": {}}
                try:
                    ends = cons.end_offsets(tps)
                    done = admin.list_group_offsets({self.group: tps}).get(self.group, {})
                    committed = sum(max(0, done[tp].offset) for tp in tps if tp in done)
                    row["produced"] = sum(ends.values())
                    row["committed"] = committed
                    row["lag"] = row["produced"] - committed
                except Exception as e:  # noqa: BLE001 - a sample missed is a gap in the curve, not a failure
                    row["lag_error"] = str(e)
                for w in list(self.workers):
                    if w.proc.poll() is not None:
                        continue
                    m = w.metrics()
                    try:
                        rss = rss_bytes(w.proc.pid) / 1e6
                    except OSError:
                        continue
                    row["workers"][str(w.idx)] = {"users": m.get("streamrec_users_in_state"), "rss_mb": rss}
                for name, pid in list(self.others.items()):
                    try:
                        row[f"{name}_rss_mb"] = rss_bytes(pid) / 1e6
                    except OSError:
                        self.others.pop(name, None)
                row["main_rss_mb"] = rss_bytes() / 1e6
                self.rows.append(row)
        finally:
            admin.close()
            cons.close()


def throughput(rows: list[dict[str, Any]]) -> list[tuple[float, float, float]]:
    """(t, events/s committed in the interval, lag at t) from the samples."""
    out = []
    prev = None
    for r in rows:
        if "committed" not in r:
            continue
        if prev is not None and r["t"] > prev["t"]:
            out.append((r["t"], (r["committed"] - prev["committed"]) / (r["t"] - prev["t"]), float(r["lag"])))
        prev = r
    return out


def announcements(bootstrap: str, topic: str) -> dict[str, float]:
    """version -> the time it was announced on model-updates."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        end = c.end_offsets([tp])[tp]
        out: dict[str, float] = {}
        deadline = time.time() + 20
        while c.position(tp) < end and time.time() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                for r in recs:
                    body = json.loads(r.value)
                    out[body["version"]] = float(body.get("announced", r.timestamp / 1e3))
        return out
    finally:
        c.close()


def synthetic_model(n_items: int, factors: int, seed: int):
    from recsys.model.factors import Model
    from recsys.model.store import new_version_name

    y, assign = clustered_factors(n_items, factors, seed=seed)
    pop = np.bincount(assign, minlength=assign.max() + 1)[assign].astype(np.float32)  # topic size as popularity
    return Model.from_factors(new_version_name(), item_ids(n_items), y, 0.1, popularity=pop)


def swap_record(name: str, version: str, items: int, announced: float, workers: list[Worker], lists: ListCounter):
    """How long each worker took from the announcement to serving `version`, and what served meanwhile."""
    per: dict[str, dict[str, Any]] = {}
    for w in workers:
        at = w.swapped_at(version)
        per[str(w.idx)] = {"swap_s": None if at is None else at - announced, "ranker": w.served_ranker(version)}
        if at is not None:
            per[str(w.idx)]["during"] = lists.between(announced, at)
    done = [p["swap_s"] for p in per.values() if p["swap_s"] is not None]
    rec = {"name": name, "version": version, "items": items, "announced_t": announced, "workers": per}
    rec["swap_s_max"] = max(done) if done else None
    first = lists.first_of(version)
    rec["first_list_of_it_s"] = None if first is None else first - announced
    return rec


def wait_swapped(workers: list[Worker], version: str, timeout: float) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if all(w.swapped_at(version) is not None for w in workers):
            return True
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(
                    f"worker {w.idx} exited ({w.proc.returncode}) during a model swap; the end of its log "
                    f"({w.log_path}):\n{w.log_tail()}"
                )
        time.sleep(1.0)
    return False


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds to a minute): checks it runs")
    ap.add_argument("--users", type=int, help="users in the seeded state (default 1,000,000; quick 3,000)")
    ap.add_argument("--items", type=int, help="catalogue (default 1,200,000; quick 5,000)")
    ap.add_argument("--events", type=int, help="stream events (default 10,000,000; quick 150,000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--swap-items", help="comma-separated sizes of the synthetic models swapped in (default 1000000,4000000)"
    )
    ap.add_argument(
        "--factors",
        type=int,
        help="factors of every model here, the retrain's too (default: the configuration's train.factors; quick 16)",
    )
    ap.add_argument("--retrain-after", type=float, help="seconds of stream before the retrain starts (default 30)")
    ap.add_argument(
        "--drain-timeout",
        type=float,
        help="max seconds to wait at the end for the lag to reach 0 (default 3600; quick 10)",
    )
    ap.add_argument("--sample-s", type=float, help="sampling interval (default 5 s; quick 1 s)")
    ap.add_argument("--output", default="bench/out/scale.json")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs)")
    ap.add_argument("--report", metavar="JSON", help="print the table (and --plot) of an earlier run's JSON")
    args = ap.parse_args(argv)
    if args.report:
        done = json.loads(Path(args.report).read_text())
        done["summary"] = summary(done)
        print(table(done))
        if args.plot:
            plot(done, args.plot)
        return done
    q = args.quick
    n_users = args.users or (3000 if q else 1_000_000)
    n_items = args.items or (5000 if q else 1_200_000)
    n_events = args.events or (150_000 if q else 10_000_000)
    swap_sizes = [int(x) for x in (args.swap_items or ("3000,8000" if q else "1000000,4000000")).split(",") if x]
    retrain_after = args.retrain_after if args.retrain_after is not None else (2.0 if q else 30.0)
    sample_s = args.sample_s or (1.0 if q else 5.0)
    drain_timeout = args.drain_timeout if args.drain_timeout is not None else (10.0 if q else 3600.0)

    from bench.retrain import child_env as retrain_env
    from bench.state import real_shape, recovery_phases
    from devtools.broker import broker_from_env
    from recsys.config import load_config, stream_env
    from recsys.model.store import ModelStore
    from recsys.model.threads import pin_blas_threads
    from streaming.jobs.retrain import announce
    from streaming.kafka.admin import ensure_topics
    from streaming.topics import isolated

    pin_blas_threads()
    factors = args.factors or (16 if q else load_config().train.factors)
    t_all = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-scale-"))
    broker = broker_from_env(tmp / "kafka")
    name = f"bscale{uuid.uuid4().hex[:6]}"
    clicks, recs, models_topic = f"{name}-clicks", f"{name}-recs", f"{name}-models"
    changelog = f"{name}-user-state-changelog"
    model_dir = tmp / "models"
    store = ModelStore(model_dir)
    workers: list[Worker] = []
    all_workers: list[Worker] = []
    lists: ListCounter | None = None
    report: dict[str, Any] = {
        "bench": "scale",
        "quick": q,
        "machine": machine(),
        "users": n_users,
        "items": n_items,
        "events": n_events,
        "workers": args.workers,
        "partitions": PARTITIONS,
        "factors": factors,
        "command": "python -m bench.scale " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    marks: list[tuple[float, str]] = []
    sampler: Sampler | None = None

    def mark(what: str) -> None:
        marks.append((round(time.time() - t_all, 2), what))
        print(f"[{time.time() - t_all:7.1f} s] {what}", flush=True)

    try:
        broker.start(timeout=300)
        ensure_topics(broker.bootstrap, {clicks: PARTITIONS, recs: PARTITIONS, f"{name}-dlq": 1, models_topic: 1})
        ensure_topics(broker.bootstrap, {changelog: PARTITIONS}, config={"cleanup.policy": "compact"})
        mark(f"broker {broker.bootstrap} up")
        sampler = Sampler(sample_s, t_all, broker.bootstrap, name, clicks)
        if broker.pid is not None:
            sampler.others["broker"] = broker.pid

        # --- seed: the users' state and the first model
        lengths, _ = real_shape()
        seeded = produce(broker.bootstrap, changelog, seed_records(n_users, lengths, item_ids(n_items), seed=3))
        report["seed"] = seeded
        mark(f"{n_users:,} users' state produced to the changelog: {seeded['mb']:.0f} MB in {seeded['seconds']:.1f} s")
        v0 = synthetic_model(n_items, factors, seed=1)
        store.save(v0, publish=True)
        report["v0"] = v0.version
        mark(f"first model {v0.version} ({n_items:,} items x {factors}) published")
        del v0

        # --- workers, the list counter, the sampler
        lists = ListCounter(broker.bootstrap, recs)
        for i in range(args.workers):
            workers.append(Worker(broker.bootstrap, name, i, tmp, model_dir))
        all_workers.extend(workers)
        sampler.workers = workers
        sampler.start()
        for w in workers:
            w.wait_ready(1800)
        report["start"] = {
            str(w.idx): {"ready_s": w.ready_s, "phases_s": recovery_phases(w.log_path, w.started)} for w in workers
        }
        mark(
            f"{args.workers} workers ready (restored from the changelog): {[round(w.ready_s or 0, 1) for w in workers]} s"
        )

        # --- the stream, in a thread
        produced: dict[str, Any] = {}

        def feed() -> None:
            t = time.time()
            produced.update(produce(broker.bootstrap, clicks, stream_records(n_events, n_users, n_items)))
            produced["done_t"] = time.time() - t_all
            produced["started_t"] = t - t_all

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        mark(f"stream of {n_events:,} events started")
        time.sleep(retrain_after)

        # --- the retrain, cold, on what the workers are writing
        # with the workers' topic names, so that the ranker's window is this run's clickstream;
        # only those retrain_env does not set itself (it names the model-updates topic too)
        own = retrain_env(broker.bootstrap, name, model_dir, {})
        run = stream_env(isolated(load_config().stream, name, bootstrap=broker.bootstrap, partitions=PARTITIONS))
        topics = {k: v for k, v in run.items() if k.endswith("_TOPIC") and k not in own}
        env = retrain_env(
            broker.bootstrap,
            name,
            model_dir,
            topics
            | {"STREAMREC_TRAIN_WARM_START": "0", "STREAMREC_TRAIN_FACTORS": str(factors)}
            | ({"STREAMREC_TRAIN_ITERATIONS": "3", "STREAMREC_TRAIN_MIN_ITERATIONS": "1"} if q else {}),
        )
        mark("retrain started")
        t_r = time.time()
        rlog = tmp / "retrain.out"
        with open(rlog, "w") as out, open(tmp / "retrain.err", "w") as err:
            rp = subprocess.Popen(
                [sys.executable, "-m", "streaming.cli.main", "retrain", "--once"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=err,
            )
            sampler.others["retrain"] = rp.pid
            rc = rp.wait()
        r_wall = time.time() - t_r
        lines = [ln for ln in rlog.read_text().splitlines() if ln.startswith("{")]
        if rc != 0 or not lines:
            raise RuntimeError(f"retrain failed ({rc}):\n{(tmp / 'retrain.err').read_text()[-3000:]}")
        res = json.loads(lines[-1])
        report["retrain"] = {**res, "wall_s": r_wall, "started_t": t_r - t_all}
        mark(
            f"retrain {res.get('result')} {res.get('version')} in {r_wall:.0f} s wall, peak RSS "
            f"{res.get('peak_rss_mb', float('nan')):.0f} MB; phases {res.get('phases')}"
        )
        swaps = []
        if res.get("version") and res.get("result") == "published":
            wait_swapped(workers, res["version"], 1800)
            ann = announcements(broker.bootstrap, models_topic)
            meta = store.metadata(res["version"])
            swaps.append(
                swap_record("retrained", res["version"], int(meta["n_items"]), ann[res["version"]], workers, lists)
            )
            rankers = [w["ranker"] for w in swaps[-1]["workers"].values()]
            mark(
                f"workers swapped to the retrained model: {swaps[-1]['swap_s_max']:.1f} s after its announcement; "
                f"with its ranker: {rankers}"
            )

        # --- state on disk, then a worker restored from the changelog on an empty data dir
        disk = sum(tree_bytes(w.data_dir) for w in workers)
        report["state_disk"] = {"bytes": disk, "bytes_per_user": disk / n_users}
        last = workers.pop()
        last.stop()
        mark(f"worker {last.idx} stopped; its data dir deleted")
        shutil.rmtree(last.data_dir, ignore_errors=True)
        again = Worker(broker.bootstrap, name, last.idx, tmp, model_dir, tag="-restored")
        all_workers.append(again)
        workers.append(again)
        sampler.workers = workers
        again.wait_ready(1800)
        _, body = again.get("/ready")
        report["restore"] = {
            "ready_s": again.ready_s,
            "phases_s": recovery_phases(again.log_path, again.started),
            "ready": json.loads(body) if body.startswith("{") else body,
            "lists_while_restoring": lists.between(again.started, time.time()),
        }
        mark(f"worker {again.idx} restored from the changelog and ready in {again.ready_s:.1f} s")
        # the swaps: one worker holds every partition meanwhile (memory: one model build at a time)
        keep = workers[:1]
        for w in workers[1:]:
            w.stop()
        workers[:] = keep
        sampler.workers = workers
        for k, n in enumerate(swap_sizes):
            model = synthetic_model(n, factors, seed=10 + k)
            store.save(model, publish=True)
            version = model.version
            del model
            t_a = time.time()
            announce(broker.bootstrap, models_topic, version)
            mark(f"model {version} of {n:,} items announced")
            if not wait_swapped(workers, version, 1800):
                raise TimeoutError(f"no worker swapped to {version}")
            announced_at = announcements(broker.bootstrap, models_topic).get(version, t_a)
            swaps.append(swap_record(f"synthetic {n:,}", version, n, announced_at, workers, lists))
            mark(f"swapped to {n:,} items in {swaps[-1]['swap_s_max']:.1f} s")
        report["swaps"] = swaps

        # --- drain
        t_d = time.time()
        feeder.join(drain_timeout)
        while time.time() - t_d < drain_timeout:
            tp = throughput(sampler.rows[-3:])
            if not feeder.is_alive() and tp and tp[-1][2] == 0 and all(r[2] == 0 for r in tp):
                break
            time.sleep(sample_s)
        mark("stream drained" if time.time() - t_d < drain_timeout else "drain timeout")
        report["produced"] = produced
    finally:
        if sampler is not None:
            sampler.halt.set()
            if sampler.is_alive():
                sampler.join(30)
        for w in all_workers:
            w.stop()
        if lists is not None:
            lists.close()
        broker.stop()
        report["samples"] = sampler.rows if sampler is not None else []
        report["marks"] = marks
        write_json(args.output, report)  # whatever was measured, even when a phase failed
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report["summary"] = summary(report)
    report["seconds"] = round(time.time() - t_all, 1)
    write_json(args.output, report)
    print(table(report))
    if args.plot:
        plot(report, args.plot)
    print(f"scale bench done in {report['seconds']} s -> {args.output}")
    return report


def summary(report: dict[str, Any]) -> dict[str, Any]:
    tp = throughput(report["samples"])
    busy = [x for x in tp if x[2] > 0 and x[1] > 0]  # intervals with a backlog: the workers at full tilt
    rates = [x[1] for x in busy] or [x[1] for x in tp if x[1] > 0]
    rss: dict[str, float] = {}
    for r in report["samples"]:
        for idx, w in r["workers"].items():
            rss[f"worker{idx}"] = max(rss.get(f"worker{idx}", 0.0), w["rss_mb"])
        total = sum(w["rss_mb"] for w in r["workers"].values()) + sum(v for k, v in r.items() if k.endswith("_rss_mb"))
        rss["all_processes"] = max(rss.get("all_processes", 0.0), total)
        for k, v in r.items():
            if k.endswith("_rss_mb"):
                rss[k[: -len("_rss_mb")]] = max(rss.get(k[: -len("_rss_mb")], 0.0), v)
    swaps = report.get("swaps", [])
    olds = [report.get("v0")] + [s["version"] for s in swaps]  # each swap replaces the one before

    def by_role(during: dict[str, int] | None, old: str | None, new: str) -> dict[str, int]:
        during = during or {}
        return {
            "old": during.get(str(old), 0),
            "new": during.get(new, 0),
            "other": sum(n for v, n in during.items() if v not in (str(old), new)),
        }

    return {
        "sustained_events_per_s": float(np.median(rates)) if rates else None,
        "events_processed": _processed(report["samples"]),
        "max_lag": max((x[2] for x in tp), default=None),
        "state_bytes_per_user": report.get("state_disk", {}).get("bytes_per_user"),
        "restore_ready_s": report.get("restore", {}).get("ready_s"),
        "retrain_wall_s": report.get("retrain", {}).get("wall_s"),
        "retrain_peak_rss_mb": report.get("retrain", {}).get("peak_rss_mb"),
        "swaps": {
            s["name"]: {
                "items": s["items"],
                "swap_s": s["swap_s_max"],
                "first_list_of_it_s": s.get("first_list_of_it_s"),
                "old_version": old,
                "lists_during_swap": {
                    i: by_role(w.get("during", {}).get("lists_by_version"), old, s["version"])
                    for i, w in s["workers"].items()
                },
            }
            for s, old in zip(swaps, olds, strict=False)
        },
        "peak_rss_mb": rss,
    }


def _processed(rows: list[dict[str, Any]]) -> int:
    done = [r["committed"] for r in rows if "committed" in r]
    return int(done[-1] - done[0]) if done else 0


def table(report: dict[str, Any]) -> str:
    s = report["summary"]
    out = [
        f"{report['users']:,} users, {report['items']:,} items, {report['events']:,} events, "
        f"{report['workers']} workers, {report['factors']} factors",
        "| figure | value |",
        "|---|---|",
        f"| sustained throughput (median over intervals with a backlog) | {s['sustained_events_per_s'] or 0:,.0f} events/s |",
        f"| peak consumer lag | {s['max_lag'] or 0:,.0f} events |",
        f"| state on disk per user | {s['state_bytes_per_user'] or 0:,.0f} B |",
        f"| restore of a worker on an empty data dir (start → /ready) | {s['restore_ready_s'] or 0:.1f} s |",
        f"| retrain --once (cold) wall / peak RSS | {s['retrain_wall_s'] or 0:.0f} s / "
        f"{(s['retrain_peak_rss_mb'] or 0) / 1024:.2f} GB |",
    ]
    for name, sw in s["swaps"].items():
        out.append(
            f"| model swap, {name} ({sw['items']:,} items): announce → serving | "
            f"{sw['swap_s'] if sw['swap_s'] is None else round(sw['swap_s'], 1)} s; lists meanwhile by version: "
            f"{sw['lists_during_swap']} |"
        )
    out.append(f"| peak RSS (MB) | {', '.join(f'{k} {v:,.0f}' for k, v in s['peak_rss_mb'].items())} |")
    return "\n".join(out)


def plot(report: dict[str, Any], path: str) -> None:
    plt = plot_setup()
    tp = throughput(report["samples"])
    fig, ax = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    if tp:
        t, rate, lag = zip(*tp, strict=False)
        ax[0].plot(t, lag, color="#c44")
        ax[1].plot(t, rate, color="#48c")
    ax[0].set(ylabel="consumer lag (events)", title="consumer lag, throughput and memory over the run")
    ax[1].set(ylabel="events/s processed")
    rows = report["samples"]
    names = sorted(
        {f"worker{i}" for r in rows for i in r["workers"]} | {k for r in rows for k in r if k.endswith("_rss_mb")}
    )
    for n in names:
        xs, ys = [], []
        for r in rows:
            v = r["workers"].get(n[6:], {}).get("rss_mb") if n.startswith("worker") else r.get(n)
            if v is not None:
                xs.append(r["t"])
                ys.append(v / 1024)
        ax[2].plot(xs, ys, label=n.replace("_rss_mb", ""))
    ax[2].set(ylabel="RSS (GB)", xlabel="seconds since start")
    ax[2].legend(fontsize=7, ncol=4)
    for a in ax:
        for t0, _ in report["marks"]:
            a.axvline(t0, color="#999", lw=0.6, ls=":")
    top = max([x[2] for x in tp] or [1.0])
    for k, (t0, what) in enumerate(report["marks"]):  # staggered: phases can follow each other within seconds
        label = what.split(":")[0].split(" in ")[0][:26]
        ax[0].annotate(label, (t0, top * (0.02 + 0.2 * (k % 3))), rotation=90, fontsize=6, va="bottom", color="#555")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
