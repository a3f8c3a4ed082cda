"""The catalogue's cost, through the real broker and real worker processes, same run (bench/e2e.py's machinery):

  worker_plain        the worker with an empty items topic (what bench/e2e measures)
  worker_catalogue    the same worker reading a catalogue of --catalogue items (default 1M: the
                      model's items, 2% of them hidden and 2% unavailable, so every batch is
                      scored with a mask, plus synthetic ones), 500 categories, 100 brands, prices
  requests            lists on request (GET /recommendations/<user>/?n=10[&category=|&price_min=&price_max=])
                      at --rate requests/s (open loop, from their own process) while the stream
                      runs at half of worker_catalogue's full-load throughput

Each round runs the stream at full load through both workers (fresh topics and groups each),
then the half-load stream plus the requests against the catalogue worker; the throughput ratio is
taken within each round and the figures are medians over --repeats rounds. Every list published
under the catalogue is checked: no hidden or unavailable item (`violations`, must be 0).

    python -m bench.catalogue [--quick] [--catalogue 1000000] [--events 20000] [--rate 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import tempfile
import time
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, percentile, rss_bytes, write_json
from bench.e2e import PARTITIONS, Pipeline, Producer, drive

CATEGORIES, BRANDS = 500, 100


def catalogue_records(model_items: list[str], n: int, seed: int = 5):
    """(key, value) item records: the model's items (2% hidden, 2% unavailable) then synthetic ones."""
    from recsys.catalogue import Item, encode_item

    rng = np.random.default_rng(seed)
    blocked: set[str] = set()
    for k in range(n):
        item = model_items[k] if k < len(model_items) else f"x{k}"
        u = rng.random()
        hidden, available = k < len(model_items) and u < 0.02, not (k < len(model_items) and 0.02 <= u < 0.04)
        if hidden or not available:
            blocked.add(item)
        yield (
            encode_item(
                Item(
                    item,
                    available=available,
                    hidden=hidden,
                    categories=(f"c{k % CATEGORIES}",),
                    brand=f"b{k % BRANDS}",
                    price=float(round(rng.uniform(1, 1000), 2)),
                )
            ),
            item in blocked,
        )


def produce_catalogue(bootstrap: str, topic: str, model_items: list[str], n: int) -> tuple[set[str], float]:
    from streaming.jobs.replay import make_producer
    from streaming.kafka.admin import ensure_topics
    from streaming.topics import TOMBSTONES_KEPT_MS

    ensure_topics(
        bootstrap,
        {topic: PARTITIONS},
        config={"cleanup.policy": "compact", "delete.retention.ms": str(TOMBSTONES_KEPT_MS)},
    )
    t0 = time.time()
    producer = make_producer(bootstrap, {"linger_ms": 50, "batch_size": 1 << 20, "client_id": "bench-catalogue"})
    blocked: set[str] = set()
    for (key, value), is_blocked in catalogue_records(model_items, n):
        producer.send(topic, key=key, value=value)
        if is_blocked:
            blocked.add(key.decode())
    producer.flush()
    producer.close(timeout=10)
    return blocked, time.time() - t0


