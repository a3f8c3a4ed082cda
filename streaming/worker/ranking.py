"""The worker's ranked lists: candidate sources kept from the stream, ordered by the version's ranker.

    WorkerRanking.observe(events)  every event a batch applied, in the order they arrived: the
                                   sources (co-visitation, session-kNN; recsys.candidates.sources)
                                   and the item counters the ranker's features read (ItemStats)
    WorkerRanking.recommend(...)   a batch's lists when the serving version has a ranker: the
                                   same code as `recsys stream-eval`'s method `ranker`
                                   (recsys.candidates.lists), plus the catalogue mask

**Which state a list reads.** A worker computes a user's list after applying the batch that
holds their latest event; that list is what the user sees before their *next* event. The
stream evaluation computes the list of an event from the state before it, with the item counters
as of the start of its chunk (one event per chunk: the state after the previous event; an event
on the item already on screen is not scored and joins the next chunk, the one case where the
two differ). So the worker counts a batch's events into every source and
counter before computing the batch's lists: the list shown before an event then reads exactly
the state the evaluation gives it (the equality test sends one event per batch:
tests/integration/test_worker_ranker_kafka.py). Events are observed in arrival order (not user
by user): co-visitation weights are float sums and session ids break ties, so the order counts.

**What the sources cover.** The events of this worker's partitions (like its recent popularity).
Co-visitation and session neighbours are stream-wide patterns; with several workers each learns
them from its share of the users.

**Restart.** The sources are derived state of the clickstream, and Kafka keeps the clickstream
as a log: on start, before its first batch, a worker re-reads the last
`stream.sources_window_hours` of the input topic (streaming/worker/warmup.py: every partition,
by the brokers' record timestamps, at most `stream.sources_window_max_events`, up to its
consumer group's committed offsets) into the sources, the item counters and its recent
popularity, in the order the events reached the broker; events past the committed offsets come
through its batches, redelivered ones included (`fresh`: each input offset counts once per
process). Why not a RocksDB table with a changelog: co-visitation rows and the session index
are stream-wide (not keyed by the partition's users), so a per-partition table would not hold
them, and a write per event would cost the batch path; re-reading a bounded window costs
start-up time instead and needs no new topic. What a restart
loses: patterns older than the window (the window bounds them anyway: co-visitation counts pairs
within `sources.covisit_window_s`, sessions older than a day weigh little in STAN).

**Rebalances.** The sources cover every partition as of the warm-up, then this worker's own. A
partition a rebalance moves to a running worker is read the same way before its next batch
(streaming/worker/warmup.py `Refill`): from the first event its sources have not counted (or
the window's start) up to the committed offset its batches start at.

**An item's category** (the category-popularity source, `sources.category_recent`): what the
click event says (`Event.category`: the clickstream record's optional `category` field, or the
shop's own name for it in `[input] columns`; e-commerce events usually carry it, e.g. GA4's
`item_category`), else the catalogue's first category of the item (streaming/worker/catalogue.py)
when the worker has one, else the category an earlier event gave the item. `recsys replay` writes
the dataset's category into each record, so a worker counts the same categories as stream-eval
for the same events. The catalogue fallback is the worker's own: stream-eval has no catalogue, so
for events without a category the two agree only while no catalogue lists the item.

**The ranker's predict** runs compiled: the worker compiles each version's ranker to native code
when it loads the version (recsys/candidates/native.py, `ranker.native`; lleaves over LLVM, ~2 s
of CPU at 50 trees and ~120 MB for LLVM on the first), with LightGBM's scores to the last bit, so
the lists are stream-eval's either way; without lleaves LightGBM predicts.

**Lists on request** (`GET /recommendations/<user>/?category=&...`, `on_request`): the same
ranked list, with the request's filters in the mask every candidate passes, each source giving
at least the n asked for; the blend's filtered list only fills a list too few candidates pass
(source `ranker+blend`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from recsys.candidates.lists import SOURCE_METHODS, Ranked, context, previous_move, ranked_lists
from recsys.candidates.ranker import Features, ItemStats
from recsys.candidates.sources import Sources, SourcesConfig
from recsys.catalogue import Catalogue, ItemMask
from recsys.confidence import ConfidenceConfig, profile_values
from recsys.events import Event
from recsys.serving.recommender import Recommender
from recsys.serving.scoring import Recommendations, own_item_scores
from streaming.worker.serving import Serving
from streaming.worker.state import UserState

log = logging.getLogger("streamrec.worker")


class WorkerRanking:
    """The candidate sources and item counters of one worker, and its ranked lists."""

    def __init__(self, cfg: SourcesConfig, ccfg: ConfidenceConfig):
        self.cfg, self.ccfg = cfg, ccfg
        self.sources = Sources(cfg)
        self.stats = ItemStats()  # stream-eval's and the ranker's training's half-life
        self.observed = 0
        self.through: dict[int, int] = {}  # input partition -> the last offset counted

    def fresh(self, partition: int, offset: int) -> bool:
        """Not counted yet by this process: the warm-up stops at the group's committed offset,
        and the batches after a restart redeliver from there events the user state already holds."""
        return offset > self.through.get(partition, -1)

    def observe(
        self, events: Sequence[Event], positions: Sequence[tuple[int, int]] = (), catalogue: Catalogue | None = None
    ) -> None:
        """Count `events` (arrival order); `positions`: their (partition, offset), to count each once;
        `catalogue`: an event without a category takes the item's first one there."""
        if catalogue is not None and self.cfg.category_recent > 0:
            events = [self._with_category(e, catalogue) if e.category is None else e for e in events]
        # the sources and the counters share no state: each counts the batch in one pass
        self.sources.update_many(events)
        self.stats.add_many([(e.item, e.ts) for e in events])
        for partition, offset in positions:
            if offset > self.through.get(partition, -1):
                self.through[partition] = offset
        self.observed += len(events)

    @staticmethod
    def _with_category(e: Event, catalogue: Catalogue) -> Event:
        c = catalogue.first_category(e.item)
        return e if c is None else replace(e, category=c)

    def recommend(
        self,
        serving: Serving,
        users: Sequence[str],
        states: Sequence[UserState],
        queries: Sequence[str | None],
        n: int,
        popular: Sequence[str],
        mask: ItemMask | None,
        fallback: Callable[[list[int]], list[Recommendations]],
        timings: dict[str, float],
        features: Features | None = None,
    ) -> list[Recommendations]:
        """The ranked lists of a batch's users (`serving` has a ranker). `fallback(rows)`: the
        blend's lists of those rows (a short list is padded from them). `features`: instead of
        the version's own feature builder (another candidate count)."""
        rec = serving.current
        features = features if features is not None else serving.features
        assert rec is not None and serving.ranker is not None and features is not None
        t0 = time.perf_counter()
        ccfg, scfg = self.ccfg, rec.scfg
        values = profile_values([s.profile for s in states], ccfg)
        confs = [ccfg.to_confidences(v) for v in values]
        x, known = rec.fold_in(confs)
        t1 = time.perf_counter()
        excludes = [s.profile.items_with(scfg.exclude_types) for s in states]
        own = (
            [
                own_item_scores(s.profile, ccfg, scfg.repeat_half_life_days, values=v)
                for s, v in zip(states, values, strict=True)
            ]
            if scfg.repeat_weight > 0
            else None
        )
        per_source = features.cfg.per_source
        feeds = [(self.sources, SOURCE_METHODS)]
        # the batch's session-kNN scores and the co-visitation rows its lists read (the items on
        # screen, the moves before them), each in one pass; each context below reads its own
        self.sources.sknn.prefetch(users, [st.profile.last_ts for st in states])
        self.sources.covisit.prefetch(
            [*queries, *(previous_move(st.profile.history, q) for st, q in zip(states, queries, strict=True))]
        )
        ctxs = [
            context(u, st.profile, q, ex, c, feeds, per_source, st.profile.last_ts, mask=mask)
            for u, st, q, ex, c in zip(users, states, queries, excludes, confs, strict=True)
        ]
        fell_back: dict[int, Recommendations] = {}

        def pad(rows: list[int]) -> list[list[str]]:
            recs = fallback(rows)
            fell_back.update(zip(rows, recs, strict=True))
            return [r.items for r in recs]

        ranked = ranked_lists(
            ctxs,
            rec,
            features,
            self.stats,
            serving.ranker,
            n,
            [popular] * len(states),
            excludes,
            pad,
            own=own,
            mask=mask,
            folded=(x, known),
        )
        timings["foldin"], timings["ranking"] = t1 - t0, time.perf_counter() - t1
        return [self._message(j, r, fell_back, rec) for j, r in enumerate(ranked)]

    def on_request(
        self,
        serving: Serving,
        user: str,
        state: UserState,
        query: str | None,
        n: int,
        popular: Sequence[str],
        mask: ItemMask | None,
        blend: Callable[[], Recommendations],
    ) -> Recommendations:
        """A list on request (GET /recommendations/<user>/?category=&...; `serving` has a ranker):
        the ranker's order of candidates drawn from what `mask` (the catalogue and the request's
        filters) allows, so every candidate passes the filter; each source gives at least `n`,
        so a long list is ranked too. Only when fewer than `n` candidates pass is the rest filled
        from `blend()` (the blend's list under the same mask), and the source says so:
        "ranker+blend". A user without events gets the blend's list as it is."""
        features = serving.features
        assert features is not None
        if n > features.cfg.per_source:
            features = copy.copy(features)  # the same item vectors, more candidates per source
            features.cfg = replace(features.cfg, per_source=n)

        def none(rows: list[int]) -> list[Recommendations]:
            return [Recommendations([], [], "none", None) for _ in rows]

        timings: dict[str, float] = {}
        (out,) = self.recommend(serving, [user], [state], [query], n, popular, mask, none, timings, features)
        if out.source != "ranker":
            return blend()
        if len(out.items) < n:
            have = set(out.items)
            fill = [i for i in blend().items if i not in have][: n - len(out.items)]
            if fill:
                low = out.scores[-1] if out.scores else 0.0
                return Recommendations(
                    out.items + fill, out.scores + [low] * len(fill), "ranker+blend", out.model_version
                )
        return out

    @staticmethod
    def _message(j: int, r: Ranked, fell_back: dict[int, Recommendations], rec: Recommender) -> Recommendations:
        if r.source == "fallback":
            return fell_back[j]
        return Recommendations(r.items, r.scores, "ranker", rec.version)
