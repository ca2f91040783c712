"""DetectionTracker: ids kept by overlap, 5-point landmarks smoothed, lost faces dropped; no dlib involved."""
from __future__ import annotations

import numpy as np

from stream.faces.detection_tracker import DetectionTracker
from stream.types import Face
from tests.test_session import five_points


class ScriptedDetector:
    """Detections per frame, as a 5-point detector (SCRFD) returns them."""

    def __init__(self, script: list[list[tuple[float, float, float]]], noise: float = 0.0) -> None:
        self.script = script
        self.frame = 0
        self.rng = np.random.default_rng(0)
        self.noise = noise

    def detect(self, frame: np.ndarray) -> list[Face]:
        faces = []
        for cx, cy, scale in self.script[self.frame]:
            points = five_points(cx, cy, scale) + self.rng.normal(0, self.noise, (5, 2)).astype(np.float32)
            faces.append(Face((cx - scale, cy - scale, cx + scale, cy + scale), 0.9, points))
        self.frame += 1
        return faces


def test_ids_follow_faces_and_a_lost_face_is_dropped() -> None:
    left, right = (60.0, 80.0, 30.0), (200.0, 80.0, 30.0)
    script = [[left, right]] * 3 + [[(62.0, 81.0, 30.0)]] * 4 + [[right, left]]
    tracker = DetectionTracker(ScriptedDetector(script), max_missed=2)
    frame = np.zeros((160, 260, 3), np.uint8)
    ids = [[f.track_id for f in tracker.update(frame, i / 25)] for i in range(len(script))]
    assert ids[:3] == [[0, 1]] * 3
    assert ids[3:7] == [[0]] * 4          # the right face is gone: not returned while missed
    assert ids[7] == [0, 2]               # it comes back as a new track; the left one keeps its id


def test_landmarks_are_smoothed_on_a_still_face() -> None:
    script = [[(120.0, 80.0, 40.0)]] * 40
    frame = np.zeros((160, 240, 3), np.uint8)
    raw = DetectionTracker(ScriptedDetector(script, noise=1.5), smoothing=False)
    smooth = DetectionTracker(ScriptedDetector(script, noise=1.5))
    jitter = []
    for tracker in (raw, smooth):
        points = np.stack([tracker.update(frame, i / 25)[0].landmarks for i in range(len(script))])
        jitter.append(float(np.abs(np.diff(points, axis=0)).mean()))
    assert jitter[1] < 0.6 * jitter[0]
