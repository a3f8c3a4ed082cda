"""The retrain past one machine: Spark MLlib ALS on the state changelog (`recsys retrain --engine spark`).

The implicit engine (streaming/jobs/retrain.py) reads every user's state into one process. This
one leaves the users where Spark puts them:

    Kafka source ──► latest record per user (max offset per key; tombstones drop the user)
      (spark-sql-kafka, read by the executors, partition by partition)
                 ──► hold-out: the users with the lowest crc32(key) (a small, capped sample) go to
                     the driver as raw records and become the gate's cases (fold-in + MAP@10)
                 ──► every other record decoded on the executors (streaming/worker/state.py's
                     codec) into (user, item, r) rows
                 ──► MLlib ALS, implicitPrefs ──► item factors to the driver (the artifact holds
                     them anyway); XᵀX summed over the user factors where they lie

and writes the same artifact as the implicit engine (item factors, norms, YᵀY, XᵀX, popularity,
metadata, checksums) through recsys.model.store.ModelStore. Only the item factors and the
held-out sample ever reach one process.

Spark's Kafka connector is not part of pyspark: it comes from Maven Central through Spark's own
Ivy (`spark.jars.packages`), cached under `ops.spark_cache` (default ~/.cache/streamrec/spark,
like the broker's jars, devtools/broker.py) so only the first run downloads it.

pyspark is an optional dependency (`pip install 'streamrec[spark]'`); this module imports it
only when a session is made.
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys.confidence import ConfidenceConfig
from recsys.config import KafkaSecurity
from recsys.errors import ConfigError, RecsysError
from recsys.model.factors import Model
from recsys.model.store import new_version_name
from recsys.model.train import TrainConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from recsys.config import Config
    from recsys.evaluation.offline import EvalCase
    from recsys.model.store import ModelStore
    from streaming.jobs.retrain import EventsWindow, RetrainMetrics, RetrainResult

log = logging.getLogger("streamrec.retrain.spark")

# Spark 4 is built for Scala 2.13; the connector's version must be pyspark's own.
KAFKA_CONNECTOR = "org.apache.spark:spark-sql-kafka-0-10_2.13"
LOCAL_MASTER = "local[2]"
# What a driver gets unless the configuration says otherwise (ops.spark_conf wins).
DEFAULT_CONF = {
    "spark.driver.memory": "4g",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
}
# In local mode every task is a thread of this process: a few shuffle partitions, not Spark's 200.
LOCAL_CONF = {"spark.sql.shuffle.partitions": "8"}
ROOT = Path(__file__).resolve().parents[2]


class SparkEngineError(RecsysError):
    """The Spark engine could not run: pyspark missing, the connector not fetched, no data."""


@dataclass(frozen=True)
class SparkOptions:
    """Where and how Spark runs. `conf`: any Spark setting (spark.executor.memory, ...), over
    DEFAULT_CONF; `packages`: Maven coordinates to add (default: the Kafka connector matching
    the installed pyspark); `cache`: the Ivy cache root."""

    master: str = LOCAL_MASTER
    conf: Mapping[str, str] = field(default_factory=dict)
    cache: str = "~/.cache/streamrec/spark"
    packages: str = ""

    @property
    def local(self) -> bool:
        return self.master.startswith("local")


def connector_package(version: str | None = None) -> str:
    """Maven coordinates of the Kafka source for Spark `version` (default: the installed pyspark's)."""
    if version is None:
        version = _pyspark().__version__
    return f"{KAFKA_CONNECTOR}:{version}"


def _pyspark() -> Any:
    try:
        import pyspark
    except ImportError:
        raise SparkEngineError(
            "the spark engine needs pyspark: pip install 'streamrec[spark]' (or 'pyspark>=4.2,<4.3')"
        ) from None
    return pyspark


# Maven Central only; the local Ivy cache under `spark.jars.ivy` is consulted first by Ivy itself.
IVY_SETTINGS = """<ivysettings>
  <settings defaultResolver="central"/>
  <resolvers>
    <ibiblio name="central" m2compatible="true" root="https://repo1.maven.org/maven2/"/>
  </resolvers>
</ivysettings>
"""


def spark_conf(opts: SparkOptions) -> dict[str, str]:
    """Every Spark setting a session gets (before the session adds its own defaults)."""
    cache = Path(opts.cache).expanduser()
    conf = {**DEFAULT_CONF, **(LOCAL_CONF if opts.local else {})}
    conf["spark.jars.packages"] = ",".join(p for p in (connector_package(), opts.packages) if p)
    # Ivy's own cache and the resolved jars live here: a second run downloads nothing.
    conf["spark.jars.ivy"] = str(cache / "ivy")
    # Spark's default resolvers include spark-packages.org; ours name Maven Central alone (a site
    # may point Spark at a mirror with its own spark.jars.ivySettings or spark.jars.repositories).
    if "spark.jars.ivySettings" not in opts.conf and "spark.jars.repositories" not in opts.conf:
        conf["spark.jars.ivySettings"] = str(cache / "ivysettings.xml")
    if opts.local:
        conf["spark.checkpoint.dir"] = str(cache / "checkpoints")
    conf.update(opts.conf)
    return conf


def session(opts: SparkOptions, app_name: str = "streamrec-retrain") -> SparkSession:
    """A Spark session on `opts.master`; its first start fetches the Kafka connector (once)."""
    _pyspark()
    from pyspark.sql import SparkSession

    conf = spark_conf(opts)
    Path(conf["spark.jars.ivy"]).mkdir(parents=True, exist_ok=True)
    if conf.get("spark.jars.ivySettings") == str(Path(opts.cache).expanduser() / "ivysettings.xml"):
        Path(conf["spark.jars.ivySettings"]).write_text(IVY_SETTINGS)
    builder = SparkSession.builder.master(opts.master).appName(app_name)
    for k, v in conf.items():
        builder = builder.config(k, v)
    t0 = time.time()
    try:
        spark = builder.getOrCreate()
    except Exception as e:  # noqa: BLE001 - Py4J and the JVM launcher raise several types; one message
        raise SparkEngineError(
            f"could not start Spark on {opts.master} ({type(e).__name__}: {str(e)[:300]}); the Kafka "
            f"connector {connector_package()} comes from Maven Central into {conf['spark.jars.ivy']}"
        ) from None
    sc = spark.sparkContext
    sc.setLogLevel("WARN")
    # py4j logs every connection it closes at INFO, some from __del__ at interpreter exit.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    # The Python that runs our functions on the executors: `spark.pyspark.python` if set, else (local)
    # this interpreter, the one with numpy and this project, not whichever `python3` is first on
    # PATH (pyspark's default; it reads no configuration for it when the session is made here).
    python = conf.get("spark.pyspark.python") or (sys.executable if opts.local else None)
    if python:
        sc.pythonExec = python
    if "spark.checkpoint.dir" in conf:
        # ALS checkpoints its factors every few iterations so their lineage stays short.
        if opts.local:
            Path(conf["spark.checkpoint.dir"]).mkdir(parents=True, exist_ok=True)
        sc.setCheckpointDir(conf["spark.checkpoint.dir"])
    if not opts.local:
        # Executors elsewhere need the codec (streaming/worker/state.py) and recsys/confidence.py:
        # ship the two packages (numpy must be installed there; docs/operations.md).
        sc.addPyFile(str(code_zip()))
    log.info("Spark %s on %s started in %.1fs", spark.version, opts.master, time.time() - t0)
    return spark


def code_zip() -> Path:
    """recsys/ and streaming/ as one zip for executors' Python path."""
    out = Path(tempfile.mkdtemp(prefix="streamrec-spark-")) / "streamrec.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for pkg in ("recsys", "streaming"):
            for f in sorted((ROOT / pkg).rglob("*.py")):
                z.write(f, f.relative_to(ROOT))
    return out


def kafka_options(bootstrap: str, sec: KafkaSecurity | None = None) -> dict[str, str]:
    """The `[kafka]` settings as Spark's Kafka source options (Java client properties, prefixed
    `kafka.`). PEM files are used as they are (Kafka's PEM key and trust stores)."""
    from streaming.kafka import clients

    sec = clients.security(sec)
    out = {"kafka.bootstrap.servers": bootstrap, "kafka.security.protocol": sec.security_protocol}
    if sec.sasl:
        module = {
            "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
        }.get(sec.sasl_mechanism, "org.apache.kafka.common.security.scram.ScramLoginModule")

        def quoted(s: str) -> str:
            return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

        out["kafka.sasl.mechanism"] = sec.sasl_mechanism
        out["kafka.sasl.jaas.config"] = (
            f"{module} required username={quoted(sec.sasl_username)} password={quoted(clients.password(sec))};"
        )
    if sec.tls:
        if sec.ssl_cafile:
            out["kafka.ssl.truststore.type"] = "PEM"
            out["kafka.ssl.truststore.location"] = str(Path(sec.ssl_cafile).expanduser())
        if not sec.ssl_check_hostname:
            out["kafka.ssl.endpoint.identification.algorithm"] = ""
        if sec.ssl_certfile:
            if sec.ssl_key_password:
                raise ConfigError("the spark engine reads an unencrypted kafka.ssl_keyfile only")
            out["kafka.ssl.keystore.type"] = "PEM"
            out["kafka.ssl.keystore.certificate.chain"] = Path(sec.ssl_certfile).expanduser().read_text()
            out["kafka.ssl.keystore.key"] = Path(sec.ssl_keyfile).expanduser().read_text()
    return out


def latest_states(spark: SparkSession, bootstrap: str, topic: str, sec: KafkaSecurity | None = None) -> DataFrame:
    """(key, value) of every user's latest state record: the changelog read from its start to
    its end now, keeping the record with the highest offset per key (a key lives in one
    partition); a tombstone as latest record removes the user."""
    from pyspark.sql import functions as F

    raw = (
        spark.read.format("kafka")
        .options(**kafka_options(bootstrap, sec))
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("endingOffsets", "latest")
        # Compaction leaves gaps in the offsets, and a fresh topic may hold none at all.
        .option("failOnDataLoss", "false")
        .load()
    )
    return (
        raw.where(F.col("key").isNotNull())
        .groupBy("key")
        .agg(F.max_by("value", "offset").alias("value"))
        .where(F.col("value").isNotNull())
    )


# -- on the executors ---------------------------------------------------------------------------------


def decode_ratings(
    records: Iterable[tuple[tuple[bytes, bytes], int]], ccfg: ConfidenceConfig, bad: Any = None
) -> Iterator[tuple[int, str, float, int]]:
    """((key, value), user index) -> (user index, item, r, user's last event) per item, where r is
    the raw value decayed to the user's last event, as float32: Spark's implicit ALS makes the
    confidence 1 + alpha·r of it (see `als`). An unreadable record is skipped and counted in
    `bad` (an accumulator of (count, first keys))."""
    from streaming.worker.state import StateDecodeError, decode

    tiny = float(np.finfo(np.float32).tiny)
    for (key, value), uid in records:
        try:
            p = decode(bytes(value)).profile
        except StateDecodeError as e:
            if bad is not None:
                bad.add((1, [f"{bytes(key)[:64]!r}: {e}"]))
            continue
        if not p.items:
            continue
        n = len(p.items)
        values = np.fromiter((s.value for s in p.items.values()), np.float64, n)
        ages = np.fromiter((p.last_ts - s.ts for s in p.items.values()), np.int64, n)
        # The one confidence formula (recsys/confidence.py), then back to r = (c - 1) / alpha.
        r = (ccfg.confidences(values, ages) - 1.0) / ccfg.alpha
        # MLlib counts a rating as a preference only if it is > 0; a zero-weight event still
        # marks an item the user touched (c = 1 in the implicit engine).
        r = np.maximum(r, tiny).astype(np.float32)
        for item, ri in zip(p.items, r.tolist(), strict=True):
            yield uid, item, ri, p.last_ts


def _gram(rows: Iterable[Any]) -> Iterator[np.ndarray]:
    x = np.asarray([r[0] for r in rows], np.float64)
    yield x.T @ x if len(x) else np.zeros((0, 0))


def _add_gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.size == 0:
        return b
    if b.size == 0:
        return a
    return a + b


# -- on the driver ------------------------------------------------------------------------------------


def als(tcfg: TrainConfig, ccfg: ConfidenceConfig, blocks: int) -> Any:
    """MLlib ALS with our hyper-parameters mapped.

    Confidence: MLlib's implicit ALS takes a raw preference r per (user, item) and weighs it by
    c = 1 + alpha·r with p = 1 where r > 0 (Hu, Koren & Volinsky). Our confidence is that same
    c = 1 + alpha·r (recsys/confidence.py: r the decayed raw value), which the implicit engine
    hands over as c itself with implicit's own alpha at 1. So MLlib gets r as the rating and
    `confidence.alpha` as its alpha: the two engines solve with the same weights (r as float32;
    a zero r is raised to the smallest float32 so the item still counts as touched).

    factors → rank, iterations → maxIter, random_state → seed. regularization → regParam
    as is: MLlib scales it per row by that row's number of ratings (ALS-WR), implicit does not,
    so MLlib regularises a little more; with confidences in the tens (alpha 80.8) the effect on
    the held-out MAP@10 is within the parity test's 5% (tests/integration/test_spark_engine.py).
    The model stores `train.regularization` (what the workers' fold-in adds, as for implicit)."""
    if tcfg.kind != "als":
        raise ConfigError(f"the spark engine trains ALS only, not train.kind={tcfg.kind!r}")
    from pyspark.ml.recommendation import ALS

    return ALS(
        rank=tcfg.factors,
        maxIter=tcfg.iterations,
        regParam=tcfg.regularization,
        alpha=ccfg.alpha,
        implicitPrefs=True,
        nonnegative=False,
        userCol="uid",
        itemCol="iid",
        ratingCol="r",
        seed=tcfg.random_state if tcfg.random_state is not None else int(time.time()),
        numUserBlocks=blocks,
        numItemBlocks=blocks,
        checkpointInterval=5,
    )


@dataclass
class SparkTraining:
    """What the retrain job needs from an engine: the model (not yet saved), XᵀX of its training
    users (stored with it), and the held-out users' gate cases."""

    model: Model
    user_gram: np.ndarray
    cases: list[EvalCase]
    users: int  # every user read, held-out ones included
    skipped: int = 0
    skipped_keys: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)


