"""Model versions through Kafka (`stream.model_transport = kafka`): the retrain job and the workers
share no volume; every host keeps its own model store.

The artifacts topic (`model_artifacts` in streaming/topics.py: compacted, two partitions):

    partition 0, the index (small: every worker reads it whole)
        manifest/<version>          JSON: the chunk size, each file's bytes, sha256 and chunk
                                    count, and the offsets of the version's chunks on partition 1
        pointer/current             JSON {"version": V}: what the retrain job (or a rollback) published last
        pointer/pinned              JSON {"version": V or null}: an operator's pin
    partition 1, the chunks
        chunk/<version>/<file>/<n>  bytes [n * chunk size, (n + 1) * chunk size) of the file, raw

Publishing (`ModelTransport.publish`; the retrain job and `recsys models ... --announce`): the
chunks, all acknowledged (acks=all), then the manifest, then pointer/current. The announcement on
model-updates comes after all of it (streaming/jobs/retrain.py `announce`) and stays what workers
act on, so a version a worker hears of is complete on the topic. Then every version but the newest
`stream.model_keep_versions`, the current and the pinned one is deleted: a tombstone for each of
its keys, which compaction removes with the records they name.

Fetching (`ModelTransport.fetch`; a worker, streaming/worker/serving.py): the manifest from the
index, then partition 1 from the manifest's first chunk offset to its last (compaction keeps
offsets), keeping that version's chunks only, written into a temporary directory inside the local
store; each chunk's length, each file's size and sha256 against the manifest, then the store's own
load (metadata checksums, shapes) on the assembled version; only then is it renamed into the
store, as ModelStore.save does. Anything wrong raises `TransportRefused` with a reason (`REASONS`)
and leaves nothing in the store.

A version read from a key or a manifest passes `check_version` before it is joined to a path, and
a file name must be one of the store's own files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.errors import ModelStoreError, RecsysError
from recsys.model.store import FILES, RANKER, USER_GRAM, ModelStore, check_version
from streaming.kafka import clients

log = logging.getLogger("streamrec.models")

INDEX, CHUNKS = 0, 1  # the artifacts topic's partitions
FORMAT = 1
METADATA = "metadata.json"
REQUIRED_FILES = frozenset((*FILES, METADATA))
ALLOWED_FILES = REQUIRED_FILES | {USER_GRAM, RANKER}  # the optional ones a version may carry
CURRENT, PINNED = "current", "pinned"
# Why a fetched version was refused: the label of streamrec_model_fetch_refused_total.
REASONS = (
    "missing",  # no manifest for it on the topic, or chunks the manifest names never came
    "corrupt",  # a chunk of the wrong length, a file whose size or sha256 is not the manifest's
    "invalid",  # a manifest that is not one, a hostile version or file name
    "unverified",  # assembled as the manifest says, but the store's own checks refuse it
    "unreachable",  # Kafka did not answer, or the topic is missing or wrong
)


class TransportRefused(ModelStoreError):
    """A version could not be fetched or did not verify; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str):
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason


# -- keys and the manifest ------------------------------------------------------------------------


def manifest_key(version: str) -> bytes:
    return f"manifest/{version}".encode()


def pointer_key(name: str) -> bytes:
    return f"pointer/{name}".encode()


def chunk_key(version: str, name: str, index: int) -> bytes:
    return f"chunk/{version}/{name}/{index}".encode()


def parse_chunk_key(key: bytes | None) -> tuple[str, str, int] | None:
    """(version, file, index) of a chunk key, or None for anything else."""
    try:
        kind, version, name, index = (key or b"").decode().split("/")
        return (version, name, int(index)) if kind == "chunk" else None
    except (UnicodeDecodeError, ValueError):
        return None


@dataclass(frozen=True)
class FileSpec:
    bytes: int
    sha256: str
    chunks: int


@dataclass(frozen=True)
class Manifest:
    version: str
    chunk_size: int
    files: dict[str, FileSpec]
    first: int  # offsets on partition CHUNKS of the version's first and last chunk
    last: int

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "version": self.version,
                "chunk_size": self.chunk_size,
                "files": {n: {"bytes": f.bytes, "sha256": f.sha256, "chunks": f.chunks} for n, f in self.files.items()},
                "chunks": {"partition": CHUNKS, "first": self.first, "last": self.last},
                "published": time.time(),
            },
            sort_keys=True,
        ).encode()

    @property
    def keys(self) -> list[bytes]:
        return [chunk_key(self.version, n, i) for n, f in self.files.items() for i in range(f.chunks)]


