"""The stream baselines' sources (recsys/candidates/sources/): hand-checked scores, and the
streaming evaluation computes their lists from the state before each event only."""

from __future__ import annotations

import heapq
import itertools
import math
from array import array
from collections import deque
from collections.abc import Sequence
from itertools import islice

import numpy as np
import pytest

from recsys.candidates.ranker import ItemStats
from recsys.candidates.sources import (
    CategoryPopularity,
    CoVisitation,
    SessionKNN,
    Sources,
    SourcesConfig,
    kernels,
    top_items,
)
from recsys.catalogue import ItemMask
from recsys.confidence import ConfidenceConfig, UserProfile
from recsys.data.datasets import load_dataset, load_events, time_split
from recsys.evaluation.streaming import StreamEvalConfig, stream_evaluate
from recsys.events import Event
from tests.conftest import require_dataset

H = 3_600_000


def ev(user: str, item: str, ts: int) -> Event:
    return Event(user, item, "view", ts)


def test_covisitation_counts_next_and_together_within_the_window() -> None:
    cv = CoVisitation(SourcesConfig(covisit_backward=0.5, covisit_window_s=3600, covisit_recent=1))
    for e in [ev("u", "a", 0), ev("u", "b", 1000), ev("u", "b", 2000), ev("u", "c", 3000), ev("u", "d", 2 * H)]:
        cv.update(e)
    # a->b 1 (next), a->c 1/2 (two moves on; the reload of b is not a move), b->c 1; d is 2 h later
    assert cv.neighbours("a") == {"b": 1.0, "c": 0.5}
    assert cv.neighbours("c") == {"b": 0.5, "a": 0.25}
    assert "d" not in cv.neighbours("c")
    assert cv.scores("u") == {}  # d, the user's latest item, has no neighbours yet
    cv.update(ev("v", "a", 3 * H))
    assert cv.scores("v") == {"b": 1.0, "c": 0.5}


def test_category_popularity_lists_the_recent_favourites_of_the_users_last_categories() -> None:
    cat = CategoryPopularity(SourcesConfig(category_recent=2, category_half_life_s=3600))

    def seen(user: str, item: str, category: str | None, ts: int) -> None:
        cat.update(Event(user, item, "view", ts, category=category))

    # shoes: s1 twice two hours ago, s2 once now (the older counts are worth a quarter); bags: b1
    seen("x", "s1", "shoes", 0)
    seen("y", "s1", "shoes", 0)
    seen("x", "b1", "bags", 2 * H)
    seen("z", "s2", "shoes", 2 * H)
    seen("z", "h1", "hats", 2 * H)
    seen("w", "s3", None, 2 * H)  # its category comes from the catalogue instead
    cat.category["s3"] = "shoes"
    profile = UserProfile()
    for item in ("h1", "s1", "b1"):  # the user's latest items: bags, then shoes (hats is the third)
        profile.apply(Event("u", item, "view", 2 * H), ConfidenceConfig())
    assert cat.recent_categories(profile) == ["bags", "shoes"]
    top = cat.top(profile, 10, banned={"b1"})
    # b1 is banned: bags adds nothing; shoes weighs 0.5, each item by its count over the best's
    assert list(top) == ["s2", "s1"]
    assert top["s2"] == pytest.approx(0.5) and top["s1"] == pytest.approx(0.5 * 0.5 / 1.0)
    seen("v", "s3", None, 2 * H)
    assert "s3" in cat.top(profile, 10, banned=set())
    assert cat.top(None, 10, banned=set()) == {}


def test_vsknn_votes_with_position_weighted_overlap() -> None:
    knn = SessionKNN(SourcesConfig(current_len=2, session_gap_s=600, k=10))
    for e in [ev("n1", "a", 0), ev("n1", "x", 1), ev("n2", "b", 2), ev("n2", "y", 3), ev("n2", "a", 4)]:
        knn.update(e)
    knn.update(ev("u", "a", 10))
    knn.update(ev("u", "b", 11))
    # u's session [a, b]: weights a 1/2, b 2/2; n1 shares a (0.5), n2 shares a and b (1.5)
    s = knn.scores("u", "vsknn", now=11)
    assert s == {"a": 2.0, "x": 0.5, "b": 1.5, "y": 1.5}
    assert top_items(s, 2, {"a", "b"}) == ["y", "x"]


