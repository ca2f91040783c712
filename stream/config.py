"""Dataclasses for a run, validated once when built, with one-line errors the CLI can print."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from engines.backends.base import Precision
from engines.errors import UserError
from stream.faces.detect import DETECTOR_NAMES, DetectorName
from stream.media.sink import EncoderSettings
from stream.modelpack import DEFAULT_PACK
from stream.types import RESIDUAL_COLOURS, ResidualColour

PRECISIONS: tuple[str, ...] = get_args(Precision)

EditSpec = tuple[str, float]           # (edit name, strength)
FacesMode = Literal["all", "largest"]
FACES_MODES: tuple[str, ...] = get_args(FacesMode)
ModelPath = Literal["auto", "student", "gan"]
MODEL_PATHS: tuple[str, ...] = get_args(ModelPath)
# The model's own smoothing, what live use can have: causal One Euro per face track (edits/smoothing.py)
Smoothing = Literal["causal", "off"]
SMOOTHINGS: tuple[str, ...] = get_args(Smoothing)
# A file job may also look ahead: a centred Gaussian over each track's codes (stream/lookahead.py)
FileSmoothing = Literal["centred", "causal", "off"]
FILE_SMOOTHINGS: tuple[str, ...] = get_args(FileSmoothing)
# sigma 3 frames: on the shared clips it left 43% of the code jitter with no lag, as much as the best causal
# setting removes at 2 frames of lag (Edits section of bench/RESULTS.md); it looks ceil(3 sigma) frames ahead
DEFAULT_SMOOTHING_SIGMA = 3.0

# ReStyle steps per face live (serve, camera) unless --restyle-iterations says: one step needs no generator
# pass (the average image is computed once); each further step adds an encoder and a generator pass
# (bench/RESULTS.md, ReStyle). Files default to the checkpoint's own n_iters_per_batch (upstream: 5).
LIVE_RESTYLE_ITERATIONS = 1

_EDIT = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*=\s*([-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)\s*$")


def parse_edit(text: str) -> EditSpec:
    """'smile=1.5' -> ('smile', 1.5); UserError for anything else."""
    match = _EDIT.match(text)
    if match is None:
        raise UserError(f"--edit {text!r}: expected NAME=STRENGTH, e.g. --edit smile=1.0")
    return match.group(1), float(match.group(2))


@dataclass(frozen=True)
class ModelConfig:
    """Which networks edit the faces.

    path "student": the pack's students (or `student`, one safetensors for the single edit);
    "gan": encoder + generator (the pack's unless `encoder` / `generator` name files) with `directions`
    (directions files of the project, or published .pt / .npy ones; the pack's when empty);
    "auto": the student path when students cover every requested edit, else the generator path.
    residual: GAN crops go back as crop + G(w') - G(w) (True) or as G(w') alone (False).
    smoothing: the GAN model's causal code filter (a file job replaces it by FileJobConfig.smoothing).
    student_edit: the edit a loose `student` file performs.
    precision: engine precision (None: the backend's default); "int8" runs the Q/DQ graphs `calibrate`
    wrote to `calibrated`. crop_size: side of the aligned crop (None: the pack's, or your generator's
    resolution). residual_colour: "rgb" / "luma" (None: the pack's setting for its generator, else rgb).
    gate: weaken edits on faces the generator draws poorly (stream/session.py).
    motion: move the face's own pixels with the motion the generator draws and add only what that motion
    does not explain (stream/motion.py); False adds G(w') - G(w) in place.
    tuned_generator: a copy of the generator (pack's or `generator`) tuned to one video by stream/tuning.py;
    the generator path renders with it in place of the original, everything else unchanged.
    """

    pack: Path = DEFAULT_PACK
    path: ModelPath = "auto"
    generator: Path | None = None
    encoder: Path | None = None
    student: Path | None = None
    directions: tuple[Path, ...] = ()
    backend: str = "auto"
    residual: bool = True
    smoothing: Smoothing = "causal"
    student_edit: str | None = None
    precision: Precision | None = None
    calibrated: Path = Path("out/calibrated")
    crop_size: int | None = None
    residual_colour: ResidualColour | None = None
    gate: bool = True
    motion: bool = True
    tuned_generator: Path | None = None
    restyle_iterations: int | None = None

    def __post_init__(self) -> None:
        if self.restyle_iterations is not None and not 1 <= self.restyle_iterations <= 20:
            raise UserError(f"--restyle-iterations {self.restyle_iterations}: choose 1 to 20 steps")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.crop_size is not None and not 64 <= self.crop_size <= 1024:
            raise UserError(f"--crop-size {self.crop_size}: choose 64 to 1024 pixels")
        if self.residual_colour is not None and self.residual_colour not in RESIDUAL_COLOURS:
            raise UserError(f"unknown residual colour {self.residual_colour!r}; choose one of "
                            f"{', '.join(RESIDUAL_COLOURS)}")
        if self.path not in MODEL_PATHS:
            raise UserError(f"unknown model path {self.path!r}; choose one of {', '.join(MODEL_PATHS)}")
        if self.smoothing not in SMOOTHINGS:
            raise UserError(f"unknown smoothing {self.smoothing!r}; choose one of {', '.join(SMOOTHINGS)}")
        if self.student is not None and (self.generator is not None or self.encoder is not None):
            raise UserError("give either --student or --generator/--encoder, not both")
        if self.tuned_generator is not None and (self.student is not None or self.path == "student"):
            raise UserError("a tuned generator is for the generator path; the student path has none "
                            "(use --model gan, or `enrol` for a personal student)")
        for name in ("generator", "encoder", "student", "tuned_generator"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise UserError(f"--{name} {value}: file not found")
        for value in self.directions:
            if not Path(value).is_file():
                raise UserError(f"--directions {value}: file not found")


@dataclass(frozen=True)
class FaceConfig:
    """Face finding: detector backend, how often it runs (landmarks are tracked in between), which faces.

    detect_every 10, the tracker's own default: every frame in between is checked by a local HOG search
    and a lost face is detected again on that frame, so a longer interval only delays finding a face that
    newly enters (0.4 s at 25 fps); on the 2-core machine it made the file job 12-19% faster than 5."""

    detector: DetectorName = "dlib"
    face_models: Path | None = None
    detect_every: int = 10
    faces: FacesMode = "all"

    def __post_init__(self) -> None:
        if self.detector not in DETECTOR_NAMES:
            raise UserError(f"unknown detector {self.detector!r}; choose one of {', '.join(DETECTOR_NAMES)}")
        if self.faces not in FACES_MODES:
            raise UserError(f"unknown --faces {self.faces!r}; choose one of {', '.join(FACES_MODES)}")
        if self.detect_every < 1:
            raise UserError(f"--detect-every {self.detect_every}: must be 1 or more")


@dataclass(frozen=True)
class FileJobConfig:
    """`file IN -o OUT`: everything the job needs, checked before any model loads.

    smoothing: temporal filter of each face's code on the generator path: "centred" (look-ahead Gaussian
    of `smoothing_sigma` frames, no lag), "causal" (the live One Euro filter) or "off". It decides for the
    job; `model.smoothing` is not used.
    """

    input: Path
    output: Path
    edits: tuple[EditSpec, ...] = ()
    model: ModelConfig = field(default_factory=ModelConfig)
    face: FaceConfig = field(default_factory=FaceConfig)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    side_by_side: bool = False
    overwrite: bool = False
    smoothing: FileSmoothing = "centred"
    smoothing_sigma: float = DEFAULT_SMOOTHING_SIGMA

    def __post_init__(self) -> None:
        if self.smoothing not in FILE_SMOOTHINGS:
            raise UserError(f"unknown smoothing {self.smoothing!r}; choose one of "
                            f"{', '.join(FILE_SMOOTHINGS)}")
        if not 0 < self.smoothing_sigma <= 30:
            raise UserError(f"--smoothing-sigma {self.smoothing_sigma}: choose more than 0 and at most "
                            "30 frames")
        if Path(self.input).resolve() == Path(self.output).resolve():
            raise UserError(f"{self.output}: the output would overwrite the input; choose another -o")
        names = [name for name, _ in self.edits]
        if len(set(names)) != len(names):
            raise UserError(f"--edit names {names}: each edit may be given once")


@dataclass(frozen=True)
class PerceptualFiles:
    """LPIPS-VGG for tuning (engines/nets/lpips.py): LPIPS' linear heads (vgg.pth) and torchvision's VGG16
    state dict, files the user has; nothing is downloaded."""

    linear: Path
    backbone: Path

    def __post_init__(self) -> None:
        for option, value in (("--lpips", self.linear), ("--lpips-backbone", self.backbone)):
            if not Path(value).is_file():
                raise UserError(f"{option} {value}: file not found")


@dataclass(frozen=True)
class InversionSettings:
    """Code refinement: Adam on the change of the codes, `batch` frames per step.
    layer_weight / track_weight: pull of each layer's change towards the mean over the layers, and of
    each frame's change towards the track's mean change (squared W units, beside a loss of about 0.2)."""

    steps: int = 60
    batch: int = 4
    lr: float = 0.01
    layer_weight: float = 0.1
    track_weight: float = 0.1


@dataclass(frozen=True)
class TuningSettings:
    """Pivotal tuning of one clip: frames sampled every `every` frames (at most `max_frames`, spread over
    the clip), `steps` Adam steps of `batch` frames, and per step `locality_batch` codes interpolated a
    random fraction in [locality_reach, 1] of the way from a pivot to a random code, whose output must stay
    the original generator's (L1, times `locality_weight`). perceptual: LPIPS files; with them both the
    code refinement and the tuning add `perceptual_weight` x LPIPS to their reconstruction loss (as PTI)."""

    every: int = 2
    max_frames: int = 48
    steps: int = 200
    batch: int = 4
    lr: float = 3e-4
    locality_weight: float = 1.0
    locality_batch: int = 2
    locality_reach: float = 0.3
    seed: int = 0
    invert: InversionSettings = field(default_factory=InversionSettings)
    perceptual: PerceptualFiles | None = None
    perceptual_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.max_frames < 1:
            raise UserError(f"--tune-frames {self.max_frames}: give 1 or more")
        if self.steps < 0 or self.invert.steps < 0:
            raise UserError(f"--tune-steps {self.steps} / --invert-steps {self.invert.steps}: give 0 or more")
        if self.every < 1 or self.batch < 1 or self.invert.batch < 1 or not 0.0 <= self.locality_reach <= 1.0:
            raise UserError(f"tuning settings: every ({self.every}) and batches ({self.batch}, {self.invert.batch}) "
                            f"must be at least 1 and locality_reach ({self.locality_reach}) a fraction in 0..1")
