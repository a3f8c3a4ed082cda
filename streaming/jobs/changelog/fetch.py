"""The consumers that fill a table from the changelog topic, from the beginning of every partition
to the end offsets measured at the start.

  * `read_bulk`: librdkafka (confluent-kafka, `clients.BulkReader`) in large fetches; it fetches,
    checks and parses in its own threads, in C, and hands keys and values over in batches. The
    chunks are decoded on a thread of their own (`DecodeThread`) while this one reads on; numpy
    releases the GIL in the large operations, so fetching, keys and decoding overlap in one process.
  * `read_aiokafka`: aiokafka, a Python object per record under the GIL (for small reads and the
    forked reader process).

A progress bar and the rate go to the log every few seconds; a read that makes no progress for
`stall_s` fails (no fixed limit on the whole read: a large changelog takes as long as it takes).
A missing or empty changelog is an `EmptyChangelog` error that says so.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from recsys.errors import RecsysError
from streaming.jobs.changelog.table import ChangelogTable, LatestRecords

log = logging.getLogger("streamrec.retrain")


class EmptyChangelog(RecsysError):
    """The changelog topic is missing or holds no record."""


def _bar(frac: float, width: int = 20) -> str:
    done = int(round(frac * width))
    return "[" + "#" * done + "." * (width - done) + "]"


async def read_aiokafka(
    bootstrap: str, topic: str, table: ChangelogTable | LatestRecords, stall_s: float, every_s: float
) -> None:
    from streaming.kafka import clients

    async with clients.topic_reader(bootstrap, topic, "streamrec-retrain") as (consumer, tps):
        if not tps:
            raise missing_error(topic, bootstrap)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        total = sum(end[tp] - begin[tp] for tp in tps)
        if total == 0:
            raise empty_error(topic)
        await consumer.seek_to_beginning(*tps)
        left = [tp for tp in tps if end[tp] > begin[tp]]
        log.info("reading %s: %d records in %d partitions", topic, total, len(tps))
        t0 = last_report = last_progress = time.monotonic()
        while left:
            fetched = await consumer.getmany(*left, timeout_ms=500)
            now = time.monotonic()
            for records in fetched.values():
                if records:
                    table.add(records)
                    last_progress = now
            for tp in list(left):
                if await consumer.position(tp) >= end[tp]:
                    left.remove(tp)
                    consumer.pause(tp)
            if left and now - last_progress > stall_s:
                raise stalled_error(topic, stall_s, table.records, total)
            if now - last_report >= every_s:
                last_report = now
                log_progress(topic, table.records, total, now - t0)


def log_progress(topic: str, done: int, total: int, secs: float) -> None:
    rate = done / max(secs, 1e-9)
    log.info(
        "reading %s %s %d/%d records (%.0f%%), %.0f records/s, ~%.0f s left",
        topic,
        _bar(done / total),
        done,
        total,
        100 * done / total,
        rate,
        max(total - done, 0) / max(rate, 1e-9),
    )


def stalled_error(topic: str, stall_s: float, done: int, total: int) -> RecsysError:
    return RecsysError(
        f"reading {topic} stalled: no record for {stall_s:.0f}s with {done} of {total} read (retrain.changelog_stall_s)"
    )


def missing_error(topic: str, bootstrap: str) -> EmptyChangelog:
    return EmptyChangelog(
        f"no training data: the state changelog {topic} does not exist on {bootstrap} "
        "(no worker has run with this app id yet; or give --data FILE)"
    )


def empty_error(topic: str) -> EmptyChangelog:
    return EmptyChangelog(
        f"no training data: the state changelog {topic} is empty (no user has any state yet: "
        "run the workers on events first, or give --data FILE)"
    )


class DecodeThread:
    """Decodes a ChangelogTable's chunks, in order, on a thread of its own while the reading thread
    fetches and keeps the keys (`take` and `put` touch separate parts of the table). numpy releases
    the GIL in the decoder's large array operations, so the two overlap. At most `depth` chunks
    wait: a reader faster than the decoding is held back rather than piling up records."""

    def __init__(self, table: ChangelogTable, depth: int = 2):
        self.table = table
        self.queue: queue.Queue[tuple[list[bytes], list[bytes]] | None] = queue.Queue(depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="streamrec-changelog-decode", daemon=True)
        self.thread.start()

    def submit(self, keys: list[bytes], records: list[bytes]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((keys, records))

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:  # after a failure the rest is drained, not decoded
                try:
                    self.table.put(*item)
                except BaseException as e:  # noqa: BLE001 - raised in the reading thread
                    self.error = e

    def close(self, raise_error: bool = True) -> None:
        """Wait for every chunk submitted; raise the decoding's failure, if any."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None and raise_error:
            raise self.error


def read_bulk(
    bootstrap: str, topic: str, table: ChangelogTable, stall_s: float, every_s: float, decode_thread: bool = True
) -> None:
    """Every record of `topic` up to its end offsets now, through librdkafka, into `table`; with
    `decode_thread`, its chunks are decoded on a `DecodeThread` meanwhile (else wherever its
    `sink` sends them: decoded here, or to another process)."""
    from streaming.kafka import clients

    with clients.BulkReader(bootstrap, topic, "streamrec-retrain", timeout_s=stall_s) as reader:
        if not reader.partitions:
            raise missing_error(topic, bootstrap)
        marks = reader.watermarks()
        total = sum(end - begin for begin, end in marks.values())
        if total == 0:
            raise empty_error(topic)
        left = {p: end for p, (begin, end) in marks.items() if end > begin}
        reader.start({p: marks[p][0] for p in left})
        log.info("reading %s: %d records in %d partitions", topic, total, len(marks))
        decoder = DecodeThread(table) if decode_thread else None
        sink = table.sink
        if decoder is not None:
            table.sink = decoder.submit
        try:
            t0 = last_report = last_progress = time.monotonic()
            while left:
                # (a few thousand at a time: building their Python objects holds the GIL throughout,
                # which no switch interval interrupts, and the decoding thread waits for it)
                keys, values, ended, n = reader.batch(2_000, 0.5)
                now = time.monotonic()
                if n:
                    table.add_kv(keys, values)
                    last_progress = now
                    ended += [p for p, at in reader.positions().items() if p in left and at >= left[p]]
                for p in ended:
                    if left.pop(p, None) is not None:
                        reader.pause(p)
                if left and now - last_progress > stall_s:
                    if reader.errors:
                        raise reader.failure(topic)
                    raise stalled_error(topic, stall_s, table.records, total)
                if now - last_report >= every_s:
                    last_report = now
                    log_progress(topic, table.records, total, now - t0)
            table.flush()
            if decoder is not None:  # the keys are all in: the gate's cases picked while the last chunks decode
                table.pick_cases()
        except BaseException:
            if decoder is not None:
                table.sink = sink
                decoder.close(raise_error=False)  # this failure is the one to report
            raise
        if decoder is not None:
            table.sink = sink
            decoder.close()