@pytest.mark.parametrize("size", [1, 5, 64, 160, 161, 400, 1500])
def test_top_items_is_a_stable_sort_with_ties_on_both_paths(size: int) -> None:
    """Below and above the plain sort's limit: many equal scores, some banned, every cut."""
    rng = np.random.default_rng(size)
    scores = {f"i{j}": float(rng.integers(1, 6)) / int(rng.integers(1, 4)) for j in range(size)}
    banned = {f"i{j}" for j in rng.choice(size, min(size, 3), replace=False)}
    ranked = [i for i in sorted(scores, key=lambda i: -scores[i]) if i not in banned]
    for n in (1, 20, 40, 253, 300, size):  # the compiled best-h up to 256 wanted, a partition past it
        assert top_items(scores, n, banned) == ranked[:n]


def test_stream_baselines_never_see_the_event_they_predict() -> None:
    """Every list a baseline showed is what a replay stopped just before that event shows:
    recompute each list from the training events plus the test events before it only."""
    events = load_dataset("taobao_small")
    train, test = time_split(events, test_fraction=0.2)
    test = test[:60]
    methods = ("covisit", "vsknn", "stan", "own-recent")
    ecfg = StreamEvalConfig(methods=("popularity", *methods), chunk_max=16)
    full = stream_evaluate(train, test, ecfg=ecfg, keep_lists=methods)
    ordered = sorted(test, key=lambda e: e.ts)
    for j in (5, 23, 41):
        upto = stream_evaluate(train, ordered[: j + 1], ecfg=ecfg, keep_lists=methods)
        target = ordered[j]
        last = [r for r in upto["events"] if (r["user"], r["item"], r["ts"]) == (target.user, target.item, target.ts)]
        same = [r for r in full["events"] if (r["user"], r["item"], r["ts"]) == (target.user, target.item, target.ts)]
        if last:
            assert last[-1]["lists"] == same[-1]["lists"]


def test_session_index_keeps_the_newest_sessions_only() -> None:
    cfg = SourcesConfig(max_sessions=2, session_gap_s=1.0)
    knn = SessionKNN(cfg)
    # three users, one session each, all sharing item "x": u1's is the oldest
    for t, (user, item) in enumerate([("u1", "a1"), ("u1", "x"), ("u2", "a2"), ("u2", "x"), ("u3", "a3"), ("u3", "x")]):
        knn.update(ev(user, item, 10_000 + t))
    knn.update(ev("q", "x", 20_000))  # the asking user's session pushes out one more
    votes = knn.scores("q", "vsknn")
    assert "a1" not in votes and "a2" not in votes  # evicted: out of every item's index
    assert votes.get("a3", 0) > 0
    assert "a1" not in knn.scores("u1", "vsknn")  # u1's own session is gone too


def test_a_sessions_items_and_distinct_items_past_the_scan_limit() -> None:
    """A session keeps its moves in order and its distinct items in first-seen order, whether
    membership is a scan (short sessions) or a dict (a bot's hundreds of items); an evicted
    long session leaves nothing behind."""
    knn = SessionKNN(SourcesConfig(max_sessions=1))
    moves = [f"i{(7 * k) % 150}" for k in range(400)]  # 150 distinct items, each seen again
    for t, item in enumerate(moves):
        knn.update(ev("bot", item, 1_000 + t))
    ids = knn._id  # noqa: SLF001 - the session's stored items, decoded
    (sid,) = knn._items  # noqa: SLF001
    assert memoryview(knn._items[sid]).cast("q").tolist() == [ids[i] for i in moves]  # noqa: SLF001
    first_seen = [ids[i] for i in dict.fromkeys(moves)]
    assert memoryview(knn._distinct[sid]).cast("q").tolist() == first_seen  # noqa: SLF001
    knn.update(ev("other", "i1", 10**9))  # a new session evicts the bot's
    assert sid not in knn._items and not knn._long  # noqa: SLF001


def test_per_user_buffers_keep_the_most_recently_active_users() -> None:
    cv = CoVisitation(SourcesConfig(max_users=2))
    cv.update(ev("u1", "a", 1000))
    cv.update(ev("u2", "b", 1001))
    cv.update(ev("u1", "a2", 1002))  # u1 active again: u2 is now the least recent
    cv.update(ev("u3", "c", 1003))  # evicts u2
    cv.update(ev("u2", "b2", 1004))  # u2 starts over: no b -> b2 move is counted
    assert cv.neighbours("b") == {}
    assert cv.neighbours("a") == {"a2": 1.0}
    assert cv.scores("u1") == {}  # u1 was the least recently active when u2 came back