def _int(value: Any, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} is {value!r}, not an integer >= {minimum}")
    return value


def parse_manifest(version: str, raw: bytes | None) -> Manifest:
    """The manifest of `version` from its record, checked through; TransportRefused("invalid")
    for anything else (a hostile version or file name included)."""
    check_version(version)
    try:
        body = json.loads(raw or b"")
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise ValueError(f"not a format-{FORMAT} manifest")
        named = body.get("version")
        try:
            check_version(named)
        except ModelStoreError as e:
            raise ValueError(str(e)) from None
        if named != version:
            raise ValueError(f"it names version {named!r}")
        chunk_size = _int(body.get("chunk_size"), "chunk_size", 1)
        files_in = body.get("files")
        if not isinstance(files_in, dict):
            raise ValueError("no files")
        files: dict[str, FileSpec] = {}
        for name, spec in files_in.items():
            if name not in ALLOWED_FILES:
                raise ValueError(f"file {str(name)[:80]!r} is not one of a model's files")
            if not isinstance(spec, dict):
                raise ValueError(f"{name}: not an object")
            size = _int(spec.get("bytes"), f"{name} bytes")
            sha = spec.get("sha256")
            if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise ValueError(f"{name}: sha256 is not 64 hex digits")
            chunks = _int(spec.get("chunks"), f"{name} chunks")
            if chunks != math.ceil(size / chunk_size):
                raise ValueError(f"{name}: {chunks} chunks cannot hold {size} bytes in chunks of {chunk_size}")
            files[name] = FileSpec(size, sha, chunks)
        if missing := REQUIRED_FILES - files.keys():
            raise ValueError(f"it lacks {', '.join(sorted(missing))}")
        where = body.get("chunks")
        if not isinstance(where, dict) or where.get("partition") != CHUNKS:
            raise ValueError("no chunk offsets")
        first, last = _int(where.get("first"), "first chunk offset"), _int(where.get("last"), "last chunk offset")
        if last < first:
            raise ValueError(f"its chunks end ({last}) before they start ({first})")
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise TransportRefused("invalid", f"model version {version!r}: unusable manifest: {e}") from None
    return Manifest(version, chunk_size, files, first, last)


# -- chunking and assembly (no Kafka) --------------------------------------------------------------


def split(
    vdir: Path, names: Iterable[str], chunk_size: int, specs: dict[str, FileSpec]
) -> Iterator[tuple[bytes, bytes]]:
    """The chunk records (key, value) of version directory `vdir`'s files `names`, read as they
    are sent; `specs[name]` is filled in (size, sha256 of the bytes sent) once a file is done."""
    version = vdir.name
    for name in names:
        h, size, index = hashlib.sha256(), 0, 0
        with open(vdir / name, "rb") as f:
            while data := f.read(chunk_size):
                h.update(data)
                size += len(data)
                yield chunk_key(version, name, index), data
                index += 1
        specs[name] = FileSpec(size, h.hexdigest(), index)


