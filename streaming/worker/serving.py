"""The worker's model: load a version from the store, verify it, swap it in atomically.

Loading (checksums, memory maps, the id index) runs in a thread so the event loop keeps
serving; the swap is one reference assignment on the loop, between batches. A version that
fails verification is refused: logged, counted, and the current one keeps serving.

With new-item fold-in on (`items`, streaming/worker/new_items.py), a load also reads the version's
XᵀX, and a swap tells `items`, which then extends the model with folded-in rows between batches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import numpy as np

from recsys.confidence import ConfidenceConfig
from recsys.errors import RecsysError
from recsys.serving.recommender import Recommender
from recsys.serving.scoring import ScoringConfig
from recsys.model.store import ModelStore

from streaming.worker.metrics import WorkerMetrics
from streaming.worker.processor import Processor

log = logging.getLogger("streamrec.models")


class ModelHolder:
    def __init__(self, store: ModelStore, processor: Processor, ccfg: ConfidenceConfig, scfg: ScoringConfig,
                 metrics: WorkerMetrics):
        self.store, self.processor, self.ccfg, self.scfg, self.metrics = store, processor, ccfg, scfg, metrics
        self.loaded_at: float | None = None
        self.items: Any = None  # streaming.worker.new_items.NewItems when new items are folded in

    @property
    def version(self) -> str | None:
        rec = self.processor.recommender
        return rec.version if rec is not None else None

    def _build(self, version: str | None) -> tuple[Recommender, np.ndarray | None]:
        model = self.store.load(version)
        xtx = self.store.user_gram(model.version) if self.items is not None else None
        return Recommender(model, self.ccfg, self.scfg), xtx

    def _install(self, rec: Recommender, xtx: np.ndarray | None = None) -> None:
        self.processor.recommender = rec  # the swap: the next batch uses the new model
        if self.items is not None:
            self.items.on_model(rec, xtx)  # same loop step: no batch sees one without the other
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
            self._install(*self._build(None))
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
            rec, xtx = await asyncio.to_thread(self._build, version)
        except RecsysError as e:
            self._refuse(version, e)
            return False
        self._install(rec, xtx)
        return True
