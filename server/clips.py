"""Audio clips for service checks: synthetic speech-like signals, or real recordings.

Real clips come from the shared data folder, found through PERCEPNET_DATA (default
`../shared/data` relative to the repository). Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from percepnet.streaming import SAMPLE_RATE, load_audio

FloatArray = npt.NDArray[np.float64]
REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The shared data folder (PERCEPNET_DATA, default ../shared/data next to the repo)."""
    env = os.environ.get("PERCEPNET_DATA")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data").resolve()


def speech_like(seconds: float, seed: int = 0, level: float = 0.25) -> FloatArray:
    """Voiced syllables with gliding pitch (90-260 Hz, harmonics to 8 kHz) and pauses.

    Peak about `level`; deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    x = np.zeros(n)
    pos = int(0.05 * SAMPLE_RATE)
    while pos < n:
        dur = int(rng.uniform(0.15, 0.35) * SAMPLE_RATE)
        f0 = rng.uniform(90.0, 260.0)
        t = np.arange(dur) / SAMPLE_RATE
        f = f0 * (1.0 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t))
        phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
        tone = np.zeros(dur)
        for h in range(1, int(8000 / (f0 * 1.08)) + 1):
            tone += h**-0.8 * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
        tone *= np.sin(np.pi * np.arange(dur) / dur) ** 2 / np.abs(tone).max()
        end = min(n, pos + dur)
        x[pos:end] += tone[: end - pos]
        pos = end + int(rng.uniform(0.05, 0.2) * SAMPLE_RATE)
    return level * x / max(1e-9, np.abs(x).max())


def white_noise(seconds: float, rms: float, seed: int = 1) -> FloatArray:
    rng = np.random.default_rng(seed)
    return rms * rng.standard_normal(int(seconds * SAMPLE_RATE))


def mix_at_snr(speech: FloatArray, noise: FloatArray, snr_db: float) -> FloatArray:
    """speech + noise scaled so that 10 log10(P_speech / P_noise) = snr_db."""
    noise = np.resize(noise, len(speech))
    scale = np.sqrt(np.mean(speech**2) / (np.mean(noise**2) * 10 ** (snr_db / 10)) + 1e-20)
    return speech + scale * noise


def real_speech(seconds: float) -> FloatArray | None:
    """A real speech excerpt at 48 kHz from the shared data, or None if it is not there."""
    folder = data_dir() / "speech" / "librispeech_excerpts"
    files = sorted(folder.glob("*")) if folder.is_dir() else []
    for path in files:
        if path.suffix.lower() in (".ogg", ".flac", ".wav"):
            x = load_audio(path)
            n = int(seconds * SAMPLE_RATE)
            x = x[:n] if len(x) >= n else np.resize(x, n)
            return 0.25 * x / max(1e-9, float(np.abs(x).max()))
    return None
