"""`setting(default, doc)`: a configuration field documented where it is declared.

The configuration's sections (`recsys.config`) are plain frozen dataclasses spread over the
library (`ConfidenceConfig`, `TrainConfig`, `ScoringConfig`) and `recsys.config` itself. Each
field carries its one-line description in its metadata, so the reference page
(docs/configuration.md) and `recsys config` read it from the field, and the field's default is
the project's default: there is no second place where either is written down.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

DOC = "doc"
ALIASES = "env_aliases"
SECRET = "secret"


def setting(
    default: Any = dataclasses.MISSING,
    doc: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    env_aliases: Sequence[str] = (),
    secret: bool = False,
) -> Any:
    """A dataclass field with its description (`doc`). `factory` instead of `default` for a
    mutable default. `env_aliases`: further environment variables read for it, below its own
    name (older names that deployments may still set). `secret`: a password or token, left out
    of the dataclass's repr and masked wherever a configuration is shown."""
    metadata = {DOC: doc, ALIASES: tuple(env_aliases), SECRET: secret}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata, repr=not secret)
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


def doc(f: dataclasses.Field) -> str:
    return str(f.metadata.get(DOC, ""))


def env_aliases(f: dataclasses.Field) -> tuple[str, ...]:
    return tuple(f.metadata.get(ALIASES, ()))


def is_secret(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get(SECRET, False))
