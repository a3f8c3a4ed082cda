"""The serving model: its one owner, its one swap, and how new versions reach it.

    ServingModel   holds a `Serving` snapshot (the trained version, the same plus folded-in new
                   items, and XᵀX) and replaces it in one assignment on the event loop (`swap`),
                   between batches. Batches and web views read `snapshot` once and use that;
                   nobody else writes it.
    ModelUpdates   loads a version from the store (checksums, memory maps, the id index) in a
                   thread and swaps it in; on start-up the store's current version, then every
                   announcement on the model-updates topic. A version that fails verification is
                   refused: logged, counted, and the current one keeps serving. A version's
                   ranker (ranker.txt) loads with it: one that fails its checksum or does not
                   parse refuses the version as a whole (reason `ranker`); a sound one built
                   for another release's features (a deploy between retrains) is left out and
                   the version serves with the blend (counted as `ranker_features`).
                   With stream.model_transport kafka, a version the local store lacks is first
                   fetched from the artifacts topic (streaming/kafka/model_transport.py), and what
                   to serve at start, and the pin, come from that topic's pointers.

New items folded in before the next retrain (streaming/worker/new_items.py) swap in an extended
`current` for the same trained version; a new trained version drops them (their factors live in
another space), which `on_new_version` subscribers hear of in the same loop step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recsys.candidates.ranker import FeatureMismatch, Features, Ranker, RankerConfig
from recsys.confidence import ConfidenceConfig
from recsys.errors import ModelStoreError, RecsysError
from recsys.model.store import ModelStore, check_version
from recsys.serving.recommender import Recommender
from recsys.serving.scoring import ScoringConfig
from streaming.kafka.broadcast import broadcast_consumer
from streaming.kafka.model_transport import ModelTransport, TransportRefused
from streaming.worker.metrics import WorkerMetrics

log = logging.getLogger("streamrec.models")


@dataclass(frozen=True)
class Serving:
    """What one batch reads: one reference, so one model version per batch."""

    trained: Recommender | None = None  # the version as the retrain wrote it
    current: Recommender | None = None  # trained + folded-in new items: what lists come from
    xtx: np.ndarray | None = None  # XᵀX of the trained version's users; None: no new-item fold-in
    new_items: int = 0  # folded-in items in `current`
    ranker: Ranker | None = None  # the version's learned ranker: lists are ranked (streaming/worker/ranking.py)
    features: Features | None = None  # the ranker's feature builder on the trained model

    @classmethod
    def of(cls, rec: Recommender, xtx: np.ndarray | None = None, ranker: Ranker | None = None) -> Serving:
        features = Features(rec.model, ranker.cfg) if ranker is not None else None
        return cls(rec, rec, xtx, ranker=ranker, features=features)

    @property
    def version(self) -> str | None:
        return self.trained.version if self.trained is not None else None

    @property
    def item_base(self) -> Recommender | None:
        """The model new-item evidence is computed against (None: new items are not folded in)."""
        return self.trained if self.xtx is not None else None


class RankerRefused(ModelStoreError):
    """A version whose ranker file fails its checksum or does not parse: refused as a whole."""

    reason = "ranker"


class ServingModel:
    """The only owner of the serving model; `swap` is its only write."""

    def __init__(self, metrics: WorkerMetrics):
        self.metrics = metrics
        self.snapshot = Serving()
        self.loaded_at: float | None = None
        self._on_new_version: list[Callable[[Serving], None]] = []

    @property
    def version(self) -> str | None:
        return self.snapshot.version

    def on_new_version(self, callback: Callable[[Serving], None]) -> None:
        """Call `callback(snapshot)` right after each swap to another trained version."""
        self._on_new_version.append(callback)

    def swap(self, new: Serving, *, based_on: Serving | None = None) -> bool:
        """Serve `new` from the next batch on. With `based_on` (a snapshot read before work done
        off the loop), only if the trained version is still that one's: a model swap meanwhile wins."""
        old = self.snapshot
        if based_on is not None and old.trained is not based_on.trained:
            return False
        self.snapshot = new
        self.metrics.new_items_served.set(new.new_items)
        if new.trained is not old.trained and new.trained is not None:
            rec = new.trained
            self.loaded_at = time.time()
            self.metrics.set_model(rec.version, float(rec.model.metadata.get("created", 0)))
            self.metrics.model_swaps.labels("ok").inc()
            log.info(
                "serving model %s (%d items, %s)",
                rec.version,
                rec.model.n_items,
                "with its ranker" if new.ranker is not None else "no ranker: the blend serves",
                extra={"model_version": rec.version},
            )
            for callback in self._on_new_version:
                callback(new)
        return True


