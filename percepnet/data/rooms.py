"""Room impulse responses: a cached bank of image-method rooms, measured RIRs, targets.

All RIRs are float64 at SAMPLE_RATE, trimmed so the direct path sits at
DIRECT_OFFSET samples and normalised to a unit direct-path peak. The clean target's
RIR keeps the direct path and early reflections (EARLY_S after it) and continues
with the late part multiplied by an exponential so that it decays with
TARGET_RT60_S (DESIGN.md section 3); the noisy input uses the full RIR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from percepnet.constants import SAMPLE_RATE
from percepnet.data.corpus import DataConfig, Entry, Log, read_mono

FloatArray = npt.NDArray[np.float64]

EARLY_S = 0.020
"""Direct path + early reflections kept unchanged in the target (s after the direct path)."""
TARGET_RT60_S = 0.200
"""Reverberation time the target's tail decays with (s)."""
DIRECT_OFFSET = 48
"""Samples kept before the direct-path peak (1 ms): fractional-delay pre-ringing."""
MAX_RIR_S = 1.5
"""Longest RIR kept (s); later samples are below -60 dB in the rooms we make."""
BANK_SIZE = 200
TRAIN_RT60_RANGE = (0.15, 1.0)
"""Sabine RT60 (s) of synthetic training rooms, drawn uniformly."""
MAX_IMAGE_ORDER = 120
"""Cap on the image-source order (cost grows with its cube)."""


def schroeder_db(h: FloatArray) -> FloatArray:
    """Backward-integrated energy decay curve in dB (0 dB at the start)."""
    e = np.cumsum((h**2)[::-1])[::-1]
    return np.asarray(10 * np.log10(e / max(e[0], 1e-30) + 1e-30))


def estimate_rt60(
    h: FloatArray, rate: int = SAMPLE_RATE, lo_db: float = -5.0, hi_db: float = -25.0
) -> float:
    """RT60 (s) from a line fit to the Schroeder curve between lo_db and hi_db (T20 x 3)."""
    edc = schroeder_db(h)
    idx = np.nonzero((edc <= lo_db) & (edc >= hi_db))[0]
    if len(idx) < 8:
        return math.nan
    t = idx / rate
    slope = np.polyfit(t, edc[idx], 1)[0]  # dB per second, negative
    return float(-60.0 / slope) if slope < 0 else math.nan


def normalise_rir(h: FloatArray) -> FloatArray:
    """Trim to DIRECT_OFFSET before the direct path, MAX_RIR_S long, unit direct peak."""
    h = np.asarray(h, dtype=np.float64)
    d = int(np.argmax(np.abs(h)))
    if d < DIRECT_OFFSET:
        h = np.concatenate([np.zeros(DIRECT_OFFSET - d), h])
        d = DIRECT_OFFSET
    start = d - DIRECT_OFFSET
    h = h[start : start + int(MAX_RIR_S * SAMPLE_RATE)]
    peak = h[DIRECT_OFFSET]
    h = h / (abs(peak) if peak != 0 else 1.0)
    return np.asarray(h * np.sign(peak) if peak != 0 else h)


def target_rir(h: FloatArray, rt60: float | None = None) -> FloatArray:
    """The clean target's RIR: unchanged up to EARLY_S after the direct path, then the
    late part multiplied by exp(-k t) so that its decay becomes TARGET_RT60_S.

    Energy decays as 10^(-6 t / RT60) (60 dB per RT60), amplitude as
    exp(-3 ln(10) t / RT60); multiplying by exp(-3 ln(10) t (1/T_target - 1/RT60))
    turns an RT60 decay into a T_target one. Rooms already drier than the target
    are left as they are.
    """
    h = np.asarray(h, dtype=np.float64)
    d = int(np.argmax(np.abs(h)))
    rt = estimate_rt60(h[d:]) if rt60 is None else rt60
    out = h.copy()
    if not math.isfinite(rt) or rt <= TARGET_RT60_S:
        return out
    e = d + int(EARLY_S * SAMPLE_RATE)
    if e >= len(h):
        return out
    t = np.arange(len(h) - e) / SAMPLE_RATE
    k = 3.0 * math.log(10.0) * (1.0 / TARGET_RT60_S - 1.0 / rt)
    out[e:] *= np.exp(-k * t)
    return out


