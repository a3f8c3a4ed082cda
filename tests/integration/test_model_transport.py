"""Models through Kafka (issue 14 part 3, `stream.model_transport = kafka`), on the real broker.

The retrain job (`recsys retrain --once`, its own model dir X) publishes a version to the
artifacts topic; workers with their own, empty model dirs (another host each) fetch, verify, cache
and serve it: their lists name it. A corrupt chunk and a missing one (put on the topic by the test,
as a broken or hostile publisher would) are refused, counted by reason and logged in one line; the
old version keeps serving. Hostile version names in announcements, manifests and chunk keys are
refused and never reach a path. `recsys models rollback|pin|unpin --announce` reach a worker that
never had the version. The same publish-and-swap over SASL_SSL (SCRAM-SHA-512). Retention: the
newest model_keep_versions versions stay, plus the current and the pinned one; older ones are
tombstoned.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.data.datasets import write_canonical
from recsys.model.store import ModelStore
from streaming.jobs.retrain import announce
from streaming.kafka import clients
from streaming.kafka.model_transport import (
    CHUNKS,
    INDEX,
    METADATA,
    Manifest,
    ModelTransport,
    TransportRefused,
    chunk_key,
    manifest_key,
    split,
)
from streaming.topics import ensure, topics
from tests.helpers import clustered_events, random_model
from tests.integration.test_reliability import FAST_GROUP
from tests.stream_fixture import (
    TopicReader,
    WorkerProcess,
    event_bytes,
    produce,
    settings_env,
    stream_settings,
    wait_for,
)

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]
CHUNK = 4096  # small, so even the test's models travel in several chunks


def recsys(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    r = subprocess.run(
        [sys.executable, "-m", "streaming.cli.main", *args],
        env={**clean, "PYTHONUNBUFFERED": "1", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert r.returncode == 0, f"recsys {' '.join(args)}: {r.stdout}\n{r.stderr}"
    return r


def retrain(data: Path, model_dir: Path, env: dict[str, str]) -> str:
    r = recsys("retrain", "--once", "--data", str(data), "--model-dir", str(model_dir), env=env)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["result"] == "published", result
    return result["version"]


def serving(worker: WorkerProcess) -> str | None:
    status, body = worker.get("/health", timeout=10)
    return body.get("model_version") if status == 200 and isinstance(body, dict) else None


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        hashlib.sha256((a / n).read_bytes()).digest() == hashlib.sha256((b / n).read_bytes()).digest() for n in names
    )


def only_versions(model_dir: Path) -> set[str]:
    """What a worker's store holds (temporary and hidden entries would be a leak)."""
    return {p.name for p in model_dir.iterdir() if p.name not in ("CURRENT", "PINNED")}


def bad_publish(transport: ModelTransport, store: ModelStore, version: str, spoil) -> None:
    """Put `version` of `store` on the topic as a broken publisher would: its chunk records passed
    through `spoil(records) -> records`, then a manifest made from the good files."""
    specs: dict = {}
    names = [*sorted(store.metadata(version)["files"]), METADATA]
    records = list(split(store.root / version, names, CHUNK, specs))
    offsets = transport.send_raw([(CHUNKS, k, v) for k, v in spoil(records)])
    manifest = Manifest(version, CHUNK, {n: specs[n] for n in names}, min(offsets), max(offsets))
    transport.send_raw([(INDEX, manifest_key(version), manifest.to_json())])


