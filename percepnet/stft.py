"""Framing: the power-complementary window, analysis FFT and overlap-add synthesis.

Frame l's window covers input samples [(l - 1) N, (l + 1) N) with N = FRAME_SIZE.
Windowing at analysis and synthesis with w, where w^2 overlap-adds to 1, makes
unity gains reproduce the input exactly, delayed by the window overlap.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.fft

from percepnet.constants import FRAME_SIZE, WINDOW_SIZE

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]


def vorbis_window(size: int = WINDOW_SIZE) -> FloatArray:
    """w[i] = sin(pi/2 sin^2(pi (i + 0.5) / size)); w[i]^2 + w[i + size/2]^2 = 1."""
    i = np.arange(size, dtype=np.float64)
    return np.sin(0.5 * np.pi * np.sin(np.pi * (i + 0.5) / size) ** 2)


WINDOW: FloatArray = vorbis_window()
WINDOW.flags.writeable = False


def analysis(frames: FloatArray) -> ComplexArray:
    """Windowed real FFT of [..., WINDOW_SIZE] time frames -> [..., NB_BINS] spectra."""
    return scipy.fft.rfft(frames * WINDOW, axis=-1)


def synthesis(spectra: ComplexArray) -> FloatArray:
    """Inverse FFT and synthesis window: [..., NB_BINS] -> [..., WINDOW_SIZE] to overlap-add."""
    return scipy.fft.irfft(spectra, n=WINDOW_SIZE, axis=-1) * WINDOW


def overlap_add(frames: FloatArray) -> FloatArray:
    """Overlap-add [J, WINDOW_SIZE] synthesised frames at hop FRAME_SIZE -> (J + 1) * FRAME_SIZE."""
    n = frames.shape[0]
    out = np.zeros((n + 1) * FRAME_SIZE)
    out[: n * FRAME_SIZE] += frames[:, :FRAME_SIZE].reshape(-1)
    out[FRAME_SIZE:] += frames[:, FRAME_SIZE:].reshape(-1)
    return out
