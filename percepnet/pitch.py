"""Pitch: normalised-correlation candidates and a fixed-lag Viterbi track.

Per frame j (the newest window, WINDOW_SIZE samples) we compute the normalised
autocorrelation r(tau) on a 4x decimated signal for every period in
[PITCH_MIN, PITCH_MAX], penalise periods whose half or third is also periodic
(sub-harmonics: the source of octave-down errors), and pool the scores into
log-spaced states. A Viterbi pass over frames with a cost proportional to the
jump in log-period picks a consistent track; the decision for frame l is read
back from the best path at frame l + LOOKAHEAD_FRAMES. The chosen period is then
refined at the full rate on frame l's own window.

Every function works on a leading batch axis so the streaming enhancer (one
frame) and the whole-signal path (all frames) share the same arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from percepnet.constants import LOOKAHEAD_FRAMES, PITCH_MAX, PITCH_MIN, WINDOW_SIZE

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DECIMATION = 4
"""Coarse search rate: 12 kHz, still covering speech harmonics below 6 kHz."""
LAG_D_MIN = PITCH_MIN // DECIMATION
LAG_D_MAX = PITCH_MAX // DECIMATION
WIN_D = WINDOW_SIZE // DECIMATION
"""Correlation window on the decimated signal (one analysis window, 20 ms)."""
SEGMENT_D = LAG_D_MAX + WIN_D
"""Decimated samples one frame's coarse search reads."""
SEGMENT = SEGMENT_D * DECIMATION
"""Full-rate samples ending at the newest input sample that the coarse search reads."""

SUBHARMONIC_PENALTY = 0.5
"""Weight of r(tau/2), r(tau/3) subtracted from r(tau): a multiple of a periodic lag loses."""
JUMP_COST = 0.8
"""Viterbi cost of a one-octave jump between consecutive frames (scores are in [-1, 1])."""
NB_STATES_TARGET = 96
REFINE_RADIUS = DECIMATION
"""Full-rate lags searched either side of DECIMATION * coarse lag."""

_LAGS_D = np.arange(LAG_D_MIN, LAG_D_MAX + 1)


def _make_states() -> tuple[IntArray, IntArray]:
    """Log-spaced period states and, for each coarse lag, the state it pools into."""
    states = np.unique(np.round(np.geomspace(LAG_D_MIN, LAG_D_MAX, NB_STATES_TARGET)).astype(int))
    nearest = np.abs(np.log(_LAGS_D[:, None]) - np.log(states[None, :])).argmin(axis=1)
    return states.astype(np.int64), nearest.astype(np.int64)


STATE_LAGS_D, LAG_TO_STATE = _make_states()
NB_STATES = len(STATE_LAGS_D)
_LOG_STATES = np.log2(STATE_LAGS_D.astype(np.float64))
TRANSITION: FloatArray = JUMP_COST * np.abs(_LOG_STATES[:, None] - _LOG_STATES[None, :])
"""[to, from] cost of moving between states."""

