"""One typed configuration for everything: stream, confidence, training, scoring, operations.

    defaults  <  a TOML file  <  environment variables  <  command-line overrides

Sections compose the project's own dataclasses, whose ``__post_init__`` validate their values:

    [stream]      recsys.settings.Settings      env STREAMREC_<FIELD>
    [confidence]  recsys.confidence.ConfidenceConfig env STREAMREC_CONFIDENCE_<FIELD>
    [train]       recsys.model.train.TrainConfig          env STREAMREC_TRAIN_<FIELD>
    [scoring]     recsys.serving.scoring.ScoringConfig      env STREAMREC_SCORING_<FIELD>
    [ops]         Operations (below)                env STREAMREC_<FIELD>

Defaults are the project's defaults (``Settings()``, ``recsys.defaults.CONFIDENCE/TRAIN/SCORING``).
A mapping (``confidence.weights``) is merged key by key: ``confidence.weights.view = 0.3``
changes one weight and keeps the others. The file is ``--file``, else ``$STREAMREC_CONFIG``.
Any bad value stops start-up with a ``ConfigError`` naming the setting and where it came from.

    recsys config [--file F] [--set section.key=value ...] [--json]   the effective configuration
    python -m recsys.config --markdown > docs/configuration.md      the reference, generated
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import json
import math
import os
import re
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from recsys import defaults
from recsys.confidence import ConfidenceConfig
from recsys.errors import ConfigError
from recsys.serving.scoring import ScoringConfig
from recsys.model.train import TrainConfig

from recsys.settings import Settings

ENV_CONFIG_FILE = "STREAMREC_CONFIG"
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class Operations:
    """Operational settings that belong to no library dataclass."""

    log_format: str = "text"
    retrain_metrics_port: int = 0
    kafka_dir: str = "var/kafka"
    kafka_cache: str = "~/.cache/streamrec/kafka"
    data: str = "../shared/data"

    def __post_init__(self) -> None:
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"ops.log_format must be one of {LOG_FORMATS}, got {self.log_format!r}")
        if not 0 <= self.retrain_metrics_port < 65536:
            raise ConfigError(f"ops.retrain_metrics_port must be 0 (off) or a TCP port, got {self.retrain_metrics_port}")


@dataclass(frozen=True)
class Section:
    name: str
    cls: type
    base: Any              # the default instance
    env_prefix: str
    doc: str


SECTIONS: dict[str, Section] = {s.name: s for s in (
    Section("stream", Settings, Settings(), "STREAMREC_",
            "Kafka, topics, partitions, micro-batches, paths and ports of the streaming workers and the "
            "retrain job (`recsys.settings.Settings`)."),
    Section("confidence", ConfidenceConfig, defaults.CONFIDENCE, "STREAMREC_CONFIDENCE_",
            "Events to confidence, `c = 1 + alpha * r` (`recsys.confidence.ConfidenceConfig`). The stream and "
            "the retrain must use the same values: a change applies to new events only."),
    Section("train", TrainConfig, defaults.TRAIN, "STREAMREC_TRAIN_",
            "The model the retrain job fits (`recsys.model.train.TrainConfig`; defaults are `recsys.defaults.TRAIN`)."),
    Section("scoring", ScoringConfig, defaults.SCORING, "STREAMREC_SCORING_",
            "How recommendations are scored (`recsys.serving.scoring.ScoringConfig`; defaults are "
            "`recsys.defaults.SCORING`, chosen on a validation window, see docs/evaluation.md)."),
    Section("ops", Operations, Operations(), "STREAMREC_",
            "Operations: log format, the retrain job's metrics port, where the project's own Kafka and the "
            "shared datasets live (`recsys.config.Operations`)."),
)}

DESCRIPTIONS: dict[str, str] = {
    "stream.bootstrap": "Kafka bootstrap servers, `host:port[,host:port]`; empty: the project's own broker "
                        "(`recsys broker start`)",
    "stream.app_id": "Faust application id = Kafka consumer group; also names the state changelog topic",
    "stream.clickstream_topic": "input topic: one JSON event per message, key = user id",
    "stream.recommendations_topic": "output topic: one JSON recommendation list per message, key = user id",
    "stream.dlq_topic": "dead-letter topic: rejected messages, original bytes, reason in headers",
    "stream.model_updates_topic": "model announcements `{\"version\": ...}` read by every worker",
    "stream.partitions": "partitions of the clickstream, recommendations and state topics = the most workers "
                         "that share the load",
    "stream.batch_max": "events per micro-batch at most",
    "stream.batch_within_s": "a micro-batch takes what arrives this long (seconds) after its first event "
                             "(longer when the broker already holds a full batch: a worker behind fills "
                             "it): shorter cuts latency at low load, too short saturates the worker sooner",
    "stream.model_dir": "model store, shared by the retrain job (writes) and every worker (reads)",
    "stream.data_dir": "this worker's RocksDB tables (one directory per worker)",
    "stream.web_port": "worker HTTP port: /recommendations, /similar, /health, /ready, /metrics",
    "stream.web_host": "the host name other workers and clients use to reach this worker's web port",
    "stream.top_n": "items per published recommendation list",
    "stream.standby_replicas": "standby copies of each state partition on other workers (fast fail-over)",
    "stream.retrain_every_s": "seconds between scheduled retrains",
    "stream.retrain_tolerance": "a candidate model may be this much (relative) worse on MAP@10 and still be "
                                "published",
    "stream.log_level": "log level: debug, info, warning, error",
    "stream.bulk_restore": "on an empty or stale data dir, load the changelog into RocksDB in bulk before Faust's "
                           "per-record recovery (~10x faster); off: Faust's recovery only",
    "stream.item_foldin": "fold in items the serving model lacks from the users who touch them (item-side "
                          "least squares against their folded-in factors), so they are recommended and work as "
                          "query items before the next retrain; needs XᵀX stored with the model (`recsys "
                          "retrain` and `recsys train` store it). Topics `<app_id>-item-evidence` and `<app_id>-item-factors`",
    "stream.item_foldin_refresh_s": "new-item rows are solved and published, and each worker swaps in the "
                                    "extended model, at most this often (seconds)",
    "stream.item_foldin_min_users": "distinct users a new item needs before it gets a row",
    "stream.item_foldin_max_users": "evidence kept per new item: its latest this many users",
    "stream.item_foldin_max_items": "new items a worker keeps evidence for; past it the least recently touched "
                                    "is dropped",
    "confidence.weights": "raw value one event of each type adds (keys: view, click, favorite, addtocart, "
                          "transaction)",
    "confidence.alpha": "confidence scale: c = 1 + alpha * r",
    "confidence.dwell_unit_s": "an event with dwell d seconds counts (1 + d / dwell_unit_s) times ...",
    "confidence.dwell_cap": "... at most this many times",
    "confidence.half_life_days": "recency decay: a raw value halves every this many days; none: no decay",
    "confidence.max_items": "items kept per user; past it the weakest is dropped",
    "confidence.history_len": "recent item ids kept per user",
    "train.kind": "model: als (implicit ALS) or bpr",
    "train.factors": "latent factors per item and user",
    "train.regularization": "L2 regularization (lambda)",
    "train.iterations": "training iterations (epochs)",
    "train.learning_rate": "learning rate (BPR only)",
    "train.num_threads": "training threads; 0: all cores",
    "train.random_state": "random seed; none: a different model each run",
    "scoring.n": "list length when the caller gives none",
    "scoring.user_weight": "blend: 1 = user score only, 0 = similarity to the item on screen only",
    "scoring.item_norm_power": "divide item scores by norm^p: 0 keeps popularity, 1 gives cosines",
    "scoring.exclude_types": "items the user did this to are not recommended (e.g. already bought)",
    "scoring.exclude_query": "the item on screen is not recommended next to itself",
    "scoring.num_threads": "threads of a batch's fold-in and scoring; 0: all cores (one process per core scales better)",
    "scoring.repeat_weight": "bonus for items the user already looked at (re-visits); 0: off",
    "scoring.repeat_power": "the re-visit bonus uses strength^power: below 1 lifts weaker own items",
    "scoring.repeat_half_life_days": "own items' strength decays by the age of their last touch with this "
                                     "half-life (recency of re-visits); none: no extra decay",
    "scoring.repeat_rate_prior": "per-user re-visit weight: a user gets repeat_weight * min(1, r/m), r = their "
                                 "re-visit rate (returns / moves) smoothed toward m = this; none: every user "
                                 "gets repeat_weight (docs/evaluation.md: off, it costs Taobao)",
    "scoring.repeat_rate_strength": "prior weight of repeat_rate_prior, in moves: a user who never returned "
                                    "gets repeat_weight * n0 / (moves + n0)",
    "scoring.ann_min_items": "approximate top-k (recsys/serving/ann.py) for catalogues of at least this many items; "
                             "0: never",
    "scoring.ann_nprobe": "IVF lists scanned per approximate query; 0: recsys.serving.ann's default",
    "ops.log_format": "text, or json: one JSON object per line (also `recsys --log-json ...`)",
    "ops.retrain_metrics_port": "the retrain job's Prometheus port (`recsys retrain --metrics-port`); 0: off",
    "ops.kafka_dir": "data directory of the project's own Kafka broker (`recsys broker start`)",
    "ops.kafka_cache": "where the broker's jars (from Maven Central) are cached",
    "ops.data": "the shared real datasets folder (Taobao, YOOCHOOSE, ...)",
}


# -- types ------------------------------------------------------------------------------------
def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional_inner(tp: Any) -> Any | None:
    """`X | None` -> X; anything else -> None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _is_mapping(tp: Any) -> bool:
    return typing.get_origin(tp) in (dict, collections.abc.Mapping)


