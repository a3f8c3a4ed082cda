"""The worker's batch cost with a ranker, in process: bench/e2e.py's stream without Kafka.

The same simulated stream, model and ranker as `python -m bench.e2e --ranker` (the same
SimConfig, the model on the events before the stream, the ranker on the last
`--ranker-train-events` of them, with the retrain's trees unless `--ranker-trees`), fed
through `streaming.worker.processor.Processor.process` in micro-batches of `--batch` events
(or `--users`): the blend-only processor (candidate sources off, as bench/e2e's `worker`) and
the processor serving the version with a ranker, interleaved, the same batches. CPU time (this thread's) per batch, what the processor's timings say (fold-in,
ranking), and medians over `--repeats`. Each repeat starts from empty state, as e2e's fresh
topics do (`--warm N`: the ranker's sources first count the last N events before the stream,
as a worker's warm-up does over a filled topic).

    python -m bench.worker_ranking [--events 8000] [--batch 60 | --users 46] [--repeats 3] [--warm 0]
        [--rate 1500] [--again-users 17] [--stages] [--ranker-trees N]
        [--dump lists.json] [--compare lists.json] [--profile out.prof] [--lightgbm] [--set ranker.per_source=30]

`--dump` writes every published list of the ranker's processor (items and scores) and
`--compare` checks them against such a file: a speed-up must leave them equal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

CACHE = Path(tempfile.gettempdir()) / "streamrec-bench-worker-ranking"


def _setup(n_full: int, items: int, n_rank: int, trees: int | None = None) -> tuple[Any, ...]:
    """bench/e2e's stream, model and ranker (cached: the same seed gives the same ones)."""
    from bench.e2e import ranker_config
    from recsys.candidates.ranker import FEATURES
    from recsys.candidates.training import train_ranker
    from recsys.confidence import ConfidenceConfig, build_profiles
    from recsys.config import load_config
    from recsys.data.simulator import SimConfig, simulate
    from recsys.evaluation.streaming import StreamEvalConfig
    from recsys.model.item_foldin import user_gram
    from recsys.model.train import TrainConfig, train

    # the feature count in the name: a ranker of another release's features would be refused
    cfg = load_config()
    rcfg = ranker_config(cfg.ranker, trees)
    path = CACHE / f"e{n_full}-i{items}-r{n_rank}-f{len(FEATURES)}-t{rcfg.n_estimators}.pkl"
    if path.exists():
        with path.open("rb") as f:
            return pickle.load(f)
    n_sim = n_full + 200_000
    events = simulate(SimConfig(n_users=max(500, n_full // 6), n_items=items, events=min(n_sim, 4 * n_full), seed=7))
    train_events, stream = events[:-n_full], events[-n_full:]
    ccfg = ConfidenceConfig()
    model, x, _ = train(build_profiles(train_events, ccfg), ccfg, TrainConfig(factors=64, iterations=8, num_threads=0))
    ranker = train_ranker(
        train_events[-min(len(train_events), n_rank) :],
        ccfg=ccfg,
        scfg=cfg.scoring,
        ecfg=StreamEvalConfig(sources=cfg.sources, ranker=rcfg),
    )
    out = (train_events, stream, model, user_gram(x), ranker.to_bytes())
    CACHE.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(out, f)
    return out


def _by_users(msgs: list[Any], n: int) -> list[list[Any]]:
    """Consecutive batches of exactly n distinct users each (the last one fewer)."""
    out: list[list[Any]] = [[]]
    seen: set[bytes] = set()
    for m in msgs:
        if m.key not in seen and len(seen) == n:
            out.append([])
            seen = set()
        seen.add(m.key)
        out[-1].append(m)
    return out


def _sum(hist: Any) -> float:
    """A histogram's total (its `_sum` sample)."""
    return sum(s.value for metric in hist.collect() for s in metric.samples if s.name.endswith("_sum"))


class Stages:
    """This thread's CPU time in each stage of a batch: the stages' functions wrapped while the
    ranker's processor runs (`with Stages() as st:`), summed per batch into `st.batches`."""

    def __init__(self) -> None:
        import recsys.model.foldin as foldin
        import recsys.serving.scoring as scoring
        import streaming.worker.processor as processor
        import streaming.worker.ranking as ranking
        from recsys.candidates.ranker import Features, Ranker
        from recsys.candidates.sources import SessionKNN, Sources

        self.current: dict[str, float] = {}
        self.batches: list[dict[str, float]] = []
        self.patches: list[tuple[Any, str, Any]] = [
            (processor.Processor, "process", "batch"),
            (processor, "decode_event", "decode"),
            (ranking.WorkerRanking, "observe", "observe"),
            (ranking.WorkerRanking, "recommend", "ranking+fold-in"),
            (foldin.FoldIn, "__call__", "fold-in"),
            (ranking, "own_item_scores", "own scores"),
            (SessionKNN, "prefetch", "session-kNN prefetch"),
            (ranking, "context", "contexts"),
            (Sources, "top", "source top"),
            (scoring.Scorer, "recommend", "blend top"),
            (ranking, "ranked_lists", "ranked_lists"),
            (Features, "candidates_many", "features"),
            (Ranker, "scores", "predict"),
        ]

    def _wrap(self, fn: Any, name: str) -> Any:
        current = self.current

        def timed(*a: Any, **kw: Any) -> Any:
            t = time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                current[name] = current.get(name, 0.0) + time.thread_time() - t

        return timed

    def __enter__(self) -> Stages:
        self._saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in self.patches]
        for (owner, attr, name), (_, _, fn) in zip(self.patches, self._saved, strict=True):
            setattr(owner, attr, self._wrap(fn, name))
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, attr, fn in self._saved:
            setattr(owner, attr, fn)

    def end_batch(self, users: int) -> None:
        self.batches.append({**self.current, "users": users})
        self.current.clear()


def _stage_table(st: Stages) -> dict[str, float]:
    """Median ms a batch of each stage, exclusive of the stages inside it."""
    inside = {  # stage -> the stages it calls
        "batch": ("decode", "observe", "ranking+fold-in"),
        "ranking+fold-in": ("fold-in", "own scores", "session-kNN prefetch", "contexts", "ranked_lists"),
        "contexts": ("source top",),
        "ranked_lists": ("blend top", "features", "predict"),
    }
    names = [n for _, _, n in st.patches]
    out: dict[str, float] = {}
    for n in names:
        vals = [b.get(n, 0.0) - sum(b.get(c, 0.0) for c in inside.get(n, ())) for b in st.batches]
        out[n if n not in inside else f"{n} (rest)"] = 1000 * statistics.median(vals)
    out["total"] = 1000 * statistics.median(b.get("batch", 0.0) for b in st.batches)
    out["users"] = statistics.median(b["users"] for b in st.batches)
    return out


def _run(
    proc: Any,
    batches: list[list[Any]],
    lists: list[Any] | None,
    prof: Any = None,
    stages: Stages | None = None,
    store: dict[bytes, Any] | None = None,
) -> dict[str, float]:
    store = {} if store is None else store
    cpu = 0.0
    users = 0
    m = proc.metrics
    for batch in batches:
        t = time.thread_time()
        if prof is not None:
            prof.enable()
        res = proc.process(batch, lambda k, _m: store.get(k))
        if prof is not None:
            prof.disable()
        cpu += time.thread_time() - t
        if stages is not None:
            stages.end_batch(len(res.messages))
        store.update(res.states)
        users += len(res.messages)
        if lists is not None:
            for key, v in res.messages:
                d = json.loads(v)
                lists.append([key.decode(), d["items"], d["scores"], d["source"]])
    foldin, ranking = _sum(m.foldin_seconds), _sum(m.ranking_seconds)
    return {"cpu_s": cpu, "lists": users, "batches": len(batches), "foldin_s": foldin, "ranking_s": ranking}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=8000, help="stream events (bench/e2e --events)")
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--ranker-train-events", type=int, default=10_000)
    ap.add_argument("--ranker-trees", type=int, help="the ranker's boosting rounds (bench/e2e --ranker-trees)")
    ap.add_argument(
        "--batch", type=int, default=380, help="events per micro-batch (380: ~56 users, e2e's full-load batch)"
    )
    ap.add_argument("--users", type=int, help="batches of this many distinct users each instead of --batch events")
    ap.add_argument(
        "--again-users",
        type=int,
        help="then the same events again on the same processor (bench/e2e's half-load run: the worker of "
        "the full-load run, the stream replayed, stamped at half --rate), in batches of this many users; "
        "timed on its own",
    )
    ap.add_argument("--stages", action="store_true", help="CPU of each stage of a batch (ms, medians over batches)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--rate",
        type=float,
        help="stamp the events as sent at this many a second (bench/e2e's stamps), not the simulator's",
    )
    ap.add_argument("--warm", type=int, default=0, help="events before the stream counted into the sources first")
    ap.add_argument("--only-ranker", action="store_true", help="skip the blend-only processor")
    ap.add_argument("--dump", help="write the ranker processor's lists (first repeat) here")
    ap.add_argument("--compare", help="check the ranker processor's lists (first repeat) equal these")
    ap.add_argument("--profile", help="cProfile the ranker processor's batches (first repeat) into this file")
    ap.add_argument(
        "--lightgbm",
        action="store_true",
        help="LightGBM predicts, as before the worker compiled its ranker (ranker.native)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a setting of both processors (e.g. ranker.per_source=30); the ranker's trees are trained "
        "at the defaults whatever it says, so that settings compare on the same trees",
    )
    args = ap.parse_args(argv)

    import cProfile

    from prometheus_client import CollectorRegistry

    from recsys.candidates.ranker import Ranker
    from recsys.config import load_config
    from recsys.model.threads import pin_blas_threads
    from recsys.serving.recommender import Recommender
    from streaming.worker.metrics import WorkerMetrics
    from streaming.worker.processor import Incoming, Processor
    from streaming.worker.serving import Serving

    pin_blas_threads()
    train_events, stream, model, xtx, ranker_bytes = _setup(
        args.events, args.items, args.ranker_train_events, args.ranker_trees
    )
    cfg = load_config(overrides=args.set)
    ccfg = cfg.confidence
    ranker = Ranker.from_bytes(ranker_bytes, cfg.ranker)
    if not args.lightgbm and cfg.ranker.native:  # as the worker's ModelUpdates does on load
        t = time.process_time()
        print(f"ranker compiled: {ranker.compile_native()} ({time.process_time() - t:.2f} s CPU)", flush=True)
    if args.rate:
        # bench/e2e stamps each event with its send time: at its rates the whole stream is one
        # session a user, so session-kNN's neighbours are whole histories (the costlier case)
        t0 = stream[0].ts
        stream = [replace(e, ts=t0 + int(1000 * j / args.rate)) for j, e in enumerate(stream)]
    msgs = [
        Incoming(e.user.encode(), json.dumps(e.to_dict()).encode(), hash(e.user) % 4, off, e.ts)
        for off, e in enumerate(stream)
    ]
    if args.users:
        batches = _by_users(msgs, args.users)
    else:
        batches = [msgs[i : i + args.batch] for i in range(0, len(msgs), args.batch)]
    again: list[list[Any]] = []
    if args.again_users:
        t1 = stream[-1].ts + 1000
        step = 2000 / args.rate if args.rate else (stream[-1].ts - stream[0].ts) / len(stream)
        again = _by_users(
            [
                Incoming(
                    e.user.encode(),
                    json.dumps(replace(e, ts=t1 + int(j * step)).to_dict()).encode(),
                    hash(e.user) % 4,
                    len(stream) + j,
                    t1 + int(j * step),
                )
                for j, e in enumerate(stream)
            ],
            args.again_users,
        )

    def processor(with_ranker: bool) -> Any:
        p = Processor(
            ccfg,
            WorkerMetrics(CollectorRegistry()),
            top_n=cfg.stream.top_n,
            popularity_half_life_s=cfg.stream.popularity_half_life_s,
            sources=cfg.sources if with_ranker else None,
        )
        rec = Recommender(model, ccfg, cfg.scoring)
        p.serving.swap(Serving.of(rec, xtx, ranker if with_ranker else None))
        if with_ranker and args.warm and p.ranking is not None:
            p.ranking.observe(train_events[-args.warm :])
        return p

    rounds: list[dict[str, Any]] = []
    for r in range(args.repeats):
        row: dict[str, Any] = {}
        if not args.only_ranker:
            row["blend"] = _run(processor(False), batches, None)
        lists: list[Any] | None = [] if r == 0 and (args.dump or args.compare) else None
        prof = cProfile.Profile(time.thread_time) if r == 0 and args.profile else None
        proc = processor(True)
        store: dict[bytes, Any] = {}
        with Stages() if args.stages else contextlib.nullcontext() as st:
            row["ranker"] = _run(proc, batches, lists, prof, st, store)
            if st is not None:
                row["stages"] = _stage_table(st)
                st.batches.clear()
            if again:
                row["again"] = _run(proc, again, lists, None, st, store)  # --dump/--compare: both passes
                if st is not None:
                    row["stages_again"] = _stage_table(st)
        if prof is not None:
            prof.dump_stats(args.profile)
        if lists is not None and args.dump:
            Path(args.dump).write_text(json.dumps(lists))
        if lists is not None and args.compare:
            want = json.loads(Path(args.compare).read_text())
            same = want == lists
            diff = next((j for j, (a, b) in enumerate(zip(want, lists, strict=False)) if a != b), None)
            row["lists_equal"] = same
            print(f"lists equal to {args.compare}: {same} ({len(lists)} lists; first difference at {diff})")
        rounds.append(row)
        line = f"round {r + 1}: "
        for k in ("blend", "ranker"):
            if k in row:
                v = row[k]
                line += f"{k} {v['cpu_s']:.2f} s CPU ({1000 * v['cpu_s'] / v['lists']:.2f} ms a list) "
        if "blend" in row:
            line += f"ratio of CPU {row['ranker']['cpu_s'] / row['blend']['cpu_s']:.2f}x; "
        line += f"ranker: fold-in {row['ranker']['foldin_s']:.2f} s, ranking {row['ranker']['ranking_s']:.2f} s"
        print(line, flush=True)
    med = {k: statistics.median(r[k]["cpu_s"] for r in rounds) for k in ("blend", "ranker") if k in rounds[0]}
    per_list = {k: 1000 * v / rounds[0][k]["lists"] for k, v in med.items()}
    out = {
        "load": os.getloadavg(),
        "batches": len(batches),
        "lists": rounds[0]["ranker"]["lists"],
        "median_cpu_s": med,
        "median_ms_per_list": per_list,
        "median_ranking_s": statistics.median(r["ranker"]["ranking_s"] for r in rounds),
        "rounds": rounds,
    }
    for k in ("stages", "stages_again"):
        if k in rounds[0]:
            out[f"{k}_ms_a_batch"] = {s: statistics.median(r[k][s] for r in rounds) for s in rounds[0][k]}
    if again:
        out["again_median_ms_per_list"] = 1000 * statistics.median(
            r["again"]["cpu_s"] / r["again"]["lists"] for r in rounds
        )
    if "blend" in med:
        out["ratio"] = med["blend"] / med["ranker"]  # throughput-like: blend CPU / ranker CPU
    print(json.dumps({k: v for k, v in out.items() if k != "rounds"}, indent=1))
    return out


if __name__ == "__main__":
    main()
