"""Load the real e-commerce datasets (and a shop's own logs) into `list[Event]`.

One loader per on-disk format, all funnelled through `load_events`, which detects the
format from the header row (and, for the header-less original Taobao file, the file name):

=============  =====================================================  ===========================
format         header                                                 notes
=============  =====================================================  ===========================
taobao         user_id,item_id,category_id,behavior,timestamp         seconds; pv/cart/fav/buy
yoochoose      SessionId<TAB>ItemId<TAB>Time                          float seconds; clicks only;
                                                                      the session IS the user
rees46         event_time,event_type,product_id,category_id,          "2019-10-01 00:00:00 UTC";
               category_code,brand,price,user_id,user_session         view/cart/purchase, price
retailrocket   visitorid,itemid,event                                 NO time: synthetic ts
otto           session,aid,ts,type                                    ms; clicks/carts/orders;
                                                                      the session IS the user
canonical      user,item,type,ts[,dwell,session,price,event_id]       CSV or JSON lines; every
                                                                      row via `parse_event`
=============  =====================================================  ===========================

Plain and gzip files both work (gzip is recognised by its magic bytes; a ``.gz`` name on a
file that is not gzip is an error). Every malformed row raises `DataError` naming the file
and the 1-based line (the header is line 1); with ``lenient=True`` bad rows are skipped and
counted by reason in a `LoadStats`. Blank lines are ignored and not counted as rows.

The result is always sorted by time, stably (rows with equal ``ts`` keep file order),
because the stream and the evaluation replay events in time order.

See docs/data-formats.md for the canonical format and the vocabulary mapping.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import gzip
import io
import itertools
import json
import math
import os
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from pathlib import Path
from typing import Any

from recsys.errors import ConfigError, DataError, EventError
from recsys.events import (
    CANONICAL_FIELDS,
    MAX_FUTURE_SKEW_MS,
    MAX_ID_LEN,
    MIN_TS_MS,
    Event,
    InputConfig,
    parse_event,
    parse_iso,
    show,
)
from recsys.progress import say

__all__ = [
    "DATASETS",
    "FORMATS",
    "RETAILROCKET_EPOCH_MS",
    "LoadStats",
    "data_dir",
    "dataset_path",
    "load_dataset",
    "load",
    "detect_format",
    "load_events",
    "load_taobao",
    "load_yoochoose",
    "load_rees46",
    "load_retailrocket",
    "load_otto",
    "load_canonical",
    "write_canonical",
    "time_split",
]

# Short name -> file name in data_dir() (see /work/shared/data/README.md).
DATASETS: dict[str, str] = {
    "taobao": "taobao_userbehavior_train.csv.gz",
    "taobao_small": "taobao_userbehavior_small.csv.gz",
    "yoochoose": "yoochoose_clicks100k_train.tsv.gz",
    "rees46": "rees46_2019oct_head_train.csv.gz",
    "rees46_small": "rees46_2019oct_small.csv.gz",
    "retailrocket": "retailrocket_caserec_binary.csv.gz",
    "otto": "otto_20_sessions.csv.gz",
}

# Expected header of each format (compared after strip + lower-case). For `canonical`
# these are the required columns; any others are allowed and the known optional ones used.
_HEADERS: dict[str, tuple[str, ...]] = {
    "taobao": ("user_id", "item_id", "category_id", "behavior", "timestamp"),
    "yoochoose": ("sessionid", "itemid", "time"),
    "rees46": (
        "event_time",
        "event_type",
        "product_id",
        "category_id",
        "category_code",
        "brand",
        "price",
        "user_id",
        "user_session",
    ),
    "retailrocket": ("visitorid", "itemid", "event"),
    "otto": ("session", "aid", "ts", "type"),
    "canonical": ("user", "item", "type", "ts"),
}
FORMATS: tuple[str, ...] = tuple(_HEADERS)
# The column holding each format's event type (for the lenient loader's per-type check).
_TYPE_COLUMN = {"taobao": 3, "rees46": 1, "retailrocket": 2, "otto": 3}
EXAMPLES_PER_REASON = 3

# Each dataset's own vocabulary -> canonical type (exact words of that dataset only).
TAOBAO_TYPES = {"pv": "view", "cart": "addtocart", "fav": "favorite", "buy": "transaction"}
REES46_TYPES = {"view": "view", "cart": "addtocart", "purchase": "transaction"}
# REES46 months other than Oct 2019 also log `remove_from_cart`, which has no canonical
# type: such rows are valid input, skipped in both modes and counted under this reason.
REES46_IGNORED = {"remove_from_cart": "ignored_remove_from_cart"}
RETAILROCKET_TYPES = {"view": "view", "addtocart": "addtocart", "transaction": "transaction"}
OTTO_TYPES = {"clicks": "click", "carts": "addtocart", "orders": "transaction"}

# RetailRocket (CaseRecommender derivative) has no timestamps. Row i (0-based, file order)
# gets ts = this epoch + i ms: 2015-05-03 00:00 UTC, the start of the original data.
RETAILROCKET_EPOCH_MS = 1_430_611_200_000

_GZIP_MAGIC = b"\x1f\x8b"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass
class LoadStats:
    """What a load saw. Filled in by `load_events` in strict and lenient mode alike.

    rows: non-blank data rows read (header excluded); loaded: events returned;
    skipped: rows dropped; reasons: skipped rows by reason code (e.g. ``column_count``,
    ``bad_ts``, ``unknown_type``, ``empty_user``); fmt: the format that was used;
    examples: the first few skipped rows of each reason as (line, offending value);
    messages: the full message of each reason's first skipped row; types_seen /
    types_skipped: rows by the file's own event type (lenient loads).
    """

    rows: int = 0
    loaded: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    fmt: str | None = None
    examples: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    types_seen: Counter = field(default_factory=Counter)
    types_skipped: dict[str, Counter] = field(default_factory=dict)  # type -> skipped rows by reason

    def report(self) -> str:
        """What was skipped, by reason, with the first examples: '' if nothing was."""
        if not self.skipped:
            return ""
        lines = [f"skipped {self.skipped} of {self.rows} rows:"]
        for reason, n in self.reasons.most_common():
            shown = "; ".join(f"line {line}: {value}" for line, value in self.examples.get(reason, []))
            lines.append(f"  {reason}: {n} rows (e.g. {shown})" if shown else f"  {reason}: {n} rows")
            if reason in self.messages:
                lines.append(f"    {self.messages[reason]}")
        return "\n".join(lines)

    def wholly_skipped_types(self) -> list[str]:
        """The file's event types none of whose rows were loaded."""
        return [t for t, why in self.types_skipped.items() if why.total() >= self.types_seen[t]]


