"""Small builders shared by the tests (real data access lives in conftest.require_dataset)."""

from __future__ import annotations

import numpy as np

from recsys.confidence import ConfidenceConfig, build_profiles
from recsys.events import Event
from recsys.model.factors import Model

T0 = 1_700_000_000_000  # a fixed, valid event time (2023-11-14)


def ev(user: str, item: str, type_: str = "view", ts: int = T0, **kw) -> Event:
    return Event(user, item, type_, ts, **kw)


def random_model(
    n_items: int = 300, factors: int = 16, seed: int = 0, version: str = "v-test", regularization: float = 0.1
) -> Model:
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n_items, factors)).astype(np.float32)
    pop = rng.integers(0, 100, n_items).astype(np.float32)
    return Model.from_factors(version, [f"i{k}" for k in range(n_items)], y, regularization, popularity=pop)


def clustered_events(n_users: int = 120, n_items: int = 60, clusters: int = 3, per_user: int = 12, seed: int = 1):
    """Users who each browse one cluster of items: a structure ALS must recover."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n_users):
        c = u % clusters
        items = [k for k in range(n_items) if k % clusters == c]
        for j in range(per_user):
            out.append(ev(f"u{u}", f"i{int(rng.choice(items))}", "view", T0 + (u * per_user + j) * 1000))
    return out


def profiles_of(events, cfg: ConfidenceConfig = ConfidenceConfig()):
    return build_profiles(events, cfg)


def train_into(store, seed: int = 1, version: str | None = None, publish: bool = True):
    """A small ALS model on clustered events, saved to `store` (published unless told not to)."""
    from recsys.model.train import TrainConfig, train

    cfg = ConfidenceConfig()
    profiles = build_profiles(clustered_events(seed=seed), cfg)
    model, _, _ = train(profiles, cfg, TrainConfig(factors=8, iterations=8, random_state=seed), version=version)
    store.save(model, publish=publish)
    return model


def ranker_slice(train_events, test_events):
    """Test events on which a worker's ranked lists can equal stream-eval's, and the ones to compare.

    A worker publishes a user's list when their event arrives; stream-eval computes the list of
    that user's next event from the state just before it. The ranker's features read stream-wide
    state (co-visitation, session neighbours, item counters, popularity), so the two lists are
    the same when no other event comes between the two events of the user: the slice is users
    whose test events do not overlap in time (each a block), minus events on the item already on
    screen (stream-eval skips those and counts them a chunk late). Returns (slice, compared):
    `compared` leaves out each user's first test event (its list was published during the
    training events, before the others')."""
    last = {e.user: e.item for e in train_events}
    by_user: dict[str, list] = {}
    for e in test_events:
        if last.get(e.user) != e.item:
            by_user.setdefault(e.user, []).append(e)
            last[e.user] = e.item
    chosen, end = [], -1
    for evs in sorted(by_user.values(), key=lambda v: (v[0].ts, v[-1].ts)):
        if evs[0].ts > end and len(evs) > 1:
            chosen.append(evs)
            end = evs[-1].ts
    test_slice = sorted((e for evs in chosen for e in evs), key=lambda e: e.ts)
    compared = [e for evs in chosen for e in evs[1:]]
    return test_slice, compared
