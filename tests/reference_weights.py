"""Deterministic weights of ../shared/reference manifests (the fill recipe of its README)."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE = SHARED / "reference"
FACES = SHARED / "data" / "faces"
DIRECTIONS = SHARED / "data" / "directions"


def require(path: Path) -> Path:
    """Return path, or skip the calling test with the reason when ../shared lacks it."""
    if not path.exists():
        pytest.skip(f"{path} not found: tests read shared data from ../shared beside the checkout")
    return path


def fill_tensor(key: str, spec: dict) -> torch.Tensor:
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    shape, fill = spec["shape"], spec["fill"]
    if fill["kind"] == "normal":
        array = fill["mean"] + fill["std"] * rng.standard_normal(size=shape)
    elif fill["kind"] == "uniform":
        array = rng.uniform(fill["low"], fill["high"], size=shape)
    elif fill["kind"] == "const":
        array = np.full(shape, fill["value"])
    else:
        raise ValueError(f"unknown fill kind {fill['kind']!r} for {key}")
    dtype = np.int64 if spec.get("dtype") == "int64" else np.float32
    return torch.from_numpy(np.asarray(array, dtype=dtype))


def manifest_state_dict(manifest_file: str, config: str) -> dict[str, torch.Tensor]:
    """The state_dict a reference implementation would hold for `config` of `manifest_file`."""
    manifest = json.loads(require(REFERENCE / manifest_file).read_text())
    return {key: fill_tensor(key, spec) for key, spec in manifest[config].items()}


def relative_l2(ours: np.ndarray, ref: np.ndarray) -> float:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
