"""Synthetic noises for variety, all at SAMPLE_RATE, float64, unit RMS (except silence).

coloured: Gaussian noise with a random spectral slope (dB/octave), optionally
          amplitude-modulated; hum: mains fundamental with decaying harmonics;
          clicks: sparse decaying bursts over a faint hiss. Babble is built in
          mix.py from other training speakers.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from percepnet.constants import SAMPLE_RATE

FloatArray = npt.NDArray[np.float64]


def unit_rms(x: FloatArray) -> FloatArray:
    r = float(np.sqrt(np.mean(x**2)))
    return x / r if r > 0 else x


def coloured(n: int, rng: np.random.Generator, slope_db_oct: float | None = None) -> FloatArray:
    """Noise whose power falls by slope_db_oct per octave (0 white, -3 pink, -6 brown).

    Slope drawn from [-6, +3] dB/oct when not given; shaped in the frequency domain.
    """
    if slope_db_oct is None:
        slope_db_oct = float(rng.uniform(-6.0, 3.0))
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    f[0] = f[1] if n > 1 else 1.0
    # power ~ f^(slope/3.01) -> amplitude ~ f^(slope/6.02)
    spec *= (f / 1000.0) ** (slope_db_oct / (20 * np.log10(2)))
    x = np.fft.irfft(spec, n)
    if rng.random() < 0.3:  # slow level fluctuation (fans, traffic)
        t = np.arange(n) / SAMPLE_RATE
        x *= 1.0 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 2.0) * t + rng.uniform(0, 2 * np.pi))
    return unit_rms(x)


def hum(n: int, rng: np.random.Generator) -> FloatArray:
    """Mains hum: 50 or 60 Hz (+-0.5 %) with 1..30 harmonics, random phases and a
    random decay, plus a little hiss so it is not perfectly periodic."""
    f0 = float(rng.choice([50.0, 60.0])) * (1.0 + rng.uniform(-0.005, 0.005))
    t = np.arange(n) / SAMPLE_RATE
    n_harm = int(rng.integers(1, 31))
    decay = rng.uniform(0.0, 12.0)  # dB per harmonic
    x = np.zeros(n)
    for k in range(1, n_harm + 1):
        if k * f0 >= SAMPLE_RATE / 2:
            break
        amp = 10 ** (-decay * (k - 1) / 20) * (1.0 if k % 2 else rng.uniform(0.2, 1.0))
        x += amp * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
    x = unit_rms(x)
    return unit_rms(x + 10 ** (rng.uniform(-50, -25) / 20) * rng.standard_normal(n))


def clicks(n: int, rng: np.random.Generator) -> FloatArray:
    """Sparse clicks (keyboard, crackle): Poisson impulses of 0.5-20 /s, each a short
    exponentially decaying noise burst, over hiss 30-60 dB below."""
    rate_hz = rng.uniform(0.5, 20.0)
    count = rng.poisson(rate_hz * n / SAMPLE_RATE)
    x = np.zeros(n)
    burst_len = int(0.02 * SAMPLE_RATE)
    env = np.exp(-np.arange(burst_len) / (rng.uniform(0.0005, 0.005) * SAMPLE_RATE))
    for pos in rng.integers(0, max(1, n - burst_len), size=count):
        x[pos : pos + burst_len] += rng.uniform(0.2, 1.0) * env * rng.standard_normal(burst_len)
    hiss = 10 ** (rng.uniform(-60, -30) / 20) * rng.standard_normal(n)
    if not np.any(x):
        x[int(rng.integers(0, n))] = 1.0
    return unit_rms(unit_rms(x) + hiss)
