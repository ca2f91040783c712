"""Face detectors: dlib HOG + 68-point landmarks (embedded default) and insightface SCRFD (user's model pack).

Every detector returns `Face`s in frame pixels. dlib's model files ship with the pip package
face-recognition-models; we locate them with `importlib.util.find_spec` rather than importing that
package, because its `__init__` needs pkg_resources, which a fresh venv may lack. insightface model
packs are never downloaded: the user names the folder, and a missing file is a UserError.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import threading
from pathlib import Path
from typing import Literal, Protocol, get_args

import numpy as np

from engines.errors import MissingDependency, UserError
from stream.types import Box, Face, Frame, Landmarks68

log = logging.getLogger(__name__)

DetectorName = Literal["dlib", "insightface"]
DETECTOR_NAMES: tuple[str, ...] = get_args(DetectorName)


class FaceDetector(Protocol):
    """Finds the faces in one frame."""

    def detect(self, frame: Frame) -> list[Face]: ...


def dlib_models_dir() -> Path:
    """The `models` folder of the installed face-recognition-models package (found, never imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(
            "face-recognition-models is not installed: it ships dlib's landmark model; "
            "run `pip install face-recognition-models`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@functools.cache
def dlib_model_path(name: str) -> Path:
    """Path of a model file shipped by face-recognition-models (e.g. shape_predictor_68_face_landmarks.dat)."""
    path = dlib_models_dir() / name
    if not path.is_file():
        raise MissingDependency(f"{path}: model file missing; reinstall with `pip install --force-reinstall "
                                "face-recognition-models`")
    return path


def _import_dlib():
    try:
        import dlib
    except ImportError as exc:
        raise MissingDependency("dlib is not installed: run `pip install dlib-bin`") from exc
    return dlib


class DlibLandmarker:
    """dlib's 68-point shape predictor (iBUG 300-W layout) run inside a face box."""

    def __init__(self) -> None:
        dlib = _import_dlib()
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))

    def refine(self, frame: Frame, box: Box) -> Landmarks68:
        """68 landmarks [68, 2] float32 in frame pixels for the face in `box` (a dlib-HOG-like box)."""
        x0, y0, x1, y1 = (round(v) for v in box)
        shape = self._predictor(np.ascontiguousarray(frame), self._dlib.rectangle(x0, y0, x1, y1))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


