"""Secured Kafka settings, secrets kept out of what the project shows, hostile model versions,
and the HTTP bearer token (issue 14); the same against a real secured broker:
tests/integration/test_secure_kafka.py."""

import asyncio
import json
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from recsys import config as C
from recsys.errors import ConfigError, ModelStoreError
from recsys.model.store import ModelStore, check_version
from streaming.kafka import clients
from tests.helpers import random_model

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Pa55-word"
SASL_ENV = {
    "STREAMREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "STREAMREC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "STREAMREC_KAFKA_SASL_USERNAME": "alice",
    "STREAMREC_KAFKA_SASL_PASSWORD": SECRET,
    "STREAMREC_WEB_TOKEN": SECRET + "-token",
}
HOSTILE = ["../../etc", "..", "../x", "a/b", "/etc/passwd", ".hidden", "a..b", "x\nrefused model y", "", "a" * 200]


def test_kafka_settings_come_from_the_environment():
    k = C.load_config(env=SASL_ENV).kafka
    assert (k.security_protocol, k.sasl_mechanism, k.sasl_username, k.sasl_password) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        "alice",
        SECRET,
    )
    assert k.sasl and k.tls and k.secured and C.KafkaSecurity().secured is False


@pytest.mark.parametrize(
    "env, message",
    [
        ({"STREAMREC_KAFKA_SECURITY_PROTOCOL": "TLS"}, "kafka.security_protocol must be one of"),
        ({**SASL_ENV, "STREAMREC_KAFKA_SASL_MECHANISM": "GSSAPI"}, "kafka.sasl_mechanism must be one of"),
        ({"STREAMREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "STREAMREC_KAFKA_SASL_USERNAME": "a"}, "sasl_password"),
        ({**SASL_ENV, "STREAMREC_KAFKA_SASL_PASSWORD_FILE": "/x"}, "one of them"),
        ({"STREAMREC_KAFKA_SECURITY_PROTOCOL": "SSL", "STREAMREC_KAFKA_SSL_CERTFILE": "c.pem"}, "go together"),
    ],
)
def test_bad_kafka_settings_name_the_setting_never_the_secret(env, message):
    with pytest.raises(ConfigError) as e:
        C.load_config(env=env)
    assert message in str(e.value) and SECRET not in str(e.value)


def test_secrets_are_masked_in_recsys_config_and_repr(tmp_path):
    cfg = C.load_config(env=SASL_ENV)
    assert SECRET not in repr(cfg) and SECRET not in cfg.to_toml() and SECRET not in json.dumps(cfg.as_dict())
    assert cfg.as_dict()["kafka"]["sasl_password"] == C.SECRET_MASK
    assert cfg.as_dict(reveal=True)["kafka"]["sasl_password"] == SECRET
    # a child process still gets the real value
    assert C.load_config(env=cfg.to_env()).kafka.sasl_password == SECRET
    for extra in ([], ["--json"]):
        r = subprocess.run(
            [sys.executable, "-m", "streaming.cli.main", "config", *extra],
            env={"PATH": "/usr/bin:/bin", **SASL_ENV},
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert SECRET not in r.stdout + r.stderr and "alice" in r.stdout
    # what `recsys config` prints reads back, with the secret unset rather than a mask as the password
    f = tmp_path / "c.toml"
    f.write_text(C.load_config(env={"STREAMREC_WEB_TOKEN": SECRET}).to_toml())
    assert C.load_config(f, env={}).stream.web_token == ""


def test_client_arguments_for_each_library(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    sec = C.KafkaSecurity(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="alice", sasl_password_file=str(pw)
    )
    kp = clients.kafka_python(sec)
    assert kp["security_protocol"] == "SASL_SSL" and kp["sasl_plain_password"] == SECRET
    assert kp["sasl_mechanism"] == "SCRAM-SHA-256" and isinstance(kp["ssl_context"], ssl.SSLContext)
    assert kp["ssl_context"].check_hostname and kp["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert clients.aiokafka(sec).keys() == kp.keys()
    creds = clients.faust(sec)["broker_credentials"]
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-256"
    assert SECRET not in repr(creds)
    assert clients.kafka_python(C.KafkaSecurity()) == {"security_protocol": "PLAINTEXT"}
    assert clients.faust(C.KafkaSecurity()) == {}
    with clients.using(sec):
        assert clients.kafka_python()["sasl_plain_username"] == "alice"


def test_librdkafka_gets_the_same_settings_and_accepts_them(tmp_path):
    """The retrain's changelog reader (librdkafka, its own TLS): the same CA, client certificate,
    host name rule and SASL login as the other clients, in librdkafka's names; a consumer made
    with them loads the files (librdkafka reads them when the client is made)."""
    from devtools.broker import issue_cert, make_ca

    make_ca(tmp_path / "ca.key", tmp_path / "ca.pem", "test-ca")
    issue_cert(tmp_path / "ca.key", tmp_path / "ca.pem", tmp_path / "c.key", tmp_path / "c.pem", "c", server=False)
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    sasl = C.KafkaSecurity(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="alice",
        sasl_password_file=str(pw),
        ssl_cafile=str(tmp_path / "ca.pem"),
    )
    mtls = C.KafkaSecurity(
        security_protocol="SSL",
        ssl_cafile=str(tmp_path / "ca.pem"),
        ssl_certfile=str(tmp_path / "c.pem"),
        ssl_keyfile=str(tmp_path / "c.key"),
        ssl_check_hostname=False,
    )
    assert clients.librdkafka(sasl) == {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(tmp_path / "ca.pem"),
        "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": SECRET,
    }
    assert clients.librdkafka(mtls) == {
        "security.protocol": "SSL",
        "ssl.ca.location": str(tmp_path / "ca.pem"),
        "ssl.endpoint.identification.algorithm": "none",
        "ssl.certificate.location": str(tmp_path / "c.pem"),
        "ssl.key.location": str(tmp_path / "c.key"),
    }
    assert clients.librdkafka(C.KafkaSecurity(security_protocol="SSL"))["ssl.ca.location"] == "probe"  # the system's
    assert clients.librdkafka(C.KafkaSecurity()) == {"security.protocol": "PLAINTEXT"}
    for sec in (sasl, mtls):
        with clients.using(sec):
            clients.BulkReader("127.0.0.1:9", "t", "test").close()  # librdkafka took every property
    with pytest.raises(ConfigError, match="kafka.ssl_cafile"):  # a bad file names its setting, as for the others
        clients.librdkafka(C.KafkaSecurity(security_protocol="SSL", ssl_cafile=str(tmp_path / "missing.pem")))


def test_unreadable_tls_files_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="kafka.ssl_cafile"):
        clients.kafka_python(C.KafkaSecurity(security_protocol="SSL", ssl_cafile=str(tmp_path / "none.pem")))
    sec = C.KafkaSecurity(
        security_protocol="SASL_PLAINTEXT", sasl_username="a", sasl_password_file=str(tmp_path / "none")
    )
    with pytest.raises(ConfigError, match="kafka.sasl_password_file"):
        clients.kafka_python(sec)


@pytest.mark.parametrize("version", HOSTILE + [None, 3, ["v"]])
def test_hostile_versions_are_refused_by_the_store(tmp_path, version):
    with pytest.raises(ModelStoreError, match="invalid model version"):
        check_version(version)
    store = ModelStore(tmp_path / "models")
    store.save(random_model(version="v1"))
    if version is not None:  # pin(None) is unpin
        with pytest.raises(ModelStoreError):
            store.pin(version)
    with pytest.raises(ModelStoreError):
        store.metadata(version)
    assert not (tmp_path / "models" / "PINNED").exists()


def test_valid_versions_pass():
    for v in ("v1", "20250101T000000123456Z-abc123", "model_2.1-rc"):
        assert check_version(v) == v


def test_a_tampered_pointer_is_refused(tmp_path):
    store = ModelStore(tmp_path)
    store.save(random_model(version="v1"))
    (tmp_path / "CURRENT").write_text("../../etc\n")
    with pytest.raises(ModelStoreError, match="invalid model version"):
        store.current()


@pytest.mark.parametrize("action", ["pin", "show"])
def test_the_cli_refuses_hostile_versions(tmp_path, action):
    ModelStore(tmp_path / "m").save(random_model(version="v1"))
    r = subprocess.run(
        [sys.executable, "-m", "streaming.cli.main", "models", action, "../../etc", "--model-dir", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 2 and "invalid model version '../../etc'" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1


def test_announcements_of_hostile_versions_are_refused_and_counted(tmp_path, caplog):
    from recsys.confidence import ConfidenceConfig
    from recsys.serving.scoring import ScoringConfig
    from streaming.worker.metrics import WorkerMetrics
    from streaming.worker.serving import ModelUpdates, ServingModel

    (tmp_path / "etc").mkdir()  # what ../etc would reach from the store
    store = ModelStore(tmp_path / "store" / "models")
    store.save(random_model(version="v1"))
    metrics = WorkerMetrics(CollectorRegistry())
    serving = ServingModel(metrics)
    updates = ModelUpdates(store, serving, ConfidenceConfig(), ScoringConfig(), with_user_gram=False)
    assert updates.load_initial() and serving.version == "v1"

    def refused() -> float:
        return metrics.registry.get_sample_value("streamrec_model_loads_total", {"result": "refused"}) or 0.0

    for i, version in enumerate(HOSTILE, start=1):
        payload = json.dumps({"version": version}).encode()
        with caplog.at_level("ERROR", logger="streamrec.models"):
            assert asyncio.run(updates.on_announcement(payload)) is False
        assert refused() == i and serving.version == "v1"
    lines = [r.getMessage() for r in caplog.records if "invalid model version" in r.getMessage()]
    assert len(lines) == len(HOSTILE) - 1  # "" is refused as "no version"
    assert all("\n" not in line for line in lines)


def test_bearer_token_check():
    from streaming.worker.auth import authorized

    assert authorized("Bearer tok", "tok") and authorized("bearer  tok", "tok")
    assert not authorized(None, "tok") and not authorized("Bearer nope", "tok") and not authorized("Basic tok", "tok")
