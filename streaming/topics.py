"""Every Kafka topic of the system, defined once: name, partitions, topic configuration, key,
what it carries, and who creates it.

Names come from the stream settings (`recsys.config`); everything else about a topic is here.
`recsys topics` and the worker's start create the `core` topics; the worker also creates the
new-item topics when `stream.item_foldin` is on; Faust creates the state changelog and its
leader-election topic. The demo deletes `all` of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# New-item rows outlive any sane retrain interval, then go; evidence is consumed within
# seconds, a day covers a stopped worker.
ROWS_RETENTION_MS = 7 * 86400_000
EVIDENCE_RETENTION_MS = 86400_000
# The items topic keeps its tombstones: a worker that reads it from the start (a wiped data dir)
# must see a deleted item as deleted, not as an item it has never heard of (which it would show).
TOMBSTONES_KEPT_MS = 100 * 365 * 86400_000
# Model artifacts: compacted, never deleted by age (a pinned version may be months old). Only a
# closed segment is compacted: an hourly roll lets tombstoned versions go within about an hour.
ARTIFACTS_SEGMENT_MS = 3600_000


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    key: str
    carries: str
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Topics:
    clickstream: Topic
    recommendations: Topic
    dlq: Topic
    model_updates: Topic
    model_artifacts: Topic
    changelog: Topic
    item_evidence: Topic
    item_factors: Topic
    leader: Topic
    items: Topic

    @property
    def core(self) -> list[Topic]:
        """What `recsys topics` (and every worker at start) creates."""
        return [self.items, self.clickstream, self.recommendations, self.dlq, self.model_updates, self.model_artifacts]

    @property
    def new_items(self) -> list[Topic]:
        """Created by a worker with new-item fold-in on."""
        return [self.item_evidence, self.item_factors]

    @property
    def all(self) -> list[Topic]:
        return [*self.core, self.changelog, *self.new_items, self.leader]


def topics(s: Any) -> Topics:
    """The topics of one deployment, from its stream settings."""
    p = s.partitions
    return Topics(
        clickstream=Topic(s.clickstream_topic, p, "user id", "one JSON event per message"),
        recommendations=Topic(s.recommendations_topic, p, "user id", "one JSON recommendation list per message"),
        dlq=Topic(s.dlq_topic, 1, "the rejected message's key", "rejected messages: original bytes, reason in headers"),
        model_updates=Topic(s.model_updates_topic, 1, "none", "model announcements read by every worker"),
        model_artifacts=Topic(
            s.model_artifacts_topic,
            2,
            "manifest/<version>, pointer/current, pointer/pinned (partition 0); chunk/<version>/<file>/<n> (1)",
            "model versions in chunks with a sha256 manifest (stream.model_transport kafka: "
            "streaming/kafka/model_transport.py)",
            {"cleanup.policy": "compact", "segment.ms": str(ARTIFACTS_SEGMENT_MS)},
        ),
        changelog=Topic(s.changelog_topic, p, "user id", "the user-state table's changelog (Faust creates it)"),
        item_evidence=Topic(
            s.item_evidence_topic,
            p,
            "item id",
            "new-item evidence from the workers' batches",
            {"retention.ms": str(EVIDENCE_RETENTION_MS)},
        ),
        item_factors=Topic(
            s.item_factors_topic,
            1,
            "item id",
            "folded-in new-item rows, read by every worker",
            {"cleanup.policy": "compact,delete", "retention.ms": str(ROWS_RETENTION_MS)},
        ),
        leader=Topic(f"{s.app_id}-__assignor-__leader", 1, "none", "Faust's leader election (Faust creates it)"),
        items=Topic(
            s.items_topic,
            p,
            "item id",
            "the item catalogue: one JSON item record per item, a tombstone deletes; read whole by every worker",
            {"cleanup.policy": "compact", "delete.retention.ms": str(TOMBSTONES_KEPT_MS)},
        ),
    )


def topic_specs(s: Any) -> dict[str, int]:
    """name -> partitions of the core topics (`streaming.kafka.admin.ensure_topics` takes it)."""
    return {t.name: t.partitions for t in topics(s).core}


def ensure(bootstrap: str, wanted: list[Topic], timeout: float = 30.0) -> list[str]:
    """Create the missing ones (each with its own configuration); returns the names created."""
    from streaming.kafka.admin import ensure_topics

    created: list[str] = []
    by_config: dict[tuple[tuple[str, str], ...], dict[str, int]] = {}
    for t in wanted:  # one admin round trip per distinct configuration
        by_config.setdefault(tuple(sorted(t.config.items())), {})[t.name] = t.partitions
    for config, specs in by_config.items():
        created += ensure_topics(bootstrap, specs, config=dict(config), timeout=timeout)
    return created


def isolated(s: Any, name: str, **changes: Any) -> Any:
    """A copy of stream settings `s` whose consumer group and topics are all named after `name`
    (<name>-clicks, -recs, -dlq, -models, -model-artifacts; the changelog and new-item topics
    follow the app id):
    runs that share one broker (the demo, tests, benchmarks) never see each other's data."""
    return s.replace(
        app_id=name,
        clickstream_topic=f"{name}-clicks",
        recommendations_topic=f"{name}-recs",
        dlq_topic=f"{name}-dlq",
        model_updates_topic=f"{name}-models",
        items_topic=f"{name}-items",
        model_artifacts_topic=f"{name}-model-artifacts",
        **changes,
    )
