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
    from streaming.kafka.admin import ensure_topics
    from streaming.topics import topic_specs

    s = options.kafka_config(args).stream
    created = ensure_topics(s.bootstrap, topic_specs(s))
    print(
        f"topics on {s.bootstrap}: "
        + ", ".join(f"{t}({n})" for t, n in topic_specs(s).items())
        + (f"; created {', '.join(created)}" if created else "; all existed")
    )
    return ExitCode.OK
