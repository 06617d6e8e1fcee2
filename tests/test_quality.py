"""Quality floor of the shipped model on one dev-split clip (real speech, real noise), as
a caller's audio arrives: through a telephone (8 kHz), wideband (16 kHz) or fullband
channel, speech and noise band-limited together, then through the service's 48 kHz path
and scored at the channel's rate (PESQ-NB at 8 kHz, PESQ-WB otherwise).

The clip and noise are in the dev split of the corpus manifest (`percepnet data`), so
these floors never touch the test split. Each floor sits below the value measured for
the shipped model, with room for machine noise; the model shipped before it (step 5433
of run v1) fails them, which is what they guard against. They are not the quality
report: that is bench/calls.py on the test split, in models/README.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.clean_pass import SPEECH, channel, scores
from percepnet.audio import load
from percepnet.constants import SAMPLE_RATE
from percepnet.enhancer import enhance_signal
from percepnet.runtime import OnnxSource, load_model
from server.clips import data_dir

NOISE = "noise/speech_commands_background/running_tap.flac"
SNR_DB = 5.0

PESQ_GAIN_FLOOR = {8000: 0.25, 16000: 0.30, SAMPLE_RATE: 0.30}
"""Model PESQ minus noisy PESQ, by channel rate. Measured for the shipped model:
see FLOOR_NOTE; the previous model (v1) measured -0.05 (8 kHz), +0.24 and +0.30."""
FLOOR_NOTE = (
    "shipped model (run v7 step 1063), 2026-12-03: PESQ +0.49 (8 kHz), +0.34, +0.33 and SI-SDR "
    "up 2.7-6.1 dB in every channel, but STOI 0.89 -> 0.87-0.88 (RNNoise: 0.94), so the first "
    "test still fails; clean speech: PESQ -0.03, SI-SDR 19-20 dB (< 25), so the second fails too"
)
CLEAN_SI_SDR_FLOOR_DB = 25.0
CLEAN_PESQ_DROP = 0.1
"""Clean speech passes: SI-SDR above 25 dB and PESQ within 0.1 of the input's."""


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    root = data_dir()
    if not (root / SPEECH).exists():
        pytest.skip(f"shared data not found at {root} (set PERCEPNET_DATA)")
    clean = load(root / SPEECH)
    return 0.1 * clean / np.sqrt(np.mean(clean**2))


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_model()


OPEN = pytest.mark.xfail(
    strict=True,
    reason="issue 15 open: the shipped model does not reach these floors yet; " + FLOOR_NOTE,
)


@OPEN
@pytest.mark.parametrize("rate", [8000, 16000, SAMPLE_RATE])
def test_model_improves_a_noisy_dev_clip_in_every_channel(speech, model, rate: int) -> None:
    noise = load(data_dir() / NOISE)[SAMPLE_RATE : SAMPLE_RATE + len(speech)]
    noise *= np.sqrt(np.mean(speech**2) / np.mean(noise**2) / 10 ** (SNR_DB / 10))
    clean, noisy = channel(speech, rate), channel(speech + noise, rate)
    out = enhance_signal(noisy, OnnxSource(model))
    p0, s0, d0 = scores(clean, noisy, rate)
    p1, s1, d1 = scores(clean, out, rate)
    assert p1 - p0 > PESQ_GAIN_FLOOR[rate], (p0, p1)
    assert s1 > s0, (s0, s1)  # never less intelligible than the input
    assert d1 > d0, (d0, d1)


@OPEN
@pytest.mark.parametrize("rate", [16000, SAMPLE_RATE])
def test_clean_speech_passes(speech, model, rate: int) -> None:
    clean = channel(speech, rate)
    out = enhance_signal(clean, OnnxSource(model))
    p_in, _, _ = scores(clean, clean, rate)
    p_out, _, d_out = scores(clean, out, rate)
    assert d_out > CLEAN_SI_SDR_FLOOR_DB, d_out
    assert p_in - p_out < CLEAN_PESQ_DROP, (p_in, p_out)
