"""Comb (pitch) filter: p(n) = sum_k c_k y(n - k T), k = -K..K.

c_k are normalised Hann weights. Future taps (k < 0) that would need samples
beyond the LOOKAHEAD_SAMPLES available after the window are dropped and the
remaining weights renormalised, so the filter always sums to one (unit gain at
the harmonics of T). With all 2K + 1 taps, sum c_k^2 = 0.125: uncorrelated noise
between the harmonics drops by about 9 dB.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from percepnet.constants import (
    COMB_PERIODS,
    HISTORY_SAMPLES,
    LOOKAHEAD_SAMPLES,
    PITCH_MAX,
    WINDOW_SIZE,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

TAP_OFFSETS = np.arange(-COMB_PERIODS, COMB_PERIODS + 1)
"""k for each tap; negative k reads the future."""
HANN_WEIGHTS = 0.5 * (1.0 + np.cos(np.pi * TAP_OFFSETS / (COMB_PERIODS + 1)))
"""Un-normalised Hann weights over the 2K + 1 taps."""

_WINDOW_RANGE = np.arange(WINDOW_SIZE)
_LOOP_MAX_FRAMES = 8
CONTEXT_SAMPLES = HISTORY_SAMPLES + WINDOW_SIZE + LOOKAHEAD_SAMPLES
"""Samples one frame's comb filter reads: history, the window, the lookahead."""


def _weight_table() -> FloatArray:
    """[PITCH_MAX + 1, 2K + 1] weights c_k for every period, zero beyond the lookahead."""
    period = np.arange(PITCH_MAX + 1)
    reach = -TAP_OFFSETS[None, :] * period[:, None]  # how far into the future each tap reads
    w = np.where(reach <= LOOKAHEAD_SAMPLES, HANN_WEIGHTS[None, :], 0.0)
    return np.asarray(w / w.sum(axis=1, keepdims=True))


_WEIGHTS = _weight_table()


def comb_weights(period: IntArray) -> FloatArray:
    """[F] periods -> [F, 2K + 1] normalised weights c_k."""
    return np.asarray(_WEIGHTS[period])


def comb_noise_gain(weights: FloatArray) -> FloatArray:
    """sigma^2 = sum c_k^2: the fraction of white-noise power the filter lets through."""
    return np.asarray((weights**2).sum(axis=-1))


def comb_filter(context: FloatArray, period: IntArray, weights: FloatArray) -> FloatArray:
    """Comb-filter each frame's window.

    context: [F, CONTEXT_SAMPLES], the window at [HISTORY_SAMPLES, HISTORY_SAMPLES +
    WINDOW_SIZE); period: [F]; weights: [F, 2K + 1]. Returns [F, WINDOW_SIZE].
    """
    # Dropped taps (weight 0) may point past the context: clamp them to a valid place.
    start = np.minimum(
        HISTORY_SAMPLES - TAP_OFFSETS * period[:, None], CONTEXT_SAMPLES - WINDOW_SIZE
    )
    if len(context) <= _LOOP_MAX_FRAMES:  # streaming: a 2-D gather per frame is cheaper
        out = np.empty((len(context), WINDOW_SIZE))
        for i, row in enumerate(context):
            out[i] = weights[i] @ row[start[i, :, None] + _WINDOW_RANGE]
        return out
    rows = np.arange(len(context))[:, None, None]
    taps = context[rows, start[:, :, None] + _WINDOW_RANGE]  # [F, taps, W]
    return np.asarray((weights[:, None, :] @ taps)[:, 0, :])
