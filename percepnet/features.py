"""Whole-signal features and oracle targets: the training-data path.

Runs the same Analyzer the streaming enhancer runs, over blocks of steps, so a
model trained on these features sees at run time exactly what it saw here.
Row j of every output belongs to step j (input up to hop j); its gains and
strengths apply to frame j - LOOKAHEAD_FRAMES.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from percepnet.analysis import Analyzer, oracle_targets, pad_signal, step_buffers
from percepnet.constants import BLOCK_STEPS, FRAME_SIZE, LATENCY_SAMPLES

FloatArray = npt.NDArray[np.float64]


@dataclass
class Example:
    features: FloatArray  # [J, NB_FEATURES]
    gains: FloatArray  # [J, NB_BANDS] oracle g (with the extra attenuation)
    strengths: FloatArray  # [J, NB_BANDS] oracle r
    E_y: FloatArray  # [J, NB_BANDS] noisy band energy of the decided frame


def n_steps_for(length: int) -> int:
    """Steps needed so every input sample reaches the output (latency included)."""
    return math.ceil((length + LATENCY_SAMPLES) / FRAME_SIZE)


def compute_example(noisy: FloatArray, clean: FloatArray) -> Example:
    """Features of `noisy` and oracle targets from `clean` (48 kHz, same length)."""
    if len(noisy) != len(clean):
        raise ValueError(f"noisy and clean lengths differ: {len(noisy)} vs {len(clean)}")
    n = n_steps_for(len(noisy))
    pn, pc = (
        pad_signal(np.asarray(noisy, np.float64), n),
        pad_signal(np.asarray(clean, np.float64), n),
    )
    analyzer = Analyzer()
    feats, gs, rs, es = [], [], [], []
    for first in range(0, n, BLOCK_STEPS):
        count = min(BLOCK_STEPS, n - first)
        frames = analyzer.process(step_buffers(pn, first, count))
        g, r = oracle_targets(frames, step_buffers(pc, first, count))
        feats.append(frames.features)
        gs.append(g)
        rs.append(r)
        es.append(frames.E_y)
    return Example(
        np.concatenate(feats), np.concatenate(gs), np.concatenate(rs), np.concatenate(es)
    )
