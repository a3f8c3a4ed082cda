"""Offline evaluation with the seed notebook's protocol, on a time split.

Train on the earlier events. For each test user, the first test event is the *query item*
(the product on screen) and the other items that user touched later in the test window are
the ground truth. The system has seen that first event, as the live stream would have: the
user's profile is their training history plus the query event, folded in against the fixed
item factors. Ground truth leaves out the query item itself (it is already on screen).

Methods, each at its own scoring settings:
  popularity     most-interacted training items
  similar        similarity to the query item only        (w = 0)
  user           folded-in user score only, no query      (w = 1)
  blend          both, at the configured weight            (0 < w < 1)
for every model kind asked for (ALS, BPR). Users the model cannot place fall back as the
scorer does (see scoring.py), so every method answers every user.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from recsys.confidence import ConfidenceConfig, ItemState, UserProfile, build_profiles, copy_profile
from recsys.evaluation import ranking
from recsys.evaluation.plotting import pyplot
from recsys.events import Event
from recsys.model.factors import Model
from recsys.model.train import TrainConfig, train
from recsys.serving.recommender import Recommender
from recsys.serving.scoring import ScoringConfig

METRICS = ("MAP@3", "MAP@10", "HR@10", "NDCG@10", "Recall@10", "coverage")


@dataclass
class EvalCase:
    user: str
    query: str
    relevant: set[str]
    profile: UserProfile  # training history + the query event


def build_cases(
    train_profiles: dict[str, UserProfile], test_events: Sequence[Event], ccfg: ConfidenceConfig
) -> list[EvalCase]:
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in test_events:
        by_user[e.user].append(e)
    cases = []
    for user, evs in by_user.items():
        evs.sort(key=lambda e: e.ts)
        first = evs[0]
        relevant = {e.item for e in evs[1:]} - {first.item}
        if not relevant:
            continue
        base = train_profiles.get(user)
        profile = copy_profile(base) if base is not None else UserProfile()
        profile.apply(first, ccfg)
        cases.append(EvalCase(user, first.item, relevant, profile))
    return cases


def score_lists(lists: Sequence[Sequence[str]], cases: Sequence[EvalCase], n_items: int) -> dict[str, float]:
    def mean(f: Callable[[Sequence[str], set[str], int], float], k: int) -> float:
        return float(np.mean([f(lst, c.relevant, k) for lst, c in zip(lists, cases, strict=True)])) if cases else 0.0

    shown = {i for lst in lists for i in lst[:10]}
    return {
        "MAP@3": mean(ranking.average_precision, 3),
        "MAP@10": mean(ranking.average_precision, 10),
        "HR@10": mean(ranking.hit_rate, 10),
        "NDCG@10": mean(ranking.ndcg, 10),
        "Recall@10": mean(ranking.recall, 10),
        "coverage": len(shown) / n_items if n_items else 0.0,
    }


def evaluate(
    train_events: Sequence[Event],
    test_events: Sequence[Event],
    *,
    ccfg: ConfidenceConfig = ConfidenceConfig(),
    scfg: ScoringConfig = ScoringConfig(),
    kinds: dict[str, TrainConfig] | None = None,
    batch: int = 1024,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the protocol; returns {"methods": {name: metrics}, "cases": n, ...}."""
    say = progress or (lambda _m: None)
    kinds = kinds or {"als": TrainConfig(kind="als")}
    t0 = time.time()
    profiles = build_profiles(train_events, ccfg)
    cases = build_cases(profiles, test_events, ccfg)
    say(f"{len(train_events)} training events, {len(profiles)} users; {len(cases)} test users")
    if not cases:
        raise ValueError("no test user has a query event and at least one later item: widen the test window")
    results: dict[str, dict[str, float]] = {}
    info: dict[str, Any] = {}
    for kind, tcfg in kinds.items():
        say(f"training {kind.upper()} ({tcfg.factors} factors, {tcfg.iterations} iterations)")
        model, _, _ = train(profiles, ccfg, tcfg)
        info[kind] = {"n_items": model.n_items, "train_seconds": model.metadata["train_seconds"]}
        catalogue = model.n_items
        known_query = sum(c.query in model.item_index for c in cases)
        info[kind]["query_known"] = known_query
        variants = {
            "popularity": (replace(scfg, user_weight=1.0), False, True),
            "similar": (replace(scfg, user_weight=0.0), True, True),
            "user": (replace(scfg, user_weight=1.0), False, False),
            "blend": (scfg, True, False),
        }
        for name, (cfg, use_query, popular_only) in variants.items():
            if name == "popularity" and "popularity" in results:
                continue
            rec = Recommender(model, ccfg, cfg)
            lists: list[list[str]] = []
            for s in range(0, len(cases), batch):
                chunk = cases[s : s + batch]
                if popular_only and name == "popularity":
                    out = [rec.scorer.popular(exclude=c.profile.items_with(cfg.exclude_types)) for c in chunk]
                elif name == "similar":
                    # Query similarity alone: the user's factors play no part.
                    out = rec.scorer.recommend(
                        np.zeros((len(chunk), model.factors), np.float32),
                        [False] * len(chunk),
                        [c.query for c in chunk],
                        [c.profile.items_with(cfg.exclude_types) for c in chunk],
                    )
                else:
                    out = rec.recommend([c.profile for c in chunk], [c.query if use_query else None for c in chunk])
                lists.extend(o.items for o in out)
            key = "popularity" if name == "popularity" else f"{kind}:{name}"
            results[key] = score_lists(lists, cases, catalogue)
            say(f"  {key:<14} " + "  ".join(f"{m}={results[key][m]:.4f}" for m in METRICS))
    return {
        "methods": results,
        "cases": len(cases),
        "train_events": len(train_events),
        "test_events": len(test_events),
        "train_users": len(profiles),
        "models": info,
        "scoring": {
            "user_weight": scfg.user_weight,
            "item_norm_power": scfg.item_norm_power,
            "exclude_types": list(scfg.exclude_types),
            "exclude_query": scfg.exclude_query,
        },
        "seconds": round(time.time() - t0, 2),
    }


