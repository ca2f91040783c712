"""From a trained autoencoder to the shipped pack: directions, measurements, contact sheet, files.

Order: encode every crop with the EMA encoder; find the directions on the training frames; measure the
reconstructions and every edit on frames the networks never saw (the held-out end of each seen clip,
and the held-out clip); write the pack (stream.modelpack.save_pack), its MODEL_CARD.md, the contact sheet
and the metrics JSON (which the card and bench/RESULTS.md are written from).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from stream.edits.attributes import IdentityEmbedder, cosine_similarity
from stream.edits.directions import Direction
from stream.edits.editor import LatentEdit, edit_offset
from stream.losses import psnr
from stream.modelpack import save_pack
from training.data import ClipCrops, concat
from training.directions import discover_directions, encode_all
from training.edit_metrics import decode, evaluate_edits, teacher_edit, upsampled
from training.losses import psnr_uint8
from training.model_card import write_model_card
from training.pack import PackData, TrainState
from training.sheets import grid, save_png, stack

log = logging.getLogger(__name__)

CROP_SIZE = 256
STRENGTHS = [-3.0, 2.0, 4.0, 6.0]
SHEET_STRENGTHS = [-3.0, 0.0, 2.0, 4.0, 6.0]
# An edit's pipeline strength 1.0 (Direction.default_strength, in units of the vector) is the measured
# strength with the largest change of its own attribute on held-out frames among those that keep
# identity (dlib cosine); beyond it the edits of this small generator turn into blotches
# (bench/pack_contact_sheet.png).
MIN_IDENTITY_COSINE = 0.95
# The pack's residual goes back as brightness only (stream.pipeline.residual_change): this small generator's
# colour errors painted purple lips and green casts over the face at the strengths that show an edit, and
# the edits' shapes (an open mouth, a wider one) are brightness changes (bench/pack_contact_sheet.png).
RESIDUAL_COLOUR = "luma"
# An edit counts as working when, at its calibrated strength, it moves its own attribute by at least this
# share of its training contrast on held-out frames of seen people, and the right way on the unseen clip.
MIN_SHARE_OF_GAP = 0.25
IDENTITY_FACES = 30  # faces per reconstruction row whose identity is measured (dlib descriptors are slow)


def _subsample(idx: npt.NDArray[np.int64], count: int) -> npt.NDArray[np.int64]:
    return idx[np.linspace(0, len(idx) - 1, min(count, len(idx))).round().astype(int)]


def reconstruction_metrics(state: TrainState, data: PackData, codes: npt.NDArray[np.float32],
                           crops: npt.NDArray[np.uint8], landmarks: npt.NDArray[np.float32] | None = None,
                           embedder: IdentityEmbedder | None = None) -> dict[str, dict[str, float]]:
    """PSNR of G(E(x)) against x at the model's size, and of up(G(E(x))) against the 256 px crop (held-out
    clips together, and each on its own when there are several); with an embedder, the identity cosine of
    up(G(E(x))) against the crop (dlib descriptors in the crop's landmarks, IDENTITY_FACES per row)."""
    out = {}
    names = data.split.clip_names
    per_clip = [(f"heldout_clip {names[k]}", data.split.heldout_clip[data.split.clip_id[data.split.heldout_clip] == k])
                for k in np.unique(data.split.clip_id[data.split.heldout_clip])]
    for name, idx in [("train", _subsample(data.split.train, 300)), ("heldout_frames", data.split.heldout_frames),
                      ("heldout_clip", data.split.heldout_clip)] + (per_clip if len(per_clip) > 1 else []):
        images = decode(state.generator_ema, codes[idx])
        recon = upsampled(images, crops.shape[1])
        out[name] = {"faces": len(idx),
                     "psnr_model_size": float(psnr(torch.from_numpy(images), data.images[torch.from_numpy(idx)]).mean()),
                     "psnr_crop_size": psnr_uint8(recon, crops[idx])}
        if embedder is not None and landmarks is not None:
            pick = _subsample(np.arange(len(idx)), IDENTITY_FACES)
            pairs = [(embedder.embed(crops[idx[i]], landmarks[idx[i]]), embedder.embed(recon[i], landmarks[idx[i]]))
                     for i in pick]
            out[name]["identity_cosine"] = float(np.mean([cosine_similarity(a, b) for a, b in pairs]))
    return out


def calibrate_strength(rows: list[dict]) -> float:
    """The positive vector strength of one edit's held-out rows that shows it best (see MIN_IDENTITY_COSINE)."""
    positive = [r for r in rows if r["strength"] > 0]
    kept = [r for r in positive if r["identity_cosine"] >= MIN_IDENTITY_COSINE]
    return max(kept or positive[:1], key=lambda r: r["target_change"])["strength"]


def _row(rows: list[dict], edit: str, strength: float) -> dict:
    return next(r for r in rows if r["edit"] == edit and r["strength"] == strength)


def verify(direction: Direction, reports: dict[str, list[dict]]) -> bool:
    """Does the edit change its attribute (see MIN_SHARE_OF_GAP)? Records the verdict in the direction."""
    seen = _row(reports["heldout_frames"], direction.name, direction.default_strength)
    unseen = _row(reports["heldout_clip"], direction.name, direction.default_strength)
    gap = direction.metadata["score_gap"]
    # a direction whose training contrast did not even separate the groups cannot work
    works = gap > 0 and seen["target_change"] >= MIN_SHARE_OF_GAP * gap and unseen["target_change"] > 0
    direction.metadata["verified"] = works
    if not works:
        direction.description += " (measured: it does not change the attribute; see the pack's MODEL_CARD.md)"
    return works


def pick_default(rows: list[dict], directions: list[Direction]) -> tuple[str, float]:
    """The edit that, at its calibrated strength on held-out frames, moves its attribute furthest relative to
    its training contrast, times how concentrated its change is on its face part (share of the change
    inside the part over the part's share of the crop): a blotchy edit loses to a clean one."""
    def effect(d: Direction) -> float:
        row = _row(rows, d.name, d.default_strength)
        return row["target_change"] / max(abs(d.metadata["score_gap"]), 1e-6) * row["part_share"] / row["part_area"]
    return max(directions, key=effect).name, 1.0


def pack_sheet(state: TrainState, crops: npt.NDArray[np.uint8], codes: npt.NDArray[np.float32],
               directions: list[Direction], rows: npt.NDArray[np.int64], row_labels: list[str]) -> npt.NDArray[np.uint8]:
    """One block per edit: input, reconstruction, then the residual edit at each strength."""
    g = state.generator_ema
    base = decode(g, codes[rows])
    recon = upsampled(base, crops.shape[1])
    blocks = []
    for d in directions:
        columns = [crops[rows], recon]
        for s in SHEET_STRENGTHS:
            offset = edit_offset([LatentEdit(d, s)], d.num_ws, d.vector.shape[1])
            columns.append(teacher_edit(g, crops[rows], codes[rows], offset, base, RESIDUAL_COLOUR))
        cells = [[col[i] for col in columns] for i in range(len(rows))]
        blocks.append(grid(cells, ["input", "G(E(x))"] + [f"{s:+g}" for s in SHEET_STRENGTHS], row_labels,
                           title=f"{d.name} (layers {d.layers}): crop + {RESIDUAL_COLOUR} of up(G(w + s*d) - G(w))"))
    return stack(blocks)


def _published(metrics: dict | None) -> dict:
    """The numbers a previous pack's card gave: its held-out clips' reconstruction and its student's speed."""
    if not metrics:
        return {}
    faces = metrics["faces"]
    student = metrics.get("student") or {}
    return {"heldout_clips": faces.get("heldout_clip_names") or [faces.get("heldout_clip_name")],
            "heldout_clip": metrics["reconstruction"]["heldout_clip"], "heldout_frames": metrics["reconstruction"]["heldout_frames"],
            **({"teacher_ms": student["teacher_ms"], "student_ms": student["student_ms"]} if student else {})}


def export_pack(state: TrainState, data: PackData, clips: list[ClipCrops], out_dir: Path, argv_note: str,
                sheet_path: Path | None = None, baseline: TrainState | None = None,
                skipped: dict[str, str] | None = None, baseline_published: dict | None = None) -> Path:
    """Write the pack to out_dir; returns the model card's path. `baseline` (an earlier pack's networks) gets
    its reconstructions measured on the same frames, for the card's comparison; `skipped`: clips the crop
    cache could not use, with the reason; `baseline_published`: the baseline pack's own metrics.json, whose
    numbers (on its own split) the card quotes beside it."""
    t0 = time.monotonic()
    crops, landmarks = concat(clips)
    codes = encode_all(state.encoder_ema, data.images)
    directions = discover_directions(codes, landmarks, data.split, generator=state.generator_ema,
                                     crop_size=crops.shape[1])
    embedder = IdentityEmbedder()
    recon = reconstruction_metrics(state, data, codes, crops, landmarks, embedder)
    baseline_recon = None if baseline is None else reconstruction_metrics(
        baseline, data, encode_all(baseline.encoder_ema, data.images), crops, landmarks, embedder)
    reports = {}
    for name, idx in (("heldout_frames", _subsample(data.split.heldout_frames, 40)),
                      ("heldout_clip", _subsample(data.split.heldout_clip, 30))):
        reports[name] = [r.row() for r in evaluate_edits(state.generator_ema, crops[idx], codes[idx], landmarks[idx],
                                                         directions, STRENGTHS, embedder, RESIDUAL_COLOUR)]
    for d in directions:
        d.default_strength = calibrate_strength([r for r in reports["heldout_frames"] if r["edit"] == d.name])
    working = [d for d in directions if verify(d, reports)]
    default_edit = pick_default(reports["heldout_frames"], working or directions)
    names = data.split.clip_names
    rows = np.concatenate([_subsample(data.split.heldout_frames, 5), _subsample(data.split.heldout_clip, 2)])
    labels = [f"{names[data.split.clip_id[i]]} #{i}" for i in rows]
    sheet = pack_sheet(state, crops, codes, directions, rows, labels)
    sheet_path = sheet_path or out_dir.parents[1] / "bench" / "pack_contact_sheet.png"
    save_png(sheet, sheet_path)
    metrics = {"step": state.step, "train_minutes": round(state.seconds / 60, 1), "config": state.config.__dict__,
               "faces": {"train": len(data.split.train), "heldout_frames": len(data.split.heldout_frames),
                         "heldout_clip": len(data.split.heldout_clip), "heldout_clip_names": state.config.holdout_clips,
                         "clips": names, "skipped": skipped or {}},
               "reconstruction": recon, "edits": reports,
               **({"baseline": {"source": baseline.history[0].get("init_from_pack", "an earlier pack"),
                                "step": baseline.step, "reconstruction": baseline_recon,
                                "published": _published(baseline_published)}} if baseline else {}),
               "directions": {d.name: {"layers": d.layers, **d.metadata} for d in directions},
               "default_edit": list(default_edit),
               "default_strengths": {d.name: d.default_strength for d in directions}, "command": argv_note,
               "residual_colour": RESIDUAL_COLOUR,
               "history": state.history[:1],
               "export_minutes": round((time.monotonic() - t0) / 60, 1)}
    save_pack(out_dir, crop_size=CROP_SIZE, generator=state.generator_ema, encoder=state.encoder_ema,
              directions=directions, default_edit=default_edit, residual_colour=RESIDUAL_COLOUR,
              extra={"model_card": "MODEL_CARD.md", "trained_steps": state.step,
                     "train_minutes": metrics["train_minutes"]})
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    return write_model_card(out_dir / "MODEL_CARD.md", metrics, None)
