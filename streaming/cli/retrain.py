"""`recsys retrain --once | --every DURATION`: batch retrain, gate, publish, announce."""

from __future__ import annotations

import argparse
from typing import Any

from recsys.errors import ExitCode, RecsysError
from streaming.cli import options


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `5m`, `1h` or `1d`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 5m, 1h)") from None


def add_parser(sub: Any) -> None:
    p = options.command(sub, "retrain", help="retrain from the state changelog (or a history file) and announce")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--once", action="store_true", help="one retrain, then exit")
    g.add_argument("--every", type=parse_duration, metavar="DURATION", help="retrain on a schedule (e.g. 5m)")
    p.add_argument("--data", metavar="FILE|NAME", help="train from this history file instead of the changelog")
    options.add_input_args(p)
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (ops.retrain_metrics_port)")
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics server binds (0.0.0.0 in a container; default 127.0.0.1)",
    )
    p.add_argument("--max-runs", type=int, help="with --every: stop after this many runs")
    p.add_argument(
        "--cold",
        action="store_true",
        help="train from scratch, not from the serving model's item factors (train.warm_start off)",
    )
    p.add_argument(
        "--engine",
        choices=("implicit", "spark"),
        help="implicit: train in this process; spark: MLlib ALS where Spark runs, the changelog read by "
        "Spark's Kafka source (stream.retrain_engine; pip install 'streamrec[spark]')",
    )
    p.add_argument(
        "--spark-master",
        metavar="URL",
        help="with --engine spark: local[N], spark://host:7077, ... (stream.spark_master)",
    )
    options.add_common(p)
    p.set_defaults(func=cmd_retrain)


def cmd_retrain(args: argparse.Namespace) -> int:
    from streaming.jobs.retrain import run

    if not args.once and args.every is None:
        raise RecsysError("say --once or --every DURATION")
    cfg = options.kafka_config(args)
    if args.cold:
        from dataclasses import replace

        cfg = replace(cfg, train=replace(cfg.train, warm_start=False))
    if args.engine or args.spark_master:
        from dataclasses import replace

        engine = args.engine or cfg.stream.retrain_engine
        cfg = replace(
            cfg,
            stream=replace(
                cfg.stream, retrain_engine=engine, spark_master=args.spark_master or cfg.stream.spark_master
            ),
        )
    trainer = None
    if cfg.stream.retrain_engine == "spark":
        from streaming.jobs import spark_engine
        from streaming.jobs.retrain import clickstream_window

        window = clickstream_window(cfg.stream, cfg) if cfg.ranker.retrain else None

        def trainer(store: Any, metrics: Any) -> Any:
            return spark_engine.retrain_once(store, cfg, metrics, window=window)

    rc = run(
        cfg.stream,
        data=args.data,
        every_s=None if args.once else args.every,
        metrics_port=args.metrics_port or cfg.ops.retrain_metrics_port or None,
        max_runs=args.max_runs,
        config=cfg,
        metrics_host=args.metrics_host,
        trainer=trainer,
    )
    return ExitCode(rc)
