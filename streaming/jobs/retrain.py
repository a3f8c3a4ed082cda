"""The periodic batch retrain: training data -> ALS (once) -> regression gate -> model store -> announcement.

Where the training data comes from:
  * the state table's changelog topic (the users' confidence profiles exactly as the workers
    keep them; the latest record per user wins), read and decoded straight into a confidence
    matrix (streaming/jobs/changelog/: no per-user objects, memory a small multiple of the
    matrix), or
  * a history file, to bootstrap a system that has no state yet (`data_from_profiles`).

One training. A small, stable sample of users (the lowest `holdout_rank`s: 1%, at least 500 but
at most a tenth of the users, at most 20,000; `stream.retrain_holdout_*`) is left out of it; each
of them with at least 3 items is a gate case: their earlier half of items (by time) is the
profile, its latest item the query, the later half the truth (recsys.evaluation.offline.
holdout_case). The model trained on everyone else is the candidate, scored on those cases by
fold-in + blend (MAP@10), the way held-out users are served anyway. The serving model's score on
the same protocol was recorded in its metadata when it was trained; a candidate worse than that
by more than `retrain_tolerance` (relative) is not published, unless the shortfall is within two
standard errors of the candidate's score (few held-out users make a noisy score). The serving
model cannot simply be re-scored on today's data: it was trained on much of it. With too few
held-out users, or no recorded score, the gate passes and says so. A candidate that passes is
published as it is and records its held-out score; XᵀX of its users is stored with it (workers
fold new items in against it, streaming/worker/new_items.py).

Warm start: ALS starts from the serving version's item factors (items matched by id; new items
start as implicit starts every item) and stops once an iteration moves the item factors by less
than `train.converge_tol` (recsys.model.train.fit).

The seams for another engine: `fit_engine(data, ccfg, tcfg, init)` turns TrainingData into a
Model and the users' XᵀX (recsys.model.train.fit by default); `gate(candidate, cases, ...)`
judges a candidate on held-out cases. Workers hear of a published model through a small message
on the model-updates topic; the factors never travel through Kafka.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from recsys.candidates.ranker import RankerConfig
from recsys.confidence import ConfidenceConfig, UserProfile, build_profiles
from recsys.config import Config, Settings
from recsys.data.datasets import load
from recsys.errors import RecsysError
from recsys.evaluation.offline import EvalCase, evaluate_model, holdout_case, holdout_rank, holdout_size
from recsys.events import Event
from recsys.model.factors import Model
from recsys.model.store import ModelStore
from recsys.model.train import TrainConfig, TrainingData, confidence_matrix, fit
from recsys.serving.scoring import ScoringConfig

if TYPE_CHECKING:
    from streaming.jobs.window import Window

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
        self.skipped = Counter(
            "streamrec_retrain_skipped_records",
            "Unreadable or foreign state records the retrain skipped (each logged with its key)",
            registry=r,
        )
        self.phase = Gauge(
            "streamrec_retrain_phase_seconds", "Seconds of each phase of the last retrain", ["phase"], registry=r
        )
        self.ranker_runs = Counter(
            "streamrec_retrain_ranker_runs",
            "Rankers of published versions, by result (published; refused by its gate; absent: none trained)",
            ["result"],
            registry=r,
        )
        self.ranker_offline = Gauge(
            "streamrec_retrain_ranker_metric",
            "The last ranker gate's figures on its held-out events, by lists (ranker, fallback)",
            ["metric", "lists"],
            registry=r,
        )


@dataclass
class RetrainResult:
    result: str  # published | rejected | failed
    version: str | None = None
    gate: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    users: int = 0
    phases: dict[str, Any] = field(default_factory=dict)
    ranker: dict[str, Any] = field(default_factory=dict)  # published or not, why, the gate's figures


def read_changelog(
    settings: Settings,
    ccfg: ConfidenceConfig,
    topic: str | None = None,
    client: str = "librdkafka",
    reader_process: bool | None = None,
    decode_thread: bool = True,
) -> TrainingData:
    """Every user's latest state from the table's changelog (or `topic`), read to its current end,
    as training data: the retrain's read, which the benches time too (`client`, `reader_process`
    and `decode_thread`: `read_training_data`'s)."""
    from streaming.jobs.changelog import read_training_data

    return read_training_data(
        settings.bootstrap,
        topic or settings.changelog_topic,
        ccfg,
        stall_s=settings.changelog_stall_s,
        holdout_fraction=settings.retrain_holdout_fraction,
        holdout_min=settings.retrain_holdout_min,
        holdout_max=settings.retrain_holdout_max,
        client=client,
        reader_process=reader_process,
        decode_thread=decode_thread,
    )


