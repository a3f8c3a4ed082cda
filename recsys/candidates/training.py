"""Training the ranker: examples from a recent window, replayed as the stream saw it.

`train_ranker` is what the retrain job and `recsys stream-eval` call; the examples come from
the streaming evaluation's replay (recsys/evaluation/streaming.py, `collect=`), which builds each
event's candidates through `recsys.candidates.ranker.Features.candidates`, the serving path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from recsys.candidates.ranker import Examples, Ranker, RankerConfig, fit
from recsys.confidence import ConfidenceConfig, build_profiles
from recsys.data.datasets import time_split
from recsys.evaluation.streaming import StreamEvalConfig, stream_evaluate
from recsys.events import Event
from recsys.model.factors import Model
from recsys.model.train import TrainConfig, train
from recsys.serving.scoring import ScoringConfig


def ranker_examples(
    events: Sequence[Event],
    *,
    ccfg: ConfidenceConfig = ConfidenceConfig(),
    scfg: ScoringConfig = ScoringConfig(),
    tcfg: TrainConfig = TrainConfig(),
    ecfg: StreamEvalConfig | None = None,
) -> Examples:
    """The ranker's training examples from `events` (time-ordered; the retrain job's data).

    The last `example_fraction` of them is the example window; a model is trained on what
    precedes it and the window is replayed (the streaming evaluation's replay: the candidates
    each event had *before* it, label = its item)."""
    ecfg = ecfg or StreamEvalConfig()
    head, window = time_split(events, test_fraction=ecfg.ranker.example_fraction)
    ex = Examples()
    stream_evaluate(head, window, ccfg=ccfg, scfg=scfg, tcfg=tcfg, ecfg=replace(ecfg, methods=("system",)), collect=ex)
    return ex


def train_ranker(
    events: Sequence[Event],
    *,
    ccfg: ConfidenceConfig = ConfidenceConfig(),
    scfg: ScoringConfig = ScoringConfig(),
    tcfg: TrainConfig = TrainConfig(),
    ecfg: StreamEvalConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> Ranker:
    """`ranker_examples` + LambdaRank on them. The model that serves with the ranker is trained
    on all `events`, as the retrain job trains it."""
    ecfg = ecfg or StreamEvalConfig()
    ex = ranker_examples(events, ccfg=ccfg, scfg=scfg, tcfg=tcfg, ecfg=ecfg)
    say = progress or (lambda _m: None)
    say(f"ranker examples: {ex.covered} of {ex.events} events have the target among the candidates")
    return fit(ex, ecfg.ranker)


@dataclass
class WindowRanker:
    """What the retrain's ranker step produced: the ranker (None: none this time, `note` says
    why) and its figures (examples, the model its examples were scored with, the gate's)."""

    ranker: Ranker | None
    figures: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def window_examples(
    events: Sequence[Event],
    rcfg: RankerConfig,
    *,
    ccfg: ConfidenceConfig = ConfidenceConfig(),
    scfg: ScoringConfig = ScoringConfig(),
    tcfg: TrainConfig = TrainConfig(),
    ecfg: StreamEvalConfig | None = None,
    model: Model | None = None,
    seen_until: int | None = None,
    prune_unreachable: bool = True,
) -> tuple[Examples, dict[str, Any]]:
    """Every replayed event's candidates, features and fallback rank (`Examples(keep_all=True)`)
    from a window of events, at most `rcfg.max_examples` of the latest replayed.

    The candidates must come from a model that has not seen the events they are for, as a
    serving model has not seen the events it serves. `model` with `seen_until` (the newest
    event time it was trained on): the events after it are the example part and `model` scores
    them, no training. Otherwise the window's last `example_fraction` is the example part and a
    model is trained on at most `rcfg.model_max_events` events before it. Every earlier event
    of the window is the replay's state (profiles, sources, counters), as a worker's state is
    ahead of its model. `prune_unreachable`: see `stream_evaluate` (off: the reference replay)."""
    ecfg = replace(ecfg or StreamEvalConfig(), ranker=rcfg, methods=("system",))
    ordered = sorted(events, key=lambda e: e.ts)
    info: dict[str, Any] = {}
    if model is not None and seen_until is not None:
        head, part = time_split(ordered, at=seen_until + 1)
        info["model"] = f"serving {model.version}"
    else:
        head, part = time_split(ordered, test_fraction=rcfg.example_fraction)
        model = None
    if rcfg.max_examples and len(part) > rcfg.max_examples:
        cut = len(part) - rcfg.max_examples
        head, part = head + part[:cut], part[cut:]
    user_factors = user_ids = None
    if model is None:
        fit_on = head[-rcfg.model_max_events :] if rcfg.model_max_events else head
        t = time.time()
        model, user_factors, user_ids = train(build_profiles(fit_on, ccfg), ccfg, tcfg, version="ranker-examples")
        info.update(model=f"trained on {len(fit_on)} events", model_fit_s=round(time.time() - t, 3))
    ex = Examples(keep_all=True)
    if part:
        stream_evaluate(
            head,
            part,
            ccfg=ccfg,
            scfg=scfg,
            tcfg=tcfg,
            ecfg=ecfg,
            model=model,
            user_factors=user_factors,
            user_ids=user_ids,
            collect=ex,
            prune_unreachable=prune_unreachable,
        )
    info.update(window_events=len(ordered), state_events=len(head), example_events=len(part))
    return ex, info


def _subset(ex: Examples, rows: range) -> Examples:
    out = Examples(keep_all=True)
    out.X, out.y, out.meta = [ex.X[j] for j in rows], [ex.y[j] for j in rows], [ex.meta[j] for j in rows]
    out.events = len(rows)
    out.covered = sum(1 for j in rows if ex.y[j].any())
    return out


def list_ranks(ranker: Ranker, ex: Examples, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(the ranker's rank of each event's target in its list, the fallback's): 1..k, 0 = not
    in the top k. The ranker's list as `recsys.candidates.lists.ranked_lists` makes it: a user
    with no event yet gets the fallback; otherwise the candidates by score (a target outside
    the candidates counts as a miss, even where the fallback's padding might list it)."""
    ranked = np.zeros(len(ex.meta), np.int64)
    fallback = np.array([fb for _, fb in ex.meta], np.int64)
    scored = [j for j, (y, (seg, _)) in enumerate(zip(ex.y, ex.meta, strict=True)) if seg != "cold" and y.any()]
    # one predict call for every list (a row's score does not depend on the rows beside it)
    sc = ranker.scores(np.vstack([ex.X[j] for j in scored])) if scored else np.zeros(0)
    at = 0
    for j, (y, (seg, fb)) in enumerate(zip(ex.y, ex.meta, strict=True)):
        if seg == "cold":
            ranked[j] = fb
        elif y.any():
            part = sc[at : at + len(y)]
            at += len(y)
            order = np.argsort(-part, kind="stable")[:k]
            hit = np.flatnonzero(y[order] > 0)
            ranked[j] = int(hit[0]) + 1 if len(hit) else 0
    return ranked, fallback


def rank_figures(ranks: np.ndarray) -> dict[str, float]:
    """HR@10 and MRR@10 of ranks (0 = miss), with their standard errors."""
    out: dict[str, float] = {}
    n = len(ranks)
    for name, v in (
        ("HR@10", (ranks > 0).astype(np.float64)),
        ("MRR@10", np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0)),
    ):
        out[name] = float(v.mean()) if n else 0.0
        out[f"{name}_se"] = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return out


def window_fit_config(rcfg: RankerConfig) -> RankerConfig:
    """The LightGBM settings of the retrain's ranker: `n_estimators` capped at
    `retrain_max_estimators` (its capped examples need fewer rounds than stream-eval's)."""
    if rcfg.retrain_max_estimators and rcfg.n_estimators > rcfg.retrain_max_estimators:
        return replace(rcfg, n_estimators=rcfg.retrain_max_estimators)
    return rcfg


def train_window_ranker(
    events: Sequence[Event],
    rcfg: RankerConfig,
    *,
    ccfg: ConfidenceConfig = ConfidenceConfig(),
    scfg: ScoringConfig = ScoringConfig(),
    tcfg: TrainConfig = TrainConfig(),
    ecfg: StreamEvalConfig | None = None,
    model: Model | None = None,
    seen_until: int | None = None,
    progress: Callable[[str], None] | None = None,
    fit_threads: Callable[[], int] | None = None,
) -> tuple[WindowRanker, Examples]:
    """The retrain's ranker: `window_examples`, LambdaRank (`window_fit_config`) on all but their
    last `gate_fraction`, the held-out rest's list ranks (ranker and fallback) in `figures["holdout"]`. Returns the
    held-out examples too (the caller's gate decides). No ranker when too few examples.
    `fit_threads()`: LightGBM's threads, asked when the fit starts (default 1; the count does
    not change the model)."""
    say = progress or (lambda _m: None)
    t = time.time()
    ex, info = window_examples(
        events, rcfg, ccfg=ccfg, scfg=scfg, tcfg=tcfg, ecfg=ecfg, model=model, seen_until=seen_until
    )
    info["examples_s"] = round(time.time() - t, 3)
    n = len(ex.meta)
    cut = int(n * (1 - rcfg.gate_fraction))
    fit_ex, held = _subset(ex, range(cut)), _subset(ex, range(cut, n))
    info.update(fit_events=fit_ex.events, fit_covered=fit_ex.covered, gate_events=held.events)
    say(
        f"ranker examples ({info['model']}): {ex.covered} of {ex.events} events have the target among the "
        f"candidates; {fit_ex.events} to fit, {held.events} held out"
    )
    if fit_ex.covered < max(rcfg.min_examples, 1):
        why = f"{fit_ex.covered} fit examples with the target among the candidates (ranker.min_examples {rcfg.min_examples})"
        return WindowRanker(None, info, f"too few events for examples: {why}"), held
    t = time.time()
    threads = fit_threads() if fit_threads is not None else 1
    ranker = fit(fit_ex, window_fit_config(rcfg), num_threads=threads)
    info.update(fit_s=round(time.time() - t, 3), fit_threads=threads)
    del fit_ex, ex
    ranked, fallback = list_ranks(ranker, held)
    info["holdout"] = {"ranker": rank_figures(ranked), "fallback": rank_figures(fallback)}
    return WindowRanker(ranker, info), held
