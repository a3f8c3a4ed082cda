"""One typed configuration for everything: stream, confidence, training, scoring, operations.

    defaults  <  a TOML file  <  environment variables  <  command-line overrides

Sections, each a frozen dataclass whose field defaults are the project's defaults (the
tuned ones, declared once, at the field) and whose ``__post_init__`` validates its values:

    [stream]      recsys.config.Settings                  env STREAMREC_<FIELD>
    [confidence]  recsys.confidence.ConfidenceConfig      env STREAMREC_CONFIDENCE_<FIELD>
    [train]       recsys.model.train.TrainConfig          env STREAMREC_TRAIN_<FIELD>
    [scoring]     recsys.serving.scoring.ScoringConfig    env STREAMREC_SCORING_<FIELD>
    [ops]         recsys.config.Operations                env STREAMREC_<FIELD>
    [input]       recsys.events.InputConfig               env STREAMREC_INPUT_<FIELD>
    [sources]     recsys.candidates.sources.SourcesConfig env STREAMREC_SOURCES_<FIELD>
    [ranker]      recsys.candidates.ranker.RankerConfig   env STREAMREC_RANKER_<FIELD>

Every field is declared with ``recsys.fields.setting(default, doc)``: its description lives next
to it and the reference page is generated from it. A mapping (``confidence.weights``) is merged
key by key: ``confidence.weights.view = 0.3`` changes one weight and keeps the others. The file
is the one the caller names, else ``$STREAMREC_CONFIG``. Any bad value stops start-up with a
``ConfigError`` naming the setting and where it came from.

This module is the only reader of the process environment in recsys/, streaming/, devtools/
and bench/; `Config.to_env` / `stream_env` / `child_env` build the environment of child
processes from a configuration.

    recsys config [--config F] [--set section.key=value ...] [--json]   the effective configuration
    python -m recsys.config --markdown > docs/configuration.md        the reference, generated
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import json
import math
import os
import re
import sys
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from recsys import fields as setting_fields
from recsys.candidates.ranker import RankerConfig
from recsys.candidates.sources import SourcesConfig
from recsys.confidence import ConfidenceConfig
from recsys.errors import ConfigError
from recsys.events import InputConfig
from recsys.fields import setting
from recsys.model.train import TrainConfig
from recsys.serving.scoring import ScoringConfig

ENV_CONFIG_FILE = "STREAMREC_CONFIG"
SECRET_MASK = "********"  # what `recsys config` shows for a password or token that is set
LOG_FORMATS = ("text", "json")
MODEL_TRANSPORTS = ("filesystem", "kafka")
RETRAIN_ENGINES = ("implicit", "spark")


@dataclass(frozen=True)
class Settings:
    """The `[stream]` section: where Kafka is, topic names and sizes, micro-batches, paths and
    ports of the streaming workers and the retrain job."""

    bootstrap: str = setting(
        "", "Kafka bootstrap servers, `host:port[,host:port]`; empty: the project's own broker (`recsys broker start`)"
    )
    app_id: str = setting(
        "streamrec", "Faust application id = Kafka consumer group; also names the state changelog topic"
    )
    clickstream_topic: str = setting("clickstream", "input topic: one JSON event per message, key = user id")
    recommendations_topic: str = setting(
        "recommendations", "output topic: one JSON recommendation list per message, key = user id"
    )
    dlq_topic: str = setting(
        "clickstream-dlq", "dead-letter topic: rejected messages, original bytes, reason in headers"
    )
    model_updates_topic: str = setting("model-updates", 'model announcements `{"version": ...}` read by every worker')
    partitions: int = setting(
        4, "partitions of the clickstream, recommendations and state topics = the most workers that share the load"
    )
    batch_max: int = setting(500, "events per micro-batch at most")
    # The latency sweep in BENCHMARKS.md chose the window.
    batch_within_s: float = setting(
        0.03,
        "a micro-batch takes what arrives this long (seconds) after its first event (longer when the "
        "broker already holds a full batch: a worker behind fills it): shorter cuts latency at low load, "
        "too short saturates the worker sooner",
    )
    # A worker behind (a full batch's worth waits at the broker) keeps filling its batch this long
    # after the first event: draining a backlog went from ~4,500 to 5,400-5,900 events/s
    # (BENCHMARKS.md §2).
    batch_behind_wait_s: float = setting(
        0.1, "a micro-batch of a worker that is behind keeps filling up to this long (seconds) after its first event"
    )
    # 2 lets one batch settle at the broker while the next is computed: the broker's ack took
    # ~a third of a batch's time when each batch waited for it.
    max_unsettled_batches: int = setting(
        2, "batches computed but not yet acknowledged by the broker; more waits (streaming/worker/checkpoint.py)"
    )
    # 5 ms: at 1 ms a batch's records went out in several requests, each one more wake-up of the
    # broker on the same cores (a backlog drained ~10% slower; BENCHMARKS.md §2).
    producer_linger_ms: int = setting(5, "the worker's producer waits this long (ms) to fill a request")
    # Faust fixes 1500 ms, seen as 1.1-1.4 s delivery gaps (streaming/faust_compat); an idle worker
    # then sends ~20 empty fetches a second, which a broker answers from memory.
    fetch_max_wait_ms: int = setting(
        50, "the worker's consumer waits at most this long (ms) for data in a fetch: bounds delivery gaps"
    )
    # 8 h, as chosen in docs/evaluation.md.
    popularity_half_life_s: float = setting(
        8 * 3600.0,
        "half-life (seconds) of the worker's recent popularity: the list for a user the model cannot place "
        "yet, and everyone's list before any model exists",
    )
    model_dir: str = setting(
        "var/models",
        "model store: the retrain job writes versions here; a worker reads them here (model_transport "
        "filesystem: the same directory) or caches the ones it fetched from Kafka (kafka: its own)",
    )
    # filesystem by default: one host (make demo, tests, a laptop) already shares its disk, and the
    # kafka transport keeps model_keep_versions copies of the model on the broker for nothing
    # there; docker-compose.yml and any multi-host deployment set kafka.
    model_transport: str = setting(
        "filesystem",
        "how workers get a model version: `filesystem` (they read model_dir, shared with the retrain job) "
        "or `kafka` (the retrain job publishes each version in chunks to model_artifacts_topic; a worker "
        "fetches, verifies and caches it in its own model_dir: no shared volume)",
    )
    model_artifacts_topic: str = setting(
        "model-artifacts",
        "with model_transport kafka: the compacted topic holding model versions (manifests, pointers, chunks)",
    )
    # 256 KiB: well under the 1 MB message limit of a default (or a managed) Kafka.
    model_chunk_bytes: int = setting(
        256 * 1024,
        "with model_transport kafka: bytes per chunk record; must stay under the topic's max.message.bytes",
    )
    model_keep_versions: int = setting(
        5,
        "with model_transport kafka: the newest this many versions stay on model_artifacts_topic (plus the "
        "current and the pinned one); older ones are deleted with tombstones when a version is published",
    )
    data_dir: str = setting("var/worker", "this worker's RocksDB tables (one directory per worker)")
    web_port: int = setting(6066, "worker HTTP port: /recommendations, /similar, /health, /ready, /metrics")
    web_host: str = setting("127.0.0.1", "the host name other workers and clients use to reach this worker's web port")
    web_bind: str = setting(
        "127.0.0.1",
        "the address the worker's HTTP server listens on; `0.0.0.0`: every interface (a container)",
    )
    web_token: str = setting(
        "",
        "a bearer token every HTTP route but /health and /metrics requires (`Authorization: Bearer <token>`); "
        "empty: no token (a secret: masked in `recsys config`)",
        secret=True,
    )
    top_n: int = setting(10, "items per published recommendation list")
    standby_replicas: int = setting(0, "standby copies of each state partition on other workers (fast fail-over)")
    # A worker killed without leaving its group holds its partitions until its session times out:
    # Faust's own default (60 s) would be the fail-over time.
    broker_session_timeout_s: float = setting(
        10.0,
        "Kafka consumer session timeout (seconds): a worker that stops heartbeating loses its partitions "
        "after this long (fail-over time)",
        env_aliases=("BROKER_SESSION_TIMEOUT",),
    )
    broker_heartbeat_interval_s: float = setting(
        1.0,
        "Kafka consumer heartbeat interval (seconds); well below the session timeout",
        env_aliases=("BROKER_HEARTBEAT_INTERVAL",),
    )
    retrain_every_s: float = setting(300.0, "seconds between scheduled retrains")
    retrain_tolerance: float = setting(
        0.1, "a candidate model may be this much (relative) worse on held-out MAP@10 and still be published"
    )
    # The gate's users are left out of the one training and predicted by fold-in (the way they
    # are served anyway): a small share is enough for a stable MAP@10 (its standard error is
    # part of the gate's rule), and the model loses few users.
    retrain_holdout_fraction: float = setting(0.01, "share of users the retrain holds out for its gate")
    retrain_holdout_min: int = setting(
        500, "... at least this many (at most a tenth of the users: small systems still get enough cases)"
    )
    retrain_holdout_max: int = setting(20_000, "... at most this many")
    changelog_stall_s: float = setting(
        60.0,
        "the retrain's changelog read fails after this long (seconds) without a record while some are "
        "left; the read itself has no time limit",
    )
    # implicit trains in this process (the default up to a few million users on one machine);
    # spark reads the changelog with Spark's Kafka source and trains MLlib ALS where Spark runs
    # (streaming/jobs/spark_engine.py; docs/operations.md "Retraining with Spark").
    retrain_engine: str = setting("implicit", "the retrain's trainer: implicit (this process) or spark (MLlib ALS)")
    spark_master: str = setting(
        "local[2]", "with retrain_engine spark: the Spark master URL (local[N], spark://host:7077, yarn, k8s://...)"
    )
    log_level: str = setting("info", "log level: debug, info, warning, error")
    bulk_restore: bool = setting(
        True,
        "on an empty or stale data dir, load the changelog into RocksDB in bulk before Faust's per-record "
        "recovery (~10x faster); off: Faust's recovery only",
    )
    item_foldin: bool = setting(
        True,
        "fold in items the serving model lacks from the users who touch them (item-side least squares "
        "against their folded-in factors), so they are recommended and work as query items before the "
        "next retrain; needs XᵀX stored with the model (`recsys retrain` and `recsys train` store it). "
        "Topics `<app_id>-item-evidence` and `<app_id>-item-factors`",
    )
    # On by default: a version may bring a ranker at any retrain, and the sources need the
    # recent stream before it does (streaming/worker/ranking.py).
    candidate_sources: bool = setting(
        True,
        "keep the ranker's candidate sources (co-visitation, session-kNN, item counters) from this worker's "
        "events, so a model version with a ranker serves ranked lists; off: a version's ranker is ignored, "
        "the blend serves, and the sources cost nothing",
    )
    sources_window_hours: float = setting(
        24.0,
        "with candidate_sources: on start a worker re-reads this many hours of the clickstream (up to its "
        "consumer group's committed offsets) into the sources, the ranker's item counters and its recent "
        "popularity before its first batch, and a partition a rebalance moves to it before its next batch; "
        "0: it starts with them empty",
    )
    sources_window_max_events: int = setting(
        500_000,
        "... at most this many events (each partition its newest same share; a rebalance's read: the moved "
        "partitions' share): bounds the start-up time and the sources' memory",
    )
    item_foldin_refresh_s: float = setting(
        5.0,
        "new-item rows are solved and published, and each worker swaps "
        "in the extended model, at most this often (seconds)",
    )
    # See docs/evaluation.md (new items).
    item_foldin_min_users: int = setting(2, "distinct users a new item needs before it gets a row")
    item_foldin_max_users: int = setting(50, "evidence kept per new item: its latest this many users")
    item_foldin_max_items: int = setting(
        10_000, "new items a worker keeps evidence for; past it the least recently touched is dropped"
    )
    items_topic: str = setting(
        "items",
        "the item catalogue: a compacted topic keyed by item id (docs/formats.md, item records); every "
        "worker keeps all of it in RocksDB and never shows a hidden, unavailable or deleted item",
    )
    events_max_bytes: int = setting(
        1 << 20, "POST /events: the largest request body (bytes); a bigger one is refused with 413"
    )
    events_max_count: int = setting(1000, "POST /events: the most events one request may carry")

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ConfigError(f"partitions must be >= 1, got {self.partitions}")
        if self.batch_max < 1 or not self.batch_within_s > 0 or self.batch_behind_wait_s < 0:
            raise ConfigError("batch_max must be >= 1, batch_within_s > 0 and batch_behind_wait_s >= 0")
        if self.max_unsettled_batches < 1 or self.producer_linger_ms < 0 or self.fetch_max_wait_ms < 0:
            raise ConfigError("max_unsettled_batches must be >= 1, producer_linger_ms and fetch_max_wait_ms >= 0")
        if self.sources_window_hours < 0 or self.sources_window_max_events < 0:
            raise ConfigError("sources_window_hours and sources_window_max_events must be >= 0")
        if not self.popularity_half_life_s > 0:
            raise ConfigError(f"popularity_half_life_s must be > 0, got {self.popularity_half_life_s}")
        if not 0 < self.web_port < 65536:
            raise ConfigError(f"web_port must be a TCP port, got {self.web_port}")
        if self.top_n < 1:
            raise ConfigError(f"top_n must be >= 1, got {self.top_n}")
        if not (self.broker_session_timeout_s > 0 and self.broker_heartbeat_interval_s > 0):
            raise ConfigError("broker_session_timeout_s and broker_heartbeat_interval_s must be > 0")
        if not 0 <= self.retrain_tolerance < 1:
            raise ConfigError(f"retrain_tolerance must be in [0, 1), got {self.retrain_tolerance}")
        if self.retrain_engine not in RETRAIN_ENGINES:
            raise ConfigError(
                f"retrain_engine must be one of {', '.join(RETRAIN_ENGINES)}, got {self.retrain_engine!r}"
            )
        if not 0 <= self.retrain_holdout_fraction < 1 or self.retrain_holdout_min < 0 or self.retrain_holdout_max < 0:
            raise ConfigError("retrain_holdout_fraction must be in [0, 1), retrain_holdout_min/max >= 0")
        if not self.changelog_stall_s > 0:
            raise ConfigError(f"changelog_stall_s must be > 0, got {self.changelog_stall_s}")
        if self.model_transport not in MODEL_TRANSPORTS:
            raise ConfigError(
                f"model_transport must be one of {', '.join(MODEL_TRANSPORTS)}, got {self.model_transport!r}"
            )
        if not 1024 <= self.model_chunk_bytes <= 64 * 1024 * 1024:
            raise ConfigError(f"model_chunk_bytes must be between 1 KiB and 64 MiB, got {self.model_chunk_bytes}")
        if self.model_keep_versions < 1:
            raise ConfigError(f"model_keep_versions must be >= 1, got {self.model_keep_versions}")
        if not self.item_foldin_refresh_s > 0:
            raise ConfigError(f"item_foldin_refresh_s must be > 0, got {self.item_foldin_refresh_s}")
        if min(self.item_foldin_min_users, self.item_foldin_max_users, self.item_foldin_max_items) < 1:
            raise ConfigError("item_foldin_min_users, item_foldin_max_users and item_foldin_max_items must be >= 1")
        if self.events_max_bytes < 1024 or self.events_max_count < 1:
            raise ConfigError("events_max_bytes must be >= 1024 and events_max_count >= 1")

    @property
    def table_name(self) -> str:
        return "user-state"

    @property
    def changelog_topic(self) -> str:
        # Faust names a table's changelog "<app id>-<table>-changelog".
        return f"{self.app_id}-{self.table_name}-changelog"

    @property
    def item_evidence_topic(self) -> str:
        """New-item evidence from the workers' batches, keyed by item (streaming/worker/new_items.py)."""
        return f"{self.app_id}-item-evidence"

    @property
    def item_factors_topic(self) -> str:
        """Folded-in new-item rows, keyed by item, compacted; every worker reads all of it."""
        return f"{self.app_id}-item-factors"

    def replace(self, **kw: Any) -> Settings:
        """A copy with the given fields changed; None leaves a field as it is."""
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})


