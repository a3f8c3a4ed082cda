"""YOOCHOOSE's gap to +8%: what second-order transitions, two-hop "viewed next", ALS item neighbours
and a session-start list for cold events could add (validation windows only).

Split as bench/tune_category.py splits (the last 20% of the events are the test window, never
read; the rest 80/20 into train / validation). The ranker's training examples and the validation
replay's candidates are collected once with today's code (`bench.tune_category.base_config`: the
baselines' validation-tuned sources), every event's group kept with its candidate items (cached
under --cache). Then, in plain Python over the same events in the same order (the replay's
scored events: a repeat of the item on screen is not scored; checked against the cache's cold
flags and counts):

- recall: how often each idea's best 50 items for the event hold the next item where today's
  candidates do not (non-cold events): the second-order table (move before, item on screen) ->
  next move; two hops of "viewed next" (item on screen -> its 20 most frequent next moves -> theirs);
  the 50 nearest items to the item on screen by the ALS factors' cosine (the worker's ANN);
- features: the candidate's share of the second-order row, the row's log total and the candidate's
  log count, added to today's columns; the ranker fit and scored as method `ranker` (HR@10 and
  MRR@10, paired standard errors against today's columns alone, LightGBM seeds 0 and 1); and
  today's columns ranked by the mean of five seeds' scores (less variance, five times the predict);
- cold events (a user's first event): the system's list, recent popularity (8 h half-life),
  against the recent popularity of session starts (first events of a user or after a 30 min gap)
  and the mean of the two shares; on the validation window and, as a second sample, on the
  training part's last half.

Second-order counts are the co-visitation's "viewed next" counts one move deeper (the same
window, consecutive repeats one move, undecayed as co-visitation's are).

    python -m bench.tune_transitions --datasets yoochoose,rees46,taobao --output /tmp/tune-transitions.json
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.tune_category import _cached, base_config, figures, line, ranks
from recsys.candidates.ranker import FEATURES, Examples, RankerConfig, lightgbm_params
from recsys.confidence import ConfidenceConfig, build_profiles
from recsys.data.datasets import load, time_split
from recsys.evaluation.streaming import stream_evaluate
from recsys.events import Event
from recsys.model.train import TrainConfig, train

PER = 50  # items per idea (the ranker's per_source)
WINDOW_MS = 86_400_000  # the co-visitation window (SourcesConfig.covisit_window_s)
SESSION_GAP_MS = 1_800_000
HALF_LIFE_S = 8 * 3600.0  # recent popularity's (the system's cold-start list)
S2_FEATURES = ("s2_share", "s2_log_total", "s2_log_count")


class ItemsExamples(Examples):
    """Every event's group (keep_all) with its candidate items, in replay order (`done()` after
    the replay: the replay moves a chunk's groups to put its unreachable events in order)."""

    def __init__(self) -> None:
        super().__init__(keep_all=True)
        self.items: list[tuple[str, ...]] = []
        self._of: dict[int, tuple[str, ...]] = {}  # id of a group's matrix -> its items

    def add(self, items: Sequence[str], X: np.ndarray, target: str, meta: tuple[str, int] = ("", 0)) -> None:
        super().add(items, X, target, meta)
        if len(items):
            self._of[id(X)] = tuple(items)

    def done(self) -> ItemsExamples:
        self.items = [self._of.get(id(X), ()) for X in self.X]
        self._of = {}
        return self


def collect(
    name: str, cache: Path, tag: str
) -> tuple[list[Event], list[Event], list[Event], ItemsExamples, ItemsExamples]:
    events, _ = load(name, progress=None)
    dev, _test = time_split(events, test_fraction=0.2)
    tr, val = time_split(dev, test_fraction=0.2)
    head, window = time_split(tr, test_fraction=0.5)
    ecfg = base_config(name, {})

    def replay(before: list[Event], after: list[Event]) -> ItemsExamples:
        ex = ItemsExamples()
        stream_evaluate(before, after, ecfg=ecfg, collect=ex)
        return ex.done()

    train_ex = _cached(cache / f"{name}-{tag}-train.pkl", lambda: replay(head, window))
    val_ex = _cached(cache / f"{name}-{tag}-val.pkl", lambda: replay(tr, val))
    return head, tr, val, train_ex, val_ex


