"""`recsys replay`: produce a dataset, a file or a simulation to the clickstream topic."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from recsys.data.simulator import SimConfig, add_sim_args, config_from_args
from recsys.errors import ConfigError, ExitCode
from streaming.cli import options


def add_parser(sub: Any) -> None:
    p = options.command(
        sub,
        "replay",
        help="replay events (a file, a dataset, or a simulation) into the clickstream topic",
        description="Produce events to Kafka in time order: key = user, value = event JSON. "
        "The configured clickstream (stream.clickstream_topic) is created (stream.partitions) if it "
        "does not exist; any other --topic must exist, or be asked for with --create.",
    )
    p.add_argument(
        "source",
        nargs="?",
        metavar="FILE|NAME",
        help="events file (any supported format) or shared dataset name; omit with --simulate",
    )
    p.add_argument("--topic", default=None, help="clickstream topic (default: stream.clickstream_topic)")
    p.add_argument(
        "--create", action="store_true", help="create --topic if it does not exist (else a missing topic is an error)"
    )
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=None, help="events per second")
    pace.add_argument(
        "--speedup", type=float, default=None, help="replay the original gaps between events this many times faster"
    )
    p.add_argument(
        "--no-retime",
        dest="retime",
        action="store_false",
        help="keep the original event times (default: ts = wall clock at send)",
    )
    p.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    p.add_argument(
        "--simulate", type=int, default=None, metavar="N", help="replay N simulated events instead of a file"
    )
    options.add_input_args(p, lenient=True)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_sim_args(p.add_argument_group("simulation (with --simulate)"))
    options.add_common(p)
    p.set_defaults(func=cmd_replay)


def simulation(args: argparse.Namespace) -> SimConfig | None:
    if args.simulate is None:
        return None
    if args.simulate < 1:
        raise ConfigError("replay: --simulate needs N >= 1")
    return config_from_args(args, args.simulate)


def cmd_replay(args: argparse.Namespace) -> int:
    from streaming.jobs.replay import events_from, replay
    from streaming.kafka.admin import ensure_topics, list_topics

    if args.simulate is not None and args.source:
        raise ConfigError("replay: give a FILE|NAME or --simulate N, not both")
    cfg = options.kafka_config(args)
    s = cfg.stream
    topic = args.topic or s.clickstream_topic
    events = events_from(
        args.source,
        simulation(args),
        args.lenient,
        mapping=cfg.input,
        allow_skip_type=args.allow_skip_type,
    )
    try:
        if topic != s.clickstream_topic and not args.create and topic not in list_topics(s.bootstrap):
            # A typo must not become a new topic nobody reads, with a report of success.
            raise ConfigError(
                f"replay: topic {topic!r} does not exist at {s.bootstrap}; the configured clickstream is "
                f"{s.clickstream_topic!r} (stream.clickstream_topic; leave out --topic to use it). "
                f"Pass --create to create {topic!r}."
            )
        ensure_topics(s.bootstrap, {topic: s.partitions})
    except ValueError:
        pass  # exists with another partition count: use it as it is
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - unreachable broker etc.: one clear line
        raise ConfigError(
            f"replay: cannot reach Kafka at {s.bootstrap} to check topic {topic!r}: {type(e).__name__}: {e}"
        ) from None
    pace = f"{args.rate:g}/s" if args.rate else f"x{args.speedup:g}" if args.speedup else "as fast as possible"
    print(
        f"replaying {min(len(events), args.limit if args.limit is not None else len(events))} events "
        f"to {topic} at {s.bootstrap} ({pace})",
        file=sys.stderr,
    )
    try:
        stats = replay(
            events,
            s.bootstrap,
            topic,
            rate=args.rate,
            speedup=args.speedup,
            retime=args.retime,
            limit=args.limit,
            progress=args.progress,
        )
    except KeyboardInterrupt:
        print("replay interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    print(stats.summary(), file=sys.stderr)
    return ExitCode.FAILED if stats.failed else ExitCode.OK
