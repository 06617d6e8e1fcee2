"""Per-frame analysis shared by the streaming enhancer and the whole-signal path.

At step j the input buffer holds the BUFFER_SAMPLES samples ending with hop j.
The newest window (frame j) gives the lookahead band energies; the frame being
decided, l = j - LOOKAHEAD_FRAMES, sits at [HISTORY_SAMPLES, HISTORY_SAMPLES +
WINDOW_SIZE) of the buffer with its comb-filter history before it and
LOOKAHEAD_SAMPLES after it. Everything here is computed on a block of F steps
at once ([F, BUFFER_SAMPLES] buffers): F = 1 when streaming, F = hundreds for
training data; the arithmetic is the same.

Feature vector of step j (NB_FEATURES): log10 band energies of frame j, pitch
coherences q_y of frame l, the normalised log period of frame l and its pitch
correlation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from percepnet import pitch
from percepnet.bands import band_cross, band_cross_rows, band_energy, band_energy_rows, coherence
from percepnet.comb import (
    COMB_TAPS,
    COMB_WEIGHT_TABLE,
    CONTEXT_SAMPLES,
    comb_filter,
    comb_filter_rows,
    comb_noise_gain,
    comb_starts,
)
from percepnet.constants import (
    BUFFER_SAMPLES,
    EPS,
    EXTRA_ATTENUATION_N0,
    FRAME_SIZE,
    HISTORY_SAMPLES,
    LOOKAHEAD_FRAMES,
    NB_BANDS,
    NB_BINS,
    NB_FEATURES,
    PITCH_MAX,
    PITCH_MIN,
    WINDOW_SIZE,
)
from percepnet.jit import jit
from percepnet.pitch import track_block
from percepnet.stft import WINDOW, analysis_fft, spectra

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]
IntArray = npt.NDArray[np.int64]

LOG_ENERGY_FLOOR = 1e-7
"""Added to band energies before log10 (about -70 dB below a full-scale band)."""

WIN_START = HISTORY_SAMPLES
WIN_END = HISTORY_SAMPLES + WINDOW_SIZE
NEWEST = slice(BUFFER_SAMPLES - WINDOW_SIZE, BUFFER_SAMPLES)
DECIDED = slice(WIN_START, WIN_END)
_LOG_PITCH_SPAN = np.log2(PITCH_MAX / PITCH_MIN)

# Feature layout, named once.
FEAT_LOG_ENERGY = slice(0, NB_BANDS)
FEAT_COHERENCE = slice(NB_BANDS, 2 * NB_BANDS)
FEAT_PERIOD = 2 * NB_BANDS
FEAT_PITCH_CORR = 2 * NB_BANDS + 1
assert FEAT_PITCH_CORR + 1 == NB_FEATURES


@dataclass
class Frames:
    """Analysis of F consecutive steps; row i is step j, deciding frame l = j - M."""

    step: IntArray  # j
    features: FloatArray  # [F, NB_FEATURES]
    Y: ComplexArray  # [F, NB_BINS] noisy spectrum of frame l
    P: ComplexArray  # [F, NB_BINS] comb-filtered spectrum of frame l
    E_y: FloatArray  # [F, NB_BANDS]
    q_y: FloatArray  # [F, NB_BANDS]
    period: IntArray  # [F] T of frame l, samples
    pitch_corr: FloatArray  # [F]
    comb: FloatArray  # [F, 2K + 1] comb weights used for frame l

    def __len__(self) -> int:
        return len(self.step)


@jit()
def _frames_to_analyse(buffers: FloatArray, period: IntArray, weights: FloatArray) -> FloatArray:
    """[2F, WINDOW_SIZE] windowed: the newest window of each step, then frame l comb-filtered."""
    n = buffers.shape[0]
    out = np.empty((2 * n, WINDOW_SIZE))
    comb = comb_filter_rows(buffers[:, :CONTEXT_SAMPLES], comb_starts(period), weights)
    for i in range(n):
        for t in range(WINDOW_SIZE):
            out[i, t] = buffers[i, BUFFER_SAMPLES - WINDOW_SIZE + t] * WINDOW[t]
            out[n + i, t] = comb[i, t] * WINDOW[t]
    return out


@jit()
def _band_features(
    Y_new: ComplexArray,
    Y: ComplexArray,
    P: ComplexArray,
    period: IntArray,
    corr: FloatArray,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Features, E_y and q_y of F steps from the newest spectra Y_new, frame l's noisy Y
    and comb-filtered P."""
    n = Y.shape[0]
    E_new = band_energy_rows(Y_new)
    E_y = band_energy_rows(Y)
    E_p = band_energy_rows(P)
    cross = band_cross_rows(Y, P)
    q_y = np.empty((n, NB_BANDS))
    feats = np.empty((n, NB_FEATURES))
    for i in range(n):
        for b in range(NB_BANDS):
            q = cross[i, b] / np.sqrt(E_y[i, b] * E_p[i, b] + EPS)
            q_y[i, b] = min(max(q, 0.0), 1.0)
            feats[i, b] = np.log10(E_new[i, b] + LOG_ENERGY_FLOOR)
            feats[i, NB_BANDS + b] = q_y[i, b]
        feats[i, FEAT_PERIOD] = np.log2(period[i] / PITCH_MIN) / _LOG_PITCH_SPAN
        feats[i, FEAT_PITCH_CORR] = corr[i]
    return feats, E_y, q_y


