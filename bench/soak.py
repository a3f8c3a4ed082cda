"""Soak: one real worker under a steady load for many minutes; lag bounded, memory flat, no errors.

A private broker (or STREAMREC_BOOTSTRAP / --bootstrap), a model trained on a simulated shop
(recsys.data.simulator), one `recsys worker` process, and a paced producer replaying the simulated
stream in a loop at --rate events/s with event times set to the wall clock. Every --sample-s
seconds the worker's /metrics and its process RSS are sampled:

  lag        streamrec_consumer_lag summed over partitions (messages not yet processed)
  rss        the worker's resident memory (/proc/<pid>/status VmRSS)
  processed  streamrec_events_in_total; rejected; recommendations out; e2e latency histogram

At the end the producer stops, the worker drains, and the run passes when
  * every event sent was applied (events_in == sent), nothing was rejected or failed to send;
  * the lag never exceeded --max-lag-s seconds' worth of input (rate x max-lag-s);
  * memory is flat: the mean RSS of the last quarter is within --max-rss-growth (relative) of the
    mean RSS of the second quarter (the first quarter is warm-up: caches, model, first users);
  * the worker's log has no ERROR/CRITICAL line once the load starts, and the worker never
    restarted.

The default rate is the worker's paced rate from the end-to-end benchmark (bench/out/e2e.json,
"worker_half": half the measured full-load throughput) when that file exists, else 300/s.

    .venv/bin/python -m bench.soak [--minutes 10] [--rate R] [--output bench/out/soak.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import worker_process  # noqa: E402 - after the path above


def default_rate() -> float:
    try:
        report = json.loads((ROOT / "bench" / "out" / "e2e.json").read_text())
        half = (
            report["results"]["worker_half"]["target_rate"]
            if "results" in report
            else report["worker_half"]["target_rate"]
        )
        return float(half)
    except (OSError, KeyError, TypeError, ValueError):
        return 300.0


def metrics(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name
            if s.name.endswith("_bucket"):
                key = f"{s.name}{{le={s.labels.get('le')}}}"
            out[key] = out.get(key, 0.0) + s.value
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def histogram_quantile(m: dict[str, float], name: str, q: float) -> float | None:
    buckets = sorted(
        ((float(k.split("le=")[1].rstrip("}")), v) for k, v in m.items() if k.startswith(f"{name}_bucket{{")),
        key=lambda x: x[0],
    )
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    for le, c in buckets:
        if c >= q * total:
            return le
    return None


class Feeder(threading.Thread):
    def __init__(self, bootstrap: str, topic: str, events, rate: float, seconds: float):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.events, self.rate, self.seconds = bootstrap, topic, events, rate, seconds
        self.sent = self.acked = self.failed = 0
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()

    def run(self) -> None:
        from streaming.jobs.replay import encode_event, make_producer

        producer = make_producer(self.bootstrap)
        start = time.monotonic()
        try:
            for k, e in enumerate(itertools.cycle(self.events)):
                due = start + k / self.rate
                if due - start >= self.seconds or self.stop_flag.is_set():
                    break
                while (left := due - time.monotonic()) > 0:
                    time.sleep(min(left, 0.05))
                key, value = encode_event(replace(e, ts=int(time.time() * 1000)))
                fut = producer.send(self.topic, key=key, value=value)
                fut.add_callback(self._ok)
                fut.add_errback(self._err)
                self.sent += 1
            producer.flush(timeout=120)
        finally:
            producer.close(timeout=10)

    def _ok(self, _):
        with self.lock:
            self.acked += 1

    def _err(self, _):
        with self.lock:
            self.failed += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long to hold the load (default 10)")
    ap.add_argument("--rate", type=float, default=None, help="events/s (default: e2e benchmark's paced rate, else 300)")
    ap.add_argument("--sample-s", type=float, default=10.0, help="sampling interval (default 10 s)")
    ap.add_argument(
        "--bootstrap",
        default=None,
        help="existing Kafka (default: stream.bootstrap, STREAMREC_BOOTSTRAP; else a private broker)",
    )
    ap.add_argument("--users", type=int, default=5000, help="simulated shoppers (default 5000)")
    ap.add_argument("--max-lag-s", type=float, default=5.0, help="allowed lag, in seconds of input (default 5)")
    ap.add_argument("--max-rss-growth", type=float, default=0.10, help="allowed relative RSS growth (default 0.10)")
    ap.add_argument("--output", default=str(ROOT / "bench" / "out" / "soak.json"))
    args = ap.parse_args(argv)
    rate = args.rate or default_rate()
    seconds = args.minutes * 60.0

    from devtools.broker import KafkaBroker, free_port
    from recsys.confidence import build_profiles
    from recsys.config import Settings, load_config
    from recsys.data.simulator import SimConfig, simulate
    from recsys.model.item_foldin import user_gram
    from recsys.model.store import ModelStore
    from recsys.model.threads import pin_blas_threads
    from recsys.model.train import train
    from streaming.kafka.admin import ensure_topics
    from streaming.topics import topic_specs

    pin_blas_threads()
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-soak-"))
    broker = None
    worker = None
    feeder = None
    try:
        cfg = load_config()
        if args.bootstrap or cfg.stream.bootstrap:
            bootstrap = args.bootstrap or cfg.stream.bootstrap
        else:
            broker = KafkaBroker(data_dir=tmp / "kafka")
            broker.start(timeout=120)
            bootstrap = broker.bootstrap
        name = f"soak{uuid.uuid4().hex[:6]}"
        from streaming.topics import isolated

        s = isolated(Settings(), name, bootstrap=bootstrap, partitions=4)
        ensure_topics(bootstrap, topic_specs(s))
        print(f"simulating {args.users} shoppers ...", file=sys.stderr, flush=True)
        events = simulate(SimConfig(n_users=args.users, n_items=5000, events=60_000, seed=3))
        model, x, _ = train(build_profiles(events, cfg.confidence), cfg.confidence, cfg.train)
        ModelStore(tmp / "models").save(model, publish=True, user_gram=user_gram(x))

        port = free_port()
        cmd, env = worker_process(bootstrap, name, port, tmp / "worker", tmp / "models", s.partitions, {})
        log_path = tmp / "worker.log"
        with open(log_path, "wb") as log:  # the worker keeps its own copy of the descriptor
            worker = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker did not become ready:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)

        print(f"soak: {rate:.0f} events/s for {args.minutes:g} min on {bootstrap}", file=sys.stderr, flush=True)
        feeder = Feeder(bootstrap, s.clickstream_topic, events, rate, seconds)
        log_mark = log_path.stat().st_size  # start-up noise (e.g. a fresh broker's coordinator) is not the soak's
        t0 = time.monotonic()
        feeder.start()
        samples: list[dict[str, Any]] = []
        next_at = t0
        while feeder.is_alive():
            next_at += args.sample_s
            while time.monotonic() < next_at and feeder.is_alive():
                time.sleep(0.2)
            m = metrics(port)
            lag = sum(v for k, v in m.items() if k == "streamrec_consumer_lag")
            sample: dict[str, Any] = {
                "t_s": round(time.monotonic() - t0, 1),
                "sent": feeder.sent,
                "lag": lag,
                "processed": m.get("streamrec_events_in_total", 0.0),
                "rejected": m.get("streamrec_events_rejected_total", 0.0),
                "recs": m.get("streamrec_recommendations_out_total", 0.0),
                "rss_mb": round(rss_mb(worker.pid), 1),
                "latency_p99_le_s": histogram_quantile(m, "streamrec_event_to_publish_seconds", 0.99),
            }
            samples.append(sample)
            print(json.dumps(sample), file=sys.stderr, flush=True)
            if worker.poll() is not None:
                break
        feeder.join()
        # Drain: everything sent must be applied.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            m = metrics(port)
            if m.get("streamrec_events_in_total", 0.0) >= feeder.acked:
                break
            time.sleep(0.5)
        final = metrics(port)
        text = log_path.read_bytes()[log_mark:].decode(errors="replace")
        errors = [
            ln
            for ln in text.splitlines()
            if "[ERROR]" in ln or "[CRITICAL]" in ln or " ERROR " in ln or " CRITICAL " in ln or "Traceback" in ln
        ]
        q = max(1, len(samples) // 4)
        rss_warm = sum(x["rss_mb"] for x in samples[q : 2 * q]) / len(samples[q : 2 * q])
        rss_end = sum(x["rss_mb"] for x in samples[-q:]) / len(samples[-q:])
        lag_max = max(x["lag"] for x in samples)
        elapsed = samples[-1]["t_s"] if samples else 0.0
        result = {
            "minutes": args.minutes,
            "rate_target": rate,
            "sent": feeder.sent,
            "acked": feeder.acked,
            "send_failures": feeder.failed,
            "achieved_rate": round(feeder.sent / max(elapsed, 1e-9), 1),
            "processed": final.get("streamrec_events_in_total", 0.0),
            "rejected": final.get("streamrec_events_rejected_total", 0.0),
            "recommendations": final.get("streamrec_recommendations_out_total", 0.0),
            "lag_max": lag_max,
            "lag_max_s_of_input": round(lag_max / rate, 2),
            "lag_mean": round(sum(x["lag"] for x in samples) / len(samples), 1),
            "rss_mb_start": samples[0]["rss_mb"],
            "rss_mb_second_quarter": round(rss_warm, 1),
            "rss_mb_last_quarter": round(rss_end, 1),
            "rss_growth": round(rss_end / rss_warm - 1, 4),
            "rss_mb_max": max(x["rss_mb"] for x in samples),
            "latency_p99_le_s": histogram_quantile(final, "streamrec_event_to_publish_seconds", 0.99),
            "latency_p50_le_s": histogram_quantile(final, "streamrec_event_to_publish_seconds", 0.50),
            "errors_in_log": len(errors),
            "error_lines": errors[:5],
            "worker_restarts": 0 if worker.poll() is None else 1,
            "samples": samples,
        }
        checks = {
            "all_applied": result["processed"] >= feeder.acked == feeder.sent and feeder.failed == 0,
            "nothing_rejected": result["rejected"] == 0,
            "lag_bounded": lag_max <= rate * args.max_lag_s,
            "memory_flat": result["rss_growth"] <= args.max_rss_growth,
            "no_errors": not errors and worker.poll() is None,
        }
        result["checks"] = checks
        result["passed"] = all(checks.values())
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        summary = {k: v for k, v in result.items() if k not in ("samples", "error_lines")}
        print(json.dumps(summary, indent=2))
        return 0 if result["passed"] else 1
    finally:
        if feeder is not None:
            feeder.stop_flag.set()
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        if broker is not None:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
