"""The project's exceptions and process exit codes, in one place.

Every error a user can cause (a bad file, a bad argument, a broken model) derives from
`RecsysError`, so the CLI prints one clear line and exits with `ExitCode.USAGE` instead of a
traceback. A worker that cannot keep its delivery promise stops itself with one of the
fail-stop codes (`fail_stop`), before the offsets of the batch concerned can be committed,
so that a restart redoes the batch (docs/reliability.md, docs/troubleshooting.md).
"""

from __future__ import annotations

import enum
import logging
import os
from typing import NoReturn


class ExitCode(enum.IntEnum):
    """Exit statuses of every `recsys` command and of the worker process."""

    OK = 0
    FAILED = 1  # the command ran but did not succeed (replay: events not delivered;
    # broker: not running, or it would not start)
    USAGE = 2  # a user error: bad option, bad file, bad setting (one line on stderr)
    KAFKA_AUTH = 77  # Kafka refused this client at start: wrong credentials or an untrusted
    # certificate (one line on stderr; not retried)
    DELIVERY_FAILED = 70  # worker: records of a batch could not be delivered to Kafka
    OFFSET_HOLE = 71  # worker: the consumer skipped input offsets
    BATCH_FAILED = 72  # worker: an unexpected error while applying a batch (a bug)
    INTERRUPTED = 130  # Ctrl-C


class RecsysError(Exception):
    """Base class for errors the user can act on."""


class DataError(RecsysError):
    """A data file or row is malformed. Names the file and line where known."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path, self.line = path, line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class EventError(RecsysError):
    """One event failed validation. `reason` is a short machine-readable code; `value` the
    offending value, where there is one (a loader's examples of skipped rows show it)."""

    def __init__(self, reason: str, detail: str = "", value: object = None):
        self.reason, self.detail, self.value = reason, detail, value
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ModelStoreError(RecsysError):
    """A model version is missing, incomplete or fails verification."""


class ConfigError(RecsysError):
    """A setting has an invalid value. Names the setting."""


def fail_stop(code: ExitCode, message: str, *args: object, exc_info: bool = False) -> NoReturn:
    """Log `message` as critical and end the process at once with `code`.

    `os._exit`, not `sys.exit`: no cleanup may run, because cleanup in an event-loop
    framework acknowledges and commits what is in flight, and the point is that the batch
    concerned is *not* committed."""
    log = logging.getLogger("streamrec")
    log.critical(message, *args, exc_info=exc_info)
    logging.shutdown()
    os._exit(int(code))