@pytest.fixture(scope="module")
def system(kafka_broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transport")
    s = stream_settings(
        kafka_broker.bootstrap,
        partitions=2,
        batch_within_s=0.02,
        item_foldin=False,
        model_transport="kafka",
        model_chunk_bytes=CHUNK,
    )
    ensure(s.bootstrap, topics(s).core)
    data = tmp / "events.csv"
    write_canonical(clustered_events(n_users=90, per_user=10, seed=5), data)
    env = {**settings_env(s), **FAST_GROUP}
    yield s, tmp, data, env


def test_retrain_publishes_and_a_worker_with_its_own_empty_model_dir_serves_it(system):
    s, tmp, data, env = system
    x = tmp / "retrain-models"  # the retrain job's host
    y = tmp / "worker-models"  # a worker's host: nothing shared with x
    worker = WorkerProcess(s, tmp, y, env=env).start()
    recs = TopicReader(s.bootstrap, s.recommendations_topic)
    try:
        assert serving(worker) is None  # nothing published yet: cold start
        version = retrain(data, x, env)
        wait_for(lambda: serving(worker) == version, 60, f"the worker serving {version}")
        assert same_files(x / version, y / version)
        assert only_versions(y) == {version} and ModelStore(y).current() == version
        # Its lists come from that version: a known user gets the model's items, named by it.
        produce(s.bootstrap, s.clickstream_topic, [event_bytes("u3", "i0")])
        recs.read_until(lambda rs: any(r.key == b"u3" for r in rs), timeout=30)
        rec = json.loads([r for r in recs.records if r.key == b"u3"][-1].value)
        assert rec["model_version"] == version and rec["items"], rec
        assert worker.metric("streamrec_model_fetch_refused_total") == 0
        log = worker.log_path.read_text(errors="replace")
        assert f"fetched model {version} from {s.model_artifacts_topic}" in log and "checksums verified" in log
        # On the topic: the manifest and the pointer on the index partition, every chunk under the size.
        index = ModelTransport.from_settings(s).index()
        assert index.current == version and version in index.manifests
        manifest = json.loads(index.manifests[version])
        assert manifest["files"]["item_factors.npy"]["chunks"] > 1
        chunks = TopicReader(s.bootstrap, s.model_artifacts_topic)
        try:
            rs = chunks.read_until(lambda rs: sum(r.partition == CHUNKS for r in rs) >= manifest["chunks"]["last"] + 1)
        finally:
            chunks.close()
        assert all(len(r.value) <= CHUNK for r in rs if r.partition == CHUNKS)
        assert {r.key.split(b"/")[0] for r in rs} == {b"chunk", b"manifest", b"pointer"}
    finally:
        recs.close()
        worker.stop()


def test_a_worker_started_later_with_an_empty_model_dir_fetches_the_current_version(system):
    s, tmp, data, env = system
    current = ModelTransport.from_settings(s).index().current
    assert current is not None  # the test before published one
    worker = WorkerProcess(s, tmp, tmp / "late-worker-models", env=env).start()
    try:
        wait_for(lambda: serving(worker) == current, 60, f"the late worker serving {current}")
        assert same_files(tmp / "retrain-models" / current, tmp / "late-worker-models" / current)
    finally:
        worker.stop()


def test_corrupt_missing_and_hostile_versions_are_refused_and_the_old_one_keeps_serving(system):
    s, tmp, data, env = system
    transport = ModelTransport.from_settings(s)
    current = transport.index().current
    y = tmp / "guarded-worker-models"
    worker = WorkerProcess(s, tmp, y, env=env).start()
    recs = TopicReader(s.bootstrap, s.recommendations_topic)
    side = ModelStore(tmp / "side")  # versions made by the test, never on the retrain host
    try:
        wait_for(lambda: serving(worker) == current, 60, f"serving {current}")

        def refusals(reason: str) -> float:
            return worker.metric("streamrec_model_fetch_refused_total", {"reason": reason})

        def flip(records):
            i = next(i for i, (k, _) in enumerate(records) if b"/item_factors.npy/2" in k)
            k, v = records[i]
            return [*records[:i], (k, v[:100] + bytes([v[100] ^ 0xFF]) + v[101:]), *records[i + 1 :]]

        def drop(records):
            return [r for r in records if not r[0].endswith(b"/yty.npy/0")]

        cases = [
            ("29990101T000000000000Z-corrupt", flip, "corrupt", "item_factors.npy fails the manifest's sha256"),
            ("29990101T000000000000Z-missing", drop, "missing", "1 of 1 chunks of yty.npy never came"),
        ]
        for version, spoil, reason, says in cases:
            side.save(random_model(n_items=2000, factors=16, version=version), publish=False)
            bad_publish(transport, side, version, spoil)
            before, loads = refusals(reason), worker.metric("streamrec_model_loads_total", {"result": "refused"})
            mark = worker.log_path.stat().st_size
            announce(s.bootstrap, s.model_updates_topic, version)
            wait_for(lambda: refusals(reason) == before + 1, 30, f"{version} refused as {reason}")
            assert worker.metric("streamrec_model_loads_total", {"result": "refused"}) == loads + 1
            lines = [ln for ln in worker.log_path.read_bytes()[mark:].decode().splitlines() if version in ln]
            assert len(lines) == 1 and says in lines[0] and f"still serving {current}" in lines[0], lines
            assert serving(worker) == current and only_versions(y) == {current}
        # The old version keeps serving: the next list names it.
        produce(s.bootstrap, s.clickstream_topic, [event_bytes("u4", "i1")])
        recs.read_until(lambda rs: any(r.key == b"u4" for r in rs), timeout=30)
        assert json.loads([r for r in recs.records if r.key == b"u4"][-1].value)["model_version"] == current

        # Hostile names. An announcement: refused before any lookup (check_version).
        loads = worker.metric("streamrec_model_loads_total", {"result": "refused"})
        announce(s.bootstrap, s.model_updates_topic, "../../etc")
        wait_for(
            lambda: worker.metric("streamrec_model_loads_total", {"result": "refused"}) == loads + 1,
            30,
            "../../etc refused",
        )
        # A manifest under a harmless key naming ../../etc inside; chunk and manifest keys with
        # hostile versions (the index skips them; a fetch never reads them).
        evil = "29990101T000000000000Z-evil"
        good = json.loads(transport.index().manifests[current])
        transport.send_raw(
            [
                (CHUNKS, chunk_key("../../etc", METADATA, 0), b"{}"),
                (CHUNKS, b"chunk/" + evil.encode() + b"/../../escape/0", b"owned"),
                (INDEX, b"manifest/../../etc", json.dumps({**good, "version": "../../etc"}).encode()),
                (INDEX, manifest_key(evil), json.dumps({**good, "version": "../../etc"}).encode()),
            ]
        )
        before = refusals("invalid")
        announce(s.bootstrap, s.model_updates_topic, evil)
        wait_for(lambda: refusals("invalid") == before + 1, 30, f"{evil}'s manifest refused as invalid")
        assert serving(worker) == current and only_versions(y) == {current}
        assert not list(tmp.rglob("escape")) and not (y.parent / "etc").exists()
        assert "../../etc" not in transport.index().manifests
        log = worker.log_path.read_text(errors="replace")
        assert "invalid model version '../../etc'" in log
    finally:
        recs.close()
        worker.stop()


def test_rollback_pin_and_unpin_reach_a_worker_that_never_had_the_version(system):
    s, tmp, data, env = system
    x = tmp / "retrain-models"
    old = ModelStore(x).current()
    new = retrain(data, x, env)  # a second version: the rollback goes back to the first
    assert old is not None and new > old
    y = tmp / "fresh-worker-models"
    worker = WorkerProcess(s, tmp, y, env=env).start()
    try:
        wait_for(lambda: serving(worker) == new, 60, f"serving {new}")
        assert only_versions(y) == {new}  # it never had the old one
        r = recsys("models", "rollback", "--announce", "--model-dir", str(x), env=env)
        assert r.stdout.strip() == old
        wait_for(lambda: serving(worker) == old, 60, f"the worker following the rollback to {old}")
        assert same_files(x / old, y / old)
        assert ModelTransport.from_settings(s).index().current == old
        # From a host without the store (an operator's laptop): pin and unpin on the topic's versions.
        laptop = tmp / "laptop-models"
        recsys("models", "pin", new, "--announce", "--model-dir", str(laptop), env=env)
        wait_for(lambda: serving(worker) == new, 60, f"the worker following the pin of {new}")
        index = ModelTransport.from_settings(s).index()
        assert index.pinned == new and index.current == old
        # Pinned: a retrain's announcement of another version is ignored.
        announce(s.bootstrap, s.model_updates_topic, old)
        recsys("models", "unpin", "--announce", "--model-dir", str(laptop), env=env)
        wait_for(lambda: serving(worker) == old, 60, "the worker back on the current version once unpinned")
        assert ModelTransport.from_settings(s).index().pinned is None
        assert not laptop.exists() or not ModelStore(laptop).versions()
        log = worker.log_path.read_text(errors="replace")
        assert f"ignoring announced model {old}: {new} is pinned" in log
    finally:
        worker.stop()


def test_old_versions_are_tombstoned_past_the_retention_but_the_current_and_pinned_stay(kafka_broker, tmp_path):
    s = stream_settings(kafka_broker.bootstrap, partitions=1, model_transport="kafka", model_keep_versions=2)
    ensure(s.bootstrap, [topics(s).model_artifacts])
    transport = ModelTransport.from_settings(s)
    store = ModelStore(tmp_path / "x")
    versions = [f"2026010{i}T000000000000Z-aaaaaa" for i in range(1, 6)]
    for v in versions:
        store.save(random_model(n_items=50, factors=8, version=v))
    transport.publish(store, versions[0])
    transport.point("pinned", versions[0])
    for v in versions[1:]:
        transport.publish(store, v)
    index = transport.index()
    assert index.versions == [versions[0], *versions[-2:]] and index.current == versions[-1]
    # A dropped version's chunks were tombstoned too: fetching it is refused as missing.
    with pytest.raises(TransportRefused, match="is not on"):
        transport.fetch(ModelStore(tmp_path / "y"), versions[1])
    reader = TopicReader(s.bootstrap, s.model_artifacts_topic)
    try:
        rs = reader.read_until(lambda rs: any(r.value is None and r.partition == CHUNKS for r in rs))
    finally:
        reader.close()
    dropped = {r.key for r in rs if r.value is None}
    assert manifest_key(versions[1]) in dropped and chunk_key(versions[1], "yty.npy", 0) in dropped
    assert not any(versions[0].encode() in k or versions[-1].encode() in k for k in dropped)
    transport.fetch(ModelStore(tmp_path / "y"), versions[0])  # the pinned one is whole


def test_a_secured_kafka_carries_the_model_to_a_worker_without_the_retrain_store(secure_kafka_broker, tmp_path):
    broker = secure_kafka_broker
    kafka_env = broker.client_env(False)
    assert kafka_env["STREAMREC_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert kafka_env["STREAMREC_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    s = stream_settings(
        kafka_env["STREAMREC_BOOTSTRAP"],
        partitions=2,
        item_foldin=False,
        model_transport="kafka",
        model_chunk_bytes=CHUNK,
    )
    env = {**settings_env(s), **kafka_env, **FAST_GROUP}
    recsys("topics", env=env)
    data = tmp_path / "events.csv"
    write_canonical(clustered_events(n_users=60, per_user=8, seed=9), data)
    worker = WorkerProcess(s, tmp_path, tmp_path / "worker-models", env=env).start()
    try:
        version = retrain(data, tmp_path / "retrain-models", env)
        wait_for(lambda: serving(worker) == version, 60, f"the worker serving {version} over SASL_SSL")
        assert same_files(tmp_path / "retrain-models" / version, tmp_path / "worker-models" / version)
        with clients.using(broker.client_security(False)):
            assert ModelTransport.from_settings(s).index().current == version
    finally:
        worker.stop()
    assert "fetched model " + version in worker.log_path.read_text(errors="replace")
