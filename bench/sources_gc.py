"""What the candidate sources cost a long-running worker's cyclic GC, and their memory.

A full (gen2) collection runs on the worker's event loop and visits every object the GC
tracks; the sources (co-visitation, session-kNN, category popularity) grow with the stream up
to their bounds (`sources.max_sessions`, `sources.max_users`). This feeds `Sources.update`
with a simulated stream, then reports, against the baseline of the same process with empty
sources (everything alive before them frozen out of the GC, as the worker's start does):

    pause_ms            a full collection, median of --repeats
    tracked_objects     what the GC tracks, from the sources down
    update_us           Sources.update, µs an event
    bytes_per_session   session-kNN's memory a session (tracemalloc, a second pass)

    python -m bench.sources_gc [--events 600000] [--users 50000] [--items 20000] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any


def _pause_ms(repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _tracked(root: object) -> int:
    """Objects the GC tracks reachable from `root` (types excluded: they are frozen with the
    modules; a numba typed dict counts as one: co-visitation's rows inside it are numba's
    memory, and what it refers to is numba's machinery, alive before any source)."""
    import numba

    seen: set[int] = set()
    stack = [root]
    n = 0
    while stack:
        o = stack.pop()
        if id(o) in seen or not gc.is_tracked(o):
            continue
        seen.add(id(o))
        n += 1
        if isinstance(o, numba.typed.Dict):
            continue
        stack.extend(r for r in gc.get_referents(o) if type(r) is not type)
    return n


def run(events: int, users: int, items: int, repeats: int) -> dict[str, Any]:
    from recsys.candidates.sources import SessionKNN, Sources, SourcesConfig
    from recsys.data.simulator import SimConfig, simulate

    print(f"simulating {events:,} events of {users:,} users over {items:,} items", flush=True)
    stream = simulate(SimConfig(n_users=users, n_items=items, events=events, seed=3))
    src = Sources(SourcesConfig())  # a worker's is made with its app, before the freeze
    gc.collect()
    gc.freeze()  # the stream and the modules: what the worker's start exempts (streaming/worker/app.py)
    base_pause = _pause_ms(repeats)
    t = time.process_time()
    for k, e in enumerate(stream, 1):
        src.update(e)
        if k % 100_000 == 0:
            print(f"  {k:,} events", flush=True)
    update_us = 1e6 * (time.process_time() - t) / len(stream)
    gc.collect()
    gc.collect()  # a tuple of (item, time) tuples leaves the GC's view at the second
    out = {
        "events": len(stream),
        "sizes": src.sizes(),
        "update_us": update_us,
        "pause_ms": _pause_ms(repeats),
        "baseline_pause_ms": base_pause,
        "tracked_objects": _tracked(src),
    }
    del src
    gc.collect()
    tracemalloc.start()
    knn = SessionKNN(SourcesConfig())
    for e in stream:
        knn.update(e)
    out["bytes_per_session"] = tracemalloc.get_traced_memory()[0] / max(knn.sizes()["sessions"], 1)
    tracemalloc.stop()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=600_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a small stream, for CI: checks it runs")
    ap.add_argument("--output", type=Path, default=Path("bench/out/sources_gc.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.users, args.items, args.repeats = 20_000, 2_000, 3_000, 3
    rep = {"bench": "sources_gc", **run(args.events, args.users, args.items, args.repeats)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rep, indent=1))
    s = rep["sizes"]
    print(
        f"{s['sessions']:,} sessions, {s['covisit_users']:,} users, {s['covisit_pairs']:,} co-visitation pairs: "
        f"a full collection {rep['pause_ms']:.1f} ms (empty sources {rep['baseline_pause_ms']:.1f} ms), "
        f"{rep['tracked_objects']:,} tracked objects; "
        f"update {rep['update_us']:.1f} µs an event; session-kNN {rep['bytes_per_session']:,.0f} B a session"
    )
    return rep


if __name__ == "__main__":
    main()
