"""Tracking by detection alone, for detectors that bring their own landmarks (5 points or 68): no dlib.

FaceTracker (track.py) detects every few frames and carries faces in between with dlib's 68-point
predictor and a HOG check. A detector that returns landmarks itself (insightface's SCRFD, 5 points, or
its 68-point model) needs neither: this tracker runs it on every frame, keeps ids by box overlap and
smooths each track's points with a One Euro filter in units of the face's size, so the aligned crop does
not shimmer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream.faces.detect import FaceDetector
from stream.faces.track import DEFAULT_BETA, DEFAULT_D_CUTOFF, DEFAULT_MIN_CUTOFF, box_iou
from stream.filters import OneEuroFilter
from stream.types import Face, Frame


@dataclass
class _Track:
    face: Face
    points: OneEuroFilter
    unit: float          # the face's width when the track began: the filter's unit, fixed so it adds no noise
    missed: int = 0


class DetectionTracker:
    """`update(frame, t)` -> this frame's faces with stable `track_id`s, landmarks smoothed per track.

    iou_threshold: a detection continues the track whose last box it overlaps at least this much.
    max_missed: frames a track may go undetected before it is dropped (its last face is not returned)."""

    def __init__(self, detector: FaceDetector, iou_threshold: float = 0.3, max_missed: int = 2,
                 smoothing: bool = True, fps: float = 30.0) -> None:
        self.detector = detector
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.smoothing = smoothing
        self.fps = fps
        self._next_id = 0
        self._frame_index = 0
        self.reset()

    def reset(self) -> None:
        """Drop all tracks (a new video); ids keep increasing."""
        self._tracks: dict[int, _Track] = {}

    def update(self, frame: Frame, t: float | None = None) -> list[Face]:
        now = self._frame_index / self.fps if t is None else float(t)
        self._frame_index += 1
        detections = self.detector.detect(frame)
        pairs = sorted(((box_iou(track.face.box, det.box), tid, di) for tid, track in self._tracks.items()
                        for di, det in enumerate(detections)), reverse=True)
        matched: dict[int, int] = {}  # detection index -> track id
        for iou, tid, di in pairs:
            if iou >= self.iou_threshold and tid not in matched.values() and di not in matched:
                matched[di] = tid
        for tid in [k for k in self._tracks if k not in matched.values()]:
            self._tracks[tid].missed += 1
            if self._tracks[tid].missed > self.max_missed:
                del self._tracks[tid]
        out = []
        for di, det in enumerate(detections):
            landmarks = det.landmarks.astype(np.float32)
            tid = matched.get(di)
            if tid is None:
                tid, self._next_id = self._next_id, self._next_id + 1
                unit = max(float(np.ptp(landmarks[:, 0])), 1.0)
                self._tracks[tid] = _Track(det, OneEuroFilter(DEFAULT_MIN_CUTOFF, DEFAULT_BETA, DEFAULT_D_CUTOFF), unit)
            track = self._tracks[tid]
            if self.smoothing:
                landmarks = (track.points(landmarks / track.unit, now) * track.unit).astype(np.float32)
            track.face, track.missed = Face(det.box, det.score, landmarks, tid), 0
            out.append(track.face)
        return sorted(out, key=lambda face: face.track_id)
