"""`recsys demo` end to end, as the README runs it: its own broker, worker, retrains, replay."""

import os
import subprocess
import sys

import pytest

from devtools.broker import free_port

pytestmark = pytest.mark.kafka


def run_demo(env: dict[str, str], work, duration: int, retrain_every: int) -> subprocess.CompletedProcess:
    """`recsys demo` for a short run without the history replay; asserts it exited 0."""
    argv = [
        sys.executable,
        "-m",
        "streaming.cli.main",
        "demo",
        "--duration",
        str(duration),
        "--retrain-every",
        str(retrain_every),
        "--no-history",
        "--rate",
        "100",
        "--web-port",
        str(free_port()),
        "--workdir",
        str(work),
    ]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r


def test_demo_runs_and_ends_cleanly(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "STREAMREC_BOOTSTRAP"}
    env["STREAMREC_KAFKA_DIR"] = str(tmp_path / "kafka")  # its own broker, started and stopped by the demo
    work = tmp_path / "demo"
    r = run_demo(env, work, duration=15, retrain_every=8)
    out = r.stdout + r.stderr
    for expected in (
        "Kafka 4.4.0 ready",
        "initial model",
        "catalogue: 41887 item records produced",  # Taobao's items with their category ids
        "worker ready",
        "filtered request GET",
        "category=",
        "summary:",
        "worker and retrain loop stopped",
        "Kafka stopped",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out[-3000:]}"
    lines = [line for line in r.stdout.splitlines() if "user=" in line and "model=" in line]
    assert lines, "no recommendation was printed"
    answer = out[out.index("filtered request GET") :].splitlines()[1]
    assert "-> ['" in answer, answer  # the filtered list on request is not empty
    # Nothing left running: no process still has this run's work directory on its command line.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(work) not in ps and str(tmp_path / "kafka") not in ps


def test_demo_on_a_given_kafka_deletes_every_topic_it_made(kafka_broker, tmp_path):
    """With STREAMREC_BOOTSTRAP the demo uses that Kafka and leaves it as it found it: its
    clickstream, recommendations, dead letters, model updates, state changelog and both
    new-item topics are all deleted at the end."""
    from streaming.kafka.admin import list_topics

    before = set(list_topics(kafka_broker.bootstrap))
    env = {**os.environ, "STREAMREC_BOOTSTRAP": kafka_broker.bootstrap}
    r = run_demo(env, tmp_path / "demo", duration=12, retrain_every=6)
    assert "user=" in r.stdout, (r.stdout + r.stderr)[-3000:]  # it did run: recommendations were printed
    made = set(list_topics(kafka_broker.bootstrap)) - before
    assert {t for t in made if not t.startswith("__")} == set()  # __consumer_offsets is the broker's own
