"""ResidualStudent: identity when untrained, any input size, JSON config, ONNX export parity."""
from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from engines.nets.student import ResidualStudent
from tests.reference_weights import relative_l2


def _trained_like(student: ResidualStudent, seed: int = 0) -> ResidualStudent:
    """Give the zero-initialised output layer weights, so the delta is not trivially zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.to_delta.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return student.eval()


def test_untrained_student_is_exactly_the_identity() -> None:
    img = torch.rand(2, 3, 64, 48) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(ResidualStudent()(img), img)


@pytest.mark.parametrize("height,width", [(256, 256), (64, 96), (72, 40), (37, 51)])
def test_output_has_the_input_size(height: int, width: int) -> None:
    student = _trained_like(ResidualStudent(width=16, depth=1))
    img = torch.rand(1, 3, height, width) * 2 - 1
    with torch.inference_mode():
        delta = student(img) - img
    assert delta.shape == img.shape and delta.abs().max() > 0


def test_config_round_trips_through_json() -> None:
    student = ResidualStudent(width=24, depth=3, levels=2, max_width=48)
    clone = ResidualStudent(**json.loads(json.dumps(student.config)))
    assert clone.stride == student.stride == 8
    assert {k: v.shape for k, v in clone.state_dict().items()} == \
        {k: v.shape for k, v in student.state_dict().items()}


def test_student_exports_to_onnx_and_matches_onnxruntime(tmp_path: Path) -> None:
    torch.manual_seed(0)
    student = _trained_like(ResidualStudent())
    img = torch.rand(1, 3, 128, 128) * 2 - 1
    path = tmp_path / "student.onnx"
    torch.onnx.export(student, (img,), str(path), input_names=["img"], output_names=["out"], dynamo=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ours = session.run(None, {"img": img.numpy()})[0]
    with torch.inference_mode():
        ref = student(img).numpy()
    # Compare the deltas: the output is dominated by the input itself.
    assert relative_l2(ours - img.numpy(), ref - img.numpy()) <= 1e-4
