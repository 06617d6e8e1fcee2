"""34 triangular bands on the ERB scale, generated here and pinned by tests.

Band centres are placed uniformly on the ERB-number scale between 0 Hz and
MAX_BAND_HZ, rounded to FFT bins, never closer than MIN_BAND_BINS: where the ERB
spacing is finer than that (low frequencies) the centres sit MIN_BAND_BINS apart
and the remaining bands share the rest of the scale uniformly. A bin between two
centres belongs to both with weights summing to one; bins above the last centre
belong to the last band alone.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from percepnet.constants import BIN_HZ, EPS, MAX_BAND_HZ, MIN_BAND_BINS, NB_BANDS, NB_BINS

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]


def hz_to_erb(f: FloatArray | float) -> FloatArray:
    """ERB-number (Glasberg & Moore): 21.4 log10(1 + 0.00437 f)."""
    return np.asarray(21.4 * np.log10(1.0 + 0.00437 * np.asarray(f, dtype=np.float64)))


def erb_to_hz(e: FloatArray | float) -> FloatArray:
    return np.asarray((10.0 ** (np.asarray(e, dtype=np.float64) / 21.4) - 1.0) / 0.00437)


def band_centres() -> npt.NDArray[np.int64]:
    """Centre bin of each band: bin 0 first, MAX_BAND_HZ last."""
    top = round(MAX_BAND_HZ / BIN_HZ)
    centres = [0]
    for i in range(1, NB_BANDS):
        prev = centres[-1]
        e_prev = float(hz_to_erb(prev * BIN_HZ))
        step = (float(hz_to_erb(top * BIN_HZ)) - e_prev) / (NB_BANDS - i)
        ideal = float(erb_to_hz(e_prev + step)) / BIN_HZ
        centres.append(max(prev + MIN_BAND_BINS, round(ideal)))
    if centres[-1] != top:
        raise AssertionError(f"band layout does not end at {top}: {centres}")
    return np.asarray(centres, dtype=np.int64)


def band_weights(centres: npt.NDArray[np.int64]) -> FloatArray:
    """[NB_BANDS, NB_BINS] triangular weights; every column sums to one."""
    w = np.zeros((len(centres), NB_BINS))
    for b in range(len(centres) - 1):
        lo, hi = int(centres[b]), int(centres[b + 1])
        k = np.arange(lo, hi)
        frac = (k - lo) / (hi - lo)
        w[b, lo:hi] = 1.0 - frac
        w[b + 1, lo:hi] = frac
    w[-1, int(centres[-1]) :] = 1.0
    return w


BAND_CENTRES = band_centres()
BAND_WEIGHTS: FloatArray = band_weights(BAND_CENTRES)
BAND_WEIGHTS.flags.writeable = False
BAND_WEIGHTS_T: FloatArray = np.ascontiguousarray(BAND_WEIGHTS.T)


def band_energy(spectrum: ComplexArray) -> FloatArray:
    """E_b = sum_k w_b(k) |X(k)|^2 for [..., NB_BINS] spectra -> [..., NB_BANDS]."""
    return np.asarray(np.square(np.abs(spectrum)) @ BAND_WEIGHTS_T)


def band_cross(a: ComplexArray, b: ComplexArray) -> FloatArray:
    """Re(sum_k w_b(k) A(k) B*(k)) per band."""
    return np.asarray((a.real * b.real + a.imag * b.imag) @ BAND_WEIGHTS_T)


def interp_band_gain(g: FloatArray) -> FloatArray:
    """Band values [..., NB_BANDS] -> per-bin values [..., NB_BINS] through the same triangles."""
    return np.asarray(g @ BAND_WEIGHTS)


def coherence(cross: FloatArray, e_a: FloatArray, e_b: FloatArray) -> FloatArray:
    """Normalised band correlation clipped to [0, 1]."""
    return np.minimum(np.maximum(cross / np.sqrt(e_a * e_b + EPS), 0.0), 1.0)
