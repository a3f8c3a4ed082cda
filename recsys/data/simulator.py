"""A clickstream simulator with structure a recommender can learn, for when real data is absent.

The shop
    ``n_items`` items, each in one of ``n_topics`` latent topics (categories). Topics differ in
    size and in popularity (Zipf with ``topic_zipf_a`` over topics); inside a topic, item
    popularity is Zipf with ``zipf_a`` over a random ranking, so every topic has its few hits
    and a long tail. Item ids do not reveal the topic. Each topic has a price level; item
    prices scatter log-normally around it.

The shoppers
    ``n_users`` shoppers, each with a taste vector over topics drawn from a Dirichlet whose
    base measure is the topic popularity and whose total mass is ``taste_concentration``
    (small: most shoppers care about one to three topics) and an activity level (log-normal,
    so a few shoppers produce many of the events). A fraction ``initial_users`` are there at
    the start; the rest arrive uniformly over the ``days`` the simulation spans, with their
    first session at arrival. Sessions come as a Poisson process per shopper, thinned by a
    daily cycle (quiet at night, busy in the afternoon, UTC), hours to days apart.

A session
    picks a topic from the shopper's tastes and walks through items: mostly new items drawn
    by in-topic popularity, sometimes a switch to another liked topic (``topic_switch``), an
    item from the whole catalogue (``explore``), a repeat view of an item already seen in
    the session (``repeat_view``; items the shopper is interested in come back more often),
    or a return to an item from an earlier session (``revisit``). Each view has a dwell time
    (log-normal seconds; ``intent_dwell`` times longer for items the shopper means to cart).
    The funnel: a viewed item is an *intent* item with probability ``cart_rate`` (scaled by
    the item's appeal and by how much the shopper likes its topic); intent items are carted
    on the first or a later view; at the end of the session each carted item is bought with
    probability ``buy_rate``; carts left behind may still be bought at the end of a later
    session. A small share of views also add the item to the wish list (``favorite_rate``).
    Steps are the dwell plus a log-normal navigation gap apart (seconds to about a minute).

Everything is drawn from one ``numpy`` generator seeded with ``seed``: the same config gives
the same events, bit for bit. `simulate` returns exactly ``cfg.events`` events sorted by time
(the earliest ones of a run sized to overshoot), every one valid per `parse_event`.

CLI: ``python -m recsys.data.simulator OUT.csv[.gz]|OUT.jsonl [--events N] [--users N] ...``
writes the canonical format via `recsys.data.datasets.write_canonical`.
"""

from __future__ import annotations

import argparse
import bisect
import math
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

import numpy as np

from recsys.errors import ConfigError, RecsysError
from recsys.events import MAX_DWELL_S, MIN_TS_MS, Event

__all__ = ["SimConfig", "simulate", "write", "describe", "DEFAULT_START_MS", "main"]

DEFAULT_START_MS = 1_780_272_000_000  # 2026-06-01 00:00 UTC: a fixed date in the recent past
_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000


