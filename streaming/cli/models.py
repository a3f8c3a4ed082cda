"""`recsys models`: list versions, show one, roll back, pin; optionally tell the workers.

With stream.model_transport kafka, `--announce` also puts the version on the artifacts topic if
it is not there any more, and moves the topic's pointer (current or pinned) before announcing,
so workers on other hosts fetch it. Run there without a local store (no version in model_dir),
rollback, pin and unpin work on the topic's versions and pointers alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from recsys.errors import ConfigError, ExitCode, RecsysError
from recsys.model.store import check_version
from streaming.cli import options


def add_parser(sub: Any) -> None:
    m = options.command(sub, "models", help="list model versions, show the serving one, roll back, pin")
    m.add_argument("action", nargs="?", default="list", choices=("list", "show", "rollback", "pin", "unpin"))
    m.add_argument("version", nargs="?")
    m.add_argument(
        "--announce",
        action="store_true",
        help="with rollback/pin/unpin: also tell the running workers (model-updates topic)",
    )
    options.add_common(m)
    m.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from recsys.model.store import ModelStore

    cfg = options.load(args)
    store = ModelStore(cfg.stream.model_dir)
    if args.announce and args.action not in ("rollback", "pin", "unpin"):
        raise ConfigError("--announce goes with rollback, pin or unpin")
    if args.action == "pin" and not args.version:
        raise ConfigError("pin needs a version: recsys models pin VERSION")
    if args.announce and cfg.stream.model_transport == "kafka" and not store.versions():
        return on_topic(args)
    if args.action == "rollback":
        print(store.rollback())
    elif args.action == "pin":
        store.pin(args.version)
        print(args.version)
    elif args.action == "unpin":
        store.pin(None)
    elif args.action == "show":
        version = args.version or store.current()
        if version is None:
            raise RecsysError(f"no model in {store.root}: train one first (recsys train)")
        meta = store.metadata(version)
        print(
            json.dumps(
                {
                    "version": version,
                    "serving": version == store.current(),
                    "pinned": store.pinned() == version,
                    "ranker": ranker_summary(meta),
                    "metadata": meta,
                },
                indent=2,
            )
        )
    else:
        cur = store.current()
        for v in store.versions():
            try:
                line = describe(v, store.metadata(v))
            except RecsysError as e:
                line = f"{v}  BROKEN: {e}"
            print(("* " if v == cur else "  ") + line)
    if args.announce:
        announce(args)
    return ExitCode.OK


def announce(args: argparse.Namespace) -> None:
    """Tell the running workers to load what the store now serves (after rollback, pin or unpin)."""
    from recsys.model.store import ModelStore
    from streaming.jobs.retrain import announce as send

    s = options.kafka_config(args).stream
    store = ModelStore(s.model_dir)
    version = store.current()
    if version is None:
        raise ConfigError(f"no model to announce in {s.model_dir}")
    extra: dict[str, Any] = {"reason": args.action}
    if s.model_transport == "kafka":
        from streaming.kafka.model_transport import CURRENT, PINNED, ModelTransport

        transport = ModelTransport.from_settings(s)
        if version not in transport.index().manifests:  # dropped past the retention: again
            transport.publish(store, version, current=False)
            print(f"published {version} on {s.model_artifacts_topic}", file=sys.stderr)
        if args.action == "rollback":
            transport.point(CURRENT, version)
        else:
            extra["pinned"] = store.pinned()
            transport.point(PINNED, extra["pinned"])
    send(s.bootstrap, s.model_updates_topic, version, extra)
    print(f"announced {version} on {s.model_updates_topic}", file=sys.stderr)


def on_topic(args: argparse.Namespace) -> int:
    """rollback, pin, unpin with --announce on a host without the model store (model_transport
    kafka): the versions and pointers on the artifacts topic."""
    from streaming.jobs.retrain import announce as send
    from streaming.kafka.model_transport import CURRENT, PINNED, ModelTransport

    s = options.kafka_config(args).stream
    transport = ModelTransport.from_settings(s)
    index = transport.index()
    extra: dict[str, Any] = {"reason": args.action}
    if args.action == "rollback":
        older = [v for v in index.versions if index.current is None or v < index.current]
        if not older:
            raise RecsysError(f"no version older than {index.current!r} on {s.model_artifacts_topic} to roll back to")
        version = older[-1]
        transport.point(CURRENT, version)
        print(version)
    elif args.action == "pin":
        version = check_version(args.version)
        if version not in index.manifests:
            raise RecsysError(
                f"model version {version!r} is not on {s.model_artifacts_topic}: pin it where its store is "
                "(the retrain job's model_dir), which publishes it again"
            )
        transport.point(PINNED, version)
        extra["pinned"] = version
        print(version)
    else:
        if index.current is None:
            raise RecsysError(f"no current version on {s.model_artifacts_topic} to serve once unpinned")
        version = index.current
        transport.point(PINNED, None)
        extra["pinned"] = None
    if index.pinned and args.action == "rollback":
        print(f"note: {index.pinned} is pinned; workers keep serving it until `recsys models unpin`", file=sys.stderr)
    send(s.bootstrap, s.model_updates_topic, version, extra)
    print(f"announced {version} on {s.model_updates_topic}", file=sys.stderr)
    return ExitCode.OK


def describe(version: str, meta: dict[str, Any]) -> str:
    """One `models list` line: version, kind, items, the retrain gate's verdict, whether the
    version has a ranker (and its gate's verdict), and the held-out metrics the model was judged
    on (docs/operations.md "Retraining")."""
    return (
        f"{version}  {meta.get('kind', '?'):<4} items={meta.get('n_items')}  gate={gate_text(meta)}  "
        f"ranker={ranker_text(meta)}  {metrics_text(meta)}"
    )


def ranker_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """Whether a version carries a ranker (`ranker.txt` among its checksummed files: workers rank
    its lists with it) and what the retrain's ranker gate said (`metadata.ranker`, absent when the
    version was not made by the retrain job)."""
    from recsys.model.store import RANKER

    info = meta.get("ranker")
    info = info if isinstance(info, dict) else {}
    gate = info.get("gate") if isinstance(info.get("gate"), dict) else None
    return {
        "stored": RANKER in meta.get("files", {}),
        "gate": None if gate is None else {"passed": gate.get("passed"), "note": gate.get("note")},
        "note": info.get("note"),
    }


def ranker_text(meta: dict[str, Any]) -> str:
    r = ranker_summary(meta)
    gate = r["gate"]
    if r["stored"]:
        return "yes (not gated)" if gate is None else f"yes (gate passed: {gate['note']})"
    if gate is not None and gate["passed"] is False:
        return f"no (gate failed: {gate['note']})"
    note = str(r["note"] or "").removeprefix("no ranker: ")
    return f"no ({note})" if note else "no"


def gate_text(meta: dict[str, Any]) -> str:
    gate = meta.get("gate")
    if not isinstance(gate, dict):
        return "none (not made by the retrain job)"
    if gate.get("passed") is False:
        return "failed"
    if "current_map10" in gate:
        return f"passed (MAP@10 {gate.get('candidate_map10', float('nan')):.4f} vs {gate['current_map10']:.4f} of {gate.get('current', '?')})"
    cases = gate.get("cases")
    return f"passed, not gated ({cases} held-out users)" if cases is not None else "passed, not gated"


def metrics_text(meta: dict[str, Any]) -> str:
    metrics = meta.get("holdout") or meta.get("metrics") or {}
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not k.endswith("_se")}
    if not shown:
        return "held-out metrics: none"
    se = metrics.get("MAP@10_se")
    text = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    return text + (f" (MAP@10 ±{se:.4f})" if isinstance(se, (int, float)) and se else "")
