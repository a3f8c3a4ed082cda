"""Progress lines for people at a terminal: `[HH:MM:SS] message` on stderr, flushed at once."""

from __future__ import annotations

import sys
import time


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