class _Bad(Exception):
    """One row is unusable: reason code + human message (becomes DataError or a skip)."""

    def __init__(self, reason: str, message: str, value: Any = None):
        self.reason, self.message, self.value = reason, message, value


class _Ignored(_Bad):
    """A well-formed row with nothing to load (skipped and counted even when strict)."""


# --------------------------------------------------------------------------- locations


def data_dir(folder: str | None = None) -> Path:
    """The shared datasets folder: `folder` (a configuration's ``ops.data``) if given, else the
    process's configuration's (``$STREAMREC_DATA``); empty: ``<repo>/../shared/data`` (repo =
    parent of `recsys/`)."""
    if folder is None:
        from recsys.config import load_config

        folder = load_config().ops.data
    if folder:
        return Path(folder)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def dataset_path(name: str) -> Path:
    """Path of a shared dataset by short name; DataError if the name or the file is unknown."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    p = data_dir() / DATASETS[name]
    if not p.is_file():
        raise DataError(
            f"dataset {name!r} not found (looked in {data_dir()}); set STREAMREC_DATA to the "
            "directory holding the shared data files",
            str(p),
        )
    return p


def load_dataset(name: str, **kw: Any) -> list[Event]:
    """`load_events(dataset_path(name), **kw)`."""
    return load_events(dataset_path(name), **kw)


def load(
    source: str | Path,
    fmt: str = "auto",
    lenient: bool = False,
    progress: Callable[[str], None] | None = say,
    *,
    mapping: InputConfig | None = None,
    allow_skip_type: bool = False,
) -> tuple[list[Event], Path]:
    """(events, path) from a shared dataset's short name or a file path, with a progress line
    (how many, from where, how long) and what was skipped, by reason with the first examples,
    unless `progress` is None. `mapping` and `allow_skip_type`: as `load_events`."""
    path = source if isinstance(source, Path) else dataset_path(source) if source in DATASETS else Path(source)
    stats = LoadStats()
    t0 = time.time()
    events = load_events(path, fmt=fmt, lenient=lenient, stats=stats, mapping=mapping, allow_skip_type=allow_skip_type)
    if progress is not None:
        progress(f"loaded {len(events)} events from {path} in {time.time() - t0:.1f}s")
        if stats.skipped:
            progress(stats.report())
    return events, path


# --------------------------------------------------------------------------- row checks


def _idv(s: str, what: str) -> str:
    if not s:
        raise _Bad(f"empty_{what}", f"empty {what} id")
    if len(s) > MAX_ID_LEN or not s.isprintable():
        raise _Bad(f"bad_{what}", f"{what} id must be 1..{MAX_ID_LEN} printable characters")
    return s


def _type(raw: str, vocab: dict[str, str], column: str) -> str:
    t = vocab.get(raw)
    if t is not None:
        return t
    t = vocab.get(raw.strip().lower())
    if t is not None:
        return t
    if not raw:
        raise _Bad("empty_type", f"empty {column}")
    raise _Bad("unknown_type", f"unknown {column} {raw!r} (expected one of {', '.join(vocab)})")


def _columns(row: list[str], n: int, header: Sequence[str]) -> None:
    if len(row) != n:
        raise _Bad("column_count", f"expected {n} columns ({','.join(header)}), got {len(row)}")


def _ts_range(ts: int, max_ts: int) -> int:
    if ts < MIN_TS_MS:
        raise _Bad("ts_too_old", f"time {_fmt_ms(ts)} is before 2000-01-01")
    if ts > max_ts:
        raise _Bad("ts_in_future", f"time {_fmt_ms(ts)} is more than a day after load time")
    return ts


def _fmt_ms(ts: int) -> str:
    try:
        return (_EPOCH + ts * _MS).isoformat()
    except OverflowError:
        return f"{ts} ms"


def _iso_ms(s: str, label: str = "'event_time'") -> int:
    """ISO-8601 time with a timezone (``Z``, ``+02:00`` or a trailing `` UTC``) -> ms."""
    try:
        return parse_iso(s, label)
    except EventError as e:
        raise _Bad(e.reason, e.detail, s) from None


def _price(s: str) -> float | None:
    if not s:
        return None
    try:
        p = float(s)
    except ValueError:
        raise _Bad("bad_price", f"unparseable price {s!r}") from None
    if not (0.0 <= p <= 1e12):  # also rejects nan
        raise _Bad("bad_price", f"price {s!r} is outside [0, 1e12]")
    return p


# --------------------------------------------------------------------------- converters
# Each factory returns conv(row, index) -> Event; index = 0-based data-row index.

Conv = Callable[[Any, int], Event]
L = MAX_ID_LEN


def _conv_taobao(header: Sequence[str], max_ts: int) -> Conv:
    cats: dict[str, str] = {}  # one string per category

    def conv(row: list[str], idx: int) -> Event:
        if len(row) != 5:
            _columns(row, 5, _HEADERS["taobao"])
        u, i, cat, b, t = row
        typ = TAOBAO_TYPES.get(b) or _type(b, TAOBAO_TYPES, "behavior")
        try:
            ts = int(t) * 1000
        except ValueError:
            raise _Bad("bad_ts", f"timestamp {t!r} is not whole Unix seconds") from None
        if not (0 < len(u) <= L and 0 < len(i) <= L and u.isprintable() and i.isprintable()):
            _idv(u, "user"), _idv(i, "item")
        if not MIN_TS_MS <= ts <= max_ts:
            _ts_range(ts, max_ts)
        return Event(u, i, typ, ts, category=cats.setdefault(cat, cat) if cat else None)

    return conv


def _conv_yoochoose(header: Sequence[str], max_ts: int) -> Conv:
    def conv(row: list[str], idx: int) -> Event:
        if len(row) != 3:
            _columns(row, 3, _HEADERS["yoochoose"])
        s, i, t = row
        try:
            ts = round(float(t) * 1000)
        except (ValueError, OverflowError):
            raise _Bad("bad_ts", f"Time {t!r} is not Unix seconds") from None
        if not (0 < len(s) <= L and 0 < len(i) <= L and s.isprintable() and i.isprintable()):
            _idv(s, "user"), _idv(i, "item")
        if not MIN_TS_MS <= ts <= max_ts:
            _ts_range(ts, max_ts)
        return Event(s, i, "click", ts, None, s)

    return conv


def _conv_rees46(header: Sequence[str], max_ts: int) -> Conv:
    cache: dict[str, int] = {}
    cats: dict[str, str] = {}  # one string per category

    def conv(row: list[str], idx: int) -> Event:
        if len(row) != 9:
            _columns(row, 9, _HEADERS["rees46"])
        t, e, i, cat, _code, _brand, p, u, sess = row
        typ = REES46_TYPES.get(e)
        if typ is None:
            if e in REES46_IGNORED:
                raise _Ignored(REES46_IGNORED[e], f"{e} has no canonical type")
            typ = _type(e, REES46_TYPES, "event_type")
        ts = cache.get(t)
        if ts is None:
            if not t:
                raise _Bad("bad_ts", "empty event_time")
            ts = _ts_range(_iso_ms(t), max_ts)
            if len(cache) > 200_000:
                cache.clear()
            cache[t] = ts
        return Event(
            _idv(u, "user"),
            _idv(i, "item"),
            typ,
            ts,
            None,
            _idv(sess, "session") if sess else None,
            _price(p),
            category=cats.setdefault(cat, cat) if cat else None,
        )

    return conv


def _conv_retailrocket(header: Sequence[str], max_ts: int) -> Conv:
    def conv(row: list[str], idx: int) -> Event:
        if len(row) != 3:
            _columns(row, 3, _HEADERS["retailrocket"])
        u, i, e = row
        typ = RETAILROCKET_TYPES.get(e) or _type(e, RETAILROCKET_TYPES, "event")
        if not (0 < len(u) <= L and 0 < len(i) <= L and u.isprintable() and i.isprintable()):
            _idv(u, "user"), _idv(i, "item")
        return Event(u, i, typ, RETAILROCKET_EPOCH_MS + idx)

    return conv


def _conv_otto(header: Sequence[str], max_ts: int) -> Conv:
    def conv(row: list[str], idx: int) -> Event:
        if len(row) != 4:
            _columns(row, 4, _HEADERS["otto"])
        s, i, t, e = row
        typ = OTTO_TYPES.get(e) or _type(e, OTTO_TYPES, "type")
        try:
            ts = int(t)
        except ValueError:
            raise _Bad("bad_ts", f"ts {t!r} is not integer milliseconds") from None
        s = _idv(s, "user")
        return Event(s, _idv(i, "item"), typ, _ts_range(ts, max_ts), None, s)

    return conv


def _parse_canonical(d: Any, now_ms: int, mapping: InputConfig | None, renamed: bool = False) -> Event:
    try:
        return parse_event(d, now_ms, mapping, renamed=renamed)
    except EventError as e:
        raise _Bad(e.reason, e.detail or e.reason, e.value) from None


def _conv_canonical(header: Sequence[str], max_ts: int, mapping: InputConfig | None = None) -> Conv:
    """`header` is the file's, with the mapped names already renamed to canonical ones (the
    types and time format of `mapping` apply here)."""
    now_ms = max_ts - MAX_FUTURE_SKEW_MS
    label = {k: f"{v!r} ({k})" for k, v in (mapping.source_names if mapping else {}).items()}
    cols = {name: header.index(name) for name in CANONICAL_FIELDS if name in header}
    n = len(header)
    required = ("user", "item", "type", "ts")

    def conv(row: list[str], idx: int) -> Event:
        if len(row) != n:
            _columns(row, n, header)
        d: dict[str, Any] = {}
        for name, j in cols.items():
            v = row[j]
            if v == "":
                if name in required:
                    raise _Bad(f"empty_{name}", f"empty {label.get(name, name)}", "")
                continue  # optional field left blank = absent
            if name in ("dwell", "price"):
                try:
                    d[name] = float(v)
                except ValueError:
                    raise _Bad(f"bad_{name}", f"unparseable {label.get(name, name)} {v!r}", v) from None
            else:
                d[name] = v
        return _parse_canonical(d, now_ms, mapping, renamed=True)

    return conv


def _conv_jsonl(max_ts: int, mapping: InputConfig | None, raw_type: list[str | None]) -> Conv:
    """JSON lines; `raw_type[0]` is left holding the line's own event type (lenient checks)."""
    now_ms = max_ts - MAX_FUTURE_SKEW_MS
    type_key = mapping.source_names.get("type", "type") if mapping else "type"

    def conv(line: str, idx: int) -> Event:
        raw_type[0] = None
        try:
            d = json.loads(line)
        except ValueError as e:
            raise _Bad("bad_json", f"not valid JSON ({e})", line.strip()[:80]) from None
        if isinstance(d, dict):
            t = d.get(type_key, d.get("type"))
            raw_type[0] = t if isinstance(t, str) else None
        return _parse_canonical(d, now_ms, mapping)

    return conv


