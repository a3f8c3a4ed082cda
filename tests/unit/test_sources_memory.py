"""What a long-running worker's candidate sources hold stays within its bounds
(sources.covisit_max_pairs): many users and items, most touched once, as bench.scale's stream."""

from __future__ import annotations

import tracemalloc

import numba
import numpy as np
from prometheus_client import CollectorRegistry

from recsys.candidates.sources import CoVisitation, Sources, SourcesConfig
from recsys.events import Event
from streaming.worker.metrics import WorkerMetrics


def stream(n: int, users: int, items: int, seed: int = 0) -> list[Event]:
    """Sessions of 1-10 events of users ~ users·r², items Zipf-like ~ items·r³, a second apart."""
    rng = np.random.default_rng(seed)
    out: list[Event] = []
    ts = 0
    while len(out) < n:
        u = f"u{int(users * rng.random() ** 2)}"
        for _ in range(int(rng.integers(1, 11))):
            ts += 1000
            out.append(Event(u, f"i{int(items * rng.random() ** 3)}", "view", ts))
    return out[:n]


def held(cv: CoVisitation, events: list[Event]) -> int:
    """Pairs actually in the rows (what `pairs` counts)."""
    return sum(len(cv.neighbours(a)) + len(cv.next_items(a)) for a in {e.item for e in events})


def test_covisitation_pairs_stay_within_the_bound_and_are_counted_exactly() -> None:
    bound = 2_000
    cv = CoVisitation(SourcesConfig(covisit_max_pairs=bound, covisit_max_row=30))
    free = CoVisitation(SourcesConfig(covisit_max_row=30))
    events = stream(20_000, 3_000, 5_000)
    for e in events:
        cv.update(e)
        free.update(e)
        assert cv.pairs <= bound
    assert free.pairs > 10 * bound  # the stream would hold far more without the bound
    assert cv.pairs == held(cv, events) and free.pairs == held(free, events)
    assert cv.sizes()["covisit_pairs"] == cv.pairs


def test_the_rows_left_are_the_recently_seen_items_with_unbounded_values() -> None:
    """Below the bound nothing changes; past it the rows of the items least recently seen leave
    and the others keep their exact weights (the lists change only by forgetting old items)."""
    events = stream(6_000, 500, 800, seed=1)
    free = CoVisitation(SourcesConfig())
    for e in events:
        free.update(e)
    same = CoVisitation(SourcesConfig(covisit_max_pairs=free.pairs))
    small = CoVisitation(SourcesConfig(covisit_max_pairs=free.pairs // 4))
    for e in events:
        same.update(e)
        small.update(e)
    items = {e.item for e in events}
    assert all(same.neighbours(i) == free.neighbours(i) for i in items)
    kept = [i for i in items if small.neighbours(i)]
    assert 0 < len(kept) == small.sizes()["covisit_rows"] < free.sizes()["covisit_rows"]
    last_move = {e.item: k for k, e in enumerate(events)}
    # the rows kept: items seen after the least recently seen of the dropped ones
    assert min(last_move[i] for i in kept) > min(last_move[i] for i in items if i not in kept)


def test_memory_levels_off_at_the_bound() -> None:
    """Python memory held by the sources stops growing with the stream once the bounds are
    reached (per-user and per-session structures: max_users, max_sessions; co-visitation's
    users). Every item is seen in the first third: the item ids the sources intern grow with
    the catalogue only. (Co-visitation's rows are numba's memory, which tracemalloc does not
    see: `covisit_max_pairs` bounds them, counted exactly above.)"""
    cfg = SourcesConfig(covisit_max_pairs=20_000, max_users=2_000, max_sessions=3_000)
    src = Sources(cfg)
    events = stream(90_000, 20_000, 3_000, seed=2)
    tracemalloc.start()
    try:
        for e in events[:30_000]:
            src.update(e)
        first = tracemalloc.get_traced_memory()[0]
        for e in events[30_000:]:
            src.update(e)
        second = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert src.covisit.pairs <= 20_000
    assert second < 1.25 * first, (first, second)


def test_the_worker_exports_the_sources_sizes() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    src = Sources(SourcesConfig(covisit_max_pairs=500))
    metrics.track_sources(src.sizes)
    for e in stream(3_000, 200, 400):
        src.update(e)

    def sample(structure: str) -> float | None:
        return metrics.registry.get_sample_value("streamrec_sources_entries", {"structure": structure})

    assert sample("covisit_pairs") == src.covisit.pairs <= 500
    assert sample("sessions") == src.sizes()["sessions"] > 0


def test_the_cyclic_gc_has_nothing_to_walk_in_the_sources_state() -> None:
    """A full collection runs on the worker's event loop and visits every object the GC tracks:
    the per-session items and per-user moves (up to `max_sessions` and `max_users` of them) must
    hold none. Counted from the Sources object down: the tracked objects, against the sessions
    and users held (a list a session and a deque a user gave more of them than both together;
    array.array, tracked in Python 3.11 though it refers to nothing but its type, two a session)."""
    import gc

    src = Sources(SourcesConfig())
    for e in stream(20_000, 2_000, 3_000):
        src.update(e)
    # a collection untracks a tuple of untracked items: a tuple of (item, time) tuples takes two
    gc.collect()
    gc.collect()
    sizes = src.sizes()
    held_objects = sizes["sessions"] + sizes["covisit_users"]
    assert held_objects > 2_000
    seen: set[int] = set()
    stack: list[object] = [src]
    walked = 0
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if not gc.is_tracked(o):
            continue
        walked += 1
        if isinstance(o, numba.typed.Dict):  # co-visitation's rows: in numba's memory, none a Python object
            continue
        stack.extend(r for r in gc.get_referents(o) if type(r) is not type)
    assert walked < held_objects / 20, (walked, held_objects)
