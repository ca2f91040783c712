"""Face tracking: stable ids, detection every N frames (or when a face is lost), landmark refinement in
between, One Euro smoothing of each track's landmarks.

Between detections a face's box is carried by its own landmarks: at each detection the tracker stores the
detector's box relative to the landmarks' centroid and spread, and later frames rebuild a box of the same
kind from the latest landmarks, so the 68-point predictor always sees the box shape it was trained on.
Each refined face is checked by dlib's HOG detector in a small region around it (a few ms): a face that is
gone makes the tracker detect on that same frame, and one that drifted off its box is re-anchored.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from engines.errors import UserError
from stream.faces.align import ffhq_affine, ffhq_square, transform_points
from stream.faces.detect import DlibDetector, DlibLandmarker, FaceDetector
from stream.filters import OneEuroFilter
from stream.types import Box, Face, Frame

log = logging.getLogger(__name__)

# One Euro defaults, tuned on the shared clips with the jitter/lag measure of bench/faces.py and
# tests/test_faces_track.py (numbers in bench/RESULTS.md). The face's placement (FFHQ square: centre and
# half-side vector, in units of the face's size) and its shape inside that square (crop fractions) are
# filtered apart: a head that moves fast raises the placement's cutoff (no lag) without unlocking the
# shape's, whose noise is what makes the aligned crop shimmer. The price: small, slow shape changes (a
# mouth opening a little) lag 1.5-3.5 frames on the clips; fast ones pass through (shape beta).
DEFAULT_MIN_CUTOFF = 1.0   # placement, Hz
DEFAULT_BETA = 2.0         # placement, per (face size per second)
DEFAULT_D_CUTOFF = 1.0
SHAPE_MIN_CUTOFF = 0.5     # shape, Hz
SHAPE_BETA = 8.0           # shape, per (crop side per second)
# A refined face whose spread changes this much in one frame has lost its face (occlusion, cut, exit).
_MAX_SCALE_JUMP = 0.3
# A track whose box overlaps its detection at least this much keeps its landmark-carried box: HOG boxes
# snap to an 8-pixel grid, and re-anchoring to each of them would make the landmarks jump.
_KEEP_ANCHOR_IOU = 0.5
# Landmark passes per frame at most, and the box movement (fraction of its width) that ends them early.
_REFINE_PASSES = 3
_REFINE_TOLERANCE = 0.03
# Share of the face's last step used to predict its next box (a full step overshoots when a head shakes).
_VELOCITY_GAIN = 0.5


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _spread(points: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float64], float]:
    centre = points.mean(axis=0, dtype=np.float64)
    return centre, float(np.sqrt(((points - centre) ** 2).sum(axis=1).mean()))


class LandmarkSmoother:
    """One Euro smoothing of a face's 68 landmarks as placement (FFHQ square) plus shape within it.

    `unit`: the face's size in pixels (the placement's unit of length). Placement and shape each have
    (min_cutoff, beta, d_cutoff); see the module constants for what they mean and their defaults.
    """

    def __init__(self, unit: float, placement: tuple[float, float, float] = (DEFAULT_MIN_CUTOFF, DEFAULT_BETA,
                                                                              DEFAULT_D_CUTOFF),
                 shape: tuple[float, float, float] = (SHAPE_MIN_CUTOFF, SHAPE_BETA, DEFAULT_D_CUTOFF)) -> None:
        self.unit = unit
        self._placement = OneEuroFilter(*placement)
        self._shape = OneEuroFilter(*shape)

    def __call__(self, landmarks: npt.NDArray[np.float32], t: float) -> npt.NDArray[np.float32]:
        centre, half_x, _ = ffhq_square(landmarks)
        shape = transform_points(ffhq_affine(landmarks, 1), landmarks)                   # [68, 2] crop fractions
        placed = self._placement(np.concatenate([centre, half_x]) / self.unit, t) * self.unit  # [4]
        shape = self._shape(shape, t)
        centre, half_x = placed[:2], placed[2:]
        half_y = np.array([-half_x[1], half_x[0]])
        # unit-crop index coordinates (u, v) back to the frame: c + 2u x + 2v y (align.py's square map)
        crop_to_frame = np.stack([2.0 * half_x, 2.0 * half_y, centre], axis=1)
        return transform_points(crop_to_frame, shape).astype(np.float32)


@dataclass
class _Track:
    track_id: int
    score: float
    landmarks: npt.NDArray[np.float32]        # raw (unsmoothed) 68 landmarks of the latest frame
    smoother: LandmarkSmoother | None
    box_in_landmarks: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((2, 2)))
    missed: int = 0                            # consecutive detections that did not find this face
    velocity: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(2))  # centroid px / frame

    def anchor(self, box: Box) -> None:
        """Remember `box` relative to the current landmarks (the box their future positions imply)."""
        centre, spread = _spread(self.landmarks)
        corners = np.array([[box[0], box[1]], [box[2], box[3]]], dtype=np.float64)
        self.box_in_landmarks = (corners - centre) / max(spread, 1e-6)

    def box(self, landmarks: npt.NDArray[np.float32] | None = None,
            shift: npt.NDArray[np.float64] | None = None) -> Box:
        """The detector-style box these (default: the latest) landmarks imply, moved by `shift`."""
        centre, spread = _spread(self.landmarks if landmarks is None else landmarks)
        if shift is not None:
            centre = centre + shift
        (x0, y0), (x1, y1) = centre + self.box_in_landmarks * spread
        return float(x0), float(y0), float(x1), float(y1)


class FaceTracker:
    """Tracks faces over a video: `update(frame)` returns this frame's faces with stable `track_id`s.

    detect_every: run the detector every N frames (and on any frame where a face was lost or none is
    tracked); frames in between refine landmarks. max_missed: detections a track may miss before it is
    dropped. verify: check each refined face with a local HOG search (dlib). smoothing: One Euro filtering
    of each track's landmarks (LandmarkSmoother: min_cutoff, beta, d_cutoff for the face's placement,
    shape_min_cutoff, shape_beta for its shape). fps: the time step used when update() gets no timestamp.
    """

    def __init__(self, detector: FaceDetector, landmarker: DlibLandmarker | None = None, detect_every: int = 10,
                 iou_threshold: float = 0.3, max_missed: int = 2, verify: bool = True, smoothing: bool = True,
                 min_cutoff: float = DEFAULT_MIN_CUTOFF, beta: float = DEFAULT_BETA,
                 d_cutoff: float = DEFAULT_D_CUTOFF, shape_min_cutoff: float = SHAPE_MIN_CUTOFF,
                 shape_beta: float = SHAPE_BETA, fps: float = 30.0) -> None:
        if detect_every < 1 or max_missed < 0 or fps <= 0:
            raise UserError(f"face tracker: detect_every={detect_every}, max_missed={max_missed}, fps={fps}; "
                            "need detect_every >= 1, max_missed >= 0, fps > 0")
        self.detector = detector
        # the detector's own 68-point model when it has one, so the weights load once
        self.landmarker = landmarker or getattr(detector, "landmarker", None) or DlibLandmarker()
        self._verifier: DlibDetector | None = None
        if verify:
            self._verifier = detector if isinstance(detector, DlibDetector) \
                else DlibDetector(landmarker=self.landmarker)
        self.detect_every = detect_every
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.smoothing = smoothing
        self.placement_filter = (min_cutoff, beta, d_cutoff)
        self.shape_filter = (shape_min_cutoff, shape_beta, d_cutoff)
        LandmarkSmoother(1.0, self.placement_filter, self.shape_filter)  # bad parameters fail here, not per face
        self.fps = fps
        self._next_id = 0
        self.reset()

    def reset(self) -> None:
        """Drop all tracks (a new video, a scene cut); ids keep increasing."""
        self._tracks: list[_Track] = []
        self._frames_since_detect = 0
        self._frame_index = 0

    def update(self, frame: Frame, t: float | None = None) -> list[Face]:
        """Faces in `frame` (time `t` seconds; default frame index / fps), ordered by track id."""
        now = self._frame_index / self.fps if t is None else float(t)
        due = self._frames_since_detect >= self.detect_every - 1 or any(track.missed for track in self._tracks)
        if self._tracks and not due and self._refine_all(frame):
            self._frames_since_detect += 1
        else:
            self._detect(frame)
            self._frames_since_detect = 0
        self._frame_index += 1
        faces = []
        for track in self._tracks:
            landmarks = track.landmarks
            if track.smoother is not None:
                landmarks = track.smoother(landmarks, now)
            faces.append(Face(box=track.box(), score=track.score, landmarks=landmarks, track_id=track.track_id))
        return faces

    def _landmarks68(self, frame: Frame, face: Face) -> npt.NDArray[np.float32]:
        if face.landmarks.shape == (68, 2):
            return face.landmarks.astype(np.float32)
        # a 5-point detector (insightface without its 68-point model): the 68 points come from dlib
        return self.landmarker.refine(frame, face.box)

    def _reanchor(self, frame: Frame, track: _Track, face: Face) -> None:
        track.landmarks = self._landmarks68(frame, face)
        track.velocity = np.zeros(2)  # a correction, not a motion: predict nothing from it
        track.anchor(face.box)

    def _detect(self, frame: Frame) -> None:
        detections = self.detector.detect(frame)
        pairs = sorted(((box_iou(track.box(shift=track.velocity * _VELOCITY_GAIN), det.box), ti, di)
                        for ti, track in enumerate(self._tracks) for di, det in enumerate(detections)),
                       reverse=True)
        matched_tracks: set[int] = set()
        matched_dets: set[int] = set()
        for iou, ti, di in pairs:
            if iou < self.iou_threshold or ti in matched_tracks or di in matched_dets:
                continue
            matched_tracks.add(ti)
            matched_dets.add(di)
            track, det = self._tracks[ti], detections[di]
            track.score, track.missed = det.score, 0
            if not (iou >= _KEEP_ANCHOR_IOU and self._refine(frame, track, check=False)):
                self._reanchor(frame, track, det)
        kept = []
        for ti, track in enumerate(self._tracks):
            if ti not in matched_tracks:
                track.missed += 1
                if track.missed > self.max_missed or not self._refine(frame, track, check=False):
                    log.debug("track %d left (missed %d detections)", track.track_id, track.missed)
                    continue
            kept.append(track)
        for di, det in enumerate(detections):
            if di not in matched_dets:
                kept.append(self._new_track(frame, det))
        self._tracks = sorted(kept, key=lambda track: track.track_id)

    def _new_track(self, frame: Frame, det: Face) -> _Track:
        landmarks = self._landmarks68(frame, det)
        unit = max(_spread(landmarks)[1], 1.0)
        smoother = LandmarkSmoother(unit, self.placement_filter, self.shape_filter) if self.smoothing else None
        track = _Track(track_id=self._next_id, score=det.score, landmarks=landmarks, smoother=smoother)
        track.anchor(det.box)
        self._next_id += 1
        log.debug("track %d entered at %s", track.track_id, det.box)
        return track

    def _refine_all(self, frame: Frame) -> bool:
        """Refine every track; False when one looks lost (the caller then detects on this frame)."""
        refined = [self._refine(frame, track, check=True) for track in self._tracks]  # every track, no short cut
        return all(refined)

    def _refine(self, frame: Frame, track: _Track, check: bool) -> bool:
        """Refine a track in place from the box its last landmarks imply, moved on by part of its last step.

        With `check`, a local HOG search confirms the face (and re-anchors a track that drifted off it).
        False, with the track left as it was, when the face looks lost.
        """
        h, w = frame.shape[:2]
        old_centre, old_spread = _spread(track.landmarks)
        box = track.box(shift=track.velocity * _VELOCITY_GAIN)
        converged = False
        for _ in range(_REFINE_PASSES):
            landmarks = self.landmarker.refine(frame, box)
            # the predictor only sees inside its box: if the face sits well off it (fast motion), refit
            # from the box its own answer implies
            new_box = track.box(landmarks)
            moved = np.hypot(new_box[0] + new_box[2] - box[0] - box[2], new_box[1] + new_box[3] - box[1] - box[3])
            box = new_box
            if moved / 2 < _REFINE_TOLERANCE * (box[2] - box[0]):
                converged = True
                break
        if check and self._verifier is not None:
            near = self._verifier.detect_near(frame, box)
            if not near:
                return False
            best_box, score = max(near, key=lambda found: box_iou(found[0], box))
            if not converged or box_iou(best_box, box) < _KEEP_ANCHOR_IOU:
                log.debug("track %d drifted: re-anchored on a local detection", track.track_id)
                self._reanchor(frame, track, Face(box=best_box, score=score, landmarks=np.zeros((0, 2))))
                return True
        elif not converged:
            return False
        centre, spread = _spread(landmarks)
        inside = 0 <= centre[0] < w and 0 <= centre[1] < h
        if not inside or abs(spread / max(old_spread, 1e-6) - 1.0) > _MAX_SCALE_JUMP:
            return False
        track.velocity = centre - old_centre
        track.landmarks = landmarks
        return True
