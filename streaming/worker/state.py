"""The worker's per-user state record and its compact binary encoding.

A record is the user's confidence profile (recsys.confidence.UserProfile: item id -> raw value,
time, event-type mask; last event time; recent history; last applied input offset) plus the
last recommendation published for the user (for the HTTP lookup, which returns what the
recommendations topic carried, and the live hit rate).

Encoding (little-endian, version byte first; ~27 bytes per remembered item plus its id):

    header   B version | q offset | q last_ts | I events | H n_items | B n_history | B n_last
    items    n_items x (H id_len, id, d value, q ts, B mask)
    history  n_history x (H id_len, id)
    last     q published_ms | H version_len, model version | n_last x (H id_len, id)
    version 2 adds (~70 bytes a user with a 10-item list and a 10-byte query id):
    message  n_last x f score | H source_len, source | H query_len, query
             | q event_ts | q ingest_ts | h partition

Version-1 records (no `message` part) still decode: their scores are empty, source and query
"", times 0 and partition -1 until the user's next batch rewrites them.

Values are float64 so that what a worker stores equals, bit for bit, what recsys computes
for the same events (and what a retrain reads back from the changelog).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from recsys.confidence import ItemState, UserProfile

FORMAT_VERSION = 2
_READABLE = (1, 2)
_HEAD = struct.Struct("<BqqIHBB")
_MSG = struct.Struct("<qqh")
_F = struct.Struct("<f")
_ITEM = struct.Struct("<dqB")
_LEN = struct.Struct("<H")
_Q = struct.Struct("<q")


class StateDecodeError(ValueError):
    pass


@dataclass
class UserState:
    profile: UserProfile = field(default_factory=UserProfile)
    last_items: list[str] = field(default_factory=list)  # the list last published
    last_version: str = ""  # the model version that produced it
    last_published_ms: int = 0
    # the rest of that recommendation message (docs/formats.md), so the HTTP lookup returns it whole
    last_scores: list[float] = field(default_factory=list)  # float32 precision
    last_source: str = ""
    last_query: str = ""
    last_event_ts: int = 0
    last_ingest_ts: int = 0
    last_partition: int = -1


def encode(state: UserState) -> bytes:
    p = state.profile
    history = p.history[-255:]
    last = state.last_items[:255]
    out = [
        _HEAD.pack(
            FORMAT_VERSION, p.offset, p.last_ts, min(p.events, 0xFFFFFFFF), len(p.items), len(history), len(last)
        )
    ]
    for item, st in p.items.items():
        b = item.encode()
        out.append(_LEN.pack(len(b)))
        out.append(b)
        out.append(_ITEM.pack(st.value, st.ts, st.mask))
    for item in history:
        b = item.encode()
        out.append(_LEN.pack(len(b)) + b)
    v = state.last_version.encode()
    out.append(_Q.pack(state.last_published_ms) + _LEN.pack(len(v)) + v)
    for item in last:
        b = item.encode()
        out.append(_LEN.pack(len(b)) + b)
    scores = state.last_scores[: len(last)]
    scores += [0.0] * (len(last) - len(scores))
    out.append(struct.pack(f"<{len(last)}f", *scores))
    for text in (state.last_source, state.last_query):
        b = text.encode()
        out.append(_LEN.pack(len(b)) + b)
    out.append(_MSG.pack(state.last_event_ts, state.last_ingest_ts, max(-1, min(state.last_partition, 0x7FFF))))
    return b"".join(out)


def decode(data: bytes) -> UserState:
    try:
        ver, offset, last_ts, events, n_items, n_hist, n_last = _HEAD.unpack_from(data, 0)
        if ver not in _READABLE:
            raise StateDecodeError(f"unknown state format version {ver}")
        pos = _HEAD.size
        p = UserProfile()
        p.offset, p.last_ts, p.events = offset, last_ts, events

        def text() -> str:
            nonlocal pos
            (n,) = _LEN.unpack_from(data, pos)
            pos += 2
            s = data[pos : pos + n].decode()
            if len(s.encode()) != n:
                raise StateDecodeError("truncated id")
            pos += n
            return s

        items = p.items
        for _ in range(n_items):
            item = text()
            value, ts, mask = _ITEM.unpack_from(data, pos)
            pos += _ITEM.size
            items[item] = ItemState(value, ts, mask)
        p.history = [text() for _ in range(n_hist)]
        (published,) = _Q.unpack_from(data, pos)
        pos += 8
        version = text()
        last = [text() for _ in range(n_last)]
        state = UserState(p, last, version, published)
        if ver >= 2:
            state.last_scores = list(struct.unpack_from(f"<{n_last}f", data, pos))
            pos += 4 * n_last
            state.last_source = text()
            state.last_query = text()
            state.last_event_ts, state.last_ingest_ts, state.last_partition = _MSG.unpack_from(data, pos)
            pos += _MSG.size
        if pos != len(data):
            raise StateDecodeError(f"{len(data) - pos} trailing bytes")
        return state
    except (struct.error, UnicodeDecodeError) as e:
        raise StateDecodeError(f"corrupt state record: {e}") from None
