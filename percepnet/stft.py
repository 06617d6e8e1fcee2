"""Framing: the power-complementary window, analysis FFT and overlap-add synthesis.

Frame l's window covers input samples [(l - 1) N, (l + 1) N) with N = FRAME_SIZE.
Windowing at analysis and synthesis with w, where w^2 overlap-adds to 1, makes
unity gains reproduce the input exactly, delayed by the window overlap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft

from percepnet.constants import FRAME_SIZE, WINDOW_SIZE
from percepnet.jit import jit

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]
Float32Array = npt.NDArray[np.float32]


def vorbis_window(size: int = WINDOW_SIZE) -> FloatArray:
    """w[i] = sin(pi/2 sin^2(pi (i + 0.5) / size)); w[i]^2 + w[i + size/2]^2 = 1."""
    i = np.arange(size, dtype=np.float64)
    return np.sin(0.5 * np.pi * np.sin(np.pi * (i + 0.5) / size) ** 2)


WINDOW: FloatArray = vorbis_window()
WINDOW.flags.writeable = False


def _scipy_rfft(x: FloatArray) -> ComplexArray:
    return scipy.fft.rfft(x, axis=-1)


def _scipy_irfft(x: ComplexArray) -> FloatArray:
    return scipy.fft.irfft(x, n=WINDOW_SIZE, axis=-1)


def _direct_transforms() -> tuple[Callable[[Any], Any], Callable[[Any], Any]] | None:
    """scipy.fft's own pocketfft transforms, called without its Python layers, or None.

    scipy.fft.rfft reaches the C++ transform through its backend dispatch and argument
    handling in Python, which is most of the cost for one packet's frames: for 4 frames,
    42 against 19 us back to back, and 263 against 109 us 20 ms after the last call
    (bench/idle_gap.py measures a packet's FFTs both ways). The entry points are private
    to scipy, so they are used only if they exist and give bit-identical results to
    scipy.fft on a test signal; otherwise scipy.fft is called.
    """
    try:
        from scipy.fft._pocketfft import pypocketfft as pocketfft

        def rfft(x: Any) -> Any:
            return pocketfft.r2c(x, (x.ndim - 1,), True, 0, None, 1)

        def irfft(x: Any) -> Any:  # inorm 2: scaled by 1/n, scipy's default ("backward")
            return pocketfft.c2r(x, (x.ndim - 1,), WINDOW_SIZE, False, 2, None, 1)

        probe = np.cos(np.arange(2 * WINDOW_SIZE) * 0.37).reshape(2, WINDOW_SIZE)
        spectrum = rfft(probe)
        if np.array_equal(spectrum, scipy.fft.rfft(probe, axis=-1)) and np.array_equal(
            irfft(spectrum), scipy.fft.irfft(spectrum, n=WINDOW_SIZE, axis=-1)
        ):
            return rfft, irfft
    except Exception:  # absent, renamed or with another signature: scipy.fft it is
        pass
    return None


_rfft, _irfft = _direct_transforms() or (_scipy_rfft, _scipy_irfft)


def spectra(windowed: FloatArray) -> ComplexArray:
    """Real FFT of [..., WINDOW_SIZE] frames the caller has already windowed."""
    return _rfft(np.asarray(windowed, dtype=np.float64))


def inverse(spectra: ComplexArray) -> FloatArray:
    """Inverse real FFT of [..., NB_BINS] spectra -> [..., WINDOW_SIZE] frames."""
    return _irfft(np.asarray(spectra, dtype=np.complex128))


def analysis_fft(frames: FloatArray) -> ComplexArray:
    """Windowed real FFT of [..., WINDOW_SIZE] time frames -> [..., NB_BINS] spectra."""
    return spectra(frames * WINDOW)


def synthesis(spectra: ComplexArray) -> FloatArray:
    """Inverse FFT and synthesis window: [..., NB_BINS] -> [..., WINDOW_SIZE] to overlap-add."""
    return inverse(spectra) * WINDOW


@jit()
def _overlap_add_stream(frames: FloatArray, overlap: FloatArray, out: FloatArray) -> None:
    for i in range(frames.shape[0]):
        for n in range(FRAME_SIZE):
            out[i * FRAME_SIZE + n] = overlap[n] + frames[i, n] * WINDOW[n]
        for n in range(FRAME_SIZE):
            overlap[n] = frames[i, FRAME_SIZE + n] * WINDOW[FRAME_SIZE + n]


def synthesise_stream(spectra: ComplexArray, overlap: FloatArray) -> Float32Array:
    """Streaming synthesis of [k, NB_BINS] spectra: k * FRAME_SIZE samples out.

    overlap holds the second half of the previous synthesised frame and is updated.
    The same arithmetic as synthesis followed by overlap_add.
    """
    frames = inverse(spectra)
    out = np.empty(len(frames) * FRAME_SIZE, dtype=np.float32)
    _overlap_add_stream(frames, overlap, out)
    return out


def overlap_add(frames: FloatArray) -> FloatArray:
    """Overlap-add [J, WINDOW_SIZE] synthesised frames at hop FRAME_SIZE -> (J + 1) * FRAME_SIZE."""
    n = frames.shape[0]
    out = np.zeros((n + 1) * FRAME_SIZE)
    out[: n * FRAME_SIZE] += frames[:, :FRAME_SIZE].reshape(-1)
    out[FRAME_SIZE:] += frames[:, FRAME_SIZE:].reshape(-1)
    return out
