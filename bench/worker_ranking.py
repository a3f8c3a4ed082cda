"""The worker's batch cost with a ranker, in process: bench/e2e.py's stream without Kafka.

The same simulated stream, model and ranker as `python -m bench.e2e --ranker` (the same
SimConfig, the model on the events before the stream, the ranker on the last
`--ranker-train-events` of them), fed through `streaming.worker.processor.Processor.process`
in micro-batches of `--batch` events: the blend-only processor (candidate sources off, as
bench/e2e's `worker`) and the processor serving the version with a ranker, interleaved, the
same batches. CPU time (this thread's) per batch, what the processor's timings say (fold-in,
ranking), and medians over `--repeats`. Each repeat starts from empty state, as e2e's fresh
topics do (`--warm N`: the ranker's sources first count the last N events before the stream,
as a worker's warm-up does over a filled topic).

    python -m bench.worker_ranking [--events 8000] [--batch 60] [--repeats 3] [--warm 0]
        [--dump lists.json] [--compare lists.json] [--profile out.prof]

`--dump` writes every published list of the ranker's processor (items and scores) and
`--compare` checks them against such a file: a speed-up must leave them equal.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

CACHE = Path(tempfile.gettempdir()) / "streamrec-bench-worker-ranking"


def _setup(n_full: int, items: int, n_rank: int) -> tuple[Any, ...]:
    """bench/e2e's stream, model and ranker (cached: the same seed gives the same ones)."""
    from recsys.candidates.training import train_ranker
    from recsys.confidence import ConfidenceConfig, build_profiles
    from recsys.config import load_config
    from recsys.data.simulator import SimConfig, simulate
    from recsys.evaluation.streaming import StreamEvalConfig
    from recsys.model.item_foldin import user_gram
    from recsys.model.train import TrainConfig, train

    path = CACHE / f"e{n_full}-i{items}-r{n_rank}.pkl"
    if path.exists():
        with path.open("rb") as f:
            return pickle.load(f)
    n_sim = n_full + 200_000
    events = simulate(SimConfig(n_users=max(500, n_full // 6), n_items=items, events=min(n_sim, 4 * n_full), seed=7))
    train_events, stream = events[:-n_full], events[-n_full:]
    ccfg = ConfidenceConfig()
    model, x, _ = train(build_profiles(train_events, ccfg), ccfg, TrainConfig(factors=64, iterations=8, num_threads=0))
    cfg = load_config()
    ranker = train_ranker(
        train_events[-min(len(train_events), n_rank) :],
        ccfg=ccfg,
        scfg=cfg.scoring,
        ecfg=StreamEvalConfig(sources=cfg.sources, ranker=cfg.ranker),
    )
    out = (train_events, stream, model, user_gram(x), ranker.to_bytes())
    CACHE.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(out, f)
    return out


def _sum(hist: Any) -> float:
    """A histogram's total (its `_sum` sample)."""
    return sum(s.value for metric in hist.collect() for s in metric.samples if s.name.endswith("_sum"))


def _run(proc: Any, batches: list[list[Any]], lists: list[Any] | None, prof: Any = None) -> dict[str, float]:
    from streaming.worker.state import UserState

    store: dict[bytes, UserState] = {}
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
        store.update(res.states)
        users += len(res.messages)
        if lists is not None:
            for key, v in res.messages:
                d = json.loads(v)
                lists.append([key.decode(), d["items"], d["scores"], d["source"]])
    foldin, ranking = _sum(m.foldin_seconds), _sum(m.ranking_seconds)
    return {"cpu_s": cpu, "lists": users, "foldin_s": foldin, "ranking_s": ranking}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=8000, help="stream events (bench/e2e --events)")
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--ranker-train-events", type=int, default=10_000)
    ap.add_argument(
        "--batch", type=int, default=380, help="events per micro-batch (380: ~56 users, e2e's full-load batch)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warm", type=int, default=0, help="events before the stream counted into the sources first")
    ap.add_argument("--only-ranker", action="store_true", help="skip the blend-only processor")
    ap.add_argument("--dump", help="write the ranker processor's lists (first repeat) here")
    ap.add_argument("--compare", help="check the ranker processor's lists (first repeat) equal these")
    ap.add_argument("--profile", help="cProfile the ranker processor's batches (first repeat) into this file")
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
    train_events, stream, model, xtx, ranker_bytes = _setup(args.events, args.items, args.ranker_train_events)
    cfg = load_config()
    ccfg = cfg.confidence
    ranker = Ranker.from_bytes(ranker_bytes, cfg.ranker)
    msgs = [
        Incoming(e.user.encode(), json.dumps(e.to_dict()).encode(), hash(e.user) % 4, off, e.ts)
        for off, e in enumerate(stream)
    ]
    batches = [msgs[i : i + args.batch] for i in range(0, len(msgs), args.batch)]

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
        row["ranker"] = _run(processor(True), batches, lists, prof)
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
    if "blend" in med:
        out["ratio"] = med["blend"] / med["ranker"]  # throughput-like: blend CPU / ranker CPU
    print(json.dumps({k: v for k, v in out.items() if k != "rounds"}, indent=1))
    return out


if __name__ == "__main__":
    main()