@jit()
def _time_stage(
    buffers: FloatArray, pending: FloatArray, cost: FloatArray, back: IntArray
) -> tuple[IntArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Pitch of the decided frames, their comb weights and the windows to transform."""
    period, corr, pending = track_block(buffers, pending, cost, back)
    weights = np.empty((len(period), COMB_TAPS))
    for i in range(len(period)):
        weights[i] = COMB_WEIGHT_TABLE[period[i]]
    return period, corr, weights, _frames_to_analyse(buffers, period, weights), pending


@jit()
def _frequency_stage(
    spectra: ComplexArray, pending_Y: ComplexArray, period: IntArray, corr: FloatArray
) -> tuple[FloatArray, ComplexArray, ComplexArray, FloatArray, FloatArray, ComplexArray]:
    """Features, Y, P, E_y, q_y of the decided frames and the new pending spectra."""
    n = len(period)
    Y_new = spectra[:n]
    P = spectra[n:].copy()
    all_Y = np.concatenate((pending_Y, Y_new))  # row i: frame l of step i
    Y = all_Y[:n].copy()
    feats, E_y, q_y = _band_features(Y_new, Y, P, period, corr)
    return feats, Y, P, E_y, q_y, all_Y[n:].copy()


class Analyzer:
    """Stateful analysis: the pitch tracker and the pending frames.

    The newest frame's spectrum waits LOOKAHEAD_FRAMES steps
    until that frame is decided. Frames l < 0 (before the stream started) are
    silent; their pending entries are zeros.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._pitch = pitch.PitchTracker()
        self._pending_Y = np.zeros((LOOKAHEAD_FRAMES, NB_BINS), dtype=np.complex128)
        self._step = 0

    def process(self, buffers: FloatArray) -> Frames:
        """Analyse F consecutive steps given their [F, BUFFER_SAMPLES] input buffers."""
        buffers = np.ascontiguousarray(buffers, dtype=np.float64)
        tracker = self._pitch
        period, corr, c, windows, tracker.pending = _time_stage(
            buffers, tracker.pending, tracker.cost, tracker.back
        )
        feats, Y, P, E_y, q_y, self._pending_Y = _frequency_stage(
            spectra(windows), self._pending_Y, period, corr
        )
        n = len(period)
        steps = np.arange(self._step, self._step + n)
        self._step += n
        return Frames(steps, feats, Y, P, E_y, q_y, period, corr, c)


def step_buffers(padded: FloatArray, first: int, count: int) -> FloatArray:
    """[count, BUFFER_SAMPLES] views of a padded signal (see pad_signal) for steps first..."""
    view = np.lib.stride_tricks.sliding_window_view(padded, BUFFER_SAMPLES)
    return np.asarray(view[first * FRAME_SIZE : (first + count - 1) * FRAME_SIZE + 1 : FRAME_SIZE])


def pad_signal(x: FloatArray, n_steps: int) -> FloatArray:
    """Zero history before x and zeros after it so step j's buffer is padded[jN : jN + B]."""
    lead = BUFFER_SAMPLES - FRAME_SIZE
    total = lead + n_steps * FRAME_SIZE
    out = np.zeros(max(total, lead + len(x)))
    out[lead : lead + len(x)] = x
    return out[:total] if total >= lead + len(x) else out


def oracle_targets(frames: Frames, clean_buffers: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Ideal band gains g and strengths r for frames l from the clean signal's buffers.

    The clean signal is comb-filtered with the same period and taps as the noisy one.
    Where even full filtering cannot restore the clean periodicity (q_p < q_x), r = 1
    and the gain takes an extra attenuation.
    """
    X = analysis_fft(clean_buffers[:, DECIDED])
    P_x = analysis_fft(comb_filter(clean_buffers, frames.period, frames.comb))
    E_x = band_energy(X)
    q_x = coherence(band_cross(X, P_x), E_x, band_energy(P_x))
    g = np.clip(np.sqrt(E_x / (frames.E_y + EPS)), 0.0, 1.0)
    return strength_targets(g, frames.q_y, q_x, comb_noise_gain(frames.comb)[:, None])


def strength_targets(
    g: FloatArray, q_y: FloatArray, q_x: FloatArray, sigma2: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """r from the coherences (DESIGN section 3) and g with the extra attenuation."""
    q_p = q_y / np.sqrt((1.0 - sigma2) * q_y**2 + sigma2)
    a = np.maximum(0.0, q_p**2 - q_x**2)
    b = q_p * q_y * (1.0 - q_x**2)
    c = np.maximum(0.0, q_x**2 - q_y**2)
    alpha = (np.sqrt(b**2 + a * c) - b) / (a + EPS)
    r = np.clip(alpha / (1.0 + alpha), 0.0, 1.0)
    short = q_p < q_x
    r = np.where(short, 1.0, r)
    n0 = EXTRA_ATTENUATION_N0
    atten = np.sqrt((1.0 + n0 - q_x**2) / (1.0 + n0 - np.minimum(q_p, 1.0) ** 2))
    g = np.where(short, g * np.minimum(atten, 1.0), g)
    return g, r