def simulate_room(rng: np.random.Generator) -> tuple[FloatArray, dict[str, float]]:
    """One image-method shoebox room (pyroomacoustics) with random size, RT60 and positions."""
    import pyroomacoustics as pra

    dims = np.array([rng.uniform(3.0, 12.0), rng.uniform(2.5, 10.0), rng.uniform(2.4, 4.5)])
    rt60 = float(rng.uniform(*TRAIN_RT60_RANGE))
    try:
        e_abs, order = pra.inverse_sabine(rt60, dims)
    except ValueError:  # room too large/absorbing for that RT60: take a drier one
        rt60 = TRAIN_RT60_RANGE[0]
        e_abs, order = pra.inverse_sabine(rt60, dims)
    margin = 0.5
    src = rng.uniform(margin, dims - margin)
    mic = rng.uniform(margin, dims - margin)
    room = pra.ShoeBox(
        dims.tolist(),
        fs=SAMPLE_RATE,
        materials=pra.Material(float(e_abs)),
        max_order=int(min(order, MAX_IMAGE_ORDER)),
    )
    room.add_source(src.tolist())
    room.add_microphone(mic.tolist())
    room.compute_rir()
    h = normalise_rir(np.asarray(room.rir[0][0], dtype=np.float64))
    meta = {
        "rt60_sabine": rt60,
        "rt60": estimate_rt60(h),
        "distance": float(np.linalg.norm(src - mic)),
        "volume": float(np.prod(dims)),
    }
    return h, meta


def _save_bank(path: Path, rirs: Sequence[FloatArray], rt60: Sequence[float]) -> None:
    lengths = np.array([len(h) for h in rirs], dtype=np.int64)
    flat = np.concatenate(rirs).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, flat=flat, lengths=lengths, rt60=np.asarray(rt60, dtype=np.float64))
    tmp.replace(path)


def _load_bank(path: Path) -> tuple[list[FloatArray], FloatArray]:
    z = np.load(path)
    ends = np.cumsum(z["lengths"])
    flat = z["flat"].astype(np.float64)
    rirs = [flat[e - n : e] for e, n in zip(ends, z["lengths"], strict=True)]
    return rirs, np.asarray(z["rt60"], dtype=np.float64)


def synthetic_bank(cfg: DataConfig, n: int = BANK_SIZE, seed: int = 0, log: Log = print) -> Path:
    """Build (once) and cache a bank of n simulated rooms for training."""
    path = cfg.rirs / f"synthetic_{n}_{seed}.npz"
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    rirs, rts = [], []
    for i in range(n):
        h, meta = simulate_room(rng)
        rirs.append(h)
        rts.append(meta["rt60"])
        if (i + 1) % 50 == 0:
            log(f"  rooms: {i + 1}/{n}")
    _save_bank(path, rirs, rts)
    log(f"rir bank: {n} rooms -> {path}")
    return path


def measured_bank(cfg: DataConfig, entries: Sequence[Entry], split: str) -> Path:
    """Measured RIRs of one split (dev/test), resampled to SAMPLE_RATE and normalised."""
    import soxr

    path = cfg.rirs / f"measured_{split}.npz"
    rows = [e for e in entries if e.kind == "rir" and e.split == split and e.status == "ok"]
    rirs, rts = [], []
    for e in sorted(rows, key=lambda e: e.path):
        x, rate = read_mono(cfg.root(e.root) / e.path)
        if rate != SAMPLE_RATE:
            x = np.asarray(soxr.resample(x, rate, SAMPLE_RATE))
        h = normalise_rir(x)
        rirs.append(h)
        rts.append(estimate_rt60(h))
    if rirs:
        _save_bank(path, rirs, rts)
    return path


class RirBank:
    """RIRs of one split with their RT60s; `pair` gives (full, target) for one draw."""

    def __init__(self, rirs: Sequence[FloatArray], rt60: Sequence[float] | FloatArray) -> None:
        if not rirs:
            raise ValueError("empty RIR bank")
        self.rirs = list(rirs)
        self.rt60 = np.asarray(rt60, dtype=np.float64)
        self._targets: dict[int, FloatArray] = {}

    @classmethod
    def load(cls, path: Path) -> RirBank:
        rirs, rt = _load_bank(path)
        return cls(rirs, rt)

    @classmethod
    def for_split(
        cls, cfg: DataConfig, split: str, entries: Sequence[Entry] | None = None
    ) -> RirBank:
        """Synthetic rooms for train, measured RIRs for dev/test (built on first use)."""
        if split == "train":
            return cls.load(synthetic_bank(cfg))
        path = cfg.rirs / f"measured_{split}.npz"
        if not path.exists():
            if entries is None:
                raise FileNotFoundError(f"{path} missing: run 'percepnet data prepare'")
            measured_bank(cfg, entries, split)
        return cls.load(path)

    def __len__(self) -> int:
        return len(self.rirs)

    def pair(self, i: int) -> tuple[FloatArray, FloatArray]:
        if i not in self._targets:
            rt = float(self.rt60[i])
            self._targets[i] = target_rir(self.rirs[i], rt if math.isfinite(rt) else None)
        return self.rirs[i], self._targets[i]
