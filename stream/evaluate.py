"""How an edited video compares with its input: identity kept, temporal coherence, flicker, attribute change.

For each frame pair (input, output) the input's face is tracked (stream/faces/track.py); both frames are
measured in the same face box and cropped with the same FFHQ affine, so whatever the tracker or the crop
does affects both sides alike and the ratios isolate what the edit did.
- identity: dlib descriptors of the input and output face: mean cosine similarity, mean euclidean distance
  and the share of frames still the same person by dlib's 0.6 rule;
- TL-ID and TG-ID (STIT, Tzaban et al. 2022): mean descriptor cosine similarity of consecutive measured
  frames (local) and of all pairs of measured frames (global) of the output, over the same of the input;
  1.0 means the edit kept the input's temporal identity coherence. dlib's cosine similarities of any two
  faces are high (~0.9), so these ratios sit near 1 and differences of a few 0.01 matter;
- flicker: mean absolute frame-to-frame change of the face's pixels in the frame (the input's face outline
  at frame t, the same pixels in both videos, so no crop re-alignment dilutes it) of the output over that
  of the input, on every frame (1.0: the edit added no temporal noise);
- where the change lands, on measured frames at full resolution with the input's 68 landmarks: mean
  |output - input| (0-255 units) inside the mouth and inside the eyes (each outline grown by a quarter of
  the inter-ocular distance), and on the rest of the face (jaw and brows' outline, minus those parts):
  "collateral", what an edit of the mouth or the eyes should leave alone;
- attributes: each landmark score's mean in the input and the output (stream/edits/attributes.py).
"""
from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import numpy.typing as npt

from engines.errors import UserError
from stream.edits.attributes import (
    ATTRIBUTE_NAMES,
    SAME_PERSON_DISTANCE,
    IdentityEmbedder,
    cosine_similarity,
    landmark_attributes,
)
from stream.types import Face, Frame

log = logging.getLogger(__name__)



@dataclass
class EvaluationReport:
    """Metrics of one input/output video pair (see the module docstring); NaN where nothing was measured."""

    frames: int                          # frame pairs read
    face_frames: int                     # pairs where the input had a face
    measured_frames: int                 # pairs where identity and attributes were measured (every N-th)
    identity_cosine: float               # mean cos(descriptor in, descriptor out)
    identity_distance: float             # mean euclidean distance in vs out
    same_person: float                   # share of measured frames with distance < 0.6
    tl_id: float                         # consecutive-frame similarity, output / input
    tg_id: float                         # all-pairs similarity, output / input
    flicker: float                       # frame-to-frame crop change, output / input
    flicker_in: float                    # mean |crop_t - crop_t-1| of the input, 0-255 units
    flicker_out: float
    change_mouth: float                  # mean |out - in| inside the mouth, 0-255 units
    change_eyes: float                   # ... inside the eyes
    collateral: float                    # ... on the rest of the face
    attributes: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (mean in, mean out)

    def rows(self) -> list[tuple[str, str]]:
        """(metric, value) rows for a printed table."""
        out = [("frames (with a face, measured)", f"{self.frames} ({self.face_frames}, {self.measured_frames})"),
               ("identity cosine in vs out", f"{self.identity_cosine:.4f}"),
               ("identity distance in vs out", f"{self.identity_distance:.3f} (same person < {SAME_PERSON_DISTANCE})"),
               ("same person", f"{100 * self.same_person:.1f}%"),
               ("TL-ID (out / in)", f"{self.tl_id:.4f}"),
               ("TG-ID (out / in)", f"{self.tg_id:.4f}"),
               ("flicker (out / in)", f"{self.flicker:.3f} ({self.flicker_out:.2f} / {self.flicker_in:.2f})"),
               ("change in the mouth / eyes", f"{self.change_mouth:.2f} / {self.change_eyes:.2f} (0-255)"),
               ("change on the rest of the face", f"{self.collateral:.2f} (0-255; H.264 re-encoding alone ~1.5)")]
        for name, (before, after) in self.attributes.items():
            out.append((f"{name} in -> out", f"{before:+.3f} -> {after:+.3f} ({after - before:+.3f})"))
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def face_zones(landmarks: npt.NDArray[np.float32], shape: tuple[int, ...]
               ) -> tuple[tuple[slice, slice], dict[str, npt.NDArray[np.bool_]]]:
    """Boolean masks of the mouth, the eyes and the rest of the face ("rest") for 68 frame-pixel landmarks,
    within the face's bounding region (returned as slices of the frame)."""
    import cv2

    iod = float(np.linalg.norm(landmarks[36:42].mean(0) - landmarks[42:48].mean(0)))
    grow = max(round(0.25 * iod), 1)
    h, w = shape[:2]
    x0, y0 = np.maximum(np.floor(landmarks.min(0)).astype(int) - grow, 0)
    x1, y1 = np.minimum(np.ceil(landmarks.max(0)).astype(int) + grow + 1, (w, h))
    local = np.round(landmarks - (x0, y0)).astype(np.int32)
    size = (int(y1 - y0), int(x1 - x0))

    def hull(points: npt.NDArray[np.int32], dilate: int = 0) -> npt.NDArray[np.bool_]:
        mask = np.zeros(size, np.uint8)
        cv2.fillConvexPoly(mask, cv2.convexHull(points), 1)
        if dilate:
            mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1,) * 2))
        return mask.astype(bool)

    mouth = hull(local[48:68], grow)
    eyes = hull(local[36:42], grow) | hull(local[42:48], grow)
    face = hull(np.concatenate([local[0:17], local[17:27]]))
    return (slice(y0, y1), slice(x0, x1)), {"mouth": mouth, "eyes": eyes, "rest": face & ~mouth & ~eyes}


