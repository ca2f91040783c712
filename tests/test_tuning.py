"""Iterative inversion, pivotal tuning per video and its cache (stream/tuning.py), `file --tune` and `enrol`,
on short real clips (../shared/data/faces, trimmed copies) with the demo pack or a random-weight pack."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engines import load_encoder, load_generator
from engines.cache import sha256_file
from engines.nets.stylegan2 import Generator, small_generator_config
from engines.nets.synthesis import synthesize
from stream import cli
from stream.config import FaceConfig, InversionSettings, ModelConfig, TuningSettings
from stream.faces.detect import make_detector
from stream.media import FileSource
from stream.modelpack import DEFAULT_PACK, load_pack
from stream.tuning import (
    ClipNetworks,
    collect_faces,
    encode,
    face_weights,
    far_code_sampler,
    fold_code_offset,
    invert,
    reconstruction_psnr,
    to_images,
    tune_for_video,
    tune_generator,
    tuned_cache,
    tuning_key,
)
from tests.media_clips import make_clip, trimmed_copy
from tests.random_pack import make_random_pack
from tests.reference_weights import FACES, require

# a few steps on two frames: enough to see each effect's direction, fast on a shared CPU
TINY = TuningSettings(every=4, max_frames=2, steps=2, batch=2, locality_batch=1,
                      invert=InversionSettings(steps=1, batch=2))


@pytest.fixture(scope="module")
def random_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_pack(tmp_path_factory.mktemp("pack")).root


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 8 frames of a real clip (an unseen person for the demo pack), stream-copied."""
    return trimmed_copy(require(FACES / "d19.mp4"), tmp_path_factory.mktemp("clip") / "d19_8.mp4", 8)


def test_folded_code_offset_draws_what_the_offset_drew() -> None:
    torch.manual_seed(0)
    g = Generator(**small_generator_config(size=16, width=16, n_mlp=1))
    w = torch.randn(2, g.num_ws, g.style_dim)
    offset = 0.5 * torch.randn(g.num_ws, g.style_dim)
    expected = synthesize(g, w + offset).detach()
    fold_code_offset(g, offset)
    assert torch.allclose(synthesize(g, w).detach(), expected, atol=1e-4)
    assert not torch.allclose(synthesize(g, w + offset).detach(), expected, atol=1e-2)


@pytest.mark.slow
def test_tuning_lowers_reconstruction_error_and_holds_far_codes(clip: Path) -> None:
    """Demo pack on an unseen person: the tuned copy draws the clip's faces better at their codes; at codes
    interpolated away from them its output stays within a bound of the original's, closer than a copy
    tuned without the locality term. (A dozen steps: the far change is smaller after more.)"""
    pack = load_pack(DEFAULT_PACK)
    generator, encoder = pack.load_generator(), pack.load_encoder()
    faces = collect_faces(clip, make_detector("dlib"), pack.crop_size, every=3, max_frames=3)
    size = generator.resolution
    targets, weights = to_images(faces.crops, size), face_weights(faces, size)
    codes = encode(encoder, faces.crops)
    original = generator.module
    refined = invert(original, codes, targets, weights, InversionSettings(steps=6, batch=3, lr=0.02))
    before, after_inversion = (reconstruction_psnr(original, c, targets) for c in (codes, refined))
    assert after_inversion > before  # the refined codes draw the crops better than the encoder's

    def far_sampler():
        return far_code_sampler(codes, original, mapping_trained=False, gen=torch.Generator().manual_seed(0))

    # far codes: half way (and more) from a pivot to a random code
    torch.manual_seed(5)
    reach = torch.linspace(0.5, 1.0, 6)[:, None, None]
    far_codes = codes[torch.arange(6) % len(codes)]
    far_codes = far_codes + reach * (far_sampler()(6) - far_codes)

    def far_change(tuned: Generator) -> float:  # mean |tuned - original| there, 0-255 units
        with torch.no_grad():
            return float((synthesize(tuned, far_codes) - synthesize(original, far_codes)).abs().mean() * 127.5)

    settings = TuningSettings(steps=12, batch=3, lr=1e-3, locality_batch=2, locality_weight=1.0)
    tuned = tune_generator(original, codes, targets, weights, settings, far_sampler())
    assert reconstruction_psnr(tuned, codes, targets) > before + 1.0
    free = tune_generator(original, codes, targets, weights, replace(settings, locality_weight=0.0), far_sampler())
    assert far_change(tuned) < 0.95 * far_change(free)
    assert far_change(tuned) < 20.0


