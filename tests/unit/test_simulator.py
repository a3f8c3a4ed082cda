"""The clickstream simulator: deterministic, valid, realistic funnel/timing, learnable structure."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from itertools import pairwise
from statistics import median

import pytest

from recsys.data.datasets import load_events, time_split
from recsys.data.simulator import DEFAULT_START_MS, SimConfig, describe, main, simulate, write
from recsys.errors import ConfigError
from recsys.evaluation.offline import evaluate
from recsys.events import parse_event
from recsys.model.train import TrainConfig

SMALL = SimConfig(n_users=300, n_items=800, n_topics=10, events=6000, seed=3)


@pytest.fixture(scope="module")
def default_events():
    return simulate(SimConfig(events=30_000))


def test_deterministic_given_seed():
    a, b = simulate(SMALL), simulate(SMALL)
    assert a == b
    c = simulate(SimConfig(**{**SMALL.__dict__, "seed": 4}))
    assert c != a and len(c) == len(a)


def test_exact_count_sorted_and_valid(default_events):
    evs = default_events
    assert len(evs) == 30_000
    assert all(evs[k].ts <= evs[k + 1].ts for k in range(len(evs) - 1))
    now = int(time.time() * 1000)
    assert evs[0].ts >= DEFAULT_START_MS and evs[-1].ts < now
    for e in evs:
        assert parse_event(e.to_dict()) == e  # every event survives the stream's validator
    assert len({e.event_id for e in evs}) == len(evs)  # unique ids
    sessions = defaultdict(set)
    for e in evs:
        sessions[e.session].add(e.user)
    assert all(len(u) == 1 for u in sessions.values())  # a session belongs to one shopper


def test_small_configs_still_give_exact_counts():
    for cfg in (
        SimConfig(n_users=1, n_items=5, n_topics=1, events=50),
        SimConfig(n_users=3, n_items=30, n_topics=3, events=1000, days=1.0),
    ):
        evs = simulate(cfg)
        assert len(evs) == cfg.events
        assert all(parse_event(e.to_dict()) == e for e in evs)


def test_funnel_proportions_plausible(default_events):
    evs = default_events
    shares = Counter(e.type for e in evs)
    n = len(evs)
    assert 0.80 <= shares["view"] / n <= 0.96  # most events are views
    assert 0.015 <= shares["addtocart"] / n <= 0.10
    assert 0.005 <= shares["transaction"] / n < shares["addtocart"] / n
    assert shares["favorite"] / n < 0.05
    # purchases come from carts: nearly every bought (user, item) was carted before
    carted = {(e.user, e.item) for e in evs if e.type == "addtocart"}
    bought = [(e.user, e.item) for e in evs if e.type == "transaction"]
    assert sum(b in carted for b in bought) / len(bought) > 0.9
    # repeat views of the same item happen, but are not the norm
    views = Counter((e.user, e.item) for e in evs if e.type == "view")
    repeated = sum(1 for c in views.values() if c > 1) / len(views)
    assert 0.03 < repeated < 0.5
    # longer dwell on items that end up carted
    dwell_carted = [e.dwell for e in evs if e.type == "view" and (e.user, e.item) in carted]
    dwell_other = [e.dwell for e in evs if e.type == "view" and (e.user, e.item) not in carted]
    assert median(dwell_carted) > 1.5 * median(dwell_other)
    assert 5 <= median(dwell_other) <= 30


def test_timing_users_and_popularity(default_events):
    evs = default_events
    by_user = defaultdict(list)
    for e in evs:
        by_user[e.user].append(e)
    within, between = [], []
    for user_evs in by_user.values():
        for a, b in pairwise(user_evs):
            (within if a.session == b.session else between).append((b.ts - a.ts) / 1000)
    assert 3 <= median(within) <= 60  # seconds to a minute inside a session
    assert median(between) > 3600  # hours or more between sessions
    # new shoppers keep arriving: many users' first event is well after the start
    span = evs[-1].ts - evs[0].ts
    firsts = [u[0].ts for u in by_user.values()]
    assert sum(t > evs[0].ts + span / 2 for t in firsts) / len(firsts) > 0.15
    # heavy-tailed activity and popularity
    d = describe(evs)
    assert d["events_per_user"]["p90"] > 2 * d["events_per_user"]["median"]
    assert 0.1 < d["top1pct_items_share"] < 0.6
    assert d["events"] == len(evs) and d["users"] == len(by_user)


def test_als_learns_the_structure(default_events):
    """The latent tastes are real: ALS (blend) clearly beats popularity on a time split."""
    train, test = time_split(default_events, test_fraction=0.2)
    report = evaluate(train, test, kinds={"als": TrainConfig(factors=16, iterations=10)})
    m = report["methods"]
    assert report["cases"] > 200
    assert m["als:blend"]["MAP@10"] > 1.5 * m["popularity"]["MAP@10"]
    assert m["als:blend"]["HR@10"] > m["popularity"]["HR@10"]


def test_config_validation():
    with pytest.raises(ConfigError, match="events"):
        SimConfig(events=0)
    with pytest.raises(ConfigError, match="n_topics"):
        SimConfig(n_items=5, n_topics=10)
    with pytest.raises(ConfigError, match="cart_rate"):
        SimConfig(cart_rate=1.5)


@pytest.mark.parametrize("name", ["sim.csv.gz", "sim.jsonl"])
def test_write_round_trips(tmp_path, name):
    path = tmp_path / name
    assert write(path, SMALL) == SMALL.events
    assert load_events(path) == simulate(SMALL)


def test_cli_writes_file(tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert (
        main(
            [
                str(out),
                "--events",
                "500",
                "--users",
                "50",
                "--items",
                "100",
                "--topics",
                "5",
                "--seed",
                "7",
                "--describe",
            ]
        )
        == 0
    )
    assert len(load_events(out)) == 500
    assert '"types"' in capsys.readouterr().out
