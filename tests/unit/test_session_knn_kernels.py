"""The session-kNN kernels (recsys/candidates/sources/kernels.py) against the numpy passes they
replaced: the same picks and the same floats to the last bit, the lookups left all -1."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recsys.candidates.sources import SessionKNN, kernels, load_kernels
from recsys.candidates.sources.covisit import CoVisitation
from recsys.data.datasets import load_events
from tests.conftest import require_dataset


def lexsort_top_k(sim: np.ndarray, sid: np.ndarray, su: np.ndarray, n_users: int, k: int) -> list[list[int]]:
    """prefetch's former top-k: a lexsort by (user, similarity, session id), each user's last k
    reversed."""
    ok = np.flatnonzero(sim > 0)
    o = ok[np.lexsort((sid[ok], sim[ok], su[ok]))]
    return [o[su[o] == u][::-1][: max(k, 0)].tolist() for u in range(n_users)]


@pytest.mark.parametrize("k", [0, 1, 3, 20, 1000])
def test_top_k_equals_the_lexsort(k: int) -> None:
    rng = np.random.default_rng(k)
    for _ in range(30):
        n_users = int(rng.integers(1, 8))
        m = int(rng.integers(0, 300))
        su = np.sort(rng.integers(0, n_users, m))  # grouped by user (as prefetch passes them) ...
        if rng.random() < 0.3:
            su = rng.integers(0, n_users, m)  # ... or not
        sid = np.empty(m, np.int64)
        for u in range(n_users):  # a user's session ids are distinct
            mine = np.flatnonzero(su == u)
            sid[mine] = rng.permutation(1000)[: len(mine)]
        sim = rng.integers(0, 6, m) / 4.0  # many ties, zeros among them (never picked)
        pick, bounds = kernels.top_k(sim, sid, su, n_users, k)
        got = [pick[bounds[u] : bounds[u + 1]].tolist() for u in range(n_users)]
        assert got == lexsort_top_k(sim, sid, su, n_users, k)


@pytest.mark.parametrize("k", [20, 100])
def test_top_k_by_heap_past_the_insertions_budget(k: int) -> None:
    """Each user's best candidate last (taken first, then every next one goes before all): past
    k = 32 (the moves a candidate may cost) the insertions give way to the heap, which picks
    the same."""
    rng = np.random.default_rng(k)
    su = np.repeat(np.arange(3), 400)
    sid = np.concatenate([rng.permutation(1000)[:400] for _ in range(3)]).astype(np.int64)
    sim = np.concatenate([-np.sort(-rng.integers(1, 50, 400) / 8.0) for _ in range(3)])  # ties too
    pick, bounds = kernels.top_k(sim, sid, su, 3, k)
    assert [pick[bounds[u] : bounds[u + 1]].tolist() for u in range(3)] == lexsort_top_k(sim, sid, su, 3, k)
    cands = np.arange(400, 800)
    out = np.empty(k, np.int64)
    ran_out = kernels._insert_best(cands, k, sim, sid, out, 0, 32) == -1  # noqa: SLF001
    assert ran_out == (k > 32)


@pytest.mark.parametrize("sample", [0, 1, 5, 40, 500])
def test_candidates_equal_the_union_the_lexsort_and_math_exp(sample: int) -> None:
    """Each user's candidates: the union of its current items' sessions but its own, of more
    than `sample` the newest by (time, session id) (prefetch's former lexsort); STAN's recency
    equal to math.exp's to the bit; the lookup left all -1."""
    rng = np.random.default_rng(sample)
    l2_ms = 86_400_000.0
    slot = np.full(30, -1, np.int32)
    for _ in range(30):
        uniq = np.sort(rng.permutation(2000)[: int(rng.integers(0, 300))]).astype(np.int64)
        last = 1_700_000_000_000 + rng.integers(0, 5, len(uniq)) * rng.integers(1, 10**9)  # ties in time
        items = rng.permutation(30)[: int(rng.integers(1, 12))].astype(np.int64)
        ses = [rng.permutation(len(uniq))[: int(rng.integers(0, 80))] for _ in items]
        ibounds = np.concatenate([[0], np.cumsum([len(e) for e in ses])]).astype(np.int64)
        inv = np.concatenate([np.zeros(0, np.int64), *ses]).astype(np.int64)
        n_users, L = int(rng.integers(1, 6)), 4
        n_u = rng.integers(1, min(L, len(items)) + 1, n_users).astype(np.int64)
        cur_m = np.full((n_users, L), -1, np.int64)
        for u in range(n_users):
            cur_m[u, : n_u[u]] = rng.permutation(items)[: n_u[u]]
        own = rng.choice(np.concatenate([uniq, [-1, 5000]]), n_users).astype(np.int64)
        now_u = 1_700_000_000_000 + rng.integers(0, 10**10, n_users)  # some before a session's last
        cand, cu, recency = kernels.candidates(
            cur_m, n_u, items, ibounds, inv, uniq, last, own, now_u, sample, l2_ms, slot
        )
        assert (slot == -1).all()
        assert np.all(np.diff(cu) >= 0)  # grouped by user, in the users' order
        where = {int(it): t for t, it in enumerate(items)}
        for u in range(n_users):
            union = set()
            for it in cur_m[u, : n_u[u]]:
                union.update(ses[where[int(it)]].tolist())
            union.discard(int(np.searchsorted(uniq, own[u])) if own[u] in uniq else -1)
            mine = sorted(union, key=lambda c: (last[c], uniq[c]))[len(union) - min(len(union), sample) :]
            assert sorted(cand[cu == u].tolist()) == sorted(mine)
        exp = [math.exp(-max(int(now_u[u]) - int(t), 0) / l2_ms) for u, t in zip(cu, last[cand], strict=True)]
        assert recency.tobytes() == np.array(exp).tobytes()


def added_in_order(votes: list[tuple[int, float]], h: int) -> tuple[list[int], bytes, list[int]]:
    """Votes summed per item one after the other from 0.0 (items in the order of their first
    vote), and the best h of them as a stable descending sort orders them (ties: voted first)."""
    out: dict[int, float] = {}
    for it, v in votes:
        out[it] = out.get(it, 0.0) + v
    sums = np.array(list(out.values()))
    return list(out), sums.tobytes(), np.argsort(-sums, kind="stable")[:h].tolist()


def check_scores(got: tuple[np.ndarray, ...], want: list[tuple[list[int], bytes, list[int]]]) -> None:
    ids, sums, ub, order, hb = got
    for u, (w_ids, w_sums, w_head) in enumerate(want):
        a, b = ub[u], ub[u + 1]
        assert ids[a:b].tolist() == w_ids
        assert sums[a:b].tobytes() == w_sums
        assert (order[hb[u] : hb[u + 1]] - a).tolist() == w_head


@pytest.mark.parametrize("h", [0, 1, 5, 32, 1000])
def test_vsknn_scores_equal_the_loops(h: int) -> None:
    rng = np.random.default_rng(h)
    acc = np.full(50, -1, np.int32)
    for _ in range(30):
        m = int(rng.integers(0, 40))
        sizes = rng.integers(1, 12, m).astype(np.int64)
        flat = np.concatenate([rng.permutation(50)[:z] for z in sizes] or [np.zeros(0, np.int64)]).astype(np.int64)
        starts = np.cumsum(sizes) - sizes
        sim = rng.integers(1, 8, m) / 8.0 * 10.0 ** rng.integers(-5, 5, m)  # ties; rounding depends on order
        n_users = int(rng.integers(1, 5))
        picks = [rng.permutation(m)[: int(rng.integers(0, m + 1))] for _ in range(n_users)]
        pick = np.concatenate([np.zeros(0, np.int64), *picks]).astype(np.int64)
        bounds = np.concatenate([[0], np.cumsum([len(q) for q in picks])]).astype(np.int64)
        got = kernels.vsknn_scores(pick, bounds, sim, starts, sizes, flat, acc, h)
        assert (acc == -1).all()
        want = [
            added_in_order([(it, sim[c]) for c in q for it in flat[starts[c] : starts[c] + sizes[c]].tolist()], h)
            for q in picks
        ]
        check_scores(got, want)


@pytest.mark.parametrize("h", [0, 1, 5, 32, 1000])
def test_stan_scores_equal_the_loops(h: int) -> None:
    rng = np.random.default_rng(h)
    lookups = np.full((3, 50), -1, np.int32)
    L = 5
    for _ in range(30):
        n_users = int(rng.integers(1, 5))
        n_u = rng.integers(1, L + 1, n_users).astype(np.int64)
        cur_m = np.full((n_users, L), -1, np.int64)
        for u in range(n_users):
            cur_m[u, : n_u[u]] = rng.permutation(50)[: n_u[u]]
        w_s = rng.integers(1, 4, (n_users, L)) / 4.0  # ties: the last position of the highest weight
        counts = rng.integers(0, 6, n_users)
        bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        lens = rng.integers(1, 15, int(counts.sum())).astype(np.int64)
        seq = rng.integers(0, 50, int(lens.sum())).astype(np.int64)  # items repeat within a sequence
        seq_starts = np.cumsum(lens) - lens
        sims = rng.random(len(lens)) * 10.0 ** rng.integers(-5, 5, len(lens))
        decay = rng.random((L + 1, int(lens.max(initial=1))))
        decay[decay < 0.2] = 0.0  # votes of 0.0 are not cast
        got = kernels.stan_scores(bounds, sims, seq, seq_starts, lens, cur_m, n_u, w_s, decay, *lookups, h)
        assert (lookups == -1).all()
        want = []
        for u in range(n_users):
            cur = cur_m[u, : n_u[u]].tolist()
            votes: list[tuple[int, float]] = []
            for b in range(bounds[u], bounds[u + 1]):
                items = seq[seq_starts[b] : seq_starts[b] + lens[b]].tolist()
                held = [(w_s[u, cur.index(it)], q) for q, it in enumerate(items) if it in cur]
                anchor = max(held)[1] if held else 0
                best: dict[int, float] = {}
                for q, it in enumerate(items):
                    v = decay[n_u[u], abs(q - anchor)]
                    if v > best.get(it, 0.0):
                        best[it] = v
                votes += [(it, sims[b] * v) for it, v in best.items()]
            want.append(added_in_order(votes, h))
        check_scores(got, want)


def test_similarities_equal_the_cumsum() -> None:
    rng = np.random.default_rng(2)
    L, n_items = 6, 40
    slot = np.full(n_items, -1, np.int32)
    for _ in range(30):
        n_users = int(rng.integers(1, 5))
        n_u = rng.integers(1, L + 1, n_users).astype(np.int64)
        cur_m = np.full((n_users, L), -1, np.int64)
        for u in range(n_users):
            cur_m[u, : n_u[u]] = rng.permutation(n_items)[: n_u[u]]
        m = int(rng.integers(0, 60))
        su = np.sort(rng.integers(0, n_users, m))
        sizes = rng.integers(1, 12, m).astype(np.int64)
        flat = np.concatenate([rng.permutation(n_items)[:s] for s in sizes] or [np.zeros(0, np.int64)])
        starts = np.cumsum(sizes) - sizes
        inside = np.arange(L)[None, :] < n_u[:, None]
        w_v = np.where(inside, rng.random((n_users, L)) * 10.0 ** rng.integers(-4, 4, (n_users, L)), 0.0)
        w_s = np.where(inside, rng.random((n_users, L)), 0.0)
        recency = rng.random(m)
        sim_v, sim_s = kernels.similarities(
            cur_m, n_u, su, starts, sizes, flat.astype(np.int64), w_v, w_s, recency, slot
        )
        assert (slot == -1).all()
        member = np.zeros((m, L), bool)
        for c in range(m):
            member[c] = np.isin(cur_m[su[c]], flat[starts[c] : starts[c] + sizes[c]]) & inside[su[c]]
        want_v = np.cumsum(member * w_v[su], axis=1)[:, -1] if m else np.zeros(0)
        want_s = np.cumsum(member * w_s[su], axis=1)[:, -1] / np.sqrt(n_u[su] * sizes) * recency if m else np.zeros(0)
        assert sim_v.tobytes() == want_v.tobytes()
        assert sim_s.tobytes() == want_s.tobytes()


def test_load_kernels_compiles_what_the_batches_call() -> None:
    """The worker's warm-up (`load_kernels`) leaves nothing to compile for its batches: one
    signature a kernel, the one a prefetch over real sessions uses, and co-visitation's over
    the same events (its update, a user's top, a batch's rows and a row past them)."""
    load_kernels()
    entries = (
        kernels.candidates,
        kernels.similarities,
        kernels.top_k,
        kernels.vsknn_scores,
        kernels.stan_scores,
        kernels.covisit_update,
        kernels.covisit_sum,
        kernels.covisit_heads,
        kernels.head,
    )
    after_load = [list(k.signatures) for k in entries]
    knn, cv = SessionKNN(), CoVisitation()
    events = sorted(load_events(require_dataset("yoochoose")), key=lambda e: e.ts)[-2000:]
    for e in events:
        knn.update(e)
    cv.update_many(events)
    users = list(dict.fromkeys(e.user for e in events[-60:]))
    knn.prefetch(users, [events[-1].ts] * len(users))
    for u in users:
        cv.top(u, 20, set())
    cv.prefetch([e.item for e in events[-60:]])
    cv.shares(events[-1].item, 500, set())
    assert [list(k.signatures) for k in entries] == after_load
    assert all(len(sigs) == 1 for sigs in after_load[:-1])


def test_load_kernels_compiles_top_items_insertion() -> None:
    """`top_items`' insertion (a long source list, e.g. a user's own items) reads a read-only array, a signature
    of its own that `load_kernels` compiles too; in a fresh interpreter, so that no other test
    has compiled it first."""
    code = (
        "from recsys.candidates.sources import kernels\n"
        "from recsys.candidates.sources.base import top_items\n"
        "from recsys.candidates.sources import load_kernels\n"
        "load_kernels()\n"
        "head = list(kernels.head.signatures)\n"
        "top_items({f'i{k}': float(k % 37) for k in range(1000)}, 20)\n"
        "assert list(kernels.head.signatures) == head, (head, kernels.head.signatures)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
