"""Prometheus metrics a worker exports (prometheus-client), all prefixed `streamrec_`.

One `WorkerMetrics` per process on the default registry (what /metrics serves); tests pass a
fresh CollectorRegistry so counts start from zero.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # the *_created series double the output and no dashboard uses them

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMPUTE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY):
        r = registry
        self.registry = registry
        self.events_in = Counter("streamrec_events_in", "Accepted events, by event type", ["type"], registry=r)
        self.rejected = Counter(
            "streamrec_events_rejected", "Messages sent to the dead-letter topic, by reason", ["reason"], registry=r
        )
        self.duplicates = Counter(
            "streamrec_events_duplicate",
            "Redelivered events skipped because the user's state already has them",
            registry=r,
        )
        self.recs_out = Counter(
            "streamrec_recommendations_out", "Recommendation messages published, by source", ["source"], registry=r
        )
        self.latency = Histogram(
            "streamrec_event_to_publish_seconds",
            "From the event's arrival in Kafka (record timestamp) to its recommendation's publication",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.foldin_seconds = Histogram(
            "streamrec_foldin_seconds", "Fold-in time per batch", buckets=COMPUTE_BUCKETS, registry=r
        )
        self.scoring_seconds = Histogram(
            "streamrec_scoring_seconds", "Scoring (product + top-k) time per batch", buckets=COMPUTE_BUCKETS, registry=r
        )
        self.ranking_seconds = Histogram(
            "streamrec_ranking_seconds",
            "Ranked lists per batch (a version with a ranker): sources, candidates, features and the ranker",
            buckets=COMPUTE_BUCKETS,
            registry=r,
        )
        self.sources_reread = Counter(
            "streamrec_sources_reread_events",
            "Recent clickstream events read back into the candidate sources: at start (`start`), and for "
            "partitions a rebalance moved to this worker (`rebalance`)",
            ["when"],
            registry=r,
        )
        self.batch_events = Histogram(
            "streamrec_batch_events", "Events per micro-batch", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_users = Histogram(
            "streamrec_batch_users", "Distinct users per micro-batch", buckets=SIZE_BUCKETS, registry=r
        )
        self.users = Gauge(
            "streamrec_users_in_state",
            "Users whose state this worker serves (an exact count over its active partitions, standbys excluded)",
            registry=r,
        )
        self.model_version = Gauge(
            "streamrec_model_info", "The serving model version (value 1)", ["version"], registry=r
        )
        self.model_created = Gauge(
            "streamrec_model_created_timestamp_seconds",
            "When the serving model was trained (age = time() - this)",
            registry=r,
        )
        self.model_swaps = Counter(
            "streamrec_model_loads", "Model load attempts, by result (ok, refused)", ["result"], registry=r
        )
        self.model_fetch_refused = Counter(
            "streamrec_model_fetch_refused",
            "Model versions refused, by reason: fetched from Kafka (stream.model_transport kafka) and "
            "refused (missing, corrupt, invalid, unverified, unreachable), or, with either transport, a "
            "version whose ranker file fails its checksum or does not parse (ranker); ranker_features: a "
            "ranker built for another release's features, not used (the version serves with the blend)",
            ["reason"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "streamrec_consumer_lag", "Clickstream messages not yet processed, by partition", ["partition"], registry=r
        )
        self.hits = Counter(
            "streamrec_live_hits",
            "Events on an item that was in the user's last published list, by model version",
            ["model_version"],
            registry=r,
        )
        self.hit_checks = Counter(
            "streamrec_live_hit_checks",
            "Events of users who had a published list, by that list's model version",
            ["model_version"],
            registry=r,
        )
        # New items before the next retrain (streaming/worker/new_items.py)
        self.item_evidence_sent = Counter(
            "streamrec_item_evidence_sent", "New-item evidence records this worker's batches produced", registry=r
        )
        self.item_evidence = Counter(
            "streamrec_item_evidence",
            "New-item evidence records received, by result (accepted; stale: for "
            "another model version or an item it knows; rejected: malformed)",
            ["result"],
            registry=r,
        )
        self.items_folded = Counter(
            "streamrec_items_folded_in", "New-item rows this worker solved and published", registry=r
        )
        self.item_rows = Counter(
            "streamrec_item_factor_rows",
            "New-item rows read, by result (applied; ignored: another model version; rejected: malformed)",
            ["result"],
            registry=r,
        )
        self.new_items_served = Gauge(
            "streamrec_new_items_served", "Folded-in items in the serving model (not in its training data)", registry=r
        )
        self.sources_entries = Gauge(
            "streamrec_sources_entries",
            "What the candidate sources hold, by structure: covisit_pairs (bounded by "
            "sources.covisit_max_pairs), covisit_rows, covisit_users (sources.max_users), sessions "
            "(sources.max_sessions), session_items",
            ["structure"],
            registry=r,
        )
        self._version: str | None = None

    def track_sources(self, sizes: Callable[[], dict[str, int]]) -> None:
        """Read the sources' sizes at each scrape (nothing is counted on the event path)."""

        def reader(name: str) -> Callable[[], float]:
            return lambda: sizes()[name]

        for name in sizes():
            self.sources_entries.labels(name).set_function(reader(name))

    def set_model(self, version: str | None, created: float | None) -> None:
        if self._version is not None:
            self.model_version.remove(self._version)
        self._version = version
        if version is not None:
            self.model_version.labels(version).set(1)
        self.model_created.set(created or 0)