_CONVERTERS: dict[str, Callable[[Sequence[str], int], Conv]] = {
    "taobao": _conv_taobao,
    "yoochoose": _conv_yoochoose,
    "rees46": _conv_rees46,
    "retailrocket": _conv_retailrocket,
    "otto": _conv_otto,
    "canonical": _conv_canonical,
}


# --------------------------------------------------------------------------- detection


def _norm_header(row: Sequence[str]) -> tuple[str, ...]:
    return tuple(h.strip().lower() for h in row)


def _mapped_header(hdr: tuple[str, ...], mapping: InputConfig | None) -> tuple[str, ...]:
    """The header with the shop's column names (`mapping.columns`) renamed to canonical ones; a
    canonical name the file also has is then shadowed by the mapped column."""
    if mapping is None or not mapping.columns:
        return hdr
    to_canon = {src.strip().lower(): canon for canon, src in mapping.source_names.items()}
    mapped = {to_canon[h] for h in hdr if h in to_canon}
    return tuple(to_canon.get(h, f"{h} (shadowed)" if h in mapped else h) for h in hdr)


def _match_header(hdr: tuple[str, ...]) -> str | None:
    for fmt, expected in _HEADERS.items():
        if fmt == "canonical":
            if set(expected) <= set(hdr) and len(set(hdr)) == len(hdr):
                return fmt
        elif hdr == expected:
            return fmt
    return None


