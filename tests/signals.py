"""Deterministic test signals: harmonic 'voiced' tones with gliding pitch, noise at an SNR."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from percepnet.constants import SAMPLE_RATE

FloatArray = npt.NDArray[np.float64]


def harmonic(
    f0: float, seconds: float, rng: np.random.Generator, *, glide: float = 0.05, tilt: float = 0.7
) -> tuple[FloatArray, FloatArray]:
    """A harmonic tone (peak 0.5) whose f0 wobbles by +-glide; returns (signal, f0 per sample)."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f = f0 * (1.0 + glide * np.sin(2 * np.pi * 0.5 * t))
    phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    x = np.zeros(n)
    for h in range(1, min(int(8000 / (f0 * (1 + glide))), 40) + 1):
        x += h**-tilt * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
    return 0.5 * x / np.abs(x).max(), f


def speechlike(seconds: float, rng: np.random.Generator) -> FloatArray:
    """Voiced syllables (harmonic, pitch gliding) separated by pauses, with a 4 Hz envelope."""
    n = int(seconds * SAMPLE_RATE)
    x = np.zeros(n)
    pos = 0
    while pos < n:
        dur = int(rng.uniform(0.15, 0.35) * SAMPLE_RATE)
        f0 = rng.uniform(90, 260)
        tone, _ = harmonic(f0, dur / SAMPLE_RATE, rng, glide=0.08)
        env = np.sin(np.pi * np.arange(len(tone)) / len(tone)) ** 2
        end = min(n, pos + len(tone))
        x[pos:end] += (tone * env)[: end - pos]
        pos = end + int(rng.uniform(0.05, 0.2) * SAMPLE_RATE)
    return x


def add_noise(x: FloatArray, snr_db: float, rng: np.random.Generator) -> FloatArray:
    noise = rng.standard_normal(len(x))
    noise *= np.sqrt(np.mean(x**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return x + noise