def _best(row: Mapping[str, float], n: int, banned: str) -> list[str]:
    return [i for i, _ in heapq.nlargest(n + 1, row.items(), key=lambda kv: kv[1]) if i != banned][:n]


class Transitions:
    """Each user's moves (consecutive repeats merged) and the "viewed next" counts one and two moves deep."""

    def __init__(self) -> None:
        self.moves: dict[str, deque[tuple[str, int]]] = {}
        self.first: dict[str, dict[str, float]] = defaultdict(dict)
        self.second: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        # what any co-occurrence source could reach: items two users' item sets hold together
        self.touched: dict[str, list[str]] = defaultdict(list)
        self.together: dict[str, set[str]] = defaultdict(set)

    def update(self, e: Event) -> None:
        mine = self.touched[e.user]
        if e.item not in mine:
            for a in mine:
                self.together[a].add(e.item)
                self.together[e.item].add(a)
            mine.append(e.item)
        self.together.setdefault(e.item, set())  # seen, if only alone
        m = self.moves.get(e.user)
        if m is None:
            m = self.moves[e.user] = deque(maxlen=2)
        if m and m[-1][0] == e.item:
            m[-1] = (e.item, e.ts)
            return
        if m and e.ts - m[-1][1] <= WINDOW_MS:
            a = m[-1][0]
            self.first[a][e.item] = self.first[a].get(e.item, 0.0) + 1.0
            if len(m) == 2:
                r = self.second[(m[0][0], a)]
                r[e.item] = r.get(e.item, 0.0) + 1.0
        m.append((e.item, e.ts))

    def query(self, user: str) -> tuple[str | None, str | None]:
        """(the move before, the item on screen)."""
        m = self.moves.get(user)
        if not m:
            return None, None
        return (m[0][0] if len(m) == 2 else None), m[-1][0]

    def two_hop(self, q: str) -> dict[str, float]:
        row = self.first.get(q, {})
        tot = sum(row.values())
        out: dict[str, float] = defaultdict(float)
        for b, v in heapq.nlargest(20, row.items(), key=lambda kv: kv[1]):
            r2 = self.first.get(b, {})
            t2 = sum(r2.values())
            for c, w in r2.items():
                out[c] += v / tot * w / t2
        return out


def scored(before: Sequence[Event], after: Sequence[Event], ex: ItemsExamples) -> Any:
    """Yields (group index, event, cold) for the replay's scored events, with `Transitions` (state
    before the event: the caller reads it, then this updates it)."""
    tr = Transitions()
    for e in before:
        tr.update(e)
    last = {e.user: e.item for e in before}
    j = 0
    for e in after:
        if last.get(e.user) != e.item:
            cold = e.user not in last
            if j >= len(ex.meta) or cold != (ex.meta[j][0] == "cold"):
                raise SystemExit(f"event {j}: not the cache's replay")
            yield j, e, cold, tr
            last[e.user] = e.item
            j += 1
        tr.update(e)
    if j != len(ex.meta):
        raise SystemExit(f"{j} scored events here, {len(ex.meta)} in the cache")


def s2_columns(before: Sequence[Event], after: Sequence[Event], ex: ItemsExamples) -> list[np.ndarray]:
    out = [np.zeros((len(X), len(S2_FEATURES)), np.float32) for X in ex.X]
    for j, _e, cold, tr in scored(before, after, ex):
        p, q = tr.query(_e.user)
        row = tr.second.get((p, q)) if not cold and p is not None and q is not None else None
        if row:
            tot = sum(row.values())
            items = ex.items[j]
            assert len(items) == len(out[j])
            out[j][:, 0] = [row.get(i, 0.0) / tot for i in items]
            out[j][:, 1] = math.log1p(tot)
            out[j][:, 2] = [math.log1p(row.get(i, 0.0)) for i in items]
    return out