@dataclass(frozen=True)
class SimConfig:
    n_users: int = 2000
    n_items: int = 5000
    n_topics: int = 20
    events: int = 50_000  # exactly this many events are returned
    start_ms: int = DEFAULT_START_MS
    days: float = 28.0  # time the shopper arrivals and sessions are spread over
    seed: int = 0
    # popularity
    zipf_a: float = 1.1  # item popularity inside a topic ~ 1 / rank**zipf_a
    topic_zipf_a: float = 0.8  # topic popularity ~ 1 / rank**topic_zipf_a
    # shoppers
    taste_concentration: float = 1.0  # total Dirichlet mass of a taste vector (small: narrow)
    activity_sigma: float = 1.0  # log-normal spread of shopper activity
    initial_users: float = 0.4  # share of shoppers present at the start
    # sessions
    session_mean: float = 6.0  # mean number of item views per session (geometric)
    topic_switch: float = 0.08  # per step: move to another topic the shopper likes
    explore: float = 0.04  # per step: any item, by global popularity
    repeat_view: float = 0.15  # per step: view again an item seen in this session
    revisit: float = 0.06  # per step: return to an item from an earlier session
    # funnel
    cart_rate: float = 0.07  # share of viewed items the shopper means to cart
    buy_rate: float = 0.35  # share of carted items bought at the session's end
    favorite_rate: float = 0.025  # share of views that also add to the wish list
    # timing (seconds)
    dwell_median_s: float = 12.0
    dwell_sigma: float = 0.9
    intent_dwell: float = 2.5  # dwell multiplier for items the shopper will cart
    gap_median_s: float = 5.0  # navigation time between two steps, on top of the dwell
    diurnal: bool = True  # fewer sessions at night (UTC)
    price_median: float = 25.0

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"simulator: {what}")

        for name in ("n_users", "n_items", "n_topics", "events"):
            v = getattr(self, name)
            need(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{name} must be an integer >= 1, got {v!r}"
            )
        need(self.n_topics <= self.n_items, f"n_topics ({self.n_topics}) must be <= n_items ({self.n_items})")
        need(
            isinstance(self.start_ms, int) and self.start_ms >= MIN_TS_MS,
            f"start_ms must be integer ms after 2000-01-01, got {self.start_ms!r}",
        )
        need(isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}")
        for name in (
            "days",
            "taste_concentration",
            "session_mean",
            "dwell_median_s",
            "gap_median_s",
            "price_median",
            "intent_dwell",
        ):
            v = getattr(self, name)
            need(math.isfinite(v) and v > 0, f"{name} must be > 0, got {v!r}")
        need(self.session_mean >= 1, f"session_mean must be >= 1, got {self.session_mean}")
        for name in ("zipf_a", "topic_zipf_a", "activity_sigma", "dwell_sigma"):
            v = getattr(self, name)
            need(math.isfinite(v) and v >= 0, f"{name} must be >= 0, got {v!r}")
        for name in (
            "initial_users",
            "topic_switch",
            "explore",
            "repeat_view",
            "revisit",
            "cart_rate",
            "buy_rate",
            "favorite_rate",
        ):
            v = getattr(self, name)
            need(0.0 <= v <= 1.0, f"{name} must be in [0, 1], got {v!r}")
        need(self.explore + self.repeat_view + self.revisit <= 1.0, "explore + repeat_view + revisit must be <= 1")

    @property
    def end_ms(self) -> int:
        return self.start_ms + int(self.days * _DAY_MS)


# --------------------------------------------------------------------------- randomness


class _Draws:
    """Buffered uniforms and normals from one Generator: fast scalar draws, reproducible."""

    __slots__ = ("rng", "_u", "_ui", "_n", "_ni")
    _BLOCK = 1 << 15

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self._u: list[float] = []
        self._ui = 0
        self._n: list[float] = []
        self._ni = 0

    def u(self) -> float:
        if self._ui >= len(self._u):
            self._u = self.rng.random(self._BLOCK).tolist()
            self._ui = 0
        v = self._u[self._ui]
        self._ui += 1
        return v

    def normal(self) -> float:
        if self._ni >= len(self._n):
            self._n = self.rng.standard_normal(self._BLOCK).tolist()
            self._ni = 0
        v = self._n[self._ni]
        self._ni += 1
        return v

    def lognormal(self, median: float, sigma: float) -> float:
        return median * math.exp(sigma * self.normal())

    def pick(self, cdf: Sequence[float]) -> int:
        """Index drawn from a cumulative (unnormalised) weight list."""
        return min(bisect.bisect_right(cdf, self.u() * cdf[-1]), len(cdf) - 1)

    def geometric(self, mean: float) -> int:
        """1, 2, ... with the given mean (mean 1: always 1)."""
        if mean <= 1.0:
            return 1
        p = 1.0 / mean
        return 1 + int(math.log(1.0 - self.u()) / math.log(1.0 - p))


def _zipf(n: int, a: float) -> np.ndarray:
    return 1.0 / np.arange(1, n + 1, dtype=np.float64) ** a