# Index of tau/2 and tau/3 among the coarse lags (or -1 when below the search range).
_HALF = np.where(_LAGS_D // 2 >= LAG_D_MIN, np.round(_LAGS_D / 2).astype(int) - LAG_D_MIN, -1)
_THIRD = np.where(_LAGS_D // 3 >= LAG_D_MIN, np.round(_LAGS_D / 3).astype(int) - LAG_D_MIN, -1)
# Gather matrix pooling coarse lags into states: one-hot [lags, states].
_POOL_MASK = np.full((len(_LAGS_D), NB_STATES), -np.inf)
_POOL_MASK[np.arange(len(_LAGS_D)), LAG_TO_STATE] = 0.0


def decimate(x: FloatArray) -> FloatArray:
    """Average blocks of DECIMATION samples ([..., n] with n a multiple of DECIMATION)."""
    return np.asarray(x.reshape(*x.shape[:-1], -1, DECIMATION).mean(axis=-1))


def coarse_scores(segments_d: FloatArray) -> FloatArray:
    """[..., SEGMENT_D] decimated history -> [..., lags] candidate scores.

    The window is the last WIN_D samples; lag tau compares it with the window
    tau samples earlier.
    """
    views = np.lib.stride_tricks.sliding_window_view(segments_d, WIN_D, axis=-1)
    views = views[..., ::-1, :]  # index i -> lag i
    w = segments_d[..., -WIN_D:]
    xy = np.einsum("...lw,...w->...l", views[..., LAG_D_MIN:, :], w)
    sq = segments_d**2
    csum = np.concatenate([np.zeros((*sq.shape[:-1], 1)), np.cumsum(sq, axis=-1)], axis=-1)
    # energy of the window starting at SEGMENT_D - WIN_D - lag
    starts = SEGMENT_D - WIN_D - _LAGS_D
    e_lag = csum[..., starts + WIN_D] - csum[..., starts]
    e_w = csum[..., -1:] - csum[..., -WIN_D - 1 : -WIN_D]
    r = xy / np.sqrt(e_w * e_lag + 1e-12)
    sub = np.maximum(
        np.where(_HALF >= 0, r[..., np.maximum(_HALF, 0)], 0.0),
        np.where(_THIRD >= 0, r[..., np.maximum(_THIRD, 0)], 0.0),
    )
    return np.asarray(r - SUBHARMONIC_PENALTY * np.maximum(sub, 0.0))


def pool_states(scores: FloatArray) -> tuple[FloatArray, IntArray]:
    """Best score per state and the coarse lag that achieved it."""
    pooled = scores[..., :, None] + _POOL_MASK  # [..., lags, states]
    best = pooled.argmax(axis=-2)
    obs = np.take_along_axis(pooled, best[..., None, :], axis=-2)[..., 0, :]
    return np.asarray(obs), np.asarray(best + LAG_D_MIN, dtype=np.int64)


@dataclass
class ViterbiState:
    """Running Viterbi costs and the back-pointers of the last LOOKAHEAD_FRAMES frames."""

    cost: FloatArray
    back: IntArray  # [LOOKAHEAD_FRAMES, NB_STATES], oldest first

    @classmethod
    def initial(cls) -> ViterbiState:
        identity = np.tile(np.arange(NB_STATES), (LOOKAHEAD_FRAMES, 1))
        return cls(cost=np.zeros(NB_STATES), back=identity)


def viterbi_step(state: ViterbiState, obs: FloatArray) -> int:
    """Add frame j's state scores; return the state decided for frame j - LOOKAHEAD_FRAMES."""
    total = state.cost[None, :] + TRANSITION
    prev = total.argmin(axis=1)
    cost = total[np.arange(NB_STATES), prev] - obs
    state.cost = cost - cost.min()
    state.back = np.concatenate([state.back[1:], prev[None, :]])
    s = int(state.cost.argmin())
    for k in range(LOOKAHEAD_FRAMES - 1, -1, -1):
        s = int(state.back[k, s])
    return s


def refine(windows: FloatArray, history: FloatArray, coarse_lag_d: IntArray) -> tuple[IntArray, FloatArray]:
    """Full-rate period and correlation around DECIMATION * coarse lag.

    windows: [F, WINDOW_SIZE] frame windows; history: [F, PITCH_MAX + REFINE_RADIUS +
    WINDOW_SIZE] samples ending where each window ends; coarse_lag_d: [F].
    Returns T [F] in samples and the normalised correlation at T in [0, 1].
    """
    offsets = np.arange(-REFINE_RADIUS, REFINE_RADIUS + 1)
    lags = np.clip(coarse_lag_d[:, None] * DECIMATION + offsets[None, :], PITCH_MIN, PITCH_MAX)
    n_hist = history.shape[-1]
    idx = (n_hist - WINDOW_SIZE - lags)[..., None] + np.arange(WINDOW_SIZE)  # [F, L, W]
    shifted = np.take_along_axis(history[:, None, :], idx, axis=-1)
    xy = np.einsum("flw,fw->fl", shifted, windows)
    e_s = np.einsum("flw,flw->fl", shifted, shifted)
    e_w = np.einsum("fw,fw->f", windows, windows)
    r = xy / np.sqrt(e_w[:, None] * e_s + 1e-12)
    best = r.argmax(axis=1)
    rows = np.arange(len(best))
    return lags[rows, best].astype(np.int64), np.clip(r[rows, best], 0.0, 1.0)


REFINE_HISTORY = PITCH_MAX + REFINE_RADIUS + WINDOW_SIZE