class Assembly:
    """A version's files rebuilt in `dest` from its chunks, in any order; `finish` checks that
    every chunk came and every file is the manifest's."""

    def __init__(self, manifest: Manifest, dest: Path):
        self.manifest, self.dest = manifest, dest
        self.got: dict[str, set[int]] = {n: set() for n in manifest.files}
        self.ignored = 0  # records in the range that are not this version's chunks
        dest.mkdir(parents=True, exist_ok=True)
        for name in manifest.files:  # every file exists, empty ones too
            (dest / name).touch()

    def add(self, key: bytes | None, value: bytes | None) -> bool:
        """Take one record; True if it was one of this version's chunks."""
        parsed = parse_chunk_key(key)
        m = self.manifest
        if parsed is None or value is None or parsed[0] != m.version:
            self.ignored += 1
            return False
        _, name, index = parsed
        spec = m.files.get(name)
        if spec is None or not 0 <= index < spec.chunks:
            self.ignored += 1
            return False
        want = min(m.chunk_size, spec.bytes - index * m.chunk_size)
        if len(value) != want:
            raise TransportRefused(
                "corrupt",
                f"model version {m.version!r}: chunk {index} of {name} has {len(value)} bytes, expected {want}",
            )
        with open(self.dest / name, "r+b") as f:
            f.seek(index * m.chunk_size)
            f.write(value)
        self.got[name].add(index)
        return True

    def finish(self) -> None:
        m = self.manifest
        for name, spec in m.files.items():
            missing = spec.chunks - len(self.got[name])
            if missing:
                first = min(set(range(spec.chunks)) - self.got[name])
                raise TransportRefused(
                    "missing",
                    f"model version {m.version!r}: {missing} of {spec.chunks} chunks of {name} never came (first: {first})",
                )
        for name, spec in m.files.items():
            path = self.dest / name
            size = path.stat().st_size
            if size != spec.bytes:
                raise TransportRefused(
                    "corrupt", f"model version {m.version!r}: {name} has {size} bytes, expected {spec.bytes}"
                )
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while data := f.read(1 << 20):
                    h.update(data)
            if h.hexdigest() != spec.sha256:
                raise TransportRefused("corrupt", f"model version {m.version!r}: {name} fails the manifest's sha256")


def abandoned(store: ModelStore) -> list[str]:
    """Remove what fetches of processes that are gone (a worker killed mid-fetch) left behind in
    `store` (never visible: a version is renamed into place only when complete); their names."""
    removed = []
    for tmp in store.root.glob(".fetch-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
            continue  # its fetcher is alive
        except ProcessLookupError:
            pass
        except (ValueError, IndexError, PermissionError):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp.name)
    return removed


def install(
    store: ModelStore, version: str, records: Iterable[tuple[bytes | None, bytes | None]], manifest: Manifest
) -> Path:
    """Assemble `version` from `records` into `store`: in a temporary directory inside it, checked
    against the manifest and by the store's own load, then renamed into place. Returns its path."""
    check_version(version)
    store.root.mkdir(parents=True, exist_ok=True)
    abandoned(store)
    incoming = store.root / f".fetch-{version}-{os.getpid()}"
    shutil.rmtree(incoming, ignore_errors=True)
    try:
        vdir = incoming / version
        assembly = Assembly(manifest, vdir)
        for key, value in records:
            assembly.add(key, value)
        assembly.finish()
        try:  # the store's own checks, on the assembled version before anyone can see it
            model = ModelStore(incoming).load(version, verify=True)
            if model.metadata.get("version") != version:
                raise ModelStoreError(f"its metadata names version {model.metadata.get('version')!r}")
            if set(model.metadata["files"]) | {METADATA} != set(manifest.files):
                raise ModelStoreError("its metadata lists other files than its manifest")
            del model  # its memory maps
        except ModelStoreError as e:
            raise TransportRefused(
                "unverified", f"model version {version!r} assembled but refused by the store: {e}"
            ) from None
        for f in vdir.iterdir():  # durable before it becomes visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        final = store.root / version
        if final.exists():  # fetched meanwhile (two announcements of one version): keep that one
            return final
        os.rename(vdir, final)
        return final
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


# -- Kafka ----------------------------------------------------------------------------------------


@dataclass
class Index:
    """What partition 0 says: the manifests on the topic (version -> raw record) and the pointers."""

    manifests: dict[str, bytes] = field(default_factory=dict)
    current: str | None = None
    pinned: str | None = None

    @property
    def versions(self) -> list[str]:
        return sorted(self.manifests)


