"""Band mixing with the comb-filtered spectrum, the envelope postfilter and rescaling.

Z = (1 - r) Y + r P per bin (r interpolated from bands); each band of Z is then
scaled to the target amplitude t_b sqrt(E_y,b), where t = g without the
postfilter and t = G g_w with it: g_w = g sin(pi/2 g) deepens attenuation of
noisy bands and the global G restores the loudness lost, bounded by beta.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from percepnet.bands import band_energy, interp_band_gain
from percepnet.constants import EPS, POSTFILTER_BETA

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]


def postfilter(g: FloatArray, E_y: FloatArray) -> FloatArray:
    """Target band gains G g_w for [F, NB_BANDS] gains and noisy band energies."""
    g_w = g * np.sin(0.5 * np.pi * g)
    e0 = (g * g * E_y).sum(axis=-1, keepdims=True)
    e1 = (g_w * g_w * E_y).sum(axis=-1, keepdims=True)
    ratio = (e0 + EPS) / (e1 + EPS)
    beta = POSTFILTER_BETA
    G = np.sqrt((1.0 + beta) * ratio / (1.0 + beta * ratio * ratio))
    return np.asarray(G * g_w)


def apply_gains(
    Y: ComplexArray,
    P: ComplexArray,
    E_y: FloatArray,
    g: FloatArray,
    r: FloatArray | None,
    *,
    use_postfilter: bool = True,
) -> ComplexArray:
    """Enhanced spectra [F, NB_BINS] from noisy Y, comb-filtered P and band g, r."""
    if r is None:
        Z = Y
        E_z = E_y
    else:
        r_k = interp_band_gain(r)
        Z = Y + r_k * (P - Y)
        E_z = band_energy(Z)
    target = postfilter(g, E_y) if use_postfilter else g
    scale = target * np.sqrt((E_y + EPS) / (E_z + EPS))
    return np.asarray(Z * interp_band_gain(scale))
