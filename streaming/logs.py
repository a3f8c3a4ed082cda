"""Structured logs: one JSON object per line when asked, plain text otherwise.

    STREAMREC_LOG_FORMAT=json recsys worker ...      or      recsys --log-json worker ...

Each line: {"ts": ISO-8601 UTC, "level", "logger", "message", "pid"} plus, where the code passes
them as `extra=` (or a Faust event is being processed), "model_version" and "partition", and any
other extra field; "exc" holds a traceback. Faust workers configure logging themselves
(mode's Worker clears the root handlers and installs its own): `worker_logging_config()` gives
`faust.Worker(logging_config=...)` the same formatter, so worker output is JSON too.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from recsys.config import load_config
from recsys.errors import ConfigError

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FLAG = "--log-json"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
# Fields promoted to the top of each line, in this order, when present.
CONTEXT_FIELDS = ("model_version", "partition")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for k in CONTEXT_FIELDS:
            v = getattr(record, k, None)
            if v is not None:
                out[k] = v
        if "partition" not in out:
            p = _current_partition()
            if p is not None:
                out["partition"] = p
        for k, v in vars(record).items():
            if k not in _STANDARD and k not in out and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=_jsonable, ensure_ascii=False, separators=(",", ":"))


def _current_partition() -> int | None:
    """The partition of the Faust event being processed, if any (only inside a worker)."""
    streams = sys.modules.get("faust.streams")
    if streams is None:
        return None
    try:
        ev = streams.current_event()
        return None if ev is None else int(ev.message.partition)
    except Exception:  # noqa: BLE001 - no event context, or an event without a message
        return None


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, (set, frozenset, tuple)):
        return list(v)
    return str(v)


def json_requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the configuration (`ops.log_format`: $STREAMREC_LOG_FORMAT, the file) asks for JSON.
    An invalid configuration reads as "no" here: the command reports it once it loads it."""
    try:
        return load_config(env=env).ops.log_format == "json"
    except ConfigError:
        return False


def take_flag(argv: Sequence[str]) -> tuple[list[str], bool]:
    """Remove --log-json from argv wherever it stands (it is global); returns (argv, found)."""
    rest: list[str] = []
    found = False
    for i, a in enumerate(argv):
        if a == "--":
            rest.extend(argv[i:])
            break
        if a == FLAG:
            found = True
        else:
            rest.append(a)
    return rest, found


def make_handler(as_json: bool, stream: Any = None) -> logging.Handler:
    h = logging.StreamHandler(stream or sys.stderr)
    h.setFormatter(JsonFormatter() if as_json else logging.Formatter(TEXT_FORMAT))
    return h


def setup(as_json: bool | None = None, level: int | str = logging.INFO) -> bool:
    """Configure the root logger for a `recsys` process; returns whether JSON is on.

    JSON when asked here or by the configuration (`ops.log_format`, $STREAMREC_LOG_FORMAT=json).
    The commands carry the choice on in their configuration: to the worker's Faust logging
    (`worker_logging_config`) and to child processes (the demo's) through `Config.to_env`."""
    as_json = json_requested() if as_json is None else (as_json or json_requested())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(make_handler(as_json))
    root.setLevel(level if isinstance(level, int) else level.upper())
    # kafka-python (replay, tail, topic admin) logs every connect, bootstrap and metadata
    # refresh at INFO: client chatter, not the process's story. Its warnings still show.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
    return as_json


def worker_logging_config(level: str = "info", as_json: bool | None = None) -> dict[str, Any] | None:
    """A dictConfig for `faust.Worker(logging_config=...)` with the JSON formatter when JSON logs
    are asked for (`as_json`; None: as the configuration says); None (Faust's own coloured
    console logs) otherwise."""
    if not (json_requested() if as_json is None else as_json):
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["default"]},
    }


def no_spinner(worker: Any) -> None:
    """Turn off a faust.Worker's start-up spinner, before it runs. To spin on every log line
    Faust sets the root logger to DEBUG for good (its handlers filter), so each debug call in
    Faust and aiokafka (several per message sent) builds a log record: ~5% of a busy worker's
    event loop (py-spy). Without it the root logger keeps the level asked for."""
    worker.spinner = None