def _diurnal(ts_ms: int) -> float:
    """Relative session intensity by UTC hour: lowest around 05:00, highest around 17:00."""
    h = (ts_ms % _DAY_MS) / _HOUR_MS
    return 0.25 + 0.75 * (1.0 - math.cos(2.0 * math.pi * (h - 5.0) / 24.0)) / 2.0


_DIURNAL_MEAN = 0.625


# --------------------------------------------------------------------------- the world


@dataclass
class _Shop:
    item_ids: list[str]
    item_topic: np.ndarray  # topic of each item
    topic_items: list[list[int]]  # items of each topic, most popular first
    topic_cdf: list[list[float]]  # cumulative in-topic popularity
    global_cdf: list[float]  # cumulative popularity over the whole catalogue
    appeal: list[float]  # item's cart propensity multiplier (mean ~1)
    price: list[float]


def _build_shop(cfg: SimConfig, rng: np.random.Generator) -> _Shop:
    k = cfg.n_topics
    topic_pop = _zipf(k, cfg.topic_zipf_a)
    topic_pop /= topic_pop.sum()
    # Topic sizes: popular topics tend to be bigger, with noise; every topic gets >= 1 item.
    size_w = topic_pop**0.5 * rng.lognormal(0.0, 0.3, k)
    sizes = np.ones(k, dtype=np.int64)
    rest = cfg.n_items - k
    if rest:
        sizes += rng.multinomial(rest, size_w / size_w.sum())
    topic_of = np.repeat(np.arange(k), sizes)
    perm = rng.permutation(cfg.n_items)  # item number -> shuffled slot
    item_topic = np.empty(cfg.n_items, dtype=np.int64)
    item_topic[perm] = topic_of
    topic_items: list[list[int]] = []
    topic_cdf: list[list[float]] = []
    weights = np.zeros(cfg.n_items)
    start = 0
    for t in range(k):
        members = perm[start : start + sizes[t]]  # already in random order: that is the rank
        start += sizes[t]
        w = _zipf(len(members), cfg.zipf_a)
        w /= w.sum()
        weights[members] = topic_pop[t] * w
        topic_items.append(members.tolist())
        topic_cdf.append(list(accumulate(w.tolist())))
    appeal = rng.lognormal(-0.125, 0.5, cfg.n_items)  # mean 1
    topic_price = cfg.price_median * rng.lognormal(0.0, 0.8, k)
    price = np.round(topic_price[item_topic] * rng.lognormal(0.0, 0.4, cfg.n_items), 2)
    price = np.maximum(price, 0.5)
    width = len(str(cfg.n_items - 1))
    return _Shop(
        [f"i{j:0{width}d}" for j in range(cfg.n_items)],
        item_topic,
        topic_items,
        topic_cdf,
        list(accumulate(weights.tolist())),
        appeal.tolist(),
        price.tolist(),
    )


@dataclass
class _Shopper:
    uid: str
    arrival: int
    activity: float
    taste_cdf: list[float]
    taste: np.ndarray


def _build_shoppers(cfg: SimConfig, rng: np.random.Generator) -> list[_Shopper]:
    k = cfg.n_topics
    topic_pop = _zipf(k, cfg.topic_zipf_a)
    alpha = np.maximum(cfg.taste_concentration * topic_pop / topic_pop.sum(), 1e-3)
    tastes = rng.dirichlet(alpha, cfg.n_users)
    tastes = np.maximum(tastes, 1e-12)
    tastes /= tastes.sum(axis=1, keepdims=True)
    sigma = cfg.activity_sigma
    activity = rng.lognormal(-sigma * sigma / 2.0, sigma, cfg.n_users) if sigma > 0 else np.ones(cfg.n_users)
    span = cfg.end_ms - cfg.start_ms
    n_initial = int(round(cfg.initial_users * cfg.n_users))
    arrivals = np.full(cfg.n_users, cfg.start_ms, dtype=np.int64)
    late = cfg.n_users - n_initial
    if late:
        arrivals[n_initial:] = cfg.start_ms + np.sort(rng.integers(0, span, late))
    width = len(str(cfg.n_users - 1))
    # Ids in order of arrival, as a shop numbers its new accounts.
    return [
        _Shopper(
            f"u{u:0{width}d}", int(arrivals[u]), float(activity[u]), list(accumulate(tastes[u].tolist())), tastes[u]
        )
        for u in range(cfg.n_users)
    ]


