"""Content-keyed cache of built engines and exported graphs, under the user cache directory.

An entry is the payload file (a raw TensorRT plan, loadable by trtexec too) plus a JSON sidecar that
holds the full key and the payload's sha256. `load` trusts nothing it has not checked: a missing
sidecar (foreign file), a key that differs (another GPU or TensorRT version wrote it under a colliding
name) or a hash mismatch (truncated or corrupt write) is logged in one line, deleted and reported as a
miss, so the caller rebuilds. Writes go to a temporary file in the same directory and `os.replace`
into place, so a reader never sees half a file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from engines.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

APP_NAME = "faceedit-stream"
SIDECAR_FORMAT = 1


def default_cache_dir() -> Path:
    """Per-user cache root; FACEEDIT_CACHE_DIR overrides it (CI, read-only homes, containers)."""
    override = os.environ.get("FACEEDIT_CACHE_DIR")
    if override:
        return Path(override)
    import platformdirs  # here, so a bare GPU box without it can still import the torch backend

    return Path(platformdirs.user_cache_dir(APP_NAME))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CacheKey(Protocol):
    """What a cache entry is keyed by: the full key as JSON (kept in the sidecar) and its digest (the name)."""

    def as_json(self) -> dict: ...

    def digest(self) -> str: ...


@dataclass(frozen=True)
class EngineKey:
    """Everything a built engine depends on; two keys that differ never share a file."""

    onnx_sha256: str
    precision: str
    shapes: tuple[tuple[str, tuple[int, ...]], ...]  # (input name, static shape), sorted by name
    trt_version: str
    gpu_name: str
    compute_capability: str  # "8.9"

    @classmethod
    def create(cls, onnx_sha256: str, precision: str, shapes: Mapping[str, tuple[int, ...]],
               trt_version: str, gpu_name: str, compute_capability: str) -> EngineKey:
        ordered = tuple(sorted((name, tuple(int(d) for d in shape)) for name, shape in shapes.items()))
        return cls(onnx_sha256, precision, ordered, trt_version, gpu_name, compute_capability)

    def as_json(self) -> dict:
        data = asdict(self)
        data["shapes"] = [[name, list(shape)] for name, shape in self.shapes]
        return data

    def digest(self) -> str:
        return sha256_bytes(json.dumps(self.as_json(), sort_keys=True).encode())


class EngineCache:
    """Payloads keyed by an EngineKey (or any CacheKey: stream/tuning.py keeps tuned generators here too),
    with a verified sidecar; see the module docstring."""

    def __init__(self, root: Path | None = None, suffix: str = ".engine") -> None:
        self.root = Path(root) if root is not None else default_cache_dir() / "engines"
        self.suffix = suffix

    def path_for(self, key: CacheKey) -> Path:
        return self.root / f"{key.digest()[:32]}{self.suffix}"

    def _sidecar(self, payload_path: Path) -> Path:
        return payload_path.with_suffix(payload_path.suffix + ".json")

    def load(self, key: CacheKey) -> bytes | None:
        """The cached payload for key, or None (after one log line and removal) if absent or untrusted."""
        path = self.path_for(key)
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            return None
        # the bytes checked are the bytes returned: a file replaced in between is never handed out unchecked
        problem = self._verify(path, key, payload)
        if problem is None:
            return payload
        log.warning("engine cache: %s %s; rebuilding", path, problem)
        self.discard(key)
        return None

    def _verify(self, path: Path, key: CacheKey, payload: bytes) -> str | None:
        sidecar = self._sidecar(path)
        try:
            meta = json.loads(sidecar.read_text())
        except FileNotFoundError:
            return "has no metadata sidecar (foreign file)"
        except (OSError, ValueError) as err:
            return f"has an unreadable sidecar ({err})"
        if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
            return "has a sidecar of an unknown format"
        if meta.get("key") != key.as_json():
            return "was built for a different model, precision, TensorRT version or GPU"
        if meta.get("payload_sha256") != sha256_bytes(payload) or meta.get("size") != len(payload):
            return "is corrupt (size or sha256 differs from its sidecar)"
        return None

    def store(self, key: CacheKey, payload: bytes) -> Path:
        """Write payload then its sidecar, each atomically; a crash between leaves a detectable miss."""
        path = self.path_for(key)
        atomic_write_bytes(path, payload)
        meta = {"format": SIDECAR_FORMAT, "key": key.as_json(), "payload_sha256": sha256_bytes(payload),
                "size": len(payload)}
        atomic_write_bytes(self._sidecar(path), json.dumps(meta, indent=1).encode())
        return path

    def discard(self, key: CacheKey) -> None:
        path = self.path_for(key)
        path.unlink(missing_ok=True)
        self._sidecar(path).unlink(missing_ok=True)

    def get_or_build(self, key: CacheKey, build: Callable[[], bytes]) -> bytes:
        payload = self.load(key)
        if payload is None:
            payload = build()
            self.store(key, payload)
        return payload
