"""ReStyle: checkpoints against ../shared/reference, the iteration rule, and its use as a pipeline encoder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import engines
from engines.errors import CheckpointError, UserError
from engines.nets.encoders import BackboneEncoder, ProgressiveBackboneEncoder
from engines.nets.stylegan2 import Generator, small_generator_config
from engines.restyle import RestyleEncoder, RestyleInversion, pipeline_encoder, pool_to
from tests.reference_weights import REFERENCE, manifest_state_dict, relative_l2, require

MANIFEST = "restyle_encoder_manifest.json"
CLASSES = {"BackboneEncoder": BackboneEncoder, "ProgressiveBackboneEncoder": ProgressiveBackboneEncoder}
TOL = 1e-4


def _opts(encoder_type: str, **extra: object) -> dict:
    return {"encoder_type": encoder_type, "input_nc": 6, "output_size": 1024, "n_iters_per_batch": 5,
            "dataset_type": "ffhq_encode", "start_from_latent_avg": True, "device": "cuda:0",
            "lpips_lambda": 0.8, "batch_size": 8, **extra}


def _restyle_file(path: Path, encoder_type: str, decoder: dict[str, torch.Tensor],
                  latent_avg: torch.Tensor, **opts: object) -> Path:
    """A checkpoint laid out as ReStyle's training writes it."""
    encoder = manifest_state_dict(MANIFEST, f"{encoder_type}@1024")
    state = {**{f"encoder.{k}": v for k, v in encoder.items()}, **{f"decoder.{k}": v for k, v in decoder.items()}}
    torch.save({"state_dict": state, "latent_avg": latent_avg, "opts": _opts(encoder_type, **opts),
                "global_step": 10, "best_val_loss": 0.1}, path)
    return path


# ------------------------------------------------------------------------------------ reference parity
def test_state_dict_equals_manifest() -> None:
    manifest = json.loads(require(REFERENCE / MANIFEST).read_text())
    for name, cls in CLASSES.items():
        with torch.device("meta"):
            state = cls().state_dict()
        assert list(state) == list(manifest[f"{name}@1024"])
        assert {k: list(v.shape) for k, v in state.items()} == \
            {k: v["shape"] for k, v in manifest[f"{name}@1024"].items()}


@pytest.mark.slow
@pytest.mark.parametrize("encoder_type", list(CLASSES))
def test_checkpoint_matches_reference_codes(tmp_path: Path, encoder_type: str) -> None:
    ref = np.load(require(REFERENCE / f"restyle_{encoder_type}_ref.npz"))
    decoder = manifest_state_dict("rosinality_generator_manifest.json", "g_ema@1024")
    path = _restyle_file(tmp_path / "restyle.pt", encoder_type, decoder, torch.zeros(18, 512), n_iters_per_batch=3)
    encoder = engines.load_encoder(path)
    assert isinstance(encoder, RestyleEncoder) and type(encoder.module) is CLASSES[encoder_type]
    assert (encoder.input_nc, encoder.iterations, encoder.decoder.resolution) == (6, 3, 1024)
    codes = encoder.encode(np.concatenate([ref["image"], ref["prev"]], axis=1))  # target first, then previous
    assert codes.shape == (1, 18, 512)
    assert relative_l2(codes, ref["codes"]) <= TOL

    if encoder_type == "ProgressiveBackboneEncoder":  # and through the project's safetensors (once: 1 GB)
        from engines.checkpoints import convert_checkpoint

        convert_checkpoint(path, tmp_path / "restyle.safetensors")
        path.unlink()
        again = engines.load_encoder(tmp_path / "restyle.safetensors")
        assert isinstance(again, RestyleEncoder) and (again.architecture, again.iterations) == ("restyle-e4e", 3)
        assert torch.equal(again.latent_avg, encoder.latent_avg)
        assert all(torch.equal(a, b) for a, b in zip(again.module.state_dict().values(),
                                                     encoder.module.state_dict().values()))


def test_checkpoint_problems_are_one_line_errors(tmp_path: Path) -> None:
    resnet = tmp_path / "restyle_cars.pt"
    torch.save({"state_dict": {"encoder.x": torch.zeros(1)}, "opts": _opts("ResNetBackboneEncoder")}, resnet)
    with pytest.raises(CheckpointError, match="restyle_cars.pt: ReStyle's ResNetBackboneEncoder .* not supported"):
        engines.load_encoder(resnet)
    missing = tmp_path / "missing.pt"
    torch.save({"state_dict": {"encoder.input_layer.0.weight": torch.zeros(64, 6, 3, 3),
                               "decoder.style.1.weight": torch.zeros(512, 512)},
                "latent_avg": torch.zeros(512), "opts": _opts("BackboneEncoder")}, missing)
    with pytest.raises(CheckpointError, match="missing.pt: BackboneEncoder encoder weights do not fit.*Missing key") as err:
        engines.load_encoder(missing)
    assert "\n" not in str(err.value)
    stray = tmp_path / "stray.pt"
    torch.save({"state_dict": {"encoder.input_layer.0.weight": torch.zeros(64, 6, 3, 3), "discriminator.w": torch.zeros(1)},
                "opts": _opts("BackboneEncoder")}, stray)
    with pytest.raises(CheckpointError, match=r"unexpected entries \['discriminator.w'\]"):
        engines.load_encoder(stray)


