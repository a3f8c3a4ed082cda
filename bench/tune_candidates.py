"""Fewer candidates per source (`ranker.per_source`, `ranker.pop_candidates`): the ranker's
validation HR@10 / MRR@10 at each setting against today's (50 and 20), on the same events.

Split as bench/tune_category.py splits (the last 20% of the events are the test window, not
read). The training examples and the validation candidates are collected once at today's
setting (`bench.tune_category.collect`, cached under --cache), each row carrying four extra
columns: the candidate's place in the four co-visitation / "viewed next" rows (of the item on
screen and of the move before it), which `lists.context` keeps to their best 2 * per_source.
A smaller setting is then the collection truncated: each source's best k (popularity's best
p), the union in the order `Features.candidates_many` builds it, n_sources counted again, the
row features zeroed past 2k, training groups whose target left the candidates dropped. The
ranker is fit on each setting's truncated training examples and scored on its truncated
validation candidates, as method `ranker` scores; the paired standard error is of the
difference to today's. `--seeds 0,1`: each setting fit once per LightGBM seed, each event's hit
and reciprocal rank averaged over them (the refit's own ups and downs are as large as the
differences sought); the output also gives one seed against the other at today's setting.

`--verify NAME`: on the first --events events of a dataset, a real collection (training and
validation) at each setting against the truncated one: the groups, targets and feature cells
that differ, and both rankers' figures. On REES46 at 20/20 and 30/10 the groups, targets and
figures are the same; ~2% of the rows differ in the last bit of a float32 product
(system_score, cos_query, cos_user: a product's rounding depends on how many rows it covers).

    python -m bench.tune_candidates --datasets yoochoose,taobao,rees46 --seeds 0,1 --output /tmp/tune-candidates.json
    python -m bench.tune_candidates --verify rees46 --events 100000000 --settings 20/20,30/10
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.tune_category import _hr, _rr, base_config, collect, figures, line, ranks
from recsys.candidates.ranker import _RANK_ABSENT, FEATURES, SOURCE_NAMES, Context, Examples, Features, RankerConfig
from recsys.data.datasets import load, time_split
from recsys.evaluation.streaming import stream_evaluate

# the feature columns read from a row that `lists.context` trims to 2 * per_source, and the
# context's row each is read from
ROWS = (
    ("covisit_from_query", "covisit_query"),
    ("next_from_query", "next_query"),
    ("covisit_from_prev", "covisit_prev"),
    ("next_from_prev", "next_prev"),
)
N_SRC = len(SOURCE_NAMES)
POP = SOURCE_NAMES.index("popularity")
N_SOURCES = FEATURES.index("n_sources")
WIDTH = len(FEATURES)


@contextmanager
def row_places() -> Iterator[None]:
    """Features.candidates_many with the candidates' places in the four rows appended (1-based;
    _RANK_ABSENT when not in the kept row)."""
    original = Features.candidates_many

    def widened(self: Features, ctxs: Sequence[Context], *args: Any, **kw: Any) -> list[tuple[list[str], np.ndarray]]:
        out = original(self, ctxs, *args, **kw)
        wide = []
        for ctx, (items, X) in zip(ctxs, out, strict=True):
            extra = np.full((len(items), len(ROWS)), _RANK_ABSENT, np.float32)
            for c, (_, attr) in enumerate(ROWS):
                place = {i: r for r, i in enumerate(getattr(ctx, attr), 1)}
                extra[:, c] = [place.get(i, _RANK_ABSENT) for i in items]
            wide.append((items, np.hstack([X, extra])))
        return wide

    Features.candidates_many = widened  # type: ignore[method-assign]
    try:
        yield
    finally:
        Features.candidates_many = original  # type: ignore[method-assign]


def truncate_rows(X: np.ndarray, k: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(the kept rows' indices in list order, their FEATURES columns) of one wide group at k / p."""
    if not len(X):
        return np.zeros(0, np.intp), np.zeros((0, WIDTH), np.float32)
    limits = [p if s == POP else k for s in range(N_SRC)]
    ranks = X[:, 1 : 3 * N_SRC : 3]
    listed = ranks <= np.array(limits, np.float32)
    keep = np.flatnonzero(listed.any(axis=1))
    # the union's order: the first source (in SOURCE_NAMES' order) that lists an item, its place there
    first = np.argmax(listed[keep], axis=1)
    keep = keep[np.lexsort((ranks[keep, first], first))]
    out = X[keep, :WIDTH].copy()
    gone = ~listed[keep]
    for s in range(N_SRC):
        out[gone[:, s], 3 * s] = 0.0
        out[gone[:, s], 3 * s + 1] = _RANK_ABSENT
        out[gone[:, s], 3 * s + 2] = 0.0
    out[:, N_SOURCES] = (~gone).sum(axis=1)
    for c, (name, _) in enumerate(ROWS):
        out[X[keep, WIDTH + c] > 2 * k, FEATURES.index(name)] = 0.0
    return keep, out


