import numpy as np
import pytest

from engines.errors import UserError
from stream.edits.smoothing import (
    CodeSmoother,
    IdentityAnchor,
    OneEuroParams,
    anchor_offline,
    gaussian_weights,
    make_code_smoother,
    smooth_offline,
)

FPS = 30.0


def _jittery_codes(frames=120, num_ws=6, dim=4, noise=0.1, seed=0):
    """A slowly moving code plus per-frame encoder jitter: (noisy, clean) [T, num_ws, dim]."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None, None] / FPS
    clean = np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6, (1, num_ws, dim))).astype(np.float32)
    return (clean + noise * rng.standard_normal(clean.shape)).astype(np.float32), clean


def _rms(x):
    return float(np.sqrt(np.mean(np.square(x))))


def test_causal_smoother_cuts_jitter_and_tracks_motion():
    noisy, clean = _jittery_codes()
    smoother = make_code_smoother()
    out = np.stack([smoother(code, i / FPS) for i, code in enumerate(noisy)])
    np.testing.assert_array_equal(out[0], noisy[0])  # the first frame passes unchanged
    assert out.dtype == np.float32
    # frame-to-frame change (what flicker is made of) drops, and the smoothed code stays near the truth
    assert _rms(np.diff(out, axis=0)) < 0.5 * _rms(np.diff(noisy, axis=0))
    # a moving code is followed with bounded lag; a still one is brought much closer to the truth
    assert _rms(out[10:] - clean[10:]) < 1.5 * _rms(noisy[10:] - clean[10:])
    still = np.broadcast_to(clean[:1], clean.shape)
    still_noisy = still + (noisy - clean)
    smoother = make_code_smoother()
    out = np.stack([smoother(code, i / FPS) for i, code in enumerate(still_noisy)])
    assert _rms(out[10:] - still[10:]) < 0.5 * _rms(still_noisy[10:] - still[10:])


def test_smoother_without_filter_is_the_identity_and_params_validate():
    noisy, _ = _jittery_codes(frames=5)
    passthrough = CodeSmoother(params=None)
    for i, code in enumerate(noisy):
        np.testing.assert_array_equal(passthrough(code, i / FPS), code)
    with pytest.raises(UserError):
        OneEuroParams(min_cutoff=0.0).make()


def test_identity_anchor_holds_fine_layers_near_the_running_mean():
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((200, 18, 4)).astype(np.float32)
    anchor = IdentityAnchor("fine", weight=0.75, horizon=1000)
    out = np.stack([anchor(c) for c in codes])
    np.testing.assert_array_equal(out[:, :8], codes[:, :8])                   # coarse and middle untouched
    assert out[:, 8:].std(axis=0).mean() < 0.4 * codes[:, 8:].std(axis=0).mean()
    # with a long horizon the running mean is the cumulative mean of the frames so far
    expected = 0.25 * codes[-1, 8:] + 0.75 * codes[:, 8:].mean(axis=0)
    np.testing.assert_allclose(out[-1, 8:], expected, atol=1e-5)
    np.testing.assert_array_equal(IdentityAnchor(weight=0.0)(codes[0]), codes[0])
    with pytest.raises(UserError):
        IdentityAnchor(weight=1.5)
    smoother = make_code_smoother(anchor_weight=0.5)
    assert smoother.anchor is not None and smoother.anchor.weight == 0.5


def test_offline_filter_has_no_lag_and_keeps_ends():
    ramp = np.linspace(0, 1, 50, dtype=np.float32)[:, None]
    # a centred symmetric window reproduces a straight line exactly away from the ends: no lag
    np.testing.assert_allclose(smooth_offline(ramp, sigma=2.0)[8:-8], ramp[8:-8], atol=1e-6)
    np.testing.assert_allclose(smooth_offline(np.full((10, 3), 2.0), sigma=3.0), 2.0, atol=1e-6)
    noisy, clean = _jittery_codes()
    offline = smooth_offline(noisy, sigma=2.0)
    causal = make_code_smoother()
    live = np.stack([causal(c, i / FPS) for i, c in enumerate(noisy)])
    assert offline.shape == noisy.shape
    assert _rms(np.diff(offline, axis=0)) < 0.5 * _rms(np.diff(noisy, axis=0))
    # with look-ahead the smoothed code is closer to the truth than the causal one, which lags
    assert _rms(offline[10:] - clean[10:]) < _rms(live[10:] - clean[10:])
    np.testing.assert_allclose(gaussian_weights(1.5).sum(), 1.0)
    assert len(gaussian_weights(1.0, radius=2)) == 5
    with pytest.raises(UserError):
        smooth_offline(noisy, sigma=0.0)


def test_offline_anchor_pulls_towards_the_track_mean():
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((40, 10, 4)).astype(np.float32)
    out = anchor_offline(codes, "fine", weight=0.5)
    fine = [l for l in range(10) if l >= 4]  # "fine" on a 10-entry W+
    np.testing.assert_allclose(out[:, fine].mean(axis=0), codes[:, fine].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(out[:, fine].std(axis=0), 0.5 * codes[:, fine].std(axis=0), rtol=1e-4)
    np.testing.assert_array_equal(out[:, :4], codes[:, :4])
    with pytest.raises(UserError):
        anchor_offline(codes[0], weight=0.5)
