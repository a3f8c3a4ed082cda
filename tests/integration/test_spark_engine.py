"""The spark engine (`recsys retrain --engine spark`) in local mode on real data.

YOOCHOOSE's users (17.8k) as the workers keep them, encoded with the worker's codec into a real
broker's state changelog (plus one foreign record). Spark reads it with its own Kafka source
(the connector from Maven Central, cached), trains MLlib ALS and publishes through the store;
the artifact loads and verifies, a worker serves it, and its held-out MAP@10 is within 5% of
the implicit engine's on the same changelog, the same hold-out and the same hyper-parameters.
"""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest

from recsys.confidence import ItemState, UserProfile, build_profiles
from recsys.config import Config
from recsys.data.datasets import load_dataset
from recsys.evaluation.offline import evaluate_model
from recsys.model.store import ModelStore
from recsys.model.train import fit
from recsys.serving.recommender import Recommender
from streaming.jobs import spark_engine
from streaming.jobs.changelog import read_training_data
from streaming.jobs.retrain import RetrainMetrics
from streaming.kafka import clients
from streaming.kafka.admin import ensure_topics
from streaming.topics import topic_specs
from streaming.worker.state import UserState, decode, encode
from tests.conftest import require_dataset
from tests.stream_fixture import WorkerProcess, produce, stream_settings, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.data]


@pytest.fixture(scope="module")
def spark():
    if not spark_engine.environment_ready():
        pytest.skip("pyspark or Java missing: pip install 'streamrec[spark]'")
    session = spark_engine.session(spark_engine.SparkOptions())
    try:
        yield session
    finally:
        session.stop()


@pytest.mark.timeout(900)
def test_spark_model_matches_implicit_and_a_worker_serves_it(kafka_broker, tmp_path, spark):
    require_dataset("yoochoose")
    base = Config()
    # A smaller model than the default keeps MLlib's per-row Cholesky solves (O(rank³)) within
    # the test's time; both engines get the same hyper-parameters. A tenth of the users held out:
    # ~1,800 gate cases, enough for MAP@10 to separate a 5% difference from noise.
    s = stream_settings(
        kafka_broker.bootstrap,
        partitions=2,
        retrain_holdout_fraction=0.1,
        retrain_holdout_min=0,
        retrain_holdout_max=20_000,
    )
    config = dataclasses.replace(
        base, stream=s, train=dataclasses.replace(base.train, factors=32, iterations=10, warm_start=False)
    )
    ccfg = config.confidence
    profiles = build_profiles(load_dataset("yoochoose", lenient=True), ccfg)
    ensure_topics(s.bootstrap, topic_specs(s))
    ensure_topics(s.bootstrap, {s.changelog_topic: 2}, config={"cleanup.policy": "compact"})
    records = [(u.encode(), encode(UserState(p))) for u, p in profiles.items()]
    produce(s.bootstrap, s.changelog_topic, [*records, (b"intruder", b'{"not": "a state record"}')])

    store = ModelStore(tmp_path / "models")
    metrics = RetrainMetrics()
    res = spark_engine.retrain_once(store, config, metrics, spark=spark)
    assert res.result == "published" and res.users == len(profiles)
    assert metrics.registry.get_sample_value("streamrec_retrain_skipped_records_total") == 1  # the intruder

    # The same artifact as the implicit engine: every file checksummed, XᵀX stored.
    model = store.load(res.version, verify=True)
    meta = store.metadata(res.version)
    assert meta["engine"] == "spark" and meta["kind"] == "als" and model.factors == 32
    assert set(meta["files"]) == {
        "item_ids.txt",
        "item_factors.npy",
        "yty.npy",
        "item_norms.npy",
        "popularity.npy",
        "user_gram.npy",
    }
    gram = store.user_gram(res.version)
    assert gram is not None and np.allclose(gram, gram.T) and np.all(np.linalg.eigvalsh(gram) > -1e-6)
    assert np.allclose(model.yty, np.asarray(model.item_factors).T @ np.asarray(model.item_factors), rtol=1e-4)
    assert model.popularity.sum() == meta["nnz"] and meta["skipped_records"] == 1

    # The implicit engine on the same changelog (its own reader), hold-out and hyper-parameters.
    data = read_training_data(
        s.bootstrap,
        s.changelog_topic,
        ccfg,
        holdout_fraction=s.retrain_holdout_fraction,
        holdout_min=s.retrain_holdout_min,
        holdout_max=s.retrain_holdout_max,
    )
    assert len(data.cases) == meta["held_out_users"] >= 1000
    assert data.users == meta["n_users"] and data.matrix.nnz == meta["nnz"]
    implicit_model, _ = fit(data, ccfg, config.train)
    implicit_map = evaluate_model(implicit_model, data.cases, ccfg, config.scoring)["MAP@10"]
    spark_map = evaluate_model(model, data.cases, ccfg, config.scoring)["MAP@10"]
    assert spark_map == pytest.approx(meta["holdout"]["MAP@10"])  # the gate scored these very cases
    print(f"held-out MAP@10 on {len(data.cases)} users: spark {spark_map:.4f}, implicit {implicit_map:.4f}")
    assert abs(spark_map - implicit_map) <= 0.05 * implicit_map, (spark_map, implicit_map)

    # It serves: fold-in + scoring in this process, and a worker swaps to it.
    case = data.cases[0]
    assert len(Recommender(model, ccfg, config.scoring).recommend([case.profile], [case.query])[0].items) == 10
    worker = WorkerProcess(s, tmp_path, store.root).start()
    try:
        wait_for(lambda: worker.get("/health")[1]["model_version"] == res.version, 60, "the worker serves it")
        status, body = worker.get(f"/similar/{model.item_ids[0]}/")
        assert status == 200 and body["model_version"] == res.version and len(body["items"]) == 10
    finally:
        worker.stop()


@pytest.mark.parametrize("mtls", [False, True], ids=["sasl_ssl", "mtls"])
def test_spark_reads_the_latest_state_per_user_over_a_secured_kafka(secure_kafka_broker, spark, mtls):
    """The `[kafka]` settings reach Spark's Kafka source (SCRAM over TLS, or a client certificate);
    the latest record per user wins and a tombstone removes the user."""
    sec = secure_kafka_broker.client_security(mtls)
    bootstrap = secure_kafka_broker.mtls_bootstrap if mtls else secure_kafka_broker.bootstrap
    topic = f"spark-secure-{uuid.uuid4().hex[:8]}"

    def state(n: int) -> bytes:
        p = UserProfile()
        p.items = {f"i{k}": ItemState(1.0, 1_000 + k, 1) for k in range(n)}
        p.last_ts = 1_000 + n
        return encode(UserState(p))

    with clients.using(sec):
        ensure_topics(bootstrap, {topic: 2}, config={"cleanup.policy": "compact"})
        produce(bootstrap, topic, [(b"a", state(1)), (b"b", state(2)), (b"a", state(3)), (b"c", state(1))])
        produce(bootstrap, topic, [(b"c", None)])  # a tombstone
    rows = spark_engine.latest_states(spark, bootstrap, topic, sec).collect()
    got = {bytes(r["key"]): len(decode(bytes(r["value"])).profile.items) for r in rows}
    assert got == {b"a": 3, b"b": 2}
