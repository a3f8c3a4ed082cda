"""The retrain's changelog reader on a real broker: the forked reader process (consumer and keys in
a child, decoding here) gives the same training data as the read in one process, with duplicates,
tombstones and an unreadable record; its failures reach the caller as the same clear errors."""

import logging
from typing import cast

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


def test_the_reader_process_gives_the_same_training_data_as_one_process(kafka_broker, topic_factory, caplog):
    topic = topic_factory(partitions=3, config={"cleanup.policy": "compact"})
    msgs: list[tuple[bytes | None, bytes]] = [(f"u{u}".encode(), state(u, 0)) for u in range(600)]
    msgs += [(f"u{u}".encode(), state(u, 1)) for u in range(0, 600, 5)]  # newer records of some users
    msgs += [(f"u{u}".encode(), cast(bytes, None)) for u in range(1, 600, 50)]  # tombstones: deleted users
    msgs.append((b"intruder", b'{"not": "a state record"}'))
    produce(kafka_broker.bootstrap, topic, msgs)
    got = {}
    for child in (True, False):
        with caplog.at_level(logging.WARNING, "streamrec.retrain"):
            got[child] = read_training_data(
                kafka_broker.bootstrap, topic, ConfidenceConfig(), holdout_min=30, reader_process=child
            )
        assert "skipping unreadable state record for key b'intruder'" in caplog.text
        caplog.clear()
    a, b = got[True], got[False]
    assert a.phases["records"] == b.phases["records"] == len(msgs)
    assert a.skipped == b.skipped == 1
    assert a.users + len(a.cases) == 600 - 12 and a.users == b.users
    assert sorted(c.user for c in a.cases) == sorted(c.user for c in b.cases) and len(a.cases) == 30
    assert sorted(a.items) == sorted(b.items)
    assert rows(a) == rows(b)
    assert np.isclose(a.matrix.sum(), b.matrix.sum())


def test_the_reader_process_passes_on_a_missing_or_empty_changelog_as_the_same_error(kafka_broker, topic_factory):
    empty = topic_factory(partitions=2, config={"cleanup.policy": "compact"})
    for child in (True, False):
        with pytest.raises(EmptyChangelog, match="does not exist"):
            read_training_data(
                kafka_broker.bootstrap, "no-such-changelog-topic", ConfidenceConfig(), reader_process=child
            )
        with pytest.raises(EmptyChangelog, match="is empty"):
            read_training_data(kafka_broker.bootstrap, empty, ConfidenceConfig(), reader_process=child)
    assert issubclass(EmptyChangelog, RecsysError)
