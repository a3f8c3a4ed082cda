"""Streaming evaluation: predict, then update, in event-time order.

Protocol (`recsys stream-eval`, docs/evaluation.md "Streaming evaluation"):

* State at the start of the replay = every user's profile built from the training window
  (what the worker's state table holds), and a model trained on that window.
* Test events are replayed in time order (stable: ties keep file order). For test event k of
  user u, the list "shown" is the one the system would have on screen for u just before it:
  the list computed from u's profile after all of u's earlier events (training and replay)
  with the **query item = u's previous item** (`profile.history[-1]`: the product on screen
  when u made event k). That is exactly the list the worker published after u's previous event
  (it scores a user after applying their events, query = their latest item). A user with no
  earlier event at all gets what the system shows an empty profile with no query (popular).
* The list is scored against the item of event k: rank r in the top 10 gives HR@10 = 1,
  MRR@10 = 1/r, NDCG@10 = 1/log2(r+1) (one relevant item), 0 otherwise. Events on the item
  that is already on screen (item = query: a cart or buy on the product page, a reload) are
  applied but not scored: the system never lists the item on screen, and that is not a
  "next item" anyway. Their count is reported (`skipped_same_item`).
* Then the event is applied (`UserProfile.apply`, the worker's own update).

Methods, all on the same replay and the same state:
  popularity   most events by decayed count, half-life `pop_half_life_hours` of event time
               (recsys.serving.popularity.RecentPopularity over all events seen so far, training
               included; None: plain counts in the trailing `pop_window_hours`), minus bought
               items and the item on screen
  own-items    the user's own items ranked by their confidence (decayed value), same filters
  similar      similarity to the item on screen only (training model, cosine)
  static       the training model with the user factors ALS learned in training, no fold-in
               (the seed notebook); users not in training have none: similarity/popular
  system       live fold-in of the profile against the training-window item factors, blended
               as the workers blend (`Recommender.fold_in` + `Recommender.scorer.recommend`,
               the calls streaming/worker/processor.py makes), with the re-visit term of scoring.py;
               a row with neither usable history nor a known query (a new user's first event)
               gets the popularity baseline's ranking at that moment, as does padding
               (`Scorer.recommend(popular=...)`; `system_popular=False`: the training window's
               popularity instead, the model's own fallback). The same for all system* methods.
  system-norepeat   the same without the re-visit term (ablation)
  system+items the system on a model extended with new items folded in (item_foldin.py)
               from the users who touched them, refreshed every `item_foldin_every` events
  system+retrain    the system, retrained on all profiles so far every `retrain_hours`
  own-recent   the user's own items, most recently touched first
  covisit      item-to-item co-visitation of the user's last items (recsys.candidates.sources)
  vsknn        V-SKNN (Ludewig & Jannach 2018): session-kNN on the user's recent items
  stan         STAN (Garg et al. 2019): V-SKNN + neighbour recency + item distance
               The last four are computed event by event from state updated by every event
               before (training window included), with the same filters; a short list is padded
               with the popularity baseline's ranking of that moment, as the system's is.
  ranker       the candidates of every source above (system, covisit, vsknn, stan, own-recent,
               popularity) ordered by a LightGBM LambdaRank model trained on the last part of the
               training window (recsys.candidates.ranker: `train_ranker`, `Features.candidates`)

Batching, and why it is exact: events are cut into time-ordered chunks (at most `chunk_max`
events; a chunk also ends at a retrain time and at a new-item refresh). Inside a chunk the
events are walked in order: for each one, the inputs of its list are taken from its user's
profile *as it is at that moment* (query item, confidences c = 1 + alpha*r, bought items,
own-item strengths) and only then is the event applied. All lists of the chunk are computed
afterwards in one batch (one fold-in and one product per method). A list depends only on
that snapshot of its user's profile and on the model, so every list equals the one computed
event by event, even when a user has several events in a chunk (tested: identical inputs).
One caveat on "equals": BLAS rounds a many-row product differently from a one-row product in
the last float32 bit, and real catalogues hold many items with (near-)identical factors, so
near-ties can swap places between a batched and a one-at-a-time run. `chunk_max=1` reproduces
a worker that scores one user per batch bit for bit (the Kafka test does that). The system's
lists of a chunk are one fold-in and one product, which the ranker's blend candidates share
(their cold-start and padding rankings differ by row: `Scorer.recommend(popular_rows=...)`).
What is refreshed
less often than per event, by design and stated: the popularity ranking (baseline and the
system's cold-start list) every `pop_refresh` events, new-item factors at chunk boundaries (every `item_foldin_every` events), retrains at
`retrain_hours` boundaries of event time.

Splits: user activity at the time of the event (`cold`: a user unknown to the training
window, first event; `new 2-5`: unknown to training, events 2-5; `new 6+`; `known`: has
training-window history), whether the target item is in the training model's catalogue, and
`target conversion`: the target event is an add-to-cart or a purchase (scored like the others;
a cart on the item on screen is skipped like any same-item event).
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recsys.candidates.lists import context, ranked_lists
from recsys.candidates.ranker import FEATURES, Context, Examples, Features, ItemStats, Ranker, RankerConfig
from recsys.candidates.sources import BASELINES, Sources, SourcesConfig, top_items
from recsys.confidence import ConfidenceConfig, UserProfile, build_profiles, profile_confidences
from recsys.evaluation.plotting import pyplot
from recsys.events import Event
from recsys.model.factors import Model
from recsys.model.item_foldin import ItemFoldIn, user_gram
from recsys.model.train import TrainConfig, train
from recsys.serving.popularity import RecentPopularity
from recsys.serving.recommender import Recommender
from recsys.serving.scoring import ScoringConfig, own_item_scores

METHODS = (
    "popularity",
    "own-items",
    "similar",
    "static",
    "system",
    "system-norepeat",
    "system+items",
    "system+retrain",
    *BASELINES,
    "ranker",
)
DEFAULT_METHODS = tuple(m for m in METHODS if m != "ranker")  # the ranker needs training first
METRICS = ("HR@10", "MRR@10", "NDCG@10")
SEGMENTS = ("cold", "new 2-5", "new 6+", "known", "target known", "target new", "target conversion")
# Targets that are a conversion (docs/evaluation.md "Conversion targets"): the split a shop that
# weighs carts and purchases reads.
CONVERSION_TYPES = frozenset(("addtocart", "transaction"))


@dataclass(frozen=True)
class StreamEvalConfig:
    k: int = 10
    chunk_max: int = 512
    pop_half_life_hours: float | None = 8.0  # popularity = decayed counts (RecentPopularity); None: window
    pop_window_hours: float = 24.0  # only when pop_half_life_hours is None: trailing window, 0: all
    pop_refresh: int = 25  # popularity list recomputed every this many events
    retrain_hours: float = 6.0  # system+retrain: event-time hours between retrains
    item_foldin_every: int = 200  # system+items: events between new-item refreshes
    item_foldin_min_users: int = 1
    system_popular: bool = True  # system*: cold-start / padding list = the popularity baseline's
    sources: SourcesConfig = SourcesConfig()  # own-recent, covisit, vsknn, stan
    # per-baseline parameters (method -> config) where they differ from `sources`
    baseline_sources: dict[str, SourcesConfig] = field(default_factory=dict)
    ranker: RankerConfig = RankerConfig()
    methods: tuple[str, ...] = DEFAULT_METHODS


class _Acc:
    def __init__(self) -> None:
        self.n = 0
        self.hr = self.mrr = self.ndcg = 0.0

    def add(self, rank: int | None) -> None:
        self.n += 1
        if rank is not None:
            self.hr += 1.0
            self.mrr += 1.0 / rank
            self.ndcg += 1.0 / math.log2(rank + 1)

    def result(self) -> dict[str, float]:
        d = max(self.n, 1)
        return {"HR@10": self.hr / d, "MRR@10": self.mrr / d, "NDCG@10": self.ndcg / d, "n": self.n}


def rank_of(target: str, items: Sequence[str], k: int) -> int | None:
    for r, i in enumerate(items[:k], 1):
        if i == target:
            return r
    return None


@dataclass
class _Snap:
    """What the list shown before one event depends on: its user's profile at that moment."""

    event: Event
    query: str | None
    conf: dict[str, float]  # the confidences the worker folds in (p.confidence)
    excl: set[str]  # p.items_with(scfg.exclude_types)
    own: dict[str, float]  # own_item_scores(p, ccfg, scfg.repeat_half_life_days)
    own_list: list[str]  # own items by confidence, filters applied (method own-items)
    pop_list: list[str]  # popularity at that moment, filters applied
    pop_top: list[str]  # the same ranking unfiltered (the system's cold-start list)
    static_row: int  # row of the user in the training user factors, -1: none
    segment: str  # activity segment
    base_lists: dict[str, list[str]] | None = None  # the stream baselines' lists at that moment
    ctx: Context | None = None  # the ranker's inputs at that moment
    reachable: bool = True  # the event's item can be among its candidates (`stream_evaluate`'s `reach`)


