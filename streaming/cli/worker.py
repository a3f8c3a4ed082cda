"""`recsys worker`: one Faust worker, clickstream in, recommendations out."""

from __future__ import annotations

import argparse
from typing import Any

from recsys.errors import ExitCode
from streaming.cli import options


def add_parser(sub: Any) -> None:
    w = options.command(sub, "worker", help="run a Faust worker: clickstream in, recommendations out")
    w.add_argument("--web-port", type=int, help="HTTP port (stream.web_port, default 6066)")
    w.add_argument("--data-dir", help="where this worker's RocksDB tables live (stream.data_dir, default var/worker)")
    w.add_argument("--app-id", help="consumer group / application id (stream.app_id, default streamrec)")
    w.add_argument("--standby-replicas", type=int, help="table standby replicas (stream.standby_replicas, default 0)")
    options.add_input_args(w)  # the validator reads the shop's own names, as the loaders do
    options.add_common(w)
    w.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from streaming.logs import no_spinner, worker_logging_config
    from streaming.topics import ensure, topics
    from streaming.worker.app import create_app

    cfg = options.kafka_config(
        args, web_port=args.web_port, data_dir=args.data_dir, app_id=args.app_id, standby_replicas=args.standby_replicas
    )
    s = cfg.stream
    ensure(s.bootstrap, topics(s).core)
    app = create_app(cfg)
    # Faust replaces the root log handlers; with JSON logs asked for, it installs ours instead.
    worker = faust.Worker(
        app,
        loglevel=s.log_level,
        quiet=True,
        redirect_stdouts=False,
        logging_config=worker_logging_config(s.log_level, cfg.ops.log_format == "json"),
    )
    no_spinner(worker)
    worker.execute_from_commandline()  # runs until SIGTERM/SIGINT, then stops cleanly
    return ExitCode.OK