def _headerless_taobao(path: Path, row: Sequence[str]) -> bool:
    """The official UserBehavior.csv has no header: accept it by name + a data-shaped row."""
    name = path.name.lower()
    return (
        ("userbehavior" in name or "taobao" in name) and len(row) == 5 and row[3] in TAOBAO_TYPES and row[4].isdigit()
    )


def _supported() -> str:
    shown = {
        "yoochoose": "SessionId<TAB>ItemId<TAB>Time (tab-separated)",
        "canonical": "user,item,type,ts[,dwell,session,price,event_id] or JSON lines",
    }
    return "supported formats: " + "; ".join(f"{fmt} ({shown.get(fmt, ','.join(h))})" for fmt, h in _HEADERS.items())


# --------------------------------------------------------------------------- reading


def _open_text(path: Path) -> io.TextIOWrapper:
    sp = str(path)
    try:
        raw = open(path, "rb")  # noqa: SIM115 - handed to the caller inside the returned wrapper
    except FileNotFoundError:
        raise DataError("file not found", sp) from None
    except IsADirectoryError:
        raise DataError("is a directory, not a data file", sp) from None
    except OSError as e:
        raise DataError(f"cannot open: {e.strerror or e}", sp) from None
    try:
        magic = raw.read(2)
        raw.seek(0)
    except OSError as e:
        raw.close()
        raise DataError(f"cannot read: {e.strerror or e}", sp) from None
    if not magic:
        raw.close()
        raise DataError("empty file (expected a header row)", sp)
    binary: Any = raw
    if magic == _GZIP_MAGIC:
        binary = gzip.GzipFile(fileobj=raw, mode="rb")
    elif path.name.lower().endswith(".gz"):
        raw.close()
        raise DataError("not a gzip file although the name ends in .gz", sp)
    return io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")


