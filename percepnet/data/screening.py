"""Screening of candidate clips: level, clipping, estimated SNR and bandwidth."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

from percepnet.data.inventory import Entry
from percepnet.data.paths import DataConfig

FloatArray = npt.NDArray[np.float64]

# Screening thresholds for clean-speech candidates.
MIN_SPEECH_SECONDS = 0.5
"""Shorter clips carry too little speech to train on."""
MIN_ACTIVE_LEVEL_DBFS = -50.0
"""Active-speech RMS below this is near-silent (or only hiss)."""
MAX_CLIP_FRACTION = 1e-3
"""More samples than this at full scale: clipped recording."""
MIN_SNR_EST_DB = 15.0
"""Loud-frame (95th pct) vs quiet-frame (10th pct) energy ratio: below it the 'clean'
clip is noisy. Tightly trimmed 1 s clips have few quiet frames, which makes this a
coarse screen; DNSMOS BAK is the finer one."""
MIN_DNSMOS_SIG = 3.0
MIN_DNSMOS_BAK = 3.2
"""DNSMOS P.835 floors (pack scores, see `score_dnsmos`)."""
MIN_NOISE_SECONDS = 0.5

FRAME_S = 0.02
"""Frame length (s) of the level/SNR statistics."""


def _frame_power_db(x: FloatArray, rate: int) -> FloatArray:
    n = max(1, int(FRAME_S * rate))
    k = len(x) // n
    if k == 0:
        return np.array([10 * np.log10(np.mean(x**2) + 1e-20)])
    p = np.mean(x[: k * n].reshape(k, n) ** 2, axis=1)
    return np.asarray(10 * np.log10(p + 1e-20))


def active_level_db(x: FloatArray, rate: int, floor_db: float = 40.0) -> float:
    """RMS level (dBFS, re. full-scale sine 0 dB = RMS 1) of frames within floor_db of the
    loudest frame: a cheap stand-in for P.56 active speech level."""
    f = _frame_power_db(x, rate)
    active = f[f > f.max() - floor_db]
    return float(10 * np.log10(np.mean(10 ** (active / 10)) + 1e-20))


def bandwidth_estimate(x: FloatArray, rate: int, margin_db: float = 15.0) -> float:
    """Highest frequency (Hz) where the clip carries real energy, for the loss mask.

    The long-term spectrum (Welch, ~43 Hz resolution, smoothed over 250 Hz) is
    compared with its own floor: its lowest value above 1 kHz, which is the
    codec/resampler stop band of a band-limited clip, or the microphone hiss of a
    fullband one. The bandwidth is the highest frequency more than margin_db above
    that floor (and within 90 dB of the spectral peak), rounded down to 250 Hz.
    """
    if len(x) < 256 or not np.any(x):
        return 0.0
    from scipy.ndimage import uniform_filter1d
    from scipy.signal import welch

    nper = min(int(2 ** np.ceil(np.log2(rate / 43.0))), len(x))
    f, p = welch(x, fs=rate, nperseg=nper)
    width = max(1, round(250.0 / (f[1] - f[0])))
    db = 10 * np.log10(np.maximum(uniform_filter1d(p, width, mode="nearest"), 0.0) + 1e-20)
    above_1k = f >= 1000.0
    if not np.any(above_1k):
        return float(rate / 2)
    floor = float(np.min(db[above_1k]))
    if float(np.max(db[above_1k])) - floor < margin_db:
        return float(rate / 2)  # flat above 1 kHz: no edge anywhere, fullband
    ok = (db > floor + margin_db) & (db > db.max() - 90.0)
    idx = np.nonzero(ok)[0]
    if len(idx) == 0:
        return 0.0
    # The smoothing spreads an edge by half its width; round down (mask conservatively).
    edge = f[idx[-1]] - 0.5 * width * (f[1] - f[0])
    return float(min(rate / 2, max(0.0, math.floor(edge / 250.0) * 250.0)))


def read_mono(path: Path) -> tuple[FloatArray, int]:
    data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    return np.asarray(data.mean(axis=1)), int(rate)


def screen(entry: Entry, cfg: DataConfig) -> Entry:
    """Fill an entry's statistics and status ('ok' or 'rejected:<reason>')."""
    path = cfg.root(entry.root) / entry.path
    try:
        x, rate = read_mono(path)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        return replace(entry, status=f"rejected:unreadable ({exc})"[:80])
    e = replace(entry, rate=rate, duration=len(x) / rate if rate else 0.0)
    if len(x) == 0:
        return replace(e, status="rejected:empty")
    peak = float(np.max(np.abs(x)))
    e.peak_dbfs = float(20 * np.log10(peak + 1e-20))
    e.level_dbfs = active_level_db(x, rate)
    frames = _frame_power_db(x, rate)
    e.snr_est_db = float(np.percentile(frames, 95) - np.percentile(frames, 10))
    e.clip_frac = float(np.mean(np.abs(x) >= 0.999)) if peak >= 0.999 else 0.0
    if entry.kind == "rir":
        return e
    e.bandwidth_hz = bandwidth_estimate(x, rate)
    return judge(e)


def judge(e: Entry) -> Entry:
    """Status from an entry's statistics (re-run on every build, so thresholds can
    change without decoding the audio again); DNSMOS floors are applied later."""
    if e.kind == "rir" or e.status.startswith("rejected:unreadable") or e.rate == 0:
        return e
    if e.kind == "noise":
        if e.duration < MIN_NOISE_SECONDS:
            return replace(e, status="rejected:short")
        if e.level_dbfs < -70.0:
            return replace(e, status="rejected:silent")
        return replace(e, status="ok")
    if e.duration < MIN_SPEECH_SECONDS:
        return replace(e, status="rejected:short")
    if e.level_dbfs < MIN_ACTIVE_LEVEL_DBFS:
        return replace(e, status="rejected:silent")
    if e.clip_frac > MAX_CLIP_FRACTION:
        return replace(e, status="rejected:clipped")
    if e.snr_est_db < MIN_SNR_EST_DB:
        return replace(e, status="rejected:noisy")
    return replace(e, status="ok")
