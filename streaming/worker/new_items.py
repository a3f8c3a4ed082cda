"""New items before the next retrain, live: the item-side fold-in of recsys/model/item_foldin.py run by
the workers (docs/evaluation.md, "New items before the next retrain").

    worker batch (Processor)   for each user whose applied events touch items the serving model
                               was not trained on: evidence {v, item, user, x, c} per such item
                               ──► [<app_id>-item-evidence], key = item (one worker gets all of an
                               item's evidence). x = the user's factors folded in against the
                               trained model, c = the user's confidence in the item now.
    evidence agent             keeps per new item the latest (x, c) per user (memory, bounded);
    (same app and group)       every refresh_s (or EVIDENCE_BATCH records) solves fold_in_items
                               for the items that changed ──► [<app_id>-item-factors]
                               {v, item, y, users}, compacted, key = item
    every worker (broadcast,   reads the rows from the beginning, keeps the serving version's, and
    no consumer group)         at most every refresh_s builds Recommender(extend_model(base, rows))
                               off the event loop and swaps it in between batches, like a model

A model swap drops the old version's evidence and rows (their factors live in another space);
what the new model still lacks starts over from new evidence. A model stored without XᵀX (the
Gram matrix of its training users, written by `recsys retrain`) disables all of this.

The evidence lives in memory, not in a Faust table: it is derived and replaceable, and a table
value per item (up to max_users factor vectors) rewritten on every click would put kilobytes on
a changelog per event. A restart, or a rebalance that moves an item's evidence partition, loses
only the evidence behind rows already published; so that the new owner does not replace a row
folded from many users by one from a few, it publishes an item once it holds at least as many
users as the row being served (`users`).

Nothing a record on either topic holds can stop a worker: malformed ones are counted
(`result="rejected"`) and dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.confidence import UserProfile, profile_confidences
from recsys.model.factors import Model
from recsys.model.item_foldin import extend_model, fold_in_items
from recsys.serving.recommender import Recommender
from streaming.kafka.broadcast import broadcast_consumer
from streaming.worker.serving import Serving, ServingModel

log = logging.getLogger("streamrec.items")

EVIDENCE_BATCH = 1000  # evidence records per solve at most (else every refresh_s)
MAX_FACTORS = 4096
MAX_ABS = 1e6  # factors and confidences are far below this; bigger is garbage
_COMPACT = json.JSONEncoder(separators=(",", ":"))  # json.dumps builds one per call for these separators


# -- records -----------------------------------------------------------------------------------
@dataclass
class Evidence:
    version: str
    item: str
    user: str
    x: np.ndarray  # (f,) float32: the user's factors against the trained model
    c: float  # the user's confidence in the item, c = 1 + alpha * r


@dataclass
class Row:
    version: str
    item: str
    y: np.ndarray  # (f,) float32
    users: int  # how many users it was folded in from


def _floats(v: Any, what: str) -> np.ndarray:
    if (
        not isinstance(v, list)
        or not 0 < len(v) <= MAX_FACTORS
        or any(isinstance(a, bool) or not isinstance(a, (int, float)) for a in v)
    ):
        raise ValueError(f"{what} is not a list of numbers")
    arr = np.asarray(v, np.float64)
    if not (np.isfinite(arr).all() and np.abs(arr).max() < MAX_ABS):
        raise ValueError(f"{what} has non-finite or huge values")
    return arr.astype(np.float32)


def _object(key: bytes | None, value: bytes | None) -> tuple[dict[str, Any], str]:
    if value is None:
        raise ValueError("no value")
    obj = json.loads(value)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    v, item = obj.get("v"), obj.get("item")
    if not (isinstance(v, str) and v and isinstance(item, str) and item):
        raise ValueError("no version or item")
    if key != item.encode():
        raise ValueError("key differs from the item")
    return obj, item


def encode_evidence(version: str, item: str, user: str, x: np.ndarray, c: float) -> bytes:
    (record,) = _user_evidence(version, user, x, [(item, c)])
    return record


def _user_evidence(version: str, user: str, x: np.ndarray, items: Sequence[tuple[str, float]]) -> list[bytes]:
    """One user's records, an (item, c) each: json.dumps' bytes of {v, item, user, x, c}, the
    user's factors written once (their floats are most of a record's cost)."""
    head = '{"v":' + json.dumps(version) + ',"item":'
    xs = _COMPACT.encode(np.round(np.asarray(x, np.float64), 6).tolist())
    tail = ',"user":' + json.dumps(user) + ',"x":' + xs + ',"c":'
    return [(head + json.dumps(item) + tail + json.dumps(round(float(c), 6)) + "}").encode() for item, c in items]


def decode_evidence(key: bytes | None, value: bytes | None) -> Evidence:
    """ValueError (json's errors are ValueErrors too) for anything but a well-formed record."""
    obj, item = _object(key, value)
    user, c = obj.get("user"), obj.get("c")
    if not (isinstance(user, str) and user):
        raise ValueError("no user")
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not (math.isfinite(c) and 1.0 <= c < MAX_ABS):
        raise ValueError("confidence is not a number >= 1")
    return Evidence(obj["v"], item, user, _floats(obj.get("x"), "x"), float(c))


def encode_row(version: str, item: str, y: np.ndarray, users: int) -> bytes:
    return json.dumps(
        {"v": version, "item": item, "y": np.round(np.asarray(y, np.float64), 7).tolist(), "users": int(users)},
        separators=(",", ":"),
    ).encode()


def decode_row(key: bytes | None, value: bytes | None) -> Row:
    obj, item = _object(key, value)
    users = obj.get("users")
    if isinstance(users, bool) or not isinstance(users, int) or users < 1:
        raise ValueError("users is not a positive integer")
    return Row(obj["v"], item, _floats(obj.get("y"), "y"), users)


# -- the worker's side: evidence from a batch ----------------------------------------------------
def new_item_evidence(
    base: Recommender, users: Sequence[tuple[str, UserProfile, set[str]]]
) -> list[tuple[bytes, bytes]]:
    """(key, value) evidence records for (user, profile after the batch, new items they touched).
    The users are folded in against `base` (the trained model, not the extended one: as measured
    offline, and so a new item's row never feeds back into its own evidence)."""
    confs = profile_confidences([p for _, p, _ in users], base.ccfg)
    x, known = base.fold_in(confs)
    out: list[tuple[bytes, bytes]] = []
    for (user, _, items), conf, xu, has in zip(users, confs, x, known, strict=True):
        if not has:  # no trained item yet: the user has no place in the space to lend
            continue
        kept = [(item, conf[item]) for item in sorted(items) if item in conf]  # else evicted (max_items)
        out += zip([i.encode() for i, _ in kept], _user_evidence(base.version, user, xu, kept), strict=True)
    return out


# -- the evidence agent's state ------------------------------------------------------------------
class EvidenceSolver:
    """Per new item the latest (x, c) per user, for one model version; solves changed items."""

    def __init__(self, min_users: int, max_users: int, max_items: int):
        self.min_users, self.max_users, self.max_items = min_users, max_users, max_items
        self.model: Model | None = None
        self.xtx: np.ndarray | None = None
        self.items: OrderedDict[str, OrderedDict[str, tuple[np.ndarray, float]]] = OrderedDict()
        self.changed: set[str] = set()

    def reset(self, model: Model | None, xtx: np.ndarray | None) -> None:
        self.model, self.xtx = (model, xtx) if xtx is not None else (None, None)
        self.items.clear()
        self.changed.clear()

    def add(self, ev: Evidence) -> str:
        """Keep one record; returns its result label (accepted, stale)."""
        m = self.model
        if m is None or ev.version != m.version or ev.item in m.item_index:
            return "stale"
        if len(ev.x) != m.factors:
            raise ValueError(f"x has {len(ev.x)} factors, the model {m.factors}")
        users = self.items.get(ev.item)
        if users is None:
            users = self.items[ev.item] = OrderedDict()
            if len(self.items) > self.max_items:
                dropped, _ = self.items.popitem(last=False)
                self.changed.discard(dropped)
        else:
            self.items.move_to_end(ev.item)
        users[ev.user] = (ev.x, ev.c)
        users.move_to_end(ev.user)
        if len(users) > self.max_users:
            users.popitem(last=False)
        self.changed.add(ev.item)
        return "accepted"

    def take(self, served_users: Callable[[str], int]) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
        """The changed items ready to solve: enough users, and no fewer than the served row's.
        A snapshot (copies of references), so the solve can run off the event loop."""
        ids = [
            i for i in self.changed if i in self.items and len(self.items[i]) >= max(self.min_users, served_users(i))
        ]
        self.changed.clear()
        xs = [np.stack([x for x, _ in self.items[i].values()]) for i in ids]
        cs = [np.array([c for _, c in self.items[i].values()], np.float64) for i in ids]
        return ids, xs, cs


# -- all of it, wired to one worker ----------------------------------------------------------------
class NewItems:
    """Owns the two topics, the evidence solver and the served rows of one worker process."""

    def __init__(self, app: Any, serving: ServingModel, settings: Any):
        self.app, self.serving, self.settings, self.metrics = app, serving, settings, serving.metrics
        serving.on_new_version(self.on_model)
        self.evidence_topic = app.topic(
            settings.item_evidence_topic,
            key_serializer="raw",
            value_serializer="raw",
            key_type=bytes,
            value_type=bytes,
            partitions=settings.partitions,
        )
        self.factors_topic = app.topic(settings.item_factors_topic, key_serializer="raw", value_serializer="raw")
        self.solver = EvidenceSolver(
            settings.item_foldin_min_users, settings.item_foldin_max_users, settings.item_foldin_max_items
        )
        # version -> item -> latest row: the serving version's, and newer ones (another worker may
        # swap first and publish for its version before this one swaps)
        self.rows: dict[str, dict[str, Row]] = {}
        self.dirty = False  # rows of the serving version changed since the last build
        self.built_at = 0.0

    # -- model swaps (ServingModel.swap calls this in the same loop step) ----------------------
    def on_model(self, serving: Serving) -> None:
        """A new trained model serves: evidence and rows of other versions are dropped."""
        trained = serving.trained
        assert trained is not None
        self.solver.reset(trained.model, serving.xtx)
        v = trained.version
        self.rows = {ver: rows for ver, rows in self.rows.items() if ver >= v}
        self.dirty = bool(self.rows.get(v)) and serving.xtx is not None

    # -- the evidence agent ---------------------------------------------------------------------
    async def on_evidence(self, events: Sequence[Any]) -> None:
        try:
            for ev in events:
                try:
                    result = self.solver.add(decode_evidence(ev.message.key, ev.message.value))
                except (ValueError, RecursionError) as e:
                    result = "rejected"
                    log.warning(
                        "bad new-item evidence record at %s/%s: %s",
                        ev.message.partition,
                        ev.message.offset,
                        str(e)[:200],
                    )
                self.metrics.item_evidence.labels(result).inc()
            await self.publish()
        except Exception:
            log.exception("new-item fold-in failed; evidence dropped")

    async def publish(self) -> None:
        solver, model, xtx = self.solver, self.solver.model, self.solver.xtx
        if model is None or xtx is None or not solver.changed:
            return
        ids, xs, cs = solver.take(self.served_users)
        if not ids:
            return
        y = await asyncio.to_thread(fold_in_items, xs, cs, xtx, model.regularization)
        if solver.model is not model:  # a model swap while solving: these rows are for the old space
            return
        sends = [
            await self.factors_topic.send(key=i.encode(), value=encode_row(model.version, i, y[k], len(xs[k])))
            for k, i in enumerate(ids)
            if np.isfinite(y[k]).all()
        ]
        results = await asyncio.gather(*sends, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        self.metrics.items_folded.inc(len(sends) - len(failed))
        if failed:
            log.warning(
                "%d of %d new-item rows were not published (%r); the next evidence re-solves them",
                len(failed),
                len(sends),
                failed[0],
            )

    def served_users(self, item: str) -> int:
        base = self.serving.snapshot.item_base
        row = self.rows.get(base.version, {}).get(item) if base is not None else None
        return row.users if row is not None else 0

    # -- every worker: the rows, as a broadcast -------------------------------------------------------
    def on_row(self, key: bytes | None, value: bytes | None) -> None:
        try:
            row = decode_row(key, value)
        except (ValueError, RecursionError) as e:
            self.metrics.item_rows.labels("rejected").inc()
            log.warning("bad new-item row on %s: %s", self.settings.item_factors_topic, str(e)[:200])
            return
        base = self.serving.snapshot.item_base
        if base is not None and row.version < base.version:  # an older model's: never served again
            self.metrics.item_rows.labels("ignored").inc()
            return
        self.rows.setdefault(row.version, {})[row.item] = row
        if base is not None and row.version == base.version:
            self.dirty = True
            self.metrics.item_rows.labels("applied").inc()
        else:
            self.metrics.item_rows.labels("ignored").inc()

    async def rebuild(self) -> None:
        """Serve the trained model plus every row of its version (built off the loop; a model
        swap meanwhile wins)."""
        self.dirty, self.built_at = False, time.monotonic()
        serving = self.serving.snapshot
        base = serving.item_base
        if base is None:
            return
        f, known = base.model.factors, base.model.item_index
        rows = [r for r in self.rows.get(base.version, {}).values() if r.item not in known and len(r.y) == f]
        rec = await asyncio.to_thread(self._extend, base, rows) if rows else base
        if self.serving.swap(dataclasses.replace(serving, current=rec, new_items=len(rows)), based_on=serving):
            log.debug("serving %d folded-in items on model %s", len(rows), base.version)

    @staticmethod
    def _extend(base: Recommender, rows: list[Row]) -> Recommender:
        model = extend_model(
            base.model,
            [r.item for r in rows],
            np.stack([r.y for r in rows]),
            popularity=np.array([r.users for r in rows], np.float32),
        )
        return Recommender(model, base.ccfg, base.scfg)

    async def listen_for_rows(self) -> None:
        """Read the rows topic from the beginning on every worker (no consumer group), applying
        rows as they come and rebuilding at most every refresh_s."""
        refresh = self.settings.item_foldin_refresh_s
        async with broadcast_consumer(
            self.settings.bootstrap, self.settings.item_factors_topic, from_beginning=True
        ) as consumer:
            while True:
                for records in (await consumer.getmany(timeout_ms=int(min(refresh, 1.0) * 1000))).values():
                    for r in records:
                        self.on_row(r.key, r.value)
                if self.dirty and time.monotonic() - self.built_at >= refresh:
                    try:
                        await self.rebuild()
                    except Exception:
                        log.exception("could not extend the model with new items; serving it without them")


def ensure_item_topics(settings: Any) -> None:
    """Both topics, usable, before the app starts: a topic the group's first assignment does not
    find is ignored by Faust's assignor until some later rebalance."""
    from streaming.topics import ensure, topics

    ensure(settings.bootstrap, topics(settings).new_items)


def register(app: Any, serving: ServingModel, settings: Any) -> NewItems:
    """The topics, the evidence agent and the rows reader on the worker's Faust app (create_app
    calls this when `item_foldin` is on)."""
    ensure_item_topics(settings)
    items = NewItems(app, serving, settings)

    @app.agent(items.evidence_topic, name="item-evidence")
    async def item_evidence(stream: Any) -> None:
        async for events in stream.take_events(EVIDENCE_BATCH, within=settings.item_foldin_refresh_s):
            await items.on_evidence(list(events))

    @app.task
    async def item_rows() -> None:
        await items.listen_for_rows()

    return items