def _snapshot(
    e: Event,
    p: UserProfile | None,
    ccfg: ConfidenceConfig,
    scfg: ScoringConfig,
    k: int,
    pop_top: list[str],
    known_user: bool,
    static_row: int,
) -> _Snap:
    p = p or UserProfile()
    query = p.history[-1] if p.history else None
    vals = p.values(ccfg)
    conf = ccfg.to_confidences(vals)  # p.confidence, from the values the re-visit term reads too
    excl = p.items_with(scfg.exclude_types)
    banned = excl | {query} if query is not None else excl
    own = own_item_scores(p, ccfg, scfg.repeat_half_life_days, values=vals) if scfg.repeat_weight > 0 else {}
    own_list = sorted((i for i in vals if i not in banned), key=lambda i: (-vals[i], -p.items[i].ts))[:k]
    pop_list = [i for i in pop_top if i not in banned][:k]
    if known_user:
        seg = "known"
    elif p.events == 0:
        seg = "cold"
    elif p.events < 5:
        seg = "new 2-5"
    else:
        seg = "new 6+"
    return _Snap(e, query, conf, excl, own, own_list, pop_list, pop_top, static_row, seg)


def stream_evaluate(
    train_events: Sequence[Event],
    test_events: Sequence[Event],
    *,
    ccfg: ConfidenceConfig = ConfidenceConfig(),
    scfg: ScoringConfig = ScoringConfig(),
    tcfg: TrainConfig = TrainConfig(),
    ecfg: StreamEvalConfig = StreamEvalConfig(),
    model: Model | None = None,
    user_factors: np.ndarray | None = None,
    user_ids: Sequence[str] | None = None,
    keep_lists: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
    ranker: Ranker | None = None,
    collect: Examples | None = None,
    prune_unreachable: bool = True,
) -> dict[str, Any]:
    """Replay `test_events` after `train_events`; returns the report (see format_table).

    `model` (+ `user_factors`, `user_ids` for the static method) skips training. `keep_lists`:
    methods whose per-event lists are returned in report["events"] (for exact comparisons).
    `ranker`: the learned ranker for method `ranker` (`recsys.candidates.training.train_ranker`
    on the training events). `collect`: gather the ranker's training examples of every replayed event.
    `prune_unreachable`: an example whose item is neither the model's nor any earlier event's is
    recorded as a miss (no candidates: none could be its item) without building its candidates;
    off, they are built and found without it (the same figures, the same fit: the reference)."""
    say = progress or (lambda _m: None)
    t0 = time.time()
    k = ecfg.k
    methods = [m for m in METHODS if m in ecfg.methods]
    test_events = sorted(test_events, key=lambda e: e.ts)
    train_sorted = sorted(train_events, key=lambda e: e.ts)
    profiles = build_profiles(train_sorted, ccfg)
    train_users = set(profiles)
    if model is None:
        say(f"training {tcfg.kind.upper()} on {len(train_events)} events, {len(profiles)} users")
        model, user_factors, user_ids = train(profiles, ccfg, tcfg, version="train-window")
    rec = Recommender(model, ccfg, scfg)
    static_index = {u: r for r, u in enumerate(user_ids or [])}
    static_x = np.asarray(user_factors, np.float32) if user_factors is not None else None
    xtx = user_gram(static_x) if static_x is not None else None

    # popularity: decayed counts (recsys.serving.popularity, what a worker can keep), or a trailing
    # window of event time; every event seen so far, training included
    recent = RecentPopularity(ecfg.pop_half_life_hours * 3600.0) if ecfg.pop_half_life_hours else None
    window_ms = int(ecfg.pop_window_hours * 3_600_000) if ecfg.pop_window_hours > 0 else None
    counts: Counter[str] = Counter()
    seen: deque[tuple[int, str]] = deque()

    def count(e: Event) -> None:
        if recent is not None:
            recent.add(e.item, e.ts)
        else:
            counts[e.item] += 1
            seen.append((e.ts, e.item))

    # the stream baselines: one Sources per distinct parameter set, fed every event
    ranking = "ranker" in methods or collect is not None
    if "ranker" in methods and ranker is None:
        raise ValueError("method ranker needs ranker= (recsys.candidates.training.train_ranker)")
    by_cfg: dict[SourcesConfig, list[str]] = defaultdict(list)
    for m in BASELINES if ranking else methods:
        if m in BASELINES:
            by_cfg[ecfg.baseline_sources.get(m, ecfg.sources)].append(m)
    sources = [(Sources(c), ms) for c, ms in by_cfg.items()]
    listed = any(m in BASELINES for m in methods)  # some baseline's own list is scored
    # Every candidate is an item of the model or of an event replayed before (the sources, the
    # popularity and own items hold nothing else), so an event on any other item cannot have its
    # target among its candidates: when only its example is wanted (no list of it is scored) it
    # is a miss without its sources' lists, the replay's dearest part. On Taobao most example
    # events are on items first seen then.
    reach: set[str] | None = set(model.item_index) if prune_unreachable and collect is not None else None
    if reach is not None and ("ranker" in methods or listed or keep_lists):
        reach = None
    stats = ItemStats()
    features = Features(model, ecfg.ranker) if ranking else None
    pending: list[Event] = []  # the chunk's events, counted into `stats` after its lists
    for e in train_sorted:
        count(e)
        if reach is not None:
            reach.add(e.item)
    # the sources and the counters share no state: each counts the training events in one pass
    for src, _ in sources:
        src.update_many(train_sorted)
    if ranking:
        stats.add_many([(e.item, e.ts) for e in train_sorted])

    def pop_top(now: int) -> list[str]:
        if recent is not None:
            return recent.top(k + 64)
        if window_ms is not None:
            while seen and seen[0][0] < now - window_ms:
                _, item = seen.popleft()
                counts[item] -= 1
                if counts[item] <= 0:
                    del counts[item]
        return [i for i, _ in heapq.nlargest(k + 64, counts.items(), key=lambda kv: kv[1])]

    # system+retrain and system+items state
    rec_retrain = rec
    retrains: list[dict[str, Any]] = []
    step_ms = int(ecfg.retrain_hours * 3_600_000)
    next_retrain = (test_events[0].ts + step_ms) if (test_events and "system+retrain" in methods) else None
    rec_items = rec
    touched: dict[str, dict[str, bool]] = defaultdict(dict)  # new item -> users who touched it
    folded_items = 0

    accs: dict[str, defaultdict[str, _Acc]] = {m: defaultdict(_Acc) for m in methods}
    kept: list[dict[str, Any]] = []
    skipped_same = 0
    n_chunks = 0
    i = 0
    n = len(test_events)
    top: list[str] = []
    since_pop = ecfg.pop_refresh
    chunk_max = min(ecfg.chunk_max, ecfg.item_foldin_every) if "system+items" in methods else ecfg.chunk_max
    while i < n:
        # ---- maintenance at the chunk boundary -------------------------------------------
        now = test_events[i].ts
        if next_retrain is not None and now >= next_retrain:
            t = time.time()
            m6, _, _ = train(profiles, ccfg, tcfg, version=f"retrain-{len(retrains) + 1}")
            rec_retrain = Recommender(m6, ccfg, scfg)
            retrains.append(
                {"at_ts": now, "users": len(profiles), "items": m6.n_items, "seconds": round(time.time() - t, 2)}
            )
            say(f"retrain {len(retrains)}: {len(profiles)} users, {m6.n_items} items")
            while next_retrain <= now:
                next_retrain += step_ms
        if "system+items" in methods and xtx is not None and touched and n_chunks:
            rec_items = _refresh_items(rec, model, xtx, touched, profiles, ccfg, scfg, ecfg.item_foldin_min_users)
            folded_items = rec_items.model.n_items - model.n_items

        # ---- the chunk: snapshot each event's inputs, then apply it -----------------------
        snaps: list[_Snap] = []
        while i < n and len(snaps) < chunk_max:
            e = test_events[i]
            if next_retrain is not None and e.ts >= next_retrain and snaps:
                break
            if since_pop >= ecfg.pop_refresh:
                top, since_pop = pop_top(e.ts), 0
            p = profiles.get(e.user)
            snap = _snapshot(e, p, ccfg, scfg, k, top, e.user in train_users, static_index.get(e.user, -1))
            if e.item == snap.query:
                skipped_same += 1
            else:
                if reach is not None and e.item not in reach:
                    snap.reachable = False
                    snap.ctx = context(e.user, p, snap.query, snap.excl, snap.conf, (), 0, e.ts)
                elif sources:
                    scores: dict[str, dict[str, float]] = {}
                    if ranking:
                        per = ecfg.ranker.per_source
                        # a source's full scores only when a baseline lists from them (not while
                        # collecting the retrain's examples: the context keeps each source's best)
                        out = scores if listed else None
                        snap.ctx = context(
                            e.user, p, snap.query, snap.excl, snap.conf, sources, per, e.ts, scores_out=out
                        )
                    snap.base_lists = {}
                    for src, ms in sources:
                        snap.base_lists.update(_baseline_lists(src, ms, snap, p, k, methods, scores))
                snaps.append(snap)
            if p is None:
                p = profiles[e.user] = UserProfile()
            p.apply(e, ccfg)
            count(e)
            for src, _ in sources:
                src.update(e)
            if ranking:
                pending.append(e)
            since_pop += 1
            if e.item not in model.item_index:
                touched[e.item][e.user] = True
            if reach is not None:
                reach.add(e.item)
            i += 1
        n_chunks += 1
        if not snaps:
            stats.add_many([(e.item, e.ts) for e in pending])
            pending.clear()
            continue
        # the rows whose lists are built: an unreachable event's lists cannot hold its item
        live = snaps if reach is None else [sn for sn in snaps if sn.reachable]
        start = len(collect.meta) if collect is not None else 0
        if live:
            # one fold-in of the chunk for the system's lists and the ranker's blend candidates
            folded = rec.fold_in([s.conf for s in live]) if features is not None else None
            lists = _lists(methods, live, rec, rec_items, rec_retrain, static_x, k, scfg, ecfg.system_popular, folded)
            if features is not None:
                ranked = ranker_lists(live, rec, features, stats, ranker, collect, k, lists.get("system"), folded)
                if "ranker" in methods:
                    lists["ranker"] = ranked
        else:
            lists = {m: [] for m in methods}
        if live is not snaps:
            assert collect is not None  # pruning is on only while collecting
            _add_misses(collect, snaps, start)
            for m, ls in list(lists.items()):
                got = iter(ls)
                lists[m] = [next(got) if sn.reachable else [] for sn in snaps]
        stats.add_many([(e.item, e.ts) for e in pending])
        pending.clear()
        for j, sn in enumerate(snaps):
            e = sn.event
            tgt = "target known" if e.item in model.item_index else "target new"
            for m in methods:
                r = rank_of(e.item, lists[m][j], k)
                a = accs[m]
                a["all"].add(r)
                a[sn.segment].add(r)
                a[tgt].add(r)
                if e.type in CONVERSION_TYPES:
                    a["target conversion"].add(r)
            if keep_lists:
                kept.append(
                    {
                        "user": e.user,
                        "item": e.item,
                        "ts": e.ts,
                        "query": sn.query,
                        "inputs": (sorted(sn.conf.items()), sorted(sn.excl), sorted(sn.own.items())),
                        "lists": {m: lists[m][j] for m in keep_lists if m in lists},
                    }
                )
        if n_chunks % 10 == 0:
            say(f"  {i}/{n} events, {n_chunks} chunks, {time.time() - t0:.0f}s")

    report = {
        "methods": {
            m: {seg: acc.result() for seg, acc in sorted(accs[m].items(), key=lambda kv: _seg_order(kv[0]))}
            for m in methods
        },
        "train_events": len(train_events),
        "test_events": n,
        "scored_events": accs[methods[0]]["all"].n if methods else 0,
        "skipped_same_item": skipped_same,
        "chunks": n_chunks,
        "train_users": len(train_users),
        "test_users": len({e.user for e in test_events}),
        "new_test_users": len({e.user for e in test_events} - train_users),
        "model_items": model.n_items,
        "retrains": retrains,
        "folded_in_items_at_end": folded_items,
        "config": {
            "confidence": {**asdict(ccfg), "weights": dict(ccfg.weights)},
            "scoring": asdict(scfg),
            "train": asdict(tcfg),
            "stream_eval": asdict(ecfg),
        },
        "seconds": round(time.time() - t0, 1),
    }
    report["lifts"] = lifts(report)
    if "ranker" in methods:
        report["ranker_lifts"] = lifts(report, "ranker")
    if keep_lists:
        report["events"] = kept
    return report