def detect_format(path: str | os.PathLike[str], mapping: InputConfig | None = None) -> str:
    """The format `load_events(path)` would use ('canonical' covers CSV and JSON lines)."""
    p = Path(path)
    with _open_text(p) as f:
        try:
            first, lead = _first_line(f)
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
            raise DataError(f"cannot read: {e}", str(p), 1) from None
    return _detect(p, first, lead, mapping)[0]


def _first_line(f: io.TextIOWrapper) -> tuple[str, int]:
    """-> (first non-blank line, number of blank lines before it)."""
    lead = 0
    line = f.readline()
    while line and not line.strip():
        lead += 1
        line = f.readline()
    return line, lead


def _detect(
    path: Path, first: str, lead: int = 0, mapping: InputConfig | None = None
) -> tuple[str, bool, str, list[str]]:
    """-> (fmt, has_header, delimiter, header) from the first line. JSONL -> ('jsonl', ...).
    A header that is no dataset's is read as canonical after renaming the mapped columns."""
    if not first:
        raise DataError("empty file (expected a header row)", str(path))
    if first.lstrip().startswith("{"):
        return "jsonl", False, "", []
    line = first.rstrip("\r\n")
    delim = "\t" if ("\t" in line and "," not in line) else ","
    row = next(csv.reader([line], delimiter=delim), [])
    fmt = _match_header(_norm_header(row))
    if fmt is not None:
        return fmt, True, delim, row
    renamed = _mapped_header(_norm_header(row), mapping)
    if _match_header(renamed) == "canonical":
        return "canonical", True, delim, list(renamed)
    if _headerless_taobao(path, row):
        return "taobao", False, delim, row
    shown = line if len(line) <= 200 else line[:200] + "..."
    hint = "; or map the shop's own column names: --columns user=COL,item=COL,type=COL,ts=COL (docs/data-formats.md)"
    if mapping is not None and mapping.columns:
        missing = [c for c in ("user", "item", "type", "ts") if c not in renamed]
        hint = f"; with the mapping {dict(mapping.source_names)} the columns for {', '.join(missing)} are still missing"
    raise DataError(f"unknown header {shown!r}; {_supported()}{hint}", str(path), lead + 1)


