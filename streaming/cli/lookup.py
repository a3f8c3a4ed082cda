"""`recsys recommend`, `recsys similar`: ask the serving model, from the command line."""

from __future__ import annotations

import argparse
import json
from typing import Any

from recsys.config import Config
from recsys.errors import ExitCode, RecsysError
from recsys.progress import say
from recsys.serving.recommender import Recommender
from streaming.cli import options


def add_parser(sub: Any) -> None:
    r = options.command(sub, "recommend", help="recommend for a user, optionally looking at an item")
    r.add_argument("--user", required=True)
    r.add_argument("--item", help="the query item the user is looking at")
    options.add_data_args(r, required=False)
    options.add_scoring_args(r)
    r.add_argument("--version", help="model version (default: the serving one)")
    options.add_common(r)
    r.set_defaults(func=cmd_recommend)

    s = options.command(sub, "similar", help="items similar to an item")
    s.add_argument("--item", required=True)
    options.add_scoring_args(s)
    s.add_argument("--version", help="model version (default: the serving one)")
    options.add_common(s)
    s.set_defaults(func=cmd_similar)


def recommender(cfg: Config, version: str | None) -> Recommender:
    from recsys.model.store import ModelStore

    model = ModelStore(cfg.stream.model_dir).load(version)
    return Recommender(model, cfg.confidence, cfg.scoring)


def cmd_recommend(args: argparse.Namespace) -> int:
    from recsys.confidence import UserProfile
    from recsys.data.datasets import load

    cfg = options.load(args)
    rec = recommender(cfg, args.version)
    profile = UserProfile()
    source = args.data or rec.model.metadata.get("data_source")
    if source:
        events, _ = load(source, args.format, **options.load_options(args, cfg))
        for e in events:
            if e.user == args.user:
                profile.apply(e, rec.ccfg)
    if args.item and args.item not in rec.model.item_index:
        say(f"item {args.item!r} is not in model {rec.version}: scoring without it")
    if not profile.items:
        say(f"user {args.user!r} has no history in {source}: using the query item or popularity")
    out = rec.recommend([profile], [args.item])[0]
    print(
        json.dumps(
            {
                "user": args.user,
                "query": args.item,
                "model_version": out.model_version,
                "source": out.source,
                "items": out.items,
                "scores": [round(s, 5) for s in out.scores],
            }
        )
    )
    return ExitCode.OK


def cmd_similar(args: argparse.Namespace) -> int:
    cfg = options.load(args)
    rec = recommender(cfg, args.version)
    out = rec.scorer.similar(args.item, cfg.scoring.n)
    if out is None:
        raise RecsysError(f"item {args.item!r} is not in model {rec.version} ({rec.model.n_items} items)")
    print(
        json.dumps(
            {
                "item": args.item,
                "model_version": out.model_version,
                "items": out.items,
                "scores": [round(s, 5) for s in out.scores],
            }
        )
    )
    return ExitCode.OK
