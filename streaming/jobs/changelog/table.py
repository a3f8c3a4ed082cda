"""The latest record per key, decoded in chunks as records arrive, and the training data at the end.

A key seen again marks its earlier row dead; a tombstone removes the user; per chunk only each
key's last record is decoded (bulk dict operations, no Python code per record). The matrix is
assembled chunk by chunk at the end, each chunk released once copied.

Hold-out: the users with the lowest `holdout_rank` (a hash of the id) are candidates: their latest
raw record is kept too (the keys below a rank cut, which falls to the `holdout_max`-th lowest
whenever they pass it by a quarter) and, at the end, the lowest-ranked (ties by key) that make a
case (recsys.evaluation.offline.holdout_case) become the gate's cases and leave the matrix; the
others stay in it.

An unreadable or foreign record (wrong format version, truncated, trailing bytes) is skipped,
counted and logged with its key; it never stops the retrain.
"""

from __future__ import annotations

import logging
import operator
import zlib
from collections.abc import Callable, Iterable
from itertools import compress, repeat
from typing import Any, cast

import numpy as np
import scipy.sparse as sp

from recsys.confidence import ConfidenceConfig
from recsys.errors import RecsysError
from recsys.evaluation.offline import EvalCase, holdout_size
from recsys.model.train import TrainingData
from streaming.jobs.changelog.codec import Chunk, ChunkDecoder, held_cases, join, pieces
from streaming.worker.state import StateDecodeError, decode

log = logging.getLogger("streamrec.retrain")


def holdout_ranks(keys: list[bytes]) -> np.ndarray:
    """`holdout_rank` of many keys: its CRC-32, mapped in C (a test checks they agree)."""
    return np.fromiter(map(zlib.crc32, keys), np.int64, len(keys))


def copy_kept(keep_rows: np.ndarray, ch: Chunk, col: np.ndarray, data: np.ndarray) -> int:
    """The non-zeros of `ch`'s kept rows to the start of `col` and `data`; returns how many. A
    chunk usually loses a few rows (the gate's cases, superseded records): then the runs of kept
    rows are copied as slices, cheaper than a mask over every non-zero."""
    edge = np.diff(np.concatenate(([False], keep_rows, [False])).astype(np.int8))
    run_a, run_b = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)  # rows [a, b)
    if len(run_a) > 256:
        keep = np.repeat(keep_rows, ch.counts)
        n = int(keep.sum())
        col[:n] = ch.cols[keep]
        data[:n] = ch.conf[keep]
        return n
    ends = np.cumsum(ch.counts)
    n = 0
    for a, b in zip((ends[run_a] - ch.counts[run_a]).tolist(), ends[run_b - 1].tolist(), strict=True):
        col[n : n + b - a] = ch.cols[a:b]
        data[n : n + b - a] = ch.conf[a:b]
        n += b - a
    return n


