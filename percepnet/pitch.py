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

# Index of tau/2 and tau/3 among the coarse lags; below the search range they point at
# a sentinel zero appended after the last lag.
_NL = len(_LAGS_D)
_HALF_IDX = np.where(_LAGS_D // 2 >= LAG_D_MIN, np.round(_LAGS_D / 2).astype(int) - LAG_D_MIN, _NL)
_THIRD_IDX = np.where(_LAGS_D // 3 >= LAG_D_MIN, np.round(_LAGS_D / 3).astype(int) - LAG_D_MIN, _NL)
# States pool contiguous runs of coarse lags: run boundaries for np.maximum.reduceat.
_STATE_STARTS = np.flatnonzero(np.diff(LAG_TO_STATE, prepend=-1))
assert len(_STATE_STARTS) == NB_STATES
_STATE_ENDS = np.append(_STATE_STARTS[1:], _NL)
_QUARTER = np.full(DECIMATION, 1.0 / DECIMATION)


def decimate(x: FloatArray) -> FloatArray:
    """Average blocks of DECIMATION samples ([..., n] with n a multiple of DECIMATION)."""
    return np.asarray(x.reshape(*x.shape[:-1], -1, DECIMATION) @ _QUARTER)


def coarse_scores(segments_d: FloatArray) -> FloatArray:
    """[F, SEGMENT_D] decimated history -> [F, lags] candidate scores.

    The window is the last WIN_D samples; lag tau compares it with the window tau
    samples earlier (normalised correlation), minus SUBHARMONIC_PENALTY times the
    correlation at tau/2 or tau/3 when that is positive.
    """
    out = np.empty((len(segments_d), _NL))
    r = np.zeros(_NL + 1)  # last entry: the sentinel
    csum = np.zeros(SEGMENT_D + 1)
    for i, seg in enumerate(segments_d):
        # 'valid' output k compares the window with seg[k : k + WIN_D]:
        # lag SEGMENT_D - WIN_D - k
        xy = np.correlate(seg, seg[-WIN_D:], "valid")
        np.cumsum(seg * seg, out=csum[1:])
        energy = csum[WIN_D:] - csum[:-WIN_D]  # of the window starting at k
        rev = xy / np.sqrt(energy * energy[-1] + 1e-12)
        r[:_NL] = rev[SEGMENT_D - WIN_D - LAG_D_MIN :: -1]
        sub = np.maximum(np.maximum(r[_HALF_IDX], r[_THIRD_IDX]), 0.0)
        out[i] = r[:_NL] - SUBHARMONIC_PENALTY * sub
    return out


def pool_states(scores: FloatArray) -> FloatArray:
    """[F, lags] scores -> [F, NB_STATES] best score within each state's lags."""
    return np.asarray(np.maximum.reduceat(scores, _STATE_STARTS, axis=-1))


def state_lag(scores: FloatArray, state: int) -> int:
    """The coarse lag with the best score inside `state` (scores of one frame)."""
    lo, hi = int(_STATE_STARTS[state]), int(_STATE_ENDS[state])
    return int(lo + scores[lo:hi].argmax()) + LAG_D_MIN


class ViterbiState:
    """Running Viterbi costs and the back-pointers of the last LOOKAHEAD_FRAMES frames."""

    def __init__(self) -> None:
        self.cost = np.zeros(NB_STATES)
        self.back: list[IntArray] = [_IDENTITY] * LOOKAHEAD_FRAMES  # oldest first

    def step(self, obs: FloatArray) -> int:
        """Add frame j's state scores; return the state decided for frame j - LOOKAHEAD_FRAMES."""
        total = self.cost + TRANSITION  # [to, from]
        prev = total.argmin(axis=1)
        cost = total.min(axis=1) - obs
        cost -= cost.min()
        self.cost = cost
        self.back = [*self.back[1:], prev]
        s = int(self.cost.argmin())
        for back in reversed(self.back):
            s = int(back[s])
        return s


_IDENTITY = np.arange(NB_STATES)
REFINE_HISTORY = PITCH_MAX + WINDOW_SIZE
"""Full-rate samples ending with a frame's window that the refinement reads."""


def refine(history: FloatArray, coarse_lag_d: IntArray) -> tuple[IntArray, FloatArray]:
    """Full-rate period and correlation around DECIMATION * coarse lag.

    history: [F, REFINE_HISTORY] samples ending with each frame's window (the last
    WINDOW_SIZE); coarse_lag_d: [F]. Returns T [F] in samples and the normalised
    correlation at T, clipped to [0, 1].
    """
    n = len(history)
    lo = np.clip(
        coarse_lag_d * DECIMATION - REFINE_RADIUS, PITCH_MIN, PITCH_MAX - 2 * REFINE_RADIUS
    )
    period = np.empty(n, dtype=np.int64)
    corr = np.empty(n)
    for i in range(n):
        h = history[i]
        win = h[-WINDOW_SIZE:]
        # lags lo .. lo + 2R: windows starting REFINE_HISTORY - WINDOW_SIZE - lag
        first = REFINE_HISTORY - WINDOW_SIZE - (int(lo[i]) + 2 * REFINE_RADIUS)
        span = h[first : first + WINDOW_SIZE + 2 * REFINE_RADIUS]
        xy = np.correlate(span, win, "valid")[::-1]  # index m: lag lo + m
        csum = np.cumsum(span * span)
        e = csum[WINDOW_SIZE - 1 :] - np.concatenate(([0.0], csum[: 2 * REFINE_RADIUS]))
        r = xy / np.sqrt(float(win @ win) * e[::-1] + 1e-12)
        m = int(r.argmax())
        period[i] = int(lo[i]) + m
        corr[i] = min(max(float(r[m]), 0.0), 1.0)
    return period, corr
