"""The edit session: built once from a run's spec, the only holder of edit state; runners only schedule it.

    networks = EditNetworks(config)           # engines built once (a live server: once for all its peers)
    session = networks.session(tracker)       # per stream: face tracks, smoothing, the edits
    session.set_edits([("smile", 1.0)])       # validated here, once; a new versioned EditState
    frame = session.process(frame, t)         # = composite(frame, located, render(located))

Stages of one frame: `locate` (track, align; the frame keeps the EditState snapshot it was located with),
`encode` (generator path: crops -> W+), `render` (the change per face in crop space, float32, confined to
the edits' face regions and weighed by the confidence gate), `composite` (warp back and add, the one place
a change is rounded). The file job runs `locate` in a thread of its own, the look-ahead (stream/lookahead.py)
calls `encode` and `render` apart to smooth codes over future frames; live calls `process`.

One rule picks the renderer, in every command: the student path when students cover every edit with a
non-zero strength (and the user did not ask for --model gan), else the generator path, with one line
that says so when a student was asked for or is available but cannot make an edit.

Confidence gate: the generator path renders G(w) for every face anyway; its PSNR against the crop inside
the face mask (`fidelity`) says how well the model draws this person. An edit is weighed by
clip((fidelity - GATE_LOW_DB) / (GATE_HIGH_DB - GATE_LOW_DB), 0, 1): full strength on a face drawn at
GATE_HIGH_DB or better, none below GATE_LOW_DB, linear in between, so a model that cannot draw a face
weakens its edit instead of pasting damage. The gate weighs what the generator paints; the motion it
draws (stream/motion.py) moves only the person's own pixels inside the edit's region and is applied in
full, so a face the model draws poorly still gets the edit's shape without another face's colours.
The student path has no reconstruction to measure and is not gated.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from engines.errors import UserError
from stream.composite import face_mask, paste_change
from stream.config import EditSpec, FacesMode, ModelConfig
from stream.faces.align import FFHQ_TEMPLATE_5, ffhq_affine, transform_points, warp_to_crop
from stream.modelpack import ModelPack, load_pack
from stream.motion import confined_change
from stream.pipeline import (
    ENCODER_IO,
    GENERATOR_IO,
    STUDENT_IO,
    GanRenderer,
    Rendered,
    StudentRenderer,
    timed,
)
from stream.regions import REGIONS, infer_region, union_mask
from stream.types import Affine2x3, Crop, Face, Frame, StageTimes, WPlus

if TYPE_CHECKING:
    from engines import LoadedGenerator
    from engines.backends import Engine
    from stream.edits.directions import Direction
    from stream.edits.smoothing import CodeSmoother
    from stream.faces.track import FaceTracker

log = logging.getLogger(__name__)

RenderPath = Literal["student", "gan"]
DEFAULT_CROP_SIZE = 256  # FFHQ crop side for a loose --student file (no pack, no generator to say)
# Confidence gate (module docstring). Measured with the shipped demo pack, first 60 frames: people it trained
# on reconstruct at 26-28 dB inside the face (d0, d3), unseen ones at 13.7-23.7 dB (sx01 13.7, lx01 14.0,
# dt01 15.4, sp04 16.4, rr01 18.3, ls01 18.8, d19 23.7); the mouth region alone scores within 3 dB of that.
# Below ~13 dB G(w) is a generic face and an edit drawn on it is someone else's mouth.
GATE_LOW_DB = 13.0
GATE_HIGH_DB = 20.0


def gate_weight(fidelity: float) -> float:
    """How much of an edit a face drawn at `fidelity` dB gets (module docstring)."""
    return float(np.clip((fidelity - GATE_LOW_DB) / (GATE_HIGH_DB - GATE_LOW_DB), 0.0, 1.0))


@dataclass(frozen=True)
class EditState:
    """The edits in force, as one immutable snapshot: a frame is rendered with the state it was located with."""

    version: int
    edits: tuple[EditSpec, ...]
    path: RenderPath

    @property
    def active(self) -> bool:
        return any(strength != 0 for _, strength in self.edits)


@dataclass(frozen=True)
class LocatedFaces:
    """One frame's faces, ready for rendering: time, edit snapshot, tracker faces, frame->crop affines,
    aligned crops and each face's landmarks in crop pixels (empty lists when the frame has no face)."""

    t: float
    state: EditState
    faces: list[Face]
    affines: list[Affine2x3]
    crops: list[Crop]
    landmarks: list[np.ndarray]

    @property
    def track_ids(self) -> list[int]:
        return [face.track_id for face in self.faces]


