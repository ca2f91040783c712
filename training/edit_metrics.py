"""Does an edit do what it says? Teacher edits of aligned crops, measured with landmarks and identity.

The teacher edit of a crop is the direction's own change pasted in place: `crop + up(G(w') - G(w))` at the
crop's size (stream.pipeline.residual_change, same resize; only its brightness for a pack with residual_colour
luma), which is what the export measures; with `motion=True` it is what the runtime's generator path pastes
back (stream/motion.py), which is what a student is distilled from. Each edited crop is measured with dlib's 68-point predictor in
the box of the face's original landmarks, and so is the unedited crop, so the change in a landmark
attribute is the edit's, not the measuring's. The decoded generator image alone (`G(w')` vs `G(w)`,
up-sampled to the crop size) is measured the same way: the attribute has to be there before the residual.
Identity: dlib's face descriptor of the edited crop against the original's (cosine similarity).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from engines.nets.stylegan2 import Generator
from engines.nets.synthesis import synthesize
from stream.edits.attributes import ATTRIBUTE_NAMES, IdentityEmbedder, attribute_matrix, cosine_similarity
from stream.edits.directions import Direction
from stream.edits.editor import LatentEdit, edit_offset
from stream.faces.detect import DlibLandmarker
from stream.motion import confined_change, split_change
from stream.pipeline import coloured, residual_change
from stream.pixels import SCALE, images_to_uint8, to_pixels, to_uint8
from stream.types import Crop, ResidualColour
from training.directions import part_box
from training.losses import psnr_uint8

log = logging.getLogger(__name__)


@torch.no_grad()
def decode(generator: Generator, codes: npt.NDArray[np.float32], batch: int = 64) -> npt.NDArray[np.float32]:
    """Generator images [N, 3, s, s] (about [-1, 1]) of codes [N, num_ws, D]."""
    generator.eval()
    w = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.float32))
    return torch.cat([synthesize(generator, w[i:i + batch]) for i in range(0, len(w), batch)]).numpy()


def teacher_edit(generator: Generator, crops: npt.NDArray[np.uint8], codes: npt.NDArray[np.float32],
                 offset: npt.NDArray[np.float32], base: npt.NDArray[np.float32] | None = None,
                 colour: ResidualColour = "rgb", masks: npt.NDArray[np.float32] | None = None,
                 motion: bool = False) -> npt.NDArray[np.uint8]:
    """Residual edit of crops [N, S, S, 3]: crop + up(G(w + offset) - G(w)), as the runtime pastes it
    (stream.pipeline.residual_change with `colour`). `base` = G(w) when already known. masks [N, S, S]:
    the edit's region per crop (stream/regions.py), as the runtime confines the change. motion: the
    runtime's default instead: the crop's own pixels moved by the generator's motion, plus the paint that
    motion does not explain (stream/motion.py), both in the region."""
    base = decode(generator, codes) if base is None else base
    edited = decode(generator, codes + offset[None])
    size = crops.shape[1]
    regions = np.ones(crops.shape[:3], np.float32) if masks is None else masks
    if not motion:
        change = residual_change(edited - base, size, colour) * regions[..., None]
        return to_uint8(crops.astype(np.float32) + change)
    out = []
    for crop, before, after, region in zip(crops, to_pixels(base, size) + SCALE, to_pixels(edited, size) + SCALE,
                                           regions):
        flow, paint = split_change(before, after)
        out.append(crop + confined_change(crop, coloured(paint, colour), flow, region))
    return to_uint8(np.stack(out))


def upsampled(images: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.uint8]:
    """Generator images [N, 3, s, s] -> uint8 crops [N, size, size, 3]."""
    return images_to_uint8(images, size)


def _box(landmarks: npt.NDArray[np.float32]) -> tuple[float, float, float, float]:
    x0, y0 = landmarks.min(0)
    x1, y1 = landmarks.max(0)
    return float(x0), float(y0), float(x1), float(y1)


def measure(landmarker: DlibLandmarker, crops: npt.NDArray[np.uint8] | list[Crop],
            boxes_from: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
    """Attribute scores [N, len(ATTRIBUTE_NAMES)] and landmarks [N, 68, 2] of crops, each in the box of its
    reference landmarks `boxes_from` [N, 68, 2]."""
    lms = np.stack([landmarker.refine(np.ascontiguousarray(c), _box(ref)) for c, ref in zip(crops, boxes_from)])
    return attribute_matrix(lms), lms


@dataclass
class EditReport:
    """Mean changes of one edit at one strength over a set of faces."""

    edit: str
    strength: float
    faces: int
    target_change: float                 # change of the edit's own attribute, residual crop
    target_change_decoded: float         # the same on the up-sampled G(w') vs G(w)
    other_changes: dict[str, float]      # the other attributes (residual crop)
    identity_cosine: float               # dlib descriptor, edited vs original crop
    psnr_vs_input: float                 # how much of the crop the edit touched
    part_share: float                    # share of the change's energy inside the edit's face part (part_box)
    part_area: float                     # share of the crop's area that part covers

    def row(self) -> dict:
        return {"edit": self.edit, "strength": self.strength, "faces": self.faces,
                "target_change": round(self.target_change, 4),
                "target_change_decoded": round(self.target_change_decoded, 4),
                "other_changes": {k: round(v, 4) for k, v in self.other_changes.items()},
                "identity_cosine": round(self.identity_cosine, 4), "psnr_vs_input": round(self.psnr_vs_input, 2),
                "part_share": round(self.part_share, 3), "part_area": round(self.part_area, 3)}


def part_share(edited: npt.NDArray[np.uint8], crops: npt.NDArray[np.uint8], box: tuple[float, ...]) -> float:
    """Share of the squared change (edited - crops) that falls inside `box` (fractions of the crop).

    A clean expression edit changes its face part; a share well below 1 means colour blotches or a
    light cast elsewhere on the face or the background."""
    energy = ((edited.astype(np.float64) - crops.astype(np.float64)) ** 2).sum(axis=(0, 3))  # [S, S]
    size = energy.shape[0]
    x0, y0, x1, y1 = (round(v * size) for v in box)
    return float(energy[max(0, y0):y1, max(0, x0):x1].sum() / max(energy.sum(), 1e-12))


def evaluate_edits(generator: Generator, crops: npt.NDArray[np.uint8], codes: npt.NDArray[np.float32],
                   landmarks: npt.NDArray[np.float32], directions: list[Direction], strengths: list[float],
                   embedder: IdentityEmbedder | None = None, colour: ResidualColour = "rgb") -> list[EditReport]:
    """Edit every crop with every direction at every strength and measure what changed."""
    landmarker = DlibLandmarker()
    size = crops.shape[1]
    base = decode(generator, codes)
    base_up = upsampled(base, size)
    attrs0, lms0 = measure(landmarker, crops, landmarks)
    attrs0_dec, _ = measure(landmarker, base_up, landmarks)
    ids0 = None if embedder is None else np.stack([embedder.embed(c, lm) for c, lm in zip(crops, lms0)])
    reports = []
    for direction in directions:
        k = ATTRIBUTE_NAMES.index(direction.name)
        box = part_box(landmarks, direction.name, size)
        for strength in strengths:
            offset = edit_offset([LatentEdit(direction, strength)], direction.num_ws, direction.vector.shape[1])
            edited_images = decode(generator, codes + offset[None])
            edited = teacher_edit(generator, crops, codes, offset, base, colour)
            attrs, lms = measure(landmarker, edited, landmarks)
            attrs_dec, _ = measure(landmarker, upsampled(edited_images, size), landmarks)
            delta = (attrs - attrs0).mean(0)
            identity = float("nan")
            if embedder is not None:
                ids = np.stack([embedder.embed(c, lm) for c, lm in zip(edited, lms)])
                identity = float(np.mean(cosine_similarity(ids, ids0)))
            reports.append(EditReport(direction.name, strength, len(crops), float(delta[k]),
                                      float((attrs_dec - attrs0_dec).mean(0)[k]),
                                      {n: float(delta[j]) for j, n in enumerate(ATTRIBUTE_NAMES) if j != k},
                                      identity, psnr_uint8(edited, crops), part_share(edited, crops, box),
                                      (box[2] - box[0]) * (box[3] - box[1])))
            log.info("%s %+.1f: %s %+.4f (decoded %+.4f), identity %.3f, %.0f%% of the change in its part",
                     direction.name, strength, direction.name, reports[-1].target_change,
                     reports[-1].target_change_decoded, identity, 100 * reports[-1].part_share)
    return reports
