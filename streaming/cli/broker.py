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
            p.add_argument(
                "--secure",
                action="store_true",
                help="a fresh data dir gets a SASL_SSL listener (SCRAM-SHA-512/256, its own CA); "
                "prints the client settings",
            )
            p.add_argument(
                "--mtls",
                action="store_true",
                help="a fresh data dir gets an SSL listener that requires client certificates "
                "(with --secure: both listeners)",
            )
        options.add_common(p)
        p.set_defaults(func=cmd_broker)


def cmd_broker(args: argparse.Namespace) -> int:
    from devtools.broker import BrokerError, KafkaBroker, default_data_dir

    cfg = options.load(args)
    secure, mtls = getattr(args, "secure", False), getattr(args, "mtls", False)
    mode = {(False, False): None, (True, False): "sasl_ssl", (False, True): "mtls", (True, True): "both"}
    broker = KafkaBroker(
        data_dir=default_data_dir(args.data_dir or cfg.ops.kafka_dir),
        port=getattr(args, "port", None),
        jar_cache=cfg.ops.kafka_cache,
        security=mode[secure, mtls],
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

    stored = KafkaBroker(data_dir=broker.data_dir).mode if broker.state_file.exists() else None
    if stored is not None and broker.security is not None and stored != broker.security:
        print(
            f"the broker in {broker.data_dir} was made {stored}; its mode is fixed for its data dir "
            "(stop it and use another --data-dir)",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    if broker.is_running():
        print(f"already running pid={broker.pid} bootstrap={broker.bootstrap}")
        print_client_env(broker)
        return ExitCode.OK
    try:
        broker.start(timeout=args.timeout, detach=not args.foreground)
    except BrokerError as e:
        print(e, file=sys.stderr)
        return ExitCode.FAILED
    print(f"Kafka {broker.version} ready at {broker.bootstrap} (pid {broker.pid}, data {broker.data_dir})", flush=True)
    print_client_env(broker)
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


def print_client_env(broker: Any) -> None:
    """A secured broker: the settings its clients need, as `export` lines (the password by file)."""
    modes = {"sasl_ssl": [False], "mtls": [True], "both": [False, True]}.get(broker.mode, [])
    for mtls in modes:
        print(f"# clients of the {'mutual-TLS' if mtls else 'SASL_SSL (SCRAM-SHA-512)'} listener:")
        for k, v in broker.client_env(mtls).items():
            print(f"export {k}={v}")
    sys.stdout.flush()
