"""Exceptions raised by the recommender library.

Every error a user can cause (a bad file, a bad argument, a broken model) derives from
`RecsysError`, so the CLI can print one clear line and exit non-zero instead of a traceback.
"""


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
    """One event failed validation. `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ModelStoreError(RecsysError):
    """A model version is missing, incomplete or fails verification."""


class ConfigError(RecsysError):
    """A setting has an invalid value. Names the setting."""
