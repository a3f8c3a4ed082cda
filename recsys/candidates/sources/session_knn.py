"""Session-kNN: V-SKNN and STAN over an incremental index of sessions.

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
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

from recsys.candidates.sources.base import RecentItems
from recsys.candidates.sources.config import SourcesConfig
from recsys.events import Event

if TYPE_CHECKING:
    from recsys.catalogue import ItemMask


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
        # session id -> its items in order / its distinct items (first-seen order; `_sets` the same
        # as a dict, for membership) / its last event time (ms) / its user; the oldest session
        # first (the one evicted past `max_sessions`). Items in arrays: many sessions' items join
        # into one numpy array in one copy (`_concat`), and the cyclic GC has nothing to walk in
        # them (a full collection would otherwise walk every session, on the worker's event loop).
        self._items: dict[int, array[int]] = {}
        self._distinct: dict[int, array[int]] = {}
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
        del self._sets[old]
        for it in self._distinct.pop(old):
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
            self._items[sid], self._distinct[sid], self._sets[sid] = array("q"), array("q"), {}
            self._last[sid], self._owner[sid] = e.ts, e.user
            if len(self._items) > self.cfg.max_sessions:
                self._evict_oldest()
        else:
            sid = cur[0]
        seq = self._items[sid]
        if not seq or seq[-1] != item:
            seq.append(item)
            held = self._sets[sid]
            if item not in held:
                held[item] = None
                self._distinct[sid].append(item)
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
        sizes, flat = _concat(list(map(self._distinct.__getitem__, ids.tolist())))
        if len(ids):  # sessions are never empty: each row of reduceat is one session's items
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
            sizes, items = _concat(list(map(self._distinct.__getitem__, best)))
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
        sizes, flat = _concat(list(map(self._distinct.__getitem__, sid.tolist())))
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
                bsizes, items = _concat(list(map(self._distinct.__getitem__, best.tolist())))
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
        if not len(best):
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
        lens, flat = _concat(list(map(self._items.__getitem__, best.tolist())))
        starts = np.cumsum(lens) - lens
        seg = np.repeat(np.arange(len(best)), lens)
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
        lens, flat = _concat(list(map(self._items.__getitem__, best)))
        starts = np.cumsum(lens) - lens
        seg = np.repeat(np.arange(len(best)), lens)
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


def _concat(seqs: list[array[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The sessions' lengths and their items end to end: one copy of the arrays' buffers (an
    element-by-element pass over them cost ~40 ns an item, a third of a warm batch's scores)."""
    sizes = np.fromiter(map(len, seqs), np.int64, len(seqs))
    return sizes, np.frombuffer(b"".join(seqs), np.int64)


def _find_current(
    cur_m: np.ndarray, n_u: np.ndarray, users: np.ndarray, items: np.ndarray, slot: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Whether each (users[j], items[j]) is one of that user's current items (row users[j] of
    `cur_m`, its first n_u entries), and at which column. Neighbour sessions are long where a
    user's events never pause for `session_gap_s` (hundreds of candidates x dozens of items x L
    per user), so each element is looked up, not compared with every current item: `slot`
    (all -1, one entry per interned item, left as it was found) numbers the batch's distinct
    current items, and a users x those items table gives the column: two gathers an element.
    A user's current items are distinct: one column at most."""
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
