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
    batch_within_s: float = 0.03           # ...or what came within this long (BENCHMARKS.md: the latency sweep)
    model_dir: str = "var/models"
    data_dir: str = "var/worker"           # RocksDB tables live here
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    top_n: int = 10
    standby_replicas: int = 0
    retrain_every_s: float = 300.0
    retrain_tolerance: float = 0.1         # a candidate may be this much (relative) worse on held-out MAP@10
    log_level: str = "info"
    bulk_restore: bool = True              # restore state from the changelog in bulk (streaming/worker/restore.py)
    # New items before the next retrain (streaming/worker/new_items.py)
    item_foldin: bool = True               # fold in items the model lacks from the users who touch them
    item_foldin_refresh_s: float = 5.0     # new-item rows are solved, and swapped in, at most this often
    item_foldin_min_users: int = 2         # users an item needs before it gets a row (docs/evaluation.md)
    item_foldin_max_users: int = 50        # evidence kept per new item: the latest users
    item_foldin_max_items: int = 10_000    # new items a worker tracks evidence for (least recent dropped)

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
        if not self.item_foldin_refresh_s > 0:
            raise ConfigError(f"item_foldin_refresh_s must be > 0, got {self.item_foldin_refresh_s}")
        if min(self.item_foldin_min_users, self.item_foldin_max_users, self.item_foldin_max_items) < 1:
            raise ConfigError("item_foldin_min_users, item_foldin_max_users and item_foldin_max_items must be >= 1")

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
    if t == "bool":
        if raw.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return raw.strip().lower() in ("true", "1", "yes", "on")
        raise ValueError(raw)
    return raw
