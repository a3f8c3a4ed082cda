"""Session-kNN's batch kernels (`SessionKNN.prefetch`), `top_items`' best-h (`head`), the
ranker features' `log1p_each` and co-visitation's rows (at the end of the file: their update,
a user's sum, the rows' heads), compiled by numba.

They take the arrays `prefetch` gathers from the session index (the candidates' distinct items,
the best neighbours' item sequences, flattened) and replace the sorts and array passes that
followed: a loop over the elements in their order, with dense per-item lookups instead of
`np.unique`/`lexsort`. Hand-written because no maintained package implements V-SKNN or STAN
(session-rec is research code, not a library); numba compiles them. The scores stay equal to the
last bit, in the same insertion order:
* every sum adds the same floats in the same order, from 0.0 (a similarity over the current
  session's positions, in position order; an item's votes in voting order); a position the
  neighbour does not hold added 0.0 there, which leaves the sum as it was, so it is skipped;
* a quotient, product or maximum is the same IEEE operation numpy did; no fastmath (LLVM neither
  reassociates nor contracts float operations without it);
* every exp is the C library's `exp`, which math.exp calls too: in a table computed in Python,
  or (`candidates`) in the kernel, whose math.exp numba compiles to that same call.

The lookups (`slot`, `seen`, `acc`: one int32 per interned item) must be all -1 on entry; each kernel
leaves them so (it resets the entries it set), so no call clears a catalogue-sized array.
Bounds are not checked: item ids index them, so they must hold every interned item.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

log = logging.getLogger("streamrec.sources")
_uncached: list[str] = []


def _njit(fn: Callable[..., Any], nogil: bool = True) -> Any:
    """numba.njit, its machine code cached on disk (the first calls compile all the kernels in
    ~10 s of CPU, or load them from the cache in ~0.5 s with numba's typed dicts): in
    NUMBA_CACHE_DIR if set, else next to this file (__pycache__), else in the user's cache dir.
    Where none is writable numba refuses `cache=True` at import; then every process compiles
    (said once in the log). `nogil`: the call lets other threads run (kernels over arrays of
    their own)."""
    try:
        return numba.njit(cache=True, nogil=nogil)(fn)
    except RuntimeError as e:  # numba: "cannot cache function ...: no locator available"
        if not _uncached:
            log.warning("the sources' kernels compiled without a disk cache (set NUMBA_CACHE_DIR): %s", e)
        _uncached.append(fn.__name__)
        return numba.njit(nogil=nogil)(fn)


def _njit_holding_gil(fn: Callable[..., Any]) -> Any:
    """`_njit` for the kernels that read or write co-visitation's shared rows: a call holds the
    GIL, so no other thread's call runs meanwhile (the worker's warm-up updates the rows on a
    thread while a web request may read them)."""
    return _njit(fn, nogil=False)


@_njit
def candidates(
    cur_m: np.ndarray,
    n_u: np.ndarray,
    items: np.ndarray,
    ibounds: np.ndarray,
    inv: np.ndarray,
    uniq: np.ndarray,
    last: np.ndarray,
    own: np.ndarray,
    now_u: np.ndarray,
    sample: int,
    l2_ms: float,
    slot: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's candidate sessions: those of its current items (row u of `cur_m`, its first
    n_u[u] entries), each once, but its own (session id own[u]), and of more than `sample` the
    `sample` most recently active (equal times: the larger session id, the newer session). Item
    items[t]'s sessions are inv[ibounds[t] : ibounds[t + 1]], as indices into `uniq` (the
    batch's distinct session ids, ascending; `last`: their last event times). Returns the
    candidates (those indices; user 0's first, in no particular order within a user), their
    user, and STAN's recency of each, exp(−max(now_u[u] − last, 0) / l2_ms)."""
    for t in range(len(items)):
        slot[items[t]] = t
    n_users = len(n_u)
    total = 0
    for u in range(n_users):
        m = 0
        for p in range(n_u[u]):
            t = slot[cur_m[u, p]]
            m += ibounds[t + 1] - ibounds[t]
        total += min(m, max(sample, 0))
    cand = np.empty(total, np.int64)
    su = np.empty(total, np.int64)
    recency = np.empty(total)
    mark = np.full(len(last), -1, np.int64)  # the last user that took the session
    buf = np.empty(len(last), np.int64)
    n = 0
    for u in range(n_users):
        m = 0
        o = np.searchsorted(uniq, own[u])
        if o < len(uniq) and uniq[o] == own[u]:
            mark[o] = u
        for p in range(n_u[u]):
            t = slot[cur_m[u, p]]
            for e in range(ibounds[t], ibounds[t + 1]):
                c = inv[e]
                if mark[c] != u:
                    mark[c] = u
                    buf[m] = c
                    m += 1
        seg = buf[:m]
        if m > sample:
            seg = np.sort(seg)  # ascending by session id, then a stable sort by time
            seg = seg[np.argsort(last[seg], kind="mergesort")][m - max(sample, 0) :]
        for c in seg:
            cand[n] = c
            su[n] = u
            recency[n] = math.exp(-max(now_u[u] - last[c], 0) / l2_ms)
            n += 1
    for t in range(len(items)):
        slot[items[t]] = -1
    return cand[:n], su[:n], recency[:n]