def _area(face: Face) -> float:
    x0, y0, x1, y1 = face.box
    return (x1 - x0) * (y1 - y0)


class EditNetworks:
    """A run's networks, built once and shared by every session made from it (every live peer).

    config: which networks (pack or files), backend, precision, crop size, residual colour, gate.
    generator: an already loaded generator to use instead of the configured one (e.g. tuned to a video).
    Renderers are built on first use: a file job builds only the path its edits need; `warm()` builds both."""

    def __init__(self, config: ModelConfig, threads: int | None = None,
                 generator: LoadedGenerator | None = None) -> None:
        self.config = config
        self.threads = threads
        own_files = (config.generator is not None or generator is not None) and config.encoder and config.directions
        self.pack: ModelPack | None = None if (config.student or own_files) else load_pack(config.pack)
        self._generator = generator
        self.student_names: tuple[str, ...] = self._student_names()
        self.crop_size = self._crop_size()
        self.default_edit = self.pack.default_edit if self.pack is not None else None
        self._lock = threading.Lock()
        self._gan: GanRenderer | None = None
        self._students: StudentRenderer | None = None
        self._direction_set: dict[str, Direction] | None = None
        self._regions: dict[str, str] = {}
        self._announced: set[str] = set()

    # ------------------------------------------------------------------ what can be edited, and how
    def _student_names(self) -> tuple[str, ...]:
        if self.config.path == "gan" or self._generator is not None or self.config.tuned_generator is not None:
            return ()  # a generator tuned to this video is the point of the run: no student stands in for it
        if self.config.student is not None:
            return (self.config.student_edit,) if self.config.student_edit else ()
        return tuple(sorted(self.pack.students)) if self.pack is not None else ()

    def _crop_size(self) -> int:
        if self.config.crop_size is not None:
            return self.config.crop_size
        if self.pack is not None and self.config.generator is None and self._generator is None:
            return self.pack.crop_size
        if self.config.student is not None:
            return DEFAULT_CROP_SIZE
        return self._loaded_generator().resolution  # your own generator is pasted back at its own size

    @property
    def can_gan(self) -> bool:
        return self.config.student is None

    @property
    def names(self) -> tuple[str, ...]:
        """Every edit some renderer of this run can make."""
        gan = self._directions() if self.can_gan else {}
        return tuple(sorted(set(gan) | set(self.student_names)))

    def path_for(self, edits: Sequence[EditSpec]) -> RenderPath:
        """The one rule (module docstring)."""
        wanted = [name for name, strength in edits if strength != 0]
        if self.config.path == "gan" or not self.student_names:
            return "gan"
        missing = [name for name in wanted if name not in self.student_names]
        if not missing:
            return "student"
        if not self.can_gan:
            raise UserError(f"--student {self.config.student} performs {', '.join(self.student_names)}; "
                            f"it cannot make {missing[0]!r} and there is no generator to fall back to")
        if missing[0] not in self._announced:
            self._announced.add(missing[0])
            log.warning("no student for %s: using the generator path for it", missing[0])
        return "gan"

    def check_edits(self, edits: Sequence[EditSpec]) -> tuple[EditSpec, ...]:
        checked = tuple((str(name), float(strength)) for name, strength in edits)
        names = [name for name, _ in checked]
        if len(set(names)) != len(names):
            raise UserError(f"edits {names}: each edit may be given once")
        known = self.names
        unknown = [name for name in names if name not in known]
        if unknown:
            raise UserError(f"unknown edit {unknown[0]!r}; this model has: {', '.join(known) or 'none'}")
        return checked

    # ------------------------------------------------------------------ building
    def warm(self) -> None:
        """Build every renderer this run can use now (a server: before its first peer)."""
        if self.student_names:
            self.students()
        if self.can_gan:
            self.gan()

    def renderer(self, path: RenderPath) -> GanRenderer | StudentRenderer:
        return self.students() if path == "student" else self.gan()

    def students(self) -> StudentRenderer:
        with self._lock:
            if self._students is None:
                self._students = self._build_students()
            return self._students

    def gan(self) -> GanRenderer:
        with self._lock:
            if self._gan is None:
                self._gan = self._build_gan()
            return self._gan

    def _loaded_generator(self) -> LoadedGenerator:
        if self._generator is None:
            from engines import load_generator

            # a copy tuned to one video (stream/tuning.py) stands in for the generator it was tuned from
            path = self.config.tuned_generator or self.config.generator or self.pack.generator  # type: ignore[union-attr]
            self._generator = load_generator(path)
        return self._generator

    def _directions(self) -> dict[str, Direction]:
        if self._direction_set is None:
            from stream.edits.directions import load_direction_set

            generator = self._loaded_generator()
            files = self.config.directions or (self.pack.directions,)  # type: ignore[union-attr]
            self._direction_set = load_direction_set(files, generator.num_ws, generator.style_dim)
        return self._direction_set

    def _engine(self, module, network: str, io: tuple[str, str], shape: tuple[int, ...]) -> Engine:
        from engines.backends import create_engine
        from engines.backends.serial import shareable

        precision = self.config.precision
        if precision == "int8":
            return shareable(self._calibrated_engine(network, io[0], shape))
        # several sessions (live peers) share these engines
        return shareable(create_engine(module, self.config.backend, {io[0]: (shape, "float32")},
                                       precision=precision, threads=self.threads, output_names=(io[1],)))

    def _calibrated_engine(self, network: str, input_name: str, shape: tuple[int, ...]) -> Engine:
        """INT8: the Q/DQ graph `calibrate` wrote for this network, checked against the shape it must take."""
        from engines.backends import create_engine

        folder = self.config.calibrated
        candidates = sorted(folder.glob(f"{network}_b*.int8.onnx")) if folder.is_dir() else []
        if not candidates:
            raise UserError(f"--precision int8: no calibrated {network} in {folder} (its {network}_b1.int8.onnx); "
                            f"run `run_stream.py calibrate --out {folder}` with the same networks first")
        engine = create_engine(candidates[0], self.config.backend, precision="int8", threads=self.threads)
        got = tuple(engine.input_specs[input_name].shape[1:]) if input_name in engine.input_specs else None
        if got != tuple(shape[1:]):
            raise UserError(f"{candidates[0]}: takes {input_name} {got}, this run needs {tuple(shape[1:])}; "
                            "calibrate again for these networks")
        return engine

    def _build_gan(self) -> GanRenderer:
        from engines import load_encoder
        from engines.restyle import pipeline_encoder

        generator = self._loaded_generator()
        encoder = load_encoder(self.config.encoder or self.pack.encoder)  # type: ignore[union-attr]
        directions = self._directions()
        batch = 2  # G(w') and G(w) in one call
        generator_engine = self._engine(generator.export_safe(), "generator", GENERATOR_IO,
                                        (batch, generator.num_ws, generator.style_dim))
        # a ReStyle encoder runs as its whole inversion (its steps iterate with this generator)
        module, size, average = pipeline_encoder(encoder, generator, self.config.restyle_iterations)
        encoder_engine = self._engine(module, "encoder", ENCODER_IO, (1, 3, size, size))
        latent_avg = None if average is None else average.detach().cpu().numpy()
        renderer = GanRenderer(encoder_engine, generator_engine, directions, crop_size=self.crop_size,
                               latent_avg=latent_avg, residual=self.config.residual,
                               residual_colour=self._residual_colour(), motion=self.config.motion)
        return renderer

    def _residual_colour(self) -> str:
        if self.config.residual_colour is not None:
            return self.config.residual_colour
        # the pack's setting belongs to the pack's generator (a copy of it tuned to a video keeps it);
        # a generator of your own keeps its colours
        if self.pack is not None and self.config.generator is None:
            return self.pack.residual_colour
        return "rgb"

    def _build_students(self) -> StudentRenderer:
        from engines.checkpoints import load_checkpoint

        size = self.crop_size
        shape = (1, 3, size, size)
        modules = {}
        if self.config.student is not None:
            checkpoint = load_checkpoint(self.config.student)
            if checkpoint.architecture != "student":
                raise UserError(f"--student {self.config.student}: holds a {checkpoint.architecture}, not a student")
            # a loose student file does not say its distillation strength: it is taken as 1
            modules[self.student_names[0]] = (checkpoint.module, 1.0)
        else:
            modules = {name: (self.pack.load_student(name), self.pack.students[name].strength)  # type: ignore[union-attr]
                       for name in self.student_names}
        students = {name: (self._engine(module, f"student-{name}", STUDENT_IO, shape), strength)
                    for name, (module, strength) in modules.items()}
        return StudentRenderer(students, crop_size=size)

    def region(self, name: str) -> str:
        """The face region edit `name` changes: its direction's (students: their teacher direction's), the
        whole face for a loose student file."""
        if name not in self._regions:
            direction = self._directions().get(name) if self.can_gan else None
            if direction is None:
                self._regions[name] = "face"
            elif direction.metadata.get("region") in REGIONS:
                self._regions[name] = direction.metadata["region"]
            else:
                self._regions[name] = _inferred_region(direction, self.gan(), self._loaded_generator())
        return self._regions[name]

    def session(self, tracker: FaceTracker, *, faces: FacesMode = "all", feather: float = 0.2,
                smoother: Callable[[], CodeSmoother] | None = None) -> EditSession:
        return EditSession(self, tracker, faces=faces, feather=feather, smoother=smoother)


