"""Training the ranker: examples from a recent window, replayed as the stream saw it.

`train_ranker` is what the retrain job and `recsys stream-eval` call; the examples come from
the streaming evaluation's replay (recsys/evaluation/streaming.py, `collect=`), which builds each
event's candidates through `recsys.candidates.ranker.Features.candidates`, the serving path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from recsys.candidates.ranker import Examples, Ranker, fit
from recsys.confidence import ConfidenceConfig
from recsys.data.datasets import time_split
from recsys.evaluation.streaming import StreamEvalConfig, stream_evaluate
from recsys.events import Event
from recsys.model.train import TrainConfig
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