def load_events(
    path: str | os.PathLike[str],
    fmt: str = "auto",
    lenient: bool = False,
    stats: LoadStats | None = None,
    *,
    mapping: InputConfig | None = None,
    allow_skip_type: bool = False,
) -> list[Event]:
    """Load one file (plain or gzip) into events sorted by time (stable).

    fmt: "auto" (detect from the header row / first line) or one of FORMATS; an explicit
    fmt must agree with the header. lenient: skip malformed rows instead of raising,
    counting them in `stats` (a LoadStats you pass in; filled in either way) with the first
    examples of each reason; a lenient load that would drop every row of one of the file's
    event types raises instead, unless `allow_skip_type`. mapping: the shop's column names,
    type names and time format (the `[input]` section) for canonical files.
    Raises DataError("path:line: what is wrong") for every problem with the file.
    """
    p = Path(path)
    sp = str(p)
    if fmt != "auto" and fmt not in _HEADERS:
        raise DataError(f"unknown format {fmt!r}; use 'auto' or one of {', '.join(FORMATS)}", sp)
    st = stats if stats is not None else LoadStats()
    st.rows = st.loaded = st.skipped = 0
    st.reasons = Counter()
    st.fmt = None
    st.examples, st.messages = {}, {}
    st.types_seen, st.types_skipped = Counter(), {}
    # Files may hold any past time, but not times more than a day after this load.
    max_ts = int(time.time() * 1000) + MAX_FUTURE_SKEW_MS

    events: list[Event] = []
    line_of: Callable[[], int] = lambda: 1  # noqa: E731  (line being read, for errors)
    with _open_text(p) as f:
        try:
            first, lead = _first_line(f)
            found, has_header, delim, first_row = _detect(p, first, lead, mapping)
            if found == "jsonl":
                found = "canonical"
            if fmt != "auto" and found != fmt:
                raise DataError(
                    f"header {first.strip()[:200]!r} does not match format {fmt!r} "
                    f"(expected {','.join(_HEADERS[fmt])})",
                    sp,
                    lead + 1,
                )
            st.fmt = found
            if not delim:  # JSON lines
                numbered = enumerate(itertools.chain([first], f), lead + 1)
                cur = [0]

                def nonblank() -> Iterable[str]:
                    for cur[0], line in numbered:
                        if line.strip():
                            yield line

                line_of = lambda: cur[0]  # noqa: E731
                raw_type: list[str | None] = [None]
                type_of = (lambda _line: raw_type[0]) if lenient else None
                _consume(_conv_jsonl(max_ts, mapping, raw_type), nonblank(), line_of, st, events, lenient, sp, type_of)
            else:
                source = itertools.chain([] if has_header else [first], f)
                reader = csv.reader(source, delimiter=delim, strict=True)
                header = _norm_header(first_row) if has_header else _HEADERS["taobao"]
                base = lead + (1 if has_header else 0)
                line_of = lambda: reader.line_num + base  # noqa: E731
                rows = (row for row in reader if row)  # blank lines are not rows
                if found == "canonical":
                    conv = _conv_canonical(header, max_ts, mapping)
                else:
                    conv = _CONVERTERS[found](header, max_ts)
                col = header.index("type") if found == "canonical" else _TYPE_COLUMN.get(found)
                type_of = _column_of(col) if lenient and col is not None else None
                _consume(conv, rows, line_of, st, events, lenient, sp, type_of)
        except DataError:
            raise
        except csv.Error as e:
            raise DataError(f"malformed CSV: {e}", sp, line_of()) from None
        except UnicodeDecodeError as e:
            raise DataError(f"not UTF-8 text ({e.reason})", sp, line_of() + 1) from None
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise DataError(f"corrupt or truncated gzip data ({e})", sp, line_of() + 1) from None
        except OSError as e:
            raise DataError(f"read error: {e.strerror or e}", sp, line_of() + 1) from None
    events.sort(key=attrgetter("ts"))  # list.sort is stable: ties keep file order
    st.loaded = len(events)
    lost = st.wholly_skipped_types()
    if lost and not allow_skip_type:
        what = "; ".join(
            f"all {st.types_seen[t]} {t!r} rows ({', '.join(st.types_skipped[t])})"
            for t in sorted(lost, key=lambda t: -st.types_seen[t])
        )
        raise DataError(
            f"refusing to drop every row of an event type: {what}. Map the type "
            "(--types CANONICAL=NAME, docs/data-formats.md) or fix the rows; --allow-skip-type loads "
            f"without them.\n{st.report()}",
            sp,
        )
    return events


