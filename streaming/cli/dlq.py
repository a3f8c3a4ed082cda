"""`recsys dlq`: print the dead letters (rejected clickstream messages) with their reasons."""

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
        "dlq",
        help="print dead letters: rejected events, why, and where they came from",
        description="Read the dead-letter topic (stream.dlq_topic): one entry per rejected message with its "
        "reason, detail, source topic/partition/offset and the original key and value. By default prints "
        "every retained dead letter and exits; reasons are listed in docs/formats.md.",
    )
    p.add_argument("--reason", default=None, help="only this reason, e.g. bad_ts or key_mismatch")
    p.add_argument("--follow", "-f", action="store_true", help="then keep printing new dead letters (Ctrl-C to stop)")
    p.add_argument("--new", action="store_true", help="skip the retained ones: only those that arrive from now on")
    p.add_argument("-n", "--max", type=int, default=None, metavar="N", help="stop after N dead letters")
    p.add_argument("--json", action="store_true", help="one JSON object per dead letter")
    p.add_argument("--topic", default=None, help="dead-letter topic (default: stream.dlq_topic)")
    options.add_common(p)
    p.set_defaults(func=cmd_dlq)


def cmd_dlq(args: argparse.Namespace) -> int:
    from streaming.jobs.dlq import format_dead_letter, read_dead_letters

    s = options.kafka_config(args).stream
    topic = args.topic or s.dlq_topic
    shown = 0
    try:
        for rec in read_dead_letters(
            s.bootstrap,
            topic,
            reason=args.reason,
            follow=args.follow,
            new_only=args.new,
            max_messages=args.max,
        ):
            print(json.dumps(rec.as_dict(), ensure_ascii=False) if args.json else format_dead_letter(rec), flush=True)
            shown += 1
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `| head`: the reader is gone, nothing is wrong
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit, so the final flush is silent
    what = f" with reason {args.reason!r}" if args.reason else ""
    print(f"{shown} dead letters{what} on {topic} at {s.bootstrap}", file=sys.stderr)
    return ExitCode.OK
