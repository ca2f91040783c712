"""Editing directions in W+: what they are, where they come from, and which layers they act on.

Sources:
- files as their authors publish them: InterFaceGAN `.pt`/`.npy` ([512], [1, 512] for W, [1, 18, 512] for
  W+) and GANSpace's PCA dict (`mean` [1, 512], `comp` [80, 1, 512], `std` [80]; a component is taken
  at one standard deviation);
- SeFa (Shen & Zhou, CVPR 2021): closed-form, the top eigenvectors of A^T A where A stacks the generator's
  style modulation weights (each output channel's row normalised) for the chosen layers;
- discovery by mean difference: mean code of the faces with an attribute minus the mean of those without,
  optionally taken within groups (per clip or identity) and averaged, so that who is in the picture and how
  it is lit cancel instead of masquerading as the attribute (DESIGN.md, demo pack lessons);
- the project's own directions file (safetensors, several named directions with their metadata), the
  format of the demo pack's directions.

Layer masks: "coarse" (0-3), "middle" (4-7), "fine" (8+) on an 18-entry W+ (1024 px), scaled to other
generators' num_ws; explicit lists such as "0-3,8" or "8-".
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.atomic import atomic_write_bytes
from engines.errors import UserError

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

DIRECTIONS_FORMAT = "faceedit-directions"
DIRECTIONS_VERSION = "1"
# Named ranges on StyleGAN2-1024's 18 W+ entries (InterFaceGAN / StyleSpace convention); other sizes scale.
_REFERENCE_NUM_WS = 18
_NAMED_RANGES = {"coarse": (0, 4), "middle": (4, 8), "fine": (8, _REFERENCE_NUM_WS)}


@dataclass
class Direction:
    """A named direction in W+: `vector` [num_ws, 512] float32, acting on `layers` by default.

    `default_strength` is the strength that shows the attribute clearly (what a UI's 1.0 maps to);
    `metadata` holds JSON-serialisable extras (how it was made), saved with it by save_directions."""

    name: str
    vector: FloatArray
    layers: list[int]
    default_strength: float = 1.0
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vector = np.ascontiguousarray(self.vector, dtype=np.float32)
        if self.vector.ndim != 2:
            raise UserError(f"direction {self.name!r}: vector must be [num_ws, dim], got {list(self.vector.shape)}")
        bad = [i for i in self.layers if not 0 <= i < self.num_ws]
        if bad:
            raise UserError(f"direction {self.name!r}: layers {bad} outside 0-{self.num_ws - 1}")
        self.layers = sorted({int(i) for i in self.layers})

    @property
    def num_ws(self) -> int:
        return int(self.vector.shape[0])


# ------------------------------------------------------------------------------------------ layer masks
def _named_range(name: str, num_ws: int) -> range:
    lo, hi = _NAMED_RANGES[name]
    scale = num_ws / _REFERENCE_NUM_WS
    return range(int(np.rint(lo * scale)), num_ws if hi == _REFERENCE_NUM_WS else int(np.rint(hi * scale)))


def layer_mask(spec: str | Sequence[int] | None, num_ws: int) -> list[int]:
    """W+ indices named by `spec`: "all", "coarse", "middle", "fine", "0-3,8", "8-", combinations
    ("coarse,fine"), or a list of ints. None means all layers."""
    if spec is None:
        return list(range(num_ws))
    if not isinstance(spec, str):
        layers = sorted({int(i) for i in spec})
        bad = [i for i in layers if not 0 <= i < num_ws]
        if bad:
            raise UserError(f"layers {bad} outside 0-{num_ws - 1} (this generator has {num_ws} W+ entries)")
        return layers
    chosen: set[int] = set()
    for part in (p.strip().lower() for p in spec.split(",")):
        if part == "all":
            chosen.update(range(num_ws))
        elif part in _NAMED_RANGES:
            chosen.update(_named_range(part, num_ws))
        elif (m := re.fullmatch(r"(\d+)(?:-(\d*))?", part)) is not None:
            lo = int(m.group(1))
            hi = lo if m.group(2) is None else (num_ws - 1 if m.group(2) == "" else int(m.group(2)))
            if lo > hi or hi >= num_ws:
                raise UserError(f"layer range {part!r} is outside 0-{num_ws - 1} (this generator has "
                                f"{num_ws} W+ entries)")
            chosen.update(range(lo, hi + 1))
        else:
            raise UserError(f"layer spec {spec!r}: {part!r} is not all, coarse, middle, fine, N or N-M")
    return sorted(chosen)


def layers_from_norm(vector: npt.ArrayLike, fraction: float = 0.8) -> list[int]:
    """The fewest W+ layers holding `fraction` of the direction's squared norm: put the mask where the
    direction actually lives (a discovered direction's norm often sits away from the preset ranges)."""
    v = np.asarray(vector, dtype=np.float64)
    if v.ndim != 2:
        raise UserError(f"layers_from_norm needs a [num_ws, dim] vector, got {list(v.shape)}")
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"fraction {fraction} must be in (0, 1]")
    energy = (v**2).sum(axis=1)
    total = energy.sum()
    if total == 0 or np.ptp(energy) <= 1e-6 * energy.max():
        return list(range(v.shape[0]))  # a W direction (equal rows) lives in every layer alike
    order = np.argsort(-energy, kind="stable")
    count = int(np.searchsorted(np.cumsum(energy[order]) / total, fraction - 1e-9) + 1)
    return sorted(int(i) for i in order[:count])


# ------------------------------------------------------------------------------------- published files
def read_direction_file(path: Path) -> Any:
    """The tensor (numpy) or dict of tensors in a published .pt / .npy direction file, read safely."""
    if not path.is_file():
        raise UserError(f"{path}: direction file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix in (".pt", ".pth"):
            import torch

            # some published tensors were saved from a GPU: map them to the CPU
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in obj.items()}
            return obj.numpy() if isinstance(obj, torch.Tensor) else obj
    except Exception as err:  # noqa: BLE001 - any failure to parse is a bad file for the user
        raise UserError(f"{path}: cannot read a direction from it ({type(err).__name__}: {err}); "
                        "expected a tensor saved with torch.save or numpy.save") from None
    raise UserError(f"{path}: unknown direction file type {suffix!r}; expected .pt, .npy or .safetensors")


def _rows(array: npt.NDArray[Any], num_ws: int, source: str) -> FloatArray:
    """[D], [1, D], [K, D] or [1, K, D] -> [num_ws, D] (one row broadcast to every layer)."""
    a = np.asarray(array, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise UserError(f"{source}: direction of shape {list(np.shape(array))}; expected [512], [1, 512] "
                        "or [1, num_ws, 512]")
    if a.shape[0] != num_ws and np.allclose(a, a[:1]):
        a = a[:1]  # a W+ file whose rows are all equal is a W direction
    if a.shape[0] == 1:
        return np.repeat(a, num_ws, axis=0)
    if a.shape[0] != num_ws:
        raise UserError(f"{source}: direction has {a.shape[0]} W+ rows but the generator has {num_ws}; "
                        "use a direction made for this generator")
    return a


def load_direction(path: str | os.PathLike, num_ws: int, name: str | None = None,
                   layers: str | Sequence[int] | None = None, default_strength: float = 1.0) -> Direction:
    """An InterFaceGAN-style direction file (.pt or .npy: [512], [1, 512] or [1, num_ws, 512]) as a
    Direction on `num_ws` layers. Default mask: all layers, or the rows that are non-zero in a W+ file."""
    p = Path(path)
    obj = read_direction_file(p)
    if isinstance(obj, dict):
        raise UserError(f"{p}: holds a dict ({', '.join(map(str, obj))}), not one direction; a GANSpace "
                        "file needs a component index (load_ganspace)")
    vector = _rows(obj, num_ws, str(p))
    if layers is None:
        nonzero = np.flatnonzero(np.abs(vector).sum(axis=1) > 0)
        chosen = [int(i) for i in nonzero] or list(range(num_ws))
    else:
        chosen = layer_mask(layers, num_ws)
    return Direction(name or p.stem, vector, chosen, default_strength, f"from {p.name}")


def load_ganspace(path: str | os.PathLike, index: int, num_ws: int, layers: str | Sequence[int] | None = None,
                  name: str | None = None) -> Direction:
    """Component `index` of a GANSpace PCA file (`comp` [K, 1, D], `std` [K]) scaled by its standard
    deviation, so strength 1.0 moves one sigma along it."""
    p = Path(path)
    obj = read_direction_file(p)
    if not isinstance(obj, dict) or not {"comp", "std"} <= set(obj):
        raise UserError(f"{p}: not a GANSpace PCA file; expected a dict with 'comp' [K, 1, 512] and 'std' [K]")
    comp = np.asarray(obj["comp"], dtype=np.float32)
    std = np.asarray(obj["std"], dtype=np.float32).reshape(-1)
    if comp.ndim == 3:
        comp = comp[:, 0]
    if not 0 <= index < comp.shape[0]:
        raise UserError(f"{p}: component {index} does not exist; it has components 0-{comp.shape[0] - 1}")
    vector = _rows(comp[index] * std[index], num_ws, f"{p} component {index}")
    return Direction(name or f"pc{index}", vector, layer_mask(layers, num_ws), 1.0,
                     f"GANSpace component {index} of {p.name} (1 sigma = {float(std[index]):.3f})")


# --------------------------------------------------------------------------------------------- SeFa
def _modulation_weights(generator: Any, layers: list[int], include_rgb: bool) -> list[npt.NDArray[np.float64]]:
    """The style modulation weights [C, D] of the synthesis layers that read W+ entries `layers`."""
    module = getattr(generator, "module", generator)
    state = module.state_dict()
    # rosinality's W+ indexing: conv1 <- 0, to_rgb1 <- 1, convs.j <- j + 1, to_rgbs.j <- 2 j + 3
    index_of: dict[str, int] = {"conv1.conv.modulation.weight": 0}
    if include_rgb:
        index_of["to_rgb1.conv.modulation.weight"] = 1
    for key in state:
        if m := re.fullmatch(r"convs\.(\d+)\.conv\.modulation\.weight", key):
            index_of[key] = int(m.group(1)) + 1
        elif include_rgb and (m := re.fullmatch(r"to_rgbs\.(\d+)\.conv\.modulation\.weight", key)):
            index_of[key] = 2 * int(m.group(1)) + 3
    found = [state[k].detach().cpu().double().numpy() for k, i in index_of.items() if k in state and i in layers]
    if not found:
        raise UserError(f"no style modulation weights for layers {layers}: the generator must have rosinality "
                        "key names (conv1.conv.modulation.weight, convs.N.conv.modulation.weight)")
    return found


def sefa_directions(generator: Any, k: int = 5, layers: str | Sequence[int] | None = None,
                    include_rgb: bool = False) -> list[Direction]:
    """The top-k SeFa directions of a generator (a `Generator` or `LoadedGenerator`), unit norm, acting on
    `layers` (default all). ToRGB modulations are left out by default, as in SeFa's and rosinality's code."""
    module = getattr(generator, "module", generator)
    num_ws = int(module.num_ws)
    chosen = layer_mask(layers, num_ws)
    weights = _modulation_weights(generator, chosen, include_rgb)
    a = np.concatenate(weights, axis=0)                              # [sum C, D]
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-12            # each channel's row to unit norm
    eigenvalues, eigenvectors = np.linalg.eigh(a.T @ a)              # ascending, columns are vectors
    order = np.argsort(-eigenvalues)[:k]
    directions = []
    for rank, col in enumerate(order):
        v = eigenvectors[:, col]
        v = v * np.sign(v[np.argmax(np.abs(v))])  # an eigenvector's sign is arbitrary: fix one
        vector = np.zeros((num_ws, v.shape[0]), np.float32)
        vector[chosen] = v  # a SeFa direction belongs to the layers it was factorised from
        directions.append(Direction(
            f"sefa{rank}", vector, chosen, 3.0,
            f"SeFa eigenvector {rank} (eigenvalue {eigenvalues[col]:.2f}) of layers {format_layers(chosen)}"))
    return directions


def format_layers(layers: Sequence[int]) -> str:
    """Compact text of a layer list: [0, 1, 2, 3, 8] -> '0-3,8'."""
    parts: list[str] = []
    run: list[int] = []
    for i in sorted(layers):
        if run and i != run[-1] + 1:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(i)
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


# --------------------------------------------------------------------------------- mean difference
def discover_mean_difference(codes: npt.ArrayLike, labels: npt.ArrayLike, groups: npt.ArrayLike | None = None,
                             balanced: bool = True, min_per_side: int = 1) -> FloatArray:
    """Direction = mean code of the samples with the attribute minus the mean of those without.

    codes [N, num_ws, D] (or [N, D]), labels bool [N]. With `groups` int [N] (clip or identity per sample)
    the contrast is taken within each group that has at least `min_per_side` samples on each side, and the
    per-group differences are averaged: equally (`balanced`, each clip counts once) or weighted by
    n_with * n_without / n (the inverse variance of a difference of means, so big clips count more).
    Returns the unnormalised difference, [num_ws, D] float32."""
    x = np.asarray(codes, dtype=np.float64)
    y = np.asarray(labels).astype(bool).reshape(-1)
    if x.shape[0] != y.shape[0]:
        raise UserError(f"{x.shape[0]} codes but {y.shape[0]} labels")
    if groups is None:
        if y.sum() < min_per_side or (~y).sum() < min_per_side:
            raise UserError(f"mean difference needs samples with and without the attribute; got {int(y.sum())} "
                            f"with and {int((~y).sum())} without")
        return (x[y].mean(axis=0) - x[~y].mean(axis=0)).astype(np.float32)
    g = np.asarray(groups).reshape(-1)
    if g.shape[0] != y.shape[0]:
        raise UserError(f"{g.shape[0]} group ids but {y.shape[0]} labels")
    total = np.zeros(x.shape[1:], dtype=np.float64)
    weight_sum = 0.0
    used = []
    for group in np.unique(g):
        member = g == group
        pos, neg = member & y, member & ~y
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        if n_pos < min_per_side or n_neg < min_per_side:
            continue
        weight = 1.0 if balanced else n_pos * n_neg / (n_pos + n_neg)
        total += weight * (x[pos].mean(axis=0) - x[neg].mean(axis=0))
        weight_sum += weight
        used.append(group)
    if not used:
        raise UserError(f"no group has at least {min_per_side} samples with and without the attribute "
                        f"({len(np.unique(g))} groups); label more samples or lower the threshold")
    log.debug("mean difference within %d of %d groups", len(used), len(np.unique(g)))
    return (total / weight_sum).astype(np.float32)


# ------------------------------------------------------------------------- project directions file
def save_directions(path: str | os.PathLike, directions: Sequence[Direction],
                    metadata: dict[str, str] | None = None) -> Path:
    """Write several named directions to one safetensors file (tensor per name, metadata as JSON);
    written to a temporary file and renamed, so a reader never sees half a file."""
    from safetensors.numpy import save  # to bytes: safetensors' own save_file leaves files at mode 0600

    names = [d.name for d in directions]
    if len(set(names)) != len(names) or not names:
        raise UserError(f"directions to save need distinct names, got {names}")
    records = {d.name: {"layers": d.layers, "default_strength": d.default_strength,
                        "description": d.description, "metadata": d.metadata} for d in directions}
    meta = {"format": DIRECTIONS_FORMAT, "version": DIRECTIONS_VERSION, "directions": json.dumps(records)}
    meta.update(metadata or {})
    out = Path(path)
    atomic_write_bytes(out, save({d.name: d.vector for d in directions}, metadata=meta))
    return out


def load_directions(path: str | os.PathLike, num_ws: int | None = None) -> dict[str, Direction]:
    """The named directions of a project directions file (save_directions), checked against `num_ws`."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: directions file not found")
    try:
        with safe_open(str(p), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in list(f.keys())}
    except SafetensorError as err:
        raise UserError(f"{p}: not a readable safetensors file ({err})") from None
    if meta.get("format") != DIRECTIONS_FORMAT:
        raise UserError(f"{p}: not a directions file (format {meta.get('format')!r}); write one with "
                        "`directions discover` or save_directions")
    records = json.loads(meta["directions"])
    out = {}
    for name, vector in tensors.items():
        if num_ws is not None and vector.shape[0] != num_ws:
            raise UserError(f"{p}: direction {name!r} has {vector.shape[0]} W+ rows, the generator {num_ws}; "
                            "use the directions made for this generator")
        rec = records.get(name, {})
        out[name] = Direction(name, vector, rec.get("layers", list(range(vector.shape[0]))),
                              float(rec.get("default_strength", 1.0)), rec.get("description", ""),
                              rec.get("metadata", {}))
    return out


def load_direction_set(paths: Sequence[str | os.PathLike], num_ws: int,
                       style_dim: int | None = None) -> dict[str, Direction]:
    """Directions from any mix of project directions files (.safetensors) and published single-direction
    files (.pt / .npy, named after the file: `smile.pt` -> "smile"), later files overriding earlier names.
    With `style_dim`, every direction must be that wide (the generator's W)."""
    found: dict[str, Direction] = {}
    for path in map(Path, paths):
        if path.suffix.lower() == ".safetensors":
            loaded = load_directions(path, num_ws)
        else:
            loaded = {path.stem: load_direction(path, num_ws, name=path.stem)}
        for name, direction in loaded.items():
            width = direction.vector.shape[1]
            if style_dim is not None and width != style_dim:
                raise UserError(f"{path}: direction {name!r} is {width} wide but the generator's W is {style_dim} "
                                "wide; use directions made for this generator")
        found.update(loaded)
    return found
