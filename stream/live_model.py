"""The model of a live server or camera: networks built once, a cheap session per stream around them.

Building the engines and loading dlib's models take seconds (dlib's HOG detector alone 0.5 s to many
seconds on a busy machine) and hundreds of MB; they are done once here and shared by every stream. What
a stream owns is its edit session (stream/session.py): face tracks and their landmark filters, the code
smoothers of its tracks, its edits. So a new peer is answered in milliseconds, and a closed one leaves
nothing that holds a network.

Which networks: the session's one rule, the same as the file job's, per edit state: the students when
they cover every edit with a strength, else the generator, with one line saying so. Live offers every
edit either path can make; both are built here, before the first stream.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stream.config import EditSpec, FaceConfig, ModelConfig
from stream.realtime import FrameProcessor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveModel:
    """`new_processor()` makes one stream's processor (its own tracks, smoothing and edits, the shared
    networks); `default_edits` are set on each new stream; `edit_names` are the edits a stream may ask for."""

    new_processor: Callable[[], FrameProcessor]
    edit_names: tuple[str, ...]
    default_edits: tuple[EditSpec, ...] = ()


def live_model(model: ModelConfig, face: FaceConfig, edits: Sequence[EditSpec], fps: float = 30.0) -> LiveModel:
    """Build the networks and the face models once (errors surface here, before anything starts)."""
    from stream.edits.smoothing import make_code_smoother
    from stream.faces.detect import DlibDetector, DlibLandmarker, make_detector
    from stream.filejob import ENGINE_THREADS
    from stream.session import EditNetworks

    networks = EditNetworks(model, ENGINE_THREADS)
    networks.warm()
    requested = networks.check_edits(list(edits) or ([networks.default_edit] if networks.default_edit else []))
    networks.path_for(requested)  # says now, once, when a requested edit has no student
    smoother = make_code_smoother if model.smoothing != "off" else None
    if face.detector == "dlib":
        from stream.faces.track import FaceTracker

        landmarker = DlibLandmarker()
        detector = DlibDetector(landmarker=landmarker)  # one for every stream: its scans take turns

        def tracker() -> FaceTracker:
            return FaceTracker(detector, landmarker=landmarker, detect_every=face.detect_every, fps=fps)
    else:
        from stream.faces.detection_tracker import DetectionTracker

        own = make_detector(face.detector, face.face_models)  # onnxruntime sessions: safe to share

        def tracker() -> DetectionTracker:
            return DetectionTracker(own, fps=fps)

    def new_processor() -> FrameProcessor:
        return networks.session(tracker(), faces=face.faces, smoother=smoother)

    return LiveModel(new_processor, networks.names, requested)