# -------------------------------------------------------------------------------- the iteration rule
class _TinyEncoder(nn.Module):
    """A small 6-channel encoder with the attributes RestyleEncoder reads (fast stand-in for IR-SE-50)."""

    input_size, input_nc, style_dim = 32, 6, 512

    def __init__(self, num_ws: int) -> None:
        super().__init__()
        self.num_ws = num_ws
        self.net = nn.Sequential(nn.Conv2d(6, 8, 4, 4), nn.LeakyReLU(0.2), nn.Flatten(),
                                 nn.Linear(8 * 8 * 8, num_ws * 512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.3 * self.net(x).view(-1, self.num_ws, 512)


def _tiny_pair(resolution: int = 128) -> tuple[RestyleEncoder, Generator]:
    torch.manual_seed(0)
    generator = Generator(**small_generator_config(resolution, width=16, style_dim=512)).eval()
    module = _TinyEncoder(generator.num_ws).eval()
    latent_avg = torch.randn(512) * 0.5  # a [512] vector: every row
    return RestyleEncoder(module, latent_avg, "restyle-psp", None, generator, iterations=3), generator


def test_iterations_follow_the_rule() -> None:
    encoder, generator = _tiny_pair(128)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    codes, images = engines.restyle_iterations(encoder, generator, image, 3, return_images=True)
    assert codes.shape == (3, 2, generator.num_ws, 512) and images.shape == (3, 2, 3, 128, 128)

    def decode(w: torch.Tensor) -> torch.Tensor:  # training-style synthesis (constant noise), 4x4 block mean
        with torch.no_grad():
            full = generator.synthesis(w)
        return full.reshape(*full.shape[:2], 32, 4, 32, 4).mean(dim=(3, 5))

    avg = encoder.latent_avg[None].expand(2, -1, -1)
    previous, expected = decode(encoder.latent_avg[None]).expand(2, -1, -1, -1), avg
    for k in range(3):
        expected = torch.from_numpy(encoder.encode(torch.cat([image, previous], 1).numpy())) + expected
        assert relative_l2(codes[k], expected) < 1e-5, k
        previous = decode(expected)
        assert relative_l2(pool_to(images[k], 32), previous) < 1e-4, k
    # steps correct each other: the step-to-step change is not zero, and step 0 differs from latent_avg
    assert (codes[1] - codes[0]).abs().max() > 1e-3 and (codes[0] - avg).abs().max() > 1e-3


def test_pipeline_encoder_is_the_whole_inversion_and_exports(tmp_path: Path) -> None:
    from engines.export import export_onnx

    encoder, generator = _tiny_pair(64)
    module, size, latent_avg = pipeline_encoder(encoder, engines.LoadedGenerator(generator, None), 2)
    assert isinstance(module, RestyleInversion) and size == 32 and latent_avg is None
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        final = module(image)
    steps = engines.restyle_iterations(encoder, generator, image, 2)
    assert torch.allclose(final, steps[-1], atol=1e-5)
    onnx = export_onnx(module, {"image": image}, tmp_path / "restyle.onnx", output_names=("codes",))
    got = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(None, {"image": image.numpy()})[0]
    assert relative_l2(got, final.numpy()) < 1e-4
    with pytest.raises(UserError, match="at least 1"):
        encoder.inversion(generator, 0)
    other = Generator(**small_generator_config(32, width=16, style_dim=512))
    with pytest.raises(UserError, match="predicts 10 styles but the generator takes 8"):
        engines.restyle_iterations(encoder, other, image, 1)


# ------------------------------------------------------------------------------------------- pipeline
def test_session_runs_a_restyle_encoder_for_the_configured_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's GAN path with a ReStyle encoder: the tiny 6-channel network above stands in for the
    1 GB IR-SE-50 file (too slow to run per frame here); loading such files is tested above."""
    from stream.config import ModelConfig
    from stream.session import EditNetworks
    from tests.random_pack import make_random_pack
    from tests.test_session import ScriptedTracker, face

    pack = make_random_pack(tmp_path / "pack").root
    torch.manual_seed(1)
    tiny = _TinyEncoder(num_ws=8).eval()
    calls: list[int] = []
    tiny.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    restyle = RestyleEncoder(tiny, torch.zeros(512), "restyle-e4e", None, None, iterations=5)
    monkeypatch.setattr(engines, "load_encoder", lambda path: restyle)
    frame = np.random.default_rng(1).integers(0, 256, size=(160, 240, 3), dtype=np.uint8)
    networks = EditNetworks(ModelConfig(pack=pack, path="gan", backend="torch", gate=False, restyle_iterations=3))
    session = networks.session(ScriptedTracker([face(120, 80, 40, track_id=0)]), faces="all", smoother=None)
    session.set_edits([("smile", 1.0)])
    calls.clear()
    out = session.process(frame, 0.0)
    assert calls == [6, 6, 6]  # three steps per face, each on [target, previous]
    assert out.shape == frame.shape and not np.array_equal(out, frame)
    with pytest.raises(UserError, match="--restyle-iterations 0: choose 1 to 20"):
        ModelConfig(pack=pack, restyle_iterations=0)


def test_command_lines_carry_the_step_count(tmp_path: Path) -> None:
    from stream.cli import build_parser
    from stream.commands.file import job_config, model_config

    clip = tmp_path / "in.mp4"
    clip.write_bytes(b"")  # parsing only: job_config does not open the input
    parser = build_parser()
    args = parser.parse_args(["file", str(clip), "-o", str(tmp_path / "out.mp4"), "--restyle-iterations", "3"])
    assert job_config(args).model.restyle_iterations == 3
    args = parser.parse_args(["file", str(clip), "-o", str(tmp_path / "out.mp4")])
    assert job_config(args).model.restyle_iterations is None  # the checkpoint's own n_iters_per_batch
    assert model_config(parser.parse_args(["demo"])).restyle_iterations is None
    for command in ("serve", "camera"):
        assert parser.parse_args([command, "--restyle-iterations", "2"]).restyle_iterations == 2
