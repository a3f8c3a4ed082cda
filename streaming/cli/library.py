"""`recsys` command line: the library's commands (train, evaluate, recommend, similar, models).

The streaming commands (demo, worker, replay, tail, retrain, broker) are added by
`streaming.cli.main`, which builds on `build_parser` here; this module never imports Kafka.
Every error the user can cause ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from recsys.errors import RecsysError

DEFAULT_MODEL_DIR = os.environ.get("STREAMREC_MODEL_DIR", "var/models")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- shared option groups -------------------------------------------------------------------
def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data", required=required, metavar="FILE|NAME",
                   help="events file (any supported format) or a shared dataset name "
                        "(taobao, taobao_small, yoochoose, rees46, rees46_small, retailrocket, otto)")
    p.add_argument("--format", default="auto", help="file format (default: detect from the header)")
    p.add_argument("--lenient", action="store_true", help="skip and count malformed rows instead of stopping")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=("als", "bpr"), default="als")
    p.add_argument("--factors", type=int, default=None, help="default: recsys.defaults")
    from recsys.defaults import BPR, CONFIDENCE, TRAIN

    p.add_argument("--iterations", type=int, default=None,
                   help=f"default: {TRAIN.iterations} for ALS, {BPR.iterations} for BPR")
    p.add_argument("--regularization", type=float, default=None,
                   help=f"default: {TRAIN.regularization} ALS, {BPR.regularization} BPR")
    p.add_argument("--alpha", type=float, default=None,
                   help=f"confidence c = 1 + alpha*r (default {CONFIDENCE.alpha})")
    p.add_argument("--threads", type=int, default=0, help="training threads (0: all cores)")


def add_scoring_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=int, default=10, help="list length")
    p.add_argument("--user-weight", type=float, default=None,
                   help="blend weight of the user score vs similarity to the query item (0..1)")


def model_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", default=DEFAULT_MODEL_DIR, help=f"model store (default {DEFAULT_MODEL_DIR})")


# -- building configs from options ----------------------------------------------------------
def confidence_config(args: argparse.Namespace):
    from recsys.defaults import CONFIDENCE

    return replace(CONFIDENCE, alpha=args.alpha) if getattr(args, "alpha", None) is not None else CONFIDENCE


def train_config(args: argparse.Namespace, kind: str | None = None):
    from recsys.defaults import BPR, TRAIN

    kind = kind or args.kind
    base = BPR if kind == "bpr" else TRAIN
    over: dict[str, Any] = {"num_threads": args.threads}
    if getattr(args, "factors", None) is not None:
        over["factors"] = args.factors
    if args.iterations is not None:
        over["iterations"] = args.iterations
    if args.regularization is not None:
        over["regularization"] = args.regularization
    return replace(base, **over)


def scoring_config(args: argparse.Namespace):
    from recsys.defaults import SCORING

    over: dict[str, Any] = {"n": args.n}
    if getattr(args, "user_weight", None) is not None:
        over["user_weight"] = args.user_weight
    return replace(SCORING, **over)


def load(args: argparse.Namespace, key: str = "data"):
    from recsys.data.datasets import DATASETS, LoadStats, dataset_path, load_events

    src = getattr(args, key)
    path = dataset_path(src) if src in DATASETS else Path(src)
    stats = LoadStats()
    t0 = time.time()
    events = load_events(path, fmt=args.format, lenient=args.lenient, stats=stats)
    note = f", skipped {stats.skipped} malformed rows ({dict(stats.reasons)})" if stats.skipped else ""
    say(f"loaded {len(events)} events from {path} in {time.time() - t0:.1f}s{note}")
    return events, path


# -- commands -------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from recsys.confidence import build_profiles
    from recsys.model.item_foldin import user_gram
    from recsys.model.store import ModelStore
    from recsys.model.train import train

    events, path = load(args)
    ccfg, tcfg = confidence_config(args), train_config(args)
    profiles = build_profiles(events, ccfg)
    say(f"training {tcfg.kind.upper()}: {len(profiles)} users, {tcfg.factors} factors, {tcfg.iterations} iterations")
    model, x, _ = train(profiles, ccfg, tcfg, progress=sys.stderr.isatty(),
                        metadata={"data_source": str(path.resolve()), "n_events": len(events)})
    # XᵀX of the training users goes with it: workers fold new items in against it
    where = ModelStore(args.model_dir).save(model, publish=True, user_gram=user_gram(x))
    say(f"model {model.version}: {model.n_items} items x {model.factors} factors "
        f"in {model.metadata['train_seconds']}s -> {where}")
    print(model.version)
    return 0


def train_test(args: argparse.Namespace):
    """(train events, test events, path): --data split by time, or --data and --test."""
    from recsys.data.datasets import time_split

    events, path = load(args)
    if args.test:
        test_events, _ = load(args, "test")
        return events, test_events, path
    return (*time_split(events, test_fraction=args.test_fraction), path)


def write_outputs(args: argparse.Namespace, report: dict, plot: Callable[..., None], title: str) -> None:
    """The report as JSON (--output) and its chart (--plot), if asked for."""
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2))
        say(f"wrote {args.output}")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(report, args.plot, title=title)
        say(f"wrote {args.plot}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from recsys.evaluation.offline import evaluate, format_table, plot

    train_events, test_events, path = train_test(args)
    kinds = {k: train_config(args, k) for k in args.kinds.split(",")}
    report = evaluate(train_events, test_events, ccfg=confidence_config(args), scfg=scoring_config(args),
                      kinds=kinds, progress=say)
    report["data"] = str(path)
    print(format_table(report))
    write_outputs(args, report, plot, f"{path.name}: {report['cases']} test users")
    return 0


def cmd_stream_eval(args: argparse.Namespace) -> int:
    from recsys.evaluation.streaming import METHODS, StreamEvalConfig, format_markdown, format_table, plot, stream_evaluate

    train_events, test_events, path = train_test(args)
    methods = tuple(args.methods.split(",")) if args.methods else METHODS
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise RecsysError(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    ecfg = StreamEvalConfig(retrain_hours=args.retrain_hours, item_foldin_every=args.item_foldin_every,
                            pop_window_hours=args.pop_window_hours, methods=methods)
    report = stream_evaluate(train_events, test_events, ccfg=confidence_config(args), scfg=scoring_config(args),
                             tcfg=train_config(args), ecfg=ecfg, progress=say)
    report["data"] = str(path)
    print(format_table(report))
    print()
    print(format_markdown(report))
    write_outputs(args, report, plot, f"{path.name}: streaming evaluation, {report['scored_events']} test events")
    return 0


def cmd_demo_offline(args: argparse.Namespace) -> int:
    """Train and evaluate on every shared dataset that is present: the library end to end."""
    from recsys.data.datasets import DATASETS, data_dir

    out = Path(args.out)
    ran = 0
    for name in ("taobao", "yoochoose"):
        if not (data_dir() / DATASETS[name]).exists():
            say(f"{name}: not found under {data_dir()} (set STREAMREC_DATA); skipped")
            continue
        say(f"== {name} ==")
        ns = argparse.Namespace(data=name, format="auto", lenient=False, test=None, test_fraction=0.2,
                                kinds="als,bpr", output=str(out / f"eval-{name}.json"),
                                plot=str(out / f"eval-{name}.png"), n=10, user_weight=None,
                                kind="als", factors=None, iterations=None, regularization=None, alpha=None,
                                threads=0)
        cmd_evaluate(ns)
        ran += 1
    if not ran:
        raise RecsysError(f"no shared dataset found under {data_dir()}: set STREAMREC_DATA")
    return 0


def _recommender(args: argparse.Namespace):
    from recsys.serving.recommender import Recommender
    from recsys.model.store import ModelStore

    model = ModelStore(args.model_dir).load(args.version)
    from recsys.defaults import CONFIDENCE

    return Recommender(model, CONFIDENCE, scoring_config(args))


def cmd_recommend(args: argparse.Namespace) -> int:
    from recsys.confidence import UserProfile

    rec = _recommender(args)
    profile = UserProfile()
    source = args.data or rec.model.metadata.get("data_source")
    if source:
        events, _ = load(argparse.Namespace(data=source, format=args.format, lenient=args.lenient))
        for e in events:
            if e.user == args.user:
                profile.apply(e, rec.ccfg)
    if args.item and args.item not in rec.model.item_index:
        say(f"item {args.item!r} is not in model {rec.version}: scoring without it")
    if not profile.items:
        say(f"user {args.user!r} has no history in {source}: using the query item or popularity")
    out = rec.recommend([profile], [args.item])[0]
    print(json.dumps({"user": args.user, "query": args.item, "model_version": out.model_version,
                      "source": out.source, "items": out.items, "scores": [round(s, 5) for s in out.scores]}))
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    rec = _recommender(args)
    out = rec.scorer.similar(args.item, args.n)
    if out is None:
        raise RecsysError(f"item {args.item!r} is not in model {rec.version} ({rec.model.n_items} items)")
    print(json.dumps({"item": args.item, "model_version": out.model_version, "items": out.items,
                      "scores": [round(s, 5) for s in out.scores]}))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from recsys.model.store import ModelStore

    store = ModelStore(args.model_dir)
    if args.action == "rollback":
        print(store.rollback())
    elif args.action == "pin":
        store.pin(args.version)
        print(args.version)
    elif args.action == "unpin":
        store.pin(None)
    elif args.action == "show":
        version = args.version or store.current()
        if version is None:
            raise RecsysError(f"no model in {store.root}: train one first (recsys train)")
        meta = store.metadata(version)
        print(json.dumps({"version": version, "serving": version == store.current(),
                          "pinned": store._pointer("PINNED") == version, "metadata": meta}, indent=2))
    else:
        cur = store.current()
        for v in store.versions():
            try:
                meta = store.metadata(v)
                metrics = meta.get("metrics", {})
                brief = " ".join(f"{k}={v_:.4f}" for k, v_ in metrics.items() if isinstance(v_, (int, float)))
                line = f"{v}  {meta.get('kind', '?'):<4} items={meta.get('n_items')} {brief}"
            except RecsysError as e:
                line = f"{v}  BROKEN: {e}"
            print(("* " if v == cur else "  ") + line)
    return 0


# -- parser ---------------------------------------------------------------------------------
def add_evaluation_args(p: argparse.ArgumentParser, held: str) -> None:
    """What `evaluate` and `stream-eval` share: data, model and scoring options, the test
    events (a separate file or the last share of --data), and where the report goes."""
    add_data_args(p)
    add_model_args(p)
    add_scoring_args(p)
    p.add_argument("--test", metavar="FILE|NAME", help="separate test events (default: time split of --data)")
    p.add_argument("--test-fraction", type=float, default=0.2, help=f"last share of events {held} (default 0.2)")
    p.add_argument("--output", help="write the report as JSON here")
    p.add_argument("--plot", help="save a PNG chart here")


def build_parser() -> tuple[argparse.ArgumentParser, Any]:
    p = argparse.ArgumentParser(prog="recsys", description="Real-time implicit-feedback recommendations.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model on an events file and publish it to the model store")
    add_data_args(t)
    add_model_args(t)
    model_dir_arg(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="offline evaluation on a time split (or a separate test file)")
    add_evaluation_args(e, "held out")
    e.add_argument("--kinds", default="als,bpr", help="models to compare (default als,bpr)")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("recommend", help="recommend for a user, optionally looking at an item")
    r.add_argument("--user", required=True)
    r.add_argument("--item", help="the query item the user is looking at")
    add_data_args(r, required=False)
    add_scoring_args(r)
    model_dir_arg(r)
    r.add_argument("--version", help="model version (default: the serving one)")
    r.set_defaults(func=cmd_recommend)

    s = sub.add_parser("similar", help="items similar to an item")
    s.add_argument("--item", required=True)
    add_scoring_args(s)
    model_dir_arg(s)
    s.add_argument("--version", help="model version (default: the serving one)")
    s.set_defaults(func=cmd_similar)

    se = sub.add_parser("stream-eval", help="streaming evaluation: predict, then update, in time order")
    add_evaluation_args(se, "replayed")
    se.add_argument("--methods", help="comma-separated subset of the methods (default: all)")
    se.add_argument("--retrain-hours", type=float, default=6.0, help="event-time hours between retrains (default 6)")
    se.add_argument("--item-foldin-every", type=int, default=200, help="events between new-item refreshes")
    se.add_argument("--pop-window-hours", type=float, default=24.0, help="popularity window (0: all so far)")
    se.set_defaults(func=cmd_stream_eval)

    d = sub.add_parser("demo-offline", help="train and evaluate on the shared real datasets")
    d.add_argument("--out", default="out", help="where reports and charts go (default out/)")
    d.set_defaults(func=cmd_demo_offline)

    m = sub.add_parser("models", help="list model versions, show the serving one, roll back, pin")
    m.add_argument("action", nargs="?", default="list", choices=("list", "show", "rollback", "pin", "unpin"))
    m.add_argument("version", nargs="?")
    model_dir_arg(m)
    m.set_defaults(func=cmd_models)

    from recsys.evaluation.report import add_parser as add_report_parser

    add_report_parser(sub)
    return p, sub


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    from recsys.model.threads import pin_blas_threads

    pin_blas_threads()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except RecsysError as e:
        print(f"recsys {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"recsys {args.command}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser, _ = build_parser()
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