def recall(tr_events: Sequence[Event], val: Sequence[Event], ex: ItemsExamples) -> dict[str, float]:
    """Non-cold validation events: what each idea's best 50 hold that today's candidates miss."""
    ccfg = ConfidenceConfig()
    model, _, _ = train(build_profiles(sorted(tr_events, key=lambda e: e.ts), ccfg), ccfg, TrainConfig(), version="v")
    y = np.asarray(model.item_factors, np.float32)
    unit = y / np.maximum(np.linalg.norm(y, axis=1), 1e-10)[:, None]
    ids = {r: i for i, r in model.item_index.items()}

    def als(q: str) -> list[str]:
        r = model.item_index.get(q)
        if r is None:
            return []
        s = unit @ unit[r]
        s[r] = -2.0
        top = np.argpartition(-s, PER)[:PER]
        return [ids[int(t)] for t in top[np.argsort(-s[top], kind="stable")]]

    acc: dict[str, int] = defaultdict(int)
    ideas: dict[str, Callable[[Transitions, str | None, str], list[str]]] = {
        "second-order": lambda t, p, q: _best(t.second.get((p, q), {}), PER, q) if p is not None else [],
        "two-hop next": lambda t, p, q: _best(t.two_hop(q), PER, q),
        "ALS neighbours": lambda t, p, q: als(q),
    }
    for j, e, cold, tr in scored(tr_events, val, ex):
        if cold:
            continue
        p, q = tr.query(e.user)
        assert q is not None
        covered = bool(ex.y[j].any())
        acc["events"] += 1
        acc["covered"] += covered
        for name, f in ideas.items():
            lst = f(tr, p, q)
            if e.item in lst:
                acc[f"{name}: recall"] += 1
                if not covered:
                    acc[f"{name}: adds"] += 1
                    acc[f"{name}: adds, in its top 10"] += lst.index(e.item) < 10
        if not covered:
            if e.item not in tr.together:
                acc["missed: an item never seen"] += 1
            elif any(e.item in tr.together[a] for a in tr.touched[e.user]):
                acc["missed: once seen with one of the user's items"] += 1
            else:
                acc["missed: never seen with any of the user's items"] += 1
    n = max(acc["events"], 1)
    return {k: (v if k == "events" else round(v / n, 4)) for k, v in acc.items()}


class _Decayed:
    def __init__(self, half_life_s: float):
        self.rate = math.log(2) / (half_life_s * 1000.0)
        self.t0: int | None = None
        self.w: dict[str, float] = defaultdict(float)
        self.total = 0.0

    def add(self, key: str, ts: int) -> None:
        if self.t0 is None:
            self.t0 = ts
        v = math.exp((ts - self.t0) * self.rate)
        self.w[key] += v
        self.total += v


def cold_lists(before: Sequence[Event], after: Sequence[Event]) -> dict[str, dict[str, float]]:
    """HR@10 / MRR@10 on cold events (a user's first), paired SE against recent popularity."""
    pop, starts = _Decayed(HALF_LIFE_S), _Decayed(HALF_LIFE_S)
    last_ts: dict[str, int] = {}

    def update(e: Event) -> None:
        pop.add(e.item, e.ts)
        if e.user not in last_ts or e.ts - last_ts[e.user] > SESSION_GAP_MS:
            starts.add(e.item, e.ts)
        last_ts[e.user] = e.ts

    def top(w: Mapping[str, float]) -> list[str]:
        return [i for i, _ in heapq.nlargest(10, w.items(), key=lambda kv: kv[1])]

    for e in before:
        update(e)
    ranks: dict[str, list[int]] = defaultdict(list)
    for e in after:
        if e.user not in last_ts:
            mix = {i: 0.5 * v / pop.total for i, v in heapq.nlargest(50, pop.w.items(), key=lambda kv: kv[1])}
            for i, v in heapq.nlargest(50, starts.w.items(), key=lambda kv: kv[1]):
                mix[i] = 0.5 * v / starts.total + 0.5 * pop.w.get(i, 0.0) / pop.total
            for name, lst in (
                ("recent popularity", top(pop.w)),
                ("session starts", top(starts.w)),
                ("mean of the two", top(mix)),
            ):
                ranks[name].append(lst.index(e.item) + 1 if e.item in lst else 0)
        update(e)
    if not ranks:  # no user is new (Taobao)
        return {"events": {"n": 0.0}}
    base = np.array(ranks["recent popularity"])
    return {name: figures(np.array(r), base) for name, r in ranks.items()} | {"events": {"n": float(len(base))}}


