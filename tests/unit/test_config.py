"""One configuration: its defaults are declared once, at the fields, and only recsys/config.py
reads the process environment. Both read from the sources with `ast`."""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

import pytest

from recsys import config as C
from recsys.confidence import ConfidenceConfig
from recsys.model.train import TrainConfig
from recsys.serving.scoring import ScoringConfig

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("recsys", "streaming", "devtools", "bench")

# The settings the defaults search (bench/tune.py, docs/evaluation.md) and its follow-ups chose.
TUNED = {
    "confidence": ("weights", "alpha", "half_life_days"),
    "train": ("factors", "regularization", "iterations"),
    "scoring": ("user_weight", "item_norm_power", "repeat_weight", "repeat_half_life_days", "repeat_rate_strength"),
}
SECTION_CLASSES = {"ConfidenceConfig", "TrainConfig", "ScoringConfig", "Settings", "Operations", "Config"}


def sources() -> list[Path]:
    return sorted(p for pkg in SOURCES for p in (ROOT / pkg).rglob("*.py"))


def tuned_defaults() -> dict[str, object]:
    base = C.Config()
    return {f"{s}.{name}": getattr(base.section(s), name) for s, names in TUNED.items() for name in names}


def literal(node: ast.AST) -> object:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return _NOT_A_LITERAL


_NOT_A_LITERAL = object()


def distinctive(v: object) -> bool:
    """A number no one writes by chance (three significant digits or more, not a whole number)."""
    if not isinstance(v, float) or v.is_integer():
        return False
    return len(f"{abs(v):.10g}".replace(".", "").strip("0")) >= 3


