"""Regenerate tests/golden/clip.npz (run only when the DSP changes on purpose).

python -m tests.golden.make_golden
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from percepnet.features import compute_example
from tests.signals import add_noise, speechlike

HERE = Path(__file__).resolve().parent


def golden_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2024)
    clean = speechlike(1.0, rng)
    return clean, add_noise(clean, 5.0, rng)


def main() -> None:
    clean, noisy = golden_pair()
    ex = compute_example(noisy, clean)
    np.savez_compressed(
        HERE / "clip.npz",
        features=ex.features.astype(np.float32),
        gains=ex.gains.astype(np.float32),
        strengths=ex.strengths.astype(np.float32),
    )


if __name__ == "__main__":
    main()
