"""Candidate sources kept incrementally on the stream: co-visitation, session-kNN (V-SKNN, STAN),
own items by recency.

Every source is updated event by event (`update(event)`, O(1) amortised) and asked for the
scores of one user *before* that user's next event (`scores(user)`): nothing looks ahead. The
streaming evaluation uses them as baselines (recsys/evaluation/streaming.py: methods `covisit`,
`vsknn`, `stan`, `own-recent`) and the learned ranker as candidate generators
(recsys/candidates/ranker.py); one implementation serves both.

**Sessions.** YOOCHOOSE's users are sessions already; Taobao and REES46 have users with
histories over days. A user's events are cut into sessions at gaps longer than `session_gap_s`;
those sessions are the neighbours of session-kNN. The *current* "session" of the user asking is
their last `current_len` distinct items regardless of gaps (Ludewig & Jannach 2018's
"recent events as the session" for user-level data), and the user's own ongoing session is never
its own neighbour (its past sessions may be: they are history, as in session-rec's training set).

**V-SKNN** (Ludewig & Jannach 2018, "Evaluation of session-based recommendation algorithms"):
neighbour candidates are the `sample` most recently active sessions that share an item with the
current session; similarity = Σ over shared items of the item's position weight in the current
session (linear: the i-th of n items weighs i/n, the latest 1); the `k` most similar neighbours
vote for their items with their similarity.

**STAN** (Garg et al. 2019, "Sequence and time aware neighborhood for session-based
recommendations"): position weight exp((i − n)/λ₁), similarity normalised by √(n·|neighbour|)
and multiplied by the neighbour's recency exp(−Δt/λ₂); a neighbour's item votes with
exp(−|distance to the neighbour's most recent shared item|/λ₃).

**Co-visitation** ("viewed next / viewed together"): when a user touches b, every distinct item
a among their previous `covisit_back` moves within `covisit_window_s` gains a→b weight 1/d (d =
moves between them) and b→a `covisit_backward`/d. A user's score for item i is
Σ_j decay^j · w(a_j → i) over their last `covisit_recent` distinct items a_0 (latest), a_1, …;
with `covisit_normalize` each row is divided by its total (≈ P(next = i | a)).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, fields, replace
from itertools import chain, islice
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys.confidence import UserProfile
from recsys.events import Event
from recsys.fields import setting
from recsys.serving.popularity import RecentPopularity

if TYPE_CHECKING:
    from recsys.catalogue import ItemMask


@dataclass(frozen=True)
class SourcesConfig:
    """Parameters of the candidate sources (searched on validation windows, docs/evaluation.md)."""

    session_gap_s: float = setting(
        1800.0, "a gap longer than this (seconds) starts a new session of a user (session-kNN's neighbours)"
    )
    current_len: int = setting(10, "items of the asking user's recent history used as their current session")
    sample: int = setting(
        500,
        "session-kNN's neighbour candidates: the most recently active sessions sharing an item with the current one",
    )
    k: int = setting(100, "session-kNN: neighbours that vote")
    stan_l1: float = setting(
        0.0,
        "STAN's λ₁ (positions) of the current session's position weights; 0: the current session's length (the paper's choice)",
    )
    stan_l2_s: float = setting(86_400.0, "STAN's λ₂ (seconds): a neighbour session's recency decay")
    stan_l3: float = setting(
        0.0,
        "STAN's λ₃ (positions): decay with the distance to the neighbour's most recent shared item; 0: the current session's length",
    )
    covisit_window_s: float = setting(
        86_400.0, "co-visitation: two moves of a user count together only within this many seconds"
    )
    covisit_back: int = setting(10, "co-visitation: a move is paired with the user's previous this many distinct items")
    covisit_backward: float = setting(0.5, "co-visitation: weight of b→a relative to a→b (a touched before b)")
    covisit_recent: int = setting(
        3, "co-visitation: a user's score sums the rows of their last this many distinct items"
    )
    covisit_decay: float = setting(
        0.5, "co-visitation: each older of those items weighs this much of the next newer one"
    )
    covisit_normalize: bool = setting(False, "co-visitation: divide each row by its total (≈ P(next = i | a))")
    max_sessions_per_item: int = setting(
        2000, "session-kNN: an item's index keeps this many most recent sessions; older ones are dropped"
    )
    # Bounds on what a long-running worker holds (the stream never ends); far above the
    # evaluation datasets, so the baselines' figures do not depend on them.
    max_users: int = setting(
        1_000_000,
        "the per-user buffers (recent items, co-visitation's moves) keep this many most recently active users",
    )
    max_sessions: int = setting(
        2_000_000, "session-kNN keeps this many most recent sessions; older ones leave the index"
    )
    covisit_max_row: int = setting(
        1000, "co-visitation: a row keeps its this many heaviest items (pruned when it holds twice as many)"
    )
    covisit_max_pairs: int = setting(
        10_000_000,
        "co-visitation: item pairs kept over all rows (weights and next moves; ~100 bytes each in a worker, "
        "a stream adds up to ~10 an event); past it the rows of the items least recently seen leave",
    )
    # A worker reads the same categories as stream-eval: the clickstream record's `category`
    # (streaming/worker/ranking.py); events without one (YOOCHOOSE) leave the source empty.
    category_recent: int = setting(
        3,
        "category popularity (a ranker source): the categories of the user's latest items, up to this many "
        "distinct ones, each weighing half the next more recent one (0: no category source)",
    )
    category_half_life_s: float = setting(
        86_400.0, "category popularity: an item's count in its category halves every this many seconds"
    )
    category_max_items: int = setting(
        2000, "category popularity: a category keeps its this many most popular items' counts"
    )

    def with_params(self, params: Mapping[str, Any]) -> SourcesConfig:
        """A copy with `params` (names of fields; values converted to the field's type)."""
        types = {f.name: type(getattr(self, f.name)) for f in fields(self)}
        bad = set(params) - set(types)
        if bad:
            raise ValueError(f"unknown source parameters {sorted(bad)}; known: {', '.join(sorted(types))}")
        conv: dict[str, Any] = {}
        for name, v in params.items():
            t = types[name]
            if t is bool and isinstance(v, str):
                conv[name] = v.lower() in ("1", "true", "yes", "on")
            else:
                conv[name] = t(v)
        return replace(self, **conv)


_SMALL = 64  # top_items: up to this many scored items, a plain sort


def top_items(scores: Mapping[str, float], n: int, banned: Iterable[str] = ()) -> list[str]:
    """The n best-scored items minus `banned`, best first (ties: the item scored first)."""
    if n <= 0 or not scores:
        return []
    ban = banned if isinstance(banned, (set, frozenset, dict)) else set(banned)
    want = n + len(ban)
    if len(scores) <= _SMALL:
        # a stable sort, reversed, keeps equal items in scoring order; for a few items it is
        # cheaper than numpy's fixed cost
        return [i for i in sorted(scores, key=scores.__getitem__, reverse=True)[:want] if i not in ban][:n]
    keys = list(scores)
    neg = -np.fromiter(scores.values(), np.float64, len(keys))
    if want < len(keys):
        # every item at or above the want-th best score, in scoring order: a stable sort of
        # those is the stable sort of all, cut at `want`
        pick = np.flatnonzero(neg <= np.partition(neg, want - 1)[want - 1])
        order = pick[np.argsort(neg[pick], kind="stable")[:want]]
    else:
        order = np.argsort(neg, kind="stable")
    out: list[str] = []
    for j in order.tolist():
        if keys[j] not in ban:
            out.append(keys[j])
            if len(out) == n:
                break
    return out


def own_recent(profile: UserProfile | None) -> dict[str, float]:
    """The user's own items scored by recency of their last touch (latest = highest)."""
    if profile is None or not profile.items:
        return {}
    last = profile.last_ts
    return {i: 1.0 / (1.0 + max(last - s.ts, 0) / 60_000.0) for i, s in profile.items.items()}


class RecentItems:
    """Each user's last distinct items (latest last) with their last touch time."""

    def __init__(self, keep: int = 30, max_users: int = 1_000_000):
        self.keep, self.max_users = keep, max_users
        self._u: dict[str, dict[str, int]] = {}  # least recently active user first

    def update(self, e: Event) -> None:
        d = self._u.pop(e.user, None)
        if d is None:
            d = {}
            if len(self._u) >= self.max_users:
                del self._u[next(iter(self._u))]
        self._u[e.user] = d
        d.pop(e.item, None)
        d[e.item] = e.ts
        if len(d) > self.keep:
            del d[next(iter(d))]

    def items(self, user: str, n: int) -> list[str]:
        """The user's last n distinct items, latest last."""
        d = self._u.get(user)
        if not d:
            return []
        return list(d)[-n:]


class SessionKNN:
    """Incremental session index; `vsknn` and `stan` score a user's current session.

    Sessions hold interned item ids (ints): a query's neighbour candidates (hundreds of
    sessions) concatenate into one numpy array, so which current items each holds, the
    similarities and the k best are array operations, computed once for both methods until the
    next update. The votes (k sessions) stay loops. Sums run in the loops' order (cumsum is
    sequential), ties break as before, every exp is math.exp's: the scores are equal to the
    last bit and their dicts keep their insertion order (`top_items`' ties)."""

    def __init__(self, cfg: SourcesConfig = SourcesConfig()):
        self.cfg = cfg
        # session id -> its items in order / its distinct items (first-seen order) / its last event
        # time (ms) / its user; the oldest session first (the one evicted past `max_sessions`)
        self._items: dict[int, list[int]] = {}
        self._sets: dict[int, dict[int, None]] = {}
        self._last: dict[int, int] = {}
        self._owner: dict[int, str] = {}
        self._next_sid = 0
        self._user_sess: dict[str, tuple[int, int]] = {}  # user -> (current session id, last ts)
        self._by_item: dict[int, dict[int, None]] = {}  # item id -> session ids, least recently added first
        # item -> id and back; ids are never reused (an item's id outlives its sessions, as
        # ItemStats keeps every item's last-seen time)
        self._id: dict[str, int] = {}
        self._name: list[str] = []
        self.recent = RecentItems(max(cfg.current_len, 1) * 3, cfg.max_users)
        self._version = 0  # updates so far: a neighbourhood is shared by V-SKNN and STAN within one
        self._memo: tuple[tuple[str, int], _Neighbourhood] | None = None
        # prefetch's scores: (version, {(user, method, now): (item ids, scores)})
        self._batch: tuple[int, dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]]] = (-1, {})
        self._decays: dict[float, np.ndarray] = {}  # STAN's λ₃ -> exp(−d/λ₃) for d = 0, 1, … (`_decay`)
        self._stan_w: np.ndarray | None = None  # `_stan_weights`
        self._slot = np.zeros(0, np.int32)  # `_find_current`'s lookup: -1 for every interned item

    def _evict_oldest(self) -> None:
        old = next(iter(self._items))
        for it in self._sets.pop(old):
            by = self._by_item.get(it)
            if by is not None:
                by.pop(old, None)
                if not by:
                    del self._by_item[it]
        del self._items[old], self._last[old]
        user = self._owner.pop(old)
        if self._user_sess.get(user, (-1, 0))[0] == old:
            del self._user_sess[user]

    def update(self, e: Event) -> None:
        self._version += 1
        item = self._id.get(e.item)
        if item is None:
            item = self._id[e.item] = len(self._name)
            self._name.append(e.item)
        cur = self._user_sess.get(e.user)
        gap_ms = self.cfg.session_gap_s * 1000.0
        if cur is None or e.ts - cur[1] > gap_ms:
            sid = self._next_sid
            self._next_sid += 1
            self._items[sid], self._sets[sid], self._last[sid], self._owner[sid] = [], {}, e.ts, e.user
            if len(self._items) > self.cfg.max_sessions:
                self._evict_oldest()
        else:
            sid = cur[0]
        seq = self._items[sid]
        if not seq or seq[-1] != item:
            seq.append(item)
            self._sets[sid][item] = None
        self._last[sid] = max(self._last[sid], e.ts)
        self._user_sess[e.user] = (sid, e.ts)
        by = self._by_item.get(item)
        if by is None:
            by = self._by_item[item] = {}
        by.pop(sid, None)
        by[sid] = None
        if len(by) > self.cfg.max_sessions_per_item:
            del by[next(iter(by))]
        self.recent.update(e)

    def sizes(self) -> dict[str, int]:
        return {"sessions": len(self._items), "session_items": len(self._by_item)}

    def _candidate_sessions(self, user: str, cur: list[int]) -> set[int]:
        """Each current item's latest `sample` sessions, the user's ongoing one excepted."""
        cand: set[int] = set()
        for it in reversed(cur):
            by = self._by_item.get(it)
            if by:
                cand.update(islice(reversed(by), self.cfg.sample))
        cand.discard(self._user_sess.get(user, (-1, 0))[0])
        return cand

    def _neighbourhood(self, user: str, cur: list[int]) -> _Neighbourhood:
        """The neighbour candidates of the user's current session `cur` (item ids): the `sample`
        most recently active sessions among each item's latest `sample`, the user's ongoing one
        excepted, and which of cur's items each holds."""
        key = (user, self._version)
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        cand = self._candidate_sessions(user, cur)
        ids = np.fromiter(cand, np.int64, len(cand))
        if len(ids) > self.cfg.sample:
            last = np.fromiter(map(self._last.__getitem__, ids.tolist()), np.int64, len(ids))
            ids = ids[np.lexsort((ids, last))[-self.cfg.sample :]]  # equal times: the newer session
        sids = ids.tolist()
        sets = list(map(self._sets.__getitem__, sids))
        sizes = np.fromiter(map(len, sets), np.int64, len(sets))
        flat = np.fromiter(chain.from_iterable(sets), np.int64, int(sizes.sum()))
        if sids:  # sessions are never empty: each row of reduceat is one session's items
            starts = np.cumsum(sizes) - sizes
            member = np.logical_or.reduceat(np.equal.outer(flat, cur), starts, axis=0)
        else:
            member = np.zeros((0, len(cur)), bool)
        nb = _Neighbourhood(ids, member, sizes)
        self._memo = (key, nb)
        return nb

    def scores(self, user: str, method: str = "vsknn", now: int | None = None) -> dict[str, float]:
        ids, vals = self.score_arrays(user, method, now)
        name = self._name
        return dict(zip(map(name.__getitem__, ids.tolist()), vals.tolist(), strict=True))

    def top(
        self, user: str, method: str, now: int | None, n: int, banned: AbstractSet[str], mask: ItemMask | None = None
    ) -> dict[str, float]:
        """`top_items` of `scores` (what `mask` allows, minus `banned`) with their scores, from
        the arrays: no dict of every scored item."""
        ids, vals = self.score_arrays(user, method, now)  # a prefetched user's from the batch
        if n <= 0 or not len(ids):
            return {}
        name = self._name
        neg = -vals
        want = n + len(banned)
        out: dict[str, float] = {}
        done = 0
        if want < len(ids):
            # as top_items: every item at or above the want-th best score, stably sorted, is the
            # stable sort of all cut there; it holds n items not banned unless the mask says no
            pick = np.flatnonzero(neg <= np.partition(neg, want - 1)[want - 1])
            order = pick[np.argsort(neg[pick], kind="stable")]
            for i, v in zip(ids[order].tolist(), vals[order].tolist(), strict=True):
                it = name[i]
                if it not in banned and (mask is None or mask.allows(it)):
                    out[it] = v
                    if len(out) == n:
                        return out
            done = len(order)
        rest = np.argsort(neg, kind="stable")[done:]
        for i, v in zip(ids[rest].tolist(), vals[rest].tolist(), strict=True):
            it = name[i]
            if it not in banned and (mask is None or mask.allows(it)):
                out[it] = v
                if len(out) == n:
                    break
        return out

    def score_arrays(self, user: str, method: str = "vsknn", now: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The user's scores as (item ids, scores), in the order items were first voted for."""
        if now is not None and self._batch[0] == self._version:
            got = self._batch[1].get((user, method, now))
            if got is not None:
                return got
        cur = [self._id[i] for i in self.recent.items(user, self.cfg.current_len)]
        if not cur:
            return np.zeros(0, np.int64), np.zeros(0)
        n = len(cur)
        stan = method == "stan"
        if stan:
            l1 = self.cfg.stan_l1 or n
            w1 = [math.exp((p + 1 - n) / l1) for p in range(n)]
        else:
            w1 = [(p + 1) / n for p in range(n)]
        nb = self._neighbourhood(user, cur)
        # similarity: Σ of the shared items' weights, added in the current session's order
        # (cumsum is sequential; + 0.0 leaves a sum as it is)
        sim = np.cumsum(nb.member * np.array(w1), axis=1)[:, -1]
        if stan:
            t_now = now if now is not None else max(self._last.values()) if self._last else 0
            l2_ms = self.cfg.stan_l2_s * 1000.0
            recency = [math.exp(-max(t_now - t, 0) / l2_ms) for t in map(self._last.__getitem__, nb.sids.tolist())]
            sim = sim / np.sqrt(n * nb.sizes) * np.array(recency)
        ok = np.flatnonzero(sim > 0)
        ids, sim = nb.sids[ok], sim[ok]
        top = np.lexsort((ids, sim))[::-1][: self.cfg.k]  # the k most similar; equal: the newer session
        best, s = ids[top].tolist(), sim[top]
        if not best:
            return np.zeros(0, np.int64), np.zeros(0)
        # The votes, in the loops' order: session by session (best first), each session's items
        # in their order; np.bincount adds an item's votes one after the other from 0.0, as
        # `out[it] = out.get(it, 0.0) + vote` did.
        if not stan:
            sets = list(map(self._sets.__getitem__, best))
            sizes = np.fromiter(map(len, sets), np.int64, len(sets))
            items = np.fromiter(chain.from_iterable(sets), np.int64, int(sizes.sum()))
            votes = np.repeat(s, sizes)
        else:
            items, votes = self._stan_votes(best, s, cur, w1, n)
        uniq, first, inv = np.unique(items, return_index=True, return_inverse=True)
        sums = np.bincount(inv, weights=votes, minlength=len(uniq))
        order = np.argsort(first, kind="stable")
        return uniq[order], sums[order]

    def prefetch(self, users: Sequence[str], nows: Sequence[int]) -> None:
        """V-SKNN's and STAN's scores of `users` (at `nows`) computed together, kept for
        `score_arrays` until the next update: a batch of users costs a few dozen array
        operations instead of that many per user. The same sums in the same order as one user
        at a time (the test pins them)."""
        cfg = self.cfg
        L = max(cfg.current_len, 1)
        out: dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]] = {}
        empty = (np.zeros(0, np.int64), np.zeros(0))
        curs: list[list[int]] = []
        who: list[tuple[str, int]] = []
        cand_ids: list[int] = []
        cand_user: list[int] = []
        for user, now in zip(users, nows, strict=True):
            cur = [self._id[i] for i in self.recent.items(user, cfg.current_len)]
            if not cur:
                out[(user, "vsknn", now)] = out[(user, "stan", now)] = empty
                continue
            cand = self._candidate_sessions(user, cur)
            cand_ids += cand
            cand_user += [len(curs)] * len(cand)
            curs.append(cur)
            who.append((user, now))
        self._batch = (self._version, out)
        if not curs:
            return
        n_u = np.fromiter(map(len, curs), np.int64, len(curs))
        # each user's `sample` most recently active candidates (equal times: the newer session)
        sid = np.array(cand_ids, np.int64)
        su = np.array(cand_user, np.int64)
        last = np.fromiter(map(self._last.__getitem__, cand_ids), np.int64, len(cand_ids))
        o = np.lexsort((sid, last, su))
        sid, su, last = sid[o], su[o], last[o]
        counts = np.bincount(su, minlength=len(curs))
        starts_u = np.cumsum(counts) - counts
        keep = np.arange(len(sid)) - starts_u[su] >= counts[su] - cfg.sample
        sid, su, last = sid[keep], su[keep], last[keep]
        # which current items each candidate holds (users' current sessions padded with -1 at
        # the end: a padded column adds 0.0 to the similarity, which leaves it as it is)
        cur_m = np.full((len(curs), L), -1, np.int64)
        pos_m = np.arange(L)
        for j, cur in enumerate(curs):
            cur_m[j, : len(cur)] = cur
        sets = list(map(self._sets.__getitem__, sid.tolist()))
        sizes = np.fromiter(map(len, sets), np.int64, len(sets))
        flat = np.fromiter(chain.from_iterable(sets), np.int64, int(sizes.sum()))
        inside = pos_m[None, :] < n_u[:, None]
        member = np.zeros((len(sid), L), bool)
        if len(sid):
            found, col = _find_current(cur_m, n_u, np.repeat(su, sizes), flat, self._slots())
            hit = np.flatnonzero(found)
            member[np.repeat(np.arange(len(sid)), sizes)[hit], col[hit]] = True
        n_f = n_u[:, None].astype(np.float64)
        w_v = np.where(inside, (pos_m[None, :] + 1) / n_f, 0.0)
        w_s = self._stan_weights(L)[n_u]
        l2_ms = cfg.stan_l2_s * 1000.0
        now_u = np.array([now for _, now in who], np.int64)
        recency = np.fromiter(
            map(math.exp, ((-np.maximum(now_u[su] - last, 0)) / l2_ms).tolist()), np.float64, len(sid)
        )
        sim_v = np.cumsum(member * w_v[su], axis=1)[:, -1]
        sim_s = np.cumsum(member * w_s[su], axis=1)[:, -1] / np.sqrt(n_u[su] * sizes) * recency
        n_items = len(self._name)
        for method, sim in (("vsknn", sim_v), ("stan", sim_s)):
            ok = np.flatnonzero(sim > 0)
            b_sid, b_sim, b_u = sid[ok], sim[ok], su[ok]
            o = np.lexsort((b_sid, b_sim, b_u))
            ends = np.searchsorted(b_u[o], np.arange(len(curs)), side="right")
            begins = np.searchsorted(b_u[o], np.arange(len(curs)), side="left")
            # each user's k most similar, best first (equal: the newer session)
            pick = np.concatenate(
                [o[max(b, e - cfg.k) : e][::-1] for b, e in zip(begins.tolist(), ends.tolist(), strict=True)]
                or [np.zeros(0, np.intp)]
            ).astype(np.intp)
            best, s, bu = b_sid[pick], b_sim[pick], b_u[pick]
            if method == "vsknn":
                bsets = list(map(self._sets.__getitem__, best.tolist()))
                bsizes = np.fromiter(map(len, bsets), np.int64, len(bsets))
                items = np.fromiter(chain.from_iterable(bsets), np.int64, int(bsizes.sum()))
                votes, vu = np.repeat(s, bsizes), np.repeat(bu, bsizes)
            else:
                items, votes, vu = self._stan_votes_many(best, s, bu, cur_m, w_s, n_u)
            # each (user, item)'s votes added one after the other from 0.0, in voting order
            key = vu * n_items + items
            groups, first, inv = np.unique(key, return_index=True, return_inverse=True)
            sums = np.bincount(inv, weights=votes, minlength=len(groups))
            order = np.argsort(first, kind="stable")
            g_key, g_sum = groups[order], sums[order]
            bounds = np.searchsorted(g_key // n_items, np.arange(len(curs) + 1), side="left").tolist()
            g_ids = g_key % n_items
            for j, (user, now) in enumerate(who):
                a, b = bounds[j], bounds[j + 1]
                out[(user, method, now)] = (g_ids[a:b], g_sum[a:b])

    def _slots(self) -> np.ndarray:
        """`_find_current`'s lookup, one entry per interned item (grown by doubling)."""
        if len(self._slot) < len(self._name):
            self._slot = np.full(max(len(self._name), 2 * len(self._slot), 1024), -1, np.int32)
        return self._slot

    def _stan_weights(self, L: int) -> np.ndarray:
        """Row n: STAN's position weights of a current session of n items, exp((p + 1 − n) / λ₁)
        for p < n (math.exp's values), then zeros; kept (they depend on n alone)."""
        if self._stan_w is None or len(self._stan_w) != L + 1:
            w = np.zeros((L + 1, L))
            for n in range(1, L + 1):
                w[n, :n] = [math.exp((p + 1 - n) / (self.cfg.stan_l1 or n)) for p in range(n)]
            self._stan_w = w
        return self._stan_w

    def _decay(self, l3: float, m: int) -> np.ndarray:
        """exp(−d/λ₃) for d = 0, 1, …, at least m of them: math.exp's values, kept per λ₃ (a
        neighbour session's length bounds d: without it, a loop of math.exp per user and batch)."""
        have = self._decays.get(l3)
        if have is None or len(have) < m:
            size = max(m, 2 * (0 if have is None else len(have)))
            have = self._decays[l3] = np.array([math.exp(-d / l3) for d in range(size)], np.float64)
        return have

    def _stan_votes_many(
        self, best: np.ndarray, s: np.ndarray, bu: np.ndarray, cur_m: np.ndarray, w_s: np.ndarray, n_u: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`_stan_votes` of several users' neighbours at once (`bu`: each neighbour's user)."""
        seqs = list(map(self._items.__getitem__, best.tolist()))
        if not seqs:
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
        lens = np.fromiter(map(len, seqs), np.int64, len(seqs))
        flat = np.fromiter(chain.from_iterable(seqs), np.int64, int(lens.sum()))
        starts = np.cumsum(lens) - lens
        seg = np.repeat(np.arange(len(seqs)), lens)
        eu = bu[seg]
        pos = np.arange(len(flat)) - starts[seg]
        held, col = _find_current(cur_m, n_u, eu, flat, self._slots())
        w = np.where(held, w_s[eu, col], -np.inf)
        top_w = np.maximum.reduceat(w, starts)
        at_top = np.where(held & (w == top_w[seg]), pos, -1)
        anchor = np.maximum(np.maximum.reduceat(at_top, starts), 0)
        # each user's decay table (λ₃ depends on their current session's length)
        longest = np.zeros(len(n_u), np.int64)
        np.maximum.at(longest, bu, lens)
        offs = np.cumsum(longest) - longest
        table = np.concatenate(
            [self._decay(self.cfg.stan_l3 or n, m)[:m] for n, m in zip(n_u.tolist(), longest.tolist(), strict=True)]
        )
        v = table[offs[eu] + np.abs(pos - anchor[seg])]
        keep = np.flatnonzero(v > 0.0)
        flat, seg, v = flat[keep], seg[keep], v[keep]
        if not len(flat):
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
        g_seg, g_item, best_v = _one_vote_each(seg, flat, v)
        return g_item, s[g_seg] * best_v, bu[g_seg]

    def _stan_votes(
        self, best: list[int], s: np.ndarray, cur: list[int], w1: list[float], n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """STAN's votes of the neighbour sessions `best` (similarities `s`): each session votes
        once for each of its items, s · exp(−|distance to the anchor| / λ₃), where the anchor is
        the session's last position holding the current item of the highest weight and an item
        seen twice takes its nearer position; in session order, each session's items in the
        order they first appear with a vote above 0."""
        seqs = list(map(self._items.__getitem__, best))
        lens = np.fromiter(map(len, seqs), np.int64, len(seqs))
        flat = np.fromiter(chain.from_iterable(seqs), np.int64, int(lens.sum()))
        starts = np.cumsum(lens) - lens
        seg = np.repeat(np.arange(len(seqs)), lens)
        pos = np.arange(len(flat)) - starts[seg]
        hit = np.equal.outer(flat, np.array(cur, np.int64))
        held = hit.any(axis=1)
        w = np.where(held, np.array(w1)[hit.argmax(axis=1)], -np.inf)
        top_w = np.maximum.reduceat(w, starts)
        # the last position at the session's highest weight (`>=` in the loop); none: position 0
        at_top = np.where(held & (w == top_w[seg]), pos, -1)
        anchor = np.maximum(np.maximum.reduceat(at_top, starts), 0)
        decay = self._decay(self.cfg.stan_l3 or n, int(lens.max()))
        v = decay[np.abs(pos - anchor[seg])]
        keep = np.flatnonzero(v > 0.0)  # a vote of 0.0 was never recorded
        if not len(keep):
            return np.zeros(0, np.int64), np.zeros(0)
        flat, seg, v = flat[keep], seg[keep], v[keep]
        g_seg, g_item, best_v = _one_vote_each(seg, flat, v)
        return g_item, s[g_seg] * best_v


def _find_current(
    cur_m: np.ndarray, n_u: np.ndarray, users: np.ndarray, items: np.ndarray, slot: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Whether each (users[j], items[j]) is one of that user's current items (row users[j] of
    `cur_m`, its first n_u entries), and at which column. Neighbour sessions are long where a
    user's events never pause for `session_gap_s` (hundreds of candidates x dozens of items x L
    per user), so each element is looked up, not compared with every current item: `slot`
    (all -1, one entry per interned item, left as it was found) numbers the batch's distinct
    current items, and a users x those items table gives the column. Two gathers an element;
    a search among the sorted (user, item) keys cost 3x more. A user's current items are
    distinct: one column at most."""
    rows, cols = np.nonzero(np.arange(cur_m.shape[1])[None, :] < n_u[:, None])
    if not len(rows):
        return np.zeros(len(items), bool), np.zeros(len(items), np.intp)
    current = cur_m[rows, cols]
    distinct, code = np.unique(current, return_inverse=True)
    table = np.full((cur_m.shape[0], len(distinct)), -1, np.intp)
    table[rows, code] = cols
    slot[distinct] = np.arange(len(distinct), dtype=slot.dtype)
    try:
        c = slot[items]
    finally:
        slot[distinct] = -1
    col = np.full(len(items), -1, np.intp)
    some = np.flatnonzero(c >= 0)
    col[some] = table[users[some], c[some]]
    found = col >= 0
    return found, np.maximum(col, 0)


def _one_vote_each(seg: np.ndarray, flat: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """STAN's one vote per (session, item), its largest: the pairs' sessions, items and votes,
    ordered by where each pair first appears (the loops' insertion order)."""
    key = seg * (int(flat.max()) + 1) + flat
    groups, first, inv = np.unique(key, return_index=True, return_inverse=True)
    best_v = np.zeros(len(groups))
    np.maximum.at(best_v, inv, v)
    order = np.argsort(first, kind="stable")
    return seg[first[order]], flat[first[order]], best_v[order]


@dataclass
class _Neighbourhood:
    sids: np.ndarray  # neighbour candidates (session ids)
    member: np.ndarray  # candidates × the current session's positions: holds that item
    sizes: np.ndarray  # each candidate's distinct items


class CoVisitation:
    """Incremental item-to-item co-visitation counts ("viewed next / viewed together")."""

    def __init__(self, cfg: SourcesConfig = SourcesConfig()):
        self.cfg = cfg
        self._buf: dict[str, deque[tuple[str, int]]] = {}  # least recently active user first
        self._w: dict[str, dict[str, float]] = {}
        # a row's total before any pruning (the normalisation); the row of the item least recently
        # seen first (moved to the end on each event on its item; a new row joins at the end): the
        # one dropped past `covisit_max_pairs` (every row of _next has its row here)
        self._tot: dict[str, float] = {}
        self.pairs = 0  # entries over the rows of _w and _next
        self._next: dict[str, dict[str, float]] = {}  # a -> b: b was the very next move after a
        self.recent = RecentItems(max(cfg.covisit_recent, 1) * 3, cfg.max_users)

    def _bounded(self, rows: dict[str, dict[str, float]], a: str, row: dict[str, float]) -> None:
        """A row past twice `covisit_max_row` (the callers check, once per move) keeps its heaviest
        `covisit_max_row` items."""
        rows[a] = dict(heapq.nlargest(self.cfg.covisit_max_row, row.items(), key=lambda kv: kv[1]))
        self.pairs -= len(row) - self.cfg.covisit_max_row

    def update(self, e: Event) -> None:
        buf = self._buf.pop(e.user, None)
        if buf is None:
            buf = deque(maxlen=self.cfg.covisit_back)
            if len(self._buf) >= self.cfg.max_users:
                del self._buf[next(iter(self._buf))]
        self._buf[e.user] = buf
        b = e.item
        tot = self._tot.pop(b, None)
        if tot is not None:
            self._tot[b] = tot
        self.recent.update(e)
        if buf and buf[-1][0] == b:  # a reload or an action on the product on screen: not a move
            buf[-1] = (b, e.ts)
            return
        window = self.cfg.covisit_window_s * 1000.0
        backward, cap = self.cfg.covisit_backward, 2 * self.cfg.covisit_max_row
        rows, tots = self._w, self._tot
        done: set[str] = {b}
        new = 0
        for d, (a, ta) in enumerate(reversed(buf), 1):
            if e.ts - ta > window:
                break
            if a in done:
                continue
            done.add(a)
            if d == 1:
                row = self._next.get(a)
                if row is None:
                    row = self._next[a] = {}
                n = len(row)
                row[b] = row.get(b, 0.0) + 1.0
                new += len(row) - n
                if len(row) > cap:
                    self._bounded(self._next, a, row)
            # a→b gains 1/d and b→a backward/d, each row's total with it (inline: ~20 times an
            # event in the worker's batch path); a row past `cap` is pruned
            w = 1.0 / d
            row = rows.get(a)
            if row is None:
                row = rows[a] = {}
            n = len(row)
            row[b] = row.get(b, 0.0) + w
            tots[a] = tots.get(a, 0.0) + w
            if len(row) > cap:
                self._bounded(rows, a, row)
            new += len(row) - n
            if backward > 0:
                w = backward / d
                row = rows.get(b)
                if row is None:
                    row = rows[b] = {}
                n = len(row)
                row[a] = row.get(a, 0.0) + w
                tots[b] = tots.get(b, 0.0) + w
                if len(row) > cap:
                    self._bounded(rows, b, row)
                new += len(row) - n
        buf.append((b, e.ts))
        self.pairs += new
        while self.pairs > self.cfg.covisit_max_pairs:
            self._drop_oldest_row()

    def _drop_oldest_row(self) -> None:
        a = next(iter(self._tot))
        del self._tot[a]
        self.pairs -= len(self._w.pop(a)) + len(self._next.pop(a, ()))

    def sizes(self) -> dict[str, int]:
        return {"covisit_pairs": self.pairs, "covisit_rows": len(self._tot), "covisit_users": len(self._buf)}

    def neighbours(self, item: str) -> dict[str, float]:
        return self._w.get(item, {})

    def next_items(self, item: str) -> dict[str, float]:
        """How often each item was the very next move after `item` (within the window)."""
        return self._next.get(item, {})

    def scores(self, user: str) -> dict[str, float]:
        out: dict[str, float] = {}
        w = 1.0
        for a in reversed(self.recent.items(user, self.cfg.covisit_recent)):
            row = self._w.get(a)
            if row:
                f = w / self._tot[a] if self.cfg.covisit_normalize else w
                if not out and f == 1.0:  # the first row as it is: 0.0 + 1.0·v is v
                    out = dict(row)
                else:
                    for b, v in row.items():
                        out[b] = out.get(b, 0.0) + f * v
            w *= self.cfg.covisit_decay
        return out


BASELINES = ("own-recent", "covisit", "vsknn", "stan")


class CategoryPopularity:
    """The recently popular items of the categories a user just looked at.

    Each item's category is what the events say (`Event.category`: the dataset files that carry
    one) or what the caller sets in `category` (a worker's catalogue). A user's score for item i
    is Σ_j 0.5^j · count(i) / count(best of c_j) over the distinct categories c_0 (latest),
    c_1, … of their last items, up to `category_recent` of them; counts decay with
    `category_half_life_s` (recsys.serving.popularity.RecentPopularity per category)."""

    def __init__(self, cfg: SourcesConfig = SourcesConfig()):
        self.cfg = cfg
        self.category: dict[str, str] = {}  # item -> category
        self._pop: dict[str, RecentPopularity] = {}

    def update(self, e: Event) -> None:
        if e.category is not None:
            self.category[e.item] = e.category
        c = self.category.get(e.item)
        if c is None or self.cfg.category_recent <= 0:
            return
        pop = self._pop.get(c)
        if pop is None:
            pop = self._pop[c] = RecentPopularity(self.cfg.category_half_life_s, self.cfg.category_max_items)
        pop.add(e.item, e.ts)

    def recent_categories(self, profile: UserProfile | None) -> list[str]:
        """The distinct categories of the user's latest items, latest first."""
        out: list[str] = []
        if profile is None or self.cfg.category_recent <= 0:
            return out
        for item in reversed(profile.history):
            c = self.category.get(item)
            if c is not None and c not in out:
                out.append(c)
                if len(out) == self.cfg.category_recent:
                    break
        return out

    def top(
        self, profile: UserProfile | None, n: int, banned: AbstractSet[str], mask: ItemMask | None = None
    ) -> dict[str, float]:
        """The user's n best items with their scores, best first, none banned, all allowed by `mask`."""
        scores: dict[str, float] = {}
        for j, c in enumerate(self.recent_categories(profile)):
            pop = self._pop[c]
            best = pop.top(n + len(banned), banned)
            if mask is not None:
                best = [i for i in best if mask.allows(i)]
            if not best:
                continue
            counts = pop.counts(best)
            w = 0.5**j / (counts[0] or 1.0)
            for i, v in zip(best, counts, strict=True):
                scores[i] = scores.get(i, 0.0) + w * v
        return {i: scores[i] for i in top_items(scores, n, banned)}


class Sources:
    """All incremental sources fed by one stream; `lists(...)` gives each baseline's top-n."""

    def __init__(self, cfg: SourcesConfig = SourcesConfig()):
        self.cfg = cfg
        self.sknn = SessionKNN(cfg)
        self.covisit = CoVisitation(cfg)
        self.category = CategoryPopularity(cfg)

    def update(self, e: Event) -> None:
        self.sknn.update(e)
        self.covisit.update(e)
        self.category.update(e)

    def sizes(self) -> dict[str, int]:
        """How much each source holds (the worker's streamrec_sources_entries gauge)."""
        return {**self.covisit.sizes(), **self.sknn.sizes()}

    def scores(self, method: str, user: str, profile: UserProfile | None, now: int) -> dict[str, float]:
        if method == "own-recent":
            return own_recent(profile)
        if method == "covisit":
            return self.covisit.scores(user)
        if method in ("vsknn", "stan"):
            return self.sknn.scores(user, method, now)
        if method == "category":
            return self.category.top(profile, self.cfg.category_max_items, set())
        raise ValueError(f"unknown source {method!r}")

    def top(
        self,
        method: str,
        user: str,
        profile: UserProfile | None,
        now: int,
        n: int,
        banned: AbstractSet[str],
        mask: ItemMask | None = None,
    ) -> dict[str, float]:
        """The n best of `scores` that `mask` allows, minus `banned`, with their scores, best
        first (`top_items`' order); session-kNN's from its arrays."""
        if method in ("vsknn", "stan"):
            return self.sknn.top(user, method, now, n, banned, mask)
        if method == "category":
            return self.category.top(profile, n, banned, mask)
        scores = self.scores(method, user, profile, now)
        if mask is not None:
            scores = {i: v for i, v in scores.items() if mask.allows(i)}
        return {i: scores[i] for i in top_items(scores, n, banned)}