@dataclass(frozen=True)
class Operations:
    """The `[ops]` section: operational settings that belong to no library dataclass."""

    log_format: str = setting("text", "text, or json: one JSON object per line (also `recsys --log-json ...`)")
    retrain_metrics_port: int = setting(
        0, "the retrain job's Prometheus port (`recsys retrain --metrics-port`); 0: off"
    )
    kafka_dir: str = setting("var/kafka", "data directory of the project's own Kafka broker (`recsys broker start`)")
    kafka_cache: str = setting("~/.cache/streamrec/kafka", "where the broker's jars (from Maven Central) are cached")
    spark_cache: str = setting(
        "~/.cache/streamrec/spark",
        "the spark engine's Ivy cache: Spark's Kafka connector, fetched from Maven Central once",
    )
    spark_conf: Mapping[str, str] = setting(
        doc='the spark engine\'s Spark settings (a TOML table, e.g. {"spark.executor.memory" = "8g"}); '
        "over its defaults spark.driver.memory 4g, spark.ui.enabled false",
        factory=dict,
    )
    data: str = setting(
        "",
        "the shared real datasets folder (Taobao, YOOCHOOSE, ...); empty: `../shared/data` "
        "next to the project's checkout",
    )

    def __post_init__(self) -> None:
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"ops.log_format must be one of {LOG_FORMATS}, got {self.log_format!r}")
        if not 0 <= self.retrain_metrics_port < 65536:
            raise ConfigError(
                f"ops.retrain_metrics_port must be 0 (off) or a TCP port, got {self.retrain_metrics_port}"
            )


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """The `[kafka]` section: how every client (the worker, the jobs, the CLI, the demo) connects
    to Kafka. streaming/kafka/clients.py turns it into each client library's arguments."""

    security_protocol: str = setting(
        "PLAINTEXT", "PLAINTEXT, SSL (TLS; with a client certificate: mutual TLS), SASL_PLAINTEXT or SASL_SSL"
    )
    sasl_mechanism: str = setting("PLAIN", "with SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    sasl_username: str = setting("", "with SASL_*: the user name")
    sasl_password: str = setting(
        "", "with SASL_*: the password (a secret: masked in `recsys config`); or `sasl_password_file`", secret=True
    )
    sasl_password_file: str = setting(
        "", "with SASL_*: a file holding the password (its first line), read when a client is made"
    )
    ssl_cafile: str = setting(
        "", "with SSL/SASL_SSL: PEM file of the CA(s) that signed the broker's certificate; empty: the system's"
    )
    ssl_certfile: str = setting("", "mutual TLS: this client's certificate (PEM, chain allowed)")
    ssl_keyfile: str = setting("", "mutual TLS: this client's private key (PEM)")
    ssl_key_password: str = setting(
        "", "mutual TLS: the password of an encrypted `ssl_keyfile` (a secret)", secret=True
    )
    ssl_check_hostname: bool = setting(True, "with SSL/SASL_SSL: the broker's certificate must name the host dialled")

    def __post_init__(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, got {self.security_protocol!r}"
            )
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise ConfigError(
                f"sasl_mechanism must be one of {', '.join(SASL_MECHANISMS)}, got {self.sasl_mechanism!r}"
            )
        if self.sasl:
            if not self.sasl_username:
                raise ConfigError(f"sasl_username is needed with security_protocol {self.security_protocol}")
            if bool(self.sasl_password) == bool(self.sasl_password_file):
                raise ConfigError(
                    f"sasl_password or sasl_password_file (one of them) is needed with security_protocol "
                    f"{self.security_protocol}"
                )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ConfigError("ssl_certfile and ssl_keyfile go together (mutual TLS)")

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def secured(self) -> bool:
        return self.security_protocol != "PLAINTEXT"


@dataclass(frozen=True)
class Section:
    name: str
    cls: type
    env_prefix: str
    doc: str

    @property
    def base(self) -> Any:
        """The section's defaults: its class with no arguments."""
        return self.cls()


SECTIONS: dict[str, Section] = {
    s.name: s
    for s in (
        Section(
            "stream",
            Settings,
            "STREAMREC_",
            "Kafka, topics, partitions, micro-batches, paths and ports of the streaming workers and the "
            "retrain job (`recsys.config.Settings`).",
        ),
        Section(
            "confidence",
            ConfidenceConfig,
            "STREAMREC_CONFIDENCE_",
            "Events to confidence, `c = 1 + alpha * r` (`recsys.confidence.ConfidenceConfig`). The stream and "
            "the retrain must use the same values: a change applies to new events only.\n\n"
            "**What the defaults optimise.** The weights, alpha and the half-life were searched for next-event "
            "hit rate: HR@10 and MRR@10 of the item a shopper touches next, on a validation window of Taobao and "
            "YOOCHOOSE ([evaluation.md](evaluation.md#searching-the-defaults-optuna-validation-window)). For that "
            "target a purchase (0.06) can weigh less than a view (0.25): bought items are filtered from the lists "
            "anyway, and a purchase ends the interest in that item rather than predicting the next one, while a "
            "cart (1.76) is the strongest sign of what comes next. It is not a bug, but it is not what a shop that "
            "wants lists led by what converts asks for.\n\n"
            "**Conversion-weighted confidence**: `--config docs/presets/conversion.toml` (a purchase 3.0, a cart "
            "1.76, a view 0.25; the same file for the worker, the retrain and `recsys train`), or the same as "
            "settings:\n\n"
            "```toml\n[confidence.weights]\ntransaction = 3.0\n```\n\n"
            "Its effect, measured with `recsys stream-eval` on Taobao's add-to-cart and purchase targets: HR@10 "
            "and MRR@10 move by about 0.001 either way, within noise, as bought items are filtered from lists "
            "whatever their weight ([evaluation.md](evaluation.md#conversion-targets-and-the-conversion-preset)).",
        ),
        Section(
            "train",
            TrainConfig,
            "STREAMREC_TRAIN_",
            "The model the retrain job and `recsys train` fit (`recsys.model.train.TrainConfig`; "
            "`recsys.model.train.BPR` is the BPR preset `--kind bpr` starts from).",
        ),
        Section(
            "scoring",
            ScoringConfig,
            "STREAMREC_SCORING_",
            "How recommendations are scored (`recsys.serving.scoring.ScoringConfig`; defaults chosen on a "
            "validation window, see docs/evaluation.md).",
        ),
        Section(
            "kafka",
            KafkaSecurity,
            "STREAMREC_KAFKA_",
            "How every Kafka client connects: TLS, SASL (PLAIN, SCRAM) or mutual TLS "
            "(`recsys.config.KafkaSecurity`; docs/operations.md, connecting to a managed Kafka). "
            "Secrets are masked in `recsys config`.",
        ),
        Section(
            "ops",
            Operations,
            "STREAMREC_",
            "Operations: log format, the retrain job's metrics port, where the project's own Kafka and the "
            "shared datasets live (`recsys.config.Operations`).",
        ),
        Section(
            "input",
            InputConfig,
            "STREAMREC_INPUT_",
            "A shop's own names for the event fields and types, and how its times are written "
            "(`recsys.events.InputConfig`): every loader and the worker's validator read events through "
            "it (docs/data-formats.md). Also `--columns`, `--types` and `--time-format` on every command "
            "that reads events.",
        ),
        Section(
            "sources",
            SourcesConfig,
            "STREAMREC_SOURCES_",
            "The candidate sources kept on the stream: co-visitation, session-kNN (V-SKNN, STAN), own items "
            "by recency (`recsys.candidates.sources.SourcesConfig`). The worker keeps them for the ranker's "
            "candidates; `recsys stream-eval` uses them as its baselines and the ranker's candidates.",
        ),
        Section(
            "ranker",
            RankerConfig,
            "STREAMREC_RANKER_",
            "The learned ranker over the sources' candidates (`recsys.candidates.ranker.RankerConfig`): how "
            "many candidates each source gives, and the LightGBM LambdaRank model the retrain job trains.",
        ),
    )
}


# -- types ------------------------------------------------------------------------------------
def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional_inner(tp: Any) -> Any | None:
    """`X | None` -> X; anything else -> None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _is_mapping(tp: Any) -> bool:
    return typing.get_origin(tp) in (dict, collections.abc.Mapping)


def type_name(tp: Any) -> str:
    inner = _optional_inner(tp)
    if inner is not None:
        return f"{type_name(inner)} or none"
    if _is_mapping(tp):
        return f"table of {type_name(typing.get_args(tp)[1])}"
    if typing.get_origin(tp) is tuple:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, str(tp))


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def coerce(value: Any, tp: Any, key: str) -> Any:
    """A value from a file (typed), the environment or --set (strings) -> the field's type.
    ValueError with a short reason when it does not fit."""
    inner = _optional_inner(tp)
    if inner is not None:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        return coerce(value, inner, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {value!r}")
    if typing.get_origin(tp) is tuple:
        elem = typing.get_args(tp)[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return tuple(coerce(v, elem, key) for v in value)
        raise ValueError(f"expected a list (or comma-separated text), got {value!r}")
    if _is_mapping(tp):
        vt = typing.get_args(tp)[1]
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(f"expected a table (JSON object), got {value!r}") from None
        if isinstance(value, Mapping):
            return {str(k): coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
        raise ValueError(f"expected a table, got {value!r}")
    raise ValueError(f"unsupported type {tp}")


def env_name(section: str, name: str) -> str:
    """The environment variable of setting `section.name` (a table's keys add `_<KEY>`)."""
    return SECTIONS[section].env_prefix + name.upper()


def env_names(section: str, name: str) -> tuple[str, ...]:
    """Every variable read for `section.name`, weakest first: older aliases, then its own name."""
    f = {f.name: f for f in fields(SECTIONS[section].cls)}[name]
    return (*setting_fields.env_aliases(f), env_name(section, name))


def _is_secret(section: str, name: str) -> bool:
    return setting_fields.is_secret({f.name: f for f in fields(SECTIONS[section].cls)}[name])


def describe(section: str, name: str) -> str:
    """The one-line description declared with the field."""
    return setting_fields.doc({f.name: f for f in fields(SECTIONS[section].cls)}[name])


# -- the configuration --------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    stream: Settings = field(default_factory=Settings)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    kafka: KafkaSecurity = field(default_factory=KafkaSecurity)
    ops: Operations = field(default_factory=Operations)
    input: InputConfig = field(default_factory=InputConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    origins: Mapping[str, str] = field(default_factory=dict, compare=False)  # key -> where it was set

    def section(self, name: str) -> Any:
        return getattr(self, name)

    def with_stream(self, **kw: Any) -> Config:
        """A copy with stream settings changed (None leaves one as it is)."""
        return dataclasses.replace(self, stream=self.stream.replace(**kw))

    def as_dict(self, *, reveal: bool = False) -> dict[str, dict[str, Any]]:
        """Every setting by section; a secret that is set reads `SECRET_MASK` unless `reveal`."""
        out: dict[str, dict[str, Any]] = {}
        for name in SECTIONS:
            obj = self.section(name)
            out[name] = {}
            for f in fields(obj):
                v = getattr(obj, f.name)
                if v and setting_fields.is_secret(f) and not reveal:
                    v = SECRET_MASK
                out[name][f.name] = dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v
        return out

    def source(self, key: str) -> str:
        return self.origins.get(key, "default")

    def to_env(self, sections: Iterable[str] | None = None) -> dict[str, str]:
        """The environment variables that give a child process this configuration: every setting
        of `sections` (default: all), so inherited variables cannot leave a different value."""
        out: dict[str, str] = {}
        for name in SECTIONS if sections is None else sections:
            out.update(section_env(name, self.section(name)))
        return out

    def to_toml(self, annotate: bool = True) -> str:
        lines = ["# streamrec: the effective configuration (defaults < file < environment < --set)"]
        for name, values in self.as_dict().items():
            lines.append(f"\n[{name}]")
            tables = []
            for k, v in values.items():
                if isinstance(v, dict):
                    tables.append((k, v))
                    continue
                note = self.source(f"{name}.{k}")
                if v == SECRET_MASK and _is_secret(name, k):  # commented out: reads back as unset
                    lines.append(f"# {k} = (secret, not shown)" + (f"  # {note}" if annotate else ""))
                    continue
                lines.append(f"{k} = {_toml_value(v)}" + (f"  # {note}" if annotate and note != "default" else ""))
            for k, table in tables:
                lines.append(f"\n[{name}.{k}]")
                for sk, sv in table.items():
                    note = self.source(f"{name}.{k}.{sk}")
                    lines.append(
                        f"{_toml_key(sk)} = {_toml_value(sv)}"
                        + (f"  # {note}" if annotate and note != "default" else "")
                    )
        return "\n".join(lines) + "\n"


def _env_text(v: Any) -> str:
    """A value as environment text that `coerce` reads back as the same value."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, Mapping):
        return json.dumps(dict(v))
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def section_env(section: str, obj: Any) -> dict[str, str]:
    """STREAMREC_* variables for every field of one section's object."""
    return {env_name(section, f.name): _env_text(getattr(obj, f.name)) for f in fields(obj)}


def stream_env(settings: Settings) -> dict[str, str]:
    """STREAMREC_* variables for the stream settings (a worker or retrain child process)."""
    return section_env("stream", settings)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: this process's, plus `extra` (e.g. `Config.to_env()`)."""
    return {**os.environ, **(extra or {})}


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if v is None:
        return '"none"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"stream": {"partitions": 8}} or {"stream.partitions": 8} -> {"stream.partitions": 8}."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and key.count(".") < 1:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _set(values: dict[str, dict[str, Any]], sources: dict[str, str], key: str, raw: Any, origin: str) -> None:
    """Apply one setting `section.field[.subkey]` = raw (typed or text) from `origin`."""
    parts = key.split(".")
    if len(parts) < 2 or parts[0] not in SECTIONS:
        raise ConfigError(f"unknown setting {key!r} ({origin}): sections are {', '.join(SECTIONS)}")
    section, name, rest = parts[0], parts[1], parts[2:]
    types_ = field_types(SECTIONS[section].cls)
    if name not in types_:
        known = ", ".join(types_)
        raise ConfigError(f"unknown setting {section}.{name} ({origin}); [{section}] has: {known}")
    tp = types_[name]
    try:
        if rest:
            if not _is_mapping(tp) or len(rest) != 1:
                raise ConfigError(f"unknown setting {key!r} ({origin}): {section}.{name} is a {type_name(tp)}")
            value = coerce(raw, typing.get_args(tp)[1], key)
            merged = dict(values[section].get(name, getattr(SECTIONS[section].base, name)))
            merged[rest[0]] = value
            values[section][name] = merged
            sources[key] = origin
            return
        value = coerce(raw, tp, key)
    except ValueError as e:
        raise ConfigError(f"{key}: {e} ({origin})") from None
    if _is_mapping(tp):  # a whole table merges into the current one
        merged = dict(values[section].get(name, getattr(SECTIONS[section].base, name)))
        merged.update(value)
        values[section][name] = merged
        for sk in value:
            sources[f"{key}.{sk}"] = origin
        return
    values[section][name] = value
    sources[key] = origin


def _env_settings(env: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(key, raw value, origin) for every variable that names a setting, weakest first."""
    out = []
    for sname, sec in SECTIONS.items():
        for name, tp in field_types(sec.cls).items():
            var = env_name(sname, name)
            if _is_mapping(tp):
                for k, v in env.items():
                    if k.startswith(var + "_"):
                        out.append((f"{sname}.{name}.{k[len(var) + 1 :].lower()}", v, f"env {k}"))
                if var in env:
                    out.append((f"{sname}.{name}", env[var], f"env {var}"))
                continue
            for var in env_names(sname, name):
                if var in env:
                    out.append((f"{sname}.{name}", env[var], f"env {var}"))
    return out


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"configuration file {p} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"configuration file {p} is unreadable: {e}") from None


def load_config(
    file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | Sequence[str | tuple[str, Any]] = (),
) -> Config:
    """The effective configuration: defaults < file < environment < overrides.

    `file`: a TOML file (default: $STREAMREC_CONFIG if set). `env`: the variables to read
    (default: this process's). `overrides`: {"stream.partitions": 8}, {"stream": {"partitions": 8}},
    or a list of "stream.partitions=8" texts and ("stream.partitions", 8) pairs, applied in order
    (text is converted like the environment's). Raises ConfigError naming the setting and its origin."""
    env = os.environ if env is None else env
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    sources: dict[str, str] = {}
    file = file if file is not None else (env.get(ENV_CONFIG_FILE) or None)
    if file is not None:
        for key, raw in _flatten(read_file(file)).items():
            _set(values, sources, key, raw, f"file {file}")
    for key, raw, origin in _env_settings(env):
        _set(values, sources, key, raw, origin)
    items: list[tuple[str, Any]] = []
    if isinstance(overrides, Mapping):
        items = list(_flatten(overrides).items())
    else:
        for o in overrides:
            if isinstance(o, tuple):
                items.append(o)
                continue
            if "=" not in o:
                raise ConfigError(f"--set {o!r}: expected section.key=value")
            k, v = o.split("=", 1)
            items.append((k.strip(), v))
    for key, raw in items:
        _set(values, sources, key, raw, "command line")
    built: dict[str, Any] = {}
    for name, sec in SECTIONS.items():
        try:
            built[name] = dataclasses.replace(sec.base, **values[name])
        except ConfigError as e:
            msg = str(e)
            if not msg.startswith(f"{name}."):
                msg = (
                    f"{name}.{msg}"
                    if re.match(r"[a-z_]+ ", msg) and msg.split()[0] in field_types(sec.cls)
                    else f"[{name}] {msg}"
                )
            where = [f"{k} from {o}" for k, o in sources.items() if k.startswith(name + ".") and k.split(".")[1] in msg]
            raise ConfigError(msg + (f" ({'; '.join(where)})" if where else "")) from None
    return Config(**built, origins=sources)


# -- reference documentation ---------------------------------------------------------------------
def _md_default(v: Any) -> str:
    if isinstance(v, Mapping):
        return "<br>".join(f"`{k} = {_toml_value(x)}`" for k, x in v.items()) or "`{}`"
    return f"`{_toml_value(v)}`" if v != "" else '`""`'


def markdown() -> str:
    """docs/configuration.md, generated from the code (`python -m recsys.config --markdown`)."""
    out = [
        "# Configuration reference",
        "",
        "<!-- GENERATED by `python -m recsys.config --markdown > docs/configuration.md`: do not edit; "
        "tests/integration/test_config.py checks it is up to date. -->",
        "",
        "Every setting lives in one typed configuration, `recsys.config.load_config()`, built in layers:",
        "",
        "1. the defaults below: each section's dataclass field defaults, the project's tuned values,",
        f"2. a TOML file: `recsys <command> --config FILE`, or the file named by `${ENV_CONFIG_FILE}`,",
        "3. environment variables (the names below),",
        "4. the command line: `recsys <command> --set section.key=value`, and a command's own options "
        "(`--partitions`, `--model-dir`, `--bootstrap`, ...), which set the same settings.",
        "",
        "A later layer wins. A value of the wrong type, out of range, or an unknown key stops start-up with a "
        "message naming the setting and where its value came from, e.g. "
        "`stream.partitions: expected an integer, got 'eight' (env STREAMREC_PARTITIONS)`. "
        "A table (`confidence.weights`) merges key by key. Optional values take `none`. "
        "Lists may be given as comma-separated text in the environment.",
        "",
        "See the effective configuration (with where each non-default value came from):",
        "",
        "```bash",
        "recsys config",
        "recsys config --set stream.partitions=8 --set confidence.weights.view=0.3",
        "recsys config --json",
        "```",
        "",
        "A file has one table per section; `recsys config` prints one that reads back as is:",
        "",
        "```toml",
        "[stream]",
        'bootstrap = "kafka:9092"',
        "partitions = 8",
        "",
        "[train]",
        "factors = 32",
        "",
        "[confidence.weights]",
        "view = 0.3",
        "```",
        "",
        "Every `recsys` command (the streaming ones, the library ones, `replay` and `tail` included) takes "
        "`--config FILE` and `--set section.key=value` and runs with this configuration; processes it starts "
        "(the demo's worker and retrain loop) get it through their environment. "
        "`recsys config` shows what a command started with the same file, environment and options gets.",
    ]
    for name, sec in SECTIONS.items():
        out += [
            "",
            f"## [{name}]",
            "",
            sec.doc,
            "",
            "| key | type | default | environment | meaning |",
            "|---|---|---|---|---|",
        ]
        for f in fields(sec.base):
            tp = field_types(sec.cls)[f.name]
            var = env_name(name, f.name)
            env_col = f"`{var}_<KEY>`" if _is_mapping(tp) else f"`{var}`"
            aliases = setting_fields.env_aliases(f)
            if aliases:
                env_col += " (also " + ", ".join(f"`{a}`" for a in aliases) + ")"
            desc = (setting_fields.doc(f) or "(undocumented)").replace("|", "\\|")
            out.append(
                f"| `{name}.{f.name}` | {type_name(tp)} | {_md_default(getattr(sec.base, f.name))} "
                f"| {env_col} | {desc} |"
            )
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recsys.config", description=__doc__.split("\n")[0])
    ap.add_argument("--markdown", action="store_true", help="print the reference (docs/configuration.md)")
    ap.add_argument("--file")
    ap.add_argument("--set", action="append")
    args = ap.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
        return 0
    try:
        sys.stdout.write(load_config(args.file, overrides=args.set or []).to_toml())
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