def _baseline_lists(
    sources: Sources,
    feeds: Sequence[str],
    snap: _Snap,
    p: UserProfile | None,
    k: int,
    methods: Sequence[str],
    scores_of: dict[str, dict[str, float]],
) -> dict[str, list[str]]:
    """Each stream baseline's list for the event of `snap`, from the state before it: top k
    minus bought items and the item on screen, padded with the popularity list. `scores_of`:
    the sources' scores already taken for the ranker's context (recsys.candidates.lists)."""
    e = snap.event
    banned = snap.excl | {snap.query} if snap.query is not None else snap.excl
    out = {}
    for m in feeds:
        if m not in methods:
            continue
        # the state's time is the user's last event (what a worker has when it scores)
        scores = scores_of.get(m)
        if scores is None:
            scores = sources.scores(m, e.user, p, p.last_ts if p is not None else e.ts)
        items = top_items(scores, k, banned)
        if len(items) < k:
            have = set(items)
            items += [i for i in snap.pop_list if i not in have][: k - len(items)]
        out[m] = items
    return out


def ranker_lists(
    snaps: Sequence[_Snap],
    rec: Recommender,
    features: Features,
    stats: ItemStats,
    ranker: Ranker | None,
    collect: Examples | None,
    k: int,
    fallback: list[list[str]] | None,
    folded: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[list[str]]:
    """The ranker's lists for a chunk (recsys.candidates.lists.ranked_lists, the worker's too)
    and, with `collect`, its training examples. `folded`: the chunk's fold-in (`_lists` shares it)."""
    fb = fallback or [s.pop_list for s in snaps]

    def example(j: int, items: list[str], X: np.ndarray) -> None:
        s = snaps[j]
        assert collect is not None and s.ctx is not None
        top = fb[j][:k]
        rank = top.index(s.event.item) + 1 if s.event.item in top else 0
        collect.add(items, X, s.event.item, (s.segment if s.ctx.events else "cold", rank))

    ctxs = [s.ctx for s in snaps]
    assert all(c is not None for c in ctxs)
    out = ranked_lists(
        ctxs,  # type: ignore[arg-type]
        rec,
        features,
        stats,
        ranker,
        k,
        [s.pop_top for s in snaps],
        [s.excl for s in snaps],
        lambda rows: [fb[j] for j in rows],
        own=[s.own for s in snaps] if rec.scfg.repeat_weight > 0 else None,
        folded=folded,
        on_candidates=example if collect is not None else None,
    )
    return [r.items for r in out]


def _add_misses(collect: Examples, snaps: Sequence[_Snap], start: int) -> None:
    """The chunk's unreachable events as misses (no candidates, not in the fallback's list: it
    holds only items of the model or seen before), among its other examples in event order
    (`start`: where the chunk's examples begin; with `keep_all` the gate cuts them by position)."""
    none = np.zeros((0, len(FEATURES)), np.float32)
    if not collect.keep_all:  # only covered events are kept: a miss is counted
        for sn in snaps:
            if not sn.reachable:
                collect.add([], none, sn.event.item)
        return
    got = list(zip(collect.X[start:], collect.y[start:], collect.meta[start:], strict=True))
    del collect.X[start:], collect.y[start:], collect.meta[start:]
    live = iter(got)
    for sn in snaps:
        if sn.reachable:
            X, y, meta = next(live)
            collect.X.append(X)
            collect.y.append(y)
            collect.meta.append(meta)
        else:
            assert sn.ctx is not None
            collect.add([], none, sn.event.item, (sn.segment if sn.ctx.events else "cold", 0))


def _seg_order(seg: str) -> int:
    return 0 if seg == "all" else 1 + SEGMENTS.index(seg)


def _refresh_items(
    rec: Recommender,
    model: Model,
    xtx: np.ndarray,
    touched: dict[str, dict[str, bool]],
    profiles: dict[str, UserProfile],
    ccfg: ConfidenceConfig,
    scfg: ScoringConfig,
    min_users: int,
) -> Recommender:
    """Fold in every new item from its users' current factors (against the base model) and
    their current confidence in it; returns a Recommender on the extended model."""
    users = sorted({u for by in touched.values() for u in by})
    confs = profile_confidences([profiles[u] for u in users], ccfg)
    x, known = rec.fold_in(confs)
    factors_of = {u: x[r] for r, u in enumerate(users) if known[r]}
    conf_of = dict(zip(users, confs, strict=True))
    by_item = {item: {u: conf_of[u][item] for u in by if item in conf_of[u]} for item, by in touched.items()}
    ext = ItemFoldIn(model, xtx, min_users=min_users).extend(by_item, factors_of)
    return Recommender(ext, ccfg, scfg)


def system_lists(
    rec: Recommender,
    snaps: Sequence[_Snap],
    k: int,
    repeat: bool = True,
    x: np.ndarray | None = None,
    known: np.ndarray | None = None,
    popular: bool = True,
) -> list[list[str]]:
    """The system's lists; with `popular`, the cold-start / padding ranking of each event is the
    popularity baseline's at that moment (`Scorer.recommend(popular_rows=...)`). One product
    for the chunk: the same rows in the same batch as the ranker's blend candidates
    (`recsys.candidates.lists.ranked_lists`), so both read the same scores."""
    if x is None:
        x, known = rec.fold_in([s.conf for s in snaps])
    use_own = repeat and rec.scfg.repeat_weight > 0
    recs = rec.scorer.recommend(
        x,
        np.asarray(known, bool),
        [s.query for s in snaps],
        [s.excl for s in snaps],
        k,
        own=[s.own for s in snaps] if use_own else None,
        popular_rows=[s.pop_top for s in snaps] if popular else None,
    )
    return [r.items for r in recs]


def _lists(
    methods: Sequence[str],
    snaps: list[_Snap],
    rec: Recommender,
    rec_items: Recommender,
    rec_retrain: Recommender,
    static_x: np.ndarray | None,
    k: int,
    scfg: ScoringConfig,
    popular: bool = True,
    folded: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, list[list[str]]]:
    """Every method's lists of a chunk. `folded`: the chunk's fold-in, when the caller made it."""
    out: dict[str, list[list[str]]] = {}
    rows = len(snaps)
    f = rec.model.factors
    queries = [s.query for s in snaps]
    excl = [s.excl for s in snaps]
    if "popularity" in methods:
        out["popularity"] = [s.pop_list for s in snaps]
    for m in methods:
        if m in BASELINES:
            out[m] = [(s.base_lists or {})[m] for s in snaps]
    if "own-items" in methods:
        out["own-items"] = [s.own_list for s in snaps]
    if "similar" in methods:
        zero = np.zeros((rows, f), np.float32)
        out["similar"] = [r.items for r in rec.scorer.recommend(zero, [False] * rows, queries, excl, k)]
    if "static" in methods:
        x = np.zeros((rows, f), np.float32)
        has = [False] * rows
        if static_x is not None:
            for j, s in enumerate(snaps):
                if s.static_row >= 0:
                    x[j], has[j] = static_x[s.static_row], True
        out["static"] = [r.items for r in rec.scorer.recommend(x, has, queries, excl, k)]
    if "system" in methods or "system-norepeat" in methods:
        x, known = folded if folded is not None else rec.fold_in([s.conf for s in snaps])
        if "system" in methods:
            out["system"] = system_lists(rec, snaps, k, True, x, known, popular)
        if "system-norepeat" in methods:
            out["system-norepeat"] = system_lists(rec, snaps, k, False, x, known, popular)
    if "system+items" in methods:
        out["system+items"] = system_lists(rec_items, snaps, k, popular=popular)
    if "system+retrain" in methods:
        out["system+retrain"] = system_lists(rec_retrain, snaps, k, popular=popular)
    return out


def lifts(report: dict[str, Any], of: str = "system") -> dict[str, Any]:
    """Relative lift of `of` over each other method, per segment (HR@10, MRR@10)."""
    ms = report["methods"]
    if of not in ms:
        return {}
    out: dict[str, Any] = {}
    for m in ms:
        if m == of:
            continue
        for seg, vals in ms[of].items():
            base = ms[m].get(seg)
            if not base or not base["n"]:
                continue
            for met in ("HR@10", "MRR@10"):
                b = base[met]
                out.setdefault(m, {}).setdefault(seg, {})[met] = (vals[met] / b - 1.0) if b > 0 else None
    return out


def format_table(report: dict[str, Any], segments: Sequence[str] = ("all", *SEGMENTS)) -> str:
    ms = report["methods"]
    w = max(13, *(len(s) + 2 for s in segments))  # "target conversion" is wider than a number
    lines = []
    for met in METRICS:
        head = f"{met:<16}" + "".join(f"{s:>{w}}" for s in segments)
        lines.append(head)
        for m, segs in ms.items():
            lines.append(
                f"{m:<16}" + "".join(f"{segs[s][met]:>{w}.4f}" if s in segs else f"{'-':>{w}}" for s in segments)
            )
        lines.append("")
    first = next(iter(ms.values()))
    lines.append("events" + " " * 10 + "".join(f"{first[s]['n'] if s in first else 0:>{w}}" for s in segments))
    return "\n".join(lines)


def format_markdown(
    report: dict[str, Any], segments: Sequence[str] = ("all", *SEGMENTS), metrics: Sequence[str] = ("HR@10", "MRR@10")
) -> str:
    ms = report["methods"]
    first = next(iter(ms.values()))
    head = "| method | " + " | ".join(f"{s} {m}" for s in segments for m in metrics) + " |"
    rows = [head, "|---|" + "---:|" * (len(segments) * len(metrics))]
    for name, segs in ms.items():
        cells = [f"{segs[s][m]:.4f}" if s in segs else "-" for s in segments for m in metrics]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rows.append(
        "| events | " + " | ".join(str(first[s]["n"]) if s in first else "0" for s in segments for _ in metrics) + " |"
    )
    return "\n".join(rows)


def plot(report: dict[str, Any], path: str, title: str = "") -> None:
    plt = pyplot("the streaming evaluation plot")

    ms = report["methods"]
    names = list(ms)
    segs = [s for s in ("all", *SEGMENTS) if any(s in ms[m] and ms[m][s]["n"] for m in names)]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), sharey=False)
    width = 0.8 / len(names)
    for ax, met in zip(axes, ("HR@10", "MRR@10"), strict=True):
        for j, name in enumerate(names):
            vals = [ms[name].get(s, {}).get(met, 0.0) for s in segs]
            ax.bar(np.arange(len(segs)) + j * width, vals, width, label=name)
        ax.set_xticks(
            np.arange(len(segs)) + 0.4 - width / 2,
            [f"{s}\n(n={ms[names[0]].get(s, {}).get('n', 0)})" for s in segs],
            fontsize=8,
        )
        ax.set_title(met)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(title or f"Streaming evaluation (predict, then update): {report['scored_events']} events")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