def fit_ranks(
    X: Sequence[np.ndarray], train_ex: Examples, val_ex: Examples, Xv: Sequence[np.ndarray], seeds: Sequence[int]
) -> np.ndarray:
    """The target's rank in each validation event's top 10, as bench.tune_category.ranks, on
    today's columns widened with extra ones (LightGBM with RankerConfig's parameters); several
    seeds: the mean of their models' scores."""
    import lightgbm as lgb

    cfg = RankerConfig()
    extra = X[0].shape[1] - len(FEATURES)
    keep = [j for j, a in enumerate(train_ex.y) if len(a) > 1 and a.any()]
    Xt, yt = np.vstack([X[j] for j in keep]), np.concatenate([train_ex.y[j] for j in keep])
    group, names = [len(train_ex.y[j]) for j in keep], [*FEATURES, *S2_FEATURES[:extra]]
    # a Dataset per seed: the seed also samples the rows the bins are cut from, as the library's fit
    boosters = [
        lgb.train(
            lightgbm_params(cfg, s),
            lgb.Dataset(Xt, yt, group=group, feature_name=names),
            cfg.n_estimators,
        )
        for s in seeds
    ]
    out = np.zeros(len(val_ex.y), np.int64)
    for j, (Xj, y, (seg, fb_rank)) in enumerate(zip(Xv, val_ex.y, val_ex.meta, strict=True)):
        if seg == "cold":
            out[j] = fb_rank
        elif y.any():
            sc = np.mean([np.asarray(b.predict(Xj, num_threads=1)) for b in boosters], axis=0)
            order = np.argsort(-sc, kind="stable")[:10]
            hit = np.flatnonzero(y[order] > 0)
            out[j] = int(hit[0]) + 1 if len(hit) else 0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="yoochoose,rees46,taobao")
    ap.add_argument("--cache", default="/tmp/streamrec-tune-transitions")
    ap.add_argument("--tag", default="base", help="names this collection's cache files")
    ap.add_argument("--output", default="/tmp/tune-transitions.json")
    args = ap.parse_args()
    out: dict[str, Any] = json.loads(Path(args.output).read_text()) if Path(args.output).exists() else {}
    for name in args.datasets.split(","):
        head, tr, val, train_ex, val_ex = collect(name, Path(args.cache), args.tag)
        _, window = time_split(tr, test_fraction=0.5)
        res: dict[str, Any] = {"coverage": float(np.mean([y.any() for y in val_ex.y]))}
        t = time.time()
        res["recall"] = rc = recall(tr, val, val_ex)
        print(f"{name}: non-cold validation events {rc['events']}, recall ({time.time() - t:.0f}s)", flush=True)
        for k, v in rc.items():
            print(f"  {k}: {v}", flush=True)
        # today's columns: this file's fit must rank as the library's (method `ranker`)
        today = fit_ranks(train_ex.X, train_ex, val_ex, val_ex.X, (0,))
        if not np.array_equal(today, ranks(RankerConfig(), train_ex, val_ex)):
            raise SystemExit(f"{name}: the widened fit does not reproduce the library's ranker")
        res["today"] = f = figures(today, None)
        print(line("today's features", f), flush=True)
        tc, vc = s2_columns(head, window, train_ex), s2_columns(tr, val, val_ex)
        tX = [np.hstack([X, c]) for X, c in zip(train_ex.X, tc, strict=True)]
        vX = [np.hstack([X, c]) for X, c in zip(val_ex.X, vc, strict=True)]
        for seed in (0, 1):
            label = f"second-order features, seed {seed}"
            res[label] = f = figures(fit_ranks(tX, train_ex, val_ex, vX, (seed,)), today)
            print(line(label, f), flush=True)
        label = "today's features, the mean of 5 seeds' scores"
        res[label] = f = figures(fit_ranks(train_ex.X, train_ex, val_ex, val_ex.X, range(5)), today)
        print(line(label, f), flush=True)
        for part, (b, a) in (("validation", (tr, val)), ("training part's last half", (head, window))):
            res[f"cold, {part}"] = cl = cold_lists(b, a)
            print(f"  cold events, {part}: {int(cl['events']['n'])}", flush=True)
            for k, f in cl.items():
                if k != "events":
                    print(line(k, f), flush=True)
        out[f"{name}/{args.tag}"] = res
        Path(args.output).write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
