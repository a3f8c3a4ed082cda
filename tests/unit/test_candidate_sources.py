"""The stream baselines' sources (recsys/candidates/sources.py): hand-checked scores, and the
streaming evaluation computes their lists from the state before each event only."""

from __future__ import annotations

from recsys.candidates.sources import CoVisitation, SessionKNN, SourcesConfig, top_items
from recsys.data.datasets import load_dataset, time_split
from recsys.evaluation.streaming import StreamEvalConfig, stream_evaluate
from recsys.events import Event

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
