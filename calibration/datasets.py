"""Calibration sets as plain iterables of feed dicts ({input name: batched array}).

Two sources: aligned face crops (any folder of crop images, or crops the face stage produced) for
image-input networks, and W+ codes drawn through the mapping network for the generator.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from engines.errors import UserError
from stream.pixels import to_images

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_crop_folder(folder: str | Path, size: int, limit: int | None = None) -> list[np.ndarray]:
    """Crops [size, size, 3] RGB uint8 from the images in folder (sorted by name, resized if needed)."""
    import cv2

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise UserError(f"{folder}: no crop images ({', '.join(IMAGE_SUFFIXES)}) found; "
                        "point --crops at a folder of aligned face crops")
    crops = []
    for path in files[:limit]:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise UserError(f"{path}: not a readable image; remove it from the calibration folder")
        if bgr.shape[:2] != (size, size):
            bgr = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)
        crops.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return crops


def crops_to_feeds(crops: Iterable[np.ndarray], input_name: str, batch: int) -> Iterator[Feed]:
    """Batches of crops as network input: [batch, 3, S, S] float32 in [-1, 1]. A short last batch is dropped
    (engines have static shapes)."""
    pending: list[np.ndarray] = []
    for crop in crops:
        pending.append(to_images([np.asarray(crop)])[0])
        if len(pending) == batch:
            yield {input_name: np.stack(pending).astype(np.float32)}
            pending = []
    if pending:
        log.debug("calibration: dropped %d crops that do not fill a batch of %d", len(pending), batch)


def wplus_feeds(mapping: Callable[[np.ndarray], np.ndarray], num_ws: int, count: int, batch: int,
                input_name: str = "wplus", z_dim: int = 512, mix_probability: float = 0.5,
                seed: int = 0) -> Iterator[Feed]:
    """`count` batches of W+ codes [batch, num_ws, w_dim] from mapping(z [N, z_dim]) -> w [N, w_dim].

    With mix_probability, a sample switches to a second code from a random layer on (style mixing), so the
    ranges also cover the per-layer variation of codes an encoder produces, not only broadcast w.
    """
    rng = np.random.default_rng(seed)
    for _ in range(count):
        w1 = np.asarray(mapping(rng.standard_normal((batch, z_dim)).astype(np.float32)), dtype=np.float32)
        w2 = np.asarray(mapping(rng.standard_normal((batch, z_dim)).astype(np.float32)), dtype=np.float32)
        wplus = np.repeat(w1[:, None, :], num_ws, axis=1)
        for i in range(batch):
            if rng.random() < mix_probability:
                wplus[i, rng.integers(1, num_ws):] = w2[i]
        yield {input_name: wplus}


def materialise(feeds: Iterable[Mapping[str, np.ndarray]], expected: Mapping[str, tuple] | None = None,
                source: str = "calibration set") -> list[Feed]:
    """The feeds as a list (calibration reads them twice: fingerprint, then ranges), checked against
    expected {name: (shape, dtype)} when given."""
    out = [{name: np.ascontiguousarray(array) for name, array in feed.items()} for feed in feeds]
    if not out:
        raise UserError(f"{source}: no calibration samples (is the folder empty or smaller than one batch?)")
    if expected is None:
        return out
    for index, feed in enumerate(out):
        for name, (shape, _dtype) in expected.items():
            if name not in feed:
                raise UserError(f"{source}: sample {index} lacks input {name!r}")
            if feed[name].shape != tuple(shape):
                raise UserError(f"{source}: input {name!r} has shape {feed[name].shape}, "
                                f"the graph takes {tuple(shape)}")
    return out


def fingerprint_feeds(feeds: Sequence[Mapping[str, np.ndarray]]) -> str:
    """sha256 over the calibration set's names, shapes, dtypes and values (the range cache's key)."""
    digest = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            array = np.ascontiguousarray(feed[name])
            digest.update(f"{name}|{array.shape}|{array.dtype}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()
