"""The candidate sources' settings (`[sources]`): one dataclass for every source and baseline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from recsys.fields import setting


@dataclass(frozen=True)
class SourcesConfig:
    """Parameters of the candidate sources (searched on validation windows, docs/evaluation.md)."""

    session_gap_s: float = setting(
        1800.0, "a gap longer than this (seconds) starts a new session of a user (session-kNN's neighbours)"
    )
    current_len: int = setting(10, "items of the asking user's recent history used as their current session")
    sample: int = setting(
        500,
        "session-kNN's neighbour candidates: the most recently active sessions sharing an item with the current one",
    )
    k: int = setting(100, "session-kNN: neighbours that vote")
    stan_l1: float = setting(
        0.0,
        "STAN's λ₁ (positions) of the current session's position weights; 0: the current session's length (the paper's choice)",
    )
    stan_l2_s: float = setting(86_400.0, "STAN's λ₂ (seconds): a neighbour session's recency decay")
    stan_l3: float = setting(
        0.0,
        "STAN's λ₃ (positions): decay with the distance to the neighbour's most recent shared item; 0: the current session's length",
    )
    covisit_window_s: float = setting(
        86_400.0, "co-visitation: two moves of a user count together only within this many seconds"
    )
    covisit_back: int = setting(10, "co-visitation: a move is paired with the user's previous this many distinct items")
    covisit_backward: float = setting(0.5, "co-visitation: weight of b→a relative to a→b (a touched before b)")
    covisit_recent: int = setting(
        3, "co-visitation: a user's score sums the rows of their last this many distinct items"
    )
    covisit_decay: float = setting(
        0.5, "co-visitation: each older of those items weighs this much of the next newer one"
    )
    covisit_normalize: bool = setting(False, "co-visitation: divide each row by its total (≈ P(next = i | a))")
    max_sessions_per_item: int = setting(
        2000, "session-kNN: an item's index keeps this many most recent sessions; older ones are dropped"
    )
    # Bounds on what a long-running worker holds (the stream never ends); far above the
    # evaluation datasets, so the baselines' figures do not depend on them.
    max_users: int = setting(
        1_000_000,
        "the per-user buffers (recent items, co-visitation's moves) keep this many most recently active users",
    )
    max_sessions: int = setting(
        2_000_000, "session-kNN keeps this many most recent sessions; older ones leave the index"
    )
    covisit_max_row: int = setting(
        1000, "co-visitation: a row keeps its this many heaviest items (pruned when it holds twice as many)"
    )
    covisit_max_pairs: int = setting(
        10_000_000,
        "co-visitation: item pairs kept over all rows (weights and next moves; ~60 bytes each in a worker, "
        "a stream adds up to ~10 an event); past it the rows of the items least recently seen leave",
    )
    # A worker reads the same categories as stream-eval: the clickstream record's `category`
    # (streaming/worker/ranking.py); events without one (YOOCHOOSE) leave the source empty.
    category_recent: int = setting(
        3,
        "category popularity (a ranker source): the categories of the user's latest items, up to this many "
        "distinct ones, each weighing half the next more recent one (0: no category source)",
    )
    category_half_life_s: float = setting(
        86_400.0, "category popularity: an item's count in its category halves every this many seconds"
    )
    category_max_items: int = setting(
        2000, "category popularity: a category keeps its this many most popular items' counts"
    )

    def with_params(self, params: Mapping[str, Any]) -> SourcesConfig:
        """A copy with `params` (names of fields; values converted to the field's type)."""
        types = {f.name: type(getattr(self, f.name)) for f in fields(self)}
        bad = set(params) - set(types)
        if bad:
            raise ValueError(f"unknown source parameters {sorted(bad)}; known: {', '.join(sorted(types))}")
        conv: dict[str, Any] = {}
        for name, v in params.items():
            t = types[name]
            if t is bool and isinstance(v, str):
                conv[name] = v.lower() in ("1", "true", "yes", "on")
            else:
                conv[name] = t(v)
        return replace(self, **conv)
