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
import struct
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from itertools import chain, islice
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

import recsys.candidates.sources.kernels as kernels  # the submodule, not the package (which imports this one)
from recsys.candidates.sources.base import RecentItems
from recsys.candidates.sources.config import SourcesConfig
from recsys.events import Event

if TYPE_CHECKING:
    from recsys.catalogue import ItemMask


class _Scores(NamedTuple):
    """One method's scores of a batch's users (`prefetch`): user j's item ids, in the order of
    their first vote, and their scores are ids[bounds[j] : bounds[j + 1]] and sums[...]; its head
    (`top` reads it), the first of them by a stable descending sort, head_names[heads[j] :
    heads[j + 1]] (names) and head_vals[...]."""

    ids: np.ndarray
    sums: np.ndarray
    bounds: list[int]
    head_names: list[str]
    head_vals: list[float]
    heads: list[int]


_NONE = _Scores(np.zeros(0, np.int64), np.zeros(0), [0, 0], [], [], [0, 0])  # a user with no current session
_NO_SESSIONS: dict[int, None] = {}  # an item none of whose sessions is left (never changed)
_HEAD, _MAX_HEAD = 32, 256  # the head's length: at first, at most


class SessionKNN:
    """Incremental session index; `vsknn` and `stan` score a user's current session.

    Sessions hold interned item ids (ints). Scores are computed for a batch of users at once
    (`prefetch`: the worker's batch; one user alone is a batch of one): the candidates'
    sessions are gathered into flat arrays, compiled loops (kernels.py) do the rest, for both
    methods, kept until the next update. Sums run in the plain loops' order, ties break as
    they did, every exp is math.exp's: the scores are the loops' to the last bit and their
    dicts keep their insertion order (`top_items`' ties; tests/unit/test_candidate_sources.py)."""

    def __init__(self, cfg: SourcesConfig = SourcesConfig()):
        self.cfg = cfg
        # session id -> its items in order / its distinct items (first-seen order) / its last event
        # time (ms) / its user; the oldest session first (the one evicted past `max_sessions`).
        # Items as native int64s in bytearrays: many sessions' items join into one numpy array in
        # one copy (`_concat`), and the cyclic GC does not track a bytearray, nor so these dicts.
        # (array.array is tracked in Python 3.11: a full collection walked every session's two,
        # ~270 ms a million sessions, on the worker's event loop.)
        self._items: dict[int, bytearray] = {}
        self._distinct: dict[int, bytearray] = {}
        # a session past `_SCAN` distinct items: them as a dict, for membership in O(1) (a scan
        # of a bot's thousands of items on every event would be quadratic)
        self._long: dict[int, dict[int, None]] = {}
        self._last: dict[int, int] = {}
        self._owner: dict[int, str] = {}
        self._next_sid = 0
        # user -> (current session id, last ts, that session's last item)
        self._user_sess: dict[str, tuple[int, int, int]] = {}
        self._by_item: dict[int, dict[int, None]] = {}  # item id -> session ids, least recently added first
        # item -> id and back; ids are never reused (an item's id outlives its sessions, as
        # ItemStats keeps every item's last-seen time)
        self._id: dict[str, int] = {}
        self._name: list[str] = []
        self.recent = RecentItems(max(cfg.current_len, 1) * 3, cfg.max_users)
        self._version = 0  # updates so far: `prefetch`'s scores hold until the next one
        # prefetch's scores: (version, {(user, method, now): (their batch's, the user's row in it)})
        self._batch: tuple[int, dict[tuple[str, str, int], tuple[_Scores, int]]] = (-1, {})
        self._head = _HEAD  # `_Scores`' heads: `top`'s n plus banned items (raised by a call that wanted more)
        self._decays: dict[float, np.ndarray] = {}  # STAN's λ₃ -> exp(−d/λ₃) for d = 0, 1, … (`_decay`)
        self._stan_w: np.ndarray | None = None  # `_stan_weights`
        self._slot = np.zeros((3, 0), np.int32)  # the kernels' lookups: -1 for every interned item

    def _evict_oldest(self) -> None:
        old = next(iter(self._items))
        self._long.pop(old, None)
        for it in memoryview(self._distinct.pop(old)).cast("q"):
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
        self.update_many((e,))

    def update_many(self, events: Sequence[Event]) -> None:
        """`update` of each event in turn, the settings and dicts looked up once."""
        cfg = self.cfg
        gap_ms, max_sessions, per_item = cfg.session_gap_s * 1000.0, cfg.max_sessions, cfg.max_sessions_per_item
        ids, names, user_sess, by_item = self._id, self._name, self._user_sess, self._by_item
        items, distincts, last = self._items, self._distinct, self._last
        self.recent.update_many(events)  # its own state: the same after a pass of its own
        for e in events:
            self._version += 1
            user, ts = e.user, e.ts
            item = ids.get(e.item)
            if item is None:
                item = ids[e.item] = len(names)
                names.append(e.item)
            cur = user_sess.get(user)
            if cur is None or ts - cur[1] > gap_ms:
                sid = self._next_sid
                self._next_sid += 1
                items[sid], distincts[sid] = bytearray(), bytearray()
                last[sid], self._owner[sid] = ts, user
                if len(items) > max_sessions:
                    self._evict_oldest()
                move = True
            else:
                sid = cur[0]
                move = cur[2] != item  # the item on screen again: the sequence stays as it was
            if move:
                key = _PACK(item)
                items[sid] += key
                distinct = distincts[sid]
                if len(distinct) < 8 * _SCAN:
                    if not _holds(distinct, key):
                        distinct += key
                else:
                    held = self._long.get(sid)
                    if held is None:
                        held = self._long[sid] = dict.fromkeys(memoryview(distinct).cast("q"))
                    if item not in held:
                        held[item] = None
                        distinct += key
            if ts > last[sid]:
                last[sid] = ts
            user_sess[user] = (sid, ts, item)
            by = by_item.get(item)
            if by is None:
                by = by_item[item] = {}
            by.pop(sid, None)
            by[sid] = None
            if len(by) > per_item:
                del by[next(iter(by))]

    def sizes(self) -> dict[str, int]:
        return {"sessions": len(self._items), "session_items": len(self._by_item)}

    def scores(self, user: str, method: str = "vsknn", now: int | None = None) -> dict[str, float]:
        ids, vals = self.score_arrays(user, method, now)
        name = self._name
        return dict(zip(map(name.__getitem__, ids.tolist()), vals.tolist(), strict=True))

    def top(
        self, user: str, method: str, now: int | None, n: int, banned: AbstractSet[str], mask: ItemMask | None = None
    ) -> dict[str, float]:
        """`top_items` of `scores` (what `mask` allows, minus `banned`) with their scores, from
        the batch's head of the user's ranking (past it, from the arrays): no dict of every
        scored item."""
        (ids, vals, bounds, head_names, head_vals, heads), j = self._scored(user, method, now)
        a, b, c, d = bounds[j], bounds[j + 1], heads[j], heads[j + 1]
        if n <= 0 or a == b:
            return {}
        out: dict[str, float] = {}
        for it, v in zip(head_names[c:d], head_vals[c:d], strict=True):
            if it not in banned and (mask is None or mask.allows(it)):
                out[it] = v
                if len(out) == n:
                    return out
        if d - c == b - a:
            return out
        # the head held too few: later batches keep more of it (up to a bound), this call sorts all
        self._head = min(max(self._head, n + len(banned)), _MAX_HEAD)
        name = self._name
        rest = a + np.argsort(-vals[a:b], kind="stable")[d - c :]
        for i, v in zip(ids[rest].tolist(), vals[rest].tolist(), strict=True):
            it = name[i]
            if it not in banned and (mask is None or mask.allows(it)):
                out[it] = v
                if len(out) == n:
                    break
        return out

    def score_arrays(self, user: str, method: str = "vsknn", now: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The user's scores as (item ids, scores), in the order items were first voted for: a
        prefetched user's from the batch, else a batch of this one user (both methods, kept until
        the next update). `now` (STAN's recency): default the newest session's last event."""
        res, j = self._scored(user, method, now)
        a, b = res.bounds[j], res.bounds[j + 1]
        return res.ids[a:b], res.sums[a:b]

    def _scored(self, user: str, method: str, now: int | None) -> tuple[_Scores, int]:
        """The batch's scores of `method` that hold the user's, and the user's row in them."""
        if now is None:
            now = max(self._last.values()) if self._last else 0
        key = (user, method, now)
        if self._batch[0] != self._version or key not in self._batch[1]:
            self.prefetch([user], [now])
        return self._batch[1][key]

    def prefetch(self, users: Sequence[str], nows: Sequence[int]) -> None:
        """V-SKNN's and STAN's scores of `users` (at `nows`) computed together, kept for
        `score_arrays` until the next update. The candidates' items and the best neighbours'
        sequences are gathered into flat arrays here; similarities, the k best, the votes, their
        sums and each user's head of its ranking (`top`'s n best, before the banned ones) are
        compiled loops over them (kernels.py). Each user's sums are the same whichever batch
        they are in (the test pins them)."""
        cfg = self.cfg
        L = max(cfg.current_len, 1)
        # added to the users already computed since the last update (a user asked alone joins them)
        out = self._batch[1] if self._batch[0] == self._version else {}
        curs: list[list[int]] = []
        who: list[tuple[str, int]] = []
        for user, now in zip(users, nows, strict=True):
            cur = [self._id[i] for i in self.recent.items(user, cfg.current_len)]
            if not cur:
                out[(user, "vsknn", now)] = out[(user, "stan", now)] = (_NONE, 0)
                continue
            curs.append(cur)
            who.append((user, now))
        self._batch = (self._version, out)
        if not curs:
            return
        # the batch's current items' latest `sample` sessions each: users share many of the
        # items and most of the sessions, so each is read out of the dicts once (`uniq`; `entry`:
        # each entry's index in it) and the kernel makes each user's candidates of them
        cur_items = list(dict.fromkeys(chain.from_iterable(curs)))
        by_item, sample = self._by_item, cfg.sample
        bys: list[dict[int, None] | list[int]] = [by_item.get(it, _NO_SESSIONS) for it in cur_items]
        bys = [by if len(by) <= sample else list(islice(reversed(by), sample)) for by in bys]
        ib = np.zeros(len(bys) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, bys), np.int64, len(bys)), out=ib[1:])
        uniq, entry = np.unique(np.fromiter(chain.from_iterable(bys), np.int64, ib[-1]), return_inverse=True)
        last = np.fromiter(map(self._last.__getitem__, uniq.tolist()), np.int64, len(uniq))
        # users' current sessions (row j: user j's n_u[j] items, then -1s)
        n_u = np.fromiter(map(len, curs), np.int64, len(curs))
        cur_m = np.full((len(curs), L), -1, np.int64)
        pos_m = np.arange(L)
        for j, cur in enumerate(curs):
            cur_m[j, : len(cur)] = cur
        slot, seen, acc = self._slots()
        # each user's candidates (at most `sample`, the most recently active), STAN's recency of
        # each; then the candidates' distinct items, and the kernels do the rest, sum for sum as
        # the loops did
        inv, su, recency = kernels.candidates(
            cur_m,
            n_u,
            np.array(cur_items, np.int64),
            ib,
            entry,
            uniq,
            last,
            np.array([self._user_sess.get(user, (-1, 0))[0] for user, _ in who], np.int64),
            np.array([now for _, now in who], np.int64),
            cfg.sample,
            cfg.stan_l2_s * 1000.0,
            slot,
        )
        sid = uniq[inv]
        starts, sizes, flat = _gather(self._distinct, uniq, inv)
        inside = pos_m[None, :] < n_u[:, None]
        n_f = n_u[:, None].astype(np.float64)
        w_v = np.where(inside, (pos_m[None, :] + 1) / n_f, 0.0)
        w_s = self._stan_weights(L)[n_u]
        sim_v, sim_s = kernels.similarities(cur_m, n_u, su, starts, sizes, flat, w_v, w_s, recency, slot)
        for method, sim in (("vsknn", sim_v), ("stan", sim_s)):
            # each user's k most similar, best first (equal: the newer session); their votes,
            # each (user, item)'s added one after the other from 0.0 in voting order; the head
            pick, bounds = kernels.top_k(sim, sid, su, len(curs), cfg.k)
            if method == "vsknn":
                g_ids, g_sum, ub, order, hb = kernels.vsknn_scores(
                    pick, bounds, sim, starts, sizes, flat, acc, self._head
                )
            else:
                seq_starts, lens, seq = _gather(self._items, uniq, inv[pick])
                decay = self._decay_rows(n_u, int(lens.max()) if len(lens) else 1, L)
                g_ids, g_sum, ub, order, hb = kernels.stan_scores(
                    bounds, sim[pick], seq, seq_starts, lens, cur_m, n_u, w_s, decay, slot, seen, acc, self._head
                )
            names = list(map(self._name.__getitem__, g_ids[order].tolist()))
            res = _Scores(g_ids, g_sum, ub.tolist(), names, g_sum[order].tolist(), hb.tolist())
            for j, (user, now) in enumerate(who):
                out[(user, method, now)] = (res, j)

    def _slots(self) -> np.ndarray:
        """The kernels' three lookups (`slot`, `seen`, `acc`), one entry per interned item each,
        all -1 between calls (grown by doubling)."""
        if self._slot.shape[1] < len(self._name):
            self._slot = np.full((3, max(len(self._name), 2 * self._slot.shape[1], 1024)), -1, np.int32)
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

    def _decay_rows(self, n_u: np.ndarray, m: int, L: int) -> np.ndarray:
        """Row n: `_decay`'s first m values for a current session of n items (λ₃ depends on n),
        for the n in `n_u`; other rows zeros."""
        rows = np.zeros((L + 1, m))
        for n in np.unique(n_u).tolist():
            rows[n] = self._decay(self.cfg.stan_l3 or n, m)[:m]
        return rows


