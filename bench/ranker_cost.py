"""The retrain with its ranker against the retrain without it, on the same real events.

Per dataset: the serving version is a retrain on the events before the last `--new` share
(no ranker); then, alternating, each run on a fresh copy of that store, through the retrain's
own functions (streaming/jobs/retrain.py `retrain_once`, in this process):

  without  profiles of every event → ALS (warm from the serving version) → gate → store
  with     the same, plus the ranker from the events as the window (`events_window`: what
           `recsys retrain --data FILE` does; from Kafka the window is the clickstream's, read by
           streaming/jobs/window.py): examples scored by the serving version (it has not seen the
           new events), LambdaRank, its gate, stored with the version

Wall time from the profiles' build to the stored version; medians of --repeats, interleaved
(the machine is shared), the ratio with/without, the ranker's phases and gate figures.

    python -m bench.ranker_cost --datasets yoochoose,taobao [--repeats 3] [--max-examples N]
                                [--window-events N] [--output bench/out/ranker_cost.json]

`--kafka`: the same through `recsys retrain --once` processes on the project's own broker, the
events in the clickstream topic and every user's state in the changelog (`kafka_cost`).
The broker is the project's own, started for the run, or the one `STREAMREC_BOOTSTRAP` names
(e.g. one `recsys broker start` left running: a loaded machine starts the JVM slowly).

`--datasets simulated-100000` (any `simulated-USERS`): a simulated shop of that many shoppers,
~60 events each (recsys/data/simulator.py, bench/e2e's generator), instead of a real dataset: the
same comparison where the ALS is not a toy (the real slices' warm ALS takes about a second, the
ranker's capped step a few).

`--quality`: instead, the capped ranker against stream-eval's (`train_ranker`, every example
of the training window) on a validation split (train = the first 64% of events by time,
validation = the next 16%; the last 20% is the test window and is not read), both through
`recsys stream-eval`'s replay with methods system,ranker.
`--quality --variants ';n_estimators=50,learning_rate=0.1'`: the capped ranker as configured
and with other settings, each fitted on the same examples and ranked on the same cached
validation candidates (`variant_quality`: the gate's measure, one validation replay for all).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from recsys.confidence import build_profiles
from recsys.config import Config, load_config
from recsys.data.datasets import load, time_split
from recsys.model.store import ModelStore
from streaming.jobs.retrain import RetrainMetrics, events_window, retrain_once


def one(events: list[Any], serving: Path, cfg: Config, with_ranker: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "models"
        shutil.copytree(serving, root)
        store = ModelStore(root)
        t = time.perf_counter()
        profiles = build_profiles(events, cfg.confidence)
        res = retrain_once(
            profiles,
            store,
            cfg.stream,
            RetrainMetrics(),
            "bench",
            cfg,
            window=events_window(events, cfg.ranker) if with_ranker else None,
        )
        wall = time.perf_counter() - t
        has = store.ranker(res.version) is not None if res.version else False
    return {"wall_s": round(wall, 3), "phases": res.phases, "ranker": res.ranker, "stored_ranker": has}


def events_of(name: str) -> list[Any]:
    """A real dataset by name, or `simulated-USERS`: a simulated shop of USERS shoppers."""
    if name.startswith("simulated-"):
        from recsys.data.simulator import SimConfig, simulate

        users = int(name.split("-", 1)[1])
        items = max(5_000, users // 5)
        t = time.perf_counter()
        events = simulate(SimConfig(n_users=users, n_items=items, n_topics=max(20, items // 500), events=60 * users))
        print(
            f"{name}: {len(events):,} events, {items:,} items simulated in {time.perf_counter() - t:.0f}s", flush=True
        )
        return events
    events, _ = load(name, progress=None)
    return events


def cost(name: str, cfg: Config, repeats: int, new: float) -> dict[str, Any]:
    events = events_of(name)
    events.sort(key=lambda e: e.ts)
    head, _ = time_split(events, test_fraction=new)
    with tempfile.TemporaryDirectory() as d:
        serving = Path(d) / "serving"
        off = replace(cfg, ranker=replace(cfg.ranker, retrain=False))
        first = retrain_once(build_profiles(head, cfg.confidence), ModelStore(serving), cfg.stream, config=off)
        assert first.version, first
        runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
        for r in range(repeats):
            for mode in ("without", "with") if r % 2 == 0 else ("with", "without"):
                out = one(events, serving, cfg, mode == "with")
                runs[mode].append(out)
                print(f"{name} {mode}: {out['wall_s']:.1f}s {out['phases']}", flush=True)
    med = {m: statistics.median(x["wall_s"] for x in rs) for m, rs in runs.items()}
    last = runs["with"][-1]["ranker"]
    return {
        "dataset": name,
        "events": len(events),
        "serving_trained_on": len(head),
        "median_wall_s": med,
        "ratio": round(med["with"] / med["without"], 3),
        "ranker": {k: last.get(k) for k in ("published", "note", "model", "example_events", "gate", "holdout")},
        "runs": runs,
    }


def kafka_cost(name: str, cfg: Config, repeats: int, new: float, workdir: Path) -> dict[str, Any]:
    """The same comparison through `recsys retrain --once` processes on the project's own broker:
    the dataset's events in the clickstream topic, every user's state in the changelog (the
    worker's record format, as a worker writes it), the serving version trained on the events
    before the last `new` share; each run on a fresh copy of that store, the ranker on or off
    (`STREAMREC_RANKER_RETRAIN`). Wall time of the whole command (start-up, changelog read, the
    window read, announce)."""
    import subprocess
    import sys
    import uuid

    from kafka import KafkaProducer

    from devtools.broker import broker_from_env
    from recsys.config import child_env, stream_env
    from streaming.kafka import clients
    from streaming.kafka.admin import ensure_topics
    from streaming.topics import isolated, topic_specs
    from streaming.worker.state import UserState, encode

    events = events_of(name)
    events.sort(key=lambda e: e.ts)
    head, _ = time_split(events, test_fraction=new)
    broker = broker_from_env(workdir / "kafka", cfg)
    broker.start(timeout=300)  # a loaded machine starts the JVM slowly
    try:
        s = isolated(cfg.stream, f"rc-{name}-{uuid.uuid4().hex[:6]}", bootstrap=broker.bootstrap, partitions=2)
        ensure_topics(s.bootstrap, topic_specs(s))
        ensure_topics(s.bootstrap, {s.changelog_topic: 2}, config={"cleanup.policy": "compact"})
        producer = KafkaProducer(bootstrap_servers=s.bootstrap, acks="all", linger_ms=20, **clients.kafka_python())
        for e in events:
            producer.send(s.clickstream_topic, key=e.user.encode(), value=json.dumps(e.to_dict()).encode())
        for u, p in build_profiles(events, cfg.confidence).items():
            producer.send(s.changelog_topic, key=u.encode(), value=encode(UserState(p)))
        producer.flush()
        producer.close()
        serving = workdir / f"serving-{name}"
        off = replace(cfg, ranker=replace(cfg.ranker, retrain=False))
        first = retrain_once(build_profiles(head, cfg.confidence), ModelStore(serving), s, config=off)
        assert first.version, first
        runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
        for r in range(repeats):
            for mode in ("without", "with") if r % 2 == 0 else ("with", "without"):
                root = workdir / f"models-{name}-{mode}-{r}"
                shutil.copytree(serving, root)
                env = {
                    **cfg.to_env(),
                    **stream_env(s),
                    "STREAMREC_MODEL_DIR": str(root),
                    "STREAMREC_RANKER_RETRAIN": "true" if mode == "with" else "false",
                }
                t = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-m", "streaming.cli.main", "retrain", "--once"],
                    env=child_env(env),
                    capture_output=True,
                    text=True,
                    timeout=1800,
                )
                wall = time.perf_counter() - t
                assert done.returncode == 0, done.stderr[-2000:]
                line = json.loads(done.stdout.strip().splitlines()[-1])
                out = {"wall_s": round(wall, 3), "phases": line["phases"], "ranker": line["ranker"]}
                runs[mode].append(out)
                print(f"{name} kafka {mode}: {wall:.1f}s {line['phases']}", flush=True)
    finally:
        broker.stop()
    med = {m: statistics.median(x["wall_s"] for x in rs) for m, rs in runs.items()}
    last = runs["with"][-1]["ranker"]
    return {
        "dataset": name,
        "via": "kafka",
        "events": len(events),
        "serving_trained_on": len(head),
        "median_wall_s": med,
        "ratio": round(med["with"] / med["without"], 3),
        "ranker": {k: last.get(k) for k in ("published", "note", "model", "example_events", "gate", "holdout")},
        "runs": runs,
    }


def quality(name: str, cfg: Config) -> dict[str, Any]:
    from recsys.candidates.training import train_ranker, train_window_ranker
    from recsys.evaluation.streaming import StreamEvalConfig, stream_evaluate

    events, _ = load(name, progress=None)
    dev, _test = time_split(events, test_fraction=0.2)
    train, val = time_split(dev, test_fraction=0.2)
    ecfg = StreamEvalConfig(sources=cfg.sources, ranker=cfg.ranker, methods=("system", "ranker"))
    ccfg, scfg, tcfg = cfg.confidence, cfg.scoring, cfg.train
    out: dict[str, Any] = {"dataset": name}
    t = time.perf_counter()
    full = train_ranker(train, ecfg=ecfg, ccfg=ccfg, scfg=scfg, tcfg=tcfg)
    out["stream_eval_ranker_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    capped, _ = train_window_ranker(
        train[-cfg.ranker.window_max_events :], cfg.ranker, ecfg=ecfg, ccfg=ccfg, scfg=scfg, tcfg=tcfg
    )
    out["retrain_ranker_s"] = round(time.perf_counter() - t, 1)
    assert capped.ranker is not None, capped.note
    for label, rk in (("stream_eval_ranker", full), ("retrain_ranker", capped.ranker)):
        rep = stream_evaluate(train, val, ecfg=ecfg, ranker=rk, ccfg=ccfg, scfg=scfg, tcfg=tcfg)
        out[label] = {
            m: {k: round(rep["methods"][m]["all"][k], 4) for k in ("HR@10", "MRR@10")} for m in rep["methods"]
        }
        print(name, label, out[label], flush=True)
    return out


def variant_quality(name: str, cfg: Config, variants: list[str]) -> dict[str, Any]:
    """The retrain's capped ranker with other LightGBM settings, on the validation split of
    `quality` (the test window is not read): the window's examples are built once, each variant
    is fitted on their fit part (the retrain's cut: all but the gate's share), and every variant is
    ranked on the same cached validation candidates (one replay of the validation events, scored
    by a model trained on the training events: `list_ranks`, the gate's measure; a cold user gets
    the fallback). HR@10/MRR@10 with standard errors, and each fit's time."""
    from recsys.candidates.ranker import Examples, fit
    from recsys.candidates.training import _subset, list_ranks, rank_figures, window_examples, window_fit_config
    from recsys.evaluation.streaming import StreamEvalConfig, stream_evaluate

    events, _ = load(name, progress=None)
    dev, _test = time_split(events, test_fraction=0.2)
    train, val = time_split(dev, test_fraction=0.2)
    rcfg = cfg.ranker
    ccfg, scfg, tcfg = cfg.confidence, cfg.scoring, cfg.train
    ecfg = StreamEvalConfig(sources=cfg.sources, ranker=rcfg, methods=("system",))
    t = time.perf_counter()
    ex, info = window_examples(train[-rcfg.window_max_events :], rcfg, ccfg=ccfg, scfg=scfg, tcfg=tcfg, ecfg=ecfg)
    fit_ex = _subset(ex, range(int(len(ex.meta) * (1 - rcfg.gate_fraction))))
    held = Examples(keep_all=True)
    stream_evaluate(train, val, ccfg=ccfg, scfg=scfg, tcfg=tcfg, ecfg=ecfg, collect=held)
    out: dict[str, Any] = {"dataset": name, "validation_events": held.events, "examples": info}
    out["replays_s"] = round(time.perf_counter() - t, 1)
    first: np.ndarray | None = None
    for v in variants:
        changes = dict(kv.split("=", 1) for kv in v.split(",") if kv)
        examples = fit_ex
        if changes.pop("prune_unreachable", "true") == "false":  # the examples of the full replay
            ref, _ = window_examples(
                train[-rcfg.window_max_events :],
                rcfg,
                ccfg=ccfg,
                scfg=scfg,
                tcfg=tcfg,
                ecfg=ecfg,
                prune_unreachable=False,
            )
            examples = _subset(ref, range(int(len(ref.meta) * (1 - rcfg.gate_fraction))))
        vcfg = replace(rcfg, **{k: type(getattr(rcfg, k))(x) for k, x in changes.items()})
        t = time.perf_counter()
        rk = fit(examples, window_fit_config(vcfg))
        fit_s = time.perf_counter() - t
        ranked, fallback = list_ranks(rk, held)
        res: dict[str, Any] = {
            "fit_s": round(fit_s, 2),
            "ranker": {k: round(x, 4) for k, x in rank_figures(ranked).items()},
            "fallback": {k: round(x, 4) for k, x in rank_figures(fallback).items()},
        }
        if first is None:
            first = ranked
        else:  # paired with the first variant, event by event: the difference and its standard error
            res["minus_first"] = paired(ranked, first)
        out[v or "as configured"] = res
        print(name, v or "as configured", res, flush=True)
    return out


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """HR@10 and MRR@10 of ranks `a` minus those of `b` on the same events (0 = miss), with the
    standard error of the per-event differences."""
    out: dict[str, float] = {}
    for name, f in (
        ("HR@10", lambda r: (r > 0) * 1.0),
        ("MRR@10", lambda r: np.where(r > 0, 1.0 / np.maximum(r, 1), 0.0)),
    ):
        d = f(a) - f(b)
        out[name] = round(float(d.mean()), 5)
        out[f"{name}_se"] = round(float(d.std(ddof=1) / np.sqrt(len(d))), 5) if len(d) > 1 else 0.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="yoochoose,taobao")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new", type=float, default=0.2, help="share of the events the serving version has not seen")
    ap.add_argument("--max-examples", type=int, help="ranker.max_examples (default: the configuration's)")
    ap.add_argument("--window-events", type=int, help="ranker.window_max_events (default: the configuration's)")
    ap.add_argument(
        "--kafka",
        action="store_true",
        help="through `recsys retrain --once` processes on the project's own broker (changelog + clickstream)",
    )
    ap.add_argument("--quality", action="store_true", help="validation HR@10/MRR@10, capped vs uncapped ranker")
    ap.add_argument(
        "--variants",
        help="with --quality: instead, the capped ranker with other settings on one validation replay, "
        "';'-separated, each ','-separated ranker fields, '' = as configured (e.g. ';n_estimators=50,learning_rate=0.1'; "
        "prune_unreachable=false: that variant's examples from the full replay); each after the first is also "
        "compared with the first, event by event (paired difference and its standard error)",
    )
    ap.add_argument("--output", default="bench/out/ranker_cost.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from recsys.model.threads import pin_blas_threads

    pin_blas_threads()  # as `recsys retrain` does: the in-process figures then match its
    # the environment's settings too: STREAMREC_BOOTSTRAP points --kafka at a running broker
    cfg = load_config()
    if args.max_examples is not None:
        cfg = replace(cfg, ranker=replace(cfg.ranker, max_examples=args.max_examples))
    if args.window_events is not None:
        cfg = replace(cfg, ranker=replace(cfg.ranker, window_max_events=args.window_events))
    results = []
    for name in args.datasets.split(","):
        if args.quality and args.variants is not None:
            r = variant_quality(name, cfg, args.variants.split(";"))
        elif args.quality:
            r = quality(name, cfg)
        elif args.kafka:
            with tempfile.TemporaryDirectory() as d:
                r = kafka_cost(name, cfg, args.repeats, args.new, Path(d))
        else:
            r = cost(name, cfg, args.repeats, args.new)
        results.append(r)
        if not args.quality:
            print(
                f"{name}: without {r['median_wall_s']['without']:.1f}s, with the ranker "
                f"{r['median_wall_s']['with']:.1f}s: {r['ratio']:.2f}x ({r['ranker']})",
                flush=True,
            )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"ranker": asdict(cfg.ranker), "results": results}, indent=1))


if __name__ == "__main__":
    main()