def test_covisitation_rows_are_pruned_to_their_heaviest_items() -> None:
    cv = CoVisitation(SourcesConfig(covisit_max_row=2, covisit_backward=0.0))
    t = 1000
    for k, item in enumerate(["b1", "b2", "b3", "b4", "b5"]):
        for _ in range(k + 1):  # b5 follows a most often
            cv.update(ev("u", "a", t))
            cv.update(ev("u", item, t + 1))
            t += 10
    row = cv.neighbours("a")
    assert len(row) <= 4  # pruned to 2 once it held more than 4
    assert "b5" in row and "b4" in row


class LoopSessionKNN(SessionKNN):
    """SessionKNN's scores as they were written before its array code: plain loops over the
    neighbours, on the same session store."""

    def _candidate_sessions(self, user: str, cur: list[int]) -> set[int]:
        """Each current item's latest `sample` sessions, the user's ongoing one excepted."""
        cand: set[int] = set()
        for it in reversed(cur):
            by = self._by_item.get(it)
            if by:
                cand.update(islice(reversed(by), self.cfg.sample))
        cand.discard(self._user_sess.get(user, (-1, 0))[0])
        return cand

    def _neighbours(self, user: str, cur: list[int]) -> list[int]:
        cand = self._candidate_sessions(user, cur)
        if len(cand) > self.cfg.sample:
            last = self._last
            return heapq.nlargest(self.cfg.sample, cand, key=lambda s: (last[s], s))
        return list(cand)

    def scores(self, user: str, method: str = "vsknn", now: int | None = None) -> dict[str, float]:
        cur = [self._id[i] for i in self.recent.items(user, self.cfg.current_len)]
        if not cur:
            return {}
        n = len(cur)
        stan = method == "stan"
        if stan:
            l1 = self.cfg.stan_l1 or n
            w1 = {it: math.exp((p + 1 - n) / l1) for p, it in enumerate(cur)}
        else:
            w1 = {it: (p + 1) / n for p, it in enumerate(cur)}
        t_now = now if now is not None else max(self._last.values()) if self._last else 0
        l2_ms = self.cfg.stan_l2_s * 1000.0
        sims: list[tuple[float, int]] = []
        for sid in self._neighbours(user, cur):
            nset = dict.fromkeys(memoryview(self._distinct[sid]).cast("q"))  # the session's distinct items
            s = sum(w for it, w in w1.items() if it in nset)
            if s <= 0:
                continue
            if stan:
                s = s / math.sqrt(n * len(nset)) * math.exp(-max(t_now - self._last[sid], 0) / l2_ms)
            sims.append((s, sid))
        best = heapq.nlargest(self.cfg.k, sims)
        out: dict[int, float] = {}
        if not stan:
            for s, sid in best:
                for it in memoryview(self._distinct[sid]).cast("q"):
                    out[it] = out.get(it, 0.0) + s
        else:
            l3 = self.cfg.stan_l3 or n
            for s, sid in best:
                seq = memoryview(self._items[sid]).cast("q").tolist()
                # the neighbour's position of the shared item the asking user touched last
                anchor, anchor_w = 0, -1.0
                for p, it in enumerate(seq):
                    w = w1.get(it)
                    if w is not None and w >= anchor_w:
                        anchor, anchor_w = p, w
                seen: dict[int, float] = {}
                for p, it in enumerate(seq):
                    v = math.exp(-abs(p - anchor) / l3)
                    if v > seen.get(it, 0.0):
                        seen[it] = v
                for it, v in seen.items():
                    out[it] = out.get(it, 0.0) + s * v
        return {self._name[i]: v for i, v in out.items()}


