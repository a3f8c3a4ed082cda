"""The retrain's changelog reader on a real broker: librdkafka with decoding on its own thread (the
retrain's), aiokafka with the forked reader process (consumer and keys in a child, decoding here)
and aiokafka in one process give the same training data, with duplicates, tombstones and an
unreadable record; their failures reach the caller as the same clear errors."""

import logging
from typing import Any, cast

import numpy as np
import pytest

from recsys.confidence import ConfidenceConfig, ItemState, UserProfile
from recsys.errors import RecsysError
from streaming.jobs.changelog import EmptyChangelog, read_training_data
from streaming.worker.state import UserState, encode
from tests.stream_fixture import produce

pytestmark = pytest.mark.kafka

T = 1_700_000_000_000


def state(u: int, version: int) -> bytes:
    p = UserProfile()
    p.items = {f"i{(u * 3 + j + version) % 40}": ItemState(1.0 + j, T - 1000 * j, 1) for j in range(3 + u % 4)}
    p.last_ts = T
    return encode(UserState(p))


def rows(data) -> list[tuple]:
    """Rows as sorted (item, confidence) tuples: the row and column order follow the partitions'
    arrival order, the content must not."""
    m, items = data.matrix, data.items
    return sorted(
        tuple(sorted((items[c], float(v)) for c, v in zip(m.indices[a:b], m.data[a:b], strict=True)))
        for a, b in zip(m.indptr[:-1], m.indptr[1:], strict=True)
    )


READERS: dict[str, dict[str, Any]] = {
    "librdkafka": {"client": "librdkafka"},
    "librdkafka, decoding inline": {"client": "librdkafka", "decode_thread": False},
    "librdkafka, reader process": {"client": "librdkafka", "reader_process": True},
    "aiokafka, reader process": {"client": "aiokafka", "reader_process": True},
    "aiokafka, one process": {"client": "aiokafka", "reader_process": False},
}


def test_every_reader_gives_the_same_training_data(kafka_broker, topic_factory, caplog):
    topic = topic_factory(partitions=3, config={"cleanup.policy": "compact"})
    msgs: list[tuple[bytes | None, bytes]] = [(f"u{u}".encode(), state(u, 0)) for u in range(600)]
    msgs += [(f"u{u}".encode(), state(u, 1)) for u in range(0, 600, 5)]  # newer records of some users
    msgs += [(f"u{u}".encode(), cast(bytes, None)) for u in range(1, 600, 50)]  # tombstones: deleted users
    msgs.append((b"intruder", b'{"not": "a state record"}'))
    produce(kafka_broker.bootstrap, topic, msgs)
    got = {}
    for name, how in READERS.items():
        with caplog.at_level(logging.WARNING, "streamrec.retrain"):
            got[name] = read_training_data(kafka_broker.bootstrap, topic, ConfidenceConfig(), holdout_min=30, **how)
        assert "skipping unreadable state record for key b'intruder'" in caplog.text, name
        caplog.clear()
    a = got["librdkafka"]
    assert a.users + len(a.cases) == 600 - 12 and len(a.cases) == 30
    for name, b in got.items():
        assert a.phases["records"] == b.phases["records"] == len(msgs), name
        assert a.skipped == b.skipped == 1, name
        assert a.users == b.users, name
        assert sorted(c.user for c in a.cases) == sorted(c.user for c in b.cases), name
        assert sorted(a.items) == sorted(b.items), name
        assert rows(a) == rows(b), name
        assert np.isclose(a.matrix.sum(), b.matrix.sum()), name


def test_every_reader_passes_on_a_missing_or_empty_changelog_as_the_same_error(kafka_broker, topic_factory):
    empty = topic_factory(partitions=2, config={"cleanup.policy": "compact"})
    for how in READERS.values():
        with pytest.raises(EmptyChangelog, match="does not exist"):
            read_training_data(kafka_broker.bootstrap, "no-such-changelog-topic", ConfidenceConfig(), **how)
        with pytest.raises(EmptyChangelog, match="is empty"):
            read_training_data(kafka_broker.bootstrap, empty, ConfidenceConfig(), **how)
    assert issubclass(EmptyChangelog, RecsysError)


@pytest.mark.parametrize("mtls", [False, True], ids=["sasl_ssl", "mtls"])
def test_the_librdkafka_reader_takes_the_same_secured_kafka_settings(secure_kafka_broker, mtls):
    """The retrain's reader over SASL_SSL (SCRAM-SHA-512, the broker's own CA, host names checked)
    and over mutual TLS, configured by the one `[kafka]` section as every other client: the same
    training data as the aiokafka reader; a wrong password ends the read with KafkaAuthError."""
    from dataclasses import replace

    from streaming.kafka import clients
    from streaming.kafka.admin import ensure_topics

    broker = secure_kafka_broker
    bootstrap = broker.mtls_bootstrap if mtls else broker.bootstrap
    sec = broker.client_security(mtls)
    topic = f"secured-changelog-{'mtls' if mtls else 'sasl'}"
    with clients.using(sec):
        ensure_topics(bootstrap, {topic: 2}, config={"cleanup.policy": "compact"})
        produce(bootstrap, topic, [(f"u{u}".encode(), state(u, 0)) for u in range(50)])
        a = read_training_data(bootstrap, topic, ConfidenceConfig(), holdout_min=5, client="librdkafka")
        b = read_training_data(bootstrap, topic, ConfidenceConfig(), holdout_min=5, client="aiokafka")
    assert a.phases["records"] == b.phases["records"] == 50 and rows(a) == rows(b)
    if not mtls:
        wrong = replace(sec, sasl_password="wrong", sasl_password_file="")
        with clients.using(wrong), pytest.raises(clients.KafkaAuthError):
            read_training_data(bootstrap, topic, ConfidenceConfig(), stall_s=20, client="librdkafka")