def _mean_pair_similarity(desc: npt.NDArray[np.float32], local: bool) -> float:
    if len(desc) < 2:
        return float("nan")
    if local:
        return float(np.mean(cosine_similarity(desc[1:], desc[:-1])))
    unit = desc / np.linalg.norm(desc, axis=1, keepdims=True)
    sims = unit @ unit.T
    return float(sims[np.triu_indices(len(desc), k=1)].mean())


class FaceMeasurer:
    """Tracks the input's face and measures both frames of a pair with its landmarks. Loading dlib's models
    takes a second or two: reuse one measurer for several evaluations (each starts a fresh track)."""

    def __init__(self) -> None:
        from stream.faces.detect import DlibDetector
        from stream.faces.track import FaceTracker

        detector = DlibDetector()
        self.landmarker = detector.landmarker
        self.tracker = FaceTracker(detector)
        self.embedder = IdentityEmbedder()

    def reset(self) -> None:
        """Forget the tracked faces (a new video)."""
        self.tracker.reset()

    def face(self, frame: Frame, t: float) -> Face | None:
        faces = self.tracker.update(frame, t)
        if not faces:
            return None
        return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))


def evaluate_frames(pairs: Iterable[tuple[Frame, Frame]], fps: float = 30.0, every: int = 1,
                    measurer: FaceMeasurer | None = None, progress: Callable[[int], None] | None = None
                    ) -> EvaluationReport:
    """Compare output frames with input frames, pair by pair (same size, same order).

    every: measure identity and attributes on every N-th frame (dlib's descriptor costs ~20 ms a face);
    flicker uses every frame. measurer: reuse one across calls (default: a new one).
    progress: called with 1 after each pair."""
    if every < 1:
        raise UserError(f"--every {every}: must be >= 1")
    m = measurer or FaceMeasurer()
    m.reset()
    desc_in, desc_out, attr_in, attr_out, cos, dist = [], [], [], [], [], []
    flicker_in, flicker_out = [], []
    zones: dict[str, list[float]] = {"mouth": [], "eyes": [], "rest": []}
    previous: tuple[Frame, Frame] | None = None
    frames = face_frames = 0
    for index, (frame_in, frame_out) in enumerate(pairs):
        if frame_in.shape != frame_out.shape:
            raise UserError(f"frame {index}: input is {frame_in.shape[1]}x{frame_in.shape[0]} but output is "
                            f"{frame_out.shape[1]}x{frame_out.shape[0]}; compare a video with its own edit")
        frames += 1
        face = m.face(frame_in, index / fps)
        if face is None:
            previous = None  # a gap breaks the frame-to-frame chain
        else:
            face_frames += 1
            region, masks = face_zones(face.landmarks, frame_in.shape)
            whole_face = masks["rest"] | masks["mouth"] | masks["eyes"]
            if previous is not None:
                for now, before, into in ((frame_in, previous[0], flicker_in), (frame_out, previous[1], flicker_out)):
                    step = np.abs(now[region].astype(np.float32) - before[region]).mean(-1)
                    into.append(float(step[whole_face].mean()))
            previous = (frame_in, frame_out)
            if index % every == 0:
                lm_in = m.landmarker.refine(frame_in, face.box)
                region, masks = face_zones(lm_in, frame_in.shape)
                change = np.abs(frame_out[region].astype(np.float32) - frame_in[region]).mean(-1)
                for zone, mask in masks.items():
                    if mask.any():
                        zones[zone].append(float(change[mask].mean()))
                lm_out = m.landmarker.refine(frame_out, face.box)
                d_in, d_out = m.embedder.embed(frame_in, lm_in), m.embedder.embed(frame_out, lm_out)
                desc_in.append(d_in)
                desc_out.append(d_out)
                cos.append(cosine_similarity(d_in, d_out))
                dist.append(float(np.linalg.norm(d_in - d_out)))
                attr_in.append(landmark_attributes(lm_in))
                attr_out.append(landmark_attributes(lm_out))
        if progress is not None:
            progress(1)
    if frames == 0:
        raise UserError("no frames to compare")
    if face_frames == 0:
        log.warning("no face found in any input frame: nothing to measure")
    nan = float("nan")
    d_in, d_out = np.array(desc_in), np.array(desc_out)
    fin, fout = (float(np.mean(f)) if f else nan for f in (flicker_in, flicker_out))
    return EvaluationReport(
        frames=frames, face_frames=face_frames, measured_frames=len(desc_in),
        identity_cosine=float(np.mean(cos)) if cos else nan,
        identity_distance=float(np.mean(dist)) if dist else nan,
        same_person=float(np.mean(np.array(dist) < SAME_PERSON_DISTANCE)) if dist else nan,
        tl_id=_mean_pair_similarity(d_out, True) / _mean_pair_similarity(d_in, True),
        tg_id=_mean_pair_similarity(d_out, False) / _mean_pair_similarity(d_in, False),
        flicker=fout / fin if fin > 0 else nan, flicker_in=fin, flicker_out=fout,
        change_mouth=float(np.mean(zones["mouth"])) if zones["mouth"] else nan,
        change_eyes=float(np.mean(zones["eyes"])) if zones["eyes"] else nan,
        collateral=float(np.mean(zones["rest"])) if zones["rest"] else nan,
        attributes={name: (float(np.mean([a[name] for a in attr_in])), float(np.mean([a[name] for a in attr_out])))
                    for name in ATTRIBUTE_NAMES} if attr_in else {},
    )