def _pointer(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        version = json.loads(raw).get("version")
        return check_version(version) if version is not None else None
    except (ValueError, AttributeError, ModelStoreError) as e:
        log.warning("ignoring an unusable model pointer %r: %s", raw[:100], e)
        return None


class ModelTransport:
    """Model versions on the artifacts topic, through kafka-python (its security from clients.py)."""

    def __init__(
        self, bootstrap: str, topic: str, *, chunk_bytes: int = 256 * 1024, keep: int = 5, timeout_s: float = 120.0
    ):
        self.bootstrap, self.topic = bootstrap, topic
        self.chunk_bytes, self.keep, self.timeout_s = chunk_bytes, keep, timeout_s

    @classmethod
    def from_settings(cls, s: Any) -> ModelTransport:
        return cls(s.bootstrap, s.model_artifacts_topic, chunk_bytes=s.model_chunk_bytes, keep=s.model_keep_versions)

    # -- clients
    def _producer(self) -> Any:
        from kafka import KafkaProducer

        return KafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            retries=5,
            linger_ms=5,
            max_request_size=max(1 << 20, self.chunk_bytes + (64 << 10)),
            **clients.kafka_python(),
        )

    def _consumer(self, partition: int) -> Any:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max(1 << 20, 4 * self.chunk_bytes),
            **clients.kafka_python(),
        )
        try:
            deadline = time.monotonic() + 15
            parts = consumer.partitions_for_topic(self.topic)
            while not parts and time.monotonic() < deadline:
                time.sleep(0.2)
                parts = consumer.partitions_for_topic(self.topic)
            if not parts:
                raise TransportRefused("unreachable", f"topic {self.topic} does not exist (recsys topics creates it)")
            if len(parts) < 2:
                raise TransportRefused(
                    "unreachable",
                    f"topic {self.topic} has {len(parts)} partition; model transport needs 2 (recsys topics)",
                )
            consumer.assign([TopicPartition(self.topic, partition)])
        except BaseException:
            consumer.close()
            raise
        return consumer

    def _read(self, partition: int, start: int | None, stop: int | None) -> Generator[Any, None, None]:
        """Records of one partition from offset `start` (None: its beginning) up to and including
        `stop` (None: its end now)."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        tp = TopicPartition(self.topic, partition)
        try:
            consumer = self._consumer(partition)
        except KafkaError as e:
            raise TransportRefused("unreachable", f"Kafka at {self.bootstrap}: {type(e).__name__}: {e}") from None
        try:
            end = consumer.end_offsets([tp])[tp]
            last = end - 1 if stop is None else stop
            if stop is not None and end <= stop:
                raise TransportRefused("missing", f"{self.topic}[{partition}] ends at offset {end}, before {stop}")
            if start is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
            deadline = time.monotonic() + self.timeout_s
            while consumer.position(tp) <= last:
                if time.monotonic() > deadline:
                    raise TransportRefused(
                        "unreachable",
                        f"reading {self.topic}[{partition}] did not reach offset {last} in {self.timeout_s:g}s",
                    )
                for records in consumer.poll(timeout_ms=500).values():
                    for r in records:
                        if r.offset > last:
                            return
                        yield r
        except KafkaError as e:
            raise TransportRefused("unreachable", f"reading {self.topic}: {type(e).__name__}: {e}") from None
        finally:
            consumer.close()

    # -- reading
    def index(self) -> Index:
        """Partition 0 read to its end: the manifests still on the topic and the pointers."""
        idx = Index()
        for r in self._read(INDEX, None, None):
            key = (r.key or b"").decode(errors="replace")
            kind, _, name = key.partition("/")
            if kind == "manifest":
                try:
                    check_version(name)
                except ModelStoreError:
                    log.warning("ignoring a manifest record with key %r on %s", key[:100], self.topic)
                    continue
                if r.value is None:
                    idx.manifests.pop(name, None)
                else:
                    idx.manifests[name] = r.value
            elif key == pointer_key(CURRENT).decode():
                idx.current = _pointer(r.value)
            elif key == pointer_key(PINNED).decode():
                idx.pinned = _pointer(r.value)
        return idx

    def fetch(self, store: ModelStore, version: str, index: Index | None = None) -> Path:
        """Bring `version` from the topic into `store` (checked through); TransportRefused if it
        cannot. Returns its directory."""
        check_version(version)
        index = index if index is not None else self.index()
        if version not in index.manifests:
            raise TransportRefused(
                "missing",
                f"model version {version!r} is not on {self.topic} (never published, or dropped past "
                "stream.model_keep_versions: `recsys models pin|rollback --announce` on the retrain host publishes it again)",
            )
        manifest = parse_manifest(version, index.manifests[version])
        t0 = time.monotonic()
        records = self._read(CHUNKS, manifest.first, manifest.last)
        try:
            path = install(store, version, ((r.key, r.value) for r in records), manifest)
        finally:
            records.close()  # its consumer, also when assembly stopped early
        size = sum(f.bytes for f in manifest.files.values())
        log.info(
            "fetched model %s from %s: %d files, %.1f MB in %.2fs, checksums verified",
            version,
            self.topic,
            len(manifest.files),
            size / 1e6,
            time.monotonic() - t0,
            extra={"model_version": version},
        )
        return path

    # -- writing
    def publish(self, store: ModelStore, version: str, *, current: bool = True) -> Manifest:
        """Put `version` of `store` on the topic: chunks, then its manifest, then (with `current`)
        pointer/current; then drop the versions past the retention. Returns the manifest."""
        from kafka.errors import KafkaError

        meta = store.metadata(version)  # checks the name and that the version exists
        names = [*sorted(meta["files"]), METADATA]
        specs: dict[str, FileSpec] = {}
        t0 = time.monotonic()
        producer = self._producer()
        try:
            futures = [
                producer.send(self.topic, key=k, value=v, partition=CHUNKS)
                for k, v in split(store.root / version, names, self.chunk_bytes, specs)
            ]
            producer.flush()
            offsets = [f.get(timeout=self.timeout_s).offset for f in futures]
            manifest = Manifest(version, self.chunk_bytes, {n: specs[n] for n in names}, min(offsets), max(offsets))
            producer.send(self.topic, key=manifest_key(version), value=manifest.to_json(), partition=INDEX).get(
                timeout=self.timeout_s
            )
            if current:
                self._send_pointer(producer, CURRENT, version)
        except KafkaError as e:
            raise RecsysError(f"publishing model {version} to {self.topic}: {type(e).__name__}: {e}") from None
        finally:
            producer.close()
        size = sum(f.bytes for f in manifest.files.values())
        log.info(
            "published model %s to %s: %d chunks, %.1f MB in %.2fs",
            version,
            self.topic,
            len(offsets),
            size / 1e6,
            time.monotonic() - t0,
            extra={"model_version": version},
        )
        try:
            self.prune()
        except (RecsysError, KafkaError) as e:  # the version is out; old ones go next time
            log.warning("could not drop old model versions from %s: %s", self.topic, e)
        return manifest

    def _send_pointer(self, producer: Any, name: str, version: str | None) -> None:
        value = json.dumps({"version": version, "at": time.time()}).encode()
        producer.send(self.topic, key=pointer_key(name), value=value, partition=INDEX).get(timeout=self.timeout_s)

    def point(self, name: str, version: str | None) -> None:
        """Set pointer/current or pointer/pinned (None: unpinned)."""
        if version is not None:
            check_version(version)
        producer = self._producer()
        try:
            self._send_pointer(producer, name, version)
        finally:
            producer.close()

    def prune(self, index: Index | None = None) -> list[str]:
        """Tombstones for every version but the newest `keep`, the current and the pinned one;
        returns the versions dropped."""
        index = index if index is not None else self.index()
        kept = set(index.versions[-self.keep :]) | {index.current, index.pinned}
        drop = [v for v in index.versions if v not in kept]
        if not drop:
            return []
        producer = self._producer()
        try:
            for v in drop:
                try:
                    keys = parse_manifest(v, index.manifests[v]).keys
                except TransportRefused:
                    keys = []  # an unusable manifest: its own key still goes
                for k in keys:
                    producer.send(self.topic, key=k, value=None, partition=CHUNKS)
                producer.send(self.topic, key=manifest_key(v), value=None, partition=INDEX)
            producer.flush()
        finally:
            producer.close()
        log.info(
            "dropped %d model version(s) from %s past the newest %d: %s",
            len(drop),
            self.topic,
            self.keep,
            ", ".join(drop),
        )
        return drop

    def send_raw(self, records: Iterable[tuple[int, bytes, bytes | None]]) -> list[int]:
        """(partition, key, value) records as they are, acknowledged; their offsets. For tools and
        tests that put records of their own on the topic."""
        producer = self._producer()
        try:
            futures = [producer.send(self.topic, key=k, value=v, partition=p) for p, k, v in records]
            producer.flush()
            return [f.get(timeout=self.timeout_s).offset for f in futures]
        finally:
            producer.close()
