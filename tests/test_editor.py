import numpy as np
import pytest
import torch

from engines.errors import UserError
from stream.edits.directions import Direction
from stream.edits.editor import LatentEdit, apply_edits, edit_offset


def _direction(name="d", num_ws=6, dim=8, layers=(1, 2), seed=0):
    rng = np.random.default_rng(seed)
    return Direction(name, rng.standard_normal((num_ws, dim)), list(layers))


def test_edit_moves_only_its_layers_by_strength():
    d = _direction()
    w = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)
    out = apply_edits(w, [LatentEdit(d, 1.5)])
    np.testing.assert_allclose(out[[1, 2]], w[[1, 2]] + 1.5 * d.vector[[1, 2]], rtol=1e-6)
    np.testing.assert_array_equal(out[[0, 3, 4, 5]], w[[0, 3, 4, 5]])
    assert out.dtype == np.float32
    # an explicit mask replaces the direction's own
    out = apply_edits(w, [LatentEdit(d, 1.0, "4-")])
    np.testing.assert_array_equal(out[:4], w[:4])
    np.testing.assert_allclose(out[4:], w[4:] + d.vector[4:], rtol=1e-6)


def test_edits_compose_additively_in_any_order_on_batches():
    a, b = _direction("a", seed=0), _direction("b", layers=(0, 5), seed=1)
    w = np.random.default_rng(2).standard_normal((3, 6, 8)).astype(np.float32)
    edits = [LatentEdit(a, 2.0), LatentEdit(b, -1.0)]
    both = apply_edits(w, edits)
    np.testing.assert_allclose(both, apply_edits(apply_edits(w, edits[:1]), edits[1:]), atol=1e-6)
    np.testing.assert_allclose(both, apply_edits(w, edits[::-1]), atol=1e-6)
    np.testing.assert_allclose(both - w, np.broadcast_to(edit_offset(edits, 6, 8), w.shape), atol=1e-6)
    np.testing.assert_array_equal(apply_edits(w, []), w)
    np.testing.assert_array_equal(apply_edits(w, [LatentEdit(a, 0.0)]), w)


def test_torch_codes_stay_torch():
    d = _direction()
    w = torch.zeros(2, 6, 8, dtype=torch.float64)
    out = apply_edits(w, [LatentEdit(d, 1.0)])
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out[0, 1].numpy(), d.vector[1], rtol=1e-6)


def test_mismatched_codes_and_bad_masks_are_user_errors():
    d = _direction()
    with pytest.raises(UserError, match="load the direction for this generator"):
        apply_edits(np.zeros((18, 8), np.float32), [LatentEdit(d, 1.0)])
    with pytest.raises(UserError):
        apply_edits(np.zeros(8, np.float32), [LatentEdit(d, 1.0)])
    with pytest.raises(UserError):
        apply_edits(np.zeros((6, 8), np.float32), [LatentEdit(d, 1.0, "0-9")])
    with pytest.raises(UserError, match="outside"):
        Direction("bad", np.zeros((6, 8)), [6])
