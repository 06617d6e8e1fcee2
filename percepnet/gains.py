"""Band mixing with the comb-filtered spectrum, the envelope postfilter and rescaling.

Z = (1 - r) Y + r P per bin (r interpolated from bands); each band of Z is then
scaled to the target amplitude t_b sqrt(E_y,b), where t = g without the
postfilter and t = G g_w with it: g_w = g sin(pi/2 g) deepens attenuation of
noisy bands and the global G restores the loudness lost, bounded by beta.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from percepnet.bands import band_sum_row, interp_row
from percepnet.constants import EPS, NB_BANDS, NB_BINS, POSTFILTER_BETA
from percepnet.jit import jit

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]


@jit()
def _postfilter_row(g: FloatArray, E_y: FloatArray, out: FloatArray) -> None:
    e0 = 0.0
    e1 = 0.0
    for b in range(NB_BANDS):
        out[b] = g[b] * np.sin(0.5 * np.pi * g[b])
        e0 += g[b] * g[b] * E_y[b]
        e1 += out[b] * out[b] * E_y[b]
    ratio = (e0 + EPS) / (e1 + EPS)
    G = np.sqrt((1.0 + POSTFILTER_BETA) * ratio / (1.0 + POSTFILTER_BETA * ratio * ratio))
    for b in range(NB_BANDS):
        out[b] *= G


@jit()
def _postfilter(g: FloatArray, E_y: FloatArray) -> FloatArray:
    out = np.empty_like(g)
    for i in range(g.shape[0]):
        _postfilter_row(g[i], E_y[i], out[i])
    return out


def postfilter(g: FloatArray, E_y: FloatArray) -> FloatArray:
    """Target band gains G g_w for [F, NB_BANDS] gains and noisy band energies."""
    return np.asarray(
        _postfilter(
            np.ascontiguousarray(g, dtype=np.float64), np.ascontiguousarray(E_y, dtype=np.float64)
        )
    )


@jit()
def _apply_gains(
    Y: ComplexArray,
    P: ComplexArray,
    E_y: FloatArray,
    g: FloatArray,
    r: FloatArray,
    use_pitch_filter: bool,
    use_postfilter: bool,
) -> ComplexArray:
    n = Y.shape[0]
    Z = np.empty_like(Y)
    target = np.empty(NB_BANDS)
    r_k = np.empty(NB_BINS)
    scale = np.empty(NB_BANDS)
    scale_k = np.empty(NB_BINS)
    power = np.empty(NB_BINS)
    E_z = np.empty(NB_BANDS)
    for i in range(n):
        if use_postfilter:
            _postfilter_row(g[i], E_y[i], target)
        else:
            target[:] = g[i]
        if use_pitch_filter:
            interp_row(r[i], r_k)
            for k in range(NB_BINS):
                Z[i, k] = Y[i, k] + r_k[k] * (P[i, k] - Y[i, k])
                power[k] = Z[i, k].real ** 2 + Z[i, k].imag ** 2
            band_sum_row(power, E_z)
            for b in range(NB_BANDS):
                scale[b] = target[b] * np.sqrt((E_y[i, b] + EPS) / (E_z[b] + EPS))
        else:
            Z[i] = Y[i]
            scale[:] = target
        interp_row(scale, scale_k)
        for k in range(NB_BINS):
            Z[i, k] *= scale_k[k]
    return Z


def apply_gains(
    Y: ComplexArray,
    P: ComplexArray,
    E_y: FloatArray,
    g: FloatArray,
    r: FloatArray | None,
    *,
    use_postfilter: bool = True,
) -> ComplexArray:
    """Enhanced spectra [F, NB_BINS] from noisy Y, comb-filtered P and band g, r.

    Without r (None) there is no pitch filtering: Z = Y.
    """
    g = np.ascontiguousarray(g, dtype=np.float64)
    # Without r the kernel never reads its strengths argument; g fills the slot.
    strengths = g if r is None else np.ascontiguousarray(r, dtype=np.float64)
    return np.asarray(
        _apply_gains(
            np.ascontiguousarray(Y, dtype=np.complex128),
            np.ascontiguousarray(P, dtype=np.complex128),
            np.ascontiguousarray(E_y, dtype=np.float64),
            g,
            strengths,
            r is not None,
            use_postfilter,
        )
    )


def release_gains(g: FloatArray, decay: float, prev: FloatArray | None = None) -> FloatArray:
    """g[t] = max(g[t], decay * g[t - 1]) per band, in time order: a gain falls by at most
    `decay` per 10 ms frame. `prev`: the held gains of the frame before g[0] (a stream's
    previous block), if any. g itself is not changed.

    Through our DSP the ideal gains so held score DNSMOS OVRL 2.40 against 2.28 (SIG up;
    results/oracle_variants_dev.md): a speech decay cut at once sounds worse than one
    left to fade."""
    out = np.array(g, dtype=np.float64)
    if prev is not None and len(out):
        np.maximum(out[0], decay * prev, out=out[0])
    for t in range(1, len(out)):
        np.maximum(out[t], decay * out[t - 1], out=out[t])
    return out