def data_from_profiles(
    profiles: dict[str, UserProfile], ccfg: ConfidenceConfig, settings: Settings, source: str = ""
) -> TrainingData:
    """Profiles (a history file's, or tests') as training data, with the same hold-out as the changelog's."""
    if not profiles:
        raise RecsysError("no training data: the state changelog is empty and no history file was given")
    want = holdout_size(
        len(profiles), settings.retrain_holdout_fraction, settings.retrain_holdout_min, settings.retrain_holdout_max
    )
    cases: list[EvalCase] = []
    held: set[str] = set()
    for user in sorted(profiles, key=lambda u: (holdout_rank(u.encode()), u)):
        if len(cases) >= want:
            break
        case = holdout_case(user, profiles[user])
        if case is not None:
            cases.append(case)
            held.add(user)
    train_part = {u: p for u, p in profiles.items() if u not in held}
    matrix, _, items = confidence_matrix(train_part, ccfg)
    ts = [p.last_ts for p in profiles.values()]
    return TrainingData(matrix, items, cases, min(ts), max(ts), source)


EventsWindow = Callable[[], "Window"]  # the recent events the ranker's examples come from


def clickstream_window(settings: Settings, config: Config) -> EventsWindow:
    """The recent clickstream, read when called (streaming/jobs/window.py)."""

    def read() -> Window:
        from streaming.jobs.window import read_window

        return read_window(
            settings.bootstrap,
            settings.clickstream_topic,
            window_s=config.ranker.window_hours * 3600.0,
            max_events=config.ranker.window_max_events,
            mapping=config.input,
            stall_s=settings.changelog_stall_s,
        )

    return read


def events_window(events: list[Event], rcfg: RankerConfig) -> EventsWindow:
    """A history file's events as the window: its last `window_hours` of event time, at most
    `window_max_events` (the newest)."""

    def take() -> Window:
        from streaming.jobs.window import Window

        if not events:
            return Window(note="the history file has no events")
        ordered = sorted(events, key=lambda e: e.ts)
        since = ordered[-1].ts - int(rcfg.window_hours * 3_600_000)
        recent = [e for e in ordered if e.ts >= since][-rcfg.window_max_events :]
        return Window(events=recent, records=len(recent))

    return take


def ranker_gate(figures: dict[str, Any], cases_min: int = MIN_GATE_CASES) -> tuple[bool, str]:
    """The ranker is published if its lists are not worse than the fallback's (the blend's, from
    the same replay) on held-out example events by more than noise, on HR@10 and on MRR@10 (MAP@10
    with one relevant item): the model gate's rule (two standard errors of the candidate's
    score) without a tolerance, since without a ranker the blend serves as it does today."""
    held = figures.get("holdout")
    n = figures.get("gate_events", 0)
    if not held:
        return False, "no held-out figures"
    if n < cases_min:
        return False, f"only {n} held-out example events: too few to judge, not published"
    r, f = held["ranker"], held["fallback"]
    worse = [m for m in ("HR@10", "MRR@10") if r[m] + 2 * r[f"{m}_se"] < f[m]]
    said = ", ".join(f"{m} {r[m]:.4f} vs the fallback's {f[m]:.4f}" for m in ("HR@10", "MRR@10"))
    if not worse:
        return True, f"{said} on {n} held-out events"
    return (
        False,
        f"{' and '.join(worse)} below the fallback's by more than two standard errors: {said} on {n} held-out events",
    )


