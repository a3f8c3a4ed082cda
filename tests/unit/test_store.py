import json

import numpy as np
import pytest

from recsys.errors import ModelStoreError
from recsys.model.store import ModelStore, new_version_name
from tests.helpers import random_model


def test_round_trip_memory_mapped(tmp_path):
    store = ModelStore(tmp_path)
    m = random_model(version=new_version_name())
    store.save(m, publish=True)
    got = store.load()
    assert got.version == m.version == store.current()
    assert list(got.item_ids) == list(m.item_ids)
    assert isinstance(got.item_factors, np.memmap)
    np.testing.assert_array_equal(got.item_factors, m.item_factors)
    np.testing.assert_allclose(got.yty, m.item_factors.T @ m.item_factors, rtol=1e-4)
    np.testing.assert_allclose(got.item_norms, np.linalg.norm(m.item_factors, axis=1), rtol=1e-5)
    meta = got.metadata
    assert meta["n_items"] == 300 and meta["factors"] == 16
    assert set(meta["files"]) == {"item_ids.txt", "item_factors.npy", "yty.npy", "item_norms.npy", "popularity.npy"}


def _saved(tmp_path):
    store = ModelStore(tmp_path)
    m = random_model(version="20250101T000000Z-aaaaaa")
    store.save(m)
    return store, tmp_path / m.version


def test_flipped_byte_fails_checksum(tmp_path):
    store, vdir = _saved(tmp_path)
    raw = bytearray((vdir / "item_factors.npy").read_bytes())
    raw[-5] ^= 0xFF
    (vdir / "item_factors.npy").write_bytes(bytes(raw))
    with pytest.raises(ModelStoreError, match="sha256"):
        store.load()


def test_truncated_file_is_refused(tmp_path):
    store, vdir = _saved(tmp_path)
    data = (vdir / "item_factors.npy").read_bytes()
    (vdir / "item_factors.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelStoreError, match="bytes"):
        store.load()


def test_wrong_dimensions_are_refused_even_with_matching_checksums(tmp_path):
    store, vdir = _saved(tmp_path)
    np.save(vdir / "item_factors.npy", np.zeros((300, 8), np.float32))
    meta = json.loads((vdir / "metadata.json").read_text())
    import hashlib

    data = (vdir / "item_factors.npy").read_bytes()
    meta["files"]["item_factors.npy"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (vdir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelStoreError, match="shape"):
        store.load()


def test_missing_metadata_or_version(tmp_path):
    store, vdir = _saved(tmp_path)
    with pytest.raises(ModelStoreError, match="does not exist"):
        store.load("20990101T000000Z-ffffff")
    (vdir / "metadata.json").unlink()
    assert store.versions() == []  # an incomplete directory is not a version
    with pytest.raises(ModelStoreError, match="metadata.json is missing"):
        store.load(vdir.name)


def test_half_written_version_is_invisible(tmp_path):
    store, _ = _saved(tmp_path)
    (tmp_path / ".tmp-20990101T000000Z-bbbbbb-123").mkdir()
    assert store.versions() == ["20250101T000000Z-aaaaaa"]


def test_rollback_and_pin(tmp_path):
    store = ModelStore(tmp_path)
    names = ["20250101T000000Z-000001", "20250102T000000Z-000002", "20250103T000000Z-000003"]
    for k, v in enumerate(names):
        store.save(random_model(seed=k, version=v))
    assert store.current() == names[2]
    assert store.rollback() == names[1]
    assert store.current() == names[1]
    store.pin(names[0])
    assert store.current() == names[0]
    store.save(random_model(seed=9, version="20250104T000000Z-000004"))  # a retrain publishes
    assert store.current() == names[0]  # the pin wins
    store.pin(None)
    assert store.current() == "20250104T000000Z-000004"
    with pytest.raises(ModelStoreError):
        store.pin("nope")


def test_empty_store_says_what_to_do(tmp_path):
    with pytest.raises(ModelStoreError, match="train one first"):
        ModelStore(tmp_path / "none").load()


def test_version_names_sort_in_creation_order_within_one_second():
    names = [new_version_name(1_800_000_000.0 + k * 1e-4) for k in range(50)]
    assert names == sorted(names) and len(set(names)) == 50
