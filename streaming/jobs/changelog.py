"""The state changelog -> training data (a confidence CSR and the gate's held-out cases), in arrays.

The retrain reads every user's latest state record from the state table's changelog
(compacted, but possibly holding several records of a user that compaction has not merged yet)
and needs the users x items confidence matrix. No per-user Python object is built on the way:

  * Reading: librdkafka (confluent-kafka, `clients.BulkReader`) in large fetches, from the
    beginning of every partition to the end offsets measured at the start; it fetches, checks and
    parses in its own threads, in C, and hands keys and values over in batches. The latest record
    per key wins: records are gathered into chunks and, per chunk, only each key's last record is
    decoded (bulk dict operations, no Python code per record); a key seen again marks its earlier
    row dead; a tombstone removes the user. The chunks are decoded on a thread of their own
    (`_DecodeThread`) while this one reads on; numpy releases the GIL in the large operations, so
    fetching, keys and decoding overlap in one process. A progress bar and the rate go to the log
    every few seconds; a read that makes no progress for `stall_s` fails (no fixed limit on the
    whole read: a large changelog takes as long as it takes). The matrix is assembled at the end.
    (The aiokafka reader, `client="aiokafka"`, makes a Python object per record under the GIL;
    its consumer and bookkeeping can run in a forked reader process that writes each chunk's new
    rows to a pipe while the retrain's process decodes them.)
  * Decoding (`ChunkDecoder`): records are decoded in chunks of a few thousand, all at once, by
    walking every record of the chunk one field at a time with numpy (step j moves the records
    that have a j-th field, a prefix when they are ordered by field count; the state codec,
    streaming/worker/state.py, formats 1 and 2; every field is checked as `decode` checks it
    except that the history and last-list ids are not UTF-8-validated: training does not use
    them). Each item id becomes a 64-bit key (ids up to 7 bytes exactly; longer ones a hash,
    whose collisions are detected, never silent) and is interned once into a column number, in
    first-seen order; the item id text is made once per item. Confidences come from
    `ConfidenceConfig.confidences`, the one formula. A chunk keeps 8 bytes per non-zero
    (column int32, confidence float32): memory is a small multiple of the final CSR.
  * Hold-out: the users with the lowest `holdout_rank` (a hash of the id) are candidates: their
    latest raw record is kept too (the keys below a rank cut, which falls to the `holdout_max`-th
    lowest whenever they pass it by a quarter) and, at the end, the lowest-ranked (ties by key)
    that make a case (recsys.evaluation.offline.holdout_case) become the gate's cases and leave the
    matrix; the others stay in it. The cases are built from the held records' fields found as the
    decoder finds them (`held_cases`), the Python codec deciding any record that is not plain.
  * Threads: the reading thread's Python code (a librdkafka message per record, the keys) and the
    decoding thread's numpy calls share the GIL; during the read the cyclic GC is off (nothing
    read makes a cycle), so that it does not hold the GIL passing over millions of objects.

An unreadable or foreign record (wrong format version, truncated, trailing bytes) is skipped,
counted and logged with its key; it never stops the retrain. An empty changelog is an error that
says so.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import operator
import os
import queue
import resource
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Any, cast

import numpy as np
import scipy.sparse as sp

from recsys.confidence import ConfidenceConfig, ItemState, UserProfile
from recsys.errors import RecsysError
from recsys.evaluation.offline import EvalCase, holdout_case, holdout_size
from recsys.model.train import TrainingData
from streaming.worker.state import StateDecodeError, decode

log = logging.getLogger("streamrec.retrain")

CLIENTS = ("librdkafka", "aiokafka")  # read_training_data's consumers

# The state codec's layout (streaming/worker/state.py): header "<BqqIHBB", an item is
# "<H" id length, the id, "<dqB"; a string is "<H" length + bytes; format 2's tail "<qqh".
HEAD = 25
ITEM = 17
MSG = 18
READABLE = (1, 2)
PAD = 65_536 + 64  # past any position a walk can reach from a record's end (one u16 length)
LONG = np.uint64(1 << 63)
# By id length (0..8): the mask of its bytes in a little-endian word, and the length in the top byte.
SHORT_MASK = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [(1 << 64) - 1], np.uint64)
SHORT_LEN = np.array([n << 56 for n in range(9)], np.uint64)


def holdout_ranks(keys: list[bytes]) -> np.ndarray:
    """`holdout_rank` of many keys: its CRC-32, mapped in C (a test checks they agree)."""
    return np.fromiter(map(zlib.crc32, keys), np.int64, len(keys))


# A decoded piece's records, at most: each of its buffers (the joined records, ~25 arrays of
# 8 bytes per item) then stays under glibc's largest mmap threshold (32 MB) and is reused from the
# heap. Pieces of 36 MB (20,000 realistic records) were mapped and unmapped each time: ~0.5 page
# faults per record, and ~40% more CPU per record than pieces of 18 MB.
PIECE_BYTES = 16 << 20


def _pieces(lens: np.ndarray, limit: int = PIECE_BYTES) -> list[int]:
    """Cut points splitting records of these lengths into runs of at most `limit` bytes (a
    longer record alone)."""
    cuts, at, n = [0], 0, len(lens)
    ends = np.cumsum(lens)
    while at < n:
        base = int(ends[at - 1]) if at else 0
        nxt = max(int(np.searchsorted(ends, base + limit, side="right")), at + 1)
        cuts.append(min(nxt, n))
        at = cuts[-1]
    return cuts


def join(values: Sequence[bytes]) -> bytes:
    """Records as one buffer, with the padding `ChunkDecoder.decode_buffer` reads into."""
    return b"".join([*values, bytes(PAD)])


@dataclass
class Chunk:
    rows: int  # records in the chunk
    counts: np.ndarray  # (rows,) non-zeros of each row, 0 for a bad record
    cols: np.ndarray  # (nnz,) int32 global column of each non-zero
    conf: np.ndarray  # (nnz,) float32 confidence
    last_ts: np.ndarray  # (rows,) int64
    bad: np.ndarray  # (rows,) bool: unreadable, skipped


def _walk(
    u2: np.ndarray, pos: np.ndarray, count: np.ndarray, extra: int, lim: int, with_steps: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Steps over `count[i]` fields from `pos[i]`, each a u16 length, that many bytes and `extra`
    more bytes; every position clamped to `lim`. Returns the positions after the fields and, if
    `with_steps`, the start of every field, record by record (the fields of record i at
    sum(count[:i]) onwards).

    Step j moves every record that has a j-th field: in order of decreasing count those are a
    prefix, so each step is a few whole-slice operations (no masks); with `with_steps` each step
    also writes its positions straight to their places in record order (a running index per
    record), so no reordering pass over all the fields is needed afterwards."""
    n = len(pos)
    order = np.argsort(-count, kind="stable")
    sc = count[order]
    steps = int(sc[0]) if n else 0
    # active[j]: how many records have a j-th field
    active = np.searchsorted(-sc, -np.arange(steps), side="left")
    cur = pos[order]
    if with_steps:
        # where each record's next field goes in `flat`, in the walk's (sorted) order
        dest = np.empty(n, np.int64)
        dest[:1] = 0
        np.cumsum(count[:-1], out=dest[1:])
        dest = dest[order]
        flat = np.empty(int(active.sum()), np.int64)
    else:
        flat = np.empty(0, np.int64)
    for k in active.tolist():
        p = cur[:k]
        if with_steps:
            d = dest[:k]
            flat[d] = p
            d += 1
        p += u2[p]
        p += 2 + extra
        np.minimum(p, lim, out=p)
    out = np.empty(n, np.int64)
    out[order] = cur
    return out, flat