# --------------------------------------------------------------------------- sessions


def _session_starts(cfg: SimConfig, sh: _Shopper, rate_per_ms: float, d: _Draws) -> list[int]:
    """Session start times of one shopper: Poisson, thinned by the daily cycle."""
    starts: list[int] = []
    t = sh.arrival
    if sh.arrival > cfg.start_ms:
        starts.append(sh.arrival)  # a new shopper's first visit is their arrival
    lam = rate_per_ms * sh.activity / (_DIURNAL_MEAN if cfg.diurnal else 1.0)
    if lam <= 0:
        return starts
    end = cfg.end_ms
    while True:
        t += int(-math.log(1.0 - d.u()) / lam) + 1
        if t >= end:
            return starts
        if not cfg.diurnal or d.u() < _diurnal(t):
            starts.append(t)


def _simulate_once(cfg: SimConfig, scale: float) -> list[Event]:
    rng = np.random.default_rng(cfg.seed)
    shop = _build_shop(cfg, rng)
    shoppers = _build_shoppers(cfg, rng)
    d = _Draws(np.random.default_rng([cfg.seed, 1]))

    # Session rate: aim at scale * cfg.events events over everybody's active time.
    per_session = cfg.session_mean * (1.0 + cfg.favorite_rate + cfg.cart_rate * (1.0 + cfg.buy_rate))
    want_sessions = scale * cfg.events / per_session
    late = sum(1 for s in shoppers if s.arrival > cfg.start_ms)
    exposure = sum(s.activity * (cfg.end_ms - s.arrival) for s in shoppers)
    rate = max(want_sessions - late, 0.05 * want_sessions) / exposure if exposure > 0 else 0.0

    events: list[tuple[int, int, Event]] = []  # (ts, order, event): order keeps per-user sequence
    order = 0
    session_no = 0
    for sh in shoppers:
        history: list[int] = []  # distinct items of earlier sessions, most recent last
        pending_carts: list[int] = []  # carted, not bought yet
        last_end = -1
        for start in _session_starts(cfg, sh, rate, d):
            t = max(start, last_end + int(d.lognormal(2.0, 1.0) * _HOUR_MS)) if last_end >= 0 else start
            session_no += 1
            sid = f"s{session_no}"
            out, t, new_items = _session(cfg, shop, sh, d, t, sid, history, pending_carts)
            for e in out:
                events.append((e.ts, order, e))
                order += 1
            last_end = t
            for i in new_items:
                if i in history:
                    history.remove(i)
                history.append(i)
            del history[:-50]
    events.sort(key=lambda x: (x[0], x[1]))
    return [e for _, _, e in events]


