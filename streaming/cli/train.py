"""`recsys train`: train a model on an events file and publish it to the model store."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from recsys.errors import ExitCode
from streaming.cli import options


def add_parser(sub: Any) -> None:
    p = options.command(
        sub,
        "train",
        help="train a model on an events file and publish it to the model store",
        description="Train ALS (or BPR) on an events file or a shared dataset and publish it "
        "to the model store, with XᵀX for the workers' new-item fold-in.",
    )
    options.add_data_args(p)
    options.add_model_args(p)
    options.add_common(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from recsys.confidence import build_profiles
    from recsys.data.datasets import load
    from recsys.model.item_foldin import user_gram
    from recsys.model.store import ModelStore
    from recsys.model.train import train
    from recsys.progress import say

    cfg = options.load(args)
    events, path = load(args.data, args.format, **options.load_options(args, cfg))
    ccfg, tcfg = cfg.confidence, options.train_config(cfg, args)
    profiles = build_profiles(events, ccfg)
    say(f"training {tcfg.kind.upper()}: {len(profiles)} users, {tcfg.factors} factors, {tcfg.iterations} iterations")
    model, x, _ = train(
        profiles,
        ccfg,
        tcfg,
        progress=sys.stderr.isatty(),
        metadata={"data_source": str(path.resolve()), "n_events": len(events)},
    )
    # XᵀX of the training users goes with it: workers fold new items in against it
    where = ModelStore(cfg.stream.model_dir).save(model, publish=True, user_gram=user_gram(x))
    say(
        f"model {model.version}: {model.n_items} items x {model.factors} factors "
        f"in {model.metadata['train_seconds']}s -> {where}"
    )
    print(model.version)
    return ExitCode.OK
