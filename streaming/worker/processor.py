"""What a worker does with one micro-batch, independent of Faust so it can be tested directly.

    raw messages ─► validate ─► bad ones: dead letters (original bytes + reason)
                 └► group by user ─► apply to each user's state once per batch, skipping
                    events at or below the offset the state already holds (redeliveries)
                 ─► the candidate sources count the applied events, in arrival order
                 ─► fold in all touched users at once ─► score them (query = their latest item);
                    a model version with a ranker: its ranked lists (streaming/worker/ranking.py)
                 ─► one recommendation message per user, naming the model version
                 ─► evidence for items the trained model lacks (streaming/worker/new_items.py)

The worker's clickstream loop (streaming/worker/app.py) does the I/O around it: reads and writes the state table,
sends the messages. The model comes from streaming/worker/serving.py, read once per batch.
Idempotence lives here: a user's events all arrive on one partition, in
order, so "offset <= state.offset" means "already applied".
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from recsys.candidates.sources import SourcesConfig
from recsys.catalogue import Catalogue, ItemFilter, ItemMask
from recsys.confidence import ConfidenceConfig
from recsys.config import Settings
from recsys.errors import EventError
from recsys.events import Event, InputConfig
from recsys.serving.popularity import RecentPopularity
from recsys.serving.recommender import Recommender
from recsys.serving.scoring import Recommendations
from streaming.worker.messages import Incoming, decode_event
from streaming.worker.metrics import WorkerMetrics
from streaming.worker.new_items import new_item_evidence
from streaming.worker.ranking import WorkerRanking
from streaming.worker.serving import Serving, ServingModel
from streaming.worker.state import UserState

DEFAULT_SOURCES = SourcesConfig()


@dataclass
class DeadLetter:
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str
    partition: int
    offset: int

    def headers(self, source_topic: str) -> list[tuple[str, bytes]]:
        return [
            ("reason", self.reason.encode()),
            ("detail", self.detail.encode()[:1000]),
            ("source", f"{source_topic}/{self.partition}/{self.offset}".encode()),
        ]


@dataclass
class BatchResult:
    states: dict[bytes, UserState] = field(default_factory=dict)  # to write back
    messages: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, JSON) recommendations
    dead: list[DeadLetter] = field(default_factory=list)
    accepted: int = 0
    duplicates: int = 0
    repaired: int = 0  # users written back only because redelivered events were already in their state
    evidence: list[tuple[bytes, bytes]] = field(default_factory=list)  # (item, JSON) new-item evidence


class Processor:
    def __init__(
        self,
        ccfg: ConfidenceConfig,
        metrics: WorkerMetrics,
        serving: ServingModel | None = None,
        top_n: int = 10,
        clock: Callable[[], float] = time.time,
        popularity_half_life_s: float = Settings().popularity_half_life_s,
        input_config: InputConfig | None = None,
        catalogue: Catalogue | None = None,
        sources: SourcesConfig | None = DEFAULT_SOURCES,
    ):
        self.ccfg, self.metrics, self.top_n, self.clock = ccfg, metrics, top_n, clock
        # What may be shown (streaming/worker/catalogue.py keeps it current between batches):
        # read once per batch in _recommend, applied inside the top-k.
        self.catalogue = catalogue
        self.input = input_config  # the shop's own field and type names (recsys.events.InputConfig)
        # Read, never written here: streaming/worker/serving.py owns it.
        self.serving = serving if serving is not None else ServingModel(metrics)
        # What shoppers touch now (stream.popularity_half_life_s): the list for a user the model
        # cannot place yet, and everyone's list before any model exists. Counts the events of
        # this worker's partitions only.
        self.recent_popularity = RecentPopularity(half_life_s=popularity_half_life_s)
        # The ranker's candidate sources (None: stream.candidate_sources off, rankers unused).
        self.ranking = WorkerRanking(sources, ccfg) if sources is not None else None
        if self.ranking is not None:
            metrics.track_sources(self.ranking.sources.sizes)

    def process(self, batch: Sequence[Incoming], load: Callable[[bytes, Incoming], UserState | None]) -> BatchResult:
        """Apply a batch. `load(key, msg)` returns a user's stored state (or None)."""
        res = BatchResult()
        m = self.metrics
        serving = self.serving.snapshot  # one reference for the whole batch: one model version per batch
        base = serving.item_base  # the trained model, when new items are folded in
        new_items: dict[bytes, set[str]] = {}  # user -> items of applied events the trained model lacks
        by_user: OrderedDict[bytes, list[tuple[Incoming, Event]]] = OrderedDict()
        arrived: dict[int, int] = {}  # id(msg) -> position in the batch
        for pos, msg in enumerate(batch):
            try:
                event = decode_event(msg, self.input)
            except EventError as e:
                res.dead.append(DeadLetter(msg.key, msg.value, e.reason, e.detail, msg.partition, msg.offset))
                m.rejected.labels(e.reason).inc()
                continue
            by_user.setdefault(msg.key, []).append((msg, event))  # type: ignore[arg-type]
            arrived[id(msg)] = pos

        touched: list[tuple[bytes, UserState, Incoming, Event, list[Incoming]]] = []
        counted: list[tuple[int, Event, int, int]] = []  # (arrival position, event, partition, offset)
        ranking = self.ranking
        # Counters are added up per batch, then incremented once per label: a labelled
        # increment per event was ~5% of a batch's time.
        by_type: dict[str, int] = {}
        checks: dict[str, int] = {}
        hits: dict[str, int] = {}
        for key, items in by_user.items():
            state = load(key, items[0][0])
            if state is None:
                state = UserState()
            applied: list[Incoming] = []
            redelivered = 0
            for msg, event in items:
                if msg.offset <= state.profile.offset:
                    redelivered += 1
                    if ranking is not None and ranking.fresh(msg.partition, msg.offset):
                        # in the state already, but not in this process's sources (read after a
                        # restart, past the committed offset the warm-up stopped at)
                        counted.append((arrived[id(msg)], event, msg.partition, msg.offset))
                    continue
                if state.last_items:  # live quality: was this item in what we last showed?
                    version = state.last_version or "none"
                    checks[version] = checks.get(version, 0) + 1
                    if event.item in state.last_items:
                        hits[version] = hits.get(version, 0) + 1
                state.profile.apply(event, self.ccfg)
                state.profile.offset = msg.offset
                counted.append((arrived[id(msg)], event, msg.partition, msg.offset))
                if base is not None and event.item not in base.model.item_index:
                    new_items.setdefault(key, set()).add(event.item)
                by_type[event.type] = by_type.get(event.type, 0) + 1
                applied.append(msg)
            res.duplicates += redelivered
            if applied:
                touched.append((key, state, items[-1][0], items[-1][1], applied))
            elif redelivered:
                # Redelivered events this state already holds: the worker stopped after writing
                # the state but before committing the input. The write reached the local RocksDB
                # at once, but its changelog record may never have left: then the changelog (what
                # a wiped worker, a standby or the next owner restores from) is behind, and
                # skipping these events would leave it behind for good once their offsets are
                # committed. Write the state again so the changelog catches up first.
                res.states[key] = state
                res.repaired += 1
        # Popularity and the sources count in arrival order: their ties (first counted first) and
        # float sums then equal the stream's own order, as stream-eval replays it.
        counted.sort(key=lambda c: c[0])
        if ranking is not None:  # each input offset once per process (see WorkerRanking.fresh)
            counted = [c for c in counted if ranking.fresh(c[2], c[3])]
            ranking.observe([c[1] for c in counted], [(c[2], c[3]) for c in counted], self.catalogue)
        for c in counted:
            self.recent_popularity.add(c[1].item, c[1].ts)
        res.accepted = sum(len(t[4]) for t in touched)
        for counter, counts in ((m.events_in, by_type), (m.hit_checks, checks), (m.hits, hits)):
            for label, k in counts.items():
                counter.labels(label).inc(k)
        if res.duplicates:
            m.duplicates.inc(res.duplicates)
        m.batch_events.observe(len(batch))
        m.batch_users.observe(len(touched))
        if not touched:
            return res

        recs = self._recommend(
            serving, [t[3].user for t in touched], [t[1] for t in touched], [t[3].item for t in touched]
        )
        now_ms = int(self.clock() * 1000)
        sources: dict[str, int] = {}
        for (key, state, last_msg, last_event, applied), rec in zip(touched, recs, strict=True):
            state.last_items = rec.items
            state.last_version = rec.model_version or ""
            state.last_published_ms = now_ms
            state.last_scores, state.last_source, state.last_query = rec.scores, rec.source, last_event.item
            state.last_event_ts, state.last_ingest_ts = last_event.ts, last_msg.timestamp_ms
            state.last_partition = last_msg.partition
            res.states[key] = state
            res.messages.append(
                (
                    key,
                    json.dumps(
                        {
                            "user": last_event.user,
                            "items": rec.items,
                            "scores": [round(s, 6) for s in rec.scores],
                            "source": rec.source,
                            "model_version": rec.model_version,
                            "query": last_event.item,
                            "event_ts": last_event.ts,
                            "ingest_ts": last_msg.timestamp_ms,
                            "published_ts": now_ms,
                            "offset": last_msg.offset,
                            "partition": last_msg.partition,
                        },
                        separators=(",", ":"),
                    ).encode(),
                )
            )
            sources[rec.source] = sources.get(rec.source, 0) + 1
            for msg in applied:
                m.latency.observe(max(0.0, now_ms - msg.timestamp_ms) / 1000.0)
        for source, k in sources.items():
            m.recs_out.labels(source).inc(k)
        if new_items and base is not None:
            res.evidence = new_item_evidence(
                base, [(t[3].user, t[1].profile, new_items[t[0]]) for t in touched if t[0] in new_items]
            )
            m.item_evidence_sent.inc(len(res.evidence))
        return res

    def eligibility(self, rec: Recommender | None, flt: ItemFilter | None = None) -> ItemMask | None:
        """What may be shown under `rec`'s model (and a request's filters): the one mask every
        list of this worker is scored with, stream and request alike. None: no restriction."""
        if self.catalogue is None or rec is None:
            return None
        return self.catalogue.mask(rec.model, flt)

    def popular_fallback(self, state: UserState, n: int, flt: ItemFilter | None = None) -> Recommendations:
        """The list before any model exists: recent popularity, minus bought and masked items."""
        pop, cat = self.recent_popularity, self.catalogue
        bought = state.profile.items_with(("transaction",))
        items = pop.top(n + (64 if cat is not None else 0), exclude=bought | set(flt.exclude if flt else ()))
        if cat is not None:
            items = [i for i in items if cat.allows(i, flt)]
        items = items[:n]
        return Recommendations(items, [pop.count(i) for i in items], "popular", None)

    def on_request(
        self, user: str, state: UserState, query: str | None, n: int, flt: ItemFilter | None = None
    ) -> Recommendations:
        """A list computed now for a request (GET /recommendations/<user>/?...): the stream's
        scoring and catalogue mask plus the request's filters `flt`; a version with a ranker
        serves the ranker's list over the candidates the filters allow
        (streaming/worker/ranking.py `WorkerRanking.on_request`)."""
        serving = self.serving.snapshot
        rec = serving.current
        if rec is None:
            return self.popular_fallback(state, n, flt)
        mask = self.eligibility(rec, flt)
        popular = self.recent_popularity.top(n + 64)

        def blend() -> Recommendations:
            extra = [flt.exclude if flt is not None else frozenset()]
            return rec.recommend([state.profile], [query], n, popular=popular, mask=mask, extra_excludes=extra)[0]

        if serving.ranker is not None and self.ranking is not None:
            return self.ranking.on_request(serving, user, state, query, n, popular, mask, blend)
        return blend()

    def _recommend(
        self, serving: Serving, users: list[str], states: list[UserState], queries: list[str]
    ) -> list[Recommendations]:
        rec = serving.current
        if rec is None:
            return [self.popular_fallback(s, self.top_n) for s in states]
        timings: dict[str, float] = {}
        popular = self.recent_popularity.top(self.top_n + 64)
        mask = self.eligibility(rec)

        def blend(rows: list[int]) -> list[Recommendations]:
            return rec.recommend(
                [states[j].profile for j in rows],
                [queries[j] for j in rows],
                self.top_n,
                timings,
                popular=popular,
                mask=mask,
            )

        if serving.ranker is not None and self.ranking is not None:
            out = self.ranking.recommend(serving, users, states, queries, self.top_n, popular, mask, blend, timings)
            self.metrics.ranking_seconds.observe(timings["ranking"])
        else:
            out = blend(list(range(len(states))))
            self.metrics.scoring_seconds.observe(timings["scoring"])
        self.metrics.foldin_seconds.observe(timings["foldin"])
        return out