class KeyTable:
    """A hash table of uint64 keys -> int64 values, looked up and filled a whole array at a time
    (open addressing, linear probing, at most a quarter full). A binary search of a chunk's million
    ids in a sorted array of keys took ~10x as long."""

    EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)  # no item key has it (see ChunkDecoder._keys)
    MUL = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, bits: int = 16):
        self.bits = bits
        self.keys = np.full(1 << bits, self.EMPTY, np.uint64)
        self.values = np.full(1 << bits, -1, np.int64)
        self.size = 0

    def _slot(self, keys: np.ndarray) -> np.ndarray:
        return ((keys * self.MUL) >> np.uint64(64 - self.bits)).astype(np.int64)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key, -1 where absent."""
        slot = self._slot(keys)
        at = self.keys[slot]
        # most keys sit in their first slot, and an empty slot's value is -1 already: only the
        # keys whose first slot holds another key probe on
        out = self.values[slot]
        todo = np.flatnonzero(at != keys)
        if len(todo):
            todo = todo[at[todo] != self.EMPTY]
            out[todo] = -1
        mask = (1 << self.bits) - 1
        slot = (slot[todo] + 1) & mask
        while len(todo):
            at = self.keys[slot]
            hit = at == keys[todo]
            out[todo[hit]] = self.values[slot[hit]]
            more = ~hit & (at != self.EMPTY)
            todo, slot = todo[more], (slot[more] + 1) & mask
        return out

    def insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Add keys not in the table yet (distinct)."""
        if 4 * (self.size + len(keys)) > len(self.keys):
            old_k, old_v = self.keys[self.keys != self.EMPTY], self.values[self.keys != self.EMPTY]
            while 4 * (self.size + len(keys)) > (1 << self.bits):
                self.bits += 1
            self.keys = np.full(1 << self.bits, self.EMPTY, np.uint64)
            self.values = np.full(1 << self.bits, -1, np.int64)
            self.size = 0
            self._place(old_k, old_v)
        self._place(keys, values)

    def _place(self, keys: np.ndarray, values: np.ndarray) -> None:
        slot = self._slot(keys)
        mask = (1 << self.bits) - 1
        todo = np.arange(len(keys))
        while len(todo):
            free = self.keys[slot] == self.EMPTY
            # of the keys that want the same free slot, the first takes it; the rest probe on
            cand = np.nonzero(free)[0]
            _, first = np.unique(slot[cand], return_index=True)
            won = cand[first]
            self.keys[slot[won]] = keys[todo[won]]
            self.values[slot[won]] = values[todo[won]]
            lost = np.ones(len(todo), bool)
            lost[won] = False
            todo, slot = todo[lost], np.where(free[lost], slot[lost], (slot[lost] + 1) & mask)
        self.size += len(keys)