class DlibDetector:
    """dlib's HOG frontal face detector, then the 68-point predictor on each box.

    `max_side`: frames whose longer side exceeds it are shrunk for the HOG pass only (its cost grows with
    pixel count, and faces in video are large); landmarks always run at full resolution. When the shrunk
    pass finds no face, a second pass runs at full resolution, so a face of HOG's 80 px minimum in a large
    frame (a full-body shot) is still found; it costs more only on frames where no face was found.
    `upsample`: HOG pyramid up-steps, for faces smaller than its 80 px minimum (group photos).
    """

    def __init__(self, upsample: int = 0, max_side: int | None = 640, threshold: float = 0.0,
                 landmarker: DlibLandmarker | None = None) -> None:
        dlib = _import_dlib()
        self._hog = dlib.get_frontal_face_detector()
        self.upsample = upsample
        self.max_side = max_side
        self.threshold = threshold
        self.landmarker = landmarker or DlibLandmarker()
        # dlib releases the GIL while it scans and its scanner keeps the image being scanned, so streams
        # sharing one detector (a live server) must not scan at once; uncontended, the lock costs nothing
        self._scan_lock = threading.Lock()

    def detect_boxes(self, frame: Frame) -> list[tuple[Box, float]]:
        """HOG boxes and scores in frame pixels, best first, without landmarks."""
        import cv2

        scale = 1.0
        image = frame
        if self.max_side is not None and max(frame.shape[:2]) > self.max_side:
            scale = self.max_side / max(frame.shape[:2])
            image = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        found = self._hog_boxes(image, self.upsample, self.threshold, scale, (0, 0))
        if not found and scale < 1.0:
            found = self._hog_boxes(frame, self.upsample, self.threshold, 1.0, (0, 0))
        return found

    def detect(self, frame: Frame) -> list[Face]:
        return [Face(box=box, score=score, landmarks=self.landmarker.refine(frame, box))
                for box, score in self.detect_boxes(frame)]

    def detect_near(self, frame: Frame, box: Box, margin: float = 0.4, face_px: int = 100,
                    threshold: float = -0.5) -> list[tuple[Box, float]]:
        """HOG boxes (frame pixels, best first) in the region around `box`, searched with the face shrunk
        to about `face_px` pixels: a few ms, so a tracker can check every frame that its face is still there."""
        import cv2

        h, w = frame.shape[:2]
        x0, y0, x1, y1 = box
        side = max(x1 - x0, y1 - y0, 1.0)
        rx0, ry0 = max(int(x0 - margin * side), 0), max(int(y0 - margin * side), 0)
        rx1, ry1 = min(int(x1 + margin * side) + 1, w), min(int(y1 + margin * side) + 1, h)
        if rx1 - rx0 < 8 or ry1 - ry0 < 8:
            return []
        scale = min(face_px / side, 1.0)
        region = cv2.resize(frame[ry0:ry1, rx0:rx1], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        return self._hog_boxes(region, 0, threshold, scale, (rx0, ry0))

    def _hog_boxes(self, image: np.ndarray, upsample: int, threshold: float, scale: float,
                   origin: tuple[int, int]) -> list[tuple[Box, float]]:
        """HOG boxes found in `image`, a copy of the frame region at `origin` scaled by `scale`, mapped back
        to frame pixels (dlib's right/bottom are inclusive), best first."""
        with self._scan_lock:
            rects, scores, _ = self._hog.run(np.ascontiguousarray(image), upsample, threshold)
        x, y = origin
        found = [((x + r.left() / scale, y + r.top() / scale, x + (r.right() + 1) / scale,
                   y + (r.bottom() + 1) / scale), float(score)) for r, score in zip(rects, scores)]
        return sorted(found, key=lambda item: -item[1])


def _best_onnx_providers() -> list[str]:
    """CUDA when this onnxruntime build has it, else CPU (TensorRT EP is left to engines/backends)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return chosen or list(available[:1])


class InsightFaceDetector:
    """SCRFD from an insightface model pack folder (e.g. buffalo_l), run by onnxruntime.

    Needs `det_*.onnx` in `model_dir`; when the pack also has the 68-point model (`1k3d68.onnx`) its
    landmarks are returned, otherwise SCRFD's 5 points (left eye, right eye, nose, mouth corners).
    Only insightface's model classes are used, never its FaceAnalysis/model_zoo routers, which may
    download files.
    """

    def __init__(self, model_dir: str | Path, det_size: int = 640, det_thresh: float = 0.5) -> None:
        folder = Path(model_dir).expanduser()
        expected = "det_*.onnx (SCRFD detector, e.g. det_10g.onnx) and optionally 1k3d68.onnx (68 landmarks)"
        if not folder.is_dir():
            raise UserError(f"{folder}: insightface model folder not found; expected a folder holding "
                            f"{expected}, e.g. an unpacked buffalo_l pack (never downloaded automatically)")
        detectors = sorted(folder.glob("det_*.onnx"))
        if not detectors:
            raise UserError(f"{folder}: incomplete insightface model pack, no det_*.onnx; expected "
                            f"{expected}")
        try:
            import onnxruntime
            from insightface.model_zoo.landmark import Landmark
            from insightface.model_zoo.scrfd import SCRFD
        except ImportError as exc:
            raise MissingDependency(f"insightface backend needs insightface and onnxruntime: {exc}; "
                                    "run `pip install insightface onnxruntime`") from exc
        providers = _best_onnx_providers()
        log.info("insightface: %s on %s", detectors[-1].name, providers[0])
        self._landmark68 = None
        lmk_path = folder / "1k3d68.onnx"
        current = detectors[-1]
        try:
            session = onnxruntime.InferenceSession(str(current), providers=providers)
            self._scrfd = SCRFD(model_file=str(current), session=session)
            self._scrfd.prepare(0, input_size=(det_size, det_size), det_thresh=det_thresh)
            if lmk_path.is_file():
                current = lmk_path
                self._landmark68 = Landmark(model_file=str(lmk_path),
                                            session=onnxruntime.InferenceSession(str(lmk_path), providers=providers))
        except Exception as exc:  # onnxruntime and onnx raise several unrelated types for a bad file
            raise UserError(f"{current}: not a loadable insightface ONNX model ({type(exc).__name__}); "
                            "re-copy the model pack folder") from exc

    def detect(self, frame: Frame) -> list[Face]:
        # SCRFD's preprocessing expects BGR (it swaps to RGB itself)
        bgr = np.ascontiguousarray(frame[:, :, ::-1])
        dets, kpss = self._scrfd.detect(bgr)
        faces = []
        for i, det in enumerate(dets):
            box: Box = tuple(float(v) for v in det[:4])  # type: ignore[assignment]
            landmarks = kpss[i].astype(np.float32)
            if self._landmark68 is not None:
                # insightface's Landmark.get reads `.bbox` and stores its result by key on the face object
                holder = _LandmarkInput(np.asarray(det[:4]))
                landmarks = self._landmark68.get(bgr, holder)[:, :2].astype(np.float32)
            faces.append(Face(box=box, score=float(det[4]), landmarks=landmarks))
        return faces


class _LandmarkInput(dict):
    """The minimal face record insightface's Landmark.get reads (`bbox`) and writes (item keys)."""

    def __init__(self, bbox: np.ndarray) -> None:
        super().__init__()
        self.bbox = bbox


def make_detector(name: DetectorName, model_dir: str | Path | None = None) -> FaceDetector:
    """The detector registered under `name`; insightface needs `model_dir` (its model pack folder)."""
    if name == "dlib":
        return DlibDetector()
    if name == "insightface":
        if model_dir is None:
            raise UserError("insightface detector needs a model folder: pass --face-models DIR "
                            "(a folder with det_*.onnx, e.g. an unpacked buffalo_l pack)")
        return InsightFaceDetector(model_dir)
    raise UserError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTOR_NAMES)}")
