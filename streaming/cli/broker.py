"""`recsys broker start|stop|status`: the project's own Kafka broker (devtools/broker.py)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from recsys.errors import ExitCode
from streaming.cli import options


def add_parser(sub: Any) -> None:
    b = options.command(
        sub,
        "broker",
        help="start/stop/status of the project's own Kafka broker",
        description="The project's own single-node Kafka (KRaft, loopback), its jars fetched "
        "from Maven Central once (ops.kafka_cache), its data in ops.kafka_dir.",
    )
    actions = b.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, what in (
        ("start", "start the broker (detached) and wait until it is ready"),
        ("stop", "stop the broker"),
        ("status", "is it running? exit status 0 if so, 1 if not"),
    ):
        p = options.command(actions, name, help=what, description=what[0].upper() + what[1:] + ".")
        p.add_argument("--data-dir", default=None, help="the broker's data dir (default: ops.kafka_dir, var/kafka)")
        if name == "start":
            p.add_argument("--port", type=int, default=None, help="listener port (default: the last one, else free)")
            p.add_argument("--foreground", action="store_true", help="run until Ctrl-C instead of detaching")
            p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for readiness (default 60)")
        options.add_common(p)
        p.set_defaults(func=cmd_broker)


def cmd_broker(args: argparse.Namespace) -> int:
    from devtools.broker import BrokerError, KafkaBroker, default_data_dir

    cfg = options.load(args)
    broker = KafkaBroker(
        data_dir=default_data_dir(args.data_dir or cfg.ops.kafka_dir),
        port=getattr(args, "port", None),
        jar_cache=cfg.ops.kafka_cache,
    )
    if args.action == "status":
        if broker.is_running():
            print(f"running pid={broker.pid} bootstrap={broker.bootstrap} data_dir={broker.data_dir}")
            return ExitCode.OK
        print(f"not running (data_dir={broker.data_dir})")
        return ExitCode.FAILED
    if args.action == "stop":
        if not broker.is_running():
            print(f"not running (data_dir={broker.data_dir})")
            return ExitCode.OK
        broker.stop()
        print("stopped")
        return ExitCode.OK

    if broker.is_running():
        print(f"already running pid={broker.pid} bootstrap={broker.bootstrap}")
        return ExitCode.OK
    try:
        broker.start(timeout=args.timeout, detach=not args.foreground)
    except BrokerError as e:
        print(e, file=sys.stderr)
        return ExitCode.FAILED
    print(f"Kafka {broker.version} ready at {broker.bootstrap} (pid {broker.pid}, data {broker.data_dir})", flush=True)
    if not args.foreground:
        return ExitCode.OK
    try:
        while broker.is_running():
            time.sleep(0.5)
        print("broker exited; see " + str(broker.log_file), file=sys.stderr)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        broker.stop()
        return ExitCode.OK
