"""Model transport benchmark: what sending a model version through Kafka costs
(stream.model_transport = kafka, streaming/kafka/model_transport.py).

A model of --items x --factors (random factors; the size is what matters) is saved to a store,
published to a fresh artifacts topic on the project's own broker (started in a temporary
directory), and fetched into another, empty store (chunks read, files assembled, every sha256 and
the store's own checks): --repeats versions per chunk size, medians. The baseline, in the same run:
copying the version directory (what a shared volume costs a reader at most).

    python -m bench.model_transport [--items 100000] [--factors 64] [--repeats 3]
                                    [--chunks 262144,65536] [--output bench/out/model_transport.json]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench.common import machine, median, tree_bytes, write_json
from devtools.broker import KafkaBroker
from recsys.config import Settings
from recsys.model.factors import Model
from recsys.model.store import ModelStore
from streaming.kafka.model_transport import ModelTransport
from streaming.topics import ensure, isolated, topics


def a_model(items: int, factors: int, version: str, seed: int) -> Model:
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(items, factors)).astype(np.float32)
    pop = rng.integers(0, 100, items).astype(np.float32)
    return Model.from_factors(version, [f"item-{k}" for k in range(items)], y, 0.1, popularity=pop)


def run(items: int, factors: int, repeats: int, chunks: list[int]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-transport-"))
    broker = KafkaBroker(tmp / "kafka")
    broker.start()
    out: dict = {"machine": machine(), "items": items, "factors": factors, "repeats": repeats, "runs": []}
    try:
        for chunk in chunks:
            s = isolated(
                Settings(),
                f"bench-{uuid.uuid4().hex[:6]}",
                bootstrap=broker.bootstrap,
                model_chunk_bytes=chunk,
                model_keep_versions=repeats + 1,
            )
            ensure(s.bootstrap, [topics(s).model_artifacts])
            transport = ModelTransport.from_settings(s)
            source = ModelStore(tmp / f"x-{chunk}")
            publish, fetch, copy = [], [], []
            size = 0
            for i in range(repeats):
                version = f"2026010{i + 1}T000000000000Z-{chunk:06x}"
                source.save(a_model(items, factors, version, seed=i))
                size = tree_bytes(source.root / version)
                t0 = time.perf_counter()
                transport.publish(source, version)
                publish.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                transport.fetch(ModelStore(tmp / f"y-{chunk}-{i}"), version)
                fetch.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                shutil.copytree(source.root / version, tmp / f"copy-{chunk}-{i}")
                copy.append(time.perf_counter() - t0)
            row = {
                "chunk_bytes": chunk,
                "model_bytes": size,
                "publish_s": median(publish),
                "fetch_verify_s": median(fetch),
                "copy_s": median(copy),
            }
            out["runs"].append(row)
            print(
                f"chunks of {chunk // 1024} KiB, a {size / 1e6:.1f} MB model: publish {row['publish_s']:.2f} s, "
                f"fetch + verify {row['fetch_verify_s']:.2f} s, a plain directory copy {row['copy_s']:.3f} s "
                f"(medians of {repeats})",
                flush=True,
            )
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunks", default="262144,65536", help="chunk sizes in bytes, comma-separated")
    ap.add_argument("--output", help="write the results as JSON here")
    args = ap.parse_args(argv)
    out = run(args.items, args.factors, args.repeats, [int(c) for c in args.chunks.split(",")])
    write_json(args.output, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
