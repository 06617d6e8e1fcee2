"""34 triangular bands on the ERB scale, generated here and pinned by tests.

Band centres are placed uniformly on the ERB-number scale between 0 Hz and
MAX_BAND_HZ, rounded to FFT bins, never closer than MIN_BAND_BINS: where the ERB
spacing is finer than that (low frequencies) the centres sit MIN_BAND_BINS apart
and the remaining bands share the rest of the scale uniformly. A bin between two
centres belongs to both with weights summing to one; bins above the last centre
belong to the last band alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from percepnet.constants import BIN_HZ, EPS, MAX_BAND_HZ, MIN_BAND_BINS, NB_BANDS, NB_BINS
from percepnet.jit import jit

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


def _bin_bands(weights: FloatArray) -> tuple[npt.NDArray[np.int64], FloatArray, FloatArray]:
    """Per bin: its lower band b and the weights of b and b + 1 (each bin lies in at most
    two neighbouring bands); the sparse form of BAND_WEIGHTS the kernels below use."""
    nb, nbins = weights.shape
    lower = np.array([int(np.flatnonzero(weights[:, k])[0]) for k in range(nbins)])
    upper = np.minimum(lower + 1, nb - 1)
    w_lower = weights[lower, np.arange(nbins)]
    w_upper = np.where(upper > lower, weights[upper, np.arange(nbins)], 0.0)
    covered = np.zeros_like(weights)
    covered[lower, np.arange(nbins)] += w_lower
    covered[upper, np.arange(nbins)] += w_upper
    if not np.array_equal(covered, weights):
        raise AssertionError("a bin belongs to more than two neighbouring bands")
    return lower.astype(np.int64), w_lower, w_upper


_LOWER, _W_LOWER, _W_UPPER = _bin_bands(BAND_WEIGHTS)


@jit()
def band_sum_row(values: FloatArray, out: FloatArray) -> None:
    """out[b] = sum_k w_b(k) values[k] for one row."""
    out[:] = 0.0
    for k in range(NB_BINS):
        b = _LOWER[k]
        out[b] += _W_LOWER[k] * values[k]
        if _W_UPPER[k] != 0.0:
            out[b + 1] += _W_UPPER[k] * values[k]


@jit()
def interp_row(bands: FloatArray, out: FloatArray) -> None:
    """out[k] = sum_b w_b(k) bands[b] for one row."""
    for k in range(NB_BINS):
        b = _LOWER[k]
        v = _W_LOWER[k] * bands[b]
        if _W_UPPER[k] != 0.0:
            v += _W_UPPER[k] * bands[b + 1]
        out[k] = v


@jit()
def band_energy_rows(spec: ComplexArray) -> FloatArray:
    """band_energy of [F, NB_BINS] spectra (compiled; callable from other kernels)."""
    out = np.empty((spec.shape[0], NB_BANDS))
    power = np.empty(NB_BINS)
    for i in range(spec.shape[0]):
        for k in range(NB_BINS):
            power[k] = spec[i, k].real ** 2 + spec[i, k].imag ** 2
        band_sum_row(power, out[i])
    return out


@jit()
def band_cross_rows(a: ComplexArray, b: ComplexArray) -> FloatArray:
    """band_cross of [F, NB_BINS] spectra (compiled; callable from other kernels)."""
    out = np.empty((a.shape[0], NB_BANDS))
    prod = np.empty(NB_BINS)
    for i in range(a.shape[0]):
        for k in range(NB_BINS):
            prod[k] = a[i, k].real * b[i, k].real + a[i, k].imag * b[i, k].imag
        band_sum_row(prod, out[i])
    return out


@jit()
def _interp(bands: FloatArray) -> FloatArray:
    out = np.empty((bands.shape[0], NB_BINS))
    for i in range(bands.shape[0]):
        interp_row(bands[i], out[i])
    return out


def _rows(x: npt.ArrayLike, dtype: type, width: int) -> npt.NDArray[Any]:
    return np.ascontiguousarray(x, dtype=dtype).reshape(-1, width)


def band_energy(spectrum: ComplexArray) -> FloatArray:
    """E_b = sum_k w_b(k) |X(k)|^2 for [..., NB_BINS] spectra -> [..., NB_BANDS]."""
    out = band_energy_rows(_rows(spectrum, np.complex128, NB_BINS))
    return np.asarray(out.reshape(*np.shape(spectrum)[:-1], NB_BANDS))


def band_cross(a: ComplexArray, b: ComplexArray) -> FloatArray:
    """Re(sum_k w_b(k) A(k) B*(k)) per band."""
    out = band_cross_rows(_rows(a, np.complex128, NB_BINS), _rows(b, np.complex128, NB_BINS))
    return np.asarray(out.reshape(*np.shape(a)[:-1], NB_BANDS))


def interp_band_gain(g: FloatArray) -> FloatArray:
    """Band values [..., NB_BANDS] -> per-bin values [..., NB_BINS] through the same triangles."""
    out = _interp(_rows(g, np.float64, NB_BANDS))
    return np.asarray(out.reshape(*np.shape(g)[:-1], NB_BINS))


def coherence(cross: FloatArray, e_a: FloatArray, e_b: FloatArray) -> FloatArray:
    """Normalised band correlation clipped to [0, 1]."""
    return np.minimum(np.maximum(cross / np.sqrt(e_a * e_b + EPS), 0.0), 1.0)
