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
frame) and the whole-signal path (all frames) share the same arithmetic. The loops
are compiled (percepnet.jit); track_block runs the whole chain in one call on a
PitchTracker's state.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from percepnet.constants import (
    LOOKAHEAD_FRAMES,
    LOOKAHEAD_SAMPLES,
    PITCH_MAX,
    PITCH_MIN,
    WINDOW_SIZE,
)
from percepnet.jit import jit

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
# States pool contiguous runs of coarse lags: the runs' boundaries.
_STATE_STARTS = np.flatnonzero(np.diff(LAG_TO_STATE, prepend=-1))
assert len(_STATE_STARTS) == NB_STATES
_STATE_ENDS = np.append(_STATE_STARTS[1:], _NL)
_DOT_MATH = {"reassoc", "contract"}
"""Let the compiler reorder the sums of the correlation loops (vectorised dot products)."""
REFINE_HISTORY = PITCH_MAX + WINDOW_SIZE
"""Full-rate samples ending with a frame's window that the refinement reads."""
_REFINE_LO_MAX = PITCH_MAX - 2 * REFINE_RADIUS


@jit()
def _decimate(x: FloatArray) -> FloatArray:
    out = np.empty((x.shape[0], x.shape[1] // DECIMATION))
    for i in range(x.shape[0]):
        for d in range(out.shape[1]):
            acc = 0.0
            for m in range(DECIMATION):
                acc += x[i, d * DECIMATION + m]
            out[i, d] = acc / DECIMATION
    return out


def decimate(x: FloatArray) -> FloatArray:
    """Average blocks of DECIMATION samples ([..., n] with n a multiple of DECIMATION)."""
    flat = np.ascontiguousarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    return np.asarray(_decimate(flat).reshape(*x.shape[:-1], -1))


@jit(fastmath=_DOT_MATH)
def _coarse_scores(segments_d: FloatArray) -> FloatArray:
    n_frames = segments_d.shape[0]
    out = np.empty((n_frames, _NL))
    r = np.zeros(_NL + 1)  # the last entry is the sentinel zero
    csum = np.zeros(SEGMENT_D + 1)
    win0 = SEGMENT_D - WIN_D
    for i in range(n_frames):
        seg = segments_d[i]
        for k in range(SEGMENT_D):
            csum[k + 1] = csum[k] + seg[k] * seg[k]
        e_win = csum[SEGMENT_D] - csum[win0]
        for m in range(_NL):
            start = win0 - (LAG_D_MIN + m)
            xy = 0.0
            for t in range(WIN_D):
                xy += seg[start + t] * seg[win0 + t]
            energy = csum[start + WIN_D] - csum[start]
            r[m] = xy / np.sqrt(energy * e_win + 1e-12)
        for m in range(_NL):
            sub = max(r[_HALF_IDX[m]], r[_THIRD_IDX[m]], 0.0)
            out[i, m] = r[m] - SUBHARMONIC_PENALTY * sub
    return out


def coarse_scores(segments_d: FloatArray) -> FloatArray:
    """[F, SEGMENT_D] decimated history -> [F, lags] candidate scores.

    The window is the last WIN_D samples; lag tau compares it with the window tau
    samples earlier (normalised correlation), minus SUBHARMONIC_PENALTY times the
    correlation at tau/2 or tau/3 when that is positive.
    """
    return np.asarray(_coarse_scores(np.ascontiguousarray(segments_d, dtype=np.float64)))


@jit()
def _pool_states(scores: FloatArray) -> FloatArray:
    out = np.empty((scores.shape[0], NB_STATES))
    for i in range(scores.shape[0]):
        for s in range(NB_STATES):
            best = scores[i, _STATE_STARTS[s]]
            for m in range(_STATE_STARTS[s] + 1, _STATE_ENDS[s]):
                best = max(best, scores[i, m])
            out[i, s] = best
    return out


def pool_states(scores: FloatArray) -> FloatArray:
    """[F, lags] scores -> [F, NB_STATES] best score within each state's lags."""
    return np.asarray(_pool_states(np.ascontiguousarray(scores, dtype=np.float64)))


@jit()
def _viterbi(cost: FloatArray, back: IntArray, obs: FloatArray, scores: FloatArray) -> IntArray:
    """Viterbi steps over the frames of obs, updating cost and back (a ring of
    back-pointers, oldest row first) in place. Returns the coarse lag decided at each
    step: the best lag in scores[i] (the decided frame's) within the decided state."""
    depth = back.shape[0]
    lags = np.empty(obs.shape[0], dtype=np.int64)
    new_cost = np.empty(NB_STATES)
    for i in range(obs.shape[0]):
        for s in range(depth - 1):
            back[s] = back[s + 1]
        for to in range(NB_STATES):
            best = cost[0] + TRANSITION[to, 0]
            arg = 0
            for fr in range(1, NB_STATES):
                c = cost[fr] + TRANSITION[to, fr]
                if c < best:
                    best = c
                    arg = fr
            new_cost[to] = best - obs[i, to]
            back[depth - 1, to] = arg
        low = new_cost.min()
        state = 0
        for to in range(NB_STATES):
            cost[to] = new_cost[to] - low
            if cost[to] < cost[state]:
                state = to
        for s in range(depth - 1, -1, -1):
            state = back[s, state]
        arg = _STATE_STARTS[state]
        for m in range(_STATE_STARTS[state] + 1, _STATE_ENDS[state]):
            if scores[i, m] > scores[i, arg]:
                arg = m
        lags[i] = arg + LAG_D_MIN
    return lags


@jit(fastmath=_DOT_MATH)
def _refine(history: FloatArray, coarse_lag_d: IntArray) -> tuple[IntArray, FloatArray]:
    n_frames = history.shape[0]
    n_lags = 2 * REFINE_RADIUS + 1
    period = np.empty(n_frames, dtype=np.int64)
    corr = np.empty(n_frames)
    win0 = REFINE_HISTORY - WINDOW_SIZE
    for i in range(n_frames):
        lo = min(max(coarse_lag_d[i] * DECIMATION - REFINE_RADIUS, PITCH_MIN), _REFINE_LO_MAX)
        h = history[i]
        e_win = 0.0
        for t in range(WINDOW_SIZE):
            e_win += h[win0 + t] * h[win0 + t]
        # energy of the window at the longest lag, then slid towards shorter lags
        first = win0 - (lo + n_lags - 1)
        e = 0.0
        for t in range(WINDOW_SIZE):
            e += h[first + t] * h[first + t]
        best_r = -np.inf
        best_m = 0
        for m in range(n_lags - 1, -1, -1):
            start = win0 - (lo + m)
            if m < n_lags - 1:
                e += h[start + WINDOW_SIZE - 1] ** 2 - h[start - 1] ** 2
            xy = 0.0
            for t in range(WINDOW_SIZE):
                xy += h[start + t] * h[win0 + t]
            r = xy / np.sqrt(e_win * max(e, 0.0) + 1e-12)
            if r >= best_r:  # ties go to the shorter lag
                best_r = r
                best_m = m
        period[i] = lo + best_m
        corr[i] = min(max(best_r, 0.0), 1.0)
    return period, corr


def refine(history: FloatArray, coarse_lag_d: IntArray) -> tuple[IntArray, FloatArray]:
    """Full-rate period and correlation around DECIMATION * coarse lag.

    history: [F, REFINE_HISTORY] samples ending with each frame's window (the last
    WINDOW_SIZE); coarse_lag_d: [F]. Returns T [F] in samples and the normalised
    correlation at T, clipped to [0, 1].
    """
    period, corr = _refine(
        np.ascontiguousarray(history, dtype=np.float64), np.asarray(coarse_lag_d, np.int64)
    )
    return np.asarray(period), np.asarray(corr)


@jit()
def track_block(
    buffers: FloatArray, pending: FloatArray, cost: FloatArray, back: IntArray
) -> tuple[IntArray, FloatArray, FloatArray]:
    """The whole chain for F steps' [F, n] buffers: period and correlation of the decided
    frames and the new pending scores; cost and back are updated in place."""
    n = buffers.shape[0]
    width = buffers.shape[1]
    scores = _coarse_scores(_decimate(buffers[:, width - SEGMENT :]))
    everything = np.concatenate((pending, scores))  # row i: the frame decided at step i
    lags = _viterbi(cost, back, _pool_states(scores), everything[:n])
    end = width - LOOKAHEAD_SAMPLES
    period, corr = _refine(buffers[:, end - REFINE_HISTORY : end], lags)
    return period, corr, everything[n:].copy()


class PitchTracker:
    """Streaming pitch state for track_block: the Viterbi costs, the last LOOKAHEAD_FRAMES
    back-pointers and the candidate scores of the frames not decided yet (zeros before
    the stream)."""

    def __init__(self) -> None:
        self.cost = np.zeros(NB_STATES)
        self.back = np.tile(np.arange(NB_STATES), (LOOKAHEAD_FRAMES, 1))  # oldest first
        self.pending = np.zeros((LOOKAHEAD_FRAMES, _NL))
