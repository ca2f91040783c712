"""Face detection: dlib model files, the group photo, real clips, insightface pack errors, the registry."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.errors import UserError
from stream.faces.detect import (
    DETECTOR_NAMES,
    DlibDetector,
    InsightFaceDetector,
    dlib_model_path,
    make_detector,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FACES = SHARED / "data" / "faces"
CLIPS = ["d0", "d11", "d12", "d13", "d18", "d19", "d20", "d3", "s18"]
GROUP_PHOTO = "t1.jpg"


def clip_frames(name: str, every: int = 1, limit: int | None = None) -> list[np.ndarray]:
    """RGB frames of a shared clip (every `every`-th, at most `limit`), decoded with PyAV; skips if absent."""
    from stream.media.source import read_frames

    path = FACES / f"{name}.mp4"
    if not path.is_file():
        pytest.skip(f"{path} not found: shared data sits beside the checkout (../shared)")
    return read_frames(path, every, limit)


def group_photo() -> np.ndarray:
    import cv2
    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / GROUP_PHOTO
    return np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])


@pytest.fixture(scope="module")
def detector() -> DlibDetector:
    return DlibDetector()


def test_dlib_model_files_are_found():
    assert dlib_model_path("shape_predictor_68_face_landmarks.dat").stat().st_size > 1_000_000


@pytest.mark.slow
def test_every_face_of_the_group_photo_is_found():
    # six people; dlib needs one pyramid up-step for the smallest of them
    faces = DlibDetector(upsample=1, max_side=None).detect(group_photo())
    assert len(faces) == 6
    for face in faces:
        assert face.landmarks.shape == (68, 2)
        x0, _, x1, _ = face.box
        inside = (face.landmarks[:, 0] > x0 - 20) & (face.landmarks[:, 0] < x1 + 20)
        assert inside.all()
    centres = np.array([[(f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2] for f in faces])
    assert np.min(np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(6) * 1e9) > 50


def test_no_face_in_a_blank_frame(detector):
    assert detector.detect(np.full((240, 320, 3), 128, np.uint8)) == []


@pytest.mark.slow
@pytest.mark.parametrize("clip", CLIPS)
def test_detection_rate_on_real_clips(detector, clip):
    frames = clip_frames(clip, every=5)
    found = sum(1 for frame in frames if detector.detect(frame))
    assert found >= 0.95 * len(frames), f"{clip}: face in {found}/{len(frames)} sampled frames"


def test_missing_insightface_pack_names_folder_and_files(tmp_path):
    missing = tmp_path / "buffalo_l"
    with pytest.raises(UserError, match=r"buffalo_l.*det_\*\.onnx"):
        InsightFaceDetector(missing)
    missing.mkdir()
    (missing / "w600k_r50.onnx").write_bytes(b"")
    with pytest.raises(UserError, match=r"incomplete.*det_\*\.onnx"):
        InsightFaceDetector(missing)
    (missing / "det_10g.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match=r"det_10g\.onnx: not a loadable"):
        InsightFaceDetector(missing)


def test_registry():
    assert DETECTOR_NAMES == ("dlib", "insightface")
    assert isinstance(make_detector("dlib"), DlibDetector)
    with pytest.raises(UserError, match="--face-models"):
        make_detector("insightface")
    with pytest.raises(UserError, match="unknown face detector"):
        make_detector("mtcnn")  # type: ignore[arg-type]


def test_a_small_face_in_a_large_frame_is_found(detector):
    """A ~110 px face in a 1920x1080 frame is ~37 px in the 640 px copy HOG first searches (below its 80 px
    minimum): the full-size pass finds it, at the right place."""
    import cv2

    face = clip_frames("d3", limit=1)[0]
    small = cv2.resize(face, (200, 200), interpolation=cv2.INTER_AREA)
    frame = np.full((1080, 1920, 3), 90, np.uint8)
    frame[700:900, 1500:1700] = small
    found = detector.detect(frame)
    assert len(found) == 1
    x0, y0, x1, y1 = found[0].box
    assert 1500 <= (x0 + x1) / 2 <= 1700 and 700 <= (y0 + y1) / 2 <= 900
