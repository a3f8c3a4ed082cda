"""`recsys demo` end to end, as the README runs it: its own broker, worker, retrains, replay."""

import os
import subprocess
import sys

import pytest

from devtools.broker import free_port

pytestmark = pytest.mark.kafka


def test_demo_runs_and_ends_cleanly(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "STREAMREC_BOOTSTRAP"}
    env["STREAMREC_KAFKA_DIR"] = str(tmp_path / "kafka")  # its own broker, started and stopped by the demo
    work = tmp_path / "demo"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "streaming.cli.main",
            "demo",
            "--duration",
            "15",
            "--retrain-every",
            "8",
            "--no-history",
            "--rate",
            "100",
            "--web-port",
            str(free_port()),
            "--workdir",
            str(work),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    for expected in (
        "Kafka 4.4.0 ready",
        "initial model",
        "worker ready",
        "summary:",
        "worker and retrain loop stopped",
        "Kafka stopped",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out[-3000:]}"
    lines = [line for line in r.stdout.splitlines() if "user=" in line and "model=" in line]
    assert lines, "no recommendation was printed"
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
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "streaming.cli.main",
            "demo",
            "--duration",
            "12",
            "--retrain-every",
            "6",
            "--no-history",
            "--rate",
            "100",
            "--web-port",
            str(free_port()),
            "--workdir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "user=" in r.stdout, out[-3000:]  # it did run: recommendations were printed
    made = set(list_topics(kafka_broker.bootstrap)) - before
    assert {t for t in made if not t.startswith("__")} == set()  # __consumer_offsets is the broker's own
