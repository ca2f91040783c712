"""The model of a live server or camera: networks built once, a cheap processor per stream around them.

Building the engines and loading dlib's models take seconds (dlib's HOG detector alone 0.5 s to many
seconds on a busy machine) and hundreds of MB; they are done once here and shared by every stream. What
a stream owns is its state: face tracks and their landmark filters (a FaceTracker), the code smoothers
of its tracks, its edits. So a new peer is answered in milliseconds, and a closed one leaves nothing
that holds a network.

Which networks: the file job's rule (stream/filejob.py build_edit_model) decides, on the requested edits
(the --edit flags, else the pack's default): the students when they cover every one of them, otherwise
the generator, with one line saying so. Live offers every edit of the chosen model, so on the student
path the pack's other students load too (at strength 0), for the page's edit menu.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stream.config import EditSpec, FaceConfig, ModelConfig
from stream.realtime import FrameProcessor

log = logging.getLogger(__name__)

# onnxruntime documents InferenceSession.run as safe to call from several threads at once; TensorRT and
# torch's CUDA graphs run on buffers bound to the engine, so their runs must not overlap.
_CONCURRENT_BACKENDS = ("onnxruntime",)


class SerialEngine:
    """An engine shared by streams whose backend cannot run two calls at once: one call at a time."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self.name, self.precision, self.device = engine.name, engine.precision, engine.device
        self.input_specs, self.output_names = engine.input_specs, engine.output_names

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            return self._engine.run(inputs)


def shareable(engine):
    return engine if engine.name in _CONCURRENT_BACKENDS else SerialEngine(engine)


def shared_dlib_detector(landmarker):
    """dlib's HOG detector for every stream. It releases the GIL while it scans, and its scanner keeps
    the image being scanned, so two streams' scans must not overlap: one at a time. (The 68-point
    predictor is const in dlib and safe to share as it is.)"""
    from stream.faces.detect import DlibDetector

    class SharedDlibDetector(DlibDetector):
        def __init__(self) -> None:
            super().__init__(landmarker=landmarker)
            self._scan_lock = threading.Lock()

        def _hog_boxes(self, *args, **kwargs):
            with self._scan_lock:
                return super()._hog_boxes(*args, **kwargs)

    return SharedDlibDetector()


@dataclass(frozen=True)
class LiveModel:
    """`new_processor()` makes one stream's processor (its own tracks, smoothing and edits, the shared
    networks); `default_edits` are set on each new stream; `edit_names` are the edits a stream may ask for."""

    new_processor: Callable[[], FrameProcessor]
    edit_names: tuple[str, ...]
    default_edits: tuple[EditSpec, ...] = ()


def _requested_and_offered(model: ModelConfig, edits: Sequence[EditSpec]) -> tuple[list[EditSpec], list[EditSpec]]:
    """The edits a stream starts with, and the list the model is built for (the file job's rule picks the
    student path exactly when the pack's students cover every requested edit)."""
    from stream.modelpack import load_pack

    if model.student or (model.generator and model.encoder and model.directions):
        return list(edits), list(edits)  # no pack: nothing to default to
    pack = load_pack(model.pack)
    requested = list(edits) or ([pack.default_edit] if pack.default_edit else [])
    names = {name for name, _ in requested}
    if model.path == "gan" or model.generator or model.encoder or not pack.students:
        return requested, requested
    if not names <= set(pack.students):
        if model.path == "student":
            return requested, requested  # build_edit_model names the missing student
        log.warning("no student in %s for %s: using the generator (encoder + generator) for every edit",
                    pack.root, ", ".join(sorted(names - set(pack.students))))
        return requested, requested
    return requested, requested + [(name, 0.0) for name in sorted(pack.students) if name not in names]


def live_model(model: ModelConfig, face: FaceConfig, edits: Sequence[EditSpec], fps: float = 30.0) -> LiveModel:
    """Build the networks and the face models once (errors surface here, before anything starts)."""
    from stream.edits.smoothing import make_code_smoother
    from stream.faces.detect import DlibLandmarker, make_detector
    from stream.faces.track import FaceTracker
    from stream.filejob import ENGINE_THREADS, build_edit_model
    from stream.pipeline import FaceEditPipeline, GanEditModel, StudentEditModel

    requested, offered = _requested_and_offered(model, edits)
    built = build_edit_model(model, offered, ENGINE_THREADS)
    landmarker = DlibLandmarker()
    # insightface's detector is onnxruntime sessions, safe to share as they are
    detector = shared_dlib_detector(landmarker) if face.detector == "dlib" else \
        make_detector(face.detector, face.face_models)
    smoother = make_code_smoother if model.smoothing != "off" else None

    if isinstance(built, StudentEditModel):
        students = {name: (shareable(engine), strength) for name, (engine, strength) in built.students.items()}

        def stream_model() -> StudentEditModel:
            return StudentEditModel(students, crop_size=built.crop_size)
    else:
        assert isinstance(built, GanEditModel)
        encoder, generator = shareable(built.encoder), shareable(built.generator)

        def stream_model() -> GanEditModel:
            return GanEditModel(encoder, generator, built.directions, crop_size=built.crop_size,
                                latent_avg=built.latent_avg, residual=built.residual,
                                residual_colour=built.residual_colour, smoother=smoother)

    def new_processor() -> FrameProcessor:
        tracker = FaceTracker(detector, landmarker=landmarker, detect_every=face.detect_every, fps=fps)
        return FaceEditPipeline(tracker, stream_model(), faces=face.faces)

    return LiveModel(new_processor, tuple(built.names), tuple(requested))