# ----------------------------------------------------------------------------- the request process
def _requests(
    port: int, users: list[str], rate: float, seconds: float, out: mp.Queue, ready: EventType, go: EventType
) -> None:
    import asyncio

    import aiohttp

    ready.set()
    rng = np.random.default_rng(11)

    def path(k: int) -> str:
        user = users[int(rng.integers(len(users)))]
        kind = k % 3
        if kind == 0:
            return f"/recommendations/{user}/?n=10"
        if kind == 1:
            return f"/recommendations/{user}/?n=10&category=c{int(rng.integers(CATEGORIES))}"
        lo = float(rng.uniform(1, 800))
        return f"/recommendations/{user}/?n=10&price_min={lo:.0f}&price_max={lo + 200:.0f}"

    async def main() -> list:
        results: list = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

            async def one(p: str) -> None:
                t = time.perf_counter()
                try:
                    async with session.get(f"http://127.0.0.1:{port}{p}") as r:
                        body = await r.json()
                        results.append((time.perf_counter() - t, r.status, len(body.get("items", []))))
                except (TimeoutError, aiohttp.ClientError):
                    results.append((time.perf_counter() - t, 0, 0))

            go.wait()
            start = time.perf_counter()
            tasks = []
            k = 0
            while (due := start + k / rate) < start + seconds:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks.append(asyncio.ensure_future(one(path(k))))
                k += 1
            await asyncio.gather(*tasks)
        return results

    out.put(asyncio.run(main()))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check_lists(pipe: Pipeline, blocked: set[str]) -> tuple[int, int]:
    """(lists seen, lists holding a blocked item) among the worker's published messages."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=pipe.bootstrap, group_id=None, enable_auto_commit=False)
    tps = [TopicPartition(pipe.recs, p) for p in range(PARTITIONS)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    end = c.end_offsets(tps)
    seen = bad = 0
    while any(c.position(tp) < end[tp] for tp in tps):
        for recs in c.poll(timeout_ms=500).values():
            for r in recs:
                items = json.loads(r.value).get("items", [])
                seen += 1
                bad += bool(blocked.intersection(items))
    c.close()
    return seen, bad


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small everything: checks it runs")
    ap.add_argument("--catalogue", type=int, default=None, help="items in the catalogue (default 1,000,000)")
    ap.add_argument("--events", type=int, default=None, help="events per full-load run (default 20000)")
    ap.add_argument("--items", type=int, default=20_000, help="simulated model catalogue")
    ap.add_argument(
        "--rate", default="200", help="requests per second during a half-load run; a comma list: one run each"
    )
    ap.add_argument("--request-seconds", type=float, default=None, help="length of the request run (default 20)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 3)")
    ap.add_argument("--output", default="bench/out/catalogue.json")
    args = ap.parse_args(argv)
    n_cat = args.catalogue or (20_000 if args.quick else 1_000_000)
    n_full = args.events or (1500 if args.quick else 20_000)
    req_s = args.request_seconds or (4.0 if args.quick else 20.0)
    repeats = args.repeats or (1 if args.quick else 3)
    items = 2000 if args.quick else args.items
    rates = [float(x) for x in args.rate.split(",")]

    from devtools.broker import broker_from_env
    from recsys.confidence import ConfidenceConfig, build_profiles
    from recsys.config import Settings
    from recsys.data.simulator import SimConfig, simulate
    from recsys.model.item_foldin import user_gram
    from recsys.model.store import ModelStore
    from recsys.model.threads import pin_blas_threads
    from recsys.model.train import TrainConfig, train

    pin_blas_threads()
    t_all = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-catalogue-"))
    broker = broker_from_env(tmp / "kafka")
    batch_within = Settings().batch_within_s
    try:
        broker.start()
        events = simulate(
            SimConfig(n_users=max(500, n_full // 6), n_items=items, events=min(n_full + 200_000, 4 * n_full), seed=7)
        )
        train_events, stream = events[:-n_full], events[-n_full:]
        ccfg = ConfidenceConfig()
        model, x, _ = train(
            build_profiles(train_events, ccfg), ccfg, TrainConfig(factors=64, iterations=8, num_threads=0)
        )
        ModelStore(tmp / "models").save(model, publish=True, user_gram=user_gram(x))
        topic = f"bench-catalogue-{int(time.time())}"
        blocked, produce_s = produce_catalogue(broker.bootstrap, topic, list(model.item_ids), n_cat)
        print(
            f"model {model.n_items} items; catalogue {n_cat} items on {topic} in {produce_s:.0f}s "
            f"({len(blocked)} of the model's items hidden or unavailable)",
            flush=True,
        )
        producer = Producer.open(broker.bootstrap, light=False)  # bench/e2e's, as its figures are taken
        users = sorted({e.user for e in stream})
        rounds = []
        for rnd in range(repeats):
            print(f"-- round {rnd + 1} of {repeats}", flush=True)
            res: dict = {}

            def run_plain(res: dict = res) -> None:
                plain = Pipeline("worker", broker.bootstrap, tmp, tmp / "models", batch_within)
                try:
                    plain.warm_up(producer)
                    c0 = cpu_seconds(plain.proc.pid)
                    res["worker_plain"] = drive(plain, producer, stream, None, timeout=max(60.0, n_full / 50.0))
                    res["worker_plain"]["cpu_ms_per_event"] = 1000 * (cpu_seconds(plain.proc.pid) - c0) / n_full
                finally:
                    plain.stop()

            def run_catalogue(res: dict = res) -> None:
                cat = Pipeline(
                    "worker", broker.bootstrap, tmp, tmp / "models", batch_within, {"STREAMREC_ITEMS_TOPIC": topic}
                )
                try:
                    t0 = time.time()
                    cat.warm_up(producer, timeout=900)
                    res["catalogue_load_s"] = time.time() - t0
                    c0 = cpu_seconds(cat.proc.pid)
                    res["worker_catalogue"] = drive(cat, producer, stream, None, timeout=max(60.0, n_full / 50.0))
                    res["worker_catalogue"]["cpu_ms_per_event"] = 1000 * (cpu_seconds(cat.proc.pid) - c0) / n_full
                    res["worker_rss_mb"] = rss_bytes(cat.proc.pid) / 2**20
                    half_rate = 0.5 * res["worker_catalogue"]["events_per_s"]
                    n_half = int(min(len(stream), max(200, half_rate * req_s)))
                    res["requests"] = {}
                    for rate in rates:
                        ctx = mp.get_context("spawn")
                        q, ready, go = ctx.Queue(), ctx.Event(), ctx.Event()
                        proc = ctx.Process(
                            target=_requests, args=(cat.port, users, rate, req_s, q, ready, go), daemon=True
                        )
                        proc.start()
                        ready.wait(60)  # the request process has imported aiohttp: start both clocks together
                        go.set()
                        half = drive(cat, producer, stream[:n_half], half_rate, timeout=max(60.0, n_half / 50.0))
                        got = q.get(timeout=req_s + 120)
                        proc.join(10)
                        lat = np.array([g[0] for g in got]) * 1000.0
                        ok = [g for g in got if g[1] == 200]
                        res["requests"][str(rate)] = {
                            "rate": rate,
                            "sent": len(got),
                            "ok": len(ok),
                            "full_lists": sum(g[2] == 10 for g in ok),
                            "latency_ms": {
                                "p50": percentile(lat, 50),
                                "p99": percentile(lat, 99),
                                "max": float(lat.max()),
                            },
                            "stream_half_load": half,
                        }
                    res["lists_checked"], res["violations"] = check_lists(cat, blocked)
                finally:
                    cat.stop()

            # alternate which goes first: the first worker of a round ran measurably slower
            for run_one in (run_plain, run_catalogue) if rnd % 2 == 0 else (run_catalogue, run_plain):
                run_one()
            res["throughput_ratio"] = res["worker_catalogue"]["events_per_s"] / res["worker_plain"]["events_per_s"]
            # the worker's own CPU per event: what its throughput on a core of its own would be
            res["cpu_throughput_ratio"] = (
                res["worker_plain"]["cpu_ms_per_event"] / res["worker_catalogue"]["cpu_ms_per_event"]
            )
            reqs = "; ".join(
                f"requests at {r['rate']:.0f}/s with the stream at half load: p50 {r['latency_ms']['p50']:.1f} ms, "
                f"p99 {r['latency_ms']['p99']:.1f} ms, {r['ok']}/{r['sent']} ok, {r['full_lists']} full lists, "
                f"stream p99 {r['stream_half_load']['latency_ms']['p99']:.0f} ms"
                for r in res["requests"].values()
            )
            print(
                f"plain {res['worker_plain']['events_per_s']:,.0f} ev/s; catalogue {res['worker_catalogue']['events_per_s']:,.0f} "
                f"ev/s (ratio {res['throughput_ratio']:.3f}; CPU per event {res['worker_plain']['cpu_ms_per_event']:.3f} "
                f"vs {res['worker_catalogue']['cpu_ms_per_event']:.3f} ms, ratio {res['cpu_throughput_ratio']:.3f}; loaded in {res['catalogue_load_s']:.0f}s, RSS "
                f"{res['worker_rss_mb']:.0f} MB); {reqs}; {res['violations']} of {res['lists_checked']} lists hold "
                "a blocked item",
                flush=True,
            )
            rounds.append(res)
        producer.close()

        def med(f) -> float:
            return float(np.median([f(r) for r in rounds]))

        summary: dict[str, Any] = {
            "throughput_ratio": med(lambda r: r["throughput_ratio"]),
            "cpu_throughput_ratio": med(lambda r: r["cpu_throughput_ratio"]),
            "plain_events_per_s": med(lambda r: r["worker_plain"]["events_per_s"]),
            "catalogue_events_per_s": med(lambda r: r["worker_catalogue"]["events_per_s"]),
            "requests": {
                str(rate): {
                    "p50_ms": med(lambda r, k=str(rate): r["requests"][k]["latency_ms"]["p50"]),
                    "p99_ms": med(lambda r, k=str(rate): r["requests"][k]["latency_ms"]["p99"]),
                    "stream_p99_ms": med(
                        lambda r, k=str(rate): r["requests"][k]["stream_half_load"]["latency_ms"]["p99"]
                    ),
                }
                for rate in rates
            },
            "catalogue_load_s": med(lambda r: r["catalogue_load_s"]),
            "violations": int(sum(r["violations"] for r in rounds)),
        }
        print(
            f"catalogue of {n_cat:,} items: throughput {summary['throughput_ratio']:.3f} of without (target >= 0.9), "
            f"by the worker's CPU per event {summary['cpu_throughput_ratio']:.3f}; "
            + "; ".join(
                f"on-request lists at {k}/s, stream at half load: p50 {v['p50_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms"
                for k, v in summary["requests"].items()
            )
            + f"; violations {summary['violations']}"
            + (f"; medians of {repeats} rounds" if repeats > 1 else "")
        )
        report = {
            "bench": "catalogue",
            "quick": args.quick,
            "machine": machine(),
            "catalogue_items": n_cat,
            "model_items": model.n_items,
            "events": n_full,
            "repeats": repeats,
            "seconds": round(time.time() - t_all, 1),
            "summary": summary,
            "rounds": rounds,
        }
        write_json(args.output, report)
        return report
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