class _BadRecords:
    """AccumulatorParam for (count, up to 20 example keys)."""

    def zero(self, value: tuple[int, list[str]]) -> tuple[int, list[str]]:
        return 0, []

    def addInPlace(self, a: tuple[int, list[str]], b: tuple[int, list[str]]) -> tuple[int, list[str]]:
        return a[0] + b[0], (a[1] + b[1])[:20]


def train_from_changelog(
    bootstrap: str,
    topic: str,
    ccfg: ConfidenceConfig,
    tcfg: TrainConfig,
    *,
    holdout_fraction: float = 0.01,
    holdout_min: int = 500,
    holdout_max: int = 20_000,
    opts: SparkOptions = SparkOptions(),
    sec: KafkaSecurity | None = None,
    spark: SparkSession | None = None,
    version: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> SparkTraining:
    """Read the changelog with Spark, hold out users for the gate exactly as the implicit engine
    does (streaming/jobs/changelog/: the lowest `holdout_rank`s, `holdout_size` of them that make
    a case), train MLlib ALS on everyone else, and return the model with XᵀX and the cases.
    `spark`: an existing session (else one is made from `opts` and stopped at the end)."""
    own = spark is None
    spark = spark or session(opts)
    try:
        return _train(
            spark,
            bootstrap,
            topic,
            ccfg,
            tcfg,
            (holdout_fraction, holdout_min, holdout_max),
            sec,
            version,
            metadata,
            opts,
        )
    finally:
        if own:
            spark.stop()


def _train(
    spark: SparkSession,
    bootstrap: str,
    topic: str,
    ccfg: ConfidenceConfig,
    tcfg: TrainConfig,
    holdout: tuple[float, int, int],
    sec: KafkaSecurity | None,
    version: str | None,
    metadata: Mapping[str, Any] | None,
    opts: SparkOptions,
) -> SparkTraining:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from recsys.evaluation.offline import holdout_case, holdout_size
    from streaming.worker.state import StateDecodeError, decode

    t0 = time.time()
    phases: dict[str, float] = {}
    sc = spark.sparkContext
    states = latest_states(spark, bootstrap, topic, sec).persist(StorageLevel.MEMORY_AND_DISK)
    n_users = states.count()
    phases["read_s"] = round(time.time() - t0, 2)
    if n_users == 0:
        states.unpersist()
        raise SparkEngineError(f"no training data: the state changelog {topic} is empty or missing")

    # Hold-out, as the implicit engine picks it: of the `holdout_max` users with the lowest rank
    # (crc32 of the key: Spark's crc32 is zlib's, recsys.evaluation.offline.holdout_rank; ties by
    # key), the first `holdout_size` that make a gate case. Only those leave the training data.
    t = time.time()
    fraction, floor, cap = holdout
    want = holdout_size(n_users, fraction, floor, cap)
    pool = (
        states.select(F.crc32("key").alias("rank"), "key", "value").orderBy("rank", "key").limit(cap).collect()
        if want > 0
        else []
    )
    cases: list[EvalCase] = []
    held: list[bytes] = []
    bad_keys: list[str] = []
    for row in pool:
        if len(cases) >= want:
            break
        key = bytes(row["key"])
        try:
            profile = decode(bytes(row["value"])).profile
            user = key.decode()
        except (StateDecodeError, UnicodeDecodeError) as e:
            bad_keys.append(f"{key[:64]!r}: {e}")
            held.append(key)
            continue
        case = holdout_case(user, profile)
        if case is not None:
            cases.append(case)
            held.append(key)
    del pool
    if held:
        held_df = spark.createDataFrame([(k,) for k in held], T.StructType([T.StructField("key", T.BinaryType())]))
        training = states.join(F.broadcast(held_df), "key", "left_anti")
    else:
        training = states
    phases["holdout_s"] = round(time.time() - t, 2)

    t = time.time()
    bad: Any = sc.accumulator((0, []), _BadRecords())  # type: ignore[arg-type]
    schema = T.StructType(
        [
            T.StructField("uid", T.IntegerType(), False),
            T.StructField("item", T.StringType(), False),
            T.StructField("r", T.FloatType(), False),
            T.StructField("last_ts", T.LongType(), False),
        ]
    )
    rows = training.select("key", "value").rdd.map(tuple).zipWithIndex()
    # Decoded once: the item index, the join and the summary below all read it.
    ratings = spark.createDataFrame(rows.mapPartitions(lambda it: decode_ratings(it, ccfg, bad)), schema).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    items = (
        ratings.select("item")
        .distinct()
        .rdd.map(lambda r: r[0])
        .zipWithIndex()
        .toDF(T.StructType([T.StructField("item", T.StringType()), T.StructField("iid", T.LongType())]))
        .select("item", F.col("iid").cast("int").alias("iid"))
    )
    data = ratings.join(items, "item").select("uid", "iid", "r", "last_ts").persist(StorageLevel.MEMORY_AND_DISK)
    summary = data.agg(
        F.count(F.lit(1)).alias("nnz"),
        F.countDistinct("uid").alias("users"),
        F.min("last_ts").alias("ts_min"),
        F.max("last_ts").alias("ts_max"),
    ).first()
    assert summary is not None
    ratings.unpersist()
    nnz, train_users = int(summary["nnz"]), int(summary["users"])
    skipped, skipped_keys = bad.value[0] + len(bad_keys), (bad.value[1] + bad_keys)[:20]
    for text in skipped_keys:
        log.warning("skipping unreadable state record %s", text)
    phases["decode_s"] = round(time.time() - t, 2)
    if nnz == 0:
        raise SparkEngineError(f"no training data: no readable user state with items in {topic}")

    t = time.time()
    blocks = max(2, sc.defaultParallelism)
    fitted = als(tcfg, ccfg, blocks).fit(data)
    phases["fit_s"] = round(time.time() - t, 2)

    # The artifact: item factors (to the driver, in iid order), popularity, XᵀX (summed where it lies).
    t = time.time()
    item_rows = fitted.itemFactors.join(items.withColumnRenamed("iid", "id"), "id").orderBy("id").collect()
    n_items = len(item_rows)
    item_ids = [r["item"] for r in item_rows]
    y = np.zeros((n_items, tcfg.factors), np.float32)
    index = {r["id"]: j for j, r in enumerate(item_rows)}
    for j, r in enumerate(item_rows):
        y[j] = r["features"]
    popularity = np.zeros(n_items, np.float32)
    for r in data.groupBy("iid").count().collect():
        popularity[index[r["iid"]]] = r["count"]
    gram = fitted.userFactors.select("features").rdd.mapPartitions(_gram).reduce(_add_gram)
    if gram.size == 0:
        gram = np.zeros((tcfg.factors, tcfg.factors))
    data.unpersist()
    states.unpersist()
    phases["collect_s"] = round(time.time() - t, 2)
    phases["total_s"] = round(time.time() - t0, 2)
    meta = {
        "kind": tcfg.kind,
        "engine": "spark",
        "spark": {
            "version": spark.version,
            "master": opts.master,
            "rank": tcfg.factors,
            "maxIter": tcfg.iterations,
            "regParam": tcfg.regularization,
            "alpha": ccfg.alpha,
            "blocks": blocks,
            "phases": phases,
        },
        "train": asdict(tcfg),
        "confidence": {**asdict(ccfg), "weights": dict(ccfg.weights)},
        "n_users": train_users,
        "nnz": nnz,
        "data_window": {"last_event_ts_min": int(summary["ts_min"]), "last_event_ts_max": int(summary["ts_max"])},
        "skipped_records": skipped,
        "train_seconds": phases["fit_s"],
    }
    meta.update(metadata or {})
    model = Model.from_factors(
        version or new_version_name(), item_ids, y, tcfg.regularization, popularity=popularity, metadata=meta
    )
    if not all(math.isfinite(v) for v in (float(np.abs(y).sum()), float(np.abs(gram).sum()))):
        raise SparkEngineError("Spark ALS produced non-finite factors")
    log.info(
        "spark: %d users (%d held out for the gate), %d items, %d non-zeros, %d skipped; phases %s",
        train_users,
        len(cases),
        n_items,
        nnz,
        skipped,
        phases,
    )
    return SparkTraining(
        model=model,
        user_gram=np.asarray(gram, np.float64),
        cases=cases,
        users=n_users - skipped,
        skipped=skipped,
        skipped_keys=skipped_keys,
        phases=phases,
    )


def options(config: Config, master: str | None = None) -> SparkOptions:
    """SparkOptions from the configuration (`stream.spark_master`, `ops.spark_conf`,
    `ops.spark_cache`); `master` (the command line's --spark-master) wins."""
    return SparkOptions(
        master=master or config.stream.spark_master,
        conf=dict(config.ops.spark_conf),
        cache=config.ops.spark_cache,
    )


def retrain_once(
    store: ModelStore,
    config: Config,
    metrics: RetrainMetrics | None = None,
    *,
    opts: SparkOptions | None = None,
    spark: SparkSession | None = None,
    window: EventsWindow | None = None,
) -> RetrainResult:
    """The retrain with the spark engine: changelog → MLlib ALS → the usual gate (fold-in on
    the held-out users, MAP@10 against the serving model's recorded score) → the store. Does not
    announce (the caller does, if it published). Always a cold start: MLlib's ALS takes no
    initial factors. `window`: the recent events its ranker is trained on (as the implicit
    engine's, streaming/jobs/retrain.py `train_gated_ranker`)."""
    from streaming.jobs.retrain import RankerJob, RetrainMetrics, gate_and_publish

    metrics = metrics or RetrainMetrics()
    settings = config.stream
    t0 = time.time()
    source = f"kafka:{settings.changelog_topic}"
    job = RankerJob(window, store, config, metrics) if window is not None else None
    res = train_from_changelog(
        settings.bootstrap,
        settings.changelog_topic,
        config.confidence,
        config.train,
        holdout_fraction=settings.retrain_holdout_fraction,
        holdout_min=settings.retrain_holdout_min,
        holdout_max=settings.retrain_holdout_max,
        opts=opts or options(config),
        sec=config.kafka,
        spark=spark,
    )
    if res.skipped:
        metrics.skipped.inc(res.skipped)
    phases: dict[str, Any] = {k: v for k, v in res.phases.items() if k != "total_s"}
    return gate_and_publish(
        res.model,
        res.user_gram,
        res.cases,
        store,
        settings,
        config,
        metrics,
        source,
        phases,
        t0,
        res.users,
        "spark",
        ranker=job,
    )


def environment_ready() -> bool:
    """pyspark importable and `java` on PATH (what a local session needs)."""
    import shutil

    try:
        import pyspark  # noqa: F401
    except ImportError:
        return False
    return shutil.which("java") is not None
