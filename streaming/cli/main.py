"""The `recsys` command: the library's commands (streaming.cli.library) plus the streaming ones.

    recsys broker start|stop|status   the project's own Kafka (KRaft, loopback)
    recsys topics                     create the project's topics
    recsys worker                     a Faust worker (clickstream -> recommendations)
    recsys retrain --once | --every   batch retrain from the state changelog or a history file
    recsys replay FILE|NAME           produce a dataset to the clickstream topic
    recsys tail                       print recommendations as they arrive
    recsys demo                       all of the above, end to end
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import TYPE_CHECKING, Any, Sequence

from streaming.cli import library as lib_cli

from recsys.settings import Settings

if TYPE_CHECKING:
    from recsys.config import Config


def add_settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: STREAMREC_BOOTSTRAP, "
                                       "else the project's own broker in var/kafka)")
    p.add_argument("--partitions", type=int, help="clickstream partitions (default 4)")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (default: $STREAMREC_CONFIG); "
                                                    "see docs/configuration.md")
    p.add_argument("--model-dir", help="model store (default var/models)")


def config_from(args: argparse.Namespace, **extra: Any) -> "Config":
    """The effective configuration (defaults < file < STREAMREC_* < these options), with the
    Kafka bootstrap resolved (the project's own broker when none is set)."""
    from devtools.broker import resolve_bootstrap
    from recsys.config import load_config

    stream = {k: v for k, v in dict(partitions=getattr(args, "partitions", None),
                                    model_dir=getattr(args, "model_dir", None), **extra).items() if v is not None}
    cfg = load_config(getattr(args, "config", None), overrides={"stream": stream})
    bootstrap = resolve_bootstrap(getattr(args, "bootstrap", None) or cfg.stream.bootstrap)
    return dataclasses.replace(cfg, stream=cfg.stream.replace(bootstrap=bootstrap))


def settings_from(args: argparse.Namespace, **extra: Any) -> Settings:
    return config_from(args, **extra).stream


from streaming.topics import topic_specs  # noqa: E402  (moved; kept importable here)


def cmd_topics(args: argparse.Namespace) -> int:
    from streaming.kafka.admin import ensure_topics

    s = settings_from(args)
    created = ensure_topics(s.bootstrap, topic_specs(s))
    print(f"topics on {s.bootstrap}: " + ", ".join(f"{t}({n})" for t, n in topic_specs(s).items())
          + (f"; created {', '.join(created)}" if created else "; all existed"))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from streaming.worker.app import create_app
    from streaming.kafka.admin import ensure_topics

    cfg = config_from(args, web_port=args.web_port, data_dir=args.data_dir, app_id=args.app_id,
                      standby_replicas=args.standby_replicas)
    s = cfg.stream
    ensure_topics(s.bootstrap, topic_specs(s))
    app = create_app(s, config=cfg)
    from streaming.logs import no_spinner, worker_logging_config

    # Faust replaces the root log handlers; with JSON logs asked for, it installs ours instead.
    worker = faust.Worker(app, loglevel=s.log_level, quiet=True, redirect_stdouts=False,
                          logging_config=worker_logging_config(s.log_level))
    no_spinner(worker)
    worker.execute_from_commandline()  # runs until SIGTERM/SIGINT, then stops cleanly
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from devtools import broker

    return broker.main(args.broker_args)


def cmd_models(args: argparse.Namespace) -> int:
    """`recsys models ...` (streaming.cli.library), plus --announce: tell the running workers to load
    what the store now serves (after rollback, pin or unpin), on the model-updates topic."""
    rc = lib_cli.cmd_models(args)
    if rc != 0 or not getattr(args, "announce", False):
        return rc
    from recsys.errors import ConfigError
    from recsys.model.store import ModelStore

    from streaming.jobs.retrain import announce

    if args.action not in ("rollback", "pin", "unpin"):
        raise ConfigError("--announce goes with rollback, pin or unpin")
    s = settings_from(args)
    version = ModelStore(args.model_dir).current()
    if version is None:
        raise ConfigError(f"no model to announce in {args.model_dir}")
    announce(s.bootstrap, s.model_updates_topic, version, {"reason": args.action})
    print(f"announced {version} on {s.model_updates_topic}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, sub = lib_cli.build_parser()
    m = sub.choices["models"]
    m.add_argument("--announce", action="store_true",
                   help="with rollback/pin/unpin: also tell the running workers (model-updates topic)")
    m.add_argument("--bootstrap", help="Kafka bootstrap servers, for --announce (default: as for `worker`)")
    m.set_defaults(func=cmd_models)
    parser.add_argument("--log-json", action="store_true",
                        help="logs as one JSON object per line (also STREAMREC_LOG_FORMAT=json)")

    b = sub.add_parser("broker", help="start/stop/status of the project's own Kafka broker",
                       add_help=False)
    b.add_argument("broker_args", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_broker)

    t = sub.add_parser("topics", help="create the project's topics")
    add_settings_args(t)
    t.set_defaults(func=cmd_topics)

    w = sub.add_parser("worker", help="run a Faust worker: clickstream in, recommendations out")
    add_settings_args(w)
    w.add_argument("--web-port", type=int, help="HTTP port (default 6066)")
    w.add_argument("--data-dir", help="where this worker's RocksDB tables live (default var/worker)")
    w.add_argument("--app-id", help="consumer group / application id (default streamrec)")
    w.add_argument("--standby-replicas", type=int, help="table standby replicas (default 0)")
    w.set_defaults(func=cmd_worker)

    from recsys import config

    from devtools import demo

    from streaming.jobs import replay

    from streaming.jobs import retrain

    from streaming.jobs import tail

    replay.add_replay_parser(sub)
    tail.add_tail_parser(sub)
    retrain.add_parser(sub)
    demo.add_parser(sub)
    config.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from streaming.logs import setup, take_flag

    # --log-json is global: accepted anywhere on the line (`recsys worker --log-json` too).
    argv, as_json = take_flag(sys.argv[1:] if argv is None else list(argv))
    setup(as_json, logging.INFO)
    return lib_cli.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