def _paired(first: Iterator[Frame], second: Iterator[Frame], names: tuple[str, str]) -> Iterator[tuple[Frame, Frame]]:
    for a, b in itertools.zip_longest(first, second):
        if a is None or b is None:
            short = names[0] if a is None else names[1]
            raise UserError(f"{short} has fewer frames than the other video; compare a video with its own edit")
        yield a, b


def evaluate_videos(input_path: str | os.PathLike, output_path: str | os.PathLike, every: int = 1,
                    max_frames: int | None = None, measurer: FaceMeasurer | None = None,
                    progress: Callable[[int], None] | None = None) -> EvaluationReport:
    """evaluate_frames over two video files (the output an edit of the input, frame for frame)."""
    from stream.media.source import FileSource

    if max_frames is not None and max_frames < 1:
        raise UserError(f"--max-frames {max_frames}: must be >= 1")
    with FileSource(input_path) as src_in, FileSource(output_path) as src_out:
        fps = float(src_in.info.rate) if src_in.info.rate else 30.0
        frames_in = (f.image for f in src_in.frames())
        frames_out = (f.image for f in src_out.frames())
        pairs = _paired(frames_in, frames_out, (str(input_path), str(output_path)))
        if max_frames is not None:
            pairs = itertools.islice(pairs, max_frames)
        return evaluate_frames(pairs, fps=fps, every=every, measurer=measurer, progress=progress)
