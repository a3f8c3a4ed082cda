"""Smaller session-kNN sources for the ranker (`sources.k` neighbours that vote, `sources.sample`
candidate sessions; V-SKNN and STAN): the ranker's validation HR@10 / MRR@10 at each setting
against today's, on the same validation events.

Split as bench/tune_category.py splits (the last 20% of the events are the test window, not
read). Each setting's training examples and validation candidates are a real collection
(`bench.tune_category.collect`, cached under --cache), with the baselines' validation-tuned
sources as today's ranker reads them; a setting here overrides those too (REES46's tuned
V-SKNN / STAN `k` is 200: the setting would not reach them otherwise). Each setting is fit once
per LightGBM seed and scored as method `ranker` scores, each event's hit and reciprocal rank
averaged over the seeds (`bench.tune_candidates.seed_figures`), with the paired standard error
of the difference to today's. Every collection must hold the base's validation events.

    python -m bench.tune_sources --datasets yoochoose,taobao,rees46 --settings "k=50;sample=250;k=50,sample=250" --seeds 0,1,2,3 --output /tmp/tune-sources.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.tune_candidates import seed_figures
from bench.tune_category import collect, ranks
from recsys.candidates.ranker import RankerConfig


def parse(settings: str) -> list[dict[str, Any]]:
    """A JSON list of dicts, or "k=50;sample=250;k=50,sample=250" (`;` between settings)."""
    if settings.lstrip().startswith("["):
        return list(json.loads(settings))
    return [
        {k.strip(): json.loads(v) for k, _, v in (kv.partition("=") for kv in s.split(","))}
        for s in settings.split(";")
        if s.strip()
    ]


def label(setting: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in setting.items()) or "base"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="yoochoose,taobao,rees46")
    ap.add_argument("--settings", default="k=50;sample=250;k=50,sample=250", help="each against base ({})")
    ap.add_argument("--seeds", default="0,1,2,3", help="LightGBM seeds: each setting fit with each, hits averaged")
    ap.add_argument("--cache", default="/tmp/streamrec-tune-sources")
    ap.add_argument("--output", default="/tmp/tune-sources.json")
    args = ap.parse_args()
    out: dict[str, Any] = json.loads(Path(args.output).read_text()) if Path(args.output).exists() else {}
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = [{}, *(s for s in parse(args.settings) if s)]
    for name in args.datasets.split(","):
        res: dict[str, Any] = {}
        base_val: Any = None
        base: list[np.ndarray] | None = None
        print(f"{name}: setting, HR@10, MRR@10, difference to base ± paired SE, events (seeds {args.seeds})")
        for setting in settings:
            tag = label(setting).replace(",", "-").replace("=", "")
            t = time.time()
            train_ex, val_ex = collect(name, Path(args.cache), setting, tag, over_tuned=True)
            took = time.time() - t
            if base_val is None:
                base_val = val_ex
            elif len(val_ex.y) != len(base_val.y) or val_ex.meta != base_val.meta or val_ex.events != base_val.events:
                raise SystemExit(f"{name} {label(setting)}: the validation events differ from the base's")
            t = time.time()
            runs = [ranks(RankerConfig(seed=sd), train_ex, val_ex) for sd in seeds]
            f = seed_figures(runs, base)
            f |= {
                "events": len(val_ex.y),
                "coverage": float(np.mean([y.any() for y in val_ex.y])),
                "rows_per_list": float(np.mean([len(y) for y in val_ex.y])),
                "training_groups": len(train_ex.y),
                "collect_or_load_s": took,
                "fit_s": time.time() - t,
            }
            base = base or runs
            res[label(setting)] = f
            diff = (
                f"  {f['HR@10_diff']:+.4f} ±{f['HR@10_diff_se']:.4f}  {f['MRR@10_diff']:+.4f} ±{f['MRR@10_diff_se']:.4f}"
                if "HR@10_diff" in f
                else ""
            )
            print(
                f"  {label(setting):18} {f['HR@10']:.4f}  {f['MRR@10']:.4f}{diff}  {f['events']} events"
                f" (target among {f['rows_per_list']:.1f} candidates {f['coverage']:.3f})",
                flush=True,
            )
        out[f"{name}/seeds {args.seeds}"] = res
        Path(args.output).write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
