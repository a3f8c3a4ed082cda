"""The retrain's entry points: every user's latest state in the changelog as training data
(`read_training_data`), or as per-user profiles for tools and tests (`read_profiles`).

Threads: the reading thread's Python code (a librdkafka message per record, the keys) and the
decoding thread's numpy calls share the GIL; during the read the cyclic GC is off (nothing read
makes a cycle), so that it does not hold the GIL passing over millions of objects.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import resource
import time

from recsys.confidence import ConfidenceConfig, UserProfile
from recsys.model.train import TrainingData
from streaming.jobs.changelog.child import read_in_child
from streaming.jobs.changelog.fetch import EmptyChangelog, read_aiokafka, read_bulk
from streaming.jobs.changelog.table import ChangelogTable, LatestRecords
from streaming.worker.state import StateDecodeError, decode

log = logging.getLogger("streamrec.retrain")

CLIENTS = ("librdkafka", "aiokafka")  # read_training_data's consumers


def read_training_data(
    bootstrap: str,
    topic: str,
    ccfg: ConfidenceConfig,
    *,
    stall_s: float = 60.0,
    holdout_fraction: float = 0.01,
    holdout_min: int = 500,
    holdout_max: int = 20_000,
    progress_every_s: float = 5.0,
    client: str = "librdkafka",
    reader_process: bool | None = None,
    decode_thread: bool = True,
) -> TrainingData:
    """Every user's latest state in `topic`, read to its end offsets at the start, as training data.

    `client` "librdkafka" (the default): confluent-kafka's consumer (`clients.BulkReader`) fetches
    and parses in librdkafka's own threads, off the GIL; with `decode_thread` (the default) this
    thread keeps the keys while a thread of its own decodes the chunks (numpy, mostly off the GIL
    too), so the three overlap in one process. `client` "aiokafka": the whole-topic aiokafka
    reader, a Python object per record under the GIL.

    With `reader_process` (where the platform forks), the consumer and the keys' bookkeeping run in
    a child process and hand each chunk of new rows over a pipe to this one, which decodes it
    meanwhile. That costs some CPU more (the pipe, a second process's bookkeeping) and pays only
    with a core to spare: on a saturated machine the two processes wait for each other's turn and
    the read in one process was faster (bench/changelog_read.py). None (the default): with
    aiokafka, a reader process when two cores are idle (`spare_core`); with librdkafka, none."""
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {', '.join(CLIENTS)}, got {client!r}")
    table = ChangelogTable(ccfg, holdout_fraction=holdout_fraction, holdout_min=holdout_min, holdout_max=holdout_max)
    t0 = time.perf_counter()
    if reader_process is None:
        reader_process = client == "aiokafka" and spare_core()
    fork = reader_process and "fork" in multiprocessing.get_all_start_methods()
    log.info(
        "reading %s with %s, %s",
        topic,
        client,
        "with a reader process"
        if fork
        else ("decoding on a thread of its own" if client == "librdkafka" and decode_thread else "in this process"),
    )
    # The read makes millions of container objects (a librdkafka message per record, the gate's
    # cases) and no reference cycles: the cyclic collector would only pass over them again and
    # again, holding the GIL the decoding thread needs.
    collect = gc.isenabled()
    gc.disable()
    try:
        if fork:
            read_in_child(bootstrap, topic, table, stall_s, progress_every_s, client)
            # its memory is not in this process's peak RSS: logged (the largest of this process's
            # children so far, which is this reader unless something bigger ran before it)
            reader_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            log.info("the changelog reader process's peak RSS: %.0f MB", reader_mb)
        elif client == "librdkafka":
            read_bulk(bootstrap, topic, table, stall_s, progress_every_s, decode_thread)
        else:
            asyncio.run(read_aiokafka(bootstrap, topic, table, stall_s, progress_every_s))
        t1 = time.perf_counter()
        data = table.training_data(source=f"kafka:{topic}")
    finally:
        if collect:
            gc.enable()
    data.phases["read_decode_s"] = round(time.perf_counter() - t0, 3)
    data.phases["assemble_s"] = round(time.perf_counter() - t1, 3)
    data.phases["records"] = table.records
    log.info(
        "read %s: %d records, %d users (%d held out for the gate), %d items, %d non-zeros, %d skipped, in %.1f s "
        "(%.0f records/s)",
        topic,
        table.records,
        data.users + len(data.cases),
        len(data.cases),
        len(data.items),
        data.matrix.nnz,
        data.skipped,
        data.phases["read_decode_s"],
        table.records / max(data.phases["read_decode_s"], 1e-9),
    )
    return data


def spare_core() -> bool:
    """Whether this process and a reader process would have a core each: the cores idle over a
    short sample (this process is idle then) leave about two free. The load average would be the
    simpler signal, but it still counts the minute before (a changelog being produced, the last
    retrain) when the read starts."""
    idle = idle_cores()
    if idle is None:  # no /proc/stat: the load average, which counts this process
        try:
            return os.getloadavg()[0] <= (os.cpu_count() or 1) - 1.5
        except OSError:
            return False
    return idle >= min(os.cpu_count() or 1, 2) - 0.5


def idle_cores(sample_s: float = 0.2) -> float | None:
    """Cores idle on average over `sample_s` (Linux /proc/stat), None where that is not there."""

    def times() -> list[int]:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]

    try:
        a = times()
        time.sleep(sample_s)
        b = times()
    except (OSError, ValueError):
        return None
    d = [y - x for x, y in zip(a, b, strict=False)]
    total = sum(d[:8])  # user nice system idle iowait irq softirq steal (guest time is in user)
    return (d[3] + d[4]) / total * (os.cpu_count() or 1) if total > 0 else None


def read_profiles(bootstrap: str, topic: str, stall_s: float = 60.0) -> dict[str, UserProfile]:
    """user -> UserProfile from the latest record of every user in `topic` (per-user objects:
    for inspection and tests at small scale; the retrain uses `read_training_data`). Unreadable
    records are skipped and logged. An empty or missing changelog gives an empty dict."""
    sink = LatestRecords()
    try:
        asyncio.run(read_aiokafka(bootstrap, topic, sink, stall_s, 5.0))
    except EmptyChangelog:
        return {}
    out: dict[str, UserProfile] = {}
    for key, value in sink.latest.items():
        try:
            out[key.decode()] = decode(value).profile
        except (StateDecodeError, UnicodeDecodeError) as e:
            log.warning("skipping unreadable state record for key %r: %s", key[:64], e)
    return out
