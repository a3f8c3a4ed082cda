"""The ranked lists: one implementation for the worker and the streaming evaluation.

A list for a user is built in two steps, because the evaluation takes a user's inputs when
the list is due and computes the lists of a whole chunk afterwards (the worker does both at
once, after a micro-batch):

    context(...)       one user's inputs (recsys.candidates.ranker.Context) from their profile
                       and the sources' state at that moment: each source's best `per_source`
                       items, the co-visitation rows of the item on screen
    ranked_lists(...)  the lists of a batch of contexts: one fold-in and one product for the
                       blend's best `per_source` items (with its re-visit term), each row's
                       candidates and features (`Features.candidates`), one ranker call; a row
                       with no event at all, or without a ranker, takes the caller's fallback
                       list, and a short list is padded from it

Callers: streaming/worker/processor.py (`Processor._recommend` when the serving version has a
ranker) and recsys/evaluation/streaming.py (method `ranker`, and the training examples the
retrain job's ranker learns from, `on_candidates`). What a caller adds: the catalogue mask
(`mask`: the worker's, applied to every source's candidates and to the blend's) and its
fallback (the blend's list: the worker's `Recommender.recommend`, stream-eval's `system`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import numpy as np

from recsys.candidates.ranker import Context, Features, ItemStats, Ranker
from recsys.candidates.sources import BASELINES, Sources, trim
from recsys.catalogue import ItemMask
from recsys.confidence import UserProfile
from recsys.serving.recommender import Recommender

SOURCE_METHODS = BASELINES  # the sources a context reads: own-recent, covisit, vsknn, stan


def context(
    user: str,
    profile: UserProfile | None,
    query: str | None,
    excl: AbstractSet[str],
    conf: Mapping[str, float],
    sources: Iterable[tuple[Sources, Iterable[str]]],
    per_source: int,
    now: int,
    *,
    mask: ItemMask | None = None,
    scores_out: dict[str, dict[str, float]] | None = None,
) -> Context:
    """One user's inputs for a ranked list, from the state as it is now.

    `excl`: items never listed (bought); the query (the item on screen) is banned too. `conf`:
    the user's confidences (what is folded in). `sources`: (a Sources, the methods read from it)
    pairs: one Sources for all methods in the worker; stream-eval may tune a baseline's own.
    `now`: the time of a user with no profile (else their last event's). `mask`: only items it
    allows become candidates. `scores_out`: receives each method's full scores (the
    evaluation's baselines list their top k from them)."""
    banned = set(excl) | {query} if query is not None else set(excl)
    if profile is None:
        ctx = Context(user, now, query, banned, {}, {}, 0, trimmed=True)
    else:
        touched = {i: s.ts for i, s in profile.items.items()}
        ctx = Context(
            user,
            profile.last_ts,
            query,
            banned,
            dict(conf),
            touched,
            profile.events,
            trimmed=True,
            history=tuple(profile.history),  # a copy: the evaluation applies the event before the lists
        )
    prev = previous_move(ctx.history, query)
    st = profile.items.get(prev) if prev is not None and profile is not None else None
    if st is not None:
        ctx.prev_gap_s = max(ctx.now - st.ts, 0) / 1000.0
    for src, methods in sources:
        for m in methods:
            if scores_out is None:  # only the best per_source: session-kNN's without a dict of all
                ctx.sources[m] = src.top(m, user, profile, ctx.now, per_source, banned, mask)
            else:
                scores = src.scores(m, user, profile, ctx.now)
                scores_out[m] = scores
                ctx.sources[m] = trim(scores, per_source, banned, mask)
            if m == "covisit" and src.cfg.category_recent > 0:  # the category source rides with co-visitation
                ctx.category = src.category.category
                ctx.recent_categories = src.category.recent_categories(profile)
                ctx.sources["category"] = src.category.top(profile, per_source, banned, mask)
            if m == "covisit" and query is not None:
                ctx.covisit_query, covisit_total = src.covisit.shares(query, 2 * per_source, banned)
                ctx.next_query, next_total = src.covisit.shares(query, 2 * per_source, banned, following=True)
                ctx.query_totals = (covisit_total, next_total)
            if m == "covisit" and prev is not None:
                ctx.covisit_prev, _ = src.covisit.shares(prev, 2 * per_source, banned)
                ctx.next_prev, _ = src.covisit.shares(prev, 2 * per_source, banned, following=True)
    return ctx


def previous_move(history: Sequence[str], query: str | None) -> str | None:
    """The user's latest item other than the one on screen (the move before it)."""
    for i in reversed(history):
        if i != query:
            return i
    return None


@dataclass
class Ranked:
    """One user's list: `source` "ranker" (the ranker's order, padded from the fallback when
    short) or "fallback" (the caller's list as it is: no event yet, or no ranker)."""

    items: list[str]
    scores: list[float]  # the ranker's scores; padding repeats the lowest
    source: str


def ranked_lists(
    ctxs: Sequence[Context],
    rec: Recommender,
    features: Features,
    stats: ItemStats,
    ranker: Ranker | None,
    n: int,
    popular: Sequence[Sequence[str]],
    excludes: Sequence[AbstractSet[str]],
    fallback: Callable[[list[int]], Sequence[Sequence[str]]],
    *,
    own: Sequence[dict[str, float]] | None = None,
    mask: ItemMask | None = None,
    folded: tuple[np.ndarray, np.ndarray] | None = None,
    on_candidates: Callable[[int, list[str], np.ndarray], None] | None = None,
) -> list[Ranked]:
    """The ranked lists (n items) of a batch of contexts.

    `popular[j]`: row j's recent-popularity ranking, unfiltered (its best `pop_candidates`
    allowed items are candidates). `excludes[j]`: what the blend leaves out of row j (bought
    items; the query too, as the scoring's `exclude_query` says). `fallback(rows)`: the lists of those rows when they cannot
    be ranked or are short (called once, only when some row needs it). `own[j]`: row j's
    re-visit strengths when the scoring's re-visit term is on. `mask`: what may be shown.
    `folded`: (factors, known) of the contexts' confidences, when the caller folded them in
    already. `on_candidates(j, items, X)`: every row's candidates and features (training examples)."""
    if folded is None:
        x, known = rec.fold_in([c.values for c in ctxs])
    else:
        x, known = folded
    known = np.asarray(known, bool)
    recs = rec.scorer.recommend(
        x,
        known,
        [c.query for c in ctxs],
        excludes,
        features.cfg.per_source,
        own=own,
        mask=mask,
    )
    pops = popular if mask is None else [[i for i in p if mask.allows(i)] for p in popular]
    cands = features.candidates_many(
        ctxs,
        [(r.items, r.scores) for r in recs],
        [x[j] if known[j] else None for j in range(len(ctxs))],
        stats,
        pops,
    )
    if on_candidates is not None:
        for j, (items, X) in enumerate(cands):
            on_candidates(j, items, X)
    out: list[Ranked | None] = [None] * len(ctxs)
    need: list[int] = []
    if ranker is not None:
        sc = ranker.scores(np.vstack([X for _, X in cands]))
        at = 0
        for j, (items, _) in enumerate(cands):
            part = sc[at : at + len(items)]
            at += len(items)
            if not ctxs[j].events:  # no event at all: the fallback (recent popularity)
                need.append(j)
                continue
            order = np.argsort(-part, kind="stable")[:n]
            out[j] = Ranked([items[r] for r in order.tolist()], part[order].tolist(), "ranker")
            if len(order) < n:
                need.append(j)
    else:
        need = list(range(len(ctxs)))
    if need:
        for j, fb in zip(need, fallback(need), strict=True):
            r = out[j]
            if r is None:
                out[j] = Ranked(list(fb[:n]), [0.0] * min(len(fb), n), "fallback")
                continue
            have = set(r.items)
            pad = [i for i in fb if i not in have][: n - len(r.items)]
            low = r.scores[-1] if r.scores else 0.0
            r.items += pad
            r.scores += [low] * len(pad)
    return out  # type: ignore[return-value]  # every row is set above
