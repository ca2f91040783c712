"""MODEL_CARD.md for the demo pack and its "Demo pack" section of bench/RESULTS.md, written from the
measured metrics (training/export.py and training/distill.py), so the numbers in prose are the numbers run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stream.report import write_section
from training.data import MAX_FACES_PER_CLIP

CLIP_SOURCES = Path(__file__).with_name("clip_sources.json")

SECTION = "## Demo pack"


def _edit_table(rows: list[dict]) -> list[str]:
    lines = ["| edit | vector strength | own attribute change (pasted crop) | (decoded G only) | identity cosine | "
             "other attributes' change | PSNR vs input | change inside the part (its area) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        others = ", ".join(f"{k} {v:+.3f}" for k, v in r["other_changes"].items())
        lines.append(f"| {r['edit']} | {r['strength']:+g} | {r['target_change']:+.4f} | {r['target_change_decoded']:+.4f} "
                     f"| {r['identity_cosine']:.3f} | {others} | {r['psnr_vs_input']:.1f} dB | {r['part_share']:.0%} ({r['part_area']:.0%}) |")
    return lines


def _strengths_line(metrics: dict[str, Any]) -> str:
    pairs = ", ".join(f"{name} {s:g}" for name, s in metrics["default_strengths"].items())
    return (f"Strengths are in units of the direction vector; the pipeline's strength 1.0 is, per edit, vector "
            f"strength {pairs} (each direction's default_strength: the measured strength with the largest own "
            "change that keeps identity cosine >= 0.95).")


def _published_line(published: dict[str, Any]) -> str:
    clip, frames = published["heldout_clip"], published["heldout_frames"]
    speed = (f"; its student ran in {published['student_ms']:.1f} ms against the teacher's {published['teacher_ms']:.1f} ms"
             if "student_ms" in published else "")
    return (f"As its own card published them (its own split): held-out clip {', '.join(published['heldout_clips'])} "
            f"{clip['psnr_model_size']:.2f} dB over {clip['faces']} frames, held-out frames of seen people "
            f"{frames['psnr_model_size']:.2f} dB over {frames['faces']}{speed}.")


def metrics_markdown(metrics: dict[str, Any], student: dict[str, Any] | None) -> list[str]:
    """The measured numbers as markdown (shared by the model card and bench/RESULTS.md)."""
    rec = metrics["reconstruction"]
    baseline = metrics.get("baseline")
    lines = ["### Reconstruction (EMA weights; PSNR of G(E(x)) against x)", "",
             *([f"Rows marked 'previous pack' are the pack this one started from ({baseline['source']}, step "
                f"{baseline['step']}), measured on the same frames."] if baseline else []),
             *([_published_line(baseline["published"])] if baseline and baseline.get("published") else []), "",
             f"| faces | n | PSNR at {metrics['config']['size']} px | PSNR of the up-sampled output vs the 256 px crop "
             "| identity cosine (dlib, up-sampled output vs crop) |", "|---|---|---|---|---|"]
    for name, r in rec.items():
        for label, row in ((name, r), (f"{name}, previous pack", (baseline or {}).get("reconstruction", {}).get(name))):
            if row:
                identity = f"{row['identity_cosine']:.3f}" if "identity_cosine" in row else "-"
                lines.append(f"| {label} | {row['faces']} | {row['psnr_model_size']:.2f} dB | "
                             f"{row['psnr_crop_size']:.2f} dB | {identity} |")
    lines += ["", "### Directions (within-clip mean difference of each training clip's highest- vs lowest-scoring "
              "frames, localised to the mouth / eyes: change outside that part projected out)", "",
              "| edit | works | frames contrasted (lowest, highest fraction) | layers (80 % of norm) | clips "
              "| score gap at strength 1 | per-layer norm (before localising) |", "|---|---|---|---|---|---|---|"]
    for name, d in metrics["directions"].items():
        works = {True: "yes", False: "**no**"}.get(d.get("verified"), "-")
        lines.append(f"| {name} | {works} | {d['contrast']} | {d['layers']} | {d['clips']} | {d['score_gap']:+.4f} "
                     f"| {d['layer_norm']} |")
    lines += ["", "'Works': at its pipeline strength 1.0 the edit moves its own attribute by at least a quarter of "
              "its training contrast on held-out frames and the right way on the held-out clip (training/export.verify)."]
    for key, title in (("heldout_frames", "held-out frames of seen people"),
                       ("heldout_clip", f"the held-out clips ({', '.join(metrics['faces']['heldout_clip_names'])}, "
                                        "unseen people)")):
        lines += ["", f"### Edits on {title}", "",
                  "Attribute changes are landmark scores (stream/edits/attributes.py) of the edited crop minus the "
                  "unedited crop, measured in the same box; 'score gap' above is the training contrast at vector strength 1. "
                  "'Change inside the part' is the share of the squared pixel change inside the edit's mouth or eye box "
                  "(in brackets: the box's share of the crop; a uniform change would score that). "
                  + _strengths_line(metrics), ""]
        lines += _edit_table(metrics["edits"][key])
    if student:
        lines += ["", f"### Distilled student ({student['edit']} at pipeline strength {student['strength']:g})", "",
                  f"- ResidualStudent {student['config']}, {student['params'] / 1e6:.2f} M parameters, "
                  f"{student['steps']} steps in {student['train_minutes']:.1f} min on "
                  f"{student['pairs']} (crop, teacher) pairs at {student['size']} px.",
                  f"- Student vs teacher PSNR: held-out frames {student['psnr_heldout_frames']:.2f} dB, held-out clip "
                  f"{student['psnr_heldout_clip']:.2f} dB (identity, i.e. no edit, vs teacher: "
                  f"{student['psnr_identity_heldout_frames']:.2f} / {student['psnr_identity_heldout_clip']:.2f} dB).",
                  f"- Own attribute change, held-out frames: teacher {student['teacher_change_heldout_frames']:+.4f}, "
                  f"student {student['student_change_heldout_frames']:+.4f}; held-out clip: teacher "
                  f"{student['teacher_change_heldout_clip']:+.4f}, student {student['student_change_heldout_clip']:+.4f}.",
                  f"- CPU, 1 thread, batch 1, 256 px crop: teacher (encoder + 2 x synthesis + residual) "
                  f"{student['teacher_ms']:.1f} ms, student {student['student_ms']:.1f} ms: "
                  f"speed ratio {student['teacher_ms'] / student['student_ms']:.1f}x."]
    return lines


TERMS = ("For non-commercial research use only. Most of the clips it was trained on carry non-commercial or "
         "research-only terms (the table under Data), and the FFHQ-derived StyleGAN2 / e4e checkpoints that users bring "
         "instead of this pack are non-commercial research checkpoints too. The clips are not redistributed here.")


def _clip_rows(faces: dict[str, Any]) -> list[str]:
    """Every clip with its role, source and licence (training/clip_sources.json)."""
    table = json.loads(CLIP_SOURCES.read_text())["clips"]
    held = set(faces["heldout_clip_names"])
    lines = ["| clip | role | source (repository : path) | licence |", "|---|---|---|---|"]
    for name in faces["clips"]:
        entry = table.get(name, {"source": "not recorded", "licence": "unknown"})
        role = "held out (unseen person)" if name in held else "training (last frames held out)"
        lines.append(f"| {name} | {role} | {entry['source']} | {entry['licence']} |")
    for name, reason in faces.get("skipped", {}).items():
        entry = table.get(name, {"source": "not recorded", "licence": "unknown"})
        lines.append(f"| {name} | not used: {reason} | {entry['source']} | {entry['licence']} |")
    return lines


def write_model_card(path: Path, metrics: dict[str, Any], student: dict[str, Any] | None) -> Path:
    cfg = metrics["config"]
    faces = metrics["faces"]
    people = len(faces["clips"]) - len(faces["heldout_clip_names"])
    start = next((h for h in metrics.get("history", [])[:1] if "init_from_pack" in h), None)
    lines = [
        "# Demo model pack (trained in this project)", "",
        "A small W+ autoencoder (DemoEncoder + narrow StyleGAN2 synthesis) and three landmark-attribute edit "
        f"directions, trained on the CPU on {people} people's short face clips. It exists so that the first run "
        "shows a real edit with nothing downloaded. It is weak: judge it by the numbers and the contact sheet "
        "(bench/pack_contact_sheet.png), not as a StyleGAN.", "",
        "## Terms", "", TERMS, "",
        "## Data",
        f"- ../shared/data/faces: {len(faces['clips'])} clips, one person each; frames (evenly spaced, at most "
        f"{MAX_FACES_PER_CLIP} per clip) aligned to the FFHQ crop (stream/faces, dlib HOG + 68 landmarks) at 256 px, "
        f"down-sampled to {cfg['size']} px for the networks.",
        f"- Training: {faces['train']} crops. Held out: the last {cfg['holdout_frac']:.0%} of each other clip "
        f"({faces['heldout_frames']} frames) and the whole clips {', '.join(faces['heldout_clip_names'])} "
        f"({faces['heldout_clip']} frames, unseen people).", "", *_clip_rows(faces), "",
        "## Networks",
        f"- generator.safetensors: StyleGAN2 (engines/nets/stylegan2.py) {cfg['size']} px, channels "
        f"{cfg['generator']['channels']}, {2 * (cfg['size'].bit_length() - 1) - 2} W+ entries. Its mapping network "
        "is untrained (the pack only uses synthesis from encoded codes).",
        f"- encoder.safetensors: DemoEncoder {cfg['encoder']} (codes are W+ directly, no latent_avg).",
        "- directions.safetensors: mouth_open, smile, eyes_open (training/directions.py).", "",
        "## Training",
        *([f"- Started from the pack at {start['init_from_pack']} (step {start['step']}, {start['minutes']} min "
           "trained; its own card tells how it was grown from 64 px), fine-tuned on the clips above "
           "(training/finetune.py: same networks, fresh optimizer)."] if start else []),
        *[f"- Grown from a {h['grown_from_size']} px run trained {h['step']} steps ({h['minutes']} min): "
          "training/grow.py doubles the resolution of both networks, reproducing the small pair at the start."
          for h in metrics.get("history", [])[:1] if "grown_from_size" in h],
        f"- Command (resumable; its last call, which resumed the checkpoint and exported): `{metrics['command']}`.",
        f"- {metrics['step']} steps, batch {cfg['batch']}, Adam lr {cfg['lr']:g} (warm-up {cfg['warmup_steps']} steps), "
        f"EMA {cfg['ema_decay']}, L1 + (1 - SSIM) weighted towards the face, mouth and eyes"
        + ("; crops at a clip's expression extremes drawn more often (training/pack.expression_weights)"
           if cfg.get("balance_expressions") else "") + "; "
        f"{metrics['train_minutes']} min of training steps on 1 shared CPU thread (plus evaluation and checkpoints).",
        f"- Directions, measurements and export: {metrics['export_minutes']} min.", "",
        "## Default edit",
        f"- {metrics['default_edit'][0]} at pipeline strength {metrics['default_edit'][1]:g} (vector strength "
        f"{metrics['default_edit'][1] * metrics['default_strengths'][metrics['default_edit'][0]]:g}), picked by "
        "training/export.pick_default among the working edits: the largest own change relative to the training "
        "contrast, times how concentrated the change is on the edit's part.",
        *[f"- {note}" for note in metrics.get("notes", [])], "",
        "## Metrics", "", *metrics_markdown(metrics, student), "",
        "## Limits",
        f"- {people} people: an unseen face inverts to a blurry, partly generic face (see the held-out clips' PSNR). "
        "The runtime moves the input's own pixels by the motion the generator draws and adds only the rest of "
        "`up(G(w') - G(w))` (stream/motion.py), so the input's detail stays and only the edit's change comes from "
        "this generator.",
        f"- {cfg['size']} px: an open eye is {max(2, cfg['size'] // 32)}-{max(3, cfg['size'] // 20)} px tall; small "
        "changes there are hard to render and to measure.",
        *(["- The residual goes back as brightness only (pack.json residual_colour luma): an edit that should change "
           "colour cannot; for these expression edits that is what keeps the generator's colour errors off the face."]
          if metrics.get("residual_colour") == "luma" else []),
        f"- Directions are averages over {people} clips' expressions; they also move correlated attributes (the other "
        "attributes' columns above show how much).",
        "- No adversarial loss: the generator is a decoder, not a sampler; random z through its mapping gives noise.",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_results_section(path: Path, metrics: dict[str, Any], student: dict[str, Any] | None) -> Path:
    """Replace (or append) the '## Demo pack' section of bench/RESULTS.md, keeping every other section."""
    body = "\n".join([SECTION, "", "Measured by `run_stream.py train-pack --export` and `run_stream.py distill` "
                      "(assets/demo_pack/MODEL_CARD.md has the data and commands).", "",
                      f"Default edit: {metrics['default_edit'][0]} at pipeline strength {metrics['default_edit'][1]:g}.",
                      *[f"- {note}" for note in metrics.get("notes", [])], "",
                      *metrics_markdown(metrics, student), ""])
    return write_section(path, body)
