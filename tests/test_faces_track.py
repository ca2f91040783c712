"""Face tracking on real clips: stable ids, several faces, faces leaving and entering, jitter and lag."""
from __future__ import annotations

import numpy as np
import pytest

from stream.faces.detect import DlibDetector
from stream.faces.stability import crop_jitter_and_lag
from stream.faces.track import FaceTracker, box_iou
from tests.test_faces_detect import clip_frames


@pytest.fixture(scope="module")
def detector() -> DlibDetector:
    return DlibDetector()


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    h = max(left.shape[0], right.shape[0])
    pad = lambda a: np.pad(a, ((0, h - a.shape[0]), (0, 0), (0, 0)), constant_values=128)
    return np.ascontiguousarray(np.hstack([pad(left), pad(right)]))


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert abs(box_iou((0, 0, 10, 10), (5, 0, 15, 10)) - 1 / 3) < 1e-9


def test_two_faces_keep_their_ids_then_one_leaves_and_comes_back(detector):
    a, b = clip_frames("d3", limit=24), clip_frames("d18", limit=24)
    tracker = FaceTracker(detector, detect_every=5, max_missed=1)
    seen = []
    for i in range(24):
        right = b[i] if not 10 <= i < 18 else np.full_like(b[i], 128)  # the right face leaves, then returns
        faces = tracker.update(side_by_side(a[i], right))
        seen.append({f.track_id: (f.box[0] + f.box[2]) / 2 for f in faces})
    left_ids = {min(s, key=s.get) for s in seen}
    assert len(left_ids) == 1  # the left face keeps one id throughout
    (left_id,) = left_ids
    assert len(seen[0]) == 2 and len(seen[9]) == 2
    right_before = next(t for t in seen[9] if t != left_id)
    assert all(set(s) == {left_id} for s in seen[13:18])  # gone within max_missed + 1 detections
    assert len(seen[23]) == 2 and right_before not in seen[23]  # back, as a new track
    assert all(len(f) for f in seen)


@pytest.mark.slow
def test_ids_are_stable_and_landmarks_follow_a_shaking_head(detector):
    # d12, the fastest-moving clip: the head shakes by up to 50 px a frame around frames 95-111
    frames = clip_frames("d12", limit=150)
    tracker = FaceTracker(detector, detect_every=10, smoothing=False)
    for i, frame in enumerate(frames):
        faces = tracker.update(frame)
        assert [f.track_id for f in faces] == [0], f"frame {i}"
        fresh = detector.detect(frame) if i % 3 == 0 else []
        if fresh:  # the tracked landmarks stay on the face the detector finds
            error = np.linalg.norm(faces[0].landmarks - fresh[0].landmarks, axis=1).mean()
            assert error < 0.5 * np.linalg.norm(fresh[0].landmarks.std(axis=0)), f"frame {i}: {error:.1f} px"


class FivePointDetector:
    """dlib boxes with insightface-style 5-point landmarks, like an insightface pack without 1k3d68.onnx."""

    def __init__(self, detector: DlibDetector) -> None:
        self.inner = detector

    def detect(self, frame):
        from stream.faces.align import landmarks5_from_68

        faces = self.inner.detect(frame)
        for face in faces:
            face.landmarks = landmarks5_from_68(face.landmarks)
        return faces


def test_a_five_point_detector_gets_68_point_tracks(detector):
    tracker = FaceTracker(FivePointDetector(detector))
    for frame in clip_frames("d18", limit=12):
        faces = tracker.update(frame)
        assert [f.track_id for f in faces] == [0] and faces[0].landmarks.shape == (68, 2)


def test_smoother_keeps_a_still_face_and_follows_a_moved_one():
    from stream.faces.track import LandmarkSmoother
    from tests.test_faces_align import synthetic_68

    lm = synthetic_68()
    lm[:36] += np.random.default_rng(0).normal(0, 5, size=(36, 2)).astype(np.float32)  # a face-like spread
    smoother = LandmarkSmoother(unit=50.0)
    for i in range(5):
        assert np.allclose(smoother(lm, i / 30), lm, atol=1e-3)
    moved = lm + np.float32(40.0)
    out = [smoother(moved, (5 + i) / 30) for i in range(30)]
    assert np.abs(out[-1] - moved).max() < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["d0", "d11", "d12", "d13", "d18", "d19", "d20", "d3", "s18"])
def test_smoothing_reduces_jitter(detector, clip):
    raw, smooth, lag = crop_jitter_and_lag(detector, clip_frames(clip, limit=150))
    assert raw / smooth >= 2.0, f"{clip}: jitter {raw:.5f} -> {smooth:.5f}"
    if clip == "d12":  # the fastest-moving clip (mean landmark speed 0.13 face sizes per frame)
        assert lag <= 1.0, f"{clip}: smoothed landmarks lag {lag:.2f} frames"