def truncate(ex: Examples, k: int, p: int) -> Examples:
    """The examples a collection at per_source k, pop_candidates p would have made."""
    out = Examples(keep_all=ex.keep_all)
    out.events, out.covered = ex.events, ex.covered
    for j, (X, y) in enumerate(zip(ex.X, ex.y, strict=True)):
        keep, Xk = truncate_rows(X, k, p)
        yk = y[keep]
        if y.any() and not yk.any():  # the target left the candidates: a miss, as `Examples.add` counts it
            out.covered -= 1
        if not ex.keep_all and (not yk.any() or len(yk) < 2):
            continue
        out.X.append(Xk)
        out.y.append(yk)
        if ex.keep_all:
            out.meta.append(ex.meta[j])
    return out


def narrow(ex: Examples) -> Examples:
    """A collection without the place columns."""
    return Examples(
        X=[X[:, :WIDTH] for X in ex.X], y=ex.y, events=ex.events, covered=ex.covered, keep_all=ex.keep_all, meta=ex.meta
    )


def seed_figures(runs: list[np.ndarray], base: list[np.ndarray] | None) -> dict[str, float]:
    """`figures` of each event's hit and reciprocal rank averaged over the seeds' fits (fewer
    of the refit's own ups and downs in the difference)."""
    out: dict[str, float] = {}
    n = len(runs[0])
    for m, f in (("HR@10", _hr), ("MRR@10", _rr)):
        v = np.mean([f(r) for r in runs], axis=0)
        out[m] = float(v.mean())
        out[f"{m}_se"] = float(v.std(ddof=1) / math.sqrt(n))
        if base is not None:
            d = v - np.mean([f(r) for r in base], axis=0)
            out[f"{m}_diff"] = float(d.mean())
            out[f"{m}_diff_se"] = float(d.std(ddof=1) / math.sqrt(n))
    return out


def fits(train_ex: Examples, val_ex: Examples, k: int, p: int, seeds: list[int]) -> tuple[list[np.ndarray], Examples]:
    """The validation ranks of a ranker fit with each seed at k / p, and the truncated validation."""
    trk, valk = truncate(train_ex, k, p), truncate(val_ex, k, p)
    return [ranks(replace(RankerConfig(), seed=sd), trk, valk) for sd in seeds], valk


def parse(settings: str) -> list[tuple[int, int]]:
    out = []
    for s in settings.split(","):
        k, _, p = s.partition("/")
        out.append((int(k), int(p or RankerConfig().pop_candidates)))
    return out


def _compare(real: Examples, cut: Examples) -> dict[str, Any]:
    """How far a truncated collection is from a real one: groups, targets, feature cells."""
    assert len(real.y) == len(cut.y) and real.meta == cut.meta and real.covered == cut.covered
    groups = rows = cells = targets = 0
    worst = np.zeros(WIDTH)
    for Xr, yr, Xc, yc in zip(real.X, real.y, cut.X, cut.y, strict=True):
        Xr = Xr[:, :WIDTH]
        if Xr.shape != Xc.shape:
            groups += 1
            continue
        targets += not np.array_equal(yr, yc)
        diff = Xr != Xc
        rows += int(diff.any(axis=1).sum())
        cells += int(diff.sum())
        if diff.any():
            worst = np.maximum(worst, np.abs(Xr - Xc).max(axis=0))
    return {
        "groups": len(real.y),
        "rows": sum(len(y) for y in real.y),
        "groups_of_another_size": groups,
        "groups_with_other_targets": targets,
        "rows_differing": rows,
        "cells_differing": cells,
        "largest_difference_by_feature": {FEATURES[c]: float(worst[c]) for c in np.flatnonzero(worst)},
    }


