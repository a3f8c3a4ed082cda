"""Every client over a secured Kafka (issue 14): the project's broker with a SASL_SSL listener
(SCRAM-SHA-512) and a mutual-TLS one (`secure_kafka_broker`, tests/kafka_fixture.py).

The worker, `recsys topics`, `replay`, `tail` and `retrain` (publish, then the worker swaps) run
as the user runs them, configured by STREAMREC_KAFKA_* only; a wrong password, an untrusted CA
and a missing client certificate stop a command at start with one line and ExitCode.KAFKA_AUTH;
no password or token shows in any output or log.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.broker import issue_cert, make_ca
from recsys.data.datasets import write_canonical
from recsys.errors import ExitCode
from streaming.jobs.retrain import announce
from streaming.kafka import clients
from streaming.kafka.admin import list_topics
from streaming.topics import topics
from tests.helpers import clustered_events
from tests.stream_fixture import WorkerProcess, settings_env, stream_settings, wait_for

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]


def recsys(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    return subprocess.run(
        [sys.executable, "-m", "streaming.cli.main", *args],
        env={**clean, "PYTHONUNBUFFERED": "1", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def secrets_of(broker) -> list[str]:
    return [(broker.tls_dir / f"{who}.password").read_text().strip() for who in ("client", "broker")]


@pytest.mark.parametrize("mode", ["sasl_ssl", "mtls"])
def test_worker_topics_replay_tail_retrain_over_a_secured_kafka(secure_kafka_broker, tmp_path, mode):
    broker = secure_kafka_broker
    mtls = mode == "mtls"
    kafka_env = broker.client_env(mtls)
    assert kafka_env["STREAMREC_KAFKA_SECURITY_PROTOCOL"] == ("SSL" if mtls else "SASL_SSL")
    s = stream_settings(kafka_env["STREAMREC_BOOTSTRAP"], partitions=2, batch_within_s=0.02, item_foldin=False)
    token = "tok-" + secrets.token_hex(12)
    env = {**settings_env(s), **kafka_env, "STREAMREC_WEB_TOKEN": token}
    outputs: list[str] = []

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        r = recsys(*args, env=env, timeout=timeout)
        outputs.append(r.stdout + r.stderr)
        assert r.returncode == 0, f"recsys {' '.join(args)}: {r.stderr}"
        return r

    run("topics")
    with clients.using(broker.client_security(mtls)):
        assert {t.name for t in topics(s).core} <= set(list_topics(s.bootstrap))

    worker = WorkerProcess(s, tmp_path, tmp_path / "models", env=env).start()
    try:
        # The bearer token: every route but /health and /metrics needs it.
        assert worker.get("/recommendations/u1/", token="")[0] == 401
        assert worker.get("/ready", token="wrong")[0] == 401
        assert worker.get("/health", token="")[0] == 200 and worker.get("/metrics", token="")[0] == 200
        assert worker.get("/ready")[0] == 200

        events = tmp_path / "events.csv"
        write_canonical(clustered_events(n_users=40, per_user=8, seed=3), events)
        run("replay", str(events), "--no-progress")
        # tail: the last user's first list proves the worker went through the whole replay
        r = run("tail", "--from-beginning", "--user", "u39", "--max", "1", "--json", timeout=90)
        assert json.loads(r.stdout.strip().splitlines()[-1])["user"] == "u39"
        status, body = worker.get("/recommendations/u39/")
        assert status == 200 and body["user"] == "u39"

        r = run("retrain", "--once", "--model-dir", str(tmp_path / "models"), timeout=180)
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert result["result"] == "published" and result["users"] >= 30, result
        deadline = time.monotonic() + 30
        while worker.get("/health")[1]["model_version"] != result["version"]:
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(0.2)
        # A hostile announcement: refused, counted, logged; the published version keeps serving.
        refused = worker.metric("streamrec_model_loads_total", {"result": "refused"})
        with clients.using(broker.client_security(mtls)):
            announce(s.bootstrap, s.model_updates_topic, "../../etc")
        wait_for(
            lambda: worker.metric("streamrec_model_loads_total", {"result": "refused"}) > refused,
            30,
            "the announcement of ../../etc refused",
        )
        assert worker.get("/health")[1]["model_version"] == result["version"]
        outputs.append(str(worker.get("/metrics", token="")[1]))
    finally:
        worker.stop()
    # A replacement worker with an empty data dir: its state comes back through the bulk restore's
    # own consumer (streaming/worker/restore.py), which takes Faust's credentials.
    again = WorkerProcess(s, tmp_path, tmp_path / "models", env=env).start()
    try:
        status, body = again.get("/recommendations/u39/")
        assert status == 200 and body["user"] == "u39"
    finally:
        again.stop()
    log = worker.log_path.read_text(errors="replace")
    assert "serving model " + result["version"] in log
    assert "invalid model version '../../etc'" in log
    log2 = again.log_path.read_text(errors="replace")
    assert "Restoring state from changelog topics (bulk)" in log2, again.tail()
    log += log2
    outputs += [broker.log_file.read_text(errors="replace"), broker.out_file.read_text(errors="replace")]
    for secret in [*secrets_of(broker), token]:
        assert secret not in log and all(secret not in out for out in outputs)


@pytest.fixture(scope="module")
def wrong_password(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("pw") / "wrong"
    p.write_text("not-the-password-" + secrets.token_hex(6) + "\n")
    return p


@pytest.mark.parametrize("command", [["topics"], ["worker"], ["tail", "--max", "1"], ["demo"]])
def test_a_wrong_password_stops_the_command_at_start(secure_kafka_broker, wrong_password, tmp_path, command):
    env = {**secure_kafka_broker.client_env(), "STREAMREC_KAFKA_SASL_PASSWORD_FILE": str(wrong_password)}
    if command == ["worker"]:
        env |= {"STREAMREC_DATA_DIR": str(tmp_path / "w"), "STREAMREC_MODEL_DIR": str(tmp_path / "m")}
    t0 = time.monotonic()
    r = recsys(*command, env=env, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == ExitCode.KAFKA_AUTH, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("[")]  # the demo's narration
    assert len(lines) == 1, r.stderr
    assert "rejected the SCRAM-SHA-512 login of user 'streamrec'" in lines[0]
    assert took < 20  # one attempt, not a retry loop
    assert wrong_password.read_text().strip() not in r.stdout + r.stderr


def test_an_untrusted_ca_stops_the_command_at_start(secure_kafka_broker, tmp_path):
    make_ca(tmp_path / "other.key", tmp_path / "other.pem", "some other CA")
    for mtls in (False, True):
        env = {**secure_kafka_broker.client_env(mtls), "STREAMREC_KAFKA_SSL_CAFILE": str(tmp_path / "other.pem")}
        r = recsys("topics", env=env, timeout=60)
        assert r.returncode == ExitCode.KAFKA_AUTH, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "TLS certificate is not trusted" in lines[0], r.stderr


def test_mutual_tls_without_an_accepted_client_certificate_stops_at_start(secure_kafka_broker, tmp_path):
    env = secure_kafka_broker.client_env(mtls=True)
    del env["STREAMREC_KAFKA_SSL_CERTFILE"], env["STREAMREC_KAFKA_SSL_KEYFILE"]
    r = recsys("topics", env=env, timeout=60)
    assert r.returncode == ExitCode.KAFKA_AUTH and "a client certificate it does not accept" in r.stderr, r.stderr
    # a certificate from a CA the broker does not trust
    make_ca(tmp_path / "rogue.key", tmp_path / "rogue.pem", "rogue CA")
    issue_cert(
        tmp_path / "rogue.key", tmp_path / "rogue.pem", tmp_path / "c.key", tmp_path / "c.pem", "x", server=False
    )
    env |= {
        "STREAMREC_KAFKA_SSL_CERTFILE": str(tmp_path / "c.pem"),
        "STREAMREC_KAFKA_SSL_KEYFILE": str(tmp_path / "c.key"),
    }
    r = recsys("topics", env=env, timeout=60)
    assert r.returncode == ExitCode.KAFKA_AUTH and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_secured_broker_has_no_plaintext_client_listener(secure_kafka_broker):
    props = dict(
        line.split("=", 1) for line in (secure_kafka_broker.data_dir / "server.properties").read_text().splitlines()
    )
    assert props["advertised.listeners"].split(",") == [
        f"SASL_SSL://{secure_kafka_broker.bootstrap}",
        f"SSL://{secure_kafka_broker.mtls_bootstrap}",
    ]
    # TLS without the SASL login that listener wants: told so at start, not left retrying
    env = {
        "STREAMREC_BOOTSTRAP": secure_kafka_broker.bootstrap,
        "STREAMREC_KAFKA_SECURITY_PROTOCOL": "SSL",
        "STREAMREC_KAFKA_SSL_CAFILE": str(secure_kafka_broker.tls_dir / "ca.pem"),
    }
    r = recsys("topics", env=env, timeout=60)
    assert r.returncode == ExitCode.KAFKA_AUTH and "wants a SASL login" in r.stderr, r.stderr


def test_recsys_broker_start_prints_the_client_settings(secure_kafka_broker):
    d = str(secure_kafka_broker.data_dir)
    r = recsys("broker", "start", "--secure", "--mtls", "--data-dir", d, env={})
    assert r.returncode == 0, r.stderr
    exports = dict(ln.removeprefix("export ").split("=", 1) for ln in r.stdout.splitlines() if ln.startswith("export "))
    assert exports["STREAMREC_KAFKA_SASL_PASSWORD_FILE"] == str(secure_kafka_broker.tls_dir / "client.password")
    assert "STREAMREC_KAFKA_SSL_CERTFILE" in exports and "STREAMREC_KAFKA_SASL_MECHANISM" in exports
    assert all(secret not in r.stdout + r.stderr for secret in secrets_of(secure_kafka_broker))
    # its mode is fixed for its data dir
    r = recsys("broker", "start", "--mtls", "--data-dir", d, env={})
    assert r.returncode == ExitCode.USAGE and "was made both" in r.stderr


def test_no_plaintext_fallback_a_secured_client_on_a_plaintext_listener_stops_at_start(kafka_broker):
    base = {"STREAMREC_BOOTSTRAP": kafka_broker.bootstrap}
    r = recsys("topics", env={**base, "STREAMREC_KAFKA_SECURITY_PROTOCOL": "SSL"}, timeout=60)
    assert r.returncode == ExitCode.KAFKA_AUTH and "hung up during the TLS handshake" in r.stderr, r.stderr
    sasl = {"STREAMREC_KAFKA_SASL_USERNAME": "a", "STREAMREC_KAFKA_SASL_PASSWORD": "b"}
    r = recsys("topics", env={**base, **sasl, "STREAMREC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, timeout=60)
    assert r.returncode == ExitCode.KAFKA_AUTH and "does not take a SASL login" in r.stderr, r.stderr
