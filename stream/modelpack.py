"""Model packs: one folder with everything an edit needs, described by pack.json.

Layout (the demo pack ships in assets/demo_pack/):

    pack.json                  the manifest below
    generator.safetensors      StyleGAN2 generator (architecture "stylegan2-generator"), engines/checkpoints.py
    encoder.safetensors        image -> W+ encoder ("demo-encoder", "e4e" or "psp"), latent_avg inside if used
    directions.safetensors     named editing directions, stream/edits/directions.py's file format
    student_<edit>.safetensors distilled students ("student"), one per edit, optional

pack.json (format "faceedit-pack/1"; file names are relative to the folder):

    {
      "format": "faceedit-pack/1",
      "crop_size": 256,                       # side of the FFHQ-aligned face crop (paste-back, students)
      "generator": "generator.safetensors",
      "encoder": "encoder.safetensors",
      "directions": "directions.safetensors",
      "students": {"smile": {"file": "student_smile.safetensors", "strength": 1.0}},
      "default_edit": {"name": "smile", "strength": 1.0}   # what `demo` and a bare `file` apply
    }

`students` and `default_edit` are optional. A student's `strength` is the edit strength it was distilled
at; asking for another strength scales its predicted change (stream/pipeline.py). Other keys (a model
card, metrics) are kept in `extra` and not interpreted here.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.atomic import atomic_write_bytes
from engines.errors import CheckpointError
from stream.types import RESIDUAL_COLOURS

if TYPE_CHECKING:
    from torch import Tensor, nn

    from engines import LoadedEncoder, LoadedGenerator
    from stream.edits.directions import Direction

log = logging.getLogger(__name__)

PACK_FORMAT = "faceedit-pack/1"
MANIFEST = "pack.json"
DEFAULT_PACK = Path(__file__).resolve().parents[1] / "assets" / "demo_pack"
_KNOWN_KEYS = {"format", "crop_size", "generator", "encoder", "directions", "students", "default_edit",
               "residual_colour"}


@dataclass(frozen=True)
class StudentEntry:
    """A distilled student for one edit, trained to perform it at `strength`."""

    edit: str
    file: Path
    strength: float


@dataclass(frozen=True)
class ModelPack:
    """A loaded pack.json with absolute, checked paths. Networks load on request (they are large)."""

    root: Path
    crop_size: int
    generator: Path
    encoder: Path
    directions: Path
    students: dict[str, StudentEntry] = field(default_factory=dict)
    default_edit: tuple[str, float] | None = None
    residual_colour: str = "rgb"  # how the pack's generator residual goes back (stream.pipeline.residual_change)
    extra: dict[str, Any] = field(default_factory=dict)

    def load_generator(self) -> LoadedGenerator:
        from engines import load_generator

        return load_generator(self.generator)

    def load_encoder(self) -> LoadedEncoder:
        from engines import load_encoder

        return load_encoder(self.encoder)

    def load_directions(self, num_ws: int) -> dict[str, Direction]:
        from stream.edits.directions import load_directions

        return load_directions(self.directions, num_ws)

    def load_student(self, edit: str) -> nn.Module:
        """The student network distilled for `edit` (CheckpointError naming the choices if none)."""
        from engines.checkpoints import load_checkpoint

        if edit not in self.students:
            have = ", ".join(sorted(self.students)) or "none"
            raise CheckpointError(f"{self.root / MANIFEST}: no student for edit {edit!r} (students: {have}); "
                                  "use the generator path or distil one with `run_stream.py distill`")
        checkpoint = load_checkpoint(self.students[edit].file)
        if checkpoint.architecture != "student":
            raise CheckpointError(f"{self.students[edit].file}: holds a {checkpoint.architecture}, not a student")
        return checkpoint.module


def _file_entry(root: Path, manifest: Path, key: str, value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise CheckpointError(f"{manifest}: {key!r} must be a file name in the pack folder")
    path = root / value
    if not path.is_file():
        raise CheckpointError(f"{manifest}: {key} file {path} is missing; the pack is incomplete, rebuild it "
                              "with `run_stream.py train-pack`")
    return path


def load_pack(root: Path | str = DEFAULT_PACK) -> ModelPack:
    """Read and check `root`/pack.json; every failure is one CheckpointError line naming the file."""
    root = Path(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{manifest}: not found; give a model pack folder (--pack DIR) holding {MANIFEST}")
    try:
        data = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{manifest}: not valid JSON ({err}); rebuild the pack") from None
    if not isinstance(data, dict) or data.get("format") != PACK_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{manifest}: format {got!r} is not {PACK_FORMAT!r}; rebuild the pack")
    crop_size = data.get("crop_size")
    if not isinstance(crop_size, int) or not 32 <= crop_size <= 1024 or crop_size % 8:
        raise CheckpointError(f"{manifest}: crop_size {crop_size!r} must be a multiple of 8 in 32..1024")
    students_raw = data.get("students", {})
    if not isinstance(students_raw, dict):
        raise CheckpointError(f"{manifest}: 'students' must map edit names to {{file, strength}}")
    students = {}
    for edit, entry in students_raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("strength"), (int, float)):
            raise CheckpointError(f"{manifest}: student {edit!r} needs {{\"file\": ..., \"strength\": number}}")
        path = _file_entry(root, manifest, f"students.{edit}", entry.get("file"))
        students[edit] = StudentEntry(edit, path, float(entry["strength"]))
    default_edit = None
    if "default_edit" in data:
        entry = data["default_edit"]
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or not isinstance(entry.get("strength"), (int, float)):
            raise CheckpointError(f"{manifest}: default_edit must be {{\"name\": str, \"strength\": number}}")
        default_edit = (entry["name"], float(entry["strength"]))
    residual_colour = data.get("residual_colour", "rgb")
    if residual_colour not in RESIDUAL_COLOURS:
        raise CheckpointError(f"{manifest}: residual_colour {residual_colour!r} must be one of "
                              f"{', '.join(RESIDUAL_COLOURS)}")
    return ModelPack(
        root=root,
        crop_size=crop_size,
        generator=_file_entry(root, manifest, "generator", data.get("generator")),
        encoder=_file_entry(root, manifest, "encoder", data.get("encoder")),
        directions=_file_entry(root, manifest, "directions", data.get("directions")),
        students=students,
        default_edit=default_edit,
        residual_colour=residual_colour,
        extra={k: v for k, v in data.items() if k not in _KNOWN_KEYS},
    )


def save_pack(
    root: Path | str,
    *,
    crop_size: int,
    generator: nn.Module,
    encoder: nn.Module,
    directions: Sequence[Direction],
    students: Mapping[str, tuple[nn.Module, float]] | None = None,
    encoder_architecture: str = "demo-encoder",
    latent_avg: Tensor | None = None,
    default_edit: tuple[str, float] | None = None,
    residual_colour: str = "rgb",
    extra: Mapping[str, Any] | None = None,
) -> ModelPack:
    """Write a pack folder: the networks as safetensors (architecture + config from each module's
    `.config`), the directions file and pack.json (written last, atomically, so a half-written pack never
    loads). `students` maps an edit name to (ResidualStudent, strength it was distilled at); `latent_avg`
    ([D] or [num_ws, D]) is stored with the encoder and added to its codes by engines.load_encoder.
    Returns the pack as load_pack reads it back."""
    from engines.checkpoints import save_safetensors
    from stream.edits.directions import save_directions

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"format": PACK_FORMAT, "crop_size": int(crop_size)}
    manifest["generator"] = save_safetensors(generator, root / "generator.safetensors", "stylegan2-generator",
                                             generator.config).name
    extra_tensors = {"latent_avg": latent_avg} if latent_avg is not None else None
    manifest["encoder"] = save_safetensors(encoder, root / "encoder.safetensors", encoder_architecture,
                                           encoder.config, extra_tensors=extra_tensors).name
    manifest["directions"] = "directions.safetensors"
    save_directions(root / manifest["directions"], list(directions))
    manifest["students"] = {}
    for edit, (student, strength) in (students or {}).items():
        path = save_safetensors(student, root / f"student_{edit}.safetensors", "student", student.config)
        manifest["students"][edit] = {"file": path.name, "strength": float(strength)}
    if default_edit is not None:
        manifest["default_edit"] = {"name": default_edit[0], "strength": float(default_edit[1])}
    if residual_colour != "rgb":
        manifest["residual_colour"] = residual_colour
    manifest.update(extra or {})
    atomic_write_bytes(root / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    log.info("wrote model pack %s", root)
    return load_pack(root)
