"""Model versions in chunks (streaming/kafka/model_transport.py), without Kafka: a version split
into chunk records and a manifest, assembled into another store, checked through; every way a
chunk, a file or a manifest can be wrong is refused with its reason and leaves nothing behind."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from recsys.errors import ModelStoreError
from recsys.model.store import ModelStore
from streaming.kafka.model_transport import (
    METADATA,
    Manifest,
    TransportRefused,
    chunk_key,
    install,
    parse_chunk_key,
    parse_manifest,
    split,
)
from tests.helpers import random_model

V = "20260101T000000000000Z-abcdef"
CHUNK = 4096


@pytest.fixture
def source(tmp_path):
    store = ModelStore(tmp_path / "x")
    store.save(random_model(n_items=500, factors=16, version=V), user_gram=np.eye(16))
    return store


def chunked(store: ModelStore, version: str = V, chunk: int = CHUNK) -> tuple[list[tuple[bytes, bytes]], Manifest]:
    specs: dict = {}
    names = [*sorted(store.metadata(version)["files"]), METADATA]
    records = list(split(store.root / version, names, chunk, specs))
    return records, Manifest(version, chunk, {n: specs[n] for n in names}, 0, len(records) - 1)


def test_a_version_goes_through_chunks_into_another_store_byte_for_byte(source, tmp_path):
    records, manifest = chunked(source)
    files = [*source.metadata(V)["files"], METADATA]
    assert set(manifest.files) == set(files) and "user_gram.npy" in files
    assert all(len(v) <= CHUNK for _, v in records)
    assert len(records) == sum(f.chunks for f in manifest.files.values()) > len(files)  # several chunks a file
    target = ModelStore(tmp_path / "y")
    random.Random(1).shuffle(records)  # in any order
    install(target, V, records, parse_manifest(V, manifest.to_json()))
    for name in files:
        assert (target.root / V / name).read_bytes() == (source.root / V / name).read_bytes()
    model = target.load(V)
    np.testing.assert_array_equal(model.item_factors, source.load(V).item_factors)
    assert target.user_gram(V) is not None
    assert sorted(p.name for p in target.root.iterdir()) == [V]  # no temporary left


def test_a_chunk_size_that_divides_a_file_exactly_and_empty_files(tmp_path):
    store = ModelStore(tmp_path / "x")
    store.save(random_model(n_items=64, factors=16, version=V))  # item_factors: 64*16*4 + 128 bytes
    size = (store.root / V / "item_factors.npy").stat().st_size
    records, manifest = chunked(store, chunk=size // 2)
    assert manifest.files["item_factors.npy"].chunks == 2
    target = ModelStore(tmp_path / "y")
    install(target, V, records, manifest)
    assert target.load(V).n_items == 64


def refused(store: ModelStore, records, manifest, reason: str, match: str) -> TransportRefused:
    with pytest.raises(TransportRefused, match=match) as e:
        install(store, V, records, manifest)
    assert e.value.reason == reason
    assert not store.root.exists() or list(store.root.iterdir()) == []  # nothing half-written stays
    return e.value


def test_a_flipped_byte_in_a_chunk_is_refused_as_corrupt(source, tmp_path):
    records, manifest = chunked(source)
    i = next(i for i, (k, _) in enumerate(records) if b"item_factors.npy/1" in k)
    key, value = records[i]
    records[i] = (key, value[:-1] + bytes([value[-1] ^ 0xFF]))
    refused(ModelStore(tmp_path / "y"), records, manifest, "corrupt", "item_factors.npy fails the manifest's sha256")


def test_a_short_chunk_is_refused_as_corrupt(source, tmp_path):
    records, manifest = chunked(source)
    key, value = records[0]
    records[0] = (key, value[:-10])
    refused(ModelStore(tmp_path / "y"), records, manifest, "corrupt", "chunk 0 of .* has 4086 bytes, expected 4096")


def test_a_missing_chunk_is_refused(source, tmp_path):
    records, manifest = chunked(source)
    del records[3]
    refused(ModelStore(tmp_path / "y"), records, manifest, "missing", "1 of .* chunks of .* never came")


def test_a_tombstoned_chunk_counts_as_missing(source, tmp_path):
    records, manifest = chunked(source)
    records[-1] = (records[-1][0], None)  # type: ignore[assignment]
    refused(ModelStore(tmp_path / "y"), records, manifest, "missing", f"chunks of {METADATA} never came")


def test_chunks_of_other_versions_and_foreign_keys_are_ignored(source, tmp_path):
    records, manifest = chunked(source)
    noise = [
        (chunk_key("20250101T000000Z-other", "item_ids.txt", 0), b"x" * 10),
        (b"chunk/../../etc/item_ids.txt/0", b"owned"),
        (chunk_key(V, "../../escape.txt", 0), b"owned"),
        (chunk_key(V, "item_ids.txt", 10_000), b"owned"),
        (b"not a key", b"x"),
        (None, b"x"),
    ]
    target = ModelStore(tmp_path / "y")
    install(target, V, noise + records, manifest)
    assert target.load(V).version == V
    assert not (tmp_path / "escape.txt").exists() and not list(tmp_path.rglob("escape.txt"))


def test_consistent_chunks_of_a_bad_model_are_refused_by_the_stores_own_checks(tmp_path):
    """Bytes that match the manifest but not the model's own metadata: the store's load refuses."""
    store = ModelStore(tmp_path / "x")
    store.save(random_model(version=V))
    f = store.root / V / "item_norms.npy"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF
    f.write_bytes(bytes(raw))  # metadata.json's sha256 no longer matches; the manifest is made after
    records, manifest = chunked(store)
    refused(ModelStore(tmp_path / "y"), records, manifest, "unverified", "item_norms.npy fails its sha256")


def test_a_manifest_naming_another_version_in_its_metadata_is_refused(source, tmp_path):
    other = "20260101T000000000000Z-fedcba"
    source.save(random_model(version=other))
    records, manifest = chunked(source, other)  # then offered as V
    records = [(chunk_key(V, *parse_chunk_key(k)[1:]), v) for k, v in records]  # type: ignore[misc]
    manifest = Manifest(V, manifest.chunk_size, manifest.files, manifest.first, manifest.last)
    refused(ModelStore(tmp_path / "y"), records, manifest, "unverified", f"metadata names version '{other}'")


def manifest_body(source) -> dict:
    return json.loads(chunked(source)[1].to_json())


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda b: b.update(version="../../etc"), "invalid model version '../../etc'"),
        (lambda b: b.update(version="/etc"), "invalid model version '/etc'"),
        (lambda b: b.update(version="20260101T000000000000Z-other"), "it names version"),
        (lambda b: b["files"].update({"../../escape.txt": b["files"]["yty.npy"]}), "is not one of a model's files"),
        (lambda b: b["files"].pop("item_ids.txt"), "it lacks item_ids.txt"),
        (lambda b: b["files"]["yty.npy"].update(chunks=99), "99 chunks cannot hold"),
        (lambda b: b["files"]["yty.npy"].update(sha256="../"), "sha256 is not 64 hex digits"),
        (lambda b: b["files"]["yty.npy"].update(bytes=-1), "yty.npy bytes is -1"),
        (lambda b: b.update(chunk_size=0), "chunk_size is 0"),
        (lambda b: b.update(format=2), "not a format-1 manifest"),
        (lambda b: b["chunks"].update(first=10, last=2), "end .* before they start"),
    ],
)
def test_hostile_or_broken_manifests_are_invalid(source, change, match):
    body = manifest_body(source)
    change(body)
    with pytest.raises(TransportRefused, match=match) as e:
        parse_manifest(V, json.dumps(body).encode())
    assert e.value.reason == "invalid"


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b"\xff\xfe", None])
def test_unreadable_manifests_are_invalid(raw):
    with pytest.raises(TransportRefused) as e:
        parse_manifest(V, raw)
    assert e.value.reason == "invalid"


@pytest.mark.parametrize("version", ["../../etc", "..", "/abs", ".hidden", "a/b", ""])
def test_a_hostile_version_never_reaches_the_store(tmp_path, version):
    with pytest.raises(ModelStoreError, match="invalid model version"):
        parse_manifest(version, b"{}")
    with pytest.raises(ModelStoreError, match="invalid model version"):
        install(ModelStore(tmp_path / "y"), version, [], Manifest(V, 1, {}, 0, 0))
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize(
    "change, match",
    [
        ({"model_transport": "nfs"}, "model_transport must be one of filesystem, kafka"),
        ({"model_chunk_bytes": 100}, "model_chunk_bytes must be between"),
        ({"model_keep_versions": 0}, "model_keep_versions must be >= 1"),
    ],
)
def test_transport_settings_are_checked(change, match):
    from recsys.config import Settings
    from recsys.errors import ConfigError

    assert Settings().model_transport == "filesystem"
    with pytest.raises(ConfigError, match=match):
        Settings(**change)


def test_what_a_killed_fetch_left_is_removed_by_the_next_one(source, tmp_path):
    import os
    import subprocess

    target = ModelStore(tmp_path / "y")
    proc = subprocess.Popen(["true"])  # its pid: a process that is gone
    proc.wait()
    gone = proc.pid
    (target.root / f".fetch-{V}-{gone}" / V).mkdir(parents=True)
    (target.root / f".fetch-{V}-{os.getpid()}-alive").mkdir()  # not a pid suffix: left alone
    records, manifest = chunked(source)
    install(target, V, records, manifest)
    assert sorted(p.name for p in target.root.iterdir()) == sorted([V, f".fetch-{V}-{os.getpid()}-alive"])


class TopicStandIn:
    """What ModelUpdates asks of a ModelTransport, answered from a store (the real one is tested
    against Kafka in tests/integration/test_model_transport.py)."""

    def __init__(self, source: ModelStore, keep: int):
        from streaming.kafka.model_transport import Index

        self.source, self.keep, self.fetched = source, keep, []
        self.idx = Index(manifests={v: b"" for v in source.versions()}, current=source.current())

    def index(self):
        return self.idx

    def fetch(self, store: ModelStore, version: str, index=None):
        records, manifest = chunked(self.source, version)
        self.fetched.append(version)
        return install(store, version, records, manifest)


def updates_with(transport, store):
    from prometheus_client import CollectorRegistry

    from recsys.confidence import ConfidenceConfig
    from recsys.serving.scoring import ScoringConfig
    from streaming.worker.metrics import WorkerMetrics
    from streaming.worker.serving import ModelUpdates, ServingModel

    serving = ServingModel(WorkerMetrics(CollectorRegistry()))
    return ModelUpdates(store, serving, ConfidenceConfig(), ScoringConfig(), with_user_gram=False, transport=transport)


def test_a_worker_fetches_what_it_lacks_follows_the_topics_pin_and_keeps_a_bounded_cache(tmp_path):
    import asyncio

    source = ModelStore(tmp_path / "x")
    versions = [f"2026010{i}T000000000000Z-abcdef" for i in range(1, 6)]
    for v in versions:
        source.save(random_model(n_items=40, factors=8, version=v))
    topic = TopicStandIn(source, keep=2)
    topic.idx.pinned = versions[0]
    local = ModelStore(tmp_path / "y")
    updates = updates_with(topic, local)

    assert updates.load_initial() and updates.serving.version == versions[0]  # the topic's pin wins
    assert topic.fetched == [versions[0]] and local.versions() == [versions[0]]

    def announce(**body) -> bool:
        return asyncio.run(updates.on_announcement(json.dumps(body).encode()))

    assert announce(version=versions[1]) is False  # pinned: a retrain's announcement is ignored
    assert announce(version=versions[1], pinned=None)  # unpin: the announced version serves
    for v in versions[2:]:
        assert announce(version=v) and updates.serving.version == v
    assert topic.fetched == versions
    assert local.versions() == versions[-2:] and local.current() == versions[-1]  # the cache is bounded
    assert announce(version=versions[-1]) and topic.fetched == versions  # cached: not fetched again
    assert announce(version=versions[3], pinned="../../etc") is False  # a hostile pin is refused
    assert updates.kafka_pin is None