def same(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a == b
    return type(a) is type(b) and a == b


def test_tuned_defaults_are_the_dataclass_defaults():
    """`Recommender(model)`, `evaluate()` and friends take the dataclasses' defaults: those are the
    tuned values (docs/evaluation.md "Searching the defaults")."""
    c, t, s = ConfidenceConfig(), TrainConfig(), ScoringConfig()
    assert (c.alpha, c.half_life_days, dict(c.weights)) == (
        80.8,
        0.727,
        {"view": 0.25, "click": 0.25, "favorite": 0.55, "addtocart": 1.76, "transaction": 0.06},
    )
    assert (t.kind, t.factors, t.regularization, t.iterations) == ("als", 128, 0.018, 15)
    assert (s.user_weight, s.item_norm_power, s.repeat_weight, s.repeat_half_life_days, s.num_threads) == (
        0.576,
        0.592,
        100.0,
        0.1,
        1,
    )
    assert C.Config() == C.load_config(env={})


def test_no_tuned_default_is_declared_twice():
    """A tuned value lives at its field, nowhere else: no defaults module, no constant, no copy
    of the field in another dataclass, no call that passes the default again, and each
    distinctive number (80.8, 0.576, ...) appears once in all the package sources."""
    assert not (ROOT / "recsys" / "defaults.py").exists()
    tuned = tuned_defaults()
    by_field: dict[str, list[tuple[str, object]]] = {}
    for key, v in tuned.items():
        by_field.setdefault(key.split(".")[1], []).append((key, v))
    flat = [v for v in tuned.values() if not isinstance(v, dict)]
    flat += [w for v in tuned.values() if isinstance(v, dict) for w in v.values()]
    counts = {v: 0 for v in flat if distinctive(v)}
    problems = []

    def matches(name: str, value: object) -> list[str]:
        return [key for key, v in by_field.get(name, []) if same(value, v)]

    for path in sources():
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in counts and isinstance(node.value, float):
                counts[node.value] += 1
            if isinstance(node, ast.ClassDef) and node.name not in SECTION_CLASSES:
                for stmt in node.body:  # a field of another dataclass with a tuned name and value
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value:
                        hit = matches(stmt.target.id, literal(stmt.value))
                        if hit:
                            problems.append(f"{rel}:{stmt.lineno}: {node.name}.{stmt.target.id} repeats {hit}")
            if isinstance(node, ast.Call):  # ConfidenceConfig(alpha=80.8), replace(x, factors=128)
                fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if fn in SECTION_CLASSES | {"replace"}:
                    for kw in node.keywords:
                        hit = matches(kw.arg or "", literal(kw.value))
                        if hit:
                            problems.append(f"{rel}:{node.lineno}: {fn}({kw.arg}=...) repeats the default {hit}")
        for stmt in tree.body:  # ALPHA = 80.8, DEFAULT_WEIGHTS = {...}
            if isinstance(stmt, ast.Assign | ast.AnnAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                value = literal(stmt.value) if stmt.value is not None else _NOT_A_LITERAL
                for t in targets:
                    if not isinstance(t, ast.Name):
                        continue
                    name = t.id.lower()
                    hit = [
                        k
                        for f, pairs in by_field.items()
                        if name == f or name.endswith("_" + f)
                        for k, v in pairs
                        if same(value, v)
                    ]
                    hit += [k for k, v in tuned.items() if isinstance(v, dict) and same(value, v)]
                    if hit:
                        problems.append(f"{rel}:{stmt.lineno}: {t.id} repeats {sorted(set(hit))}")
    problems += [
        f"{v!r} appears {n} times in the package sources (declare it once, at its field)"
        for v, n in counts.items()
        if n != 1
    ]
    assert not problems, "\n".join(problems)


def test_the_duplicate_finder_names_each_kind(tmp_path, monkeypatch):
    """The scan above, on a tree with a planted copy of each kind of duplicate."""
    pkg = tmp_path / "recsys"
    pkg.mkdir()
    (pkg / "defaults.py").write_text("")
    (pkg / "x.py").write_text(
        "from dataclasses import dataclass\n\nALPHA = 80.8\n\n@dataclass\nclass Other:\n"
        "    user_weight: float = 0.576\n\nT = TrainConfig(factors=128)\n"
    )
    for d in ("streaming", "devtools", "bench"):
        (tmp_path / d).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="defaults.py"):
        test_no_tuned_default_is_declared_twice()
    (pkg / "defaults.py").unlink()
    with pytest.raises(AssertionError) as e:
        test_no_tuned_default_is_declared_twice()
    text = str(e.value)
    assert "ALPHA repeats ['confidence.alpha']" in text
    assert "Other.user_weight repeats ['scoring.user_weight']" in text
    assert "TrainConfig(factors=...) repeats the default ['train.factors']" in text
    assert "0.592 appears 0 times" in text  # its one declaration is not in this tree


def reads_environment(tree: ast.AST) -> list[int]:
    """Lines that touch the process environment: os.environ, os.getenv/putenv/unsetenv, or a
    name `environ` (e.g. `from os import environ`)."""
    out = []
    for node in ast.walk(tree):
        attribute = isinstance(node, ast.Attribute) and node.attr in (
            "environ",
            "environb",
            "getenv",
            "putenv",
            "unsetenv",
        )
        name = isinstance(node, ast.Name) and node.id in ("environ", "getenv")
        imported = (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(a.name in ("environ", "getenv", "putenv") for a in node.names)
        )
        if attribute or name or imported:
            out.append(node.lineno)
    return out


def test_only_recsys_config_reads_the_environment():
    found = []
    for path in sources():
        rel = path.relative_to(ROOT).as_posix()
        if rel == "recsys/config.py":
            continue
        found += [f"{rel}:{n}" for n in reads_environment(ast.parse(path.read_text(), rel))]
    assert not found, "read the setting through recsys.config instead: " + ", ".join(found)
    assert reads_environment(ast.parse((ROOT / "recsys" / "config.py").read_text()))
    assert reads_environment(ast.parse("import os\nx = os.environ.get('A')\n"))
    assert reads_environment(ast.parse("from os import getenv\n"))


def test_every_field_is_documented_where_it_is_declared():
    for name, sec in C.SECTIONS.items():
        for f in dataclasses.fields(sec.cls):
            assert C.describe(name, f.name), f"{name}.{f.name}: declare it with setting(default, doc)"
            assert C.env_name(name, f.name) == sec.env_prefix + f.name.upper()
    assert not hasattr(C, "DESCRIPTIONS")


def test_faust_broker_variables_are_still_read_below_the_streamrec_ones():
    cfg = C.load_config(env={"BROKER_SESSION_TIMEOUT": "6", "BROKER_HEARTBEAT_INTERVAL": "0.5"})
    assert (cfg.stream.broker_session_timeout_s, cfg.stream.broker_heartbeat_interval_s) == (6.0, 0.5)
    assert cfg.source("stream.broker_session_timeout_s") == "env BROKER_SESSION_TIMEOUT"
    cfg = C.load_config(env={"BROKER_SESSION_TIMEOUT": "6", "STREAMREC_BROKER_SESSION_TIMEOUT_S": "7"})
    assert cfg.stream.broker_session_timeout_s == 7.0
    assert C.Config().stream.broker_session_timeout_s == 10.0 and C.Config().stream.broker_heartbeat_interval_s == 1.0


def test_child_environment_carries_the_whole_configuration():
    cfg = C.load_config(
        env={},
        overrides=[
            "scoring.n=7",
            "confidence.weights.view=0.5",
            "train.random_state=none",
            "scoring.exclude_types=transaction,addtocart",
            "ops.log_format=json",
        ],
    )
    env = cfg.to_env()
    assert env["STREAMREC_SCORING_N"] == "7" and env["STREAMREC_LOG_FORMAT"] == "json"
    assert C.load_config(env=env) == cfg
    # inherited variables cannot leave a different value behind
    assert C.load_config(env={"STREAMREC_PARTITIONS": "9", **C.Config().to_env()}).stream.partitions == 4
    assert C.load_config(env=C.stream_env(cfg.stream)).stream == cfg.stream
    assert C.child_env({"X_TEST": "1"})["X_TEST"] == "1"


def test_data_dir_keeps_its_behaviour(monkeypatch, tmp_path):
    from recsys.data import datasets

    monkeypatch.delenv("STREAMREC_DATA", raising=False)
    monkeypatch.delenv("STREAMREC_CONFIG", raising=False)
    assert datasets.data_dir() == Path(datasets.__file__).resolve().parents[3] / "shared" / "data"
    monkeypatch.setenv("STREAMREC_DATA", str(tmp_path))
    assert datasets.data_dir() == tmp_path
    assert datasets.data_dir(str(tmp_path / "x")) == tmp_path / "x"
