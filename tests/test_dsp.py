"""DSP facts against known answers: window, bands, reconstruction, pitch, comb filter."""

from __future__ import annotations

import numpy as np
import pytest

from percepnet import pitch
from percepnet.analysis import Analyzer, pad_signal, step_buffers
from percepnet.bands import BAND_CENTRES, BAND_WEIGHTS, band_centres, hz_to_erb
from percepnet.comb import HANN_WEIGHTS, comb_filter, comb_noise_gain, comb_weights
from percepnet.constants import (
    BIN_HZ,
    BUFFER_SAMPLES,
    FRAME_SIZE,
    HISTORY_SAMPLES,
    LATENCY_MS,
    LATENCY_SAMPLES,
    LOOKAHEAD_SAMPLES,
    MAX_BAND_HZ,
    MIN_BAND_BINS,
    NB_BANDS,
    SAMPLE_RATE,
    WINDOW_SIZE,
)
from percepnet.enhancer import Enhancer, enhance_signal
from percepnet.stft import WINDOW
from tests.signals import add_noise, harmonic


def test_window_is_power_complementary() -> None:
    half = WINDOW_SIZE // 2
    np.testing.assert_allclose(WINDOW[:half] ** 2 + WINDOW[half:] ** 2, 1.0, atol=1e-12)


def test_latency_is_30_ms() -> None:
    assert LATENCY_MS == 30.0
    assert LATENCY_SAMPLES == 1440


def test_bands_cover_0_to_20khz_with_weights_summing_to_one() -> None:
    assert len(BAND_CENTRES) == NB_BANDS
    assert BAND_CENTRES[0] == 0
    assert BAND_CENTRES[-1] * BIN_HZ == MAX_BAND_HZ
    top = int(MAX_BAND_HZ / BIN_HZ)
    np.testing.assert_allclose(BAND_WEIGHTS[:, : top + 1].sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(BAND_WEIGHTS.sum(axis=0), 1.0, atol=1e-12)
    assert np.diff(BAND_CENTRES).min() >= MIN_BAND_BINS
    assert (BAND_WEIGHTS >= 0).all()


def test_band_spacing_follows_erb_scale_above_the_minimum() -> None:
    # Where the bands are wider than the 2-bin floor, consecutive centres are about
    # equally spaced on the ERB-number scale.
    centres = band_centres()
    erb = hz_to_erb(centres * BIN_HZ)
    wide = np.diff(centres) > 4
    steps = np.diff(erb)[wide]
    assert steps.max() / steps.min() < 1.25


def test_unity_gains_reproduce_input_delayed() -> None:
    rng = np.random.default_rng(0)
    x = 0.3 * rng.standard_normal(SAMPLE_RATE // 2)
    enh = Enhancer()
    out = np.concatenate([enh.process(x[i : i + FRAME_SIZE]) for i in range(0, len(x), FRAME_SIZE)])
    np.testing.assert_allclose(out[LATENCY_SAMPLES:], x[:-LATENCY_SAMPLES], atol=1e-5)
    np.testing.assert_allclose(enhance_signal(x), x, atol=1e-5)


def _track(x: np.ndarray) -> np.ndarray:
    n_steps = len(x) // FRAME_SIZE + 2
    frames = Analyzer().process(step_buffers(pad_signal(x, n_steps), 0, n_steps))
    return frames.period[2:]  # row j decides frame j - 2


@pytest.mark.parametrize("f0", [90.0, 130.0, 180.0, 240.0, 300.0])
@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_pitch_tracks_harmonic_signals(f0: float, snr_db: float) -> None:
    rng = np.random.default_rng(int(f0 * 10 + snr_db))
    x, f = harmonic(f0, 1.5, rng)
    period = _track(add_noise(x, snr_db, rng))
    n = len(x) // FRAME_SIZE
    truth = SAMPLE_RATE / f[np.arange(n) * FRAME_SIZE]  # frame l is centred on sample l N
    est = period[:n].astype(float)
    keep = slice(3, n - 1)  # skip the onset
    rel = np.abs(est[keep] - truth[keep]) / truth[keep]
    assert (rel < 0.02).mean() >= 0.95
    ratio = est[keep] / truth[keep]
    assert not ((ratio > 1.5) | (ratio < 1 / 1.5)).any(), "octave error"


def test_pitch_prefers_fundamental_over_strong_second_harmonic() -> None:
    # A voiced sound whose second harmonic is twice as strong as the fundamental
    # (common in speech): the period is still 1/120 s, not 1/240 s.
    rng = np.random.default_rng(3)
    x, _ = harmonic(120.0, 1.0, rng, glide=0.0)
    t = np.arange(len(x)) / SAMPLE_RATE
    x += 0.5 * np.sin(2 * np.pi * 240.0 * t)
    period = _track(add_noise(x, 10.0, rng))
    assert np.median(period[5:90]) == pytest.approx(400, abs=4)


def test_comb_filter_peaks_at_harmonics() -> None:
    T = 200  # 240 Hz
    weights = comb_weights(np.array([T]))
    n = BUFFER_SAMPLES
    t = np.arange(n) / SAMPLE_RATE
    gains = []
    for freq in (240.0, 360.0, 480.0, 600.0, 720.0):
        ctx = np.sin(2 * np.pi * freq * t)[None, :]
        out = comb_filter(ctx, np.array([T]), weights)[0]
        ref = ctx[0, HISTORY_SAMPLES : HISTORY_SAMPLES + WINDOW_SIZE]
        gains.append(np.sqrt(np.mean(out**2) / np.mean(ref**2)))
    on, off = gains[0::2], gains[1::2]
    assert min(on) > 0.99
    assert max(off) < 0.1


def test_comb_weights_full_and_truncated() -> None:
    full = comb_weights(np.array([100]))[0]
    assert comb_noise_gain(full[None])[0] == pytest.approx(0.125, rel=1e-9)
    np.testing.assert_allclose(full, HANN_WEIGHTS / HANN_WEIGHTS.sum())
    long = comb_weights(np.array([700]))[0]
    reach = -np.arange(-5, 6) * 700
    assert (long[reach > LOOKAHEAD_SAMPLES] == 0).all()
    assert long.sum() == pytest.approx(1.0)


def test_decimation_alignment_between_stream_and_batch() -> None:
    # The coarse search reads the last SEGMENT samples; it must be a whole number of
    # decimation blocks so block boundaries agree in every path.
    assert pitch.SEGMENT % pitch.DECIMATION == 0
    assert FRAME_SIZE % pitch.DECIMATION == 0
