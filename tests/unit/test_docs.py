"""The docs match the code: every command in a code block of README.md or docs/*.md is checked.

`recsys ...` lines (also `.venv/bin/recsys`, `VAR=value recsys`, `docker compose exec SVC recsys`)
must parse with the real CLI parser; the cheap ones (config, models) run for real. `make`
targets exist in the Makefile, `docker compose` lines name real services, `python -m` modules
exist, and relative links point at files that exist.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}  # untagged blocks are diagrams
ENV_ASSIGN = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def code_lines() -> list[tuple[str, int, str]]:
    """(file, line number, command) for every command line in a shell code block."""
    out = []
    for path in DOCS:
        lang, inside = None, False
        pending, start = "", 0
        for n, line in enumerate(path.read_text().splitlines(), 1):
            fence = re.match(r"^\s*```(\w*)", line)
            if fence:
                inside = not inside
                lang = fence.group(1).lower() if inside else None
                continue
            if not inside or lang not in SHELL_LANGS:
                continue
            text = line.strip()
            if text.startswith("$ "):
                text = text[2:]
            if not pending:
                start = n
            if text.endswith("\\"):
                pending += text[:-1] + " "
                continue
            text, pending = pending + text, ""
            if text and not text.startswith("#"):
                out.append((path.relative_to(ROOT).as_posix(), start, text))
    return out


def split(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def recsys_argv(words: list[str]) -> list[str] | None:
    """The arguments after `recsys` if this line runs recsys, else None."""
    while words and ENV_ASSIGN.match(words[0]):
        words = words[1:]
    if words[:3] == ["docker", "compose", "exec"] or words[:3] == ["docker", "compose", "run"]:
        rest = [w for w in words[3:] if not w.startswith("-")]
        words = rest[1:] if rest else []
    if words and Path(words[0]).name == "recsys":
        return words[1:]
    return None


COMMANDS = code_lines()
RECSYS = [(f, n, c, recsys_argv(split(c))) for f, n, c in COMMANDS if recsys_argv(split(c)) is not None]


def test_the_docs_have_commands_to_check():
    assert len(RECSYS) >= 30
    files = {f for f, *_ in RECSYS}
    assert {"README.md", "docs/operations.md", "docs/troubleshooting.md", "docs/configuration.md"} <= files


@pytest.mark.parametrize(
    "where,command,argv", [(f"{f}:{n}", c, a) for f, n, c, a in RECSYS], ids=[f"{f}:{n}" for f, n, *_ in RECSYS]
)
def test_recsys_command_parses_with_the_real_cli(where, command, argv):
    from streaming.cli.main import build_parser

    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `{command}` is not a valid recsys command line")
    assert callable(args.func)


def test_other_commands_name_real_things():
    import yaml

    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-zA-Z][\w-]*):", makefile, re.M))
    services = set(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])
    checked = 0
    for f, n, command in COMMANDS:
        words = split(command)
        while words and ENV_ASSIGN.match(words[0]):
            words = words[1:]
        if not words:
            continue
        where = f"{f}:{n}: {command}"
        if words[0] == "make":
            assert all(w in targets or "=" in w for w in words[1:]), where
            checked += 1
        elif words[:2] == ["docker", "compose"]:
            sub = [w for w in words[2:] if not w.startswith("-")]
            named = set()
            for i, w in enumerate(words):
                if words[i - 1] == "--scale":
                    named.add(w.split("=")[0])
            if sub and sub[0] in ("up", "logs", "restart", "ps", "exec", "run", "stop", "start"):
                rest = [w for w in sub[1:] if "=" not in w and w not in ("demo",)]
                named |= set(rest[:1] if sub[0] in ("exec", "run") else rest)
            assert named <= services, f"{where}: no service {named - services}"
            checked += 1
        elif words[0] in ("python", ".venv/bin/python") and words[1:2] == ["-m"]:
            assert importlib.util.find_spec(words[2]) is not None, where
            checked += 1
    assert checked >= 8


def test_relative_links_point_at_files():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue
            assert (path.parent / target).exists(), f"{path.relative_to(ROOT)}: broken link {target}"


def test_cheap_documented_commands_run(tmp_path, monkeypatch, capsys):
    """`recsys config ...` and `recsys models ...` as documented, against a small model store."""
    from recsys.confidence import ConfidenceConfig, build_profiles
    from recsys.model.store import ModelStore
    from recsys.model.train import TrainConfig, train
    from streaming.cli.main import build_parser, run
    from tests.helpers import clustered_events

    for k in [k for k in __import__("os").environ if k.startswith("STREAMREC_")]:
        monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
    store = ModelStore(tmp_path / "models")
    versions = []
    for seed in (1, 2):
        cfg = ConfidenceConfig()
        model, _, _ = train(
            build_profiles(clustered_events(seed=seed), cfg),
            cfg,
            TrainConfig(factors=4, iterations=2, random_state=seed),
            version=f"20260101T00000{seed}Z-00000{seed}",
        )
        store.save(model, publish=True)
        versions.append(model.version)
    ran = 0
    for f, n, command, argv in RECSYS:
        if not argv or argv[0] not in ("config", "models"):
            continue
        argv = [versions[0] if a == "VERSION" else a for a in argv]
        if argv[0] == "models":
            argv = [a for a in argv if a not in ("--model-dir", "/models")] + ["--model-dir", str(store.root)]
            store.pin(None)  # each example starts from the same store: 2 versions,
            store.publish(versions[-1])  # the newer one serving
        rc = run(build_parser(), argv)
        out = capsys.readouterr()
        assert rc == 0, f"{f}:{n}: `{command}` exited {rc}: {out.err}"
        if argv[0] == "config" and "--json" in argv:
            json.loads(out.out)
        ran += 1
    assert ran >= 8