def _views(joined: bytes | bytearray, lens: np.ndarray) -> tuple[np.ndarray, ...]:
    """Records laid end to end in `joined` (lengths `lens`): each one's start and end, the buffer
    read as u1/u2/i8/f8 at every byte offset, which records hold a whole header (`ok`), and `hs`
    (their start, 0 for the others, so that header reads stay in bounds)."""
    start = np.zeros(len(lens), np.int64)
    np.cumsum(lens[:-1], out=start[1:])
    end = start + lens
    buf = np.frombuffer(joined, np.uint8)
    u2 = np.ndarray((len(buf) - 1,), "<u2", buf, 0, (1,))
    i8 = np.ndarray((len(buf) - 7,), "<i8", buf, 0, (1,))
    f8 = np.ndarray((len(buf) - 7,), "<f8", buf, 0, (1,))
    ok = lens >= HEAD
    return start, end, buf, u2, i8, f8, ok, np.where(ok, start, 0)


class ChunkDecoder:
    """Decodes chunks of encoded state records into CSR pieces with global item columns."""

    def __init__(self, ccfg: ConfidenceConfig):
        self.ccfg = ccfg
        self.table = KeyTable()  # item key -> column
        self.items: list[str] = []  # column -> item id
        self.long_ids: dict[int, bytes] = {}  # column -> id bytes, for ids keyed by a hash

    def decode(self, values: Sequence[bytes]) -> Chunk:
        return self.decode_buffer(join(values), np.fromiter(map(len, values), np.int64, len(values)))

    def decode_buffer(self, joined: bytes | bytearray, lens: np.ndarray) -> Chunk:
        """`decode` of records given as `join(values)` and their lengths."""
        n = len(lens)
        start, end, buf, u2, i8, f8, ok, hs = _views(joined, lens)
        size = int(end[-1]) if n else 0
        u1 = buf
        ver = u1[hs]
        last_ts = i8[hs + 9]
        n_items = u2[hs + 21].astype(np.int64)
        n_hist = u1[hs + 23].astype(np.int64)
        n_last = u1[hs + 24].astype(np.int64)
        ok &= np.isin(ver, READABLE) & (HEAD + n_items * (2 + ITEM) <= lens)
        n_items = np.where(ok, n_items, 0)
        n_hist = np.where(ok, n_hist, 0)
        n_last = np.where(ok, n_last, 0)
        # Every walk stops at `size + 1`, past the end of every record: a record whose walk ends
        # anywhere but at its own end is bad; positions only grow, so one that ends inside its record
        # read every field inside it. Reads from `size + 1` stay in the zero padding.
        lim = size + 1
        pos, item_at = _walk(u2, start + HEAD, n_items, ITEM, lim, with_steps=True)
        pos, _ = _walk(u2, pos, n_hist, 0, lim)
        pos = np.minimum(pos + 8, lim)
        pos = np.minimum(pos + 2 + u2[pos], lim)  # the serving version
        pos, _ = _walk(u2, pos, n_last, 0, lim)
        v2 = ver >= 2
        pos = np.where(v2, np.minimum(pos + 4 * n_last, lim), pos)
        pos, _ = _walk(u2, pos, v2.astype(np.int64) * 2, 0, lim)
        pos = np.where(v2, pos + MSG, pos)
        ok &= pos == end
        id_len = u2[item_at].astype(np.int64)
        id_pos = item_at + 2
        after = id_pos + id_len
        value = f8[after]
        ts = i8[after + 8]
        ages = np.repeat(last_ts, n_items)
        ages -= ts
        if ok.all():  # the usual case: every id of the chunk kept, no masks
            cols = self._intern(u1, i8, id_pos, id_len, None)
            if cols is not None:
                conf = self.ccfg.confidences(value, ages).astype(np.float32)
                return self._chunk(n_items, cols, conf, last_ts, ~ok)
        keep = np.repeat(ok, n_items)
        cols = self._intern(u1, i8, id_pos, id_len, keep)
        if cols is None:  # an id that is not UTF-8: find its records, drop them, intern again
            ok &= self._utf8_rows(buf, id_pos, id_len, n_items)
            keep = np.repeat(ok, n_items)
            cols = self._intern(u1, i8, id_pos, id_len, keep)
            assert cols is not None
        conf = self.ccfg.confidences(value[keep], ages[keep]).astype(np.float32)
        return self._chunk(np.where(ok, n_items, 0), cols[keep], conf, last_ts, ~ok)

    def _chunk(self, counts: np.ndarray, cols: np.ndarray, conf: np.ndarray, last_ts: np.ndarray, bad: np.ndarray):
        """The chunk with each row's columns in order (sorted here, as it is decoded, rather than in
        the assembled matrix, which keeps the order: the read is not held up by a sort at its end)."""
        indptr = np.zeros(len(counts) + 1, np.int32)  # int32 like the columns: scipy keeps both arrays
        np.cumsum(counts, out=indptr[1:])
        rows = sp.csr_matrix((conf, cols, indptr), shape=(len(counts), len(self.items)), copy=False)
        rows.sort_indices()  # in place
        return Chunk(len(counts), counts, rows.indices, rows.data, last_ts, bad)

    def _keys(self, i8: np.ndarray, id_pos: np.ndarray, id_len: np.ndarray) -> np.ndarray:
        """A 64-bit key per id: ids of up to 7 bytes exactly (bytes + length in the top byte),
        longer ones an FNV-style hash over 8-byte words with the top bit set."""
        u8 = i8.view(np.uint64)
        longest = int(id_len.max(initial=0))
        n8 = id_len if longest < 8 else np.minimum(id_len, 8)
        keys = u8[id_pos]
        part = SHORT_MASK.take(n8)
        keys &= part
        np.take(SHORT_LEN, n8, out=part)
        keys |= part
        if longest >= 8:
            lg = np.flatnonzero(id_len >= 8)
            p, ln = id_pos[lg], id_len[lg]
            h = ln.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            for w in range(int((ln.max() + 7) // 8)):
                valid = np.clip(ln - 8 * w, 0, 8)
                m = np.where(
                    valid >= 8,
                    np.uint64(0xFFFFFFFFFFFFFFFF),
                    (np.uint64(1) << (valid * 8).astype(np.uint64)) - np.uint64(1),
                )
                h = (h ^ (u8[p + 8 * w] & m)) * np.uint64(0x100000001B3)
                h ^= h >> np.uint64(29)
            keys[lg] = (h | LONG) ^ ((h | LONG) == KeyTable.EMPTY).astype(np.uint64)  # never EMPTY
        return keys

    def _intern(
        self, u1: np.ndarray, i8: np.ndarray, id_pos: np.ndarray, id_len: np.ndarray, keep: np.ndarray | None
    ) -> np.ndarray | None:
        """Global column of each kept id (None: all), new ids appended in first-seen order; None if
        a new id is not UTF-8 (nothing is interned then)."""
        if keep is None:
            pos, ln = id_pos, id_len
        else:
            sel = np.nonzero(keep)[0]
            if not len(sel):
                return np.full(len(id_pos), -1, np.int32)
            pos, ln = id_pos[sel], id_len[sel]
        keys = self._keys(i8, pos, ln)
        out = self.table.lookup(keys)
        lg = np.nonzero(keys & LONG)[0]
        if len(lg):  # hashed ids: the same key must mean the same bytes, in the chunk and before it
            _, rep, inv = np.unique(keys[lg], return_index=True, return_inverse=True)
            self._check_same_bytes(u1, pos[lg], ln[lg], rep[inv.ravel()])
            for k in rep[out[lg][rep] >= 0].tolist():
                e = lg[k]
                b, known = u1[pos[e] : pos[e] + ln[e]].tobytes(), self.long_ids[int(out[e])]
                if b != known:
                    raise RecsysError(f"item ids {b!r} and {known!r} share a 64-bit key: report this")
        miss = np.nonzero(out < 0)[0]
        if len(miss):
            uniq, first, inv = np.unique(keys[miss], return_index=True, return_inverse=True)
            first = miss[first]
            new_order = np.argsort(first, kind="stable")
            names = []
            longs = {}
            base = len(self.items)
            for n, k in enumerate(new_order.tolist()):
                e = first[k]
                b = u1[pos[e] : pos[e] + ln[e]].tobytes()
                try:
                    names.append(b.decode())
                except UnicodeDecodeError:
                    return None
                if uniq[k] & LONG:
                    longs[base + n] = b
            ucol = np.empty(len(uniq), np.int64)
            ucol[new_order] = np.arange(base, base + len(uniq))
            out[miss] = ucol[inv.ravel()]
            self.items.extend(names)
            self.long_ids.update(longs)
            self.table.insert(uniq, ucol)
        if keep is None:
            return out.astype(np.int32)
        cols = np.full(len(id_pos), -1, np.int32)
        cols[sel] = out
        return cols

    @staticmethod
    def _check_same_bytes(u1: np.ndarray, pos: np.ndarray, ln: np.ndarray, rep: np.ndarray) -> None:
        """Within a chunk, every hashed id must equal the first id with its key."""
        same = ln == ln[rep]
        for b in range(int(ln.max(initial=0))):
            at = np.minimum(b, ln - 1)
            same &= (b >= ln) | (u1[pos + at] == u1[pos[rep] + at])
        if not same.all():
            raise RecsysError("two item ids share a 64-bit key: report this")

    @staticmethod
    def _utf8_rows(buf: np.ndarray, id_pos: np.ndarray, id_len: np.ndarray, n_items: np.ndarray) -> np.ndarray:
        raw = buf.tobytes()
        good = np.ones(len(id_pos), bool)
        for e in range(len(id_pos)):
            try:
                raw[id_pos[e] : id_pos[e] + id_len[e]].decode()
            except UnicodeDecodeError:
                good[e] = False
        rows = np.repeat(np.arange(len(n_items)), n_items)
        ok = np.ones(len(n_items), bool)
        ok[rows[~good]] = False
        return ok


def _copy_kept(keep_rows: np.ndarray, ch: Chunk, col: np.ndarray, data: np.ndarray) -> int:
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


def _held_case(key: bytes, value: bytes, min_items: int) -> EvalCase | str | None:
    """A held-out user's case through the Python codec: the case, None (too few items), or why
    the record does not decode."""
    try:
        state = decode(value)
        user = key.decode()
    except (StateDecodeError, UnicodeDecodeError) as e:
        return str(e)
    return holdout_case(user, state.profile, min_items)


def held_cases(keys: Sequence[bytes], values: Sequence[bytes], min_items: int) -> list[EvalCase | str | None]:
    """`_held_case` of many records, equal to it record by record: the fields of all of them are
    found at once (`_walk`) and the cases built from arrays. A record whose strings are not all
    ASCII, or that names an item twice, or that does not walk to its end, goes through the Python
    codec instead, which decides (and words) exactly what `decode` accepts."""
    n = len(values)
    out: list[EvalCase | str | None] = [None] * n
    if not n:
        return out
    lens = np.fromiter(map(len, values), np.int64, n)
    joined = join(values)
    start, end, buf, u2, i8, f8, ok, hs = _views(joined, lens)
    ver = buf[hs]
    n_items = u2[hs + 21].astype(np.int64)
    n_hist = buf[hs + 23].astype(np.int64)
    n_last = buf[hs + 24].astype(np.int64)
    ok &= np.isin(ver, READABLE) & (HEAD + n_items * (2 + ITEM) <= lens)
    n_items, n_hist, n_last = (np.where(ok, x, 0) for x in (n_items, n_hist, n_last))
    lim = int(end[-1]) + 1
    v2 = (ver >= 2) & ok
    items_end, item_at = _walk(u2, start + HEAD, n_items, ITEM, lim, with_steps=True)
    hist_end, _ = _walk(u2, items_end, n_hist, 0, lim)
    version_at = np.minimum(hist_end + 8, lim)
    version_end = np.minimum(version_at + 2 + u2[version_at], lim)
    last_end, _ = _walk(u2, version_end, n_last, 0, lim)
    tail_at = np.where(v2, np.minimum(last_end + 4 * n_last, lim), last_end)
    tail_end, _ = _walk(u2, tail_at, v2.astype(np.int64) * 2, 0, lim)
    ok &= np.where(v2, tail_end + MSG, tail_end) == end
    # The strings other than the item ids, a section at a time: all ASCII (their u16 lengths too,
    # which are then below 128) means all valid UTF-8; anything else goes to the codec.
    cut = [x.tolist() for x in (items_end, hist_end, version_at, last_end, tail_at, tail_end)]
    fast = ok.copy()
    for r in np.flatnonzero(ok).tolist():
        if not (
            joined[cut[0][r] : cut[1][r]].isascii()
            and joined[cut[2][r] : cut[3][r]].isascii()
            and joined[cut[4][r] : cut[5][r]].isascii()
        ):
            fast[r] = False
    # the items of the fast records, each record's in (time, id) order
    listed = np.flatnonzero(fast)
    sel = np.repeat(fast, n_items)  # of the items walked
    item_at = item_at[sel]
    rec_of = np.repeat(np.arange(n), np.where(fast, n_items, 0))
    after = item_at + 2 + u2[item_at]
    spans = list(zip((item_at + 2).tolist(), after.tolist(), strict=True))
    try:
        names = [joined[a:b].decode() for a, b in spans]
    except UnicodeDecodeError:  # an id that is not UTF-8: its record goes to the codec
        names = []
        for (a, b), r in zip(spans, rec_of.tolist(), strict=True):
            try:
                names.append(joined[a:b].decode())
            except UnicodeDecodeError:
                names.append("")
                fast[r] = False
    value, ts, mask = f8[after].tolist(), i8[after + 8].tolist(), buf[after + 16].tolist()
    offsets = np.zeros(len(listed) + 1, np.int64)
    np.cumsum(n_items[listed], out=offsets[1:])
    for r, a, b in zip(listed.tolist(), offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
        if not fast[r] or len(set(names[a:b])) < b - a:  # (an item twice: the codec keeps its last state)
            fast[r] = False
            continue
        try:
            user = keys[r].decode()
        except UnicodeDecodeError as e:
            out[r] = str(e)
            continue
        if b - a < min_items:
            continue
        at = [i for _, _, i in sorted(zip(ts[a:b], names[a:b], range(a, b), strict=True))]  # by (time, id)
        half = at[: (b - a + 1) // 2]
        profile = UserProfile()
        profile.items = {names[i]: ItemState(value[i], ts[i], mask[i]) for i in half}
        profile.last_ts = ts[half[-1]]
        out[r] = EvalCase(user, names[half[-1]], {names[i] for i in at[len(half) :]}, profile)
    for r in np.flatnonzero(~fast).tolist():
        out[r] = _held_case(keys[r], values[r], min_items)
    return out


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
        cuts = _pieces(lens)
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
                n = _copy_kept(keep_rows, ch, col[at:], data[at:])
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
            _read_in_child(bootstrap, topic, table, stall_s, progress_every_s, client)
            # its memory is not in this process's peak RSS: logged (the largest of this process's
            # children so far, which is this reader unless something bigger ran before it)
            reader_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            log.info("the changelog reader process's peak RSS: %.0f MB", reader_mb)
        elif client == "librdkafka":
            read_bulk(bootstrap, topic, table, stall_s, progress_every_s, decode_thread)
        else:
            asyncio.run(_read(bootstrap, topic, table, stall_s, progress_every_s))
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


def _read_in_child(
    bootstrap: str, topic: str, table: ChangelogTable, stall_s: float, every_s: float, client: str = "aiokafka"
) -> None:
    """A read into `table` with the consumer (`client`'s) and the keys' side of the table in a
    forked child; chunks are decoded here as they arrive (the pipe holds the child back when
    decoding lags)."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_reader_child,
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


def _reader_child(
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
            asyncio.run(_read(bootstrap, topic, index, stall_s, every_s))
        conn.send(("done", index.summary()))
    except BaseException as e:  # noqa: BLE001 - every failure goes to the parent, which raises it
        try:
            conn.send(("error", e))
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its text then
            conn.send(("error", RecsysError(f"reading {topic}: {e!r}")))
    finally:
        conn.close()


class _Latest:
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


def read_profiles(bootstrap: str, topic: str, stall_s: float = 60.0) -> dict[str, UserProfile]:
    """user -> UserProfile from the latest record of every user in `topic` (per-user objects:
    for inspection and tests at small scale; the retrain uses `read_training_data`). Unreadable
    records are skipped and logged. An empty or missing changelog gives an empty dict."""
    sink = _Latest()
    try:
        asyncio.run(_read(bootstrap, topic, sink, stall_s, 5.0))
    except EmptyChangelog:
        return {}
    out: dict[str, UserProfile] = {}
    for key, value in sink.latest.items():
        try:
            out[key.decode()] = decode(value).profile
        except (StateDecodeError, UnicodeDecodeError) as e:
            log.warning("skipping unreadable state record for key %r: %s", key[:64], e)
    return out


class EmptyChangelog(RecsysError):
    """The changelog topic is missing or holds no record."""


def _bar(frac: float, width: int = 20) -> str:
    done = int(round(frac * width))
    return "[" + "#" * done + "." * (width - done) + "]"


async def _read(bootstrap: str, topic: str, table: ChangelogTable | _Latest, stall_s: float, every_s: float) -> None:
    from streaming.kafka import clients

    async with clients.topic_reader(bootstrap, topic, "streamrec-retrain") as (consumer, tps):
        if not tps:
            raise _missing(topic, bootstrap)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        total = sum(end[tp] - begin[tp] for tp in tps)
        if total == 0:
            raise _empty(topic)
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
                raise _stalled(topic, stall_s, table.records, total)
            if now - last_report >= every_s:
                last_report = now
                _progress(topic, table.records, total, now - t0)


def _progress(topic: str, done: int, total: int, secs: float) -> None:
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


def _stalled(topic: str, stall_s: float, done: int, total: int) -> RecsysError:
    return RecsysError(
        f"reading {topic} stalled: no record for {stall_s:.0f}s with {done} of {total} read (retrain.changelog_stall_s)"
    )


def _missing(topic: str, bootstrap: str) -> EmptyChangelog:
    return EmptyChangelog(
        f"no training data: the state changelog {topic} does not exist on {bootstrap} "
        "(no worker has run with this app id yet; or give --data FILE)"
    )


def _empty(topic: str) -> EmptyChangelog:
    return EmptyChangelog(
        f"no training data: the state changelog {topic} is empty (no user has any state yet: "
        "run the workers on events first, or give --data FILE)"
    )


class _DecodeThread:
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
    `decode_thread`, its chunks are decoded on a `_DecodeThread` meanwhile (else wherever its
    `sink` sends them: decoded here, or to another process)."""
    from streaming.kafka import clients

    with clients.BulkReader(bootstrap, topic, "streamrec-retrain", timeout_s=stall_s) as reader:
        if not reader.partitions:
            raise _missing(topic, bootstrap)
        marks = reader.watermarks()
        total = sum(end - begin for begin, end in marks.values())
        if total == 0:
            raise _empty(topic)
        left = {p: end for p, (begin, end) in marks.items() if end > begin}
        reader.start({p: marks[p][0] for p in left})
        log.info("reading %s: %d records in %d partitions", topic, total, len(marks))
        decoder = _DecodeThread(table) if decode_thread else None
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
                    raise _stalled(topic, stall_s, table.records, total)
                if now - last_report >= every_s:
                    last_report = now
                    _progress(topic, table.records, total, now - t0)
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
