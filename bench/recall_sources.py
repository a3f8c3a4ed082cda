"""How much more of the next item new candidate sources could reach (validation window only).

The ranker cannot put in its top 10 an item its candidates do not hold. This measures, on the
validation replay (`recsys stream-eval --validation`'s window: the last 20% of the events before
the test window, after the 80% before it), how often today's candidate union holds the next
item, and what each new source adds: its best `--per-source` items for the user at that moment
(state from before the event, updated event by event from the stream, training window
included), how many of the events today's union misses it reaches ("newly reachable"), and how
many of those it ranks in its own top 10 (a ranker that trusts it could show them).

Today's union is read from bench/tune_ranker's cached validation candidates (one group per
scored event, in replay order; `--cache`), so nothing is replayed through the slow sources
again. The new sources here are plain Python over the events and an item -> category map read
from the dataset file (the catalogue's category in a worker):

- `catpop`: the recently popular items (decayed counts, `--half-life-h`) of the categories of the
  user's last `--cat-last` distinct items, the more recent category weighted more.
- `bought-together`: items carted / favourited / bought by the same users as the user's recent
  items were (pairs of one user's conversions).
- `viewed-bought`: items bought (or carted) after the user's recent items were viewed by others.

    python -m bench.recall_sources --datasets taobao,rees46,yoochoose --output /tmp/recall.json
"""

from __future__ import annotations

import argparse
import csv
import gzip
import heapq
import json
import math
import pickle
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from recsys.data.datasets import dataset_path, load, time_split
from recsys.events import Event

CONVERSIONS = frozenset(("addtocart", "transaction", "favorite"))
# the item and category columns of the files whose rows carry a category
CATEGORY_COLUMNS = {"taobao": (1, 2), "rees46": (2, 3)}


def categories(name: str) -> dict[str, str]:
    """item -> category from the dataset file (what a shop's catalogue says; empty without one)."""
    cols = CATEGORY_COLUMNS.get(name)
    if cols is None:
        return {}
    out: dict[str, str] = {}
    with gzip.open(dataset_path(name), "rt", newline="") as fh:
        rows = csv.reader(fh)
        next(rows)
        for row in rows:
            if len(row) > max(cols) and row[cols[1]]:
                out[row[cols[0]]] = row[cols[1]]
    return out


class Decayed:
    """Exponentially decayed counts, kept as weights relative to a fixed origin (no per-step decay)."""

    def __init__(self, half_life_s: float):
        self.rate = math.log(2) / (half_life_s * 1000.0)
        self.t0: int | None = None
        self.w: dict[str, float] = defaultdict(float)

    def add(self, key: str, ts: int) -> None:
        if self.t0 is None:
            self.t0 = ts
        self.w[key] += math.exp((ts - self.t0) * self.rate)


class Sources:
    """The candidate sources measured here, fed every event in time order."""

    def __init__(self, cat: dict[str, str], half_life_h: float, cat_last: int, recent: int):
        self.cat = cat
        self.cat_last = cat_last
        self.recent = recent
        self.half_life_s = half_life_h * 3600.0
        self.cat_pop: dict[str, Decayed] = {}
        self.history: dict[str, deque[Event]] = defaultdict(lambda: deque(maxlen=20))
        self.conv: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=20))
        self.together: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.then_bought: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def update(self, e: Event) -> None:
        c = self.cat.get(e.item)
        if c is not None:
            d = self.cat_pop.get(c)
            if d is None:
                d = self.cat_pop[c] = Decayed(self.half_life_s)
            d.add(e.item, e.ts)
        if e.type in CONVERSIONS:
            for a in set(self.conv[e.user]) - {e.item}:
                self.together[a][e.item] += 1.0
                self.together[e.item][a] += 1.0
            for d_, prev in enumerate(reversed(self.history[e.user]), 1):
                if prev.item != e.item and prev.type not in CONVERSIONS:
                    self.then_bought[prev.item][e.item] += 1.0 / d_
            self.conv[e.user].append(e.item)
        self.history[e.user].append(e)

    def _recent_items(self, user: str, n: int) -> list[str]:
        out: list[str] = []
        for e in reversed(self.history.get(user, ())):
            if e.item not in out:
                out.append(e.item)
                if len(out) == n:
                    break
        return out

    def catpop(self, user: str, k: int) -> list[str]:
        scores: dict[str, float] = defaultdict(float)
        cats: list[str] = []
        for item in self._recent_items(user, 20):
            c = self.cat.get(item)
            if c is not None and c not in cats:
                cats.append(c)
                if len(cats) == self.cat_last:
                    break
        for pos, c in enumerate(cats):
            d = self.cat_pop[c]
            total = sum(d.w.values())
            for item, w in d.w.items():
                scores[item] += (w / total) * 0.5**pos
        return [i for i, _ in heapq.nlargest(k, scores.items(), key=lambda kv: kv[1])]

    def _rows(self, table: dict[str, dict[str, float]], user: str, k: int) -> list[str]:
        scores: dict[str, float] = defaultdict(float)
        for pos, item in enumerate(self._recent_items(user, self.recent)):
            row = table.get(item)
            if row:
                total = sum(row.values())
                for b, w in row.items():
                    scores[b] += (w / total) * 0.7**pos
        return [i for i, _ in heapq.nlargest(k, scores.items(), key=lambda kv: kv[1])]

    def bought_together(self, user: str, k: int) -> list[str]:
        return self._rows(self.together, user, k)

    def viewed_bought(self, user: str, k: int) -> list[str]:
        return self._rows(self.then_bought, user, k)


