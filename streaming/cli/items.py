"""`recsys items load|set|delete|show`: the item catalogue (streaming/jobs/items.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from recsys.errors import ExitCode
from streaming.cli import options


def add_parser(sub: Any) -> None:
    p = options.command(
        sub,
        "items",
        help="the item catalogue: load it from a file, hide or show an item, delete one",
        description="Item records (docs/formats.md) on the items topic (stream.items_topic, created if "
        "missing). Workers never show an item that is hidden, unavailable or deleted, and filter requests "
        "by its categories, brand and price. Actions: load FILE|NAME (JSON lines of item records, a REES46 "
        "or Taobao CSV, plain or gzip, or a shared dataset name); set ITEM (change the flags given, keep the "
        "rest); delete ITEM (a tombstone: never shown again); show ITEM (its current record on the topic).",
    )
    p.add_argument("action", choices=("load", "set", "delete", "show"))
    p.add_argument("target", metavar="FILE|NAME|ITEM", help="what to load (load), or the item id")
    p.add_argument("--format", default="auto", choices=("auto", "jsonl", "rees46", "taobao"), help="load: file format")
    p.add_argument("--limit", type=int, default=None, help="load: only the first N items")
    g = p.add_argument_group("set: the fields to change (the others stay as they are)")
    vis = g.add_mutually_exclusive_group()
    vis.add_argument("--hidden", dest="hidden", action="store_true", default=None, help="never recommend it")
    vis.add_argument("--visible", dest="hidden", action="store_false", help="recommend it again (not hidden)")
    av = g.add_mutually_exclusive_group()
    av.add_argument("--available", dest="available", action="store_true", default=None, help="in stock")
    av.add_argument("--unavailable", dest="available", action="store_false", help="out of stock: not recommended")
    g.add_argument("--category", action="append", default=None, help="its categories (repeat; replaces them)")
    g.add_argument("--brand", default=None)
    g.add_argument("--price", type=float, default=None)
    options.add_common(p)
    p.set_defaults(func=cmd_items)


def cmd_items(args: argparse.Namespace) -> int:
    action: Any = {"load": cmd_load, "set": cmd_set, "delete": cmd_delete, "show": cmd_show}[args.action]
    return int(action(args))


def _topic(args: argparse.Namespace) -> tuple[str, str]:
    from streaming.topics import ensure, topics

    s = options.kafka_config(args).stream
    try:
        ensure(s.bootstrap, [topics(s).items])
    except ValueError as e:  # it exists with another partition count: any count serves the catalogue
        if "exists with" not in str(e):
            raise
    return s.bootstrap, s.items_topic


def cmd_load(args: argparse.Namespace) -> int:
    from recsys.data.datasets import DATASETS, dataset_path
    from streaming.jobs.items import load

    bootstrap, topic = _topic(args)
    path = dataset_path(args.target) if args.target in DATASETS else Path(args.target)
    stats = load(bootstrap, topic, path, args.format, args.limit)
    print(f"{topic}: {stats.summary()}")
    return ExitCode.OK


def cmd_set(args: argparse.Namespace) -> int:
    from streaming.jobs.items import set_item

    bootstrap, topic = _topic(args)
    item = set_item(
        bootstrap,
        topic,
        args.target,
        hidden=args.hidden,
        available=args.available,
        categories=tuple(args.category) if args.category is not None else None,
        brand=args.brand,
        price=args.price,
    )
    print(json.dumps(item.to_json(), ensure_ascii=False))
    return ExitCode.OK


def cmd_delete(args: argparse.Namespace) -> int:
    from streaming.jobs.items import produce_one

    bootstrap, topic = _topic(args)
    produce_one(bootstrap, topic, args.target.encode(), None)
    print(f"{topic}: deleted {args.target!r}")
    return ExitCode.OK


def cmd_show(args: argparse.Namespace) -> int:
    from streaming.jobs.items import current

    bootstrap, topic = _topic(args)
    found, item = current(bootstrap, topic, args.target)
    if item is None:
        print(f"{topic}: {args.target!r} {'is deleted' if found else 'has no record'}")
        return ExitCode.OK if found else ExitCode.USAGE
    print(json.dumps(item.to_json(), ensure_ascii=False))
    return ExitCode.OK
