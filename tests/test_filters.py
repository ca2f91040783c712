"""One Euro filter: pass-through start, smoothing when still, following when moving, shapes, errors."""
import numpy as np
import pytest

from engines.errors import UserError
from stream.filters import OneEuroFilter


def test_first_sample_passes_and_constant_stays_constant():
    f = OneEuroFilter(min_cutoff=1.0, beta=0.5)
    x = np.arange(6, dtype=np.float64).reshape(3, 2)
    assert np.array_equal(f(x, 0.0), x)
    for i in range(1, 20):
        assert np.allclose(f(x, i / 30), x)


def test_noise_on_a_still_signal_is_reduced():
    rng = np.random.default_rng(0)
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    noisy = rng.normal(0.0, 1.0, size=(300, 68, 2))
    out = np.array([f(x, i / 30) for i, x in enumerate(noisy)])
    assert np.abs(np.diff(out[30:], axis=0)).mean() < 0.25 * np.abs(np.diff(noisy[30:], axis=0)).mean()


def test_beta_reduces_lag_on_a_ramp():
    ramp = np.arange(120, dtype=np.float64) * 2.0  # 60 units per second at 30 fps

    def lag(beta: float) -> float:
        f = OneEuroFilter(min_cutoff=1.0, beta=beta)
        out = np.array([f(np.array([x]), i / 30)[0] for i, x in enumerate(ramp)])
        return float((ramp[-1] - out[-1]) / 2.0)  # in frames

    assert lag(0.0) > 3.0
    assert lag(1.0) < 1.0


def test_reset_repeated_time_and_shape_errors():
    f = OneEuroFilter()
    f(np.zeros(3), 0.0)
    held = f(np.ones(3), 0.0)  # same timestamp: no new time information, output held
    assert np.array_equal(held, np.zeros(3))
    with pytest.raises(UserError):
        f(np.zeros(4), 1.0)
    f.reset()
    assert np.array_equal(f(np.ones(4), 2.0), np.ones(4))
    with pytest.raises(UserError):
        OneEuroFilter(min_cutoff=0.0)