def cached_union(name: str, cache: Path) -> tuple[list[bool], list[int], list[bool]]:
    """(covered, union size, cold) per scored validation event, from bench/tune_ranker's cache."""
    with (cache / f"{name}-val.pkl").open("rb") as fh:
        val_ex = pickle.load(fh)  # our own cache
    return (
        [bool(y.any()) for y in val_ex.y],
        [len(y) for y in val_ex.y],
        [m[0] == "cold" for m in val_ex.meta],
    )


def measure(name: str, cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    events, _ = load(name, progress=None)
    dev, _test = time_split(events, test_fraction=0.2)
    tr, val = time_split(dev, test_fraction=0.2)
    covered, size, cold = cached_union(name, cache)
    src = Sources(categories(name), args.half_life_h, args.cat_last, args.recent)
    for e in tr:
        src.update(e)
    per = args.per_source
    methods: dict[str, Callable[[str, int], list[str]]] = {
        "catpop": src.catpop,
        "bought-together": src.bought_together,
        "viewed-bought": src.viewed_bought,
    }
    acc: dict[str, dict[str, int]] = {m: defaultdict(int) for m in [*methods, "all new"]}
    last: dict[str, str] = {e.user: e.item for e in tr}
    j = 0
    t = time.time()
    for e in val:
        if last.get(e.user) == e.item:  # the replay skips a repeat of the item on screen
            src.update(e)
            continue
        is_cold = e.user not in last
        if j >= len(covered):
            raise SystemExit(f"{name}: more scored events than the cache's {len(covered)} groups")
        if is_cold != cold[j]:
            raise SystemExit(f"{name}: event {j} is cold={is_cold} here, {cold[j]} in the cache: not the same replay")
        if not is_cold:
            union_new: set[str] = set()
            for m, f in methods.items():
                lst = [i for i in f(e.user, per + 1) if i != last[e.user]][:per]
                union_new.update(lst)
                a = acc[m]
                a["events"] += 1
                if e.item in lst:
                    a["hit"] += 1
                    if not covered[j]:
                        a["new"] += 1
                        if lst.index(e.item) < 10:
                            a["new_top10"] += 1
                a["size"] += len(lst)
            a = acc["all new"]
            a["events"] += 1
            a["size"] += len(union_new)
            if e.item in union_new:
                a["hit"] += 1
                a["new"] += not covered[j]
        src.update(e)
        last[e.user] = e.item
        j += 1
    if j != len(covered):
        raise SystemExit(f"{name}: {j} scored events here, {len(covered)} in the cache")
    warm = [k for k in range(j) if not cold[k]]
    base = sum(covered[k] for k in warm) / max(len(warm), 1)
    n = max(len(warm), 1)
    out: dict[str, Any] = {
        "scored": j,
        "non_cold": len(warm),
        "union_recall": round(base, 4),
        "union_size": round(sum(size[k] for k in warm) / n, 1),
        "categories": len(src.cat),
        "seconds": round(time.time() - t, 1),
        "sources": {},
    }
    for m, a in acc.items():
        out["sources"][m] = {
            "recall": round(a["hit"] / n, 4),
            "size": round(a["size"] / n, 1),
            "adds": round(a["new"] / n, 4),
            "adds_top10": round(a.get("new_top10", 0) / n, 4),
            "union_recall_with": round(base + a["new"] / n, 4),
        }
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="taobao,rees46,yoochoose")
    ap.add_argument("--cache", default="/tmp/streamrec-tune-ranker-examples", help="bench/tune_ranker's cache")
    ap.add_argument("--per-source", type=int, default=50)
    ap.add_argument("--half-life-h", type=float, default=24.0)
    ap.add_argument("--cat-last", type=int, default=3)
    ap.add_argument("--recent", type=int, default=5)
    ap.add_argument("--output", default="/tmp/recall-sources.json")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {"args": vars(args)}
    for name in args.datasets.split(","):
        out[name] = r = measure(name, Path(args.cache), args)
        print(
            f"{name}: {r['non_cold']} non-cold of {r['scored']} scored; today's union holds the next item "
            f"for {r['union_recall']:.3f} ({r['union_size']} candidates)",
            flush=True,
        )
        for m, s in r["sources"].items():
            print(
                f"  {m:16s} recall@{args.per_source} {s['recall']:.3f} ({s['size']} items), adds {s['adds']:.4f} "
                f"(in its top 10: {s['adds_top10']:.4f}) -> union {s['union_recall_with']:.3f}",
                flush=True,
            )
        Path(args.output).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
