"""`recsys topics`: create the project's topics."""

from __future__ import annotations

import argparse
from typing import Any

from recsys.errors import ExitCode
from streaming.cli import options


def add_parser(sub: Any) -> None:
    p = options.command(sub, "topics", help="create the project's topics")
    options.add_common(p)
    p.set_defaults(func=cmd_topics)


def cmd_topics(args: argparse.Namespace) -> int:
    from streaming.topics import ensure, topic_specs, topics

    s = options.kafka_config(args).stream
    created = ensure(s.bootstrap, topics(s).core)  # each with its own configuration (compaction)
    print(
        f"topics on {s.bootstrap}: "
        + ", ".join(f"{t}({n})" for t, n in topic_specs(s).items())
        + (f"; created {', '.join(created)}" if created else "; all existed")
    )
    return ExitCode.OK