def type_name(tp: Any) -> str:
    inner = _optional_inner(tp)
    if inner is not None:
        return f"{type_name(inner)} or none"
    if _is_mapping(tp):
        return f"table of {type_name(typing.get_args(tp)[1])}"
    if typing.get_origin(tp) is tuple:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, str(tp))


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def coerce(value: Any, tp: Any, key: str) -> Any:
    """A value from a file (typed), the environment or --set (strings) -> the field's type.
    ValueError with a short reason when it does not fit."""
    inner = _optional_inner(tp)
    if inner is not None:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        return coerce(value, inner, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {value!r}")
    if typing.get_origin(tp) is tuple:
        elem = typing.get_args(tp)[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return tuple(coerce(v, elem, key) for v in value)
        raise ValueError(f"expected a list (or comma-separated text), got {value!r}")
    if _is_mapping(tp):
        vt = typing.get_args(tp)[1]
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(f"expected a table (JSON object), got {value!r}") from None
        if isinstance(value, Mapping):
            return {str(k): coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
        raise ValueError(f"expected a table, got {value!r}")
    raise ValueError(f"unsupported type {tp}")


def env_name(section: str, name: str) -> str:
    return SECTIONS[section].env_prefix + name.upper()


# -- the configuration --------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    stream: Settings
    confidence: ConfidenceConfig
    train: TrainConfig
    scoring: ScoringConfig
    ops: Operations
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)   # key -> where it was set

    def section(self, name: str) -> Any:
        return getattr(self, name)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name in SECTIONS:
            obj = self.section(name)
            out[name] = {}
            for f in fields(obj):
                v = getattr(obj, f.name)
                out[name][f.name] = dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v
        return out

    def source(self, key: str) -> str:
        return self.sources.get(key, "default")

    def to_toml(self, annotate: bool = True) -> str:
        lines = ["# streamrec: the effective configuration (defaults < file < environment < --set)"]
        for name, values in self.as_dict().items():
            lines.append(f"\n[{name}]")
            tables = []
            for k, v in values.items():
                if isinstance(v, dict):
                    tables.append((k, v))
                    continue
                note = self.source(f"{name}.{k}")
                lines.append(f"{k} = {_toml_value(v)}" + (f"  # {note}" if annotate and note != "default" else ""))
            for k, table in tables:
                lines.append(f"\n[{name}.{k}]")
                for sk, sv in table.items():
                    note = self.source(f"{name}.{k}.{sk}")
                    lines.append(f"{_toml_key(sk)} = {_toml_value(sv)}"
                                 + (f"  # {note}" if annotate and note != "default" else ""))
        return "\n".join(lines) + "\n"


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if v is None:
        return '"none"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"stream": {"partitions": 8}} or {"stream.partitions": 8} -> {"stream.partitions": 8}."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and key.count(".") < 1:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _set(values: dict[str, dict[str, Any]], sources: dict[str, str], key: str, raw: Any, origin: str) -> None:
    """Apply one setting `section.field[.subkey]` = raw (typed or text) from `origin`."""
    parts = key.split(".")
    if len(parts) < 2 or parts[0] not in SECTIONS:
        raise ConfigError(f"unknown setting {key!r} ({origin}): sections are {', '.join(SECTIONS)}")
    section, name, rest = parts[0], parts[1], parts[2:]
    types_ = field_types(SECTIONS[section].cls)
    if name not in types_:
        known = ", ".join(types_)
        raise ConfigError(f"unknown setting {section}.{name} ({origin}); [{section}] has: {known}")
    tp = types_[name]
    try:
        if rest:
            if not _is_mapping(tp) or len(rest) != 1:
                raise ConfigError(f"unknown setting {key!r} ({origin}): {section}.{name} is a {type_name(tp)}")
            value = coerce(raw, typing.get_args(tp)[1], key)
            merged = dict(values[section].get(name, getattr(SECTIONS[section].base, name)))
            merged[rest[0]] = value
            values[section][name] = merged
            sources[key] = origin
            return
        value = coerce(raw, tp, key)
    except ValueError as e:
        raise ConfigError(f"{key}: {e} ({origin})") from None
    if _is_mapping(tp):  # a whole table merges into the current one
        merged = dict(values[section].get(name, getattr(SECTIONS[section].base, name)))
        merged.update(value)
        values[section][name] = merged
        for sk in value:
            sources[f"{key}.{sk}"] = origin
        return
    values[section][name] = value
    sources[key] = origin


def _env_settings(env: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(key, raw value, origin) for every STREAMREC_* variable that names a setting."""
    out = []
    for sname, sec in SECTIONS.items():
        for name, tp in field_types(sec.cls).items():
            var = env_name(sname, name)
            if _is_mapping(tp):
                for k, v in env.items():
                    if k.startswith(var + "_"):
                        out.append((f"{sname}.{name}.{k[len(var) + 1:].lower()}", v, f"env {k}"))
                if var in env:
                    out.append((f"{sname}.{name}", env[var], f"env {var}"))
            elif var in env:
                out.append((f"{sname}.{name}", env[var], f"env {var}"))
    return out


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"configuration file {p} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"configuration file {p} is unreadable: {e}") from None


def load_config(file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | Sequence[str] = {}) -> Config:
    """The effective configuration: defaults < file < environment < overrides.

    `file`: a TOML file (default: $STREAMREC_CONFIG if set). `overrides`: {"stream.partitions": 8},
    {"stream": {"partitions": 8}} or ["stream.partitions=8", ...] (text is converted like the
    environment's). Raises ConfigError naming the setting and its origin."""
    env = os.environ if env is None else env
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    sources: dict[str, str] = {}
    file = file if file is not None else (env.get(ENV_CONFIG_FILE) or None)
    if file is not None:
        for key, raw in _flatten(read_file(file)).items():
            _set(values, sources, key, raw, f"file {file}")
    for key, raw, origin in _env_settings(env):
        _set(values, sources, key, raw, origin)
    if isinstance(overrides, Mapping):
        items = list(_flatten(overrides).items())
    else:
        items = []
        for text in overrides:
            if "=" not in text:
                raise ConfigError(f"--set {text!r}: expected section.key=value")
            k, v = text.split("=", 1)
            items.append((k.strip(), v))
    for key, raw in items:
        _set(values, sources, key, raw, "command line")
    built: dict[str, Any] = {}
    for name, sec in SECTIONS.items():
        try:
            built[name] = dataclasses.replace(sec.base, **values[name])
        except ConfigError as e:
            msg = str(e)
            if not msg.startswith(f"{name}."):
                msg = f"{name}.{msg}" if re.match(r"[a-z_]+ ", msg) and msg.split()[0] in field_types(sec.cls) \
                    else f"[{name}] {msg}"
            where = [f"{k} from {o}" for k, o in sources.items() if k.startswith(name + ".")
                     and k.split(".")[1] in msg]
            raise ConfigError(msg + (f" ({'; '.join(where)})" if where else "")) from None
    return Config(**built, sources=sources)


# -- reference documentation ---------------------------------------------------------------------
def _md_default(v: Any) -> str:
    if isinstance(v, Mapping):
        return "<br>".join(f"`{k} = {_toml_value(x)}`" for k, x in v.items())
    return f"`{_toml_value(v)}`" if v != "" else '`""`'


def markdown() -> str:
    """docs/configuration.md, generated from the code (`python -m recsys.config --markdown`)."""
    out = [
        "# Configuration reference",
        "",
        "<!-- GENERATED by `python -m recsys.config --markdown > docs/configuration.md`: do not edit; "
        "tests/integration/test_config.py checks it is up to date. -->",
        "",
        "Every setting lives in one typed configuration, `recsys.config.load_config()`, built in layers:",
        "",
        "1. the defaults below (the project's own: `recsys.settings.Settings()` and `recsys.defaults`),",
        f"2. a TOML file: `recsys config --file FILE`, or the file named by `${ENV_CONFIG_FILE}`,",
        "3. environment variables (the names below),",
        "4. command-line overrides: `recsys config --set section.key=value`.",
        "",
        "A later layer wins. A value of the wrong type, out of range, or an unknown key stops start-up with a "
        "message naming the setting and where its value came from, e.g. "
        "`stream.partitions: expected an integer, got 'eight' (env STREAMREC_PARTITIONS)`. "
        "A table (`confidence.weights`) merges key by key. Optional values take `none`. "
        "Lists may be given as comma-separated text in the environment.",
        "",
        "See the effective configuration (with where each non-default value came from):",
        "",
        "```bash",
        "recsys config",
        "recsys config --set stream.partitions=8 --set confidence.weights.view=0.3",
        "recsys config --json",
        "```",
        "",
        "A file has one table per section; `recsys config` prints one that reads back as is:",
        "",
        "```toml",
        "[stream]",
        'bootstrap = "kafka:9092"',
        "partitions = 8",
        "",
        "[train]",
        "factors = 32",
        "",
        "[confidence.weights]",
        "view = 0.3",
        "```",
        "",
        "The streaming commands today read the `[stream]` variables from the environment "
        "(`Settings.from_env`) and their own options; the library commands take their options. "
        "`recsys config` shows what a process started with the same file and environment gets.",
    ]
    for name, sec in SECTIONS.items():
        out += ["", f"## [{name}]", "", sec.doc, "", "| key | type | default | environment | meaning |",
                "|---|---|---|---|---|"]
        for f in fields(sec.base):
            tp = field_types(sec.cls)[f.name]
            var = env_name(name, f.name)
            env_col = f"`{var}_<KEY>`" if _is_mapping(tp) else f"`{var}`"
            desc = DESCRIPTIONS.get(f"{name}.{f.name}", "(undocumented)").replace("|", "\\|")
            out.append(f"| `{name}.{f.name}` | {type_name(tp)} | {_md_default(getattr(sec.base, f.name))} "
                       f"| {env_col} | {desc} |")
    return "\n".join(out) + "\n"


# -- CLI ------------------------------------------------------------------------------------------
def cmd_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.file, overrides=args.set or [])
    if args.json:
        print(json.dumps({"config": cfg.as_dict(), "sources": dict(cfg.sources)}, indent=2))
    else:
        sys.stdout.write(cfg.to_toml())
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("config", help="print the effective configuration (defaults < file < env < --set)",
                       description="Print the effective configuration as TOML (readable back with --file), "
                                   "noting where each non-default value came from. Invalid values: exit 2 "
                                   "with a message naming the setting.")
    p.add_argument("--file", metavar="FILE", help=f"TOML configuration file (default: ${ENV_CONFIG_FILE})")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one setting (repeatable), e.g. stream.partitions=8")
    p.add_argument("--json", action="store_true", help="JSON with the values and their sources instead")
    p.set_defaults(func=cmd_config)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recsys.config", description=__doc__.split("\n")[0])
    ap.add_argument("--markdown", action="store_true", help="print the reference (docs/configuration.md)")
    ap.add_argument("--file")
    ap.add_argument("--set", action="append")
    args = ap.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
        return 0
    try:
        sys.stdout.write(load_config(args.file, overrides=args.set or []).to_toml())
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
