"""The model store: versioned model directories on a volume every worker can read.

Layout under the store root:

    <root>/<version>/item_ids.txt        one id per line, row order
    <root>/<version>/item_factors.npy    (n, f) float32, loaded memory-mapped
    <root>/<version>/yty.npy             (f, f) float32
    <root>/<version>/item_norms.npy      (n,) float32
    <root>/<version>/popularity.npy      (n,) float32
    <root>/<version>/user_gram.npy       (optional) (f, f) float64 XᵀX of the training users: new items
                                         are folded in against it (item_foldin.py); absent: no fold-in
    <root>/<version>/metadata.json       version, created, data window, parameters, metrics, sha256 per file
    <root>/CURRENT                       the version retrains publish
    <root>/PINNED                        (optional) an operator's choice, wins over CURRENT

A version is written under `.tmp-*` and renamed into place only when complete, so a reader
never sees half a model; pointer files are replaced atomically with os.replace.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import ModelStoreError
from recsys.model.factors import Model

FORMAT = 1
ARRAYS = ("item_factors", "yty", "item_norms", "popularity")
FILES = ("item_ids.txt",) + tuple(f"{a}.npy" for a in ARRAYS)
USER_GRAM = "user_gram.npy"  # optional: listed in metadata "files" (and so checksummed) when written
RANKER = "ranker.txt"  # optional: the learned ranker (recsys/candidates/ranker.py), checksummed the same way
# A version names one directory right under the root: letters, digits, '.', '_', '-'; no path
# separator, no leading dot (temporary and hidden entries), no "..", at most 128 characters.
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_version(version: object) -> str:
    """`version` if it is a valid version name, else ModelStoreError. Every version that comes
    from outside (an announcement, the command line, a pointer file) passes here before it is
    joined to the store's path."""
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version) or ".." in version:
        shown = repr(version)[:80] if isinstance(version, str) else type(version).__name__
        raise ModelStoreError(
            f"invalid model version {shown}: a version is 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return version


def new_version_name(now: float | None = None) -> str:
    """Sortable by creation time down to the microsecond (two retrains in one second must still
    sort in order: listing and rollback go by name); the suffix keeps simultaneous ones apart."""
    seconds, micros = divmod(int((time.time() if now is None else now) * 1_000_000), 1_000_000)
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds)) + f"{micros:06d}Z-" + secrets.token_hex(3)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write_pointer(path: Path, value: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)


class ModelStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    # -- writing ---------------------------------------------------------------------------
    def save(
        self, model: Model, *, publish: bool = True, user_gram: np.ndarray | None = None, ranker: bytes | None = None
    ) -> Path:
        """Write `model` as a new version directory; with publish, point CURRENT at it.
        `user_gram`: XᵀX of the training users (`item_foldin.user_gram`), stored with it.
        `ranker`: the learned ranker trained with this model (`Ranker.to_bytes()`), stored with it."""
        check_version(model.version)
        if any("\n" in i or "\r" in i for i in model.item_ids):
            raise ModelStoreError("item ids may not contain line breaks")
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / model.version
        if final.exists():
            raise ModelStoreError(f"version {model.version} already exists in {self.root}")
        tmp = self.root / f".tmp-{model.version}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            (tmp / "item_ids.txt").write_text("".join(f"{i}\n" for i in model.item_ids), encoding="utf-8")
            for name in ARRAYS:
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(getattr(model, name), dtype=np.float32))
            files = FILES
            if user_gram is not None:
                gram = np.ascontiguousarray(user_gram, dtype=np.float64)
                if gram.shape != (model.factors, model.factors):
                    raise ModelStoreError(f"user_gram has shape {gram.shape}, expected {(model.factors,) * 2}")
                np.save(tmp / USER_GRAM, gram)
                files = FILES + (USER_GRAM,)
            if ranker is not None:
                (tmp / RANKER).write_bytes(ranker)
                files = files + (RANKER,)
            meta = dict(model.metadata)
            meta.update(
                format=FORMAT,
                version=model.version,
                n_items=model.n_items,
                factors=model.factors,
                regularization=model.regularization,
                files={f: {"sha256": _sha256(tmp / f), "bytes": (tmp / f).stat().st_size} for f in files},
            )
            meta.setdefault("created", time.time())
            (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
            for f in tmp.iterdir():  # durable before it becomes visible
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if publish:
            _write_pointer(self.root / "CURRENT", model.version)
        return final

    # -- reading ---------------------------------------------------------------------------
    def versions(self) -> list[str]:
        """Complete version directories, oldest first (temporary ones are invisible)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / "metadata.json").exists()
        )

    def _pointer(self, name: str) -> str | None:
        p = self.root / name
        value = p.read_text().strip() or None if p.exists() else None
        return check_version(value) if value is not None else None

    def pinned(self) -> str | None:
        """The pinned version, if any (`pin`)."""
        return self._pointer("PINNED")

    def current(self) -> str | None:
        """The version to serve: PINNED, else CURRENT, else None."""
        return self._pointer("PINNED") or self._pointer("CURRENT")

    def metadata(self, version: str) -> dict[str, Any]:
        check_version(version)
        path = self.root / version / "metadata.json"
        if not (self.root / version).is_dir():
            raise ModelStoreError(f"model version {version!r} does not exist in {self.root}")
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelStoreError(f"model version {version!r}: metadata.json is missing") from None
        except (OSError, ValueError) as e:
            raise ModelStoreError(f"model version {version!r}: metadata.json is unreadable: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or "files" not in meta:
            raise ModelStoreError(f"model version {version!r}: metadata.json is not a format-{FORMAT} model")
        return meta

    def load(self, version: str | None = None, *, verify: bool = True) -> Model:
        """Load and verify a version (default: the one to serve). Raises ModelStoreError."""
        version = version or self.current()
        if version is None:
            raise ModelStoreError(f"no model in {self.root}: train one first (recsys train)")
        meta = self.metadata(version)
        vdir = self.root / version
        for name in FILES + ((USER_GRAM,) if USER_GRAM in meta["files"] else ()):
            self._check_file(version, vdir / name, meta["files"].get(name), verify)
        try:
            # Copy-on-write mapping: implicit's kernels want writable buffers; nothing is copied
            # unless written, and nothing writes.
            arrays = {a: np.load(vdir / f"{a}.npy", mmap_mode="c") for a in ARRAYS}
            item_ids = (vdir / "item_ids.txt").read_text(encoding="utf-8").split("\n")[:-1]
        except (OSError, ValueError) as e:
            raise ModelStoreError(f"model version {version!r}: unreadable array: {e}") from None
        n, f = len(item_ids), int(meta.get("factors", -1))
        expect = {"item_factors": (n, f), "yty": (f, f), "item_norms": (n,), "popularity": (n,)}
        for a, shape in expect.items():
            if arrays[a].shape != shape or arrays[a].dtype != np.float32:
                raise ModelStoreError(
                    f"model version {version!r}: {a} has shape {arrays[a].shape} "
                    f"{arrays[a].dtype}, expected {shape} float32"
                )
        if meta.get("n_items") != n:
            raise ModelStoreError(f"model version {version!r}: {n} item ids but metadata says {meta.get('n_items')}")
        return Model(
            version=version,
            item_ids=item_ids,
            item_factors=arrays["item_factors"],
            yty=np.asarray(arrays["yty"]),
            item_norms=np.asarray(arrays["item_norms"]),
            popularity=np.asarray(arrays["popularity"]),
            regularization=float(meta["regularization"]),
            metadata=meta,
        )

    def _check_file(self, version: str, path: Path, want: dict[str, Any] | None, verify: bool) -> None:
        if want is None or not path.exists():
            raise ModelStoreError(f"model version {version!r}: {path.name} is missing")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise ModelStoreError(f"model version {version!r}: {path.name} has {size} bytes, expected {want['bytes']}")
        if verify and _sha256(path) != want["sha256"]:
            raise ModelStoreError(f"model version {version!r}: {path.name} fails its sha256 checksum")

    def user_gram(self, version: str) -> np.ndarray | None:
        """XᵀX stored with a version (verified), or None if the version has none (saved by code
        that did not store it yet): then new items are not folded in."""
        meta = self.metadata(version)
        if USER_GRAM not in meta["files"]:
            return None
        path = self.root / check_version(version) / USER_GRAM
        self._check_file(version, path, meta["files"][USER_GRAM], verify=True)
        try:
            gram = np.load(path)
        except (OSError, ValueError) as e:
            raise ModelStoreError(f"model version {version!r}: unreadable {USER_GRAM}: {e}") from None
        f = int(meta.get("factors", -1))
        if gram.shape != (f, f) or gram.dtype != np.float64 or not np.isfinite(gram).all():
            raise ModelStoreError(
                f"model version {version!r}: {USER_GRAM} has shape {gram.shape} {gram.dtype}, "
                f"expected ({f}, {f}) float64, finite"
            )
        return gram

    def ranker(self, version: str) -> bytes | None:
        """The ranker file stored with a version, checksum verified (ModelStoreError if it does not
        match), or None if the version has none: then the system's blend serves alone."""
        meta = self.metadata(version)
        if RANKER not in meta["files"]:
            return None
        path = self.root / check_version(version) / RANKER
        self._check_file(version, path, meta["files"][RANKER], verify=True)
        return path.read_bytes()

    # -- operator actions ------------------------------------------------------------------
    def publish(self, version: str) -> None:
        self.metadata(version)  # checks the name, then that the version exists
        _write_pointer(self.root / "CURRENT", version)

    def rollback(self) -> str:
        """Point CURRENT at the version before it; returns the version now current."""
        cur, versions = self._pointer("CURRENT"), self.versions()
        older = [v for v in versions if cur is None or v < cur]
        if not older:
            raise ModelStoreError(f"no version older than {cur!r} to roll back to")
        self.publish(older[-1])
        return older[-1]

    def pin(self, version: str | None) -> None:
        """Serve `version` whatever retrains publish; None removes the pin."""
        if version is None:
            (self.root / "PINNED").unlink(missing_ok=True)
        else:
            self.metadata(version)
            _write_pointer(self.root / "PINNED", version)
