"""`recsys report`: an evaluation or benchmark JSON as one self-contained HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from recsys.errors import ExitCode
from streaming.cli import options


def add_parser(sub: Any) -> None:
    p = options.command(
        sub,
        "report",
        help="turn an evaluation or benchmark JSON into a self-contained HTML page",
        description="Render INPUT.json (recsys evaluate --output, a bench/ result, "
        "{name: number}, ...) as one HTML file with inline SVG charts.",
    )
    p.add_argument("input", metavar="INPUT.json")
    p.add_argument("-o", "--output", metavar="OUT.html", help="default: INPUT with .html")
    p.add_argument("--title", help="page title (default: from the input)")
    options.add_common(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from recsys.evaluation.report import build_report

    options.load(args)  # an invalid configuration is reported like everywhere else
    out = build_report(args.input, args.output or str(Path(args.input).with_suffix(".html")), args.title)
    print(out)
    return ExitCode.OK
