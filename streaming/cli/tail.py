"""`recsys tail`: print recommendations as they are published."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

from recsys.errors import ExitCode
from streaming.cli import options


def add_parser(sub: Any) -> None:
    p = options.command(
        sub,
        "tail",
        help="print recommendations as they are published",
        description="Follow the recommendations topic, one line per recommendation.",
    )
    p.add_argument("--topic", default=None, help="recommendations topic (default: stream.recommendations_topic)")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest retained message")
    p.add_argument("--user", default=None, help="only this user's recommendations")
    p.add_argument("-n", "--max", type=int, default=None, metavar="N", help="stop after N recommendations")
    p.add_argument("--top", type=int, default=5, help="items shown per line (default 5)")
    p.add_argument("--json", action="store_true", help="print the raw JSON objects instead")
    options.add_common(p)
    p.set_defaults(func=cmd_tail)


def cmd_tail(args: argparse.Namespace) -> int:
    from streaming.jobs.tail import Tail, format_recommendation, tail

    s = options.kafka_config(args).stream
    topic = args.topic or s.recommendations_topic
    it: Tail | None = None
    try:
        it = tail(s.bootstrap, topic, from_beginning=args.from_beginning, max_messages=args.max, user=args.user)
        print(f"tailing {topic} at {s.bootstrap} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        for d in it:
            line = json.dumps(d, ensure_ascii=False) if args.json else format_recommendation(d, args.top)
            print(line, flush=True)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `| head`: the reader is gone, nothing is wrong
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit, so the final flush is silent
    finally:
        if it is not None:
            it.close()
    return ExitCode.OK
