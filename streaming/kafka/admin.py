"""Create / delete Kafka topics with kafka-python's admin client, waiting until done.

Topic creation is asynchronous in KRaft: CreateTopics returns once the controller
has accepted it, but the broker's metadata may lag. Callers (tests, workers about
to produce) want the topic *usable*, so both helpers poll metadata, bounded by
``timeout``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from kafka import KafkaAdminClient
from kafka.errors import KafkaTimeoutError, TopicAlreadyExistsError, UnknownTopicOrPartitionError, for_code

from streaming.kafka import clients


def _admin(bootstrap: str, timeout: float) -> KafkaAdminClient:
    ms = int(max(timeout, 1.0) * 1000)
    return KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="streamrec-topics",
        request_timeout_ms=ms,
        bootstrap_timeout_ms=ms,
        **clients.kafka_python(),
    )


def _partition_counts(admin: KafkaAdminClient, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Topic -> (partitions, partitions with a leader); absent topics are omitted."""
    out = {}
    for t in admin.describe_topics(list(names)):
        if t.get("error_code", 0) == 0:
            parts = t.get("partitions") or []
            led = sum(1 for p in parts if p.get("error_code", 0) == 0 and p.get("leader_id", -1) >= 0)
            out[t["name"]] = (len(parts), led)
    return out


def ensure_topics(
    bootstrap: str,
    specs: Mapping[str, int],
    replication: int = 1,
    config: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Create the topics in ``specs`` (name -> partitions) that don't exist yet.

    ``config`` (topic-level configs, e.g. ``{"cleanup.policy": "compact"}``) applies to
    the topics created here only; existing topics are left untouched. Returns the
    names that were created. Raises ``ValueError`` if an existing topic has a
    different partition count, ``KafkaTimeoutError`` if a topic is not fully usable
    (every partition led) within ``timeout`` seconds.
    """
    if not specs:
        return []
    deadline = time.monotonic() + timeout
    with _admin(bootstrap, timeout) as admin:
        existing = set(admin.list_topics())
        missing = {n: p for n, p in specs.items() if n not in existing}
        created: list[str] = []
        if missing:
            req = {
                n: {"num_partitions": p, "replication_factor": replication, "configs": dict(config or {})}
                for n, p in missing.items()
            }
            res = admin.create_topics(req, timeout_ms=int(timeout * 1000), raise_errors=False)
            for t in res["topics"]:
                err = for_code(t["error_code"])
                if t["error_code"] == 0:
                    created.append(t["name"])
                # TopicAlreadyExists: another creator won a race since list_topics(); fine.
                elif err is not TopicAlreadyExistsError:
                    raise err(f"creating topic {t['name']!r}: {t.get('error_message')}")
        while True:
            counts = _partition_counts(admin, specs)
            for name in existing & specs.keys():
                # A pre-existing topic won't change size by waiting; say so now.
                if name in counts and counts[name][0] != specs[name]:
                    raise ValueError(f"topic {name!r} exists with {counts[name][0]} partitions, wanted {specs[name]}")
            pending = {n: counts.get(n, (0, 0))[1] for n, want in specs.items() if counts.get(n) != (want, want)}
            if not pending:
                return created
            if time.monotonic() >= deadline:
                raise KafkaTimeoutError(f"topics not ready after {timeout:g}s (name: led partitions): {pending}")
            time.sleep(0.1)


def delete_topics(bootstrap: str, names: Iterable[str], timeout: float = 30.0) -> None:
    """Delete ``names`` (absent ones are ignored) and wait until metadata no longer lists them."""
    names = list(names)
    if not names:
        return
    deadline = time.monotonic() + timeout
    with _admin(bootstrap, timeout) as admin:
        present = [n for n in names if n in set(admin.list_topics())]
        if present:
            res = admin.delete_topics(present, timeout_ms=int(timeout * 1000), raise_errors=False)
            for t in res["topics"]:
                err = for_code(t["error_code"])
                if t["error_code"] != 0 and err is not UnknownTopicOrPartitionError:
                    raise err(f"deleting topic {t['name']!r}: {t.get('error_message')}")
        while True:
            left = set(names) & set(admin.list_topics())
            if not left:
                return
            if time.monotonic() >= deadline:
                raise KafkaTimeoutError(f"topics still present after {timeout:g}s: {sorted(left)}")
            time.sleep(0.1)


def list_topics(bootstrap: str, timeout: float = 30.0) -> list[str]:
    """The topics the cluster has (internal ones included)."""
    with _admin(bootstrap, timeout) as admin:
        return sorted(admin.list_topics())
