"""The periodic batch retrain: profiles -> ALS -> regression gate -> model store -> announcement.

Where the training data comes from:
  * the state table's changelog topic (the users' confidence profiles exactly as the workers
    keep them; the latest record per user wins), or
  * a history file, to bootstrap a system that has no state yet.

The gate (recsys.evaluation.offline.holdout_users): a candidate is trained without a stable 10% of
users, whose later items it must then predict from their earlier ones (fold-in + blend,
MAP@10). The serving model's score on the same protocol was recorded in its metadata when it
was trained; a candidate worse than that by more than `retrain_tolerance` (relative) is not
published, unless the shortfall is within two standard errors of the candidate's score (few
held-out users make a noisy score). The serving model cannot simply be re-scored on today's
data: it was trained on much of it. With too few held-out users, or no recorded score, the
gate passes and says so. The published model is then trained on every user and records its
own held-out score; XᵀX of its users is stored with it (workers fold new items in against it,
streaming/worker/new_items.py). Workers hear of it through a small message on the
model-updates topic; the factors never travel through Kafka.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from recsys.confidence import UserProfile, build_profiles
from recsys.config import Config, Settings
from recsys.data.datasets import load
from recsys.errors import RecsysError
from recsys.evaluation.offline import evaluate_model, holdout_users
from recsys.model.item_foldin import user_gram
from recsys.model.store import ModelStore
from recsys.model.train import train
from streaming.worker.state import StateDecodeError, decode

log = logging.getLogger("streamrec.retrain")
MIN_GATE_CASES = 30


class RetrainMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = registry or CollectorRegistry()
        self.registry = r
        self.runs = Counter(
            "streamrec_retrain_runs", "Retrain runs, by result (published, rejected, failed)", ["result"], registry=r
        )
        self.duration = Histogram(
            "streamrec_retrain_duration_seconds",
            "Wall time of a retrain",
            buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.offline = Gauge(
            "streamrec_retrain_offline_metric",
            "Offline metrics of the last gate, by model",
            ["metric", "model"],
            registry=r,
        )
        self.last_success = Gauge(
            "streamrec_retrain_last_success_timestamp_seconds", "When a retrain last published a model", registry=r
        )
        self.users = Gauge("streamrec_retrain_users", "Users in the last retrain's training data", registry=r)


@dataclass
class RetrainResult:
    result: str  # published | rejected | failed
    version: str | None = None
    gate: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    users: int = 0


def read_changelog(bootstrap: str, topic: str, timeout_s: float = 60.0) -> dict[str, UserProfile]:
    """Every user's latest state from the table's changelog, read to its current end."""
    from kafka import KafkaConsumer, TopicPartition

    from streaming.kafka import clients

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        **clients.kafka_python(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            return {}
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        latest: dict[bytes, bytes | None] = {}
        deadline = time.time() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.time() > deadline:
                raise RecsysError(f"reading {topic} did not reach its end within {timeout_s}s")
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    latest[r.key] = r.value
    finally:
        consumer.close()
    profiles: dict[str, UserProfile] = {}
    for key, value in latest.items():
        if value is None or key is None:
            continue
        try:
            profiles[key.decode()] = decode(value).profile
        except (StateDecodeError, UnicodeDecodeError) as e:
            log.warning("skipping unreadable state record for %r: %s", key[:64], e)
    return profiles


def announce(bootstrap: str, topic: str, version: str, extra: dict[str, Any] | None = None) -> None:
    from kafka import KafkaProducer

    from streaming.kafka import clients

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=5, **clients.kafka_python())
    try:
        body = {"version": version, "announced": time.time(), **(extra or {})}
        producer.send(topic, json.dumps(body).encode()).get(timeout=30)
    finally:
        producer.close()


def retrain_once(
    profiles: dict[str, UserProfile],
    store: ModelStore,
    settings: Settings,
    metrics: RetrainMetrics | None = None,
    source: str = "",
    config: Any = None,
) -> RetrainResult:
    """Train, gate, publish. Does not announce (the caller does, if it published).
    `config` (recsys.config.Config) supplies confidence, training and scoring settings."""
    metrics = metrics or RetrainMetrics()
    t0 = time.time()
    config = config if config is not None else Config()
    ccfg, tcfg, scfg = config.confidence, config.train, config.scoring
    if not profiles:
        raise RecsysError("no training data: the state changelog is empty and no history file was given")
    gate: dict[str, Any] = {"passed": True}
    train_part, cases = holdout_users(profiles)
    gate["cases"] = len(cases)
    holdout: dict[str, float] = {}
    if len(cases) >= MIN_GATE_CASES:
        candidate, _, _ = train(train_part, ccfg, tcfg)
        holdout = evaluate_model(candidate, cases, ccfg, scfg)
        gate["candidate_map10"] = holdout["MAP@10"]
        for k, v in holdout.items():
            metrics.offline.labels(k, "candidate").set(v)
        current_version = store.current()
        previous = None
        if current_version is not None:
            try:
                previous = store.metadata(current_version).get("holdout", {}).get("MAP@10")
            except RecsysError as e:
                gate["note"] = f"serving model {current_version} unreadable ({e}): not gated"
        if previous is not None:
            gate.update(current=current_version, current_map10=previous)
            metrics.offline.labels("MAP@10", "current").set(previous)
            noise = 2 * holdout.get("MAP@10_se", 0.0)
            gate["passed"] = holdout["MAP@10"] + noise >= previous * (1 - settings.retrain_tolerance)
        else:
            gate.setdefault("note", "no held-out score recorded for the serving model: not gated")
    else:
        gate["note"] = f"only {len(cases)} held-out users with enough history: too few to judge, not gated"
    if not gate["passed"]:
        metrics.runs.labels("rejected").inc()
        log.warning(
            "retrain rejected: candidate held-out MAP@10 %.4f is below the serving model's %.4f "
            "by more than noise and the tolerance",
            gate["candidate_map10"],
            gate["current_map10"],
        )
        return RetrainResult("rejected", None, gate, time.time() - t0, len(profiles))
    model, user_factors, _ = train(
        profiles, ccfg, tcfg, metadata={"gate": gate, "data_source": source, "holdout": holdout, "metrics": holdout}
    )
    # XᵀX of the training users goes with the version: workers fold new items in against it.
    store.save(model, publish=True, user_gram=user_gram(user_factors))
    seconds = time.time() - t0
    metrics.runs.labels("published").inc()
    metrics.duration.observe(seconds)
    metrics.last_success.set(time.time())
    metrics.users.set(len(profiles))
    log.info(
        "published model %s (%d users, %d items) in %.1fs; gate %s",
        model.version,
        len(profiles),
        model.n_items,
        seconds,
        gate,
    )
    return RetrainResult("published", model.version, gate, seconds, len(profiles))


def run(
    settings: Settings,
    *,
    data: str | None,
    every_s: float | None,
    metrics_port: int | None,
    max_runs: int | None = None,
    config: Any = None,
    metrics_host: str = "127.0.0.1",
) -> int:
    metrics = RetrainMetrics()
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_host, registry=metrics.registry)
        log.info("retrain metrics on http://%s:%d/metrics", metrics_host, metrics_port)
    store = ModelStore(settings.model_dir)
    interrupted_writes(store, metrics)
    runs = 0
    while True:
        t0 = time.time()
        try:
            if data:
                events, path = load(data, mapping=config.input if config is not None else None)
                ccfg = config.confidence if config is not None else Config().confidence
                profiles, source = build_profiles(events, ccfg), str(path)
            else:
                profiles = read_changelog(settings.bootstrap, settings.changelog_topic)
                source = f"kafka:{settings.changelog_topic}"
            res = retrain_once(profiles, store, settings, metrics, source, config)
            if res.version:
                announce(settings.bootstrap, settings.model_updates_topic, res.version, {"gate": res.gate})
            print(
                json.dumps(
                    {
                        "result": res.result,
                        "version": res.version,
                        "users": res.users,
                        "seconds": round(res.seconds, 2),
                        "gate": res.gate,
                    }
                ),
                flush=True,
            )
        except Exception as e:  # a failed retrain never takes the system down: count, log, go on
            metrics.runs.labels("failed").inc()
            log.error("retrain failed: %s", e, exc_info=not isinstance(e, RecsysError))
            if every_s is None:
                raise
        runs += 1
        if every_s is None or (max_runs is not None and runs >= max_runs):
            return 0
        time.sleep(max(0.0, every_s - (time.time() - t0)))


def interrupted_writes(store: ModelStore, metrics: RetrainMetrics) -> int:
    """A retrain killed while writing a version leaves its `.tmp-<version>-<pid>` directory
    behind. Readers never see it (ModelStore.versions skips it; it is never renamed into
    place): here, at the next start, each one whose writer is gone is counted as a failed run,
    logged and removed. Returns how many."""
    import os
    import shutil

    found = 0
    if not store.root.is_dir():
        return 0
    for tmp in sorted(store.root.glob(".tmp-*")):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
            continue  # its writer is still running (another retrain): leave it be
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        found += 1
        metrics.runs.labels("failed").inc()
        log.error(
            "retrain failed: a previous run (pid %d) was killed while writing %s; the incomplete "
            "version was never visible; removed it",
            pid,
            tmp.name,
        )
        shutil.rmtree(tmp, ignore_errors=True)
    return found