def test_cache_is_reused_and_every_key_part_invalidates_it(clip: Path, random_pack: Path, tmp_path: Path) -> None:
    cache = tuned_cache(tmp_path / "cache")
    model, face = ModelConfig(pack=random_pack), FaceConfig()
    phases: list[str] = []
    first = tune_for_video(clip, model, face, TINY, cache=cache, on_step=lambda p, i, n: phases.append(p))
    assert first.tuning is not None and first.path.is_file() and "tune" in phases
    assert load_generator(first.path).resolution == load_pack(random_pack).load_generator().resolution

    phases.clear()
    again = tune_for_video(clip, model, face, TINY, cache=cache, on_step=lambda p, i, n: phases.append(p))
    assert again.tuning is None and again.path == first.path and phases == []  # nothing recomputed

    other = replace(TINY, steps=3)
    changed = tune_for_video(clip, model, face, other, cache=cache)
    assert changed.tuning is not None and changed.path != first.path

    # every other key part: the video's bytes, the generator's, the encoder's, the detector
    networks = ClipNetworks.from_model(model)
    key = tuning_key(clip, networks, "dlib", TINY)
    other_clip = trimmed_copy(clip, tmp_path / "shorter.mp4", 7)
    modified = {}
    for name in ("generator", "encoder"):
        copy = tmp_path / f"{name}.safetensors"
        shutil.copyfile(getattr(networks, name), copy)
        with open(copy, "r+b") as handle:  # one byte of the weights, past the header
            handle.seek(-1, 2)
            byte = handle.read(1)
            handle.seek(-1, 2)
            handle.write(bytes([byte[0] ^ 1]))
        modified[name] = copy
    variants = [
        tuning_key(other_clip, networks, "dlib", TINY),
        tuning_key(clip, ClipNetworks(modified["generator"], networks.encoder, networks.crop_size), "dlib", TINY),
        tuning_key(clip, ClipNetworks(networks.generator, modified["encoder"], networks.crop_size), "dlib", TINY),
        tuning_key(clip, networks, "insightface", TINY),
    ]
    assert len({key.digest(), *(v.digest() for v in variants)}) == 5
    assert all(cache.load(v) is None for v in variants)


def test_interrupted_tuning_leaves_no_cache_entry(clip: Path, random_pack: Path, tmp_path: Path) -> None:
    cache = tuned_cache(tmp_path / "cache")

    def stop_while_tuning(phase: str, done: int, total: int) -> None:
        if phase == "tune":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune_for_video(clip, ModelConfig(pack=random_pack), FaceConfig(), TINY, cache=cache, on_step=stop_while_tuning)
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] if (tmp_path / "cache").exists() else []
    assert leftovers == []
    # and the next run tunes afresh and publishes a complete, loadable entry
    done = tune_for_video(clip, ModelConfig(pack=random_pack), FaceConfig(), TINY, cache=cache)
    assert done.tuning is not None and load_generator(done.path).num_ws > 0


def test_tune_on_a_clip_without_a_face_is_one_line(random_pack: Path, tmp_path: Path, capsys,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEEDIT_CACHE_DIR", str(tmp_path / "cache"))
    video = tmp_path / "pattern.mp4"
    make_clip(video, frames=6, size=(96, 64))
    out = tmp_path / "out.mp4"
    code = cli.main(["file", str(video), "-o", str(out), "--tune", "--pack", str(random_pack), "--edit", "smile=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and "no face" in err[-1] and str(video) in err[-1]
    assert not [line for line in err if "Traceback" in line]
    assert not out.exists() and not list(tmp_path.glob(".out.mp4*"))
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


@pytest.mark.slow
def test_file_tune_renders_with_the_tuned_generator(clip: Path, random_pack: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEEDIT_CACHE_DIR", str(tmp_path / "cache"))
    # --no-gate: the random pack draws every face badly, and the confidence gate would weaken both edits to nothing
    common = [str(clip), "--pack", str(random_pack), "--edit", "smile=1", "--codec", "lossless", "--no-gate"]
    tiny = ["--tune-steps", "3", "--tune-frames", "2", "--invert-steps", "1"]
    plain, tuned = tmp_path / "plain.mkv", tmp_path / "tuned.mkv"
    assert cli.main(["file", "-o", str(plain), "--model", "gan", *common]) == 0
    assert cli.main(["file", "-o", str(tuned), "--tune", *tiny, *common]) == 0
    with FileSource(plain) as a, FileSource(tuned) as b:
        pairs = list(zip((f.image for f in a.frames()), (f.image for f in b.frames())))
    assert len(pairs) == 8
    assert any(not np.array_equal(x, y) for x, y in pairs)  # the tuned generator drew the change
    assert len(list((tmp_path / "cache" / "tuned").glob("*.safetensors"))) == 1


def test_tune_refuses_the_student_path(clip: Path, random_pack: Path, tmp_path: Path, capsys) -> None:
    code = cli.main(["file", str(clip), "-o", str(tmp_path / "o.mp4"), "--tune", "--model", "student",
                     "--pack", str(random_pack)])
    assert code == 2 and "student path" in capsys.readouterr().err


@pytest.mark.slow
def test_enrol_writes_a_pack_that_the_file_job_loads(clip: Path, random_pack: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEEDIT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "me"
    code = cli.main(["enrol", str(clip), "--out", str(out), "--pack", str(random_pack), "--edit", "smile",
                     "--max-steps", "3", "--frames", "6", "--tune-steps", "2", "--tune-frames", "2",
                     "--invert-steps", "1", "--threads", "1"])
    assert code == 0
    personal = load_pack(out)
    assert set(personal.students) == {"smile"} and personal.default_edit == ("smile", 1.0)
    assert personal.extra["enrolled"]["clip"] == clip.name
    tuned = list((tmp_path / "cache" / "tuned").glob("*.safetensors"))
    assert len(tuned) == 1 and sha256_file(personal.generator) != sha256_file(load_pack(random_pack).generator)
    assert load_encoder(personal.encoder).input_size == load_encoder(load_pack(random_pack).encoder).input_size
    assert not list(tmp_path.glob(".me.*"))  # no staging folder left
    edited = tmp_path / "edited.mp4"
    assert cli.main(["file", str(clip), "-o", str(edited), "--pack", str(out)]) == 0 and edited.is_file()
