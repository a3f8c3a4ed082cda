"""Every consumer runs with the one configuration: the library's entry points default to it, and
a `--set` or an environment variable given to the command reaches each of them.

`Recommender(model)`, `evaluate()`, `stream_evaluate()`, the worker (`create_app`), the retrain
(`retrain_once`), `replay` and `tail`; the commands run in process, with the consumer replaced
by a spy where the real one would need Kafka or minutes of training.
"""

from __future__ import annotations

import inspect

import pytest

from recsys.confidence import ConfidenceConfig
from recsys.config import Config, load_config
from recsys.data.datasets import write_canonical
from recsys.model.store import ModelStore
from recsys.model.train import TrainConfig
from recsys.serving.scoring import ScoringConfig
from streaming.cli.main import build_parser, run
from tests.helpers import clustered_events, random_model, train_into

DEFAULTS = Config()


class Seen(Exception):
    """Raised by a spy once it has recorded what it was given."""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for k in [k for k in __import__("os").environ if k.startswith("STREAMREC_") or k.startswith("BROKER_")]:
        monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def events_file(tmp_path):
    path = tmp_path / "events.csv"
    write_canonical(clustered_events(), path)
    return str(path)


def spy(monkeypatch, target: str, seen: dict, result=None):
    """Replace `module.attr` with a function that records its arguments (then raises Seen,
    unless a result is given)."""
    module, attr = target.rsplit(".", 1)

    def fake(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        if result is None:
            raise Seen
        return result

    monkeypatch.setattr(__import__(module, fromlist=[attr]), attr, fake)


def recsys(*argv: str) -> int:
    return run(build_parser(), list(argv))


# -- the library's entry points default to the configuration's values -----------------------------
def test_library_defaults_are_the_configuration_defaults():
    from recsys.evaluation.offline import evaluate
    from recsys.evaluation.streaming import stream_evaluate
    from recsys.serving.recommender import Recommender

    rec = Recommender(random_model())
    assert rec.ccfg == DEFAULTS.confidence and rec.scfg == DEFAULTS.scoring
    for fn in (evaluate, stream_evaluate):
        params = inspect.signature(fn).parameters
        assert params["ccfg"].default == DEFAULTS.confidence and params["scfg"].default == DEFAULTS.scoring
    assert inspect.signature(stream_evaluate).parameters["tcfg"].default == DEFAULTS.train


def test_evaluate_trains_the_configured_model_by_default(monkeypatch):
    from recsys.evaluation import offline

    seen: dict = {}
    spy(monkeypatch, "recsys.evaluation.offline.train", seen)
    with pytest.raises(Seen):
        offline.evaluate(clustered_events()[:900], clustered_events()[900:])
    _, ccfg, tcfg = seen["args"]
    assert ccfg == DEFAULTS.confidence and tcfg == DEFAULTS.train


def test_retrain_once_without_a_config_uses_the_defaults(monkeypatch, tmp_path):
    from recsys.confidence import build_profiles
    from streaming.jobs import retrain

    seen: dict = {}
    spy(monkeypatch, "streaming.jobs.retrain.fit", seen)
    with pytest.raises(Seen):
        retrain.retrain_once(
            build_profiles(clustered_events(), DEFAULTS.confidence), ModelStore(tmp_path / "m"), DEFAULTS.stream
        )
    assert seen["args"][1:] == (DEFAULTS.confidence, DEFAULTS.train)


# -- an override reaches each consumer through the command line ------------------------------------
@pytest.mark.parametrize("how", ["set", "env"])
def test_recommend_and_similar_score_with_the_configuration(monkeypatch, tmp_path, capsys, how):
    import streaming.cli.lookup as lookup
    from recsys.serving.recommender import Recommender

    train_into(ModelStore(tmp_path / "models"))
    made: list = []

    class Recording(Recommender):
        def __init__(self, model, ccfg=ConfidenceConfig(), scfg=ScoringConfig(), num_threads=None):
            super().__init__(model, ccfg, scfg, num_threads)
            made.append(self)

    monkeypatch.setattr(lookup, "Recommender", Recording)
    extra = ["--set", "scoring.n=3", "--set", "confidence.alpha=2.5"] if how == "set" else []
    if how == "env":
        monkeypatch.setenv("STREAMREC_SCORING_N", "3")
        monkeypatch.setenv("STREAMREC_CONFIDENCE_ALPHA", "2.5")
    assert recsys("similar", "--item", "i4", "--model-dir", str(tmp_path / "models"), *extra) == 0
    assert recsys("recommend", "--user", "u1", "--model-dir", str(tmp_path / "models"), *extra) == 0
    assert len(made) == 2 and all(r.scfg.n == 3 and r.ccfg.alpha == 2.5 for r in made)
    assert made[0].scfg == load_config(overrides=["scoring.n=3"]).scoring
    assert capsys.readouterr().out.count('"items"') == 2


@pytest.mark.parametrize("how", ["set", "env"])
def test_evaluate_and_stream_eval_take_the_configuration(monkeypatch, events_file, how):
    seen: dict = {}
    extra = ["--set", "scoring.user_weight=0.3", "--set", "train.factors=4"] if how == "set" else []
    if how == "env":
        monkeypatch.setenv("STREAMREC_SCORING_USER_WEIGHT", "0.3")
        monkeypatch.setenv("STREAMREC_TRAIN_FACTORS", "4")
    spy(monkeypatch, "recsys.evaluation.offline.evaluate", seen)
    with pytest.raises(Seen):
        recsys("evaluate", "--data", events_file, "--kinds", "als,bpr", *extra)
    kw = seen["kwargs"]
    assert kw["scfg"].user_weight == 0.3 and kw["ccfg"] == DEFAULTS.confidence
    assert kw["kinds"]["als"] == TrainConfig(factors=4) and kw["kinds"]["bpr"].kind == "bpr"
    ranker_seen: dict = {}
    spy(monkeypatch, "recsys.candidates.training.train_ranker", ranker_seen, result=object())
    spy(monkeypatch, "recsys.evaluation.streaming.stream_evaluate", seen)
    with pytest.raises(Seen):
        recsys("stream-eval", "--data", events_file, "--alpha", "3", "--set", "ranker.num_leaves=7", *extra)
    for kw in (seen["kwargs"], ranker_seen["kwargs"]):  # the replay, and the ranker trained before it
        assert kw["scfg"].user_weight == 0.3 and kw["tcfg"] == TrainConfig(factors=4) and kw["ccfg"].alpha == 3.0
        assert kw["ecfg"].ranker.num_leaves == 7


def test_train_command_trains_the_configuration(monkeypatch, events_file, tmp_path):
    seen: dict = {}
    spy(monkeypatch, "recsys.model.train.train", seen)
    with pytest.raises(Seen):
        recsys(
            "train",
            "--data",
            events_file,
            "--set",
            "train.iterations=3",
            "--set",
            "confidence.alpha=9",
            "--model-dir",
            str(tmp_path / "m"),
        )
    _, ccfg, tcfg = seen["args"]
    assert ccfg.alpha == 9.0 and tcfg == TrainConfig(iterations=3)
    with pytest.raises(Seen):
        recsys("train", "--data", events_file, "--kind", "bpr", "--factors", "8")
    from recsys.model.train import BPR

    assert seen["args"][2] == TrainConfig(**{**BPR.__dict__, "factors": 8})


@pytest.mark.parametrize("how", ["set", "env"])
def test_the_worker_gets_the_configuration(monkeypatch, how):
    seen: dict = {}
    monkeypatch.setattr("streaming.kafka.admin.ensure_topics", lambda *a, **k: [])
    spy(monkeypatch, "streaming.worker.app.create_app", seen)
    extra = ["--set", "scoring.n=7", "--set", "stream.broker_session_timeout_s=6"] if how == "set" else []
    if how == "env":
        monkeypatch.setenv("STREAMREC_SCORING_N", "7")
        monkeypatch.setenv("BROKER_SESSION_TIMEOUT", "6")
    with pytest.raises(Seen):
        recsys("worker", "--bootstrap", "127.0.0.1:1", "--web-port", "7001", *extra)
    (cfg,) = seen["args"]
    assert isinstance(cfg, Config) and cfg.scoring.n == 7 and cfg.stream.broker_session_timeout_s == 6.0
    assert cfg.stream.web_port == 7001 and cfg.stream.bootstrap == "127.0.0.1:1"


def test_create_app_configures_faust_and_the_worker_from_the_config(tmp_path):
    from prometheus_client import CollectorRegistry

    from streaming.worker.app import create_app
    from streaming.worker.metrics import WorkerMetrics

    cfg = load_config(
        env={},
        overrides=[
            "stream.bootstrap=127.0.0.1:1",
            "stream.item_foldin=false",
            f"stream.data_dir={tmp_path / 'w'}",
            "stream.broker_session_timeout_s=6",
            "stream.broker_heartbeat_interval_s=0.5",
            "scoring.n=7",
            "confidence.alpha=3",
        ],
    )
    app = create_app(cfg, WorkerMetrics(CollectorRegistry()))  # its own registry: other tests made workers
    assert (app.conf.broker_session_timeout, app.conf.broker_heartbeat_interval) == (6.0, 0.5)
    assert app.conf.id == cfg.stream.app_id and app.conf.topic_partitions == cfg.stream.partitions
    # whatever parts of the worker hold confidence or scoring settings hold these ones
    parts = [app.streamrec, *vars(app.streamrec).values()]
    held = [
        v for p in parts for v in getattr(p, "__dict__", {}).values() if isinstance(v, ConfidenceConfig | ScoringConfig)
    ]
    assert held and all(v in (cfg.confidence, cfg.scoring) for v in held)
    assert {type(v) for v in held} == {ConfidenceConfig, ScoringConfig}


@pytest.mark.parametrize("how", ["set", "env"])
def test_retrain_command_gives_retrain_once_the_configuration(monkeypatch, events_file, tmp_path, how):
    seen: dict = {}
    spy(monkeypatch, "streaming.jobs.retrain.retrain_once", seen)
    extra = ["--set", "train.factors=4", "--set", "confidence.alpha=2"] if how == "set" else []
    if how == "env":
        monkeypatch.setenv("STREAMREC_TRAIN_FACTORS", "4")
        monkeypatch.setenv("STREAMREC_CONFIDENCE_ALPHA", "2")
    with pytest.raises(Seen):
        recsys(
            "retrain",
            "--once",
            "--data",
            events_file,
            "--bootstrap",
            "127.0.0.1:1",
            "--model-dir",
            str(tmp_path / "m"),
            *extra,
        )
    profiles, store, settings, _metrics, _source, config = seen["args"]
    assert config.train.factors == 4 and config.confidence.alpha == 2.0 and settings == config.stream
    assert str(store.root).endswith("m")
    # the profiles were built with the same confidence settings
    from recsys.confidence import build_profiles
    from recsys.data.datasets import load_events

    assert profiles == build_profiles(load_events(events_file), config.confidence)


@pytest.mark.parametrize("how", ["set", "env", "file"])
def test_replay_and_tail_take_the_configuration(monkeypatch, tmp_path, capsys, how):
    from streaming.jobs.replay import ReplayStats

    created: dict = {}
    monkeypatch.setattr("streaming.kafka.admin.ensure_topics", lambda b, specs, **k: created.update(specs) or [])
    seen: dict = {}
    spy(monkeypatch, "streaming.jobs.replay.replay", seen, result=ReplayStats(sent=5))
    extra: list[str] = []
    settings = {
        "stream.bootstrap": "10.0.0.1:9092",
        "stream.clickstream_topic": "clicks-x",
        "stream.recommendations_topic": "recs-x",
        "stream.partitions": "3",
    }
    if how == "set":
        extra = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    elif how == "env":
        for k, v in settings.items():
            monkeypatch.setenv("STREAMREC_" + k.split(".")[1].upper(), v)
    else:
        f = tmp_path / "c.toml"
        f.write_text(
            '[stream]\nbootstrap = "10.0.0.1:9092"\nclickstream_topic = "clicks-x"\n'
            'recommendations_topic = "recs-x"\npartitions = 3\n'
        )
        extra = ["--config", str(f)]
    assert (
        recsys("replay", "--simulate", "5", "--users", "2", "--items", "5", "--topics", "1", "--no-progress", *extra)
        == 0
    )
    assert seen["args"][1:] == ("10.0.0.1:9092", "clicks-x") and created == {"clicks-x": 3}

    tails: list = []

    class Empty:
        def __init__(self, bootstrap, topic, **kw):
            tails.append((bootstrap, topic))

        def __iter__(self):
            return iter(())

        def close(self):
            pass

    monkeypatch.setattr("streaming.jobs.tail.tail", Empty)
    assert recsys("tail", "-n", "1", *extra) == 0
    assert tails == [("10.0.0.1:9092", "recs-x")]
    assert "tailing recs-x at 10.0.0.1:9092" in capsys.readouterr().err


def test_the_demo_hands_its_configuration_to_its_processes(tmp_path):
    from devtools.demo import Demo, DemoOptions

    cfg = load_config(env={}, overrides=["scoring.n=7", "stream.batch_max=99", "ops.log_format=json"])
    demo = Demo(DemoOptions(workdir=str(tmp_path)), cfg)
    s = demo.settings("127.0.0.1:9")
    assert s.batch_max == 99 and s.app_id.startswith("demo-") and s.bootstrap == "127.0.0.1:9"
    env = demo.env(s)
    child = load_config(env=env)
    assert child.scoring.n == 7 and child.stream == s and child.ops.log_format == "json"
