"""The changelog read with its consumer in a forked reader process.

The child consumes the topic and keeps the keys' side of a ChangelogTable; it writes each chunk's
new rows to a pipe while the retrain's process decodes them. That pays only with a core to spare
(`read.spare_core`).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from typing import Any

import numpy as np

from recsys.confidence import ConfidenceConfig
from recsys.errors import RecsysError
from streaming.jobs.changelog.codec import PAD
from streaming.jobs.changelog.fetch import read_aiokafka, read_bulk
from streaming.jobs.changelog.table import ChangelogTable

log = logging.getLogger("streamrec.retrain")


def read_in_child(
    bootstrap: str, topic: str, table: ChangelogTable, stall_s: float, every_s: float, client: str = "aiokafka"
) -> None:
    """A read into `table` with the consumer (`client`'s) and the keys' side of the table in a
    forked child; chunks are decoded here as they arrive (the pipe holds the child back when
    decoding lags)."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=reader_child,
        args=(send, bootstrap, topic, table.holdout, table.chunk_records, stall_s, every_s, client),
        name="streamrec-changelog-reader",
        daemon=True,
    )
    proc.start()
    send.close()
    try:
        while True:
            while not recv.poll(1.0):
                if not proc.is_alive():
                    raise RecsysError(
                        f"the changelog reader process exited ({proc.exitcode}) before the end of {topic}"
                    )
            try:
                msg = recv.recv()
                if msg[0] == "chunk":
                    keys, lens = msg[1], msg[2]
                    table.put_buffer(keys, _read_exactly(recv.fileno(), int(lens.sum())), lens)
                    continue
            except EOFError:
                raise RecsysError(f"the changelog reader process exited before the end of {topic}") from None
            if msg[0] == "error":
                raise msg[1]
            table.merge(msg[1])
            return
    finally:
        recv.close()
        proc.join(5.0)
        if proc.is_alive():  # we failed before it finished
            proc.kill()
            proc.join()


def _write_all(fd: int, parts: list[bytes]) -> None:
    for a in range(0, len(parts), 512):  # under IOV_MAX buffers a call
        batch = parts[a : a + 512]
        done = os.writev(fd, batch)
        left = sum(map(len, batch)) - done
        if left:  # a partial write (a signal): the rest of this batch, plainly
            rest = memoryview(b"".join(batch))[done:]
            while rest:
                rest = rest[os.write(fd, rest) :]


def _read_exactly(fd: int, size: int) -> bytearray:
    """`size` bytes from `fd`, in a buffer with the decoder's padding after them."""
    buf = bytearray(size + PAD)
    view = memoryview(buf)[:size]
    while view:
        got = os.readv(fd, [view])
        if not got:
            raise EOFError
        view = view[got:]
    return buf


def reader_child(
    conn: Any,
    bootstrap: str,
    topic: str,
    holdout: tuple,
    chunk_records: int,
    stall_s: float,
    every_s: float,
    client: str = "aiokafka",
) -> None:
    """(the reader process) Consume `topic`, keep the keys' side of a ChangelogTable, send the chunks."""

    def send(keys: list[bytes], records: list[bytes]) -> None:
        conn.send(("chunk", keys, np.fromiter(map(len, records), np.int64, len(records))))
        _write_all(conn.fileno(), records)  # the records follow the message as they are: no joining

    try:
        index = ChangelogTable(
            ConfidenceConfig(),  # not used: nothing is decoded here
            holdout_fraction=holdout[0],
            holdout_min=holdout[1],
            holdout_max=holdout[2],
            chunk_records=chunk_records,
        )
        index.sink = send
        if client == "librdkafka":
            read_bulk(bootstrap, topic, index, stall_s, every_s, decode_thread=False)
        else:
            asyncio.run(read_aiokafka(bootstrap, topic, index, stall_s, every_s))
        conn.send(("done", index.summary()))
    except BaseException as e:  # noqa: BLE001 - every failure goes to the parent, which raises it
        try:
            conn.send(("error", e))
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its text then
            conn.send(("error", RecsysError(f"reading {topic}: {e!r}")))
    finally:
        conn.close()