def verify(name: str, n_events: int, settings: list[tuple[int, int]]) -> dict[str, Any]:
    events, _ = load(name, progress=None)
    events = events[:n_events]
    dev, _test = time_split(events, test_fraction=0.2)
    tr, val = time_split(dev, test_fraction=0.2)
    head, window = time_split(tr, test_fraction=0.5)
    ecfg = base_config(name, {})

    def run(k: int, p: int) -> tuple[Examples, Examples]:
        cfg = replace(ecfg, ranker=replace(ecfg.ranker, per_source=k, pop_candidates=p))
        train_ex, val_ex = Examples(), Examples(keep_all=True)
        with row_places():
            stream_evaluate(head, window, ecfg=cfg, collect=train_ex)
            stream_evaluate(tr, val, ecfg=cfg, collect=val_ex)
        return train_ex, val_ex

    t = time.time()
    rcfg = RankerConfig()
    full_train, full_val = run(rcfg.per_source, rcfg.pop_candidates)
    print(f"{name}[:{n_events}]: {len(full_val.y)} validation events collected at today's ({time.time() - t:.0f}s)")
    res: dict[str, Any] = {}
    for k, p in settings:
        real_train, real_val = run(k, p)
        cut_train, cut_val = truncate(full_train, k, p), truncate(full_val, k, p)
        r_real = ranks(rcfg, narrow(real_train), narrow(real_val))
        r_cut = ranks(rcfg, cut_train, cut_val)
        res[f"{k}/{p}"] = r = {
            "train": _compare(real_train, cut_train),
            "validation": _compare(real_val, cut_val),
            "real": figures(r_real, None),
            "truncated": figures(r_cut, None),
            "events_ranked_otherwise": int((r_real != r_cut).sum()),
        }
        print(f"  {k}/{p}: {json.dumps(r)}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="yoochoose,taobao,rees46")
    ap.add_argument("--settings", default="40/20,30/20,20/20,50/10,30/10", help="per_source/pop_candidates, ...")
    ap.add_argument("--cache", default="/tmp/streamrec-tune-candidates")
    ap.add_argument("--tag", default="rows", help="names this collection's cache files")
    ap.add_argument("--collect-only", action="store_true")
    ap.add_argument("--verify", default="", help="a dataset: real collections against truncated ones")
    ap.add_argument("--events", type=int, default=200_000, help="--verify: the dataset's first events")
    ap.add_argument("--seeds", default="0", help="LightGBM seeds: each setting fit with each, its hits averaged")
    ap.add_argument("--output", default="/tmp/tune-candidates.json")
    args = ap.parse_args()
    out: dict[str, Any] = json.loads(Path(args.output).read_text()) if Path(args.output).exists() else {}
    settings = parse(args.settings)
    if args.verify:
        out[f"verify/{args.verify}/{args.events}"] = verify(args.verify, args.events, settings)
        Path(args.output).write_text(json.dumps(out, indent=2, default=float))
        return
    rcfg = RankerConfig()
    today = (rcfg.per_source, rcfg.pop_candidates)
    for name in args.datasets.split(","):
        with row_places():
            train_ex, val_ex = collect(name, Path(args.cache), {}, args.tag)
        if args.collect_only:
            continue
        res: dict[str, Any] = {}
        seeds = [int(x) for x in args.seeds.split(",")]

        t = time.time()
        base, val0 = fits(train_ex, val_ex, *today, seeds)
        rows = np.mean([len(y) for y in val0.y])
        res[f"{today[0]}/{today[1]}"] = f = seed_figures(base, None) | {"rows_per_list": float(rows)}
        print(f"{name}: {len(val0.y)} validation events, {train_ex.covered}/{train_ex.events} training events covered")
        print(line(f"{today[0]}/{today[1]}", f) + f", {rows:.1f} rows a list ({time.time() - t:.0f}s)", flush=True)
        if len(seeds) > 1:  # the refit's own noise: one seed against another on the same rows
            res["seed against seed"] = f = figures(base[1], base[0])
            print(line(f"seed {seeds[1]} vs seed {seeds[0]}", f), flush=True)
        for k, p in settings:
            t = time.time()
            runs, valk = fits(train_ex, val_ex, k, p, seeds)
            cov = float(np.mean([y.any() for y in valk.y]))
            rows = np.mean([len(y) for y in valk.y])
            f = seed_figures(runs, base) | {"rows_per_list": float(rows), "coverage": cov}
            res[f"{k}/{p}"] = f
            print(
                line(f"{k}/{p}", f) + f", {rows:.1f} rows a list, target among them {cov:.3f} ({time.time() - t:.0f}s)",
                flush=True,
            )
        out[f"{name}/{args.tag}/seeds {args.seeds}"] = res
        Path(args.output).write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
