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
