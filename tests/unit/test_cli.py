"""The CLI as a user runs it: real processes, real files, exit codes and messages."""

import json
import subprocess
import sys

import pytest

from recsys.data.datasets import write_canonical
from tests.helpers import clustered_events


def recsys(*args, cwd):
    return subprocess.run([sys.executable, "-m", "streaming.cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


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


@pytest.mark.parametrize("args,message", [
    (["train", "--data", "/no/such/file.csv"], "no/such/file.csv"),
    (["train", "--data", "bogus_dataset_name"], "bogus_dataset_name"),
    (["similar", "--item", "i4", "--model-dir", "/no/models"], "train one first"),
    (["train"], "--data"),
    (["evaluate", "--data", "x", "--factors", "many"], "invalid int"),
])
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
    r = recsys("train", "--data", str(bad), "--lenient", "--factors", "2", "--model-dir", str(tmp_path / "m"),
               cwd=tmp_path)
    assert r.returncode == 0 and "skipped 1 malformed" in r.stderr


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
