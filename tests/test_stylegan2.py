"""StyleGAN2 generator: rosinality layout, the FIR twins, and the export-safe form against the fused one."""
from __future__ import annotations

import json

import pytest
import torch

from engines.nets.stylegan2 import ExportSafeSynthesis, Generator, small_generator_config, upfirdn2d
from tests.reference_weights import REFERENCE, relative_l2, require


def _randomised(generator: Generator, seed: int = 0) -> Generator:
    """Random weights everywhere, including asymmetric FIR kernels (the twins must flip them alike)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in generator.state_dict().items():
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith("kernel"):
                tensor.add_(0.1 * noise)
            elif name.endswith("modulation.bias"):
                tensor.copy_(1 + 0.1 * noise)
            else:
                tensor.copy_(noise)
    return generator.eval()


@pytest.mark.parametrize("config", ["g_ema@256", "g_ema@512", "g_ema@1024"])
def test_state_dict_equals_rosinality_manifest(config: str) -> None:
    manifest = json.loads(require(REFERENCE / "rosinality_generator_manifest.json").read_text())[config]
    size = int(config.split("@")[1])
    state = Generator(size).state_dict()
    assert list(state) == list(manifest)
    assert {k: list(v.shape) for k, v in state.items()} == {k: v["shape"] for k, v in manifest.items()}


@pytest.mark.parametrize("up,pad", [(1, (1, 1)), (1, (2, 2)), (2, (2, 1)), (2, (1, 0))])
def test_upfirdn2d_conv_twin_matches_reference(up: int, pad: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 9, 7, generator=gen)
    kernel = torch.randn(4, 4, generator=gen)  # asymmetric on purpose
    ref = upfirdn2d(x, kernel, up=up, pad=pad, impl="ref")
    ours = upfirdn2d(x, kernel, up=up, pad=pad, impl="conv")
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size,conv_clamp", [(64, None), (32, 0.5)])
def test_export_safe_matches_fused(size: int, conv_clamp: float | None) -> None:
    g = _randomised(Generator(**small_generator_config(size, width=32, style_dim=64), conv_clamp=conv_clamp))
    wplus = torch.randn(3, g.num_ws, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fused = g.synthesis(wplus)
        safe = g.export_safe()(wplus)
    assert safe.shape == fused.shape == (3, 3, size, size)
    assert relative_l2(safe.numpy(), fused.numpy()) <= 1e-5
    assert float((safe - fused).abs().max()) <= 1e-5 * float(fused.abs().max())


def test_export_safe_passes_gradients_to_wplus() -> None:
    g = _randomised(Generator(**small_generator_config(16, width=16, style_dim=32)))
    wplus = torch.randn(2, g.num_ws, 32, generator=torch.Generator().manual_seed(4), requires_grad=True)
    (fused_grad,) = torch.autograd.grad(g.synthesis(wplus).square().mean(), wplus)
    (safe_grad,) = torch.autograd.grad(g.export_safe()(wplus).square().mean(), wplus)
    assert relative_l2(safe_grad.numpy(), fused_grad.numpy()) <= 1e-5


def test_export_safe_has_only_constant_weights() -> None:
    g = _randomised(Generator(**small_generator_config(32, width=16, style_dim=32)))
    safe = g.export_safe()
    assert isinstance(safe, ExportSafeSynthesis)
    assert not any(p.requires_grad for p in safe.parameters())
    # the snapshot does not follow later changes of the trainable generator
    before = safe(torch.zeros(1, g.num_ws, 32))
    with torch.no_grad():
        g.input.input.add_(1.0)
    torch.testing.assert_close(safe(torch.zeros(1, g.num_ws, 32)), before)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_export_safe_runs_in_onnxruntime() -> None:
    ort = pytest.importorskip("onnxruntime")
    import io

    g = _randomised(Generator(**small_generator_config(32, width=16, style_dim=32)))
    safe = g.export_safe()
    wplus = torch.randn(2, g.num_ws, 32, generator=torch.Generator().manual_seed(3))
    buffer = io.BytesIO()
    torch.onnx.export(safe, (wplus,), buffer, input_names=["wplus"], output_names=["image"], dynamo=False,
                      opset_version=18)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (image,) = session.run(None, {"wplus": wplus.numpy()})
    assert relative_l2(image, safe(wplus).detach().numpy()) <= 1e-5


def test_small_config_shapes_and_mean_latent() -> None:
    config = small_generator_config(128, width=32, style_dim=128, n_mlp=2)
    assert set(config["channels"]) == {4, 8, 16, 32, 64, 128}
    g = Generator(**config).eval()
    assert g.num_ws == 12 and g.resolution == 128
    assert g.mapping(torch.randn(2, 128)).shape == (2, 128)
    with torch.no_grad():
        assert g.synthesis(torch.randn(1, 12, 128)).shape == (1, 3, 128, 128)
    mean = g.mean_latent(256)
    assert mean.shape == (1, 128)
    torch.testing.assert_close(mean, g.mean_latent(256))
    assert Generator(**g.config).state_dict().keys() == g.state_dict().keys()


def test_config_round_trips_through_json() -> None:
    g = Generator(**small_generator_config(64, width=16, style_dim=32), conv_clamp=256.0)
    again = Generator(**json.loads(json.dumps(g.config)))
    assert again.config == g.config
    assert [t.shape for t in again.state_dict().values()] == [t.shape for t in g.state_dict().values()]
