"""The `recsys` command: one module per command group in this package.

    recsys train | evaluate | stream-eval | demo-offline    the library on files (train.py, evaluate.py)
    recsys recommend | similar                           ask a model (lookup.py)
    recsys models [list|show|rollback|pin|unpin]         the model store (models.py)
    recsys report INPUT.json                             a JSON result as an HTML page (report.py)
    recsys broker start|stop|status                      the project's own Kafka (broker.py)
    recsys topics                                        create the project's topics (topics.py)
    recsys worker                                        a Faust worker (worker.py)
    recsys retrain --once | --every                      batch retrain, gate, publish (retrain.py)
    recsys replay FILE|NAME                              produce a dataset to the clickstream (replay.py)
    recsys items load|set|delete|show                    the item catalogue on the items topic (items.py)
    recsys tail                                          print recommendations as they arrive (tail.py)
    recsys dlq [--reason R] [--follow]                   print dead letters with their reasons (dlq.py)
    recsys demo                                          all of the above, end to end (demo.py)
    recsys config                                        the effective configuration (config.py)

Every command takes --config FILE and --set section.key=value (options.py) and runs with the one
configuration (recsys.config). Exit statuses are `recsys.errors.ExitCode`: an error the user can
act on prints one line and exits 2 (USAGE), Ctrl-C exits 130; docs/troubleshooting.md lists them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from recsys.errors import ExitCode, RecsysError
from streaming.cli import (
    broker,
    config,
    demo,
    dlq,
    evaluate,
    items,
    lookup,
    models,
    replay,
    report,
    retrain,
    tail,
    topics,
    train,
    worker,
)

# In the order `recsys -h` lists them.
GROUPS = (
    train,
    evaluate,
    lookup,
    models,
    report,
    broker,
    topics,
    worker,
    retrain,
    replay,
    items,
    tail,
    dlq,
    demo,
    config,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys", description="Real-time implicit-feedback recommendations.")
    p.add_argument(
        "--log-json",
        action="store_true",
        help="logs as one JSON object per line, anywhere on the line (also STREAMREC_LOG_FORMAT=json)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parser(sub)
    return p


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None, log_json: bool = False) -> int:
    """Parse and run one command; its exit status. An unknown option is reported with the usage
    of the (sub)command it was given to."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    args.log_json = log_json or getattr(args, "log_json", False)
    from recsys.model.threads import pin_blas_threads

    pin_blas_threads()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args))
    except RecsysError as e:
        print(f"recsys {args.command}: error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", ExitCode.USAGE))
    except KeyboardInterrupt:
        print(f"recsys {args.command}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    from streaming.logs import setup, take_flag

    # --log-json is global: accepted anywhere on the line (`recsys worker --log-json` too).
    argv, as_json = take_flag(sys.argv[1:] if argv is None else list(argv))
    setup(as_json, logging.INFO)
    return run(build_parser(), argv, log_json=as_json)


if __name__ == "__main__":
    sys.exit(main())
