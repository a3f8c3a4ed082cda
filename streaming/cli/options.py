"""The options the `recsys` commands share, and how they become the one configuration.

Every command takes the same configuration options:

    --config FILE               a TOML configuration file (default: $STREAMREC_CONFIG)
    --set SECTION.KEY=VALUE     one setting, e.g. stream.partitions=8 (repeatable)
    --bootstrap, --partitions, --model-dir
                                short for stream.bootstrap, stream.partitions, stream.model_dir

and every command that reads events takes the shop's own names (the `[input]` section):

    --columns user=customer,item=sku,type=action,ts=when
    --types view=page_view,addtocart=add_to_basket,transaction=order
    --time-format auto|iso8601|epoch_s|epoch_ms

and runs with `load(args)`: defaults < file < environment < command line (its --set, then its
own options such as --partitions or --alpha, which say the same thing more specifically).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from recsys.config import ENV_CONFIG_FILE, Config, load_config
from recsys.errors import ConfigError
from recsys.events import TIME_FORMATS
from recsys.model.train import BPR, TrainConfig

# The library commands' shorthands for settings: option dest -> section.key.
LIBRARY_SETTINGS = {"alpha": "confidence.alpha", "n": "scoring.n", "user_weight": "scoring.user_weight"}
# Model options that apply to every kind a command trains (`--kinds als,bpr` too).
MODEL_FLAGS = {
    "factors": "factors",
    "iterations": "iterations",
    "regularization": "regularization",
    "threads": "num_threads",
}
# The starting point of a kind other than the configured `train.kind`.
PRESETS: Mapping[str, TrainConfig] = {"als": TrainConfig(), "bpr": BPR}


def command(sub: Any, name: str, **kw: Any) -> argparse.ArgumentParser:
    """A (sub)command parser that knows itself, so an unknown option prints its usage."""
    p = sub.add_parser(name, **kw)
    p.set_defaults(parser=p)
    return p


def add_common(p: argparse.ArgumentParser, config_aliases: tuple[str, ...] = ()) -> None:
    """The configuration options every command takes."""
    g = p.add_argument_group("configuration (docs/configuration.md)")
    g.add_argument(
        "--config",
        *config_aliases,
        dest="config",
        metavar="FILE",
        help=f"TOML configuration file (default: ${ENV_CONFIG_FILE})",
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting (repeatable), e.g. --set stream.partitions=8",
    )
    g.add_argument(
        "--bootstrap",
        help="Kafka bootstrap servers (stream.bootstrap; default: STREAMREC_BOOTSTRAP, else the project's own broker)",
    )
    g.add_argument("--partitions", type=int, help="topic partitions (stream.partitions, default 4)")
    g.add_argument("--model-dir", help="model store (stream.model_dir, default var/models)")


def overrides(args: argparse.Namespace, **stream: Any) -> list[str | tuple[str, Any]]:
    """The command line's settings, in order: --set, then the shorthands and `stream` extras."""
    out: list[str | tuple[str, Any]] = list(getattr(args, "set", None) or [])
    if getattr(args, "log_json", False):
        out.append(("ops.log_format", "json"))
    shorthands = {
        "bootstrap": getattr(args, "bootstrap", None),
        "partitions": getattr(args, "partitions", None),
        "model_dir": getattr(args, "model_dir", None),
        **stream,
    }
    out += [(f"stream.{k}", v) for k, v in shorthands.items() if v is not None]
    out += [
        (key, getattr(args, dest)) for dest, key in LIBRARY_SETTINGS.items() if getattr(args, dest, None) is not None
    ]
    out += [(f"input.columns.{k}", v) for k, v in (getattr(args, "columns", None) or {}).items()]
    out += [(f"input.types.{k}", v) for k, v in (getattr(args, "types", None) or {}).items()]
    if getattr(args, "time_format", None):
        out.append(("input.time_format", args.time_format))
    return out


def load(args: argparse.Namespace, **stream: Any) -> Config:
    """The effective configuration of this command (defaults < file < environment < command line);
    `stream`: further stream settings from the command's own options (None: not given). Its
    `[kafka]` settings become the ones every Kafka client of this process uses."""
    from streaming.kafka import clients

    cfg = load_config(getattr(args, "config", None), overrides=overrides(args, **stream))
    clients.configure(cfg.kafka)
    return cfg


def kafka_config(args: argparse.Namespace, **stream: Any) -> Config:
    """`load`, with the Kafka bootstrap resolved: the project's own running broker when the
    configuration names none (an error saying how to start one if it is not running either).
    A secured Kafka that refuses this client stops the command here, with one line
    (streaming/kafka/clients.py `check`)."""
    from streaming.kafka import clients

    cfg = load(args, **stream)
    if not cfg.stream.bootstrap:
        try:  # the developer tools are not in the runtime image: there, Kafka is always configured
            from devtools.broker import resolve_bootstrap
        except ImportError:
            raise ConfigError(
                "stream.bootstrap is empty: name the Kafka to use (STREAMREC_BOOTSTRAP=host:port or --bootstrap)"
            ) from None
        cfg = cfg.with_stream(bootstrap=resolve_bootstrap(config=cfg))
    clients.check(cfg.stream.bootstrap, cfg.kafka)
    return cfg