def _session(
    cfg: SimConfig, shop: _Shop, sh: _Shopper, d: _Draws, t: int, sid: str, history: list[int], pending_carts: list[int]
) -> tuple[list[Event], int, list[int]]:
    out: list[Event] = []
    uid = sh.uid
    topic = d.pick(sh.taste_cdf)
    steps = min(d.geometric(cfg.session_mean), 200)
    seen: list[int] = []  # distinct items viewed this session, in order
    intent: dict[int, bool] = {}  # item -> will the shopper cart it
    carted: list[int] = []
    fav: set[int] = set()
    max_taste = float(sh.taste.max())

    def emit(item: int, typ: str, ts: int, dwell: float | None = None) -> None:
        out.append(Event(uid, shop.item_ids[item], typ, ts, dwell, sid, shop.price[item]))

    for _ in range(steps):
        r = d.u()
        if seen and r < cfg.repeat_view:
            # Items the shopper is interested in are looked at again more often.
            w = list(accumulate(3.0 if intent[i] else 1.0 for i in seen))
            item = seen[d.pick(w)]
        elif history and r < cfg.repeat_view + cfg.revisit:
            # Back to something from an earlier visit, often a cart left behind.
            if pending_carts and d.u() < 0.5:
                item = pending_carts[int(d.u() * len(pending_carts))]
            else:
                item = history[-1 - int(d.u() * min(len(history), 20))]
        elif r < cfg.repeat_view + cfg.revisit + cfg.explore:
            item = d.pick(shop.global_cdf)
        else:
            if d.u() < cfg.topic_switch:
                topic = d.pick(sh.taste_cdf)
            item = shop.topic_items[topic][d.pick(shop.topic_cdf[topic])]
        if item not in intent:
            liking = float(sh.taste[shop.item_topic[item]]) / max_taste  # 1 for the favourite topic
            p = cfg.cart_rate * shop.appeal[item] * (0.4 + 0.9 * liking)
            if item in pending_carts:
                p = max(p, 0.5)
            intent[item] = d.u() < min(p, 0.95)
            seen.append(item)
        wants = intent[item]
        dwell = d.lognormal(cfg.dwell_median_s * (cfg.intent_dwell if wants else 1.0), cfg.dwell_sigma)
        dwell = round(min(max(dwell, 0.5), 1800.0, MAX_DWELL_S), 1)
        emit(item, "view", t, dwell)
        t_leave = t + int(dwell * 1000)
        if wants and item not in carted and d.u() < 0.65:
            carted.append(item)
            emit(item, "addtocart", max(t + 1, t_leave - int(d.u() * 2000)))
        if item not in fav and d.u() < cfg.favorite_rate:
            fav.add(item)
            emit(item, "favorite", max(t + 1, t_leave - int(d.u() * 3000)))
        t = max(t_leave, t + 2) + int(min(d.lognormal(cfg.gap_median_s, 0.8), 120.0) * 1000) + 1

    # Checkout: this session's carts, and now and then a cart left behind earlier.
    bought: list[int] = [i for i in carted if d.u() < cfg.buy_rate]
    for i in list(pending_carts):
        if i not in carted and i not in bought and d.u() < 0.08:
            bought.append(i)
    if bought:
        t += int(d.lognormal(40.0, 0.6) * 1000)
        for i in bought:
            emit(i, "transaction", t)
            t += 1 + int(d.u() * 3000)
    for i in bought:
        if i in pending_carts:
            pending_carts.remove(i)
    for i in carted:
        if i not in bought and i not in pending_carts:
            pending_carts.append(i)
    # Old carts are forgotten.
    while len(pending_carts) > 10 or (pending_carts and d.u() < 0.1):
        pending_carts.pop(0)
    return out, t, seen


# --------------------------------------------------------------------------- API


def simulate(cfg: SimConfig = SimConfig()) -> list[Event]:
    """Exactly ``cfg.events`` events, sorted by time; deterministic given the config.

    Each event carries a dwell (views), session id, price and a unique event id.
    """
    scale = 1.15
    for _ in range(30):
        evs = _simulate_once(cfg, scale)
        if len(evs) >= cfg.events:
            break
        scale *= 1.3 * cfg.events / max(len(evs), 1)
    else:  # pragma: no cover - only with absurd configs (e.g. session rate zero)
        raise ConfigError(f"simulator: could not produce {cfg.events} events with this config")
    evs = evs[: cfg.events]
    return [replace(e, event_id=f"sim{cfg.seed}-{k}") for k, e in enumerate(evs)]


def write(path: str | os.PathLike[str], cfg: SimConfig = SimConfig()) -> int:
    """Simulate and write in the canonical format (CSV, or JSON lines for .jsonl; .gz ok)."""
    from recsys.data.datasets import write_canonical

    return write_canonical(simulate(cfg), path)


