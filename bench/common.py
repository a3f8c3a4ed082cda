"""Helpers shared by the benchmarks: machine description, timing, synthetic factors, JSON, RSS."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from recsys.evaluation.plotting import pyplot


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for dist in ("numpy", "scipy", "implicit", "faiss-cpu", "faust-streaming", "rocksdict", "kafka-python"):
        try:  # metadata only: importing faiss here would load its own BLAS after the pinning
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gb": mem_gb,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loadavg_at_start": load,
        "versions": versions,
    }


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def write_json(path: str | os.PathLike[str] | None, obj: Any) -> None:
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n")


def _default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def clustered_factors(n: int, f: int, n_clusters: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Item factors shaped like a trained model's: items in topics (Zipf-sized clusters around
    random centres), a decaying spectrum over factors, log-normal norms (popularity).
    Returns (factors (n, f) float32, cluster of each item)."""
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(8, min(2000, n // 100))
    spec = (1.0 / np.sqrt(1.0 + np.arange(f))).astype(np.float32)
    centres = rng.standard_normal((n_clusters, f), dtype=np.float32) * spec
    sizes = rng.zipf(1.3, n_clusters).astype(np.float64)
    p = 0.5 * sizes / sizes.sum() + 0.5 / n_clusters
    assign = rng.choice(n_clusters, n, p=p / p.sum())
    y = centres[assign]
    y += 0.5 * rng.standard_normal((n, f), dtype=np.float32) * spec
    y *= rng.lognormal(0.0, 0.5, n).astype(np.float32)[:, None] * 0.3
    return np.ascontiguousarray(y, np.float32), assign


def synthetic_users(
    assign: np.ndarray, n_users: int, mean_len: float = 15.0, max_len: int = 50, seed: int = 1
) -> tuple[list[dict[int, float]], list[int], list[set[int]]]:
    """Users who browse one or two topics: (confidence per item row, query row = last item,
    bought rows). Confidences are 1 + 15 r, r per event: 0.25 a look, 0.75 a cart, 1 a purchase."""
    rng = np.random.default_rng(seed)
    by_cluster: dict[int, np.ndarray] = {}
    order = np.argsort(assign, kind="stable")
    bounds = np.flatnonzero(np.diff(assign[order])) + 1
    for chunk in np.split(order, bounds):
        by_cluster[int(assign[chunk[0]])] = chunk
    clusters = np.array(sorted(by_cluster))
    weights = np.array([len(by_cluster[c]) for c in clusters], float)
    weights /= weights.sum()
    confs, queries, bought = [], [], []
    for _ in range(n_users):
        length = int(min(max_len, max(1, rng.geometric(1.0 / mean_len))))
        topics = rng.choice(clusters, size=1 + int(rng.random() < 0.4), p=weights)
        rows = np.concatenate([rng.choice(by_cluster[int(t)], size=length) for t in topics])[:length]
        conf: dict[int, float] = {}
        b: set[int] = set()
        for r in rows:
            kind = rng.random()
            w = 0.25 if kind < 0.85 else 0.75 if kind < 0.97 else 1.0
            if w == 1.0:
                b.add(int(r))
            conf[int(r)] = conf.get(int(r), 1.0) + 15.0 * w
        confs.append(conf)
        queries.append(int(rows[-1]))
        bought.append(b)
    return confs, queries, bought


def worker_process(
    bootstrap: str, name: str, port: int, data_dir: Path, model_dir: Path, partitions: int, env: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """(command, environment) of a real worker (`python -m streaming.cli.main worker`) whose topics are
    named after `name` (<name>-clicks, -recs, -dlq, -models); `env` adds or overrides settings."""
    from recsys.config import child_env, load_config, stream_env
    from streaming.topics import isolated

    s = isolated(load_config().stream, name, bootstrap=bootstrap, partitions=partitions)
    full = child_env({**stream_env(s), "PYTHONUNBUFFERED": "1", **env})
    cmd = [
        sys.executable,
        "-m",
        "streaming.cli.main",
        "worker",
        "--bootstrap",
        bootstrap,
        "--web-port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--model-dir",
        str(model_dir),
    ]
    return cmd, full


def topic_reader(bootstrap: str, topic: str, stop: Any, fetch_max_wait_ms: int, max_poll_records: int) -> Any:
    """A kafka-python consumer (no group) on every partition of `topic` from the beginning, once the
    topic exists (a bench's reader process starts before the workers make their topics); None if
    `stop` (an Event) is set first."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_poll_records=max_poll_records,
    )
    parts = None
    while not parts and not stop.is_set():
        parts = c.partitions_for_topic(topic)
        if not parts:
            time.sleep(0.1)
    c.assign([TopicPartition(topic, p) for p in sorted(parts or [])])
    return c


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (default: this one), from /proc."""
    path = f"/proc/{pid or 'self'}/status"
    for line in Path(path).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_bytes(path: str | os.PathLike[str]) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):  # removed during the walk
                total += os.path.getsize(os.path.join(root, f))
    return total


def percentile(xs: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(xs, float), q)) if len(xs) else float("nan")


def plot_setup() -> ModuleType:
    return pyplot("benchmark charts")