class ChangelogTable:
    """The latest record per key, decoded in chunks as records arrive (see the module docstring)."""

    def __init__(
        self,
        ccfg: ConfidenceConfig,
        *,
        holdout_fraction: float = 0.01,
        holdout_min: int = 500,
        holdout_max: int = 20_000,
        chunk_records: int = 10_000,
        min_items: int = 3,
    ):
        self.decoder = ChunkDecoder(ccfg)
        self.holdout = (holdout_fraction, holdout_min, holdout_max)
        self.min_items = min_items
        self.chunk_records = chunk_records
        self.row_of: dict[bytes, int] = {}  # key -> its live row
        self.dead: list[int] = []
        self.keys: list[bytes | None] = []  # records not decoded yet
        self.values: list[bytes | None] = []
        self.chunks: list[Chunk] = []
        self.held: dict[bytes, bytes] = {}  # hold-out candidates (rows too): key -> latest record
        self.cut = 1 << 32  # keys new to the table with a hold-out rank (a CRC-32) below this are held
        self.rows = 0  # rows handed out (decoded or on their way)
        # (cases, their rows, undecodable rows) when the keys were kept by another process
        self.picked: tuple[list[EvalCase], list[int], list[tuple[bytes, int, str]]] | None = None
        self.records = 0
        self.skipped = 0
        self.live = np.zeros(0, bool)
        # where a chunk ready for decoding goes: `put` here, or another process (`read_training_data`)
        self.sink: Callable[[list[bytes], list[bytes]], None] = self.put

    def add(self, records: Iterable[Any]) -> None:
        """Consumer records (anything with .key and .value), in offset order per key."""
        records = list(records)
        self.add_kv([r.key for r in records], [r.value for r in records])

    def add_kv(self, keys: list[bytes | None], values: list[bytes | None]) -> None:
        """Records as their keys and values (None: a tombstone), in offset order per key."""
        self.keys += keys
        self.values += values
        self.records += len(keys)
        if len(self.keys) >= self.chunk_records:
            self.flush()

    def flush(self) -> None:
        """The records added since the last flush, a chunk at a time: per key only its last record
        is decoded (as a new row; the key's earlier row dies); the hold-out candidates are kept raw
        as well. Bulk dict operations and one decode per chunk: no Python code runs per record."""
        batch = self.take()
        if batch is not None:
            self.sink(*batch)

    def take(self) -> tuple[list[bytes], list[bytes]] | None:
        """The keys' side of `flush`: the new rows' keys, their records joined, their lengths."""
        if not self.keys:
            return None
        keys, values = cast("list[bytes]", self.keys), self.values
        self.keys, self.values = [], []
        if None in keys:  # a record without a key is nobody's state
            kv = [(k, v) for k, v in zip(keys, values, strict=True) if k is not None]
            keys, values = [k for k, _ in kv], [v for _, v in kv]
        n = len(keys)
        # a key deleted in this chunk (even if written again after) is no one's row or candidate
        # any more: a record after its tombstone makes it a new user
        gone = set(compress(keys, map(operator.is_, values, repeat(None)))) if None in values else set()
        if not gone and self.row_of.keys().isdisjoint(keys):
            # the usual chunk: every key new (so none held either); each once if the table grew by n
            size = len(self.row_of)
            self.row_of.update(zip(keys, range(self.rows, self.rows + n), strict=True))
            if len(self.row_of) == size + n:
                if self.holdout[2] > 0:
                    self._hold(keys, cast("list[bytes]", values), None, gone)
                self.rows += n
                return keys, cast("list[bytes]", values)
            for key in keys:  # a key twice: undone, and the general way below
                self.row_of.pop(key, None)
        last = dict(zip(keys, range(self.rows, self.rows + n), strict=True))  # each key's last record here
        if len(last) < n:
            at = np.fromiter(last.values(), np.int64, len(last)) - self.rows
            at.sort()  # in the order of their last records
            keys, values = [keys[i] for i in at.tolist()], [values[i] for i in at.tolist()]
        prev = list(map(self.row_of.pop, keys, repeat(None, len(keys))))
        self.dead += compress(cast("list[int]", prev), map(operator.is_not, prev, repeat(None)))
        held = self.held
        if held:
            for i in np.nonzero(np.fromiter(map(held.__contains__, keys), bool, len(keys)))[0].tolist():
                key, value = keys[i], values[i]
                if value is None or key in gone:
                    del held[key]
                else:
                    held[key] = value
        if gone:
            live = [i for i, v in enumerate(values) if v is not None]
            keys, values, prev = [keys[i] for i in live], [values[i] for i in live], [prev[i] for i in live]
        records = cast("list[bytes]", values)  # no tombstone left
        if self.holdout[2] > 0:
            self._hold(keys, records, prev, gone)
        self.row_of.update(zip(keys, range(self.rows, self.rows + len(keys)), strict=True))
        self.rows += len(keys)
        if not keys:
            return None
        return keys, records

    def put(self, keys: list[bytes], records: list[bytes]) -> None:
        """The decoding side of `flush`: the next rows, decoded, in pieces of at most `PIECE_BYTES`
        of records."""
        lens = np.fromiter(map(len, records), np.int64, len(records))
        cuts = pieces(lens)
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            self.put_buffer(keys[a:b], join(records[a:b]), lens[a:b])

    def put_buffer(self, keys: list[bytes], joined: bytes | bytearray, lens: np.ndarray) -> None:
        """`put` of records given as `join(records)` and their lengths."""
        chunk = self.decoder.decode_buffer(joined, lens)
        if chunk.bad.any():
            start = np.concatenate([[0], np.cumsum(lens)]).tolist()
            for i in np.nonzero(chunk.bad)[0].tolist():
                self._skip(keys[i], bytes(joined[start[i] : start[i + 1]]))
        self.chunks.append(chunk)

    def summary(self) -> dict[str, Any]:
        """What `training_data` needs of the keys' side, when that side ran in another process
        (the hold-out cases picked there too, while the last chunks are decoded here)."""
        self.flush()
        return {
            "records": self.records,
            "rows": self.rows,
            "dead": np.asarray(self.dead, np.int64),
            "cases": self._cases(),
        }

    def merge(self, summary: dict[str, Any]) -> None:
        self.records, self.rows, self.picked = summary["records"], summary["rows"], summary["cases"]
        self.dead = summary["dead"].tolist()

    def pick_cases(self) -> None:
        """The gate's cases picked now, for `training_data`: every key is in (the last records
        may still be decoding)."""
        self.flush()
        self.picked = self._cases()

    def _cases(self) -> tuple[list[EvalCase], list[int], list[tuple[bytes, int, str]]]:
        """The gate's cases: of the held keys by rank, the first `holdout_size` that make one; their
        rows; and the rows met on the way whose record does not decode (with the key and why)."""
        fraction, floor, cap = self.holdout
        want = holdout_size(len(self.row_of), fraction, floor, cap)
        cases: list[EvalCase] = []
        rows: list[int] = []
        failed: list[tuple[bytes, int, str]] = []
        held = list(self.held)
        ranked = [k for _, k in sorted(zip(holdout_ranks(held).tolist(), held, strict=True))]
        at = 0
        while len(cases) < want and at < len(ranked):
            # in rank order, a batch at a time (a few more than are missing, as some make no case;
            # at most 2,048, whose arrays and objects are a few MB)
            batch = ranked[at : at + min((want - len(cases)) * 5 // 4 + 64, 2048)]
            at += len(batch)
            for key, got in zip(batch, held_cases(batch, [self.held[k] for k in batch], self.min_items), strict=True):
                if len(cases) >= want:
                    break
                if isinstance(got, str):
                    failed.append((key, self.row_of[key], got))
                elif got is not None:
                    cases.append(got)
                    rows.append(self.row_of[key])
        return cases, rows, failed

    def _hold(self, keys: list[bytes], values: list[bytes], prev: list[int | None] | None, gone: set[bytes]) -> None:
        """Keys new to the table (`prev` None: all of them; or written again after a tombstone)
        whose hold-out rank is below `cut` become candidates: their latest record is kept raw.
        Past `holdout_max` and a quarter more, only the `holdout_max` lowest ranks stay (ties: the
        earlier candidate) and `cut` falls to the highest of them. So the work per chunk is one
        rank per new key and a comparison, not a pass over every candidate."""
        held, cap = self.held, self.holdout[2]
        # (a held key has a live row: a key without one, or deleted here, is not held)
        if prev is None:
            new, ranks = keys, holdout_ranks(keys)
        else:
            at = [i for i, (k, p) in enumerate(zip(keys, prev, strict=True)) if p is None or k in gone]
            new = [keys[i] for i in at]
            values = [values[i] for i in at]
            ranks = holdout_ranks(new)
        for i in np.flatnonzero(ranks < self.cut).tolist():
            held[new[i]] = values[i]
        if len(held) > cap + cap // 4:
            cand = list(held)  # in the order they became candidates
            rank = holdout_ranks(cand)
            order = np.argsort(rank, kind="stable")
            for i in order[cap:].tolist():
                del held[cand[i]]  # a row already: only its raw copy goes
            self.cut = int(rank[order[cap - 1]])

    def _skip(self, key: bytes, value: bytes | None = None, why: str = "") -> None:
        self.skipped += 1
        if not why and value is not None:
            try:
                decode(value)
                why = "not a readable state record"
            except StateDecodeError as e:
                why = str(e)
        if self.skipped <= 20:
            log.warning("skipping unreadable state record for key %r: %s", key[:64], why)
        elif self.skipped == 21:
            log.warning("more unreadable state records: counted, not logged one by one")

    def training_data(self, source: str = "") -> TrainingData:
        """Everything read so far as training data: hold-out cases picked, the CSR assembled."""
        self.flush()
        cases, rows, failed = self._cases() if self.picked is None else self.picked
        bad = np.concatenate([ch.bad for ch in self.chunks]) if self.chunks else np.zeros(0, bool)
        for key, row, why in failed:
            if not bad[row]:  # (a record the chunk decoder rejected was counted then)
                self._skip(key, why=why)
                self.dead.append(row)
        self.dead += rows  # out of the matrix: the gate's cases
        self.held.clear()
        live = np.ones(self.rows, bool)
        live[np.asarray(self.dead, np.int64)] = False
        # Two passes over the chunks: which rows stay, then their non-zeros copied into the final
        # arrays, each chunk released as soon as it is copied (peak: about one CSR, not three).
        counts, last, keeps = [], [], []
        r0 = 0
        for ch in self.chunks:
            keep_rows = live[r0 : r0 + ch.rows] & ~ch.bad
            live[r0 : r0 + ch.rows] = keep_rows
            keeps.append(keep_rows)
            counts.append(ch.counts[keep_rows])
            last.append(ch.last_ts[keep_rows])
            r0 += ch.rows
        count = np.concatenate(counts) if counts else np.zeros(0, np.int64)
        last_ts = np.concatenate(last) if last else np.zeros(0, np.int64)
        nnz = int(count.sum())
        col = np.empty(nnz, np.int32)
        data = np.empty(nnz, np.float32)
        # Items seen only in superseded or skipped records are left out; the order stays first-seen.
        used = np.zeros(len(self.decoder.items), bool)
        at = 0
        for keep_rows in keeps:
            ch = self.chunks.pop(0)  # released once copied
            if keep_rows.all():  # the usual chunk: copied whole, no mask
                n = len(ch.cols)
                col[at : at + n] = ch.cols
                data[at : at + n] = ch.conf
            else:
                n = copy_kept(keep_rows, ch, col[at:], data[at:])
            used[col[at : at + n]] = True  # a chunk at a time: no int64 copy of every index
            at += n
        if not used.all():
            remap = (np.cumsum(used) - 1).astype(np.int32)
            for a in range(0, nnz, 1 << 24):  # in slices: no int64 copy of every index
                col[a : a + (1 << 24)] = remap[col[a : a + (1 << 24)]]
        items = [i for i, u in zip(self.decoder.items, used.tolist(), strict=True) if u]
        indptr = np.zeros(len(count) + 1, np.int64)
        np.cumsum(count, out=indptr[1:])
        if indptr[-1] == 0 and not cases:
            raise RecsysError(f"no training data: {source or 'the changelog'} holds no readable user state")
        matrix = sp.csr_matrix((data, col, indptr), shape=(len(count), len(items)))
        matrix.has_sorted_indices = (
            True  # every chunk's rows were sorted (`ChunkDecoder._chunk`); the remap keeps order
        )
        self.live = live
        ts = np.concatenate([last_ts, np.asarray([c.profile.last_ts for c in cases], np.int64)])
        return TrainingData(
            matrix,
            items,
            cases,
            last_ts_min=int(ts.min()) if len(ts) else 0,
            last_ts_max=int(ts.max()) if len(ts) else 0,
            source=source,
            skipped=self.skipped,
        )

    def live_keys(self) -> list[bytes]:
        """Row keys of the matrix `training_data` assembled (call it first), in row order: for
        tests and tools. They come from the keys' side (`row_of`: every live row is the row of its
        key), so after a read whose keys were kept in a reader process there are none here."""
        live = self.live
        return [k for _, k in sorted((r, k) for k, r in self.row_of.items() if r < len(live) and live[r])]


class LatestRecords:
    """The latest value per key (a tombstone removes the key): the small-scale sink, for tools and tests."""

    def __init__(self) -> None:
        self.latest: dict[bytes, bytes] = {}
        self.records = 0

    def add(self, records: Iterable[Any]) -> None:
        for r in records:
            self.records += 1
            if r.key is None:
                continue
            if r.value is None:
                self.latest.pop(r.key, None)
            else:
                self.latest[r.key] = r.value