def describe(events: Sequence[Event]) -> dict[str, Any]:
    """Realism figures: type shares, events per user/item, sessions, dwell, funnel, time span."""
    n = len(events)
    if not n:
        return {"events": 0}
    types = Counter(e.type for e in events)
    per_user = np.array(sorted(Counter(e.user for e in events).values()))
    per_item = np.array(sorted(Counter(e.item for e in events).values()))
    per_session = np.array(list(Counter(e.session for e in events if e.session).values()) or [0])
    views = [e.dwell for e in events if e.type == "view" and e.dwell is not None]
    carted = {(e.user, e.item) for e in events if e.type == "addtocart"}
    viewed = {(e.user, e.item) for e in events if e.type == "view"}
    bought = {(e.user, e.item) for e in events if e.type == "transaction"}
    top1 = max(1, len(per_item) // 100)
    return {
        "events": n,
        "users": len(per_user),
        "items": len(per_item),
        "sessions": int(len(per_session)),
        "types": {t: round(types[t] / n, 4) for t in sorted(types, key=lambda t: -types[t])},
        "events_per_user": {
            "mean": round(float(per_user.mean()), 2),
            "median": float(np.median(per_user)),
            "p90": float(np.percentile(per_user, 90)),
            "max": int(per_user.max()),
        },
        "events_per_session": {"mean": round(float(per_session.mean()), 2), "median": float(np.median(per_session))},
        "top1pct_items_share": round(float(per_item[-top1:].sum() / n), 4),
        "view_to_cart": round(len(carted & viewed) / max(len(viewed), 1), 4),
        "cart_to_buy": round(len(bought & carted) / max(len(carted), 1), 4),
        "dwell_median_s": round(float(np.median(views)), 1) if views else None,
        "days": round((events[-1].ts - events[0].ts) / _DAY_MS, 2),
    }


# --------------------------------------------------------------------------- CLI


def parse_start(s: str) -> int:
    """A start time given as ms since the epoch or an ISO date (UTC unless it says otherwise)."""
    try:
        return int(s)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not ms since the epoch or an ISO date: {s!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def add_sim_args(p: Any) -> None:
    """The simulation's sizes, span, seed and start as options (this module's `main` and
    `recsys replay --simulate N`)."""
    p.add_argument("--users", type=int, default=SimConfig.n_users, help=f"shoppers (default {SimConfig.n_users})")
    p.add_argument("--items", type=int, default=SimConfig.n_items, help=f"catalogue size (default {SimConfig.n_items})")
    p.add_argument(
        "--topics", type=int, default=SimConfig.n_topics, help=f"latent topics (default {SimConfig.n_topics})"
    )
    p.add_argument("--days", type=float, default=SimConfig.days, help=f"time span (default {SimConfig.days:g})")
    p.add_argument("--seed", type=int, default=SimConfig.seed)
    p.add_argument(
        "--start",
        type=parse_start,
        default=DEFAULT_START_MS,
        metavar="MS|ISO",
        help="first arrival time (default 2026-06-01T00:00Z)",
    )


def config_from_args(args: Any, events: int) -> SimConfig:
    """The SimConfig of options added by `add_sim_args`, for `events` events."""
    return SimConfig(
        n_users=args.users,
        n_items=args.items,
        n_topics=args.topics,
        events=events,
        days=args.days,
        seed=args.seed,
        start_ms=args.start,
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m recsys.data.simulator", description="Write a simulated clickstream in the canonical format."
    )
    ap.add_argument("out", help="output file: .csv, .jsonl (add .gz to compress)")
    ap.add_argument("--events", type=int, default=SimConfig.events, help=f"events (default {SimConfig.events})")
    add_sim_args(ap)
    ap.add_argument("--describe", action="store_true", help="print realism figures as JSON on stdout")
    args = ap.parse_args(argv)
    try:
        cfg = config_from_args(args, args.events)
        events = simulate(cfg)
        from recsys.data.datasets import write_canonical

        n = write_canonical(events, args.out)
    except RecsysError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} events to {args.out}", file=sys.stderr)
    if args.describe:
        import json

        print(json.dumps(describe(events), indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