@pytest.mark.parametrize("dataset", ["yoochoose", "taobao_small", "rees46_small"])
def test_session_knn_and_top_items_equal_the_plain_loops_on_real_data(dataset: str) -> None:
    """The array code's scores are the loops' to the last bit, in the same insertion order, and
    top_items orders as a stable sort does (ties: scored first): the lists never change."""
    events = sorted(load_events(require_dataset(dataset)), key=lambda e: e.ts)[-3000:]
    cfg = SourcesConfig(sample=60, k=20)  # small: candidates get cut on these slices too
    knn, loops = SessionKNN(cfg), LoopSessionKNN(cfg)
    compared = 0
    for j, e in enumerate(events):
        if j >= 1000 and j % 4 == 0:
            for method in ("vsknn", "stan"):
                got = knn.scores(e.user, method, e.ts)
                want = loops.scores(e.user, method, e.ts)
                assert list(got.items()) == list(want.items())
                for n in (1, 10, 100):
                    ref = [i for i in sorted(want, key=lambda i: -want[i]) if i != e.item][:n]
                    assert top_items(got, n, {e.item}) == ref
                compared += bool(got)
        knn.update(e)
        loops.update(e)
    assert compared > 200


def loop_covisit_scores(cv: CoVisitation, user: str) -> dict[str, float]:
    """Co-visitation scores added item by item (the reference for CoVisitation.scores; rows not
    normalised)."""
    out: dict[str, float] = {}
    w = 1.0
    for a in reversed(cv.recent.items(user, cv.cfg.covisit_recent)):
        row = cv.neighbours(a)
        if row:
            for b, v in row.items():
                out[b] = out.get(b, 0.0) + w * v
        w *= cv.cfg.covisit_decay
    return out


@pytest.mark.parametrize("dataset", ["yoochoose", "taobao_small", "rees46_small"])
def test_covisitation_scores_equal_adding_item_by_item(dataset: str) -> None:
    """Scores, bits and insertion order (top_items' ties), equal the item-by-item sums."""
    events = sorted(load_events(require_dataset(dataset)), key=lambda e: e.ts)[-3000:]
    cv = CoVisitation(SourcesConfig(covisit_max_row=50))
    compared = 0
    for j, e in enumerate(events):
        if j >= 500 and j % 3 == 0:
            got, want = cv.scores(e.user), loop_covisit_scores(cv, e.user)
            assert list(got.items()) == list(want.items())
            compared += len(cv.recent.items(e.user, cv.cfg.covisit_recent)) > 1 and bool(got)
        cv.update(e)
    assert compared > 100


def plain_top(cv: CoVisitation, user: str, n: int, banned: set[str], mask: ItemMask | None) -> dict[str, float]:
    """The user's whole co-visitation sum, filtered, cut to its best n (CoVisitation.top's reference)."""
    scores = cv.scores(user)
    if mask is not None:
        scores = {i: v for i, v in scores.items() if mask.allows(i)}
    return {i: scores[i] for i in top_items(scores, n, banned)}


@pytest.mark.parametrize("normalize", [False, True])
def test_covisitation_top_equals_the_whole_sum_cut(normalize: bool) -> None:
    """Items, score bits and order (ties too: small integer weights tie often) equal the whole
    sum's best n, with banned items and a mask; n from 1 to past the rows' items (and past the
    best n + banned, where a mask refuses many); read twice between updates and again after."""
    rng = np.random.default_rng(5)
    cfg = SourcesConfig(covisit_max_row=120, covisit_normalize=normalize, covisit_recent=3)
    cv = CoVisitation(cfg)
    items = [f"i{k}" for k in range(300)]
    weights = 1.0 / np.arange(1, 301) ** 0.7
    mask = ItemMask(np.zeros(0, bool), _allows=lambda i: not i.endswith("7"))
    compared = 0
    for j in range(12000):
        user = f"u{rng.integers(200)}"
        cv.update(ev(user, items[rng.choice(300, p=weights / weights.sum())], j))
        if j % 60 == 0 and j > 2000:
            for _ in range(2):  # the heads a batch shares
                u = f"u{rng.integers(200)}"
                banned = set(cv.recent.items(u, 5)) | {items[int(k)] for k in rng.integers(0, 20, 3)}
                for n, m in ((1, None), (10, mask), (40, None), (100, mask), (500, None)):
                    got = cv.top(u, n, banned, m)
                    want = plain_top(cv, u, n, banned, m)
                    assert list(got.items()) == list(want.items())
                    compared += len(want) == n
    assert compared > 300