# -- reading events: the shop's own names -------------------------------------------------------
def _pairs(text: str) -> list[tuple[str, str]]:
    out = []
    for part in text.split(","):
        k, sep, v = part.partition("=")
        if not sep or not k.strip() or not v.strip():
            raise argparse.ArgumentTypeError(
                f"{part!r} is not CANONICAL=NAME (e.g. user=customer,ts=when or addtocart=add_to_basket)"
            )
        out.append((k.strip(), v.strip()))
    return out


def column_map(text: str) -> dict[str, str]:
    """`user=customer,item=sku` -> {"user": "customer", "item": "sku"}."""
    return dict(_pairs(text))


def type_map(text: str) -> dict[str, tuple[str, ...]]:
    """`view=page_view,view=pv,transaction=order` -> {"view": ("page_view", "pv"), ...}."""
    out: dict[str, tuple[str, ...]] = {}
    for k, v in _pairs(text):
        out[k] = (*out.get(k, ()), v)
    return out


def add_input_args(p: argparse.ArgumentParser, lenient: bool = False) -> None:
    """The shop's own field names, type names and time format (input.columns, input.types,
    input.time_format); with `lenient`, --lenient and --allow-skip-type too."""
    g = p.add_argument_group("the shop's own names (the [input] section, docs/data-formats.md)")
    g.add_argument(
        "--columns",
        type=column_map,
        metavar="FIELD=NAME,...",
        help="the shop's column / JSON key of each event field, e.g. user=customer,item=sku,type=action,ts=when",
    )
    g.add_argument(
        "--types",
        type=type_map,
        metavar="TYPE=NAME,...",
        help="the shop's names of the event types (view, click, favorite, addtocart, transaction), "
        "e.g. view=page_view,addtocart=add_to_basket,transaction=order",
    )
    g.add_argument(
        "--time-format",
        choices=TIME_FORMATS,
        help="how times are written: auto (number = epoch ms, text = ISO-8601), iso8601, epoch_s, epoch_ms",
    )
    if lenient:
        g.add_argument(
            "--lenient",
            action="store_true",
            help="skip malformed rows, reported by reason with the first examples, instead of stopping",
        )
        g.add_argument(
            "--allow-skip-type",
            action="store_true",
            help="with --lenient: load even if every row of one of the file's event types is skipped",
        )


def load_options(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    """The keyword arguments of recsys.data.datasets.load for this command's data options."""
    return {
        "lenient": getattr(args, "lenient", False),
        "mapping": cfg.input,
        "allow_skip_type": getattr(args, "allow_skip_type", False),
    }


# -- the library commands' options --------------------------------------------------------------
def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--data",
        required=required,
        metavar="FILE|NAME",
        help="events file (any supported format) or a shared dataset name "
        "(taobao, taobao_small, yoochoose, rees46, rees46_small, retailrocket, otto)",
    )
    p.add_argument("--format", default="auto", help="file format (default: detect from the header)")
    add_input_args(p, lenient=True)


def add_model_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument(
        "--kind",
        choices=("als", "bpr"),
        default=None,
        help="model (default: train.kind, als); bpr starts from the BPR preset (recsys.model.train.BPR)",
    )
    p.add_argument(
        "--factors", type=int, default=None, help=f"default: train.factors ({d.factors}) for ALS, {BPR.factors} for BPR"
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help=f"default: train.iterations ({d.iterations}) for ALS, {BPR.iterations} for BPR",
    )
    p.add_argument(
        "--regularization",
        type=float,
        default=None,
        help=f"default: train.regularization ({d.regularization}) for ALS, {BPR.regularization} for BPR",
    )
    p.add_argument("--alpha", type=float, default=None, help="confidence c = 1 + alpha*r (confidence.alpha)")
    p.add_argument("--threads", type=int, default=None, help="training threads (train.num_threads; 0: all cores)")


def add_scoring_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=int, default=None, help="list length (scoring.n, default 10)")
    p.add_argument(
        "--user-weight",
        type=float,
        default=None,
        help="blend weight of the user score vs similarity to the query item, 0..1 (scoring.user_weight)",
    )


def model_flags(args: argparse.Namespace | None) -> dict[str, Any]:
    """The model options given on the command line, as TrainConfig fields."""
    if args is None:
        return {}
    return {field: getattr(args, dest) for dest, field in MODEL_FLAGS.items() if getattr(args, dest, None) is not None}


def train_config(cfg: Config, args: argparse.Namespace | None = None, kind: str | None = None) -> TrainConfig:
    """The training settings for `kind` (default: --kind, else train.kind): the configuration's
    `[train]` for its own kind, the preset for the other (with its threads and seed), and the
    command's model options on top."""
    kind = kind or (getattr(args, "kind", None) if args is not None else None) or cfg.train.kind
    base = (
        cfg.train
        if kind == cfg.train.kind
        else replace(PRESETS[kind], num_threads=cfg.train.num_threads, random_state=cfg.train.random_state)
    )
    return replace(base, **model_flags(args))