def format_table(report: dict[str, Any]) -> str:
    rows = [f"{'method':<16}" + "".join(f"{m:>11}" for m in METRICS)]
    for name, vals in report["methods"].items():
        rows.append(f"{name:<16}" + "".join(f"{vals[m]:>11.4f}" for m in METRICS))
    return "\n".join(rows)


def plot(report: dict[str, Any], path: str, title: str = "") -> None:
    plt = pyplot("the evaluation plot")

    names = list(report["methods"])
    shown = [m for m in METRICS if m != "coverage"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        vals = [report["methods"][name][m] for m in shown]
        ax.bar(np.arange(len(shown)) + j * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(shown)) + 0.4 - width / 2, shown)
    ax.set_ylabel("score (higher is better)")
    ax.set_title(title or f"Offline evaluation: {report['cases']} test users")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def iter_metrics(report: dict[str, Any]) -> Iterable[tuple[str, str, float]]:
    for name, vals in report["methods"].items():
        for m, v in vals.items():
            yield name, m, v


def holdout_rank(user: bytes) -> int:
    """Where a user stands in the retrain's hold-out order: the users with the lowest ranks are
    held out (a hash of the id, so consecutive retrains hold out the same people, and a larger
    hold-out contains a smaller one)."""
    import zlib

    return zlib.crc32(user)


def holdout_size(n_users: int, fraction: float, floor: int, cap: int) -> int:
    """How many users a retrain holds out: `fraction` of them, at least `floor` (but never more
    than a tenth of the users: small systems still get enough gate cases), at most `cap`."""
    return max(0, min(cap, max(round(fraction * n_users), min(n_users // 10, floor))))


def holdout_case(user: str, p: UserProfile, min_items: int = 3) -> EvalCase | None:
    """A held-out user's case, or None with fewer than `min_items` items: their earlier half of
    items (by time) is the profile, its latest item the query, the later half the truth. Splitting
    by time *within* a profile instead would be unfair: a profile keeps one time per item, so an
    item the user came back to would be dropped from training while a model trained earlier had
    seen it."""
    ordered = sorted(p.items.items(), key=lambda kv: (kv[1].ts, kv[0]))
    if len(ordered) < min_items:
        return None
    half = (len(ordered) + 1) // 2
    profile = UserProfile()
    profile.items = {i: ItemState(s.value, s.ts, s.mask) for i, s in ordered[:half]}
    profile.last_ts = ordered[half - 1][1].ts
    return EvalCase(user, ordered[half - 1][0], {i for i, _ in ordered[half:]}, profile)


def case_lists(
    model: Model, cases: Sequence[EvalCase], ccfg: ConfidenceConfig, scfg: ScoringConfig, batch: int = 1024
) -> list[list[str]]:
    """The serving path's (fold-in + blend) list for each prepared case."""
    rec = Recommender(model, ccfg, scfg)
    lists: list[list[str]] = []
    for s in range(0, len(cases), batch):
        chunk = cases[s : s + batch]
        lists.extend(o.items for o in rec.recommend([c.profile for c in chunk], [c.query for c in chunk]))
    return lists


def case_average_precisions(lists: Sequence[Sequence[str]], cases: Sequence[EvalCase], k: int = 10) -> np.ndarray:
    """AP@k of each case's list: the terms of MAP@k, for paired comparisons of two models."""
    return np.array([ranking.average_precision(lst, c.relevant, k) for lst, c in zip(lists, cases, strict=True)])


def evaluate_model(
    model: Model, cases: Sequence[EvalCase], ccfg: ConfidenceConfig, scfg: ScoringConfig, batch: int = 1024
) -> dict[str, float]:
    """The serving path (fold-in + blend) of one model on prepared cases."""
    lists = case_lists(model, cases, ccfg, scfg, batch)
    out = score_lists(lists, cases, model.n_items)
    # Sampling error of MAP@10 over these cases, so a gate can tell noise from a regression.
    ap = case_average_precisions(lists, cases)
    out["MAP@10_se"] = float(np.std(ap) / np.sqrt(len(ap))) if len(ap) > 1 else 0.0
    return out