@pytest.mark.parametrize("dataset", ["yoochoose", "taobao_small", "rees46_small"])
def test_covisitation_top_equals_the_whole_sum_cut_on_real_data(dataset: str) -> None:
    """As above on real streams."""
    events = sorted(load_events(require_dataset(dataset)), key=lambda e: e.ts)[-4000:]
    cv = CoVisitation(SourcesConfig())
    compared = 0
    for j, e in enumerate(events):
        if j >= 500 and j % 3 == 0:
            banned = set(cv.recent.items(e.user, 10))
            for n in (3, 40):
                got, want = cv.top(e.user, n, banned), plain_top(cv, e.user, n, banned, None)
                assert list(got.items()) == list(want.items())
            compared += len(cv.recent.items(e.user, cv.cfg.covisit_recent)) > 1 and bool(want)
        cv.update(e)
    assert compared > 100


def plain_shares(row: dict[str, float], n: int, banned: set[str]) -> tuple[list[tuple[str, float]], float]:
    """A row's best n items minus banned as shares of its total, summed and sorted in place."""
    total = sum(row.values())
    return [(i, row[i] / (total or 1.0)) for i in top_items(row, n, banned)], total


def test_covisitation_shares_read_the_row_as_it_is_after_an_update() -> None:
    """A row's head is kept between updates only: one event that changes a row's order and
    total shows in the next read."""
    cv = CoVisitation(SourcesConfig(covisit_backward=0.0))
    for j, item in enumerate(["b", "c", "d"]):
        cv.update(ev(f"u{j}", "a", 10 * j))
        cv.update(ev(f"u{j}", item, 10 * j + 1))
    assert cv.shares("a", 2, set()) == ({"b": 1 / 3, "c": 1 / 3}, 3.0)
    assert cv.shares("a", 2, {"b"}) == ({"c": 1 / 3, "d": 1 / 3}, 3.0)  # the same head, read again
    cv.update(ev("v", "a", 100))
    cv.update(ev("v", "d", 101))
    assert cv.shares("a", 2, set()) == ({"d": 0.5, "b": 0.25}, 4.0)
    assert cv.shares("a", 2, set(), following=True) == ({"d": 0.5, "b": 0.25}, 4.0)
    assert cv.shares("zz", 2, set()) == ({}, 0)


def test_covisitation_shares_equal_summing_and_sorting_the_row() -> None:
    """Shares and totals, bits and order, equal the row summed and sorted at each read: rows of
    every size (pruned ones too), read several times between two updates (a batch) and again
    after them."""
    rng = np.random.default_rng(3)
    cv = CoVisitation(SourcesConfig(covisit_max_row=150))
    items = [f"i{k}" for k in range(400)]
    weights = 1.0 / np.arange(1, 401)
    compared = 0
    for j in range(8000):
        user = f"u{rng.integers(300)}"
        cv.update(ev(user, items[rng.choice(400, p=weights / weights.sum())], j))
        if j % 50 == 0:
            batch = [items[k] for k in rng.integers(0, 40, 6)]
            for item, following in itertools.product(batch, (False, True)):
                row = cv.next_items(item) if following else cv.neighbours(item)
                for n, banned in ((40, {item, batch[0]}), (5, set()), (300, {items[0]})):
                    got, total = cv.shares(item, n, banned, following)
                    want, want_total = plain_shares(row, n, banned)
                    assert list(got.items()) == want and total == want_total
                compared += len(row) > 160
    assert compared > 100


class AddCoVisitation:
    """Co-visitation's update as first written, on Python dicts, with a call per pair (the
    reference for the compiled update: rows, totals and users in the same orders)."""

    def __init__(self, cfg: SourcesConfig):
        self.cfg = cfg
        self._buf: dict[str, deque[tuple[str, int]]] = {}
        self._w: dict[str, dict[str, float]] = {}
        self._next: dict[str, dict[str, float]] = {}
        self._tot: dict[str, float] = {}
        self.pairs = 0

    def neighbours(self, item: str) -> dict[str, float]:
        return self._w.get(item, {})

    def next_items(self, item: str) -> dict[str, float]:
        return self._next.get(item, {})

    def sizes(self) -> dict[str, int]:
        return {"covisit_pairs": self.pairs, "covisit_rows": len(self._tot), "covisit_users": len(self._buf)}

    def _bounded(self, rows: dict[str, dict[str, float]], a: str, row: dict[str, float]) -> None:
        rows[a] = dict(heapq.nlargest(self.cfg.covisit_max_row, row.items(), key=lambda kv: kv[1]))
        self.pairs -= len(row) - self.cfg.covisit_max_row

    def _add(self, a: str, b: str, w: float) -> int:
        row = self._w.get(a)
        if row is None:
            row = self._w[a] = {}
        n = len(row)
        row[b] = row.get(b, 0.0) + w
        self._tot[a] = self._tot.get(a, 0.0) + w
        if len(row) > 2 * self.cfg.covisit_max_row:
            self._bounded(self._w, a, row)
        return len(row) - n

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
        if buf and buf[-1][0] == b:
            buf[-1] = (b, e.ts)
            return
        done: set[str] = {b}
        new = 0
        for d, (a, ta) in enumerate(reversed(buf), 1):
            if e.ts - ta > self.cfg.covisit_window_s * 1000.0:
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
                if len(row) > 2 * self.cfg.covisit_max_row:
                    self._bounded(self._next, a, row)
            new += self._add(a, b, 1.0 / d)
            if self.cfg.covisit_backward > 0:
                new += self._add(b, a, self.cfg.covisit_backward / d)
        buf.append((b, e.ts))
        self.pairs += new
        while self.pairs > self.cfg.covisit_max_pairs:
            a = next(iter(self._tot))
            del self._tot[a]
            self.pairs -= len(self._w.pop(a)) + len(self._next.pop(a, ()))