def _column_of(col: int) -> Callable[[list[str]], str | None]:
    def type_of(row: list[str]) -> str | None:
        return row[col].strip() if len(row) > col else None

    return type_of


def _example(b: _Bad, row: Any) -> str:
    if b.value is not None:
        return show(b.value)
    text = row if isinstance(row, str) else ",".join(row)
    text = text.strip()
    return repr(text if len(text) <= 80 else text[:80] + "...")


def _consume(
    conv: Conv,
    rows: Iterable[Any],
    line_of: Callable[[], int],
    st: LoadStats,
    events: list[Event],
    lenient: bool,
    sp: str,
    type_of: Callable[[Any], str | None] | None = None,
) -> None:
    """Convert every row; `type_of(row)` (lenient loads) reads a row's own event type, after
    `conv` has seen it, so that no type is dropped whole without a word."""
    append = events.append
    n = 0
    seen, skipped = st.types_seen, st.types_skipped
    try:
        for row in rows:
            try:
                append(conv(row, n))
            except _Bad as b:
                if not lenient and not isinstance(b, _Ignored):
                    n += 1
                    raise DataError(f"{b.message} [{b.reason}]", sp, line_of()) from None
                st.skipped += 1
                st.reasons[b.reason] += 1
                shown = st.examples.setdefault(b.reason, [])
                if len(shown) < EXAMPLES_PER_REASON:
                    shown.append((line_of(), _example(b, row)))
                    st.messages.setdefault(b.reason, b.message)
                if type_of is not None and not isinstance(b, _Ignored):
                    t = type_of(row)
                    if t:
                        seen[t] += 1
                        skipped.setdefault(t, Counter())[b.reason] += 1
            else:
                if type_of is not None:
                    t = type_of(row)
                    if t:
                        seen[t] += 1
            n += 1
    finally:
        st.rows = n


def _loader(fmt: str, doc: str) -> Callable[..., list[Event]]:
    def load(path: str | os.PathLike[str], lenient: bool = False, stats: LoadStats | None = None) -> list[Event]:
        return load_events(path, fmt=fmt, lenient=lenient, stats=stats)

    load.__name__ = load.__qualname__ = f"load_{fmt}"
    load.__doc__ = doc + f"\n\nSame as load_events(path, fmt={fmt!r}, ...)."
    return load


