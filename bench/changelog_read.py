"""Changelog read benchmark: the retrain's read + decode rate against the bare fetch rate, same topic, same run.

--users state records shaped like the real users (bench/state.py: item counts and ids drawn from the
Taobao data, encoded with the worker's codec) are produced into a compacted changelog topic of the
project's own Kafka broker; then, each in a process of its own, interleaved, --repeats times:

  fetch     a bare aiokafka loop (the whole-topic reader's consumer settings) that only counts the
            records: the ceiling for any reader built on aiokafka
  rdfetch   the same with the librdkafka reader the retrain uses (clients.BulkReader), keys and
            values handed over as the read hands them over, counted
  full      `streaming.jobs.changelog.read_training_data` as the retrain runs it: read (librdkafka),
            decode (on its own thread), hold-out, CSR assembled
  rdinline  the same with decoding in the reading thread
  rdproc    the same with librdkafka and the keys in a forked reader process, decoding in this one
  aiokafka  the same through aiokafka with its forked reader process (the reader before librdkafka)
  one       (--one-process) aiokafka with the consumer and decoding in one process

and reports the medians of each (records/s, CPU seconds of the process and its reader process, peak
RSS of the process), the ratios full / fetch and full / rdfetch (1.0 means decoding is free next to
fetching), the CPU per record of full over fetch's, and the load average at each measurement (a
loaded machine moves every rate; the ratios are the comparable figures).

    python -m bench.changelog_read [--users 100000] [--repeats 3] [--quick] [--output bench/out/changelog_read.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import machine, median, write_json

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4
MODES = ("fetch", "rdfetch", "full", "rdinline", "rdproc", "aiokafka", "one")


async def _count(bootstrap: str, topic: str) -> int:
    """Every record of `topic` up to the end offsets at the start, counted and dropped."""
    from streaming.kafka import clients

    async with clients.topic_reader(bootstrap, topic, "bench-changelog-read") as (consumer, tps):
        end = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        left = [tp for tp in tps if end[tp] > 0]
        n = 0
        while left:
            fetched = await consumer.getmany(*left, timeout_ms=500)
            for records in fetched.values():
                n += len(records)
            for tp in list(left):
                if await consumer.position(tp) >= end[tp]:
                    left.remove(tp)
                    consumer.pause(tp)
        return n


def _count_rd(bootstrap: str, topic: str) -> int:
    """`_count` through the librdkafka reader."""
    from streaming.kafka import clients

    with clients.BulkReader(bootstrap, topic, "bench-changelog-read") as reader:
        marks = reader.watermarks()
        left = {p: end for p, (begin, end) in marks.items() if end > begin}
        reader.start({p: marks[p][0] for p in left})
        n = 0
        while left:
            keys, values, ended, got = reader.batch(2_000, 0.5)  # as read_bulk takes them
            n += got
            if got:
                ended += [p for p, at in reader.positions().items() if p in left and at >= left[p]]
            for p in ended:
                if left.pop(p, None) is not None:
                    reader.pause(p)
        return n


def child(mode: str, bootstrap: str, topic: str) -> dict[str, Any]:
    """(child process) One measurement (a mode of the module docstring)."""
    from recsys.config import load_config
    from streaming.jobs.retrain import peak_rss_mb

    out: dict[str, Any] = {"mode": mode, "loadavg": os.getloadavg()}
    cpu0 = _cpu_s()
    if mode in ("fetch", "rdfetch"):
        t0 = time.perf_counter()
        out["records"] = asyncio.run(_count(bootstrap, topic)) if mode == "fetch" else _count_rd(bootstrap, topic)
        out["seconds"] = time.perf_counter() - t0
    else:
        from dataclasses import replace

        from streaming.jobs.retrain import read_changelog

        cfg = load_config()
        t0 = time.perf_counter()
        settings = replace(cfg.stream, bootstrap=bootstrap)
        ways: dict[str, dict[str, Any]] = {
            "full": {},
            "rdinline": {"decode_thread": False},
            "rdproc": {"reader_process": True},
            "aiokafka": {"client": "aiokafka", "reader_process": True},
            "one": {"client": "aiokafka", "reader_process": False},
        }
        data = read_changelog(settings, cfg.confidence, topic, **ways[mode])
        out["seconds"] = time.perf_counter() - t0
        out["records"] = data.phases["records"]
        out["assemble_s"] = data.phases["assemble_s"]
        out["users"] = data.users + len(data.cases)
        out["nnz"] = int(data.matrix.nnz)
        out["csr_mb"] = (data.matrix.data.nbytes + data.matrix.indices.nbytes + data.matrix.indptr.nbytes) / 1e6
        out["skipped"] = data.skipped
    out["records_per_s"] = out["records"] / out["seconds"]
    # CPU seconds of this process and its reader process: a load-independent cost per record
    out["cpu_s"] = _cpu_s() - cpu0
    out["records_per_cpu_s"] = out["records"] / max(out["cpu_s"], 1e-9)
    out["peak_rss_mb"] = peak_rss_mb()
    # the reader process's (read_training_data's consumer side), if there was one: both count
    out["reader_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return out


def _cpu_s() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _run(mode: str, bootstrap: str, topic: str, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.changelog_read", "--child", mode, "--bootstrap", bootstrap, "--topic", topic]
    from recsys.config import child_env

    env = child_env({"PYTHONPATH": str(ROOT), "STREAMREC_LOG_LEVEL": "warning"})
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2,000 users, one repeat: checks it runs")
    ap.add_argument("--output", default="bench/out/changelog_read.json")
    ap.add_argument("--timeout", type=float, default=1800, help="per child process (seconds)")
    ap.add_argument("--one-process", action="store_true", help="also measure aiokafka without its reader process")
    ap.add_argument(
        "--modes",
        help=f"comma-separated, of {', '.join(MODES)} (default: all but one; fetch, rdfetch, full and aiokafka always)",
    )
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--topic", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        res = child(args.child, args.bootstrap, args.topic)
        print(json.dumps(res), flush=True)
        return res

    from bench.state import produce_changelog, real_shape
    from devtools.broker import broker_from_env
    from streaming.kafka.admin import ensure_topics

    users, repeats = (2000, 1) if args.quick else (args.users, args.repeats)
    report: dict[str, Any] = {"bench": "changelog_read", "quick": args.quick, "machine": machine(), "users": users}
    lengths, items = real_shape()
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-chread-"))
    broker = broker_from_env(tmp / "kafka")
    modes = tuple(MODES if args.one_process else MODES[:-1])
    if args.modes:
        want = {"fetch", "rdfetch", "full", "aiokafka", *args.modes.split(",")}
        modes = tuple(m for m in MODES if m in want)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    try:
        broker.start(timeout=300)  # a loaded machine can take minutes
        topic = f"bchread{users}x{uuid.uuid4().hex[:6]}-user-state-changelog"
        ensure_topics(broker.bootstrap, {topic: PARTITIONS}, config={"cleanup.policy": "compact"})
        prod = produce_changelog(broker.bootstrap, topic, users, lengths, items, seed=1)
        report["changelog_mb"] = prod["mb"]
        print(f"{users:,} users: {prod['mb']:.0f} MB of state records produced in {prod['seconds']:.0f} s", flush=True)
        for r in range(repeats):
            for mode in modes if r % 2 == 0 else modes[::-1]:
                res = _run(mode, broker.bootstrap, topic, args.timeout)
                runs[mode].append(res)
                print(
                    f"  {mode:8s} #{r + 1}: {res['records']:,} records in {res['seconds']:.2f} s = "
                    f"{res['records_per_s']:,.0f} records/s, {res['cpu_s']:.2f} CPU s "
                    f"({res['records_per_cpu_s']:,.0f} records per CPU s), peak RSS {res['peak_rss_mb']:.0f} MB "
                    f"(load {res['loadavg'][0]:.2f})",
                    flush=True,
                )
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    summary: dict[str, Any] = {}
    for mode, rs in runs.items():
        keys = ("records_per_s", "seconds", "peak_rss_mb", "reader_peak_rss_mb", "cpu_s", "records_per_cpu_s")
        summary[mode] = {k: median([x[k] for x in rs]) for k in keys if rs} | {
            "loadavg_1m": [round(x["loadavg"][0], 2) for x in rs]
        }
    full = runs["full"]
    summary["full"].update(
        csr_mb=full[0]["csr_mb"], nnz=full[0]["nnz"], users=full[0]["users"], skipped=full[0]["skipped"]
    )
    summary["full_over_fetch"] = summary["full"]["records_per_s"] / summary["fetch"]["records_per_s"]
    summary["full_over_rdfetch"] = summary["full"]["records_per_s"] / summary["rdfetch"]["records_per_s"]
    summary["rdfetch_over_fetch"] = summary["rdfetch"]["records_per_s"] / summary["fetch"]["records_per_s"]
    summary["aiokafka_over_fetch"] = summary["aiokafka"]["records_per_s"] / summary["fetch"]["records_per_s"]
    summary["full_over_aiokafka"] = summary["full"]["records_per_s"] / summary["aiokafka"]["records_per_s"]
    summary["cpu_full_over_fetch"] = summary["full"]["cpu_s"] / summary["fetch"]["cpu_s"]
    summary["peak_rss_over_csr"] = summary["full"]["peak_rss_mb"] / max(summary["full"]["csr_mb"], 1e-9)
    for mode in runs:
        summary[mode]["over_fetch"] = summary[mode]["records_per_s"] / summary["fetch"]["records_per_s"]
        summary[mode]["over_rdfetch"] = summary[mode]["records_per_s"] / summary["rdfetch"]["records_per_s"]
    report |= {"runs": runs, "summary": summary}
    write_json(args.output, report)
    print(
        f"bare fetch: aiokafka {summary['fetch']['records_per_s']:,.0f} records/s, librdkafka "
        f"{summary['rdfetch']['records_per_s']:,.0f} ({summary['rdfetch_over_fetch']:.2f}x); full read through "
        f"aiokafka with its reader process {summary['aiokafka']['records_per_s']:,.0f} records/s (ratio to the "
        f"aiokafka fetch {summary['aiokafka_over_fetch']:.2f}); full read as the retrain runs it "
        f"{summary['full']['records_per_s']:,.0f} records/s ({summary['full_over_aiokafka']:.2f}x the aiokafka "
        f"read, {summary['full_over_rdfetch']:.2f}x its own bare fetch)",
        flush=True,
    )
    print(
        f"fetch only {summary['fetch']['records_per_s']:,.0f} records/s; read + decode + assemble "
        f"{summary['full']['records_per_s']:,.0f} records/s => ratio {summary['full_over_fetch']:.2f} "
        f"(medians of {repeats}; load {summary['full']['loadavg_1m']}); CPU per record "
        f"{summary['cpu_full_over_fetch']:.2f}x the fetch's; peak RSS "
        f"{summary['full']['peak_rss_mb']:.0f} MB (+ its reader process {summary['full']['reader_peak_rss_mb']:.0f} MB) "
        f"for a {summary['full']['csr_mb']:.0f} MB CSR",
        flush=True,
    )
    for mode in runs:
        m = summary[mode]
        print(
            f"  {mode:8s} {m['records_per_s']:>9,.0f} records/s  x{m['over_fetch']:.2f} the aiokafka fetch  "
            f"x{m['over_rdfetch']:.2f} the librdkafka fetch  {m['cpu_s']:.1f} CPU s  peak RSS {m['peak_rss_mb']:.0f} MB "
            f"(+ reader process {m['reader_peak_rss_mb']:.0f} MB)  load {m['loadavg_1m']}",
            flush=True,
        )
    return report


if __name__ == "__main__":
    main()