def train_gated_ranker(
    window: EventsWindow,
    store: ModelStore,
    config: Config,
    metrics: RetrainMetrics,
    phases: dict[str, Any],
    fit_threads: Callable[[], int] | None = None,
) -> tuple[bytes | None, dict[str, Any]]:
    """The version's ranker: the window's events → examples (scored by a model that has not seen
    them: the serving version when it records the newest event it was trained on and the window
    goes beyond it, else one trained on the window's head) → LambdaRank → its gate. Returns (the
    ranker's bytes or None, what happened). Never raises: without a ranker the blend serves.
    `fit_threads()`: LightGBM's threads when its fit starts (`RankerJob`)."""
    from recsys.candidates.training import train_window_ranker
    from recsys.evaluation.streaming import StreamEvalConfig

    info: dict[str, Any] = {"published": False}
    t = time.time()
    try:
        w = window()
        phases["ranker_read_s"] = round(w.seconds or (time.time() - t), 3)
        info["window"] = w.summary()
        if not w.events:
            info["note"] = f"no ranker: no events in the window ({w.note or 'empty'})"
            return None, info
        model, seen_until = None, None
        current = store.current()
        if current is not None:
            until = store.metadata(current).get("data_until_ts")
            if until is not None and w.events[-1].ts > until:
                model, seen_until = store.load(current), int(until)
        t = time.time()
        wr, _held = train_window_ranker(
            w.events,
            config.ranker,
            ccfg=config.confidence,
            scfg=config.scoring,
            tcfg=config.train,
            # the worker's sources (`[sources]`): the examples' candidates are the ones it serves
            ecfg=StreamEvalConfig(sources=config.sources),
            model=model,
            seen_until=seen_until,
            progress=log.info,
            fit_threads=fit_threads,
        )
        phases["ranker_train_s"] = round(time.time() - t, 3)
        info.update(wr.figures)
        if wr.ranker is None:
            info["note"] = f"no ranker: {wr.note}"
            return None, info
        passed, why = ranker_gate(wr.figures)
        info["gate"] = {"passed": passed, "note": why}
        for lists, fig in wr.figures["holdout"].items():
            for k, v in fig.items():
                metrics.ranker_offline.labels(k, lists).set(v)
        if not passed:
            info["note"] = f"ranker refused: {why}"
            return None, info
        data = wr.ranker.to_bytes()
        info.update(published=True, sha256=hashlib.sha256(data).hexdigest())
        return data, info
    except Exception as e:  # the ranker never fails a retrain: the model goes out without one
        log.warning("ranker not trained: %s", e, exc_info=not isinstance(e, RecsysError))
        info["note"] = f"no ranker: {e}"
        return None, info


class RankerJob:
    """`train_gated_ranker` on its own thread, started before the model's fit: the ranker's
    examples are scored by a model that is not the one being trained, so the two overlap (the
    ALS fit runs in native code without the GIL; the replay is Python). `result` joins it.

    LightGBM's fit takes one thread while the ALS fit runs (they would compete for the cores)
    and `ranker.fit_threads` once it is done (`fit_done`); the count does not change the ranker
    (recsys.candidates.ranker.fit)."""

    def __init__(self, window: EventsWindow, store: ModelStore, config: Config, metrics: RetrainMetrics):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.phases: dict[str, Any] = {}
        self._als_done = threading.Event()
        threads = config.ranker.fit_threads

        def fit_threads() -> int:
            return threads if self._als_done.is_set() else 1

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="retrain-ranker")
        self._future = self._pool.submit(train_gated_ranker, window, store, config, metrics, self.phases, fit_threads)

    def fit_done(self) -> None:
        """The model's fit is over: the ranker's fit may take `ranker.fit_threads`."""
        self._als_done.set()

    def abandon(self) -> None:
        """The retrain failed before its model: the result is not wanted (a thread cannot be
        stopped: it finishes on its own, its ranker dropped)."""
        self._als_done.set()
        self._pool.shutdown(wait=False)

    def result(self, phases: dict[str, Any]) -> tuple[bytes | None, dict[str, Any]]:
        """Wait for it; its phases go into `phases`, with how long the retrain waited for it."""
        t = time.time()
        try:
            return self._future.result()
        finally:
            self._pool.shutdown()
            phases.update(self.phases, ranker_wait_s=round(time.time() - t, 3))


