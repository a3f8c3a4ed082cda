"""The retrain's examples skip the candidates of events whose item no list could hold (neither
the model's nor any earlier event's): they are misses whatever the sources say. The examples
are those of the full replay: the same events in the same order, the same candidates, labels,
segments and fallback ranks, and the same features but for the last bits of the blend's score
(its product covers fewer rows, as another chunk size would)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.candidates.ranker import FEATURES, RankerConfig, fit
from recsys.candidates.training import _subset, list_ranks, window_examples
from recsys.confidence import ConfidenceConfig, build_profiles
from recsys.data.datasets import load_events, time_split
from recsys.model.train import TrainConfig, train
from tests.conftest import require_dataset

BLEND = [FEATURES.index(f) for f in ("system_score", "system_rel")]


@pytest.fixture(scope="module")
def examples():
    events = sorted(load_events(require_dataset("taobao_small")), key=lambda e: e.ts)
    head, window = time_split(events, test_fraction=0.5)
    model, _, _ = train(build_profiles(head, ConfidenceConfig()), ConfidenceConfig(), TrainConfig(), version="serving")
    rcfg = RankerConfig(max_examples=1000)
    return tuple(
        window_examples(window, rcfg, model=model, seen_until=head[-1].ts, prune_unreachable=prune)[0]
        for prune in (True, False)
    )


def test_pruned_examples_are_the_full_replays(examples) -> None:
    pruned, full = examples
    assert (pruned.events, pruned.covered, pruned.meta) == (full.events, full.covered, full.meta)
    skipped = 0
    for Xp, yp, Xf, yf in zip(pruned.X, pruned.y, full.X, full.y, strict=True):
        if not len(yp):  # skipped: a miss in the full replay too
            skipped += 1
            assert not yf.any()
            continue
        assert np.array_equal(yp, yf) and Xp.shape == Xf.shape
        others = [j for j in range(len(FEATURES)) if j not in BLEND]
        assert np.array_equal(Xp[:, others], Xf[:, others])
        np.testing.assert_allclose(Xp[:, BLEND], Xf[:, BLEND], rtol=1e-4, atol=1e-6)
    assert skipped > 0.2 * pruned.events  # Taobao: many example events are on items not seen before


def test_pruned_examples_rank_as_the_full_replays(examples) -> None:
    pruned, full = examples
    cut = int(len(full.meta) * 0.75)
    held = _subset(full, range(cut, len(full.meta)))
    rcfg = RankerConfig(n_estimators=20)
    rp, _ = list_ranks(fit(_subset(pruned, range(cut)), rcfg), held)
    rf, _ = list_ranks(fit(_subset(full, range(cut)), rcfg), held)
    assert np.mean(rp > 0) == pytest.approx(np.mean(rf > 0), abs=0.02)