@pytest.mark.parametrize("dataset", ["yoochoose", "taobao_small", "rees46_small"])
@pytest.mark.parametrize(
    "cfg",
    [SourcesConfig(), SourcesConfig(covisit_max_row=8, covisit_max_pairs=3000, max_users=200)],
    ids=["defaults", "pruned"],
)
def test_covisitation_update_equals_a_call_per_pair(dataset: str, cfg: SourcesConfig) -> None:
    """Every item's row and next moves (items, weights, order) and the sizes equal the update
    with a call per pair, every 500 events; "pruned" drops whole rows (the least recently seen
    first), so the rows still there show the same order of the totals."""
    events = sorted(load_events(require_dataset(dataset)), key=lambda e: e.ts)[-6000:]
    cv, ref = CoVisitation(cfg), AddCoVisitation(cfg)
    seen: dict[str, None] = {}
    for j, e in enumerate(events, 1):
        cv.update(e)
        ref.update(e)
        seen[e.item] = None
        if j % 500 == 0:
            assert cv.sizes() == ref.sizes()
            for i in seen:
                assert list(cv.neighbours(i).items()) == list(ref.neighbours(i).items())
                assert list(cv.next_items(i).items()) == list(ref.next_items(i).items())


class CountingSessionKNN(SessionKNN):
    alone = 0  # batches of one user (`score_arrays` of a user not prefetched)

    def prefetch(self, users: Sequence[str], nows: Sequence[int]) -> None:
        self.alone += len(users) == 1
        super().prefetch(users, nows)


@pytest.mark.parametrize("dataset", ["yoochoose", "taobao_small", "rees46_small"])
@pytest.mark.parametrize("cfg", [SourcesConfig(sample=60, k=20), SourcesConfig()], ids=["capped", "defaults"])
def test_session_knn_prefetched_for_a_batch_equals_one_user_at_a_time(dataset: str, cfg: SourcesConfig) -> None:
    """`prefetch` (a batch of users' V-SKNN and STAN scores at once, as the worker asks) gives
    each user the arrays a batch of that user alone gives (`score_arrays` of a user not
    prefetched), to the last bit and in the same order."""
    events = sorted(load_events(require_dataset(dataset)), key=lambda e: e.ts)[-3000:]
    knn = CountingSessionKNN(cfg)
    every_item = sorted({e.item for e in events})
    # every fifth item shown: a user's best n + banned items rarely hold n allowed ones
    mask = ItemMask(np.zeros(0, bool), _allows=set(every_item[::5]).__contains__)
    compared = 0
    for j in range(0, len(events), 100):
        batch = events[j : j + 100]
        for e in batch:
            knn.update(e)
        last = {e.user: e.ts for e in batch}
        last_item = {e.user: e.item for e in batch}
        users = [*last, "nobody"]
        nows = [*last.values(), batch[-1].ts]
        want = {(u, m): knn.score_arrays(u, m, t) for u, t in zip(users, nows, strict=True) for m in ("vsknn", "stan")}
        knn.prefetch(users, nows)
        assert (knn._slot == -1).all()  # noqa: SLF001 - the kernels' lookups, left as found
        alone = knn.alone
        for (u, m), (ids, vals) in want.items():
            got_ids, got_vals = knn.score_arrays(u, m, nows[users.index(u)])
            assert got_ids.tolist() == ids.tolist()
            assert got_vals.tobytes() == vals.tobytes()
            compared += len(ids) > 0
            # the best n from the batch's ranking: top_items' order (ties: voted first)
            t = nows[users.index(u)]
            every = knn.scores(u, m, t)
            for n in (1, 10, 50):
                banned = {last_item.get(u, "")}
                top = knn.top(u, m, t, n, banned)
                assert list(top) == top_items(every, n, banned)
                assert all(top[i] == every[i] for i in top)
                # a catalogue mask that lets few items through: past the best n + banned
                masked = knn.top(u, m, t, n, banned, mask)
                allowed = {i: v for i, v in every.items() if mask.allows(i)}
                assert list(masked.items()) == [(i, allowed[i]) for i in top_items(allowed, n, banned)]
        assert knn.alone == alone  # read from the batch: no batch of one user
    assert compared > 200


