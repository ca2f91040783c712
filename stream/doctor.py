"""What is installed and usable on this machine, and why something is not."""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from engines.errors import MissingDependency
from stream.faces.detect import dlib_models_dir
from stream.modelpack import MANIFEST

DLIB_MODEL_FILES = (
    "shape_predictor_68_face_landmarks.dat",
    "shape_predictor_5_face_landmarks.dat",
    "dlib_face_recognition_resnet_model_v1.dat",
)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_torch() -> list[Check]:
    try:
        import torch
    except ImportError as err:
        return [Check("torch", False, f"not importable ({err}); run: pip install torch==2.13.0")]
    checks = [Check("torch", True, f"{torch.__version__}, {torch.get_num_threads()} CPU threads")]
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        checks.append(Check("CUDA", True, f"{name} (compute {major}.{minor}), torch CUDA {torch.version.cuda}"))
    elif torch.version.cuda is None:
        checks.append(Check("CUDA", False, "this torch is a CPU build; install a CUDA build for GPU use"))
    else:
        checks.append(Check("CUDA", False, f"torch built for CUDA {torch.version.cuda} but no NVIDIA driver/GPU"))
    return checks


def check_tensorrt() -> Check:
    if importlib.util.find_spec("tensorrt") is None:
        return Check("TensorRT", False, "not installed; on an NVIDIA machine: pip install '.[gpu]'")
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as err:  # noqa: BLE001 - a broken install raises anything from OSError to RuntimeError
        return Check("TensorRT", False, f"installed but does not import: {err}")
    return Check("TensorRT", True, trt.__version__)


def check_cupy() -> Check:
    if importlib.util.find_spec("cupy") is None:
        return Check("cupy", False, "not installed; on an NVIDIA machine: pip install '.[gpu]'")
    try:
        cupy = importlib.import_module("cupy")
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # noqa: BLE001 - no driver surfaces as a CUDARuntimeError at first use
        return Check("cupy", False, f"installed but no usable GPU: {str(err).splitlines()[0]}")
    return Check("cupy", True, f"{cupy.__version__}, {count} GPU(s)")


def check_onnxruntime() -> Check:
    try:
        import onnxruntime
    except ImportError as err:
        return Check("onnxruntime", False, f"not importable ({err})")
    providers = ", ".join(onnxruntime.get_available_providers())
    return Check("onnxruntime", True, f"{onnxruntime.__version__}; providers: {providers}")


def check_media() -> list[Check]:
    checks = []
    for module, package in (("av", "av"), ("cv2", "opencv-python"), ("aiortc", "aiortc")):
        try:
            importlib.import_module(module)
            checks.append(Check(package, True, _version(package) or "installed"))
        except ImportError as err:
            checks.append(Check(package, False, f"not importable ({err})"))
    if importlib.util.find_spec("pyvirtualcam") is None:
        checks.append(Check("pyvirtualcam", False, "not installed (virtual camera): pip install '.[camera]'"))
    else:
        checks.append(Check("pyvirtualcam", True, _version("pyvirtualcam") or "installed"))
    return checks


def check_dlib() -> list[Check]:
    try:
        import dlib
    except ImportError as err:
        return [Check("dlib", False, f"not importable ({err}); pip install dlib-bin")]
    checks = [Check("dlib", True, dlib.__version__)]
    try:
        models = dlib_models_dir()
    except MissingDependency as err:
        checks.append(Check("dlib models", False, str(err)))
        return checks
    missing = [name for name in DLIB_MODEL_FILES if not (models / name).is_file()]
    if missing:
        checks.append(Check("dlib models", False, f"missing in {models}: {', '.join(missing)}"))
    else:
        checks.append(Check("dlib models", True, f"detector, 5/68-point landmarks, face descriptor in {models}"))
    return checks


def check_insightface(pack_dir: Path | None) -> Check:
    if importlib.util.find_spec("insightface") is None:
        return Check("insightface", False, "not installed")
    version = _version("insightface") or "installed"
    if pack_dir is None:
        return Check("insightface", True, f"{version}; no model pack named (use --face-models DIR, e.g. buffalo_l)")
    detectors = sorted(pack_dir.glob("det_*.onnx")) if pack_dir.is_dir() else []
    if not detectors:
        return Check("insightface pack", False, f"{pack_dir}: no det_*.onnx detector found (unzip buffalo_l there)")
    return Check("insightface pack", True, f"{pack_dir}: {', '.join(p.name for p in detectors)}")


def check_demo_pack(pack_dir: Path) -> Check:
    manifest = pack_dir / MANIFEST
    if not manifest.is_file():
        return Check("demo pack", False, f"{manifest} not found: the repository's assets/ are incomplete")
    size_mb = sum(p.stat().st_size for p in pack_dir.iterdir() if p.is_file()) / 1e6
    return Check("demo pack", True, f"{pack_dir} ({size_mb:.1f} MB)")


def run_checks(face_models: Path | None, pack_dir: Path) -> list[Check]:
    return [
        *check_torch(),
        check_tensorrt(),
        check_cupy(),
        check_onnxruntime(),
        *check_media(),
        *check_dlib(),
        check_insightface(face_models),
        check_demo_pack(pack_dir),
    ]