class ModelUpdates:
    """Versions from the store into the ServingModel: at start-up, then on announcements."""

    def __init__(
        self,
        store: ModelStore,
        serving: ServingModel,
        ccfg: ConfidenceConfig,
        scfg: ScoringConfig,
        *,
        with_user_gram: bool,
        transport: ModelTransport | None = None,
        ranker_cfg: RankerConfig | None = None,
    ):
        self.store, self.serving, self.ccfg, self.scfg = store, serving, ccfg, scfg
        # None: a version's ranker is not loaded (stream.candidate_sources off); the blend serves
        self.ranker_cfg = ranker_cfg
        self.with_user_gram = with_user_gram  # XᵀX is read only when new items are folded in
        self.listening = False  # positioned on model-updates: announcements from now on are heard
        # kafka transport: versions come from the artifacts topic into this worker's own store,
        # and the pin is the topic's (pointer/pinned, pin announcements), not a file in the store.
        self.transport = transport
        self.kafka_pin: str | None = None

    def pinned(self) -> str | None:
        return self.kafka_pin if self.transport is not None else self.store.pinned()

    def wanted(self) -> str | None:
        """The version to serve now: the store's pointer (filesystem), else the topic's pinned or
        current one (kafka; the local store's if the topic cannot be read)."""
        if self.transport is None:
            return self.store.current()
        try:
            index = self.transport.index()
        except TransportRefused as e:
            log.warning("cannot read the model versions on Kafka (%s): serving the local store's", e)
            return self.store.current()
        self.kafka_pin = index.pinned
        return index.pinned or index.current or self.store.current()

    def _build(self, version: str) -> Serving:
        if self.transport is not None and version not in self.store.versions():
            self.transport.fetch(self.store, version)
        model = self.store.load(version)
        xtx = self.store.user_gram(model.version) if self.with_user_gram else None
        if self.with_user_gram and xtx is None:
            log.warning(
                "model %s has no XᵀX (user_gram.npy): new items are not folded in until a retrain stores one",
                model.version,
                extra={"model_version": model.version},
            )
        serving = Serving.of(Recommender(model, self.ccfg, self.scfg), xtx, self._ranker(model.version))
        if self.transport is not None:  # this host's own store: a restart without Kafka serves it
            self.store.publish(model.version)
            self._prune_cache(model.version)
        return serving

    def _ranker(self, version: str) -> Ranker | None:
        """The version's ranker, if it has one. A ranker file that fails its checksum or does not
        parse refuses the whole version: its model was gated together with that ranker."""
        if self.ranker_cfg is None:
            return None
        try:
            raw = self.store.ranker(version)
            if raw is None:
                return None
            ranker = Ranker.from_bytes(raw, self.ranker_cfg)
        except FeatureMismatch as e:
            # A ranker from before an upgrade that changed the features (a deploy between two
            # retrains): the version's model is sound and serves with the blend; the next
            # retrain stores a ranker of this release's features.
            self.serving.metrics.model_fetch_refused.labels("ranker_features").inc()
            log.warning(
                "model %s: its ranker is not used (%s); the blend serves until a retrain stores a new one",
                version,
                e,
                extra={"model_version": version},
            )
            return None
        except (ModelStoreError, ValueError) as e:
            raise RankerRefused(f"model version {version!r}: its ranker is refused: {e}") from None
        if self.ranker_cfg.native:  # once per version, here off the event loop (but at start-up)
            ranker.compile_native()
        return ranker

    def _prune_cache(self, loaded: str) -> None:
        """kafka transport: this worker's store is a cache of the topic; it keeps the newest
        `model_keep_versions` versions, the one just loaded, the serving and the pinned one (a
        retrain every few minutes would otherwise fill the disk)."""
        assert self.transport is not None
        versions = self.store.versions()
        kept = set(versions[-self.transport.keep :]) | {loaded, self.serving.version, self.kafka_pin}
        for v in versions:
            if v not in kept:  # memory maps of a version still in use stay valid after unlinking
                shutil.rmtree(self.store.root / v, ignore_errors=True)
                log.info("removed model %s from the local cache %s", v, self.store.root)

    def _refuse(self, version: str | None, err: Exception) -> None:
        self.serving.metrics.model_swaps.labels("refused").inc()
        if isinstance(err, (TransportRefused, RankerRefused)):
            self.serving.metrics.model_fetch_refused.labels(err.reason).inc()
        log.error(
            "refused model %s: %s; still serving %s",
            version,
            err,
            self.serving.version,
            extra={"model_version": self.serving.version},
        )

    def load_initial(self) -> bool:
        """At start-up: serve the current version if there is one (else cold start)."""
        current = self.wanted()
        if current is None:
            log.warning("no model in %s yet: serving stream popularity until a retrain lands", self.store.root)
            return False
        try:
            self.serving.swap(self._build(current))
            return True
        except RecsysError as e:
            self._refuse(current, e)
            return False

    async def on_announcement(self, payload: bytes) -> bool:
        """A model-updates message: {"version": ...}, with "pinned" (a version or null) from
        `recsys models pin|unpin --announce`. Loads (fetches) off the loop, swaps on it."""
        try:
            body = json.loads(payload)
            version = body["version"]
            if not isinstance(version, str) or not version:
                raise ValueError("no version")
        except (ValueError, KeyError, TypeError) as e:
            self._refuse(None, ValueError(f"unreadable announcement {payload[:200]!r}: {e}"))
            return False
        try:  # it becomes a path in the store: nothing that could leave it (../, /, a hidden entry)
            check_version(version)
            if self.transport is not None and "pinned" in body:  # filesystem: the shared store has the pin
                self.kafka_pin = check_version(body["pinned"]) if body["pinned"] is not None else None
        except RecsysError as e:
            self._refuse(None, e)
            return False
        pinned = self.pinned()
        if pinned and pinned != version:
            log.warning("ignoring announced model %s: %s is pinned", version, pinned)
            return False
        if version == self.serving.version:
            return True
        try:
            new = await asyncio.to_thread(self._build, version)
        except RecsysError as e:
            self._refuse(version, e)
            return False
        return self.serving.swap(new)

    async def listen(self, bootstrap: str, topic: str) -> None:
        """Read model-updates from its end on every worker (no consumer group: a broadcast)."""
        async with broadcast_consumer(bootstrap, topic, from_beginning=False) as consumer:
            # Announcements made while this worker was starting: the pointers have them.
            current = await asyncio.to_thread(self.wanted)
            if current and current != self.serving.version:
                await self.on_announcement(json.dumps({"version": current}).encode())
            self.listening = True
            async for msg in consumer:
                await self.on_announcement(msg.value)
