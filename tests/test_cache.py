"""Engine cache: hit, miss, and refusal of foreign, corrupt and mismatched payloads."""
from __future__ import annotations

import json
import logging

import pytest

from engines.cache import EngineCache, EngineKey, atomic_write_bytes, default_cache_dir, sha256_bytes

PAYLOAD = b"\x00FAKE-TRT-PLAN" + bytes(range(256)) * 4


def make_key(**overrides) -> EngineKey:
    fields = {"onnx_sha256": sha256_bytes(b"graph"), "precision": "fp16", "shapes": {"wplus": (1, 18, 512)},
              "trt_version": "10.7.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    fields.update(overrides)
    return EngineKey.create(**fields)


def test_store_then_load_round_trips(tmp_path):
    cache = EngineCache(tmp_path)
    key = make_key()
    assert cache.load(key) is None
    path = cache.store(key, PAYLOAD)
    assert path.parent == tmp_path and path.suffix == ".engine"
    assert cache.load(key) == PAYLOAD
    assert not list(tmp_path.glob(".*.tmp")), "temporary files must be renamed into place"


def test_every_key_field_changes_the_file():
    base = make_key()
    variants = [make_key(onnx_sha256=sha256_bytes(b"other")), make_key(precision="int8"),
                make_key(shapes={"wplus": (4, 18, 512)}), make_key(trt_version="10.8.0"),
                make_key(gpu_name="NVIDIA L4"), make_key(compute_capability="8.9")]
    digests = {base.digest(), *(v.digest() for v in variants)}
    assert len(digests) == 1 + len(variants)


def test_shape_order_does_not_matter():
    a = make_key(shapes={"a": (1, 3), "b": (2,)})
    b = make_key(shapes={"b": (2,), "a": (1, 3)})
    assert a.digest() == b.digest()


def test_corrupt_payload_is_rebuilt_with_one_log_line(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    key = make_key()
    path = cache.store(key, PAYLOAD)
    path.write_bytes(PAYLOAD[:-10])  # truncated write
    with caplog.at_level(logging.WARNING, logger="engines.cache"):
        rebuilt = cache.get_or_build(key, lambda: b"fresh")
    assert rebuilt == b"fresh"
    assert len(caplog.records) == 1 and "corrupt" in caplog.records[0].getMessage()
    assert cache.load(key) == b"fresh"


def test_foreign_file_without_sidecar_is_never_loaded(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    key = make_key()
    cache.path_for(key).write_bytes(PAYLOAD)  # dropped in by hand, no sidecar
    with caplog.at_level(logging.WARNING, logger="engines.cache"):
        assert cache.load(key) is None
    assert "foreign" in caplog.text
    assert not cache.path_for(key).exists()


def test_sidecar_of_another_gpu_is_refused(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    key = make_key()
    path = cache.store(key, PAYLOAD)
    sidecar = path.with_suffix(".engine.json")
    meta = json.loads(sidecar.read_text())
    meta["key"]["gpu_name"] = "NVIDIA L4"  # an engine built elsewhere, copied under this name
    sidecar.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="engines.cache"):
        assert cache.load(key) is None
    assert "different model, precision, TensorRT version or GPU" in caplog.text


@pytest.mark.parametrize("sidecar_text", ["not json", "[1, 2]", '{"format": 99}'])
def test_unreadable_sidecar_is_a_miss(tmp_path, sidecar_text):
    cache = EngineCache(tmp_path)
    key = make_key()
    path = cache.store(key, PAYLOAD)
    path.with_suffix(".engine.json").write_text(sidecar_text)
    assert cache.load(key) is None


def test_atomic_write_leaves_no_temp_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # type: ignore[arg-type]
    assert not target.exists() and not list(tmp_path.iterdir())


def test_default_dir_honours_override(monkeypatch, tmp_path):
    monkeypatch.setenv("FACEEDIT_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("FACEEDIT_CACHE_DIR")
    assert "faceedit-stream" in str(default_cache_dir())
