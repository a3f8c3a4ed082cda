"""Streaming settings: where Kafka is, topic names and sizes, batching, ports, paths.

Defaults here; every field can be overridden by an environment variable STREAMREC_<FIELD>
(upper case) and by the command line. The recommender's own settings (confidence, training,
scoring) live in recsys.defaults.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from typing import Any

from recsys.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    bootstrap: str = ""                    # empty: the project starts its own broker
    app_id: str = "streamrec"
    clickstream_topic: str = "clickstream"
    recommendations_topic: str = "recommendations"
    dlq_topic: str = "clickstream-dlq"
    model_updates_topic: str = "model-updates"
    partitions: int = 4
    batch_max: int = 500                   # events per micro-batch at most
    batch_within_s: float = 0.05           # ...or this long since the first one
    model_dir: str = "var/models"
    data_dir: str = "var/worker"           # RocksDB tables live here
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    top_n: int = 10
    standby_replicas: int = 0
    retrain_every_s: float = 300.0
    retrain_tolerance: float = 0.1         # a candidate may be this much (relative) worse on held-out MAP@10
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ConfigError(f"partitions must be >= 1, got {self.partitions}")
        if self.batch_max < 1 or not self.batch_within_s > 0:
            raise ConfigError("batch_max must be >= 1 and batch_within_s > 0")
        if not 0 < self.web_port < 65536:
            raise ConfigError(f"web_port must be a TCP port, got {self.web_port}")
        if self.top_n < 1:
            raise ConfigError(f"top_n must be >= 1, got {self.top_n}")
        if not 0 <= self.retrain_tolerance < 1:
            raise ConfigError(f"retrain_tolerance must be in [0, 1), got {self.retrain_tolerance}")

    @property
    def table_name(self) -> str:
        return "user-state"

    @property
    def changelog_topic(self) -> str:
        # Faust names a table's changelog "<app id>-<table>-changelog".
        return f"{self.app_id}-{self.table_name}-changelog"

    def replace(self, **kw: Any) -> "Settings":
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"STREAMREC_{f.name.upper()}")
            if raw is None:
                continue
            try:
                values[f.name] = _convert(f.type, raw)
            except ValueError:
                raise ConfigError(f"STREAMREC_{f.name.upper()}={raw!r}: expected {f.type}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _convert(typ: Any, raw: str) -> Any:
    t = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    if t == "int":
        return int(raw)
    if t == "float":
        return float(raw)
    return raw