FitEngine = Callable[[TrainingData, ConfidenceConfig, TrainConfig, "Model | None"], tuple[Model, np.ndarray]]


def fit_engine(
    data: TrainingData, ccfg: ConfidenceConfig, tcfg: TrainConfig, init: Model | None
) -> tuple[Model, np.ndarray]:
    """The default engine: implicit ALS in this process (recsys.model.train.fit)."""
    return fit(data, ccfg, tcfg, init=init)


def gate(
    candidate: Model,
    cases: list[EvalCase],
    store: ModelStore,
    settings: Settings,
    ccfg: ConfidenceConfig,
    scfg: ScoringConfig,
    metrics: RetrainMetrics | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Judge a candidate on held-out cases against the serving model's recorded score.
    Returns (the gate's verdict and figures, the candidate's held-out metrics)."""
    metrics = metrics or RetrainMetrics()
    verdict: dict[str, Any] = {"passed": True, "cases": len(cases)}
    holdout: dict[str, float] = {}
    if len(cases) < MIN_GATE_CASES:
        verdict["note"] = f"only {len(cases)} held-out users with enough history: too few to judge, not gated"
        return verdict, holdout
    holdout = evaluate_model(candidate, cases, ccfg, scfg)
    verdict["candidate_map10"] = holdout["MAP@10"]
    for k, v in holdout.items():
        metrics.offline.labels(k, "candidate").set(v)
    current_version = store.current()
    previous = None
    if current_version is not None:
        try:
            previous = store.metadata(current_version).get("holdout", {}).get("MAP@10")
        except RecsysError as e:
            verdict["note"] = f"serving model {current_version} unreadable ({e}): not gated"
    if previous is not None:
        verdict.update(current=current_version, current_map10=previous)
        metrics.offline.labels("MAP@10", "current").set(previous)
        noise = 2 * holdout.get("MAP@10_se", 0.0)
        verdict["passed"] = holdout["MAP@10"] + noise >= previous * (1 - settings.retrain_tolerance)
    else:
        verdict.setdefault("note", "no held-out score recorded for the serving model: not gated")
    return verdict, holdout


def serving_model(store: ModelStore) -> Model | None:
    """The serving version, to warm-start from; None (a cold start) if there is none or it is unreadable."""
    current = store.current()
    if current is None:
        return None
    try:
        return store.load(current)
    except RecsysError as e:
        log.warning("serving model %s unreadable (%s): a cold start", current, e)
        return None


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def announce(
    bootstrap: str,
    topic: str,
    version: str,
    extra: dict[str, Any] | None = None,
    *,
    settings: Settings | None = None,
    store: ModelStore | None = None,
) -> None:
    """Tell every worker about `version` on model-updates. With `settings.model_transport` kafka
    the version's files go to the artifacts topic first, from `store`
    (streaming/kafka/model_transport.py): the announcement stays last, so a worker that hears of
    a version finds it there complete."""
    from kafka import KafkaProducer

    from streaming.kafka import clients

    if settings is not None and settings.model_transport == "kafka":
        from streaming.kafka.model_transport import ModelTransport

        if store is None:
            raise RecsysError("model_transport kafka: announcing a version needs the store it is published from")
        ModelTransport.from_settings(settings).publish(store, version)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=5, **clients.kafka_python())
    try:
        body = {"version": version, "announced": time.time(), **(extra or {})}
        producer.send(topic, json.dumps(body).encode()).get(timeout=30)
    finally:
        producer.close()


def retrain_once(
    data: TrainingData | dict[str, UserProfile],
    store: ModelStore,
    settings: Settings,
    metrics: RetrainMetrics | None = None,
    source: str = "",
    config: Any = None,
    engine: FitEngine | None = None,
    window: EventsWindow | None = None,
    ranker: RankerJob | None = None,
) -> RetrainResult:
    """Train once, gate, publish. Does not announce (the caller does, if it published).
    `data`: TrainingData (from the changelog) or profiles (split here the same way).
    `config` (recsys.config.Config) supplies confidence, training and scoring settings;
    `engine` turns the data into a model (default: `fit_engine`); `window`: the recent events
    the version's ranker is trained on (None: no ranker; `clickstream_window`). `ranker`: its
    job started already (`RankerJob`: before the training data was read), instead of `window`."""
    metrics = metrics or RetrainMetrics()
    t0 = time.time()
    config = config if config is not None else Config()
    ccfg, tcfg = config.confidence, config.train
    job = ranker
    try:
        if not isinstance(data, TrainingData):
            data = data_from_profiles(data, ccfg, settings, source)
        source = source or data.source
        if data.skipped:
            metrics.skipped.inc(data.skipped)
        if data.users == 0 or data.matrix.nnz == 0:
            raise RecsysError(
                f"no training data: {source or 'the input'} has no user with a readable state to train on"
            )
        phases: dict[str, Any] = {k: v for k, v in data.phases.items() if k.endswith("_s")}
        t = time.time()
        init = serving_model(store) if tcfg.warm_start else None
        phases["load_serving_s"] = round(time.time() - t, 3)
        t = time.time()
        if job is None and window is not None:
            job = RankerJob(window, store, config, metrics)
        model, gram = (engine or fit_engine)(data, ccfg, tcfg, init)
    except BaseException:
        if job is not None:
            job.abandon()
        raise
    if job is not None:
        job.fit_done()
    phases["fit_s"] = round(time.time() - t, 3)
    users = data.users + len(data.cases)
    return gate_and_publish(
        model,
        gram,
        data.cases,
        store,
        settings,
        config,
        metrics,
        source,
        phases,
        t0,
        users,
        ranker=job,
        data_until_ts=data.last_ts_max or None,
    )


def gate_and_publish(
    model: Model,
    gram: Any,
    cases: list[EvalCase],
    store: ModelStore,
    settings: Settings,
    config: Config,
    metrics: RetrainMetrics,
    source: str,
    phases: dict[str, Any],
    t0: float,
    users: int,
    engine: str = "implicit",
    *,
    ranker: RankerJob | None = None,
    data_until_ts: int | None = None,
) -> RetrainResult:
    """Every engine's last steps: the gate on the held-out users, then the ranker (`ranker`,
    started before the fit: its own examples and gate, `train_gated_ranker`), the store
    (published, with the ranker if it passed) and the metrics, or a rejection. Does not announce (the caller does,
    if it published). `data_until_ts`: the newest event time the model was trained on (the next
    retrain's ranker examples may use this model for the events after it)."""
    t = time.time()
    verdict, holdout = gate(model, cases, store, settings, config.confidence, config.scoring, metrics)
    phases["gate_s"] = round(time.time() - t, 3)
    if not verdict["passed"]:
        if ranker is not None:
            ranker.result(phases)  # not published with a rejected model; nothing left running
        metrics.runs.labels("rejected").inc()
        log.warning(
            "retrain rejected: candidate held-out MAP@10 %.4f is below the serving model's %.4f "
            "by more than noise and the tolerance",
            verdict["candidate_map10"],
            verdict["current_map10"],
        )
        return RetrainResult("rejected", None, verdict, time.time() - t0, users, phases)
    model.metadata.update(gate=verdict, data_source=source, holdout=holdout, metrics=holdout, held_out_users=len(cases))
    if data_until_ts is not None:
        model.metadata["data_until_ts"] = int(data_until_ts)
    ranker_bytes: bytes | None = None
    if ranker is None:
        rinfo: dict[str, Any] = {"published": False, "note": "no ranker: off (ranker.retrain) or no events source"}
    else:
        ranker_bytes, rinfo = ranker.result(phases)
    result = "published" if ranker_bytes is not None else "refused" if "gate" in rinfo else "absent"
    metrics.ranker_runs.labels(result).inc()
    model.metadata["ranker"] = rinfo
    t = time.time()
    # XᵀX of the training users goes with the version: workers fold new items in against it.
    store.save(model, publish=True, user_gram=gram, ranker=ranker_bytes)
    phases["save_s"] = round(time.time() - t, 3)
    seconds = time.time() - t0
    for k, v in phases.items():
        metrics.phase.labels(k.removesuffix("_s")).set(v)
    metrics.runs.labels("published").inc()
    metrics.duration.observe(seconds)
    metrics.last_success.set(time.time())
    metrics.users.set(users)
    log.info(
        "published model %s (%s; %d users, %d held out, %d items) in %.1fs (%s); gate %s; %s",
        model.version,
        engine,
        users,
        len(cases),
        model.n_items,
        seconds,
        ", ".join(f"{k} {v}" for k, v in phases.items()),
        verdict,
        "with its ranker" if ranker_bytes is not None else rinfo.get("note", "no ranker"),
    )
    return RetrainResult("published", model.version, verdict, seconds, users, phases, rinfo)


def run(
    settings: Settings,
    *,
    data: str | None,
    every_s: float | None,
    metrics_port: int | None,
    max_runs: int | None = None,
    config: Any = None,
    metrics_host: str = "127.0.0.1",
    trainer: Callable[[ModelStore, RetrainMetrics], RetrainResult] | None = None,
) -> int:
    """Retrain once or on a schedule, announcing what it publishes. `trainer`: an engine that
    reads and trains by itself (`recsys retrain --engine spark`), instead of the changelog read
    here and `retrain_once`."""
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
            ccfg = config.confidence if config is not None else Config().confidence
            training: TrainingData | dict[str, UserProfile]
            if trainer is not None:  # another engine reads and trains (streaming/jobs/spark_engine.py)
                if data:
                    raise RecsysError(
                        "--engine spark trains from the state changelog; --data FILE trains with implicit"
                    )
                res = trainer(store, metrics)
            else:
                cfg = config if config is not None else Config()
                window: EventsWindow | None = None
                job: RankerJob | None = None
                if data:
                    events, path = load(data, mapping=cfg.input)
                    training, source = build_profiles(events, ccfg), str(path)
                    if cfg.ranker.retrain:
                        window = events_window(events, cfg.ranker)
                else:
                    # The ranker's job starts first: its window read and examples (scored by the
                    # serving version) need neither the changelog nor the new model, so they
                    # overlap the read (native fetches) as well as the ALS fit.
                    if cfg.ranker.retrain:
                        job = RankerJob(clickstream_window(settings, cfg), store, cfg, metrics)
                    try:
                        training = read_changelog(settings, ccfg)
                    except BaseException:
                        if job is not None:
                            job.abandon()
                        raise
                    source = f"kafka:{settings.changelog_topic}"
                res = retrain_once(training, store, settings, metrics, source, cfg, window=window, ranker=job)
                del training  # the next run reads afresh; the matrix need not outlive this one
            if res.version:
                announce(
                    settings.bootstrap,
                    settings.model_updates_topic,
                    res.version,
                    {"gate": res.gate},
                    settings=settings,
                    store=store,
                )
            print(
                json.dumps(
                    {
                        "result": res.result,
                        "version": res.version,
                        "users": res.users,
                        "seconds": round(res.seconds, 2),
                        "gate": res.gate,
                        "phases": res.phases,
                        "ranker": res.ranker,
                        "peak_rss_mb": round(peak_rss_mb(), 1),
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
