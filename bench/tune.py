"""Search the defaults on a validation window with optuna (never the test window).

For each dataset: the last `--test-fraction` of events is the test window and is never read
here; the rest is split again by time into train / validation. Each trial trains on train
and replays validation with the streaming evaluation (recsys.evaluation.streaming, method `system`:
live fold-in + blend + re-visit term, exactly as the workers score). Objective: the mean over
datasets of (HR@10 / HR@10 of the current defaults + MRR@10 / MRR@10 of the defaults) / 2, so
neither dataset dominates by scale. Trial 0 is the current defaults. The pick is the best trial
that regresses neither dataset on either metric (a mean of ratios can trade one for the other).

Searched: confidence weights of favorite / addtocart / transaction (view = click = 0.25 is the
unit; alpha scales it), alpha, recency half-life (off or 0.25..30 days), ALS factors and
regularisation, blend weight w and item-norm power p, re-visit weight β. Dwell is not searched:
none of the shared datasets has dwell times (the dwell settings stay as documented).

Then BPR (implicit's) is compared on the same validation replays with the best confidence and
scoring settings, as the seed notebook compared the two.

    python -m bench.tune --trials 20 [--datasets taobao,yoochoose] [--output out/tune.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from recsys.confidence import ConfidenceConfig
from recsys.config import Config
from recsys.data.datasets import load_dataset, time_split
from recsys.evaluation.streaming import StreamEvalConfig, stream_evaluate
from recsys.model.threads import pin_blas_threads
from recsys.model.train import BPR, TrainConfig
from recsys.serving.scoring import ScoringConfig

DEFAULTS = Config()  # the project's current defaults: trial 0
EVAL = StreamEvalConfig(methods=("system",), chunk_max=1024)


def configs(params: dict) -> tuple[ConfidenceConfig, TrainConfig, ScoringConfig]:
    w = dict(DEFAULTS.confidence.weights)
    for t in ("favorite", "addtocart", "transaction"):
        if t in params:
            w[t] = params[t]
    hl = params.get("half_life_days")
    ccfg = replace(
        DEFAULTS.confidence,
        weights=w,
        alpha=params.get("alpha", DEFAULTS.confidence.alpha),
        half_life_days=None if not params.get("decay", hl is not None) else hl,
    )
    tcfg = replace(
        DEFAULTS.train,
        factors=params.get("factors", DEFAULTS.train.factors),
        regularization=params.get("regularization", DEFAULTS.train.regularization),
    )
    scfg = replace(
        DEFAULTS.scoring,
        user_weight=params.get("user_weight", DEFAULTS.scoring.user_weight),
        item_norm_power=params.get("item_norm_power", DEFAULTS.scoring.item_norm_power),
        repeat_weight=params.get("repeat_weight", DEFAULTS.scoring.repeat_weight),
    )
    return ccfg, tcfg, scfg


def current_params() -> dict:
    c, t, s = DEFAULTS.confidence, DEFAULTS.train, DEFAULTS.scoring
    return {
        "favorite": c.weights["favorite"],
        "addtocart": c.weights["addtocart"],
        "transaction": c.weights["transaction"],
        "alpha": c.alpha,
        "decay": c.half_life_days is not None,
        **({"half_life_days": c.half_life_days} if c.half_life_days is not None else {}),
        "factors": t.factors,
        "regularization": t.regularization,
        "user_weight": s.user_weight,
        "item_norm_power": s.item_norm_power,
        "repeat_weight": s.repeat_weight,
    }


def main() -> None:
    try:
        import optuna
    except ImportError:
        raise SystemExit("bench.tune needs optuna: pip install 'streamrec[tools]'") from None

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--datasets", default="taobao,yoochoose")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--valid-fraction", type=float, default=0.2, help="of the non-test events")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default="out/tune.json")
    args = ap.parse_args()
    pin_blas_threads()
    t_start = time.time()
    data = {}
    for name in args.datasets.split(","):
        development, _test = time_split(load_dataset(name), test_fraction=args.test_fraction)
        data[name] = time_split(development, test_fraction=args.valid_fraction)
        print(f"{name}: train {len(data[name][0])} events, validation {len(data[name][1])}", flush=True)

    def run(ccfg, tcfg, scfg) -> dict:
        out = {}
        for name, (tr, va) in data.items():
            rep = stream_evaluate(tr, va, ccfg=ccfg, scfg=scfg, tcfg=tcfg, ecfg=EVAL)
            out[name] = rep["methods"]["system"]["all"]
        return out

    base = run(*configs(current_params()))
    print("current defaults:", json.dumps(base), flush=True)

    def score(res: dict) -> float:
        return sum(
            (res[d]["HR@10"] / max(base[d]["HR@10"], 1e-9) + res[d]["MRR@10"] / max(base[d]["MRR@10"], 1e-9)) / 2
            for d in res
        ) / len(res)

    rows = []

    def objective(trial: optuna.Trial) -> float:
        p = {
            "favorite": trial.suggest_float("favorite", 0.0, 3.0),
            "addtocart": trial.suggest_float("addtocart", 0.0, 3.0),
            "transaction": trial.suggest_float("transaction", 0.0, 3.0),
            "alpha": trial.suggest_float("alpha", 1.0, 200.0, log=True),
            "decay": trial.suggest_categorical("decay", [False, True]),
            "factors": trial.suggest_categorical("factors", [32, 64, 128]),
            "regularization": trial.suggest_float("regularization", 1e-3, 100.0, log=True),
            "user_weight": trial.suggest_float("user_weight", 0.0, 1.0),
            "item_norm_power": trial.suggest_float("item_norm_power", 0.0, 1.0),
            "repeat_weight": trial.suggest_float("repeat_weight", 0.01, 300.0, log=True),
        }
        if p["decay"]:
            p["half_life_days"] = trial.suggest_float("half_life_days", 0.25, 30.0, log=True)
        res = run(*configs(p))
        val = score(res)
        for d, m in res.items():
            trial.set_user_attr(d, m)
        rows.append({"trial": trial.number, "params": p, "objective": val, **res})
        print(
            f"trial {trial.number}: {val:.4f} "
            + " ".join(f"{d}:HR={m['HR@10']:.4f},MRR={m['MRR@10']:.4f}" for d, m in res.items())
            + f" {p}",
            flush=True,
        )
        return val

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed))
    study.enqueue_trial(current_params())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=args.trials)
    # The pick: the best objective among trials that regress neither dataset on HR@10 or MRR@10
    # (the mean of ratios alone can trade one dataset for the other); the study's best if none.
    ok = [
        r for r in rows if all(r[d]["HR@10"] >= base[d]["HR@10"] and r[d]["MRR@10"] >= base[d]["MRR@10"] for d in data)
    ]
    pick = max(ok, key=lambda r: r["objective"]) if ok else max(rows, key=lambda r: r["objective"])
    best = dict(pick["params"])
    ccfg, tcfg, scfg = configs(best)
    print(
        f"picked trial {pick['trial']}: {pick['objective']:.4f} {best} (study best: trial "
        f"{study.best_trial.number}, {study.best_value:.4f})",
        flush=True,
    )

    # ALS vs BPR on the same validation replays, best confidence + scoring settings.
    compare = {"als": {d: pick[d] for d in data}}
    for lr in (0.01, 0.05):
        bcfg = replace(BPR, factors=tcfg.factors, learning_rate=lr)
        res = run(ccfg, bcfg, scfg)
        compare[f"bpr(lr={lr})"] = res
        print(
            f"BPR lr={lr}: " + " ".join(f"{d}:HR={m['HR@10']:.4f},MRR={m['MRR@10']:.4f}" for d, m in res.items()),
            flush=True,
        )
    report = {
        "base": base,
        "best_params": best,
        "picked_trial": pick["trial"],
        "best_value": pick["objective"],
        "trials": rows,
        "best": {
            "confidence": {**asdict(ccfg), "weights": dict(ccfg.weights)},
            "train": asdict(tcfg),
            "scoring": asdict(scfg),
        },
        "als_vs_bpr": compare,
        "seconds": round(time.time() - t_start, 1),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.output} in {report['seconds']}s", flush=True)


if __name__ == "__main__":
    main()