_PACK = struct.Struct("=q").pack  # an item id as a session holds it: a native int64
_SCAN = 64  # up to this many distinct items, a session's membership test scans them (`_holds`)


def _holds(items: bytearray, key: bytes) -> bool:
    """Whether a session's `items` hold the packed item `key` (a match that straddles two
    items is not one)."""
    at = items.find(key)
    while at > 0 and at % 8:
        at = items.find(key, at + 1)
    return at >= 0


def _concat(seqs: list[bytearray]) -> tuple[np.ndarray, np.ndarray]:
    """The sessions' lengths and their items end to end: one copy of their buffers (an
    element-by-element pass over them cost ~40 ns an item, a third of a warm batch's scores).
    Into a bytearray: the array is writable, as every array the kernels are given (numba
    compiles a read-only one as another signature)."""
    sizes = np.fromiter(map(len, seqs), np.int64, len(seqs)) // 8
    return sizes, np.frombuffer(bytearray().join(seqs), np.int64)


def _gather(
    store: dict[int, bytearray], uniq: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sessions `uniq[rows]` (rows repeat) out of `store` (`_distinct` or `_items`): each row's
    start and length in the flat array, which holds each distinct session of them once (the
    kernels read a row at its start: rows may share one)."""
    used = np.zeros(len(uniq), bool)
    used[rows] = True
    sizes, flat = _concat(list(map(store.__getitem__, uniq[used].tolist())))
    at = np.cumsum(used) - 1  # a used session's place among the used ones
    return (np.cumsum(sizes) - sizes)[at[rows]], sizes[at[rows]], flat