def _inferred_region(direction: Direction, renderer: GanRenderer, generator: LoadedGenerator) -> str:
    """Where a direction's change concentrates around the average code (for directions that name no region)."""
    average = (generator.latent_avg.detach().cpu().numpy() if generator.latent_avg is not None
               else renderer.latent_avg)
    if average is None:
        log.info("direction %s names no region and the generator has no average code: editing the whole face",
                 direction.name)
        return "face"
    mean_w = np.asarray(average, np.float32).reshape(-1, renderer.style_dim).mean(0)
    base = np.broadcast_to(mean_w, (1, renderer.num_ws, renderer.style_dim))
    crop = np.zeros((renderer.crop_size, renderer.crop_size, 3), np.uint8)
    rendered = renderer.render([crop], base, [(direction.name, 1.0)], StageTimes())
    energy = (rendered.changes[0] ** 2).sum(-1)
    region = infer_region(energy, FFHQ_TEMPLATE_5 * renderer.crop_size)
    log.info("direction %s names no region: its change concentrates on the %s", direction.name, region)
    return region


@dataclass
class GateStats:
    """What the confidence gate saw: faces rendered, faces it weakened, the last face's fidelity and weight."""

    faces: int = 0
    weakened: int = 0
    fidelity: float | None = None
    weight: float = 1.0
    lowest: float = float("inf")
    total: float = 0.0

    @property
    def mean_fidelity(self) -> float:
        return self.total / self.faces if self.faces else float("nan")