load_taobao = _loader(
    "taobao",
    (
        "Taobao UserBehavior: user_id,item_id,category_id,behavior,timestamp (Unix seconds). "
        "pv/cart/fav/buy -> view/addtocart/favorite/transaction; ts = seconds*1000; category "
        "dropped. The header-less official UserBehavior.csv is accepted too."
    ),
)
load_yoochoose = _loader(
    "yoochoose",
    (
        "YOOCHOOSE clicks (session-rec TSV): SessionId<TAB>ItemId<TAB>Time (float seconds). "
        "YOOCHOOSE has sessions, not users: the session is the user (user = session = SessionId). "
        "Every event is a 'click'; ts = round(Time*1000)."
    ),
)
load_rees46 = _loader(
    "rees46",
    (
        "REES46 'eCommerce behavior data': event_time ('2019-10-01 00:00:00 UTC'), event_type "
        "view/cart/purchase -> view/addtocart/transaction, product_id = item, user_id = user, "
        "user_session = session, price kept. remove_from_cart rows are skipped and counted."
    ),
)
load_retailrocket = _loader(
    "retailrocket",
    (
        "RetailRocket (CaseRecommender derivative): visitorid,itemid,event. It has NO time: "
        "ts = 2015-05-03 00:00 UTC (RETAILROCKET_EPOCH_MS) + row index in ms, only to keep "
        "file order. Use for static user-item matrix tests only, never for time splits."
    ),
)
load_otto = _loader(
    "otto",
    (
        "OTTO (flattened): session,aid,ts (ms),type; clicks/carts/orders -> "
        "click/addtocart/transaction. The session is the user (user = session = session id)."
    ),
)
load_canonical = _loader(
    "canonical",
    (
        "The project's own format: CSV with header user,item,type,ts[,dwell,session,price,event_id] "
        "or JSON lines with the same fields. ts = integer ms or ISO-8601 with timezone. Every row "
        "is validated by recsys.events.parse_event; other columns/fields are ignored."
    ),
)


# --------------------------------------------------------------------------- writing


def write_canonical(events: Iterable[Event], path: str | os.PathLike[str]) -> int:
    """Write events in the canonical format; returns the number written.

    ``.jsonl`` / ``.ndjson`` (optionally + ``.gz``) -> JSON lines, anything else -> CSV with
    header user,item,type,ts,dwell,session,price,event_id,category (absent fields left empty).
    A ``.gz`` suffix gzips (mtime 0, reproducible). Written to a temp file, then renamed.
    """
    p = Path(path)
    name = p.name.lower()
    gz = name.endswith(".gz")
    base = name[:-3] if gz else name
    jsonl = base.endswith((".jsonl", ".ndjson"))
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    n = 0
    try:
        with open(tmp, "wb") as raw:
            binary: Any = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") if gz else raw
            with io.TextIOWrapper(binary, encoding="utf-8", newline="") as f:
                if jsonl:
                    for e in events:
                        f.write(json.dumps(e.to_dict(), ensure_ascii=False, separators=(",", ":")))
                        f.write("\n")
                        n += 1
                else:
                    w = csv.writer(f, lineterminator="\n")
                    w.writerow(CANONICAL_FIELDS)
                    for e in events:
                        w.writerow(
                            "" if v is None else v
                            for v in (e.user, e.item, e.type, e.ts, e.dwell, e.session, e.price, e.event_id, e.category)
                        )
                        n += 1
            if gz:
                binary.close()
        os.replace(tmp, p)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise DataError(f"cannot write: {e.strerror or e}", str(p)) from None
    return n


# --------------------------------------------------------------------------- splitting


def time_split(
    events: Sequence[Event], test_fraction: float = 0.2, *, at: int | None = None
) -> tuple[list[Event], list[Event]]:
    """Split by time into (train, test), both sorted by time (stable).

    With ``at`` (ms): train = ts < at, test = ts >= at. Otherwise the cut is the event-count
    quantile of ts: ``at`` = the ts of event number floor(n * (1 - test_fraction)) in time
    order, so test is the last ~test_fraction of EVENTS (not of the time range). Events
    sharing the cut timestamp all go to test, so every train event is strictly earlier than
    every test event and test may be slightly larger than test_fraction * n.
    """
    ordered = sorted(events, key=attrgetter("ts"))
    if at is None:
        if not (
            isinstance(test_fraction, (int, float))
            and 0.0 <= test_fraction <= 1.0
            and not isinstance(test_fraction, bool)
        ):
            raise ConfigError(f"time_split: test_fraction must be in [0, 1], got {test_fraction!r}")
        n = len(ordered)
        k = math.floor(n * (1.0 - test_fraction))
        if k >= n:
            return ordered, []
        at = ordered[k].ts
    elif isinstance(at, bool) or not isinstance(at, int):
        raise ConfigError(f"time_split: at must be integer ms since the epoch, got {at!r}")
    lo = bisect.bisect_left(ordered, at, key=attrgetter("ts"))  # first ts >= at
    return ordered[:lo], ordered[lo:]
