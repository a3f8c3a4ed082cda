"""Changelog records -> arrays, many at a time: the state codec (streaming/worker/state.py, formats 1
and 2) walked with numpy instead of Python per record.

Records are decoded in chunks of a few thousand, all at once, by walking every record of the chunk
one field at a time (step j moves the records that have a j-th field, a prefix when they are
ordered by field count). Every field is checked as `decode` checks it, except that the history and
last-list ids are not UTF-8-validated: training does not use them. Each item id becomes a 64-bit
key (ids up to 7 bytes exactly; longer ones a hash, whose collisions are detected, never silent)
and is interned once into a column number, in first-seen order; the item id text is made once per
item. Confidences come from `ConfidenceConfig.confidences`, the one formula. A chunk keeps 8 bytes
per non-zero (column int32, confidence float32): memory is a small multiple of the final CSR.

The gate's held-out users are decoded here too (`held_cases`): their cases are built from the
fields the walk finds, and the Python codec decides any record that is not plain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys.confidence import ConfidenceConfig, ItemState, UserProfile
from recsys.errors import RecsysError
from recsys.evaluation.offline import EvalCase, holdout_case
from streaming.worker.state import StateDecodeError, decode

# The state codec's layout (streaming/worker/state.py): header "<BqqIHBB", an item is
# "<H" id length, the id, "<dqB"; a string is "<H" length + bytes; format 2's tail "<qqh".
HEAD = 25


HEAD = 25
ITEM = 17


ITEM = 17
MSG = 18


MSG = 18
READABLE = (1, 2)


READABLE = (1, 2)
PAD = 65_536 + 64  # past any position a walk can reach from a record's end (one u16 length)


PAD = 65_536 + 64  # past any position a walk can reach from a record's end (one u16 length)
LONG = np.uint64(1 << 63)


LONG = np.uint64(1 << 63)
# By id length (0..8): the mask of its bytes in a little-endian word, and the length in the top byte.
SHORT_MASK = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [(1 << 64) - 1], np.uint64)


SHORT_MASK = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [(1 << 64) - 1], np.uint64)
SHORT_LEN = np.array([n << 56 for n in range(9)], np.uint64)


# A decoded piece's records, at most: each of its buffers (the joined records, ~25 arrays of
# 8 bytes per item) then stays under glibc's largest mmap threshold (32 MB) and is reused from the
# heap. Pieces of 36 MB (20,000 realistic records) were mapped and unmapped each time: ~0.5 page
# faults per record, and ~40% more CPU per record than pieces of 18 MB.
PIECE_BYTES = 16 << 20


def pieces(lens: np.ndarray, limit: int = PIECE_BYTES) -> list[int]:
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


def walk(
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
        dest: np.ndarray = np.empty(n, np.int64)
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


def views(joined: bytes | bytearray, lens: np.ndarray) -> tuple[np.ndarray, ...]:
    """Records laid end to end in `joined` (lengths `lens`): each one's start and end, the buffer
    read as u1/u2/i8/f8 at every byte offset, which records hold a whole header (`ok`), and `hs`
    (their start, 0 for the others, so that header reads stay in bounds)."""
    start = np.zeros(len(lens), np.int64)
    np.cumsum(lens[:-1], out=start[1:])
    end = start + lens
    buf = np.frombuffer(joined, np.uint8)
    u2: np.ndarray = np.ndarray((len(buf) - 1,), "<u2", buf, 0, (1,))
    i8: np.ndarray = np.ndarray((len(buf) - 7,), "<i8", buf, 0, (1,))
    f8: np.ndarray = np.ndarray((len(buf) - 7,), "<f8", buf, 0, (1,))
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
        start, end, buf, u2, i8, f8, ok, hs = views(joined, lens)
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
        pos, item_at = walk(u2, start + HEAD, n_items, ITEM, lim, with_steps=True)
        pos, _ = walk(u2, pos, n_hist, 0, lim)
        pos = np.minimum(pos + 8, lim)
        pos = np.minimum(pos + 2 + u2[pos], lim)  # the serving version
        pos, _ = walk(u2, pos, n_last, 0, lim)
        v2 = ver >= 2
        pos = np.where(v2, np.minimum(pos + 4 * n_last, lim), pos)
        pos, _ = walk(u2, pos, v2.astype(np.int64) * 2, 0, lim)
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


def held_case(key: bytes, value: bytes, min_items: int) -> EvalCase | str | None:
    """A held-out user's case through the Python codec: the case, None (too few items), or why
    the record does not decode."""
    try:
        state = decode(value)
        user = key.decode()
    except (StateDecodeError, UnicodeDecodeError) as e:
        return str(e)
    return holdout_case(user, state.profile, min_items)


def held_cases(keys: Sequence[bytes], values: Sequence[bytes], min_items: int) -> list[EvalCase | str | None]:
    """`held_case` of many records, equal to it record by record: the fields of all of them are
    found at once (`walk`) and the cases built from arrays. A record whose strings are not all
    ASCII, or that names an item twice, or that does not walk to its end, goes through the Python
    codec instead, which decides (and words) exactly what `decode` accepts."""
    n = len(values)
    out: list[EvalCase | str | None] = [None] * n
    if not n:
        return out
    lens = np.fromiter(map(len, values), np.int64, n)
    joined = join(values)
    start, end, buf, u2, i8, f8, ok, hs = views(joined, lens)
    ver = buf[hs]
    n_items = u2[hs + 21].astype(np.int64)
    n_hist = buf[hs + 23].astype(np.int64)
    n_last = buf[hs + 24].astype(np.int64)
    ok &= np.isin(ver, READABLE) & (HEAD + n_items * (2 + ITEM) <= lens)
    n_items, n_hist, n_last = (np.where(ok, x, 0) for x in (n_items, n_hist, n_last))
    lim = int(end[-1]) + 1
    v2 = (ver >= 2) & ok
    items_end, item_at = walk(u2, start + HEAD, n_items, ITEM, lim, with_steps=True)
    hist_end, _ = walk(u2, items_end, n_hist, 0, lim)
    version_at = np.minimum(hist_end + 8, lim)
    version_end = np.minimum(version_at + 2 + u2[version_at], lim)
    last_end, _ = walk(u2, version_end, n_last, 0, lim)
    tail_at = np.where(v2, np.minimum(last_end + 4 * n_last, lim), last_end)
    tail_end, _ = walk(u2, tail_at, v2.astype(np.int64) * 2, 0, lim)
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
        out[r] = held_case(keys[r], values[r], min_items)
    return out
