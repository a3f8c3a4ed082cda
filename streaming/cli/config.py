"""`recsys config`: the effective configuration, and where each value came from."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from recsys.errors import ExitCode
from streaming.cli import options


def add_parser(sub: Any) -> None:
    p = options.command(
        sub,
        "config",
        help="print the effective configuration (defaults < file < env < --set)",
        description="Print the effective configuration as TOML (readable back with --config), "
        "noting where each non-default value came from. Invalid values: exit 2 "
        "with a message naming the setting.",
    )
    p.add_argument("--json", action="store_true", help="JSON with the values and their sources instead")
    options.add_input_args(p)  # `recsys config --columns ... > shop.toml` saves a mapping
    options.add_common(p, config_aliases=("--file",))
    p.set_defaults(func=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    cfg = options.load(args)
    if args.json:
        print(json.dumps({"config": cfg.as_dict(), "sources": dict(cfg.origins)}, indent=2))
    else:
        sys.stdout.write(cfg.to_toml())
    return ExitCode.OK
