"""Audio at the edges: read any rate/channel count, convert to 48 kHz mono float, write back.

Only here (and in server/) do formats change; inside percepnet/ audio is mono float
at SAMPLE_RATE in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from percepnet.constants import SAMPLE_RATE

FloatArray = npt.NDArray[np.float64]


class AudioError(ValueError):
    """An input file that cannot be used, with a message fit for a user."""


def read_audio(path: str | Path) -> tuple[FloatArray, int]:
    """(samples [n, channels] float64, rate). Raises AudioError with a clear message."""
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such file")
    if p.is_dir():
        raise AudioError(f"{p}: is a directory, expected an audio file")
    try:
        data, rate = sf.read(str(p), dtype="float64", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{p}: unreadable audio ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{p}: contains no samples")
    return data, int(rate)


def to_internal(data: FloatArray, rate: int) -> FloatArray:
    """[n, channels] at any rate -> mono float64 at SAMPLE_RATE; NaN/inf become 0."""
    mono = np.asarray(data, dtype=np.float64)
    if mono.ndim == 2:
        mono = mono.mean(axis=1)
    mono = np.where(np.isfinite(mono), mono, 0.0)
    return resample(mono, rate, SAMPLE_RATE)


def resample(x: FloatArray, rate_in: int, rate_out: int) -> FloatArray:
    if rate_in <= 0 or rate_out <= 0:
        raise AudioError(f"invalid sample rate {rate_in} -> {rate_out}")
    if rate_in == rate_out:
        return np.asarray(x, dtype=np.float64)
    return np.asarray(
        soxr.resample(np.asarray(x, dtype=np.float64), rate_in, rate_out, quality="HQ")
    )


def from_internal(x: npt.ArrayLike, rate: int, channels: int = 1) -> FloatArray:
    """48 kHz mono -> [n, channels] at `rate`, the length matched to rate's duration."""
    y = resample(np.asarray(x, dtype=np.float64), SAMPLE_RATE, rate)
    return np.repeat(y[:, None], channels, axis=1)


def load(path: str | Path) -> FloatArray:
    """Read a file as 48 kHz mono float64."""
    data, rate = read_audio(path)
    return to_internal(data, rate)


def write_audio(path: str | Path, data: npt.ArrayLike, rate: int) -> None:
    """Write float audio as 16-bit PCM (WAV/FLAC by extension), clipped to [-1, 1]."""
    arr = np.clip(np.asarray(data, dtype=np.float64), -1.0, 1.0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), arr, rate, subtype="PCM_16")
