"""A latent -> face image function whose attributes are known by construction, for the edits tests.

Real faces (first frames of three shared clips, FFHQ-aligned at 256 px) are warped by a smooth
displacement field: the component of W+ entry 2 along a hidden unit vector pulls the mouth corners out
and up (smile), entry 3 opens the eyelids, entry 0 changes the brightness, and entry 1 picks which person
it is. dlib measures the result, so discovery, classifiers and metrics are exercised end to end on real
pixels while the true directions are known.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from stream.edits.attributes import IdentityEmbedder, attribute_matrix
from stream.faces.align import ffhq_affine, warp_to_crop
from stream.faces.detect import DlibDetector, DlibLandmarker
from stream.media.source import FileSource
from tests.reference_weights import FACES, require

SIZE = 256
BASE_CLIPS = ("d0.mp4", "d11.mp4", "d12.mp4")


@dataclass
class Base:
    crop: npt.NDArray[np.uint8]           # [SIZE, SIZE, 3]
    landmarks: npt.NDArray[np.float32]    # [68, 2] in crop pixels
    box: tuple[float, float, float, float]


def load_bases() -> list[Base]:
    """The aligned first face of each base clip (skips the test when ../shared is missing)."""
    detector = DlibDetector()
    bases = []
    for name in BASE_CLIPS:
        with FileSource(require(FACES / name)) as source:
            frame = next(iter(source.frames())).image
        face = detector.detect(frame)[0]
        affine = ffhq_affine(face.landmarks, SIZE)
        crop = warp_to_crop(frame, affine, SIZE)
        found = detector.detect(crop)[0]
        bases.append(Base(crop, found.landmarks, found.box))
    return bases


def _unit(rng: np.random.Generator, dim: int) -> npt.NDArray[np.float32]:
    v = rng.standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


def warp_face(image: npt.NDArray[np.uint8], landmarks: npt.NDArray[np.float32], smile: float, eyes: float = 0.0,
              light: float = 0.0) -> npt.NDArray[np.uint8]:
    """`image` with the face of `landmarks` [68, 2] smiling by `smile`, eyes opened by `eyes`, brightened by
    `light` (each about -2..2; 0 leaves it as it is)."""
    lm = landmarks.astype(np.float64)
    eye_a, eye_b = lm[36:42].mean(0), lm[42:48].mean(0)
    iod = np.linalg.norm(eye_b - eye_a)
    ex = (eye_b - eye_a) / iod
    ey = np.array([-ex[1], ex[0]])  # down the face
    # amounts saturate (tanh) so that no displacement exceeds ~0.6 sigma: the warp stays invertible
    s, e = 2.0 * np.tanh(smile / 2.0), 2.0 * np.tanh(eyes / 2.0)
    controls = []  # (point, displacement, sigma): a Gaussian bump of displacement around each point
    for idx, side in ((48, -1.0), (54, 1.0)):
        controls.append((lm[idx], iod * s * (0.05 * side * ex - 0.04 * ey), 0.2 * iod))
    for idx in (37, 38, 43, 44):
        controls.append((lm[idx], -0.025 * iod * e * ey, 0.08 * iod))
    for idx in (40, 41, 46, 47):
        controls.append((lm[idx], 0.012 * iod * e * ey, 0.08 * iod))
    # only the face region moves (the bumps are ~0 a face-width away)
    x0, y0 = np.maximum(np.floor(lm.min(0) - 0.6 * iod), 0).astype(int)
    x1, y1 = np.minimum(np.ceil(lm.max(0) + 0.6 * iod), (image.shape[1], image.shape[0])).astype(int)
    grid = np.mgrid[y0:y1, x0:x1][::-1].astype(np.float32)  # [2 (x, y), h, w] in image pixels
    # the forward warp moves q to q + D(q); each output pixel p samples the q solving that
    # (fixed-point iteration q <- p - D(q), which converges while D's slope stays below 1)
    src = grid.copy()
    for _ in range(4):
        field = np.zeros_like(grid)
        for point, disp, sigma in controls:
            r2 = (src[0] - point[0]) ** 2 + (src[1] - point[1]) ** 2
            field += disp[:, None, None].astype(np.float32) * np.exp(-r2 / (2 * sigma**2))
        src = grid - field
    out = image.copy()
    out[y0:y1, x0:x1] = cv2.remap(image, src[0], src[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    gain = 1.0 + 0.25 * np.tanh(light)
    return np.clip(out.astype(np.float32) * gain, 0, 255).astype(np.uint8)


class WarpFaceGenerator:
    """codes [N, num_ws, dim] -> faces; `directions[name]` [num_ws, dim] are the true unit directions."""

    num_ws = 4
    dim = 8
    light_layer, person_layer, smile_layer, eyes_layer = 0, 1, 2, 3

    def __init__(self, bases: list[Base], seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.bases = bases
        self.directions: dict[str, npt.NDArray[np.float32]] = {}
        for name, layer in (("light", self.light_layer), ("smile", self.smile_layer), ("eyes", self.eyes_layer)):
            d = np.zeros((self.num_ws, self.dim), np.float32)
            d[layer] = _unit(rng, self.dim)
            self.directions[name] = d
        self.person_axes = np.stack([_unit(rng, self.dim) for _ in bases])  # [P, dim]
        self._landmarker = DlibLandmarker()
        self._embedder = IdentityEmbedder()
        self.base_identities = np.stack([self._embedder.embed(b.crop, b.landmarks) for b in bases])

    def person(self, codes: npt.ArrayLike) -> npt.NDArray[np.int64]:
        return np.argmax(np.asarray(codes)[:, self.person_layer] @ self.person_axes.T, axis=1)

    def _amount(self, codes: npt.NDArray[np.float32], name: str) -> npt.NDArray[np.float32]:
        return (codes * self.directions[name]).sum(axis=(1, 2))

    def render(self, codes: npt.ArrayLike) -> list[npt.NDArray[np.uint8]]:
        c = np.asarray(codes, dtype=np.float32)
        people, smile, eyes, light = self.person(c), self._amount(c, "smile"), self._amount(c, "eyes"), \
            self._amount(c, "light")
        return [warp_face(self.bases[p].crop, self.bases[p].landmarks, s, e, li)
                for p, s, e, li in zip(people, smile, eyes, light)]

    def landmarks(self, codes: npt.ArrayLike) -> npt.NDArray[np.float32]:
        people = self.person(codes)
        return np.stack([self._landmarker.refine(img, self.bases[p].box)
                         for img, p in zip(self.render(codes), people)])

    def attributes(self, codes: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Landmark scores [N, 5] in ATTRIBUTE_NAMES order, measured by dlib on the rendered faces."""
        return attribute_matrix(self.landmarks(codes))

    def identity(self, codes: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """dlib descriptors [N, 128] of the rendered faces."""
        people = self.person(codes)
        out = []
        for img, p in zip(self.render(codes), people):
            lm = self._landmarker.refine(img, self.bases[p].box)
            out.append(self._embedder.embed(img, lm))
        return np.stack(out)
