"""Local edits on people the demo pack never saw: where the change lands, with and without confinement.

    python bench/local_edits.py [--clips d19 lx01 sp04] [--frames 48] [--tune-steps 60] [--write-results]

Each clip's first --frames frames are cut losslessly to a temporary file; then, with the demo pack on the
generator path (`file ... --model gan`), each edit at strength 1 runs
- "whole face": G(w') - G(w) added on the whole face, no gate (how edits went back before regions);
- "region + gate": the same confined to the edit's region (stream/regions.py), weighed by the confidence
  gate (`--no-motion`);
- "motion": the default: the crop's own pixels moved by the motion the generator draws, plus what the
  motion does not explain, in the region, the latter gated (stream/motion.py);
- "motion + tune": the same with the generator tuned to the cut clip first (`file --tune`, shortened
  by --tune-steps / --tune-frames / --invert-steps; --tune-steps 0 leaves it out);
- "student": the pack's distilled student for the edits it has (`--model student`), in the region;
and a strength-0 run gives the re-encoding-only figure. `evaluate` (stream/evaluate.py) measures each output
against the cut input: change in the mouth, on the rest of the face ("collateral"), the attributes'
change, identity, TL-ID / TG-ID and flicker; the file job reports G(w)'s mean fidelity (PSNR inside the face).
--write-results replaces the "Local edits" section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.config import FileJobConfig, ModelConfig
from stream.evaluate import FaceMeasurer, evaluate_videos
from stream.filejob import run_file_job
from stream.media import FileSink, FileSource
from stream.media.sink import EncoderSettings
from stream.modelpack import DEFAULT_PACK, load_pack
from stream.report import write_section
from stream.session import EditNetworks

FACES = ROOT.parent / "shared" / "data" / "faces"
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Local edits"
EDITS = ("mouth_open", "smile")


def cut(clip: Path, out: Path, frames: int) -> Path:
    """The clip's first `frames` frames, stored losslessly (no audio: only the face is measured)."""
    with FileSource(clip) as source, FileSink(out, source.info, settings=EncoderSettings(codec="lossless"),
                                              overwrite=True) as sink:
        for index, frame in enumerate(source.frames()):
            if index >= frames:
                break
            sink.write_frame(frame)
    return out


def tune(clip: Path, args: argparse.Namespace) -> tuple[Path, float, float, float]:
    """The cut clip's tuned generator: (path, seconds, PSNR before, after) on its tuning frames."""
    from stream.config import FaceConfig, InversionSettings, TuningSettings
    from stream.tuning import tune_for_video

    settings = TuningSettings(steps=args.tune_steps, max_frames=args.tune_frames,
                              invert=InversionSettings(steps=args.invert_steps))
    start = time.perf_counter()
    tuned = tune_for_video(clip, ModelConfig(path="gan"), FaceConfig(), settings)
    seconds = time.perf_counter() - start
    report = tuned.tuning
    return tuned.path, seconds, report.psnr_encoded if report else float("nan"), \
        report.psnr_tuned if report else float("nan")


def run(clip: Path, out: Path, edit: str, strength: float, confined: bool, motion: bool,
        tuned: Path | None = None, path: str = "gan") -> tuple[float, float]:
    """Edit `clip` into `out`; (seconds, mean fidelity of G(w) in dB)."""
    original = EditNetworks.region
    if not confined:
        EditNetworks.region = lambda self, name: "face"  # type: ignore[method-assign]
    try:
        config = FileJobConfig(input=clip, output=out, edits=((edit, strength),), overwrite=True,
                               model=ModelConfig(path=path, gate=confined, motion=motion,
                                                 tuned_generator=tuned))
        start = time.perf_counter()
        result = run_file_job(config)
        return time.perf_counter() - start, result.gate.mean_fidelity
    finally:
        EditNetworks.region = original  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="+", default=["d19", "lx01", "sp04"])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--tune-steps", type=int, default=60)
    parser.add_argument("--tune-frames", type=int, default=12)
    parser.add_argument("--invert-steps", type=int, default=20)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args()
    measurer = FaceMeasurer()
    students = set(load_pack(DEFAULT_PACK).students)
    rows, tunings = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.clips:
            clip = cut(FACES / f"{name}.mp4", Path(tmp) / f"{name}.mkv", args.frames)
            runs = [("re-encode only", EDITS[0], 0.0, True, False, None)]
            runs += [(mode, edit, 1.0, confined, motion, None) for edit in EDITS
                     for mode, confined, motion in (("whole face", False, False), ("region + gate", True, False),
                                                    ("motion", True, True))]
            if args.tune_steps:
                tuned, seconds, before, after = tune(clip, args)
                tunings.append((name, seconds, before, after))
                runs += [("motion + tune", edit, 1.0, True, True, tuned) for edit in EDITS]
            runs += [("student", edit, 1.0, True, True, None) for edit in EDITS if edit in students]
            for mode, edit, strength, confined, motion, generator in runs:
                out = Path(tmp) / f"{name}_{edit}_{mode}_{strength}.mp4".replace(" ", "").replace("+", "")
                seconds, fidelity = run(clip, out, edit, strength, confined, motion, generator,
                                        "student" if mode == "student" else "gan")
                report = evaluate_videos(clip, out, every=2, measurer=measurer)
                attr = report.attributes
                row = (name, edit if strength else "-", mode, fidelity, report.change_mouth, report.collateral,
                       attr["mouth_open"][1] - attr["mouth_open"][0], attr["smile"][1] - attr["smile"][0],
                       report.identity_cosine, report.tl_id, report.tg_id, report.flicker, seconds)
                rows.append(row)
                print(" | ".join(str(round(v, 3)) if isinstance(v, float) else str(v) for v in row), flush=True)
    lines = [SECTION, "",
             (f"`python bench/local_edits.py --clips {' '.join(args.clips)} --frames {args.frames}` on "
             f"{platform.machine()} ({os.cpu_count()} cores, shared with other jobs), demo pack, `--model gan`, "
             "edits at strength 1, H.264 crf 18. None of these people is in the shipped pack's training set. "
             "Changes are mean |output - input| in 0-255 units at full resolution (stream/evaluate.py); "
             "collateral = the face outside the mouth and eyes; attribute changes are landmark scores "
             "(mouth_open: inner-lip gap over the inter-ocular distance). fidelity = PSNR of G(w) against the "
             "crop inside the face mask, the confidence gate's input."), "",
             ("| clip | edit | paste | fidelity dB | mouth change | collateral | mouth_open | smile | identity | "
              "TL-ID | TG-ID | flicker | s |"), "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        name, edit, mode, fid, mouth, rest, mo, sm, ident, tl, tg, fl, sec = row
        lines.append(f"| {name} | {edit} | {mode} | {fid:.1f} | {mouth:.2f} | {rest:.2f} | {mo:+.3f} | {sm:+.3f} | "
                     f"{ident:.3f} | {tl:.4f} | {tg:.4f} | {fl:.3f} | {sec:.0f} |")
    if tunings:
        lines += ["", (f"Tuning (`--tune-steps {args.tune_steps} --tune-frames {args.tune_frames} --invert-steps "
                       f"{args.invert_steps}`, shorter than `file --tune`'s defaults): PSNR of G(w) on the tuning "
                       "frames before and after, and the time it took."), "",
                  "| clip | before dB | after dB | seconds |", "|---|---|---|---|"]
        lines += [f"| {name} | {before:.1f} | {after:.1f} | {seconds:.0f} |" for name, seconds, before, after in tunings]
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        write_section(RESULTS, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
