"""Quality floor of the shipped model on one dev-split clip (real speech, real noise).

The clip and noise are in the dev split of the corpus manifest (`percepnet data`), so
this floor never touches the test split. The floor sits below the measured value with
room for machine noise; it guards against regressions, it is not the quality report
(that is bench/quality.py on the test split, in models/README.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from percepnet.audio import load
from percepnet.enhancer import enhance_signal
from percepnet.metrics import pesq_wb, stoi
from percepnet.runtime import OnnxSource, load_model
from server.clips import data_dir

SPEECH = "speech/picovoice_speech_to_intent/speech/clean/05ad3db4-3456-4570-a4dd-4c64d8814681.flac"
NOISE = "noise/speech_commands_background/running_tap.flac"
SNR_DB = 5.0
PESQ_GAIN_FLOOR = 0.15
"""Model PESQ-WB minus noisy PESQ-WB must exceed this."""
STOI_FLOOR = 0.83
"""Absolute STOI of the output. The shipped model (step 5433, see models/README.md)
measures PESQ 1.07 -> 1.37 and STOI 0.887 -> 0.839 here (step 1645 gave 1.19 and
0.858): it still lowers STOI on this clip, a known shortfall (issue 3)."""


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    root = data_dir()
    if not (root / SPEECH).exists():
        pytest.skip(f"shared data not found at {root} (set PERCEPNET_DATA)")
    clean = load(root / SPEECH)
    clean = 0.1 * clean / np.sqrt(np.mean(clean**2))
    noise = load(root / NOISE)[48_000 : 48_000 + len(clean)]
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (SNR_DB / 10))
    return clean, clean + noise


def test_shipped_model_improves_pesq_on_a_dev_clip(pair) -> None:
    clean, noisy = pair
    out = enhance_signal(noisy, OnnxSource(load_model()))
    base, enhanced = pesq_wb(clean, noisy, 48_000), pesq_wb(clean, out, 48_000)
    assert enhanced - base > PESQ_GAIN_FLOOR, (base, enhanced)
    assert stoi(clean, out, 48_000) > STOI_FLOOR
