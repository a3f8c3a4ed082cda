"""`recsys demo`: the whole system live for a while (devtools/demo.py)."""

from __future__ import annotations

import argparse
from typing import Any

from streaming.cli import options


def add_parser(sub: Any) -> None:
    from devtools.demo import DemoOptions

    d = DemoOptions()
    p = options.command(sub, "demo", help="run the whole system live for a while: broker, worker, retrains, replay")
    p.add_argument(
        "--duration", type=float, default=d.duration, help=f"seconds of live replay (default {d.duration:g})"
    )
    p.add_argument("--rate", type=float, default=d.rate, help=f"events per second replayed (default {d.rate:g})")
    p.add_argument(
        "--retrain-every",
        type=float,
        default=d.retrain_every,
        help=f"seconds between retrains (default {d.retrain_every:g})",
    )
    p.add_argument("--web-port", type=int, default=None, help="the worker's HTTP port (stream.web_port, default 6066)")
    p.add_argument(
        "--print-every",
        type=float,
        default=d.print_every,
        help=f"print one recommendation this often (s, default {d.print_every:g})",
    )
    p.add_argument(
        "--simulate-events",
        type=int,
        default=d.simulate_events,
        help=f"events to simulate without real data (default {d.simulate_events})",
    )
    p.add_argument("--workdir", default=d.workdir, help=f"where runs keep their state and logs (default {d.workdir})")
    p.add_argument("--no-history", action="store_true", help="skip replaying the history through the worker")
    options.add_common(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from devtools.demo import DemoOptions, run_demo

    opts = DemoOptions(
        duration=args.duration,
        rate=args.rate,
        retrain_every=args.retrain_every,
        print_every=args.print_every,
        simulate_events=args.simulate_events,
        workdir=args.workdir,
        no_history=args.no_history,
    )
    return run_demo(opts, options.load(args, web_port=args.web_port))
