"""The typed configuration (recsys.config), structured logs (streaming.logs), `recsys models show`."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from recsys import config as C
from recsys.confidence import ConfidenceConfig
from recsys.data.datasets import write_canonical
from recsys.errors import ConfigError
from recsys.model.train import TrainConfig
from recsys.serving.scoring import ScoringConfig
from streaming.logs import JsonFormatter, take_flag, worker_logging_config
from tests.helpers import clustered_events

ROOT = Path(__file__).resolve().parents[2]


def recsys(*args, env=None, cwd=ROOT):
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    return subprocess.run(
        [sys.executable, "-m", "streaming.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**base, **(env or {})},
    )


# -- layering -------------------------------------------------------------------------------------
def test_defaults_are_the_projects_defaults():
    cfg = C.load_config(env={})
    assert cfg == C.Config() and cfg.stream == C.Settings() and cfg.ops == C.Operations()
    assert cfg.confidence == ConfidenceConfig() and cfg.train == TrainConfig() and cfg.scoring == ScoringConfig()
    assert dict(cfg.origins) == {}


def test_file_then_environment_then_overrides(tmp_path):
    f = tmp_path / "streamrec.toml"
    f.write_text(
        '[stream]\npartitions = 6\nbootstrap = "kafka:9092"\nweb_port = 7000\n'
        "[train]\nfactors = 32\n[confidence.weights]\nview = 0.5\n"
    )
    env = {
        "STREAMREC_PARTITIONS": "8",
        "STREAMREC_TRAIN_ITERATIONS": "7",
        "STREAMREC_CONFIDENCE_WEIGHTS_CLICK": "0.4",
        "STREAMREC_LOG_FORMAT": "json",
        "STREAMREC_SCORING_EXCLUDE_TYPES": "transaction, addtocart",
        "UNRELATED": "x",
    }
    cfg = C.load_config(f, env=env, overrides={"stream.web_port": "7100", "train": {"random_state": "none"}})
    assert cfg.stream.bootstrap == "kafka:9092"  # file
    assert cfg.stream.partitions == 8  # env beats file
    assert cfg.stream.web_port == 7100  # override beats file
    assert cfg.train.factors == 32 and cfg.train.iterations == 7 and cfg.train.random_state is None
    assert cfg.train.regularization == TrainConfig().regularization  # untouched: default
    # A table merges key by key: two weights changed, the others kept.
    assert dict(cfg.confidence.weights) == {**ConfidenceConfig().weights, "view": 0.5, "click": 0.4}
    assert cfg.scoring.exclude_types == ("transaction", "addtocart") and cfg.ops.log_format == "json"
    assert cfg.source("stream.bootstrap") == f"file {f}"
    assert cfg.source("stream.partitions") == "env STREAMREC_PARTITIONS"
    assert cfg.source("stream.web_port") == "command line"
    assert cfg.source("confidence.weights.click") == "env STREAMREC_CONFIDENCE_WEIGHTS_CLICK"
    assert cfg.source("stream.top_n") == "default"


def test_config_file_from_the_environment(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[stream]\ntop_n = 5\n")
    assert C.load_config(env={"STREAMREC_CONFIG": str(f)}).stream.top_n == 5


@pytest.mark.parametrize(
    "file,env,overrides,message",
    [
        (
            None,
            {"STREAMREC_PARTITIONS": "eight"},
            {},
            "stream.partitions: expected an integer, got 'eight' (env STREAMREC_PARTITIONS)",
        ),
        (None, {"STREAMREC_PARTITIONS": "0"}, {}, "stream.partitions must be >= 1"),
        ("[train]\nfactors = 0\n", {}, {}, "train.factors"),
        ("[train]\nfactors = 1.5\n", {}, {}, "train.factors: expected an integer"),
        ("[train]\nfactorz = 3\n", {}, {}, "unknown setting train.factorz"),
        ("[nope]\nx = 1\n", {}, {}, "unknown setting 'nope.x'"),
        ("[stream\n", {}, {}, "not valid TOML"),
        (None, {}, ["scoring.user_weight=2"], "scoring.user_weight must be in [0, 1], got 2.0"),
        (None, {}, ["confidence.weights.teleport=1"], "confidence.weights: unknown event types ['teleport']"),
        (None, {"STREAMREC_CONFIDENCE_ALPHA": "-1"}, {}, "confidence.alpha must be > 0"),
        (None, {"STREAMREC_LOG_FORMAT": "xml"}, {}, "ops.log_format"),
        (None, {"STREAMREC_SCORING_EXCLUDE_QUERY": "maybe"}, {}, "scoring.exclude_query: expected true or false"),
        (None, {}, ["stream.web_port"], "expected section.key=value"),
    ],
)
def test_invalid_values_are_rejected_naming_the_setting(tmp_path, file, env, overrides, message):
    path = None
    if file is not None:
        path = tmp_path / "bad.toml"
        path.write_text(file)
    with pytest.raises(ConfigError) as e:
        C.load_config(path, env=env, overrides=overrides)
    assert message in str(e.value)


def test_printed_configuration_reads_back_as_the_same_configuration(tmp_path):
    cfg = C.load_config(
        env={"STREAMREC_PARTITIONS": "3", "STREAMREC_CONFIDENCE_HALF_LIFE_DAYS": "30"},
        overrides=[
            "train.random_state=none",
            "scoring.exclude_types=transaction,addtocart",
            'stream.app_id=shop "one"',
        ],
    )
    f = tmp_path / "printed.toml"
    f.write_text(cfg.to_toml())
    again = C.load_config(f, env={})
    assert again == cfg and again.as_dict() == cfg.as_dict()


def test_every_setting_has_one_environment_variable_and_a_description():
    names = {}
    for sname, sec in C.SECTIONS.items():
        for f in fields(sec.base):
            var = C.env_name(sname, f.name)
            assert var not in names, f"{var} names both {names[var]} and {sname}.{f.name}"
            names[var] = f"{sname}.{f.name}"
            assert C.describe(sname, f.name), f"describe {sname}.{f.name} where it is declared: setting(default, doc)"
    # The names the code already reads on its own are the same ones.
    assert names["STREAMREC_BOOTSTRAP"] == "stream.bootstrap" and names["STREAMREC_MODEL_DIR"] == "stream.model_dir"
    assert names["STREAMREC_DATA"] == "ops.data" and names["STREAMREC_KAFKA_DIR"] == "ops.kafka_dir"
    assert names["STREAMREC_LOG_FORMAT"] == "ops.log_format"
    # A child process given Config.to_env() gets the same configuration back.
    cfg = C.load_config(
        env={
            "STREAMREC_PARTITIONS": "5",
            "STREAMREC_BATCH_WITHIN_S": "0.2",
            "STREAMREC_APP_ID": "x",
            "STREAMREC_CONFIDENCE_WEIGHTS_VIEW": "0.5",
            "STREAMREC_SCORING_REPEAT_RATE_PRIOR": "0.2",
        }
    )
    assert C.load_config(env=cfg.to_env()) == cfg
    assert C.load_config(env=C.stream_env(cfg.stream)).stream == cfg.stream


def test_configuration_reference_is_generated_and_up_to_date():
    doc = ROOT / "docs" / "configuration.md"
    assert doc.read_text() == C.markdown(), (
        "docs/configuration.md is stale: run `.venv/bin/python -m recsys.config --markdown > docs/configuration.md`"
    )
    assert "(undocumented)" not in doc.read_text()


def test_recsys_config_command(tmp_path):
    r = recsys("config", "--set", "stream.partitions=8", env={"STREAMREC_TRAIN_FACTORS": "16"})
    assert r.returncode == 0, r.stderr
    assert "partitions = 8  # command line" in r.stdout and "factors = 16  # env STREAMREC_TRAIN_FACTORS" in r.stdout
    out = tmp_path / "c.toml"
    out.write_text(r.stdout)
    r = recsys("config", "--json", "--file", str(out))
    got = json.loads(r.stdout)
    assert got["config"]["stream"]["partitions"] == 8 and got["config"]["train"]["factors"] == 16
    r = recsys("config", env={"STREAMREC_WEB_PORT": "99999"})
    assert r.returncode == 2 and "web_port" in r.stderr and "STREAMREC_WEB_PORT" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "recsys.config", "--markdown"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert r.returncode == 0 and r.stdout == C.markdown()


# -- logs -----------------------------------------------------------------------------------------
def test_json_formatter_one_object_per_line_with_context_fields():
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(JsonFormatter())
    log = logging.getLogger("streamrec.test-json")
    log.addHandler(h)
    log.propagate = False
    try:
        log.warning(
            "dead-lettered %s\nsecond line", "x", extra={"partition": 3, "model_version": "v1", "detail": b"\xffbytes"}
        )
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(h)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    a, b = (json.loads(x) for x in lines)
    assert a["message"] == "dead-lettered x\nsecond line" and a["level"] == "warning"
    assert a["partition"] == 3 and a["model_version"] == "v1" and a["logger"] == "streamrec.test-json"
    assert a["ts"].endswith("Z") and isinstance(a["detail"], str)
    assert "ValueError: boom" in b["exc"]


def test_log_flag_and_environment(monkeypatch):
    assert take_flag(["worker", "--log-json", "--web-port", "1"]) == (["worker", "--web-port", "1"], True)
    assert take_flag(["--log-json", "config"]) == (["config"], True)
    assert take_flag(["replay", "--", "--log-json"]) == (["replay", "--", "--log-json"], False)
    monkeypatch.delenv("STREAMREC_LOG_FORMAT", raising=False)
    assert worker_logging_config() is None  # Faust's own console logs
    monkeypatch.setenv("STREAMREC_LOG_FORMAT", "json")
    conf = worker_logging_config("warning")
    import logging.config

    assert logging.config.BaseConfigurator({}).resolve(conf["formatters"]["json"]["()"]) is JsonFormatter
    assert conf["formatters"]["json"]["()"] == "streaming.logs.JsonFormatter" and conf["root"]["level"] == "WARNING"


def test_cli_logs_json_when_asked(tmp_path):
    """`recsys --log-json` and STREAMREC_LOG_FORMAT=json make the process's log records JSON lines."""
    code = (
        "import logging, sys; from streaming.cli.main import main; "
        "sys.exit(main(sys.argv[1:] + ['config']) or logging.getLogger('streamrec.x').warning("
        "'hello', extra={'model_version': 'v9'}))"
    )
    for args, env in ((["--log-json"], {}), ([], {"STREAMREC_LOG_FORMAT": "json"})):
        r = subprocess.run(
            [sys.executable, "-c", code.replace("sys.exit(", "rc = ("), *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            env={**{k: v for k, v in __import__("os").environ.items() if not k.startswith("STREAMREC_")}, **env},
        )
        assert r.returncode == 0, r.stderr
        rec = json.loads(r.stderr.strip().splitlines()[-1])
        assert rec["message"] == "hello" and rec["model_version"] == "v9"


# -- models show ----------------------------------------------------------------------------------
def test_models_show_list_pin_rollback(tmp_path):
    write_canonical(clustered_events(), tmp_path / "events.csv")
    versions = []
    for _ in range(2):
        r = recsys(
            "train",
            "--data",
            str(tmp_path / "events.csv"),
            "--factors",
            "8",
            "--iterations",
            "3",
            "--model-dir",
            str(tmp_path / "models"),
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
        versions.append(r.stdout.strip())
    r = recsys("models", "show", "--model-dir", str(tmp_path / "models"))
    shown = json.loads(r.stdout)
    assert shown["version"] == versions[1] and shown["serving"] and not shown["pinned"]
    assert shown["metadata"]["n_items"] > 0 and shown["metadata"]["kind"] == "als"
    assert recsys("models", "pin", versions[0], "--model-dir", str(tmp_path / "models")).returncode == 0
    shown = json.loads(recsys("models", "show", "--model-dir", str(tmp_path / "models")).stdout)
    assert shown["version"] == versions[0] and shown["pinned"]
    listing = recsys("models", "list", "--model-dir", str(tmp_path / "models")).stdout
    assert listing.startswith(f"* {versions[0]}")
    assert recsys("models", "unpin", "--model-dir", str(tmp_path / "models")).returncode == 0
    r = recsys("models", "rollback", "--model-dir", str(tmp_path / "models"))
    assert r.returncode == 0 and r.stdout.strip() == versions[0]
    r = recsys("models", "show", "no-such-version", "--model-dir", str(tmp_path / "models"))
    assert r.returncode == 2 and "no-such-version" in r.stderr
    r = recsys("models", "show", "--model-dir", str(tmp_path / "empty"))
    assert r.returncode == 2 and "train one first" in r.stderr
