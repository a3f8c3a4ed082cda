"""`recsys evaluate`, `recsys stream-eval`, `recsys demo-offline`: the evaluations on files."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from recsys.config import Config
from recsys.errors import ExitCode, RecsysError
from recsys.events import Event
from recsys.model.train import TrainConfig
from recsys.progress import say
from streaming.cli import options


def add_evaluation_args(p: argparse.ArgumentParser, held: str) -> None:
    """What `evaluate` and `stream-eval` share: data, model and scoring options, the test
    events (a separate file or the last share of --data), and where the report goes."""
    options.add_data_args(p)
    options.add_model_args(p)
    options.add_scoring_args(p)
    p.add_argument("--test", metavar="FILE|NAME", help="separate test events (default: time split of --data)")
    p.add_argument("--test-fraction", type=float, default=0.2, help=f"last share of events {held} (default 0.2)")
    p.add_argument("--output", help="write the report as JSON here")
    p.add_argument("--plot", help="save a PNG chart here")


def add_parser(sub: Any) -> None:
    e = options.command(sub, "evaluate", help="offline evaluation on a time split (or a separate test file)")
    add_evaluation_args(e, "held out")
    e.add_argument("--kinds", default="als,bpr", help="models to compare (default als,bpr)")
    options.add_common(e)
    e.set_defaults(func=cmd_evaluate)

    se = options.command(sub, "stream-eval", help="streaming evaluation: predict, then update, in time order")
    add_evaluation_args(se, "replayed")
    se.add_argument("--methods", help="comma-separated subset of the methods (default: all)")
    se.add_argument("--retrain-hours", type=float, default=6.0, help="event-time hours between retrains (default 6)")
    se.add_argument("--item-foldin-every", type=int, default=200, help="events between new-item refreshes")
    se.add_argument("--pop-window-hours", type=float, default=24.0, help="popularity window (0: all so far)")
    se.add_argument(
        "--validation",
        action="store_true",
        help="replay the validation window instead: the last --test-fraction of the events before the test window "
        "(train on what precedes it; the test window is not read); for choosing settings",
    )
    se.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the candidate sources / stream baselines (recsys.candidates.sources.SourcesConfig), "
        "e.g. --source k=200 (every baseline) or --source stan.k=200 (one); repeatable",
    )
    options.add_common(se)
    se.set_defaults(func=cmd_stream_eval)

    d = options.command(sub, "demo-offline", help="train and evaluate on the shared real datasets")
    d.add_argument("--out", default="out", help="where reports and charts go (default out/)")
    options.add_common(d)
    d.set_defaults(func=cmd_demo_offline)


def train_test(args: argparse.Namespace, cfg: Config) -> tuple[list[Event], list[Event], Path]:
    """(train events, test events, path): --data split by time, or --data and --test."""
    from recsys.data.datasets import load, time_split

    events, path = load(args.data, args.format, **options.load_options(args, cfg))
    if args.test:
        test_events, _ = load(args.test, args.format, **options.load_options(args, cfg))
        return events, test_events, path
    return (*time_split(events, test_fraction=args.test_fraction), path)


def write_outputs(report: dict, output: str | None, plot_to: str | None, plot: Callable[..., None], title: str) -> None:
    """The report as JSON (--output) and its chart (--plot), if asked for."""
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(report, indent=2))
        say(f"wrote {output}")
    if plot_to:
        Path(plot_to).parent.mkdir(parents=True, exist_ok=True)
        plot(report, plot_to, title=title)
        say(f"wrote {plot_to}")


def run_evaluate(
    cfg: Config,
    train_events: Sequence[Event],
    test_events: Sequence[Event],
    path: Path,
    kinds: dict[str, TrainConfig],
    output: str | None,
    plot_to: str | None,
) -> None:
    from recsys.evaluation.offline import evaluate, format_table, plot

    report = evaluate(train_events, test_events, ccfg=cfg.confidence, scfg=cfg.scoring, kinds=kinds, progress=say)
    report["data"] = str(path)
    print(format_table(report))
    write_outputs(report, output, plot_to, plot, f"{path.name}: {report['cases']} test users")


def cmd_evaluate(args: argparse.Namespace) -> int:
    cfg = options.load(args)
    train_events, test_events, path = train_test(args, cfg)
    kinds = {k: options.train_config(cfg, args, k) for k in args.kinds.split(",")}
    run_evaluate(cfg, train_events, test_events, path, kinds, args.output, args.plot)
    return ExitCode.OK


def cmd_stream_eval(args: argparse.Namespace) -> int:
    from recsys.candidates.sources import BASELINES, SourcesConfig
    from recsys.data.datasets import time_split
    from recsys.evaluation.streaming import (
        METHODS,
        StreamEvalConfig,
        format_markdown,
        format_table,
        plot,
        stream_evaluate,
    )

    cfg = options.load(args)
    train_events, test_events, path = train_test(args, cfg)
    if args.validation:
        train_events, test_events = time_split(train_events, test_fraction=args.test_fraction)
    try:
        pairs = [kv.split("=", 1) for kv in args.source]
        if any(len(kv) != 2 for kv in pairs):
            raise ValueError("expected KEY=VALUE or METHOD.KEY=VALUE")
        sources = SourcesConfig().with_params({k: v for k, v in pairs if "." not in k})
        per: dict[str, dict[str, str]] = {}
        for k, v in pairs:
            if "." in k:
                m, key = k.split(".", 1)
                if m not in BASELINES:
                    raise ValueError(f"{m!r} is not a stream baseline ({', '.join(BASELINES)})")
                per.setdefault(m, {})[key] = v
        baseline_sources = {m: sources.with_params(kv) for m, kv in per.items()}
    except ValueError as exc:
        raise RecsysError(f"--source: {exc}") from exc
    methods = tuple(args.methods.split(",")) if args.methods else METHODS
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise RecsysError(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    ecfg = StreamEvalConfig(
        retrain_hours=args.retrain_hours,
        item_foldin_every=args.item_foldin_every,
        pop_window_hours=args.pop_window_hours,
        methods=methods,
        sources=sources,
        baseline_sources=baseline_sources,
        ranker=cfg.ranker,  # the [ranker] section: how the ranker stream-eval trains is configured
    )
    tcfg = options.train_config(cfg, args)
    ranker = None
    if "ranker" in methods:
        from recsys.candidates.training import train_ranker

        ranker = train_ranker(train_events, ccfg=cfg.confidence, scfg=cfg.scoring, tcfg=tcfg, ecfg=ecfg, progress=say)
    report = stream_evaluate(
        train_events,
        test_events,
        ccfg=cfg.confidence,
        scfg=cfg.scoring,
        tcfg=tcfg,
        ecfg=ecfg,
        progress=say,
        ranker=ranker,
    )
    report["data"] = str(path)
    report["window"] = "validation" if args.validation else "test"
    print(format_table(report))
    print()
    print(format_markdown(report))
    write_outputs(
        report,
        args.output,
        args.plot,
        plot,
        f"{path.name}: streaming evaluation, {report['scored_events']} test events",
    )
    return ExitCode.OK


def cmd_demo_offline(args: argparse.Namespace) -> int:
    """Train and evaluate on every shared dataset that is present: the library end to end."""
    from recsys.config import env_name
    from recsys.data.datasets import DATASETS, data_dir, load, time_split

    cfg = options.load(args)
    folder = data_dir(cfg.ops.data)
    out = Path(args.out)
    ran = 0
    for name in ("taobao", "yoochoose"):
        if not (folder / DATASETS[name]).exists():
            say(f"{name}: not found under {folder} (set {env_name('ops', 'data')}); skipped")
            continue
        say(f"== {name} ==")
        events, path = load(str(folder / DATASETS[name]))
        train_events, test_events = time_split(events, test_fraction=0.2)
        kinds = {k: options.train_config(cfg, None, k) for k in ("als", "bpr")}
        run_evaluate(
            cfg, train_events, test_events, path, kinds, str(out / f"eval-{name}.json"), str(out / f"eval-{name}.png")
        )
        ran += 1
    if not ran:
        raise RecsysError(f"no shared dataset found under {folder}: set {env_name('ops', 'data')}")
    return ExitCode.OK