@_njit
def similarities(
    cur_m: np.ndarray,
    n_u: np.ndarray,
    su: np.ndarray,
    starts: np.ndarray,
    sizes: np.ndarray,
    flat: np.ndarray,
    w_v: np.ndarray,
    w_s: np.ndarray,
    recency: np.ndarray,
    slot: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """V-SKNN's and STAN's similarity of each candidate session c (of user su[c]; its distinct
    items flat[starts[c] : starts[c] + sizes[c]]) with its user's current session (row su[c] of
    `cur_m`, its first n_u entries, distinct): the weights (row su[c] of w_v, w_s) of the
    positions it holds, added in position order from 0.0; STAN's divided by √(n·|c|), times
    recency[c]. Candidates grouped by user are cheapest (the lookup is set once a group)."""
    m = len(su)
    sim_v = np.zeros(m)
    sim_s = np.zeros(m)
    held = np.empty(cur_m.shape[1], np.int64)  # the positions a candidate holds, ascending
    u = -1
    for c in range(m):
        if su[c] != u:
            if u >= 0:
                for p in range(n_u[u]):
                    slot[cur_m[u, p]] = -1
            u = su[c]
            for p in range(n_u[u]):
                slot[cur_m[u, p]] = p
        h = 0
        for i in range(starts[c], starts[c] + sizes[c]):
            p = slot[flat[i]]
            if p >= 0:  # a few of them: an insertion
                j = h
                while j > 0 and held[j - 1] > p:
                    held[j] = held[j - 1]
                    j -= 1
                held[j] = p
                h += 1
        sv = 0.0
        ss = 0.0
        for j in range(h):
            sv += w_v[u, held[j]]
            ss += w_s[u, held[j]]
        sim_v[c] = sv
        sim_s[c] = ss / math.sqrt(n_u[u] * sizes[c]) * recency[c]
    if u >= 0:
        for p in range(n_u[u]):
            slot[cur_m[u, p]] = -1
    return sim_v, sim_s


@_njit
def _better(a: int, b: int, sim: np.ndarray, sid: np.ndarray) -> bool:
    """Candidate a before b: the higher similarity, equal: the larger session id."""
    return sim[a] > sim[b] or (sim[a] == sim[b] and sid[a] > sid[b])


@_njit
def _sift_down(heap: np.ndarray, h: int, sim: np.ndarray, sid: np.ndarray) -> None:
    """Restore the heap's order (the worst candidate at the root) after its root changed."""
    i = 0
    while True:
        w = i
        left = 2 * i + 1
        if left < h and _better(heap[w], heap[left], sim, sid):
            w = left
        if left + 1 < h and _better(heap[w], heap[left + 1], sim, sid):
            w = left + 1
        if w == i:
            return
        heap[i], heap[w] = heap[w], heap[i]
        i = w


@_njit
def _insert_best(
    cands: np.ndarray, k: int, sim: np.ndarray, sid: np.ndarray, pick: np.ndarray, n: int, per: int
) -> int:
    """The k best of `cands` (`_better`'s order), best first, into pick[n:], by insertion into
    the best so far from its worst end, `cands` taken from the last; returns the end of them,
    or -1 once the insertions have moved more than per·(candidates so far) + 8k entries (an
    order that makes insertion quadratic)."""
    o = n
    budget = 8 * k
    for q in range(len(cands) - 1, -1, -1):
        budget += per
        c = cands[q]
        if o - n == k:
            if k == 0 or not _better(c, pick[o - 1], sim, sid):
                continue
            o -= 1  # the k-th goes
        j = o
        while j > n and _better(c, pick[j - 1], sim, sid):
            pick[j] = pick[j - 1]
            j -= 1
        pick[j] = c
        budget -= o - j
        o += 1
        if budget < 0:
            return -1
    return o


@_njit
def _heap_best(
    cands: np.ndarray, k: int, sim: np.ndarray, sid: np.ndarray, pick: np.ndarray, n: int, heap: np.ndarray
) -> int:
    """`_insert_best` by a heap of the k best so far (the worst of them at the root): m·log k
    whatever the order."""
    h = 0
    for q in range(len(cands) - 1, -1, -1):
        c = cands[q]
        if h < k:
            heap[h] = c  # sift up
            i = h
            h += 1
            while i > 0 and _better(heap[(i - 1) // 2], heap[i], sim, sid):
                heap[i], heap[(i - 1) // 2] = heap[(i - 1) // 2], heap[i]
                i = (i - 1) // 2
        elif k > 0 and _better(c, heap[0], sim, sid):
            heap[0] = c
            _sift_down(heap, h, sim, sid)
    take = h
    while h > 0:  # the worst first, to the back
        h -= 1
        pick[n + h] = heap[0]
        heap[0] = heap[h]
        _sift_down(heap, h, sim, sid)
    return n + take


@_njit
def top_k(sim: np.ndarray, sid: np.ndarray, su: np.ndarray, n_users: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's k most similar candidates with a similarity above 0, best first (equal: the
    larger session id, the newer session): indices into the candidates, user 0's first, and
    each user's range of them (n_users + 1 bounds). A user's session ids are distinct, so the
    order is total: keeping the k best so far selects what a sort would. By insertion (a third
    cheaper than a heap on bench/e2e's stream: taken from the back, `candidates`' newer
    sessions first, most fall below the k-th at once or move a few places); a user whose order
    makes the insertions move too many is done again by a heap, m·log k whatever the order."""
    k = max(k, 0)
    m = len(sim)
    counts = np.zeros(n_users + 1, np.int64)
    for c in range(m):
        if sim[c] > 0.0:
            counts[su[c] + 1] += 1
    begin = np.cumsum(counts)  # begin[u]: where user u's candidates start in `by_user`
    fill = begin[:-1].copy()
    by_user = np.empty(begin[-1], np.int64)
    for c in range(m):
        if sim[c] > 0.0:
            by_user[fill[su[c]]] = c
            fill[su[c]] += 1
    pick = np.empty(min(len(by_user), n_users * k), np.int64)
    bounds = np.zeros(n_users + 1, np.int64)
    heap = np.empty(k, np.int64)
    n = 0
    for u in range(n_users):
        cands = by_user[begin[u] : begin[u + 1]]
        end = _insert_best(cands, k, sim, sid, pick, n, 32)
        n = end if end >= 0 else _heap_best(cands, k, sim, sid, pick, n, heap)
        bounds[u + 1] = n
    return pick[:n], bounds


@_njit
def head(sums: np.ndarray, a: int, b: int, h: int, order: np.ndarray, o: int) -> int:
    """The best h of sums[a:b] in the order of a stable descending sort (equal: the earlier
    first), as indices into `sums`, into order[o:]; returns the end of them. An insertion into
    the best so far: the sums come in the order of their first vote, roughly best first, so
    most fall below the h-th at once."""
    start = o
    for i in range(a, b):
        v = sums[i]
        if o - start == h:
            if h == 0 or not v > sums[order[o - 1]]:  # equal: the earlier stays
                continue
            o -= 1  # the h-th goes
        j = o
        while j > start and v > sums[order[j - 1]]:
            order[j] = order[j - 1]
            j -= 1
        order[j] = i
        o += 1
    return o


@_njit
def _vote(it: int, v: float, acc: np.ndarray, ids: np.ndarray, sums: np.ndarray, n: int) -> int:
    """Adds vote v to item it's sum (from 0.0; a new item takes place n, acc[it] its place);
    returns the next free place."""
    k = acc[it]
    if k < 0:
        k = n
        acc[it] = n
        ids[n] = it
        sums[n] = 0.0
        n += 1
    sums[k] += v
    return n


@_njit
def _end_user(
    acc: np.ndarray, ids: np.ndarray, sums: np.ndarray, first: int, n: int, h: int, order: np.ndarray, o: int
) -> int:
    """After a user's votes (places first .. n): clears their `acc` entries and appends their
    head to `order` (`head`); returns its new length."""
    for k in range(first, n):
        acc[ids[k]] = -1
    return head(sums, first, n, h, order, o)


@_njit
def vsknn_scores(
    pick: np.ndarray,
    bounds: np.ndarray,
    sim: np.ndarray,
    starts: np.ndarray,
    sizes: np.ndarray,
    flat: np.ndarray,
    acc: np.ndarray,
    h: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """V-SKNN's scores. User u's neighbours are pick[bounds[u] : bounds[u + 1]] (best first),
    each votes its similarity for each of its distinct items (flat[starts[c] :][: sizes[c]]);
    an item's votes are added one after the other from 0.0 in voting order. Returns the items
    in the order of their first vote, their sums, each user's range of them, and each user's
    best h (`head`) with their range."""
    h = max(h, 0)
    n_users = len(bounds) - 1
    total = 0
    for j in range(len(pick)):
        total += sizes[pick[j]]
    ids = np.empty(total, np.int64)
    sums = np.empty(total)
    ub = np.zeros(n_users + 1, np.int64)
    order = np.empty(min(total, n_users * h), np.int64)
    hb = np.zeros(n_users + 1, np.int64)
    n = 0
    o = 0
    for u in range(n_users):
        first = n
        for j in range(bounds[u], bounds[u + 1]):
            c = pick[j]
            v = sim[c]
            for i in range(starts[c], starts[c] + sizes[c]):
                n = _vote(flat[i], v, acc, ids, sums, n)
        ub[u + 1] = n
        o = _end_user(acc, ids, sums, first, n, h, order, o)
        hb[u + 1] = o
    return ids[:n], sums[:n], ub, order[:o], hb


@_njit
def stan_scores(
    bounds: np.ndarray,
    s: np.ndarray,
    seq: np.ndarray,
    seq_starts: np.ndarray,
    lens: np.ndarray,
    cur_m: np.ndarray,
    n_u: np.ndarray,
    w_s: np.ndarray,
    decay: np.ndarray,
    slot: np.ndarray,
    seen: np.ndarray,
    acc: np.ndarray,
    h: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """STAN's scores. User u's neighbours are bounds[u] .. bounds[u + 1] (best first; similarity
    s[b], item sequence seq[seq_starts[b] :][: lens[b]]). A neighbour votes once for each of its
    items, s · exp(−|distance to the anchor| / λ₃) (decay[n_u[u], distance]), where the anchor
    is its last position holding the current item of the highest weight (w_s row u; none:
    position 0) and an item seen twice takes its largest vote; votes of 0.0 are not cast; its
    items in the order of their first vote. An item's votes are added one after the other from
    0.0 in voting order. Returns what `vsknn_scores` does."""
    h = max(h, 0)
    n_users = len(bounds) - 1
    total = 0
    longest = 0
    for b in range(len(lens)):
        total += lens[b]
        longest = max(longest, lens[b])
    ids = np.empty(total, np.int64)
    sums = np.empty(total)
    ub = np.zeros(n_users + 1, np.int64)
    order = np.empty(min(total, n_users * h), np.int64)
    hb = np.zeros(n_users + 1, np.int64)
    mine = np.empty(longest, np.int64)  # a neighbour's items, in the order of their first vote
    best = np.empty(longest)  # and their votes
    n = 0
    o = 0
    for u in range(n_users):
        nu = n_u[u]
        for p in range(nu):
            slot[cur_m[u, p]] = p
        first = n
        for b in range(bounds[u], bounds[u + 1]):
            a0 = seq_starts[b]
            top = -np.inf
            anchor = 0
            for q in range(lens[b]):
                p = slot[seq[a0 + q]]
                if p >= 0 and w_s[u, p] >= top:  # `>=`: the last position at the highest weight
                    top = w_s[u, p]
                    anchor = q
            m = 0
            for q in range(lens[b]):
                v = decay[nu, abs(q - anchor)]
                if v > 0.0:
                    it = seq[a0 + q]
                    j = seen[it]
                    if j < 0:
                        seen[it] = m
                        mine[m] = it
                        best[m] = v
                        m += 1
                    elif v > best[j]:
                        best[j] = v
            for j in range(m):
                it = mine[j]
                seen[it] = -1
                n = _vote(it, s[b] * best[j], acc, ids, sums, n)
        for p in range(nu):
            slot[cur_m[u, p]] = -1
        ub[u + 1] = n
        o = _end_user(acc, ids, sums, first, n, h, order, o)
        hb[u + 1] = o
    return ids[:n], sums[:n], ub, order[:o], hb


@_njit
def log1p_each(x: np.ndarray) -> np.ndarray:
    """math.log1p of each element (the ranker's features): numba calls the C library's log1p,
    as math.log1p does; numpy's log1p may be another implementation, with other last bits."""
    out = np.empty(len(x))
    for j in range(len(x)):
        out[j] = math.log1p(x[j])
    return out


# Co-visitation (covisit.py): its rows as numba typed dicts (item id -> weight), in the order a
# Python dict of the same updates would have; these kernels do what its Python loops did,
# operation for operation, so weights, totals and every order stay the same to the last bit.
# Hand-written for the same reason as session-kNN's: no maintained package keeps co-visitation
# counts incrementally on a stream (the OTTO solutions' are batch pandas/cudf jobs).
_ROW = numba.types.DictType(numba.types.int64, numba.types.float64)


def new_rows() -> Any:
    """An empty map of rows: item id -> its row (item id -> weight)."""
    return numba.typed.Dict.empty(numba.types.int64, _ROW)


def new_totals() -> Any:
    """An empty map of row totals: item id -> float."""
    return numba.typed.Dict.empty(numba.types.int64, numba.types.float64)


@_njit
def _row_of(rows: Any, a: int) -> Any:
    """`rows[a]`, a new empty row there first if it has none."""
    if a not in rows:
        rows[a] = numba.typed.Dict.empty(numba.types.int64, numba.types.float64)
    return rows[a]


@_njit
def _bounded(rows: Any, a: int, max_row: int) -> int:
    """Row a keeps its `max_row` heaviest items, heaviest first (equal: the earlier first, as
    heapq.nlargest orders them); returns how many it dropped."""
    row = rows[a]
    m = len(row)
    keys = np.empty(m, np.int64)
    vals = np.empty(m, np.float64)
    for j, (k, v) in enumerate(row.items()):
        keys[j] = k
        vals[j] = v
    order = np.argsort(-vals, kind="mergesort")[:max_row]
    kept = numba.typed.Dict.empty(numba.types.int64, numba.types.float64)
    for o in order:
        kept[keys[o]] = vals[o]
    rows[a] = kept
    return m - max_row


@_njit
def _add(rows: Any, a: int, b: int, w: float, cap: int, max_row: int) -> tuple[int, int]:
    """Row a's entry b gains w (a new entry takes w); a row past `cap` is pruned. Returns (new
    entries, entries pruned)."""
    row = _row_of(rows, a)
    if b in row:
        row[b] = row[b] + w
        return 0, 0
    row[b] = w
    if len(row) > cap:
        return 1, _bounded(rows, a, max_row)
    return 1, 0


@_njit_holding_gil
def covisit_update(
    rows: Any,
    nexts: Any,
    tots: Any,
    buf_items: np.ndarray,
    buf_ts: np.ndarray,
    buf_len: np.ndarray,
    slots: np.ndarray,
    items: np.ndarray,
    ts: np.ndarray,
    fresh: np.ndarray,
    window: float,
    backward: float,
    max_row: int,
    max_pairs: int,
    pairs: int,
) -> tuple[int, int]:
    """CoVisitation.update_many's events (a user's buffer slot, item id, time; `fresh`: the
    slot's buffer starts empty): returns the pairs and rows held after them."""
    back = buf_items.shape[1]
    cap = 2 * max_row
    for k in range(len(items)):
        s, b, t = slots[k], items[k], ts[k]
        if fresh[k]:
            buf_len[s] = 0
        n = buf_len[s]
        if b in tots:  # b's row is now the most recently seen
            tots[b] = tots.pop(b)
        if n > 0 and buf_items[s, n - 1] == b:  # a reload or an action on the product on screen
            buf_ts[s, n - 1] = t
            continue
        new = 0
        has_b = False
        tot_b = 0.0
        for p in range(n - 1, -1, -1):
            d = n - p
            a = buf_items[s, p]
            if t - buf_ts[s, p] > window:
                break
            if a == b:
                continue
            met = False  # a later move of the buffer was this item (counted there)
            for q in range(p + 1, n):
                if buf_items[s, q] == a:
                    met = True
                    break
            if met:
                continue
            if d == 1:
                got, dropped = _add(nexts, a, b, 1.0, cap, max_row)
                new += got
                pairs -= dropped
            w = 1.0 / d
            got, dropped = _add(rows, a, b, w, cap, max_row)
            new += got
            pairs -= dropped
            tots[a] = tots.get(a, 0.0) + w
            if backward > 0:
                w = backward / d
                if not has_b:
                    has_b = True
                    _row_of(rows, b)
                    tot_b = tots.get(b, 0.0)
                    tots[b] = tot_b
                got, dropped = _add(rows, b, a, w, cap, max_row)
                new += got
                pairs -= dropped
                tot_b += w
        if has_b:
            tots[b] = tot_b
        pairs += new
        if back > 0:
            if n == back:
                for p in range(n - 1):
                    buf_items[s, p] = buf_items[s, p + 1]
                    buf_ts[s, p] = buf_ts[s, p + 1]
                n -= 1
            buf_items[s, n] = b
            buf_ts[s, n] = t
            buf_len[s] = n + 1
        while pairs > max_pairs:  # the row of the item least recently seen leaves
            oldest = -1
            for key in tots:
                oldest = key
                break
            del tots[oldest]
            pairs -= len(rows.pop(oldest))
            if oldest in nexts:
                pairs -= len(nexts.pop(oldest))
    return pairs, len(tots)


@_njit_holding_gil
def covisit_sum(
    rows: Any, tots: Any, recent: np.ndarray, normalize: bool, decay: float, acc: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Σ_j decay^j · w(a_j → i) over `recent` (a user's latest item first), each row divided by its
    total when `normalize`: the items in the order the sum meets them, and their sums (each from
    0.0, added row after row). `acc` (one int32 per item id, all -1) is left as found."""
    size = 0
    for a in recent:
        if a in rows:
            size += len(rows[a])
    ids = np.empty(size, np.int64)
    sums = np.empty(size, np.float64)
    n = 0
    w = 1.0
    for a in recent:
        if a in rows:
            row = rows[a]
            if len(row) > 0:
                f = w / tots[a] if normalize else w
                for b, v in row.items():
                    n = _vote(b, f * v, acc, ids, sums, n)  # session-kNN's vote: the same sum
        w *= decay
    for j in range(n):
        acc[ids[j]] = -1
    return ids[:n], sums[:n]


@_njit_holding_gil
def covisit_row(rows: Any, a: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Row a's items and weights in its order, and its total (added in that order, from 0.0)."""
    if a not in rows:
        return np.zeros(0, np.int64), np.zeros(0, np.float64), 0.0
    row = rows[a]
    ids = np.empty(len(row), np.int64)
    vals = np.empty(len(row), np.float64)
    total = 0.0
    for j, (k, v) in enumerate(row.items()):
        ids[j] = k
        vals[j] = v
        total += v
    return ids, vals, total


@_njit_holding_gil
def covisit_heads(
    rows: Any, nexts: Any, items: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The heads of `items`' rows, of `rows` then of `nexts` for each (head j = item j // 2's,
    of `nexts` when j is odd): each row's best `size` items (all when it holds no more) in
    `head`'s order (a stable descending sort) and their weights, head j's at bounds[j] ..
    bounds[j + 1]; each row's total (its weights added in its order, from 0.0) and length (0:
    no row; an id below 0 has none)."""
    k = 2 * len(items)
    lens = np.zeros(k, np.int64)
    for j in range(k):
        a = items[j // 2]
        table = nexts if j % 2 else rows
        if a >= 0 and a in table:
            lens[j] = len(table[a])
    bounds = np.zeros(k + 1, np.int64)
    for j in range(k):
        bounds[j + 1] = bounds[j] + min(lens[j], size)
    ids = np.empty(bounds[k], np.int64)
    vals = np.empty(bounds[k], np.float64)
    totals = np.zeros(k, np.float64)
    keys = np.empty(max(lens.max(), 1) if k else 1, np.int64)
    weights = np.empty(len(keys), np.float64)
    order = np.empty(max(size, 1), np.int64)
    for j in range(k):
        m = lens[j]
        if m == 0:
            continue
        row = nexts[items[j // 2]] if j % 2 else rows[items[j // 2]]
        total = 0.0
        for i, (key, v) in enumerate(row.items()):
            keys[i] = key
            weights[i] = v
            total += v
        totals[j] = total
        h = head(weights, 0, m, size, order, 0)
        for i in range(h):
            ids[bounds[j] + i] = keys[order[i]]
            vals[bounds[j] + i] = weights[order[i]]
    return ids, vals, bounds, totals, lens
