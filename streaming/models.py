"""The worker's model: load a version from the store, verify it, swap it in atomically.

Loading (checksums, memory maps, the id index) runs in a thread so the event loop keeps
serving; the swap is one reference assignment on the loop, between batches. A version that
fails verification is refused: logged, counted, and the current one keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from recsys.confidence import ConfidenceConfig
from recsys.errors import RecsysError
from recsys.recommender import Recommender
from recsys.scoring import ScoringConfig
from recsys.store import ModelStore

from .metrics import WorkerMetrics
from .processor import Processor

log = logging.getLogger("streamrec.models")


class ModelHolder:
    def __init__(self, store: ModelStore, processor: Processor, ccfg: ConfidenceConfig, scfg: ScoringConfig,
                 metrics: WorkerMetrics):
        self.store, self.processor, self.ccfg, self.scfg, self.metrics = store, processor, ccfg, scfg, metrics
        self.loaded_at: float | None = None

    @property
    def version(self) -> str | None:
        rec = self.processor.recommender
        return rec.version if rec is not None else None

    def _build(self, version: str | None) -> Recommender:
        return Recommender(self.store.load(version), self.ccfg, self.scfg)

    def _install(self, rec: Recommender) -> None:
        self.processor.recommender = rec  # the swap: the next batch uses the new model
        self.loaded_at = time.time()
        self.metrics.set_model(rec.version, float(rec.model.metadata.get("created", 0)))
        self.metrics.model_swaps.labels("ok").inc()
        log.info("serving model %s (%d items)", rec.version, rec.model.n_items,
                 extra={"model_version": rec.version})

    def _refuse(self, version: str | None, err: Exception) -> None:
        self.metrics.model_swaps.labels("refused").inc()
        log.error("refused model %s: %s; still serving %s", version, err, self.version,
                  extra={"model_version": self.version})

    def load_initial(self) -> bool:
        """At start-up: serve the store's current version if there is one (else cold start)."""
        if self.store.current() is None:
            log.warning("no model in %s yet: serving stream popularity until a retrain lands", self.store.root)
            return False
        try:
            self._install(self._build(None))
            return True
        except RecsysError as e:
            self._refuse(self.store.current(), e)
            return False

    async def on_announcement(self, payload: bytes) -> bool:
        """A model-updates message: {"version": ...}. Loads off the loop, swaps on it."""
        try:
            version = json.loads(payload)["version"]
            if not isinstance(version, str) or not version:
                raise ValueError("no version")
        except (ValueError, KeyError, TypeError) as e:
            self._refuse(None, ValueError(f"unreadable announcement {payload[:200]!r}: {e}"))
            return False
        pinned = self.store._pointer("PINNED")
        if pinned and pinned != version:
            log.warning("ignoring announced model %s: %s is pinned", version, pinned)
            return False
        if version == self.version:
            return True
        try:
            rec = await asyncio.to_thread(self._build, version)
        except RecsysError as e:
            self._refuse(version, e)
            return False
        self._install(rec)
        return True
