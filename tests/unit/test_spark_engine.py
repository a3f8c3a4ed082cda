"""The spark engine's pieces that need no Spark session: the confidence mapping onto MLlib's
ratings, the Kafka source's options from `[kafka]`, the session's settings."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.confidence import ConfidenceConfig, ItemState, UserProfile
from recsys.config import KafkaSecurity
from streaming.jobs import spark_engine
from streaming.worker.state import UserState, encode


class Bad:
    def __init__(self) -> None:
        self.value = (0, [])

    def add(self, v):
        self.value = (self.value[0] + v[0], self.value[1] + v[1])


def test_mllib_confidence_1_plus_alpha_r_equals_the_implicit_engines_confidence():
    ccfg = ConfidenceConfig()
    p = UserProfile()
    day = 86_400_000
    p.items = {
        "a": ItemState(0.25, 10 * day, 1),
        "b": ItemState(1.76, 9 * day, 8),
        "c": ItemState(0.0, 10 * day, 16),  # a zero-weight event: still a touched item
        "d": ItemState(3.0, 2 * day, 1),
    }
    p.last_ts = 10 * day
    bad = Bad()
    rows = list(spark_engine.decode_ratings([((b"u1", encode(UserState(p))), 7), ((b"x", b"\x63junk"), 8)], ccfg, bad))
    assert bad.value[0] == 1 and "b'x'" in bad.value[1][0]
    assert [(uid, item) for uid, item, _, _ in rows] == [(7, "a"), (7, "b"), (7, "c"), (7, "d")]
    assert all(ts == p.last_ts for *_, ts in rows)
    want = p.confidence(ccfg)  # what the implicit engine trains on and the stream folds in
    for _, item, r, _ in rows:
        assert r > 0  # MLlib counts only r > 0 as a preference
        # MLlib's c = 1 + alpha * r, r in float32: the implicit engine's float32 confidence
        assert np.float32(1 + ccfg.alpha * r) == pytest.approx(np.float32(want[item]), rel=1e-6)


def test_kafka_options_carry_the_kafka_settings(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert spark_engine.kafka_options("h:9092", KafkaSecurity()) == {
        "kafka.bootstrap.servers": "h:9092",
        "kafka.security.protocol": "PLAINTEXT",
    }
    sec = KafkaSecurity(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="streamrec",
        sasl_password='p"w\\d',
        ssl_cafile=str(ca),
        ssl_check_hostname=False,
    )
    opts = spark_engine.kafka_options("h:9093", sec)
    assert opts["kafka.sasl.mechanism"] == "SCRAM-SHA-512"
    assert opts["kafka.sasl.jaas.config"] == (
        'org.apache.kafka.common.security.scram.ScramLoginModule required username="streamrec" password="p\\"w\\\\d";'
    )
    assert opts["kafka.ssl.truststore.type"] == "PEM" and opts["kafka.ssl.truststore.location"] == str(ca)
    assert opts["kafka.ssl.endpoint.identification.algorithm"] == ""


def test_session_settings_fetch_the_matching_connector_into_the_cache(tmp_path):
    pyspark = pytest.importorskip("pyspark")
    conf = spark_engine.spark_conf(
        spark_engine.SparkOptions(cache=str(tmp_path), conf={"spark.driver.memory": "2g", "spark.x": "y"})
    )
    assert conf["spark.jars.packages"] == f"org.apache.spark:spark-sql-kafka-0-10_2.13:{pyspark.__version__}"
    assert conf["spark.jars.ivy"] == str(tmp_path / "ivy")
    assert conf["spark.driver.memory"] == "2g" and conf["spark.x"] == "y"  # the configuration wins
    cluster = spark_engine.spark_conf(spark_engine.SparkOptions(master="spark://m:7077", cache=str(tmp_path)))
    assert cluster["spark.driver.memory"] == "4g" and "spark.sql.shuffle.partitions" not in cluster


def test_ivy_resolves_from_maven_central_alone_unless_the_site_names_its_own(tmp_path):
    conf = spark_engine.spark_conf(spark_engine.SparkOptions(cache=str(tmp_path)))
    assert conf["spark.jars.ivySettings"] == str(tmp_path / "ivysettings.xml")
    assert "repo1.maven.org" in spark_engine.IVY_SETTINGS and "spark-packages" not in spark_engine.IVY_SETTINGS
    mirror = {"spark.jars.repositories": "https://mirror.example/maven2"}
    assert "spark.jars.ivySettings" not in spark_engine.spark_conf(
        spark_engine.SparkOptions(cache=str(tmp_path), conf=mirror)
    )
