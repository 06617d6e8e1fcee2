"""The compiled DSP kernels against the plain numpy formulas they implement."""

from __future__ import annotations

import numpy as np
import pytest

from percepnet import pitch
from percepnet.analysis import Analyzer, pad_signal, step_buffers
from percepnet.bands import BAND_WEIGHTS, band_cross, band_energy, interp_band_gain
from percepnet.comb import CONTEXT_SAMPLES, HISTORY_SAMPLES, TAP_OFFSETS, comb_filter, comb_weights
from percepnet.constants import BUFFER_SAMPLES, EPS, NB_BANDS, NB_BINS, POSTFILTER_BETA
from percepnet.gains import apply_gains, postfilter
from tests.signals import add_noise, speechlike

RNG = np.random.default_rng(11)


def _spectra(n: int) -> np.ndarray:
    return RNG.standard_normal((n, NB_BINS)) + 1j * RNG.standard_normal((n, NB_BINS))


def test_band_sums_match_the_weight_matrix() -> None:
    a, b = _spectra(5), _spectra(5)
    np.testing.assert_allclose(band_energy(a), np.abs(a) ** 2 @ BAND_WEIGHTS.T, rtol=1e-12)
    np.testing.assert_allclose(
        band_cross(a, b), (a * b.conj()).real @ BAND_WEIGHTS.T, rtol=1e-10, atol=1e-10
    )
    g = RNG.random((3, 2, NB_BANDS))
    np.testing.assert_allclose(interp_band_gain(g), g @ BAND_WEIGHTS, rtol=1e-12)


def test_coarse_scores_match_direct_correlation() -> None:
    seg = RNG.standard_normal((2, pitch.SEGMENT_D))
    got = pitch.coarse_scores(seg)
    win = seg[:, -pitch.WIN_D :]
    r = np.empty((2, pitch.LAG_D_MAX - pitch.LAG_D_MIN + 1))
    for m, lag in enumerate(range(pitch.LAG_D_MIN, pitch.LAG_D_MAX + 1)):
        past = seg[:, pitch.SEGMENT_D - pitch.WIN_D - lag : pitch.SEGMENT_D - lag]
        r[:, m] = (past * win).sum(1) / np.sqrt((past**2).sum(1) * (win**2).sum(1) + 1e-12)
    lags = np.arange(pitch.LAG_D_MIN, pitch.LAG_D_MAX + 1)
    for m, lag in enumerate(lags):
        subs = [
            r[:, round(lag / d) - pitch.LAG_D_MIN] for d in (2, 3) if lag // d >= pitch.LAG_D_MIN
        ]
        sub = np.maximum(np.max(subs, axis=0), 0.0) if subs else 0.0
        np.testing.assert_allclose(got[:, m], r[:, m] - pitch.SUBHARMONIC_PENALTY * sub, atol=1e-9)


def test_refine_picks_the_best_full_rate_lag() -> None:
    true_period = 203
    cycle = RNG.standard_normal(true_period)
    history = np.resize(cycle, (1, pitch.REFINE_HISTORY)) + 0.1 * RNG.standard_normal(
        (1, pitch.REFINE_HISTORY)
    )
    period, corr = pitch.refine(history, np.array([true_period // pitch.DECIMATION]))
    assert period[0] == true_period
    win = history[0, -960:]
    past = history[0, -960 - true_period : -true_period]
    want = (win @ past) / np.sqrt((win @ win) * (past @ past))
    assert corr[0] == pytest.approx(want, abs=1e-9)
    assert corr[0] > 0.95


def test_comb_filter_is_the_weighted_sum_of_delayed_windows() -> None:
    context = RNG.standard_normal((3, CONTEXT_SAMPLES))
    period = np.array([60, 300, 768])
    w = comb_weights(period)
    want = np.zeros((3, context.shape[1] - CONTEXT_SAMPLES + 960))
    for i in range(3):
        for t, k in enumerate(TAP_OFFSETS):
            if w[i, t]:
                s = HISTORY_SAMPLES - k * period[i]
                want[i] += w[i, t] * context[i, s : s + 960]
    np.testing.assert_allclose(comb_filter(context, period, w), want, atol=1e-12)


def test_postfilter_and_mixing_match_the_formulas() -> None:
    Y, P = _spectra(4), _spectra(4)
    E_y = band_energy(Y)
    g, r = RNG.random((4, NB_BANDS)), RNG.random((4, NB_BANDS))
    g_w = g * np.sin(0.5 * np.pi * g)
    ratio = ((g * g * E_y).sum(1, keepdims=True) + EPS) / (
        (g_w * g_w * E_y).sum(1, keepdims=True) + EPS
    )
    G = np.sqrt((1 + POSTFILTER_BETA) * ratio / (1 + POSTFILTER_BETA * ratio**2))
    np.testing.assert_allclose(postfilter(g, E_y), G * g_w, rtol=1e-12)
    Z = Y + (r @ BAND_WEIGHTS) * (P - Y)
    scale = G * g_w * np.sqrt((E_y + EPS) / (np.abs(Z) ** 2 @ BAND_WEIGHTS.T + EPS))
    np.testing.assert_allclose(apply_gains(Y, P, E_y, g, r), Z * (scale @ BAND_WEIGHTS), rtol=1e-9)
    np.testing.assert_allclose(
        apply_gains(Y, P, E_y, g, None, use_postfilter=False), Y * (g @ BAND_WEIGHTS), rtol=1e-12
    )


@pytest.mark.parametrize("block", [1, 2, 7])
def test_analysis_blocks_agree_with_one_pass(block: int) -> None:
    """Any split of the steps into blocks gives the same frames (state carried exactly)."""
    x = add_noise(0.3 * speechlike(1.0, RNG), 10.0, RNG)
    n = len(x) // 480
    padded = pad_signal(x, n)
    whole = Analyzer().process(step_buffers(padded, 0, n))
    an = Analyzer()
    parts = [an.process(step_buffers(padded, i, min(block, n - i))) for i in range(0, n, block)]
    np.testing.assert_array_equal(np.concatenate([p.period for p in parts]), whole.period)
    np.testing.assert_allclose(
        np.concatenate([p.features for p in parts]), whole.features, rtol=0, atol=1e-12
    )
    assert step_buffers(padded, 0, 1).shape == (1, BUFFER_SAMPLES)