class EditSession:
    """One stream's edit state and per-face state over shared networks: `process(frame, t) -> frame`."""

    def __init__(self, networks: EditNetworks, tracker: FaceTracker, *, faces: FacesMode = "all",
                 feather: float = 0.2, smoother: Callable[[], CodeSmoother] | None = None) -> None:
        self.networks = networks
        self.tracker = tracker
        self.faces = faces
        self.mask = face_mask(networks.crop_size, feather)
        self.times = StageTimes()
        self.gate = GateStats()
        self._make_smoother = smoother
        self._smoothers: dict[int, CodeSmoother] = {}
        self._state = EditState(0, (), "gan" if not networks.student_names else "student")
        self._frames = 0

    # ------------------------------------------------------------------ edit state
    @property
    def state(self) -> EditState:
        return self._state

    @property
    def names(self) -> tuple[str, ...]:
        return self.networks.names

    def set_edits(self, edits: Sequence[EditSpec]) -> EditState:
        """Edits for frames located from now on; checked here (unknown names raise UserError).
        Safe from any thread: one reference swap."""
        checked = self.networks.check_edits(edits)
        path = self.networks.path_for(checked)
        self.networks.renderer(path)  # build it now, not on a frame
        self._state = EditState(self._state.version + 1, checked, path)
        return self._state

    # ------------------------------------------------------------------ stages
    def locate(self, frame: Frame, t: float | None = None) -> LocatedFaces | None:
        """Track and align; None when no edit is active (the frame goes out untouched, not even tracked)."""
        t = self._frames / 30.0 if t is None else t
        self._frames += 1
        state = self._state
        if not state.active:
            return None
        with timed(self.times, "detect"):
            faces = self.tracker.update(frame, t)
        if self.faces == "largest" and faces:
            faces = [max(faces, key=_area)]
        size = self.networks.crop_size
        with timed(self.times, "align"):
            affines = [ffhq_affine(face.landmarks, size) for face in faces]
            crops = [warp_to_crop(frame, affine, size) for affine in affines]
            landmarks = [transform_points(a, f.landmarks).astype(np.float32) for a, f in zip(affines, faces)]
        return LocatedFaces(t, state, faces, affines, crops, landmarks)

    def encode(self, located: LocatedFaces) -> WPlus:
        """Generator path: the faces' W+ codes [N, num_ws, D]."""
        with timed(self.times, "encode"):
            return self.networks.gan().encode(located.crops)

    def render(self, located: LocatedFaces, codes: WPlus | None = None) -> list[np.ndarray]:
        """Each face's change (float32 [S, S, 3]), confined to its edits' regions and weighed by the gate.
        Generator path: `codes` are the faces' (smoothed) codes; None: encoded and causally smoothed here."""
        state = located.state
        if state.path == "student":
            rendered = self.networks.students().render(located.crops, state.edits, self.times)
        else:
            if codes is None:
                codes = self._smooth(located, self.encode(located))
            rendered = self.networks.gan().render(located.crops, codes, state.edits, self.times)
        return self._confine(located, rendered)

    def _confine(self, located: LocatedFaces, rendered: Rendered) -> list[np.ndarray]:
        regions = [self.networks.region(name) for name, strength in located.state.edits if strength != 0]
        out = []
        for index, change in enumerate(rendered.changes):
            weight = 1.0
            if rendered.fidelity is not None:
                weight = self._gate(rendered.fidelity[index])
            mask = union_mask(regions, located.landmarks[index], change.shape[0])
            flow = None if rendered.flows is None else rendered.flows[index]
            with timed(self.times, "motion") if flow is not None else nullcontext():
                out.append(confined_change(located.crops[index], change, flow, mask, weight))
        return out

    def _gate(self, fidelity: float) -> float:
        """The face's edit weight (1 with the gate off); the figures are kept either way."""
        weight = gate_weight(fidelity) if self.networks.config.gate else 1.0
        self.gate.faces += 1
        self.gate.weakened += weight < 1.0
        self.gate.fidelity, self.gate.weight = fidelity, weight
        self.gate.lowest = min(self.gate.lowest, fidelity)
        self.gate.total += fidelity
        return weight

    def _smooth(self, located: LocatedFaces, codes: WPlus) -> WPlus:
        self.forget(set(located.track_ids))
        if self._make_smoother is None:
            return codes
        with timed(self.times, "smooth"):
            out = []
            for track, code in zip(located.track_ids, codes):
                if track not in self._smoothers:
                    self._smoothers[track] = self._make_smoother()
                out.append(np.asarray(self._smoothers[track](code, located.t), np.float32))
            return np.stack(out)

    def forget(self, keep: Collection[int]) -> None:
        """Drop per-track state of every track not in `keep` (the tracker lost them)."""
        for track in [k for k in self._smoothers if k not in keep]:
            del self._smoothers[track]

    def composite(self, frame: Frame, located: LocatedFaces, changes: Sequence[np.ndarray]) -> Frame:
        """Each change added to `frame` where the face mask is (a new array; `frame` is not modified)."""
        with timed(self.times, "composite"):
            out = frame
            for change, affine in zip(changes, located.affines):
                out = paste_change(out, change, affine, self.mask)
        return out

    def edit(self, frame: Frame, located: LocatedFaces | None) -> Frame:
        """Render and composite a located frame (the frame itself when there is nothing to do)."""
        if located is None:
            return frame
        if not located.faces:
            self.forget(set())
            return frame
        return self.composite(frame, located, self.render(located))

    def process(self, frame: Frame, t: float | None = None) -> Frame:
        """The edited frame (a new array), or `frame` itself when no face is found or no edit is active."""
        return self.edit(frame, self.locate(frame, t))
