"""FaceEditPipeline: one frame through the stages, with milliseconds per stage.

    frame -> tracker (detect + track) -> align (FFHQ crop per face) -> EditModel -> composite -> frame

An EditModel turns aligned crops into edited crops:
- GanEditModel: encoder engine -> W+ -> per-track temporal smoothing -> latent edits -> generator engine.
  `edit` smooths causally (live); the file job's look-ahead (stream/lookahead.py) calls `encode`, smooths
  each track over past and future frames, then `render`.
  By default the crop that goes back is `crop + upsample(G(w') - G(w))` (the detail-preserving residual of
  DESIGN.md); `residual=False` returns `G(w')` alone, upsampled, and replaces the face region with it.
  `residual_colour="luma"` keeps only the residual's brightness change (residual_change): a small
  generator's colour errors then cannot tint the face, while shapes (an open mouth) still show.
- StudentEditModel: a distilled student engine per edit, at the crop's resolution, in one pass.

`FaceEditPipeline.process` is `locate` (tracker, alignment) then `edit` (model, composite); the two
are public so that a caller can run them in two threads or hold frames between them. Frames without a
face, and every frame while no edit has a non-zero strength, are returned untouched (the same array).
`set_edits` may be called between frames from any thread; the new edits apply from the next `process`
(or `locate`) call.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from engines.backends.base import Engine
from engines.errors import UserError
from stream.composite import Blend, face_mask, paste_back
from stream.config import FACES_MODES, EditSpec, FacesMode
from stream.edits.directions import Direction
from stream.edits.editor import LatentEdit, apply_edits
from stream.faces.align import ffhq_affine, warp_to_crop
from stream.types import RESIDUAL_COLOURS, Affine2x3, Crop, Face, Frame, ResidualColour, StageTimes, WPlus

Images = npt.NDArray[np.float32]       # [N, 3, S, S] in [-1, 1]


@contextmanager
def timed(times: StageTimes, stage: str) -> Iterator[None]:
    """Add the wall time of the block to `times[stage]` in milliseconds."""
    start = time.perf_counter()
    try:
        yield
    finally:
        times.add(stage, (time.perf_counter() - start) * 1000.0)


def crops_to_images(crops: Sequence[Crop], size: int) -> Images:
    """uint8 RGB crops -> [N, 3, size, size] float32 in [-1, 1] (area-resized when the sizes differ)."""
    resized = [c if c.shape[0] == size else cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA)
               for c in crops]
    batch = np.stack(resized).astype(np.float32) / 127.5 - 1.0  # [N, S, S, 3]
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def images_to_pixels(images: Images, size: int) -> npt.NDArray[np.float32]:
    """[N, 3, s, s] in [-1, 1] units -> [N, size, size, 3] float32 in 0..255 units (bilinear resize)."""
    pixels = images.transpose(0, 2, 3, 1) * 127.5
    if pixels.shape[1] == size:
        return pixels
    return np.stack([cv2.resize(p, (size, size), interpolation=cv2.INTER_LINEAR) for p in pixels])


# ITU-R BT.601 luma weights: the brightness part of an RGB change
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def residual_change(delta: Images, size: int, colour: ResidualColour = "rgb") -> npt.NDArray[np.float32]:
    """G(w') - G(w) [N, 3, s, s] -> the change to add to the crops, [N, size, size, 3] in 0..255 units.

    "luma": the change's brightness, the same on all three channels (no hue or saturation change)."""
    pixels = images_to_pixels(delta, size)
    if colour == "luma":
        return np.repeat((pixels @ _LUMA)[..., None], 3, axis=-1)
    return pixels


def run_batched(engine: Engine, name: str, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Run a static-batch engine over N items: chunks of its batch size, the last one padded."""
    spec_batch = engine.input_specs[name].shape[0]
    outputs = []
    for start in range(0, len(batch), spec_batch):
        chunk = batch[start:start + spec_batch]
        count = len(chunk)
        if count < spec_batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], spec_batch - count, axis=0)])
        result = engine.run({name: chunk})
        outputs.append(next(iter(result.values()))[:count])
    return np.concatenate(outputs)


class Tracker(Protocol):
    """What the pipeline needs of stream.faces.track.FaceTracker."""

    def update(self, frame: Frame, t: float | None = None) -> list[Face]: ...


class EditModel(Protocol):
    """Aligned crops in, edited crops out. `stages` names the StageTimes keys it fills."""

    crop_size: int
    blend: Blend
    stages: tuple[str, ...]
    names: Collection[str]    # the edits it can apply

    @property
    def active(self) -> bool:
        """False when no edit would change anything (the pipeline then skips all stages)."""
        ...

    def set_edits(self, edits: Sequence[EditSpec]) -> None: ...

    def edit(self, crops: Sequence[Crop], track_ids: Sequence[int], t: float, times: StageTimes) -> list[Crop]: ...

    def forget(self, keep: Collection[int]) -> None:
        """Drop per-track state of every track not in `keep` (the tracker lost them)."""
        ...


def _to_uint8(pixels: npt.NDArray[np.float32]) -> Crop:
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


class CodeSmoother(Protocol):
    """Per-track temporal filter of W+ codes (stream/edits/smoothing.py)."""

    def __call__(self, code: WPlus, t: float) -> WPlus: ...


class GanEditModel:
    """Encoder engine + latent edits + generator synthesis engine.

    encoder: Engine [B, 3, E, E] in [-1, 1] -> codes [B, num_ws, D] (before latent_avg);
    generator: Engine [B', num_ws, D] -> image [B', 3, R, R]. latent_avg ([D] or [num_ws, D]) is added
    to the encoder's codes when given. smoother: makes one causal code filter per new track (None: off).
    Smoothing the inverted code w is the same as smoothing the edited code w' = w + edit, since an edit
    adds a constant, and it keeps G(w) and G(w') of the residual consistent.
    """

    def __init__(self, encoder: Engine, generator: Engine, directions: Mapping[str, Direction], *,
                 crop_size: int, latent_avg: npt.NDArray[np.float32] | None = None, residual: bool = True,
                 residual_colour: ResidualColour = "rgb",
                 smoother: Callable[[], CodeSmoother] | None = None) -> None:
        if residual_colour not in RESIDUAL_COLOURS:
            raise UserError(f"residual colour {residual_colour!r}: choose one of {', '.join(RESIDUAL_COLOURS)}")
        self.encoder, self.generator = encoder, generator
        self.residual_colour = residual_colour
        self.directions = dict(directions)
        self.crop_size = crop_size
        self.residual = residual
        self.blend: Blend = "delta" if residual else "replace"
        self.stages = ("encode", "smooth", "edit", "generate")
        self.names = tuple(sorted(self.directions))
        (self._encoder_input, encoder_spec), = encoder.input_specs.items()
        (self._generator_input, generator_spec), = generator.input_specs.items()
        self.encoder_size = encoder_spec.shape[-1]
        self.num_ws, self.style_dim = generator_spec.shape[1], generator_spec.shape[2]
        self.latent_avg = None if latent_avg is None else np.asarray(latent_avg, np.float32)
        self._make_smoother = smoother
        self._smoothers: dict[int, CodeSmoother] = {}
        self._edits: list[LatentEdit] = []

    @property
    def active(self) -> bool:
        return any(edit.strength != 0 for edit in self._edits) or not self.residual

    def set_edits(self, edits: Sequence[EditSpec]) -> None:
        unknown = [name for name, _ in edits if name not in self.directions]
        if unknown:
            raise UserError(f"unknown edit {unknown[0]!r}; this model has directions: "
                            f"{', '.join(sorted(self.directions)) or 'none'}")
        # a user's strength 1 is the direction's default strength, the one that shows the attribute clearly
        self._edits = [LatentEdit(self.directions[name], float(strength) * self.directions[name].default_strength)
                       for name, strength in edits]

    def encode(self, crops: Sequence[Crop]) -> WPlus:
        """Crops -> W+ codes [N, num_ws, D], latent_avg included."""
        codes = run_batched(self.encoder, self._encoder_input, crops_to_images(crops, self.encoder_size))
        return codes + self.latent_avg if self.latent_avg is not None else codes

    def edit(self, crops: Sequence[Crop], track_ids: Sequence[int], t: float, times: StageTimes) -> list[Crop]:
        with timed(times, "encode"):
            codes = self.encode(crops)
        if self._make_smoother is not None:
            with timed(times, "smooth"):
                codes = np.stack([self._smooth(track, code, t) for track, code in zip(track_ids, codes)])
        return self.render(crops, codes, times)

    def render(self, crops: Sequence[Crop], codes: WPlus, times: StageTimes) -> list[Crop]:
        """Edited crops from the crops and their (already smoothed) codes [N, num_ws, D]: the latent edits,
        then synthesis. The look-ahead file job calls this with codes it smoothed over time itself."""
        codes = np.asarray(codes, dtype=np.float32)
        with timed(times, "edit"):
            edited = apply_edits(codes, self._edits).astype(np.float32)
        with timed(times, "generate"):
            if self.residual:
                both = run_batched(self.generator, self._generator_input, np.concatenate([edited, codes]))
                change = residual_change(both[:len(crops)] - both[len(crops):], self.crop_size, self.residual_colour)
                out = [_to_uint8(crop.astype(np.float32) + delta) for crop, delta in zip(crops, change)]
            else:
                images = run_batched(self.generator, self._generator_input, edited)
                out = [_to_uint8(p + 127.5) for p in images_to_pixels(images, self.crop_size)]
        return out

    def _smooth(self, track: int, code: WPlus, t: float) -> WPlus:
        if track not in self._smoothers:
            self._smoothers[track] = self._make_smoother()  # type: ignore[misc]
        return np.asarray(self._smoothers[track](code, t), dtype=np.float32)

    def forget(self, keep: Collection[int]) -> None:
        for track in [k for k in self._smoothers if k not in keep]:
            del self._smoothers[track]


class StudentEditModel:
    """Distilled students: `students` maps an edit name to (engine, strength it was distilled at).

    Each engine maps [1, 3, S, S] in [-1, 1] to the edited image; a requested strength other than the
    distilled one scales the predicted change linearly (strength 0: no change). Several edits apply in
    the order given, each on the previous one's output.
    """

    def __init__(self, students: Mapping[str, tuple[Engine, float]], *, crop_size: int) -> None:
        if not students:
            raise UserError("the student path needs at least one student (none in this pack)")
        sizes = {spec.shape[-1] for engine, _ in students.values() for spec in engine.input_specs.values()}
        if len(sizes) != 1 or any(trained == 0 for _, trained in students.values()):
            raise UserError(f"students must share one input size and have non-zero strengths; got sizes {sizes}")
        self._size = sizes.pop()
        self.students = dict(students)
        self.crop_size = crop_size
        self.blend: Blend = "delta"
        self.stages = ("student",)
        self.names = tuple(sorted(self.students))
        self._edits: list[EditSpec] = []

    @property
    def active(self) -> bool:
        return any(strength != 0 for _, strength in self._edits)

    def set_edits(self, edits: Sequence[EditSpec]) -> None:
        unknown = [name for name, _ in edits if name not in self.students]
        if unknown:
            raise UserError(f"no student for edit {unknown[0]!r}; students: {', '.join(sorted(self.students))} "
                            "(or use the generator path: --generator/--encoder)")
        self._edits = [(name, float(strength)) for name, strength in edits]

    def edit(self, crops: Sequence[Crop], track_ids: Sequence[int], t: float, times: StageTimes) -> list[Crop]:
        with timed(times, "student"):
            out = []
            for crop in crops:
                original = crops_to_images([crop], self._size)
                x = original
                for name, strength in self._edits:
                    if strength == 0:
                        continue
                    engine, trained = self.students[name]
                    (input_name, _), = engine.input_specs.items()
                    result = next(iter(engine.run({input_name: x}).values()))
                    x = x + (result - x) * (strength / trained)
                change = images_to_pixels(x - original, self.crop_size)[0]
                out.append(_to_uint8(crop.astype(np.float32) + change))
        return out

    def forget(self, keep: Collection[int]) -> None:
        """Students keep no per-track state."""


@dataclass(frozen=True)
class LocatedFaces:
    """One frame's faces, ready for an EditModel: time, tracker faces, frame->crop affines, aligned crops
    (empty lists when the frame has no face)."""

    t: float
    faces: list[Face]
    affines: list[Affine2x3]
    crops: list[Crop]

    @property
    def track_ids(self) -> list[int]:
        return [face.track_id for face in self.faces]


def _area(face: Face) -> float:
    x0, y0, x1, y1 = face.box
    return (x1 - x0) * (y1 - y0)


class FaceEditPipeline:
    """Runs every stage on one frame: `process(frame, t) -> frame`. `times` accumulates ms per stage."""

    def __init__(self, tracker: Tracker, model: EditModel, *, faces: FacesMode = "all",
                 feather: float = 0.2, colour_match: bool = True) -> None:
        if faces not in FACES_MODES:
            raise UserError(f"unknown --faces {faces!r}; choose one of {', '.join(FACES_MODES)}")
        self.tracker = tracker
        self.model = model
        self.faces = faces
        self.colour_match = colour_match
        self.mask = face_mask(model.crop_size, feather)
        self.times = StageTimes()
        self._pending: list[EditSpec] | None = None
        self._frames = 0

    def set_edits(self, edits: Sequence[EditSpec]) -> None:
        """Edits for the following frames; checked now (unknown names raise), applied at the next frame."""
        unknown = [name for name, _ in edits if name not in self.model.names]
        if unknown:
            raise UserError(f"unknown edit {unknown[0]!r}; this model has: {', '.join(self.model.names) or 'none'}")
        # one reference swap: safe to call from another thread while a frame is processed
        self._pending = [(name, float(strength)) for name, strength in edits]

    def process(self, frame: Frame, t: float | None = None) -> Frame:
        """The edited frame (a new array), or `frame` itself when no face is found or no edit is active.
        `t` is the frame's time in seconds (for the temporal filters); default: frame index / 30."""
        return self.edit(frame, self.locate(frame, t))

    def locate(self, frame: Frame, t: float | None = None) -> LocatedFaces | None:
        """The stages before the model: pending edits, tracking, alignment. None when no edit is active
        (the frame goes out untouched, not even tracked). `process` is `edit(frame, locate(frame, t))`;
        the file job calls the two apart, from two threads, and `locate` may run ahead of `edit`."""
        t = self._frames / 30.0 if t is None else t
        self._frames += 1
        pending, self._pending = self._pending, None
        if pending is not None:
            self.model.set_edits(pending)
        if not self.model.active:
            return None
        with timed(self.times, "detect"):
            faces = self.tracker.update(frame, t)
        if self.faces == "largest" and faces:
            faces = [max(faces, key=_area)]
        with timed(self.times, "align"):
            affines = [ffhq_affine(face.landmarks, self.model.crop_size) for face in faces]
            crops = [warp_to_crop(frame, affine, self.model.crop_size) for affine in affines]
        return LocatedFaces(t, faces, affines, crops)

    def edit(self, frame: Frame, located: LocatedFaces | None) -> Frame:
        """The model and the paste-back for a frame `locate` has seen: a new array, or `frame` itself
        when nothing is to be done. Frames must come in the order they were located."""
        if located is None:
            return frame
        self.model.forget(set(located.track_ids))
        if not located.faces:
            return frame
        edited = self.model.edit(located.crops, located.track_ids, located.t, self.times)
        return self.composite(frame, located, edited)

    def composite(self, frame: Frame, located: LocatedFaces, edited: Sequence[Crop]) -> Frame:
        """Paste each edited crop back into `frame` (a new array; `frame` is not modified)."""
        with timed(self.times, "composite"):
            out = frame
            for crop, new, affine in zip(located.crops, edited, located.affines):
                out = paste_back(out, new, crop, affine, self.mask, blend=self.model.blend,
                                 colour_match=self.colour_match)
        return out