def state(obj: object) -> object:
    """An object's state with every dict's order and every float's bits (to compare two)."""
    if isinstance(obj, dict):
        return [(k, state(v)) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        return [state(v) for v in obj]
    if isinstance(obj, (bytearray, array)):
        return bytes(obj)
    if isinstance(obj, np.ndarray):
        return (obj.dtype.str, obj.shape, obj.tobytes())
    if isinstance(obj, CoVisitation):  # its rows in numba's dicts: by their plain copy
        return state(obj.snapshot())
    if isinstance(obj, float):
        return obj.hex()
    if hasattr(obj, "__dict__"):
        return (type(obj).__name__, state(vars(obj)))
    return obj


@pytest.mark.parametrize("dataset", ["yoochoose", "taobao_small", "rees46_small"])
@pytest.mark.parametrize(
    "cfg",
    [
        SourcesConfig(),
        SourcesConfig(
            covisit_max_row=8,
            covisit_max_pairs=300,
            max_users=200,
            max_sessions=300,
            max_sessions_per_item=5,
            session_gap_s=600.0,
            covisit_window_s=1800.0,
            category_max_items=20,
        ),
    ],
    ids=["defaults", "pruned"],
)
def test_update_many_leaves_the_state_of_an_update_per_event(dataset: str, cfg: SourcesConfig) -> None:
    """The worker's batches (`Sources.update_many`, `ItemStats.add_many`, batches of 1 to 400
    events) leave every source and counter as an update per event does: the same dicts in the
    same order, the same floats; "pruned" evicts users, sessions and rows on the way. The
    co-visitation rows and totals also equal those of the update with a call per pair."""
    events = sorted(load_events(require_dataset(dataset)), key=lambda e: e.ts)[-6000:]
    one, many, ref = Sources(cfg), Sources(cfg), AddCoVisitation(cfg)
    stats_one, stats_many = ItemStats(), ItemStats()
    for e in events:
        one.update(e)
        ref.update(e)
        stats_one.add(e.item, e.ts)
    rng = np.random.default_rng(5)
    j = 0
    while j < len(events):
        batch = events[j : j + int(rng.choice([1, 3, 40, 400]))]
        many.update_many(batch)
        stats_many.add_many([(e.item, e.ts) for e in batch])
        j += len(batch)
    assert state(many) == state(one)
    assert state(stats_many) == state(stats_one)
    snap = many.covisit.snapshot()
    for mine, theirs in ((snap["rows"], ref._w), (snap["next"], ref._next), (snap["totals"], ref._tot)):  # noqa: SLF001
        assert state(mine) == state(theirs)
    assert snap["moves"] == {u: list(buf) for u, buf in ref._buf.items()}  # noqa: SLF001
    assert snap["pairs"] == ref.pairs


def test_covisitation_kernels_hold_the_gil() -> None:
    """The kernels that read or write co-visitation's rows (numba's dicts, shared by every
    thread) hold the GIL: the worker's warm-up updates them on a thread while a web request
    may read them, and two such calls must not run at once. Session-kNN's kernels, over arrays
    of their own, let other threads run."""
    for k in (kernels.covisit_update, kernels.covisit_sum, kernels.covisit_row, kernels.covisit_heads):
        assert k.targetoptions.get("nogil") is False, k.__name__
    assert kernels.similarities.targetoptions.get("nogil") is True
