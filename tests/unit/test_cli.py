"""The CLI as a user runs it: real processes, real files, exit codes and messages."""

import json
import subprocess
import sys

import pytest

from recsys.data.datasets import write_canonical
from tests.helpers import clustered_events


def recsys(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "streaming.cli.main", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    write_canonical(clustered_events(), d / "events.csv")
    r = recsys("train", "--data", str(d / "events.csv"), "--factors", "8", "--model-dir", str(d / "models"), cwd=d)
    assert r.returncode == 0, r.stderr
    return d, r.stdout.strip()


def test_train_recommend_similar_models(trained):
    d, version = trained
    r = recsys("recommend", "--user", "u1", "--item", "i4", "--model-dir", str(d / "models"), cwd=d)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model_version"] == version and out["source"] == "blend" and len(out["items"]) == 10
    assert all(int(i[1:]) % 3 == 1 for i in out["items"][:5])  # u1 browses cluster 1
    r = recsys("similar", "--item", "i4", "-n", "3", "--model-dir", str(d / "models"), cwd=d)
    assert r.returncode == 0 and len(json.loads(r.stdout)["items"]) == 3
    r = recsys("recommend", "--user", "stranger", "--model-dir", str(d / "models"), cwd=d)
    assert json.loads(r.stdout)["source"] == "popular" and "no history" in r.stderr
    r = recsys("models", "--model-dir", str(d / "models"), cwd=d)
    assert r.stdout.startswith(f"* {version}")


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--data", "/no/such/file.csv"], "no/such/file.csv"),
        (["train", "--data", "bogus_dataset_name"], "bogus_dataset_name"),
        (["similar", "--item", "i4", "--model-dir", "/no/models"], "train one first"),
        (["train"], "--data"),
        (["evaluate", "--data", "x", "--factors", "many"], "invalid int"),
    ],
)
def test_bad_arguments_give_one_clear_line_and_exit_2(tmp_path, args, message):
    r = recsys(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_malformed_file_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,type,ts\nu1,i1,view,1700000000000\nu2,i2,teleport,1700000000000\n")
    r = recsys("train", "--data", str(bad), "--model-dir", str(tmp_path / "m"), cwd=tmp_path)
    assert r.returncode == 2 and "bad.csv:3" in r.stderr and "Traceback" not in r.stderr
    lenient = ("train", "--data", str(bad), "--lenient", "--factors", "2", "--model-dir", str(tmp_path / "m"))
    r = recsys(*lenient, cwd=tmp_path)  # the only 'teleport' row: the whole type would go
    assert r.returncode == 2 and "refusing to drop every row" in r.stderr and "--allow-skip-type" in r.stderr
    r = recsys(*lenient, "--allow-skip-type", cwd=tmp_path)
    assert r.returncode == 0 and "skipped 1 of 2 rows" in r.stderr
    assert "unknown_type: 1 rows (e.g. line 3: 'teleport')" in r.stderr


def test_unknown_item_for_similar(trained):
    d, _ = trained
    r = recsys("similar", "--item", "nope", "--model-dir", str(d / "models"), cwd=d)
    assert r.returncode == 2 and "not in model" in r.stderr


def test_corrupt_model_is_refused(trained, tmp_path):
    import shutil

    d, version = trained
    models = tmp_path / "models"
    shutil.copytree(d / "models", models)
    f = models / version / "item_factors.npy"
    f.write_bytes(f.read_bytes()[:-8] + b"\0" * 8)
    r = recsys("similar", "--item", "i4", "--model-dir", str(models), cwd=tmp_path)
    assert r.returncode == 2 and "checksum" in r.stderr


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "streaming.cli.main", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def commands() -> list[list[str]]:
    """Every command of the real parser, as argv prefixes (`broker start` ...)."""
    import argparse

    from streaming.cli.main import build_parser

    def walk(p: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001 - argparse has no public walk
        if not subs:
            return [prefix]
        return [prefix] * bool(prefix) + [c for name, sp in subs[0].choices.items() for c in walk(sp, [*prefix, name])]

    return walk(build_parser(), [])


def test_every_command_has_help_naming_recsys():
    import contextlib
    import io

    from streaming.cli.main import build_parser

    found = commands()
    assert {"broker start", "broker stop", "broker status", "replay", "tail", "config", "demo"} <= {
        " ".join(c) for c in found
    }
    for argv in found:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
            build_parser().parse_args([*argv, "-h"])
        assert e.value.code == 0, argv
        usage = out.getvalue().splitlines()[0]
        assert usage.startswith(f"usage: recsys {' '.join(argv)}"), (argv, usage)
        if argv[0] != "broker" or len(argv) > 1:  # every command takes the configuration options
            assert "--config FILE" in out.getvalue() and "--set SECTION.KEY=VALUE" in out.getvalue(), argv


def test_broker_help_and_usage_are_recsys_broker():
    r = cli("broker", "-h")
    assert r.returncode == 0 and r.stdout.startswith("usage: recsys broker") and "start" in r.stdout
    r = cli("broker", "start", "-h")
    assert r.returncode == 0 and r.stdout.startswith("usage: recsys broker start") and "--foreground" in r.stdout
    r = cli("broker")
    assert r.returncode == 2 and "usage: recsys broker" in r.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "x", "--bogus"],
        ["broker", "status", "--bogus"],
        ["replay", "--bogus"],
        ["tail", "--bogus", "1"],
        ["config", "--bogus"],
    ],
)
def test_an_unknown_option_prints_that_commands_usage_and_exits_2(argv):
    r = cli(*argv)
    name = " ".join(a for a in argv if not a.startswith("-") and a not in ("x", "1"))
    assert r.returncode == 2
    assert r.stderr.startswith(f"usage: recsys {name} ") and "unrecognized arguments: --bogus" in r.stderr
    assert f"recsys {name}: error:" in r.stderr


def test_exit_codes_are_the_documented_ones():
    from pathlib import Path

    from recsys.errors import ExitCode

    doc = (Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md").read_text()
    assert "recsys.errors.ExitCode" in doc
    for code in ExitCode:
        assert f"| {int(code)} | `{code.name}` |" in doc, f"docs/troubleshooting.md: document exit code {code.name}"
