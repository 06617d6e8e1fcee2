"""The streaming enhancer: one object per stream, 480 samples in, 480 samples out.

The enhancer owns all history (input buffer, pitch tracker, overlap memory) and
takes its band gains g and strengths r from a pluggable GainSource: the oracle
(from a clean reference), the network, or unity gains. Output lags input by
LATENCY_SAMPLES (30 ms); `enhance_signal` runs the same arithmetic over a whole
signal and compensates that delay so output lines up with input.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from percepnet.analysis import (
    DECIDED,
    Analyzer,
    Frames,
    oracle_targets,
    pad_signal,
    step_buffers,
)
from percepnet.bands import BAND_CENTRES, band_energy
from percepnet.constants import (
    BIN_HZ,
    BLOCK_STEPS,
    BUFFER_SAMPLES,
    EPS,
    FRAME_SIZE,
    LATENCY_SAMPLES,
    NB_BANDS,
    SAMPLE_RATE,
    WINDOW_SIZE,
)
from percepnet.gains import apply_gains
from percepnet.jit import jit
from percepnet.settings import StreamSettings, gain_floor
from percepnet.stft import analysis_fft, overlap_add, synthesis, synthesise_stream

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]

GainPair = tuple[FloatArray, FloatArray | None]
"""Band gains g [F, NB_BANDS] and pitch-filter strengths r [F, NB_BANDS] (None: no filter)."""

# Averaging weights over the bands whose centre lies in the main speech range, for the
# voice-activity estimate.
_SPEECH = ((BAND_CENTRES * BIN_HZ >= 200) & (BAND_CENTRES * BIN_HZ <= 4000)).astype(np.float64)
VAD_WEIGHTS = _SPEECH / _SPEECH.sum()


class GainSource(Protocol):
    """Supplies g and r for a block of analysed frames, in order; may keep state."""

    def reset(self) -> None: ...

    def __call__(self, frames: Frames) -> GainPair: ...


class UnitySource:
    """g = 1, no pitch filter: the enhancer reproduces its input, delayed."""

    def reset(self) -> None:
        pass

    def __call__(self, frames: Frames) -> GainPair:
        return np.ones((len(frames), NB_BANDS)), None


class OracleSource:
    """Ideal g and r computed from the clean reference (48 kHz, aligned with the input).

    use_pitch_filter=False gives the band-gain-only oracle: g = sqrt(E_x / E_y) and no r.
    """

    def __init__(self, clean: FloatArray, *, use_pitch_filter: bool = True) -> None:
        self.clean = np.asarray(clean, dtype=np.float64)
        self.use_pitch_filter = use_pitch_filter
        n_steps = math.ceil((len(self.clean) + LATENCY_SAMPLES) / FRAME_SIZE) + 1
        self._padded = pad_signal(self.clean, max(n_steps, 1))

    def reset(self) -> None:
        pass

    def __call__(self, frames: Frames) -> GainPair:
        steps = frames.step
        need = (int(steps[-1]) + 1) * FRAME_SIZE + BUFFER_SAMPLES
        if need > len(self._padded):  # streamed past the clean signal: it is silent there
            self._padded = np.concatenate([self._padded, np.zeros(need - len(self._padded))])
        buffers = step_buffers(self._padded, int(steps[0]), len(steps))
        g, r = oracle_targets(frames, buffers)
        if not self.use_pitch_filter:
            E_x = band_energy(analysis_fft(buffers[:, DECIDED]))
            return np.clip(np.sqrt(E_x / (frames.E_y + EPS)), 0.0, 1.0), None
        return g, r


@dataclass
class Diagnostics:
    """What one frame looked like, for metrics and the data channel."""

    voice_activity: float = 0.0  # 0..1, from the gains in the speech bands
    mean_gain: float = 1.0  # mean band gain applied, linear
    pitch_hz: float = 0.0
    pitch_correlation: float = 0.0
    nonfinite_samples: int = 0  # NaN/inf input samples replaced by zero so far


@jit()
def _gain_summary(g: FloatArray) -> tuple[float, float]:
    """Voice activity (mean gain over the speech bands, in [0, 1]) and the mean gain."""
    speech = 0.0
    total = 0.0
    for b in range(NB_BANDS):
        speech += g[b] * VAD_WEIGHTS[b]
        total += g[b]
    return min(max(speech, 0.0), 1.0), total / NB_BANDS


@jit()
def _push(buffer: FloatArray, x: FloatArray) -> tuple[FloatArray, FloatArray, int]:
    """Append k frames of x (non-finite samples -> 0, counted) to the input buffer:
    the [k, BUFFER_SAMPLES] buffers of the k steps, the new buffer, the count."""
    k = len(x) // FRAME_SIZE
    line = np.empty(BUFFER_SAMPLES + len(x))
    line[:BUFFER_SAMPLES] = buffer
    bad = 0
    for i in range(len(x)):
        v = x[i]
        if not np.isfinite(v):
            v = 0.0
            bad += 1
        line[BUFFER_SAMPLES + i] = v
    buffers = np.empty((k, BUFFER_SAMPLES))
    for i in range(k):
        buffers[i] = line[(i + 1) * FRAME_SIZE : (i + 1) * FRAME_SIZE + BUFFER_SAMPLES]
    return buffers, line[k * FRAME_SIZE :].copy(), bad


class Enhancer:
    """Streaming PercepNet enhancer for one stream.

    process() takes FRAME_SIZE float samples at SAMPLE_RATE and returns FRAME_SIZE
    enhanced samples delayed by LATENCY_SAMPLES. Non-finite input samples are
    replaced by zero and counted. Its StreamSettings (`apply`) switch it to unity
    gains (enabled=False: the stream stays continuous and equally delayed) and floor g
    (attenuation_limit_db).
    """

    latency_samples = LATENCY_SAMPLES
    sample_rate = SAMPLE_RATE
    frame_size = FRAME_SIZE

    def __init__(
        self,
        source: GainSource | None = None,
        *,
        use_postfilter: bool = True,
        attenuation_limit_db: float | None = None,
    ) -> None:
        self.source: GainSource = source if source is not None else UnitySource()
        self.use_postfilter = use_postfilter
        self.settings = StreamSettings(attenuation_limit_db=attenuation_limit_db)
        self._analyzer = Analyzer()
        self._unity = UnitySource()
        self.reset()

    def apply(self, settings: StreamSettings) -> None:
        """Use `settings` from the next frame on (already validated and converted)."""
        self.settings = settings

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @property
    def attenuation_limit_db(self) -> float | None:
        return self.settings.attenuation_limit_db

    def reset(self) -> None:
        self._buffer = np.zeros(BUFFER_SAMPLES)
        self._overlap = np.zeros(FRAME_SIZE)
        self._analyzer.reset()
        self.source.reset()
        self.diagnostics = Diagnostics()

    def process(self, frame: npt.ArrayLike) -> Float32Array:
        """FRAME_SIZE samples in, FRAME_SIZE enhanced samples (LATENCY_SAMPLES late) out."""
        x = np.asarray(frame, dtype=np.float64).reshape(-1)
        if x.shape[0] != FRAME_SIZE:
            raise ValueError(f"Enhancer.process takes {FRAME_SIZE} samples, got {x.shape[0]}")
        return self.process_frames(x)

    def process_frames(self, samples: npt.ArrayLike) -> Float32Array:
        """k * FRAME_SIZE samples in, as many out: k frames analysed together.

        Equal to k calls of process() (to float rounding); cheaper per frame, since
        most of the per-frame cost is fixed overhead of the array operations.
        """
        frames = self.analyse_frames(samples)
        # The source runs even when disabled so its recurrent state follows the stream.
        g, r = self.source(frames)
        return self.synthesise_frames(frames, g, r)

    def analyse_frames(self, samples: npt.ArrayLike) -> Frames:
        """First half of process_frames: buffer k frames of input and analyse them.

        The caller then gets g, r for the frames from `self.source` (alone, or batched
        with other streams' sources: runtime.gains_for_many) and calls
        synthesise_frames; nothing else may run on this enhancer in between.
        """
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        k, rem = divmod(x.shape[0], FRAME_SIZE)
        if rem or k == 0:
            raise ValueError(f"process_frames takes a multiple of {FRAME_SIZE} samples: {len(x)}")
        buffers, self._buffer, bad = _push(self._buffer, x)
        if bad:
            self.diagnostics.nonfinite_samples += bad
        return self._analyzer.process(buffers)

    def synthesise_frames(
        self, frames: Frames, g: npt.ArrayLike, r: FloatArray | None
    ) -> Float32Array:
        """Second half of process_frames: apply g, r to the analysed frames; the output."""
        settings = self.settings
        gains: FloatArray = np.asarray(g, dtype=np.float64)
        if settings.attenuation_limit_db is not None:
            gains = np.maximum(gains, settings.gain_floor)
        d = self.diagnostics
        d.voice_activity, d.mean_gain = _gain_summary(gains[-1])
        d.pitch_hz = float(SAMPLE_RATE / frames.period[-1])
        d.pitch_correlation = float(frames.pitch_corr[-1])
        postfilter = self.use_postfilter and settings.enabled
        if not settings.enabled:
            gains, r = self._unity(frames)
        spectra = apply_gains(frames.Y, frames.P, frames.E_y, gains, r, use_postfilter=postfilter)
        return synthesise_stream(spectra, self._overlap)


def warm_up(factory: Callable[[], Enhancer] | None = None) -> float:
    """Compile (or load from the cache) every kernel of the streaming path; seconds taken.

    A service calls this before it takes streams: the first compile takes seconds,
    which must not land on a live stream's first frames.
    """
    start = time.perf_counter()
    enhancer = factory() if factory is not None else Enhancer()
    noise = np.random.default_rng(0).standard_normal(3 * FRAME_SIZE) * 0.01
    enhancer.process(noise[:FRAME_SIZE])
    enhancer.process_frames(noise[FRAME_SIZE:])
    enhancer.apply(StreamSettings(enabled=False))
    enhancer.process_frames(noise[FRAME_SIZE:])
    return time.perf_counter() - start


class ChunkedStream:
    """Feeds an Enhancer from chunks of any size; returns whatever output is ready.

    Concatenated, the outputs are identical to feeding the enhancer 480-sample frames.
    """

    def __init__(self, enhancer: Enhancer) -> None:
        self.enhancer = enhancer
        self._pending = np.zeros(0)

    def process(self, chunk: npt.ArrayLike) -> Float32Array:
        data = np.concatenate([self._pending, np.asarray(chunk, dtype=np.float64).reshape(-1)])
        n = len(data) // FRAME_SIZE
        out = [self.enhancer.process(data[i * FRAME_SIZE : (i + 1) * FRAME_SIZE]) for i in range(n)]
        self._pending = data[n * FRAME_SIZE :]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def enhance_signal(
    x: npt.ArrayLike,
    source: GainSource | None = None,
    *,
    use_postfilter: bool = True,
    attenuation_limit_db: float | None = None,
) -> Float32Array:
    """Enhance a whole 48 kHz mono signal; the output is aligned with the input.

    Same arithmetic as the streaming Enhancer, vectorised over blocks of frames;
    the LATENCY_SAMPLES delay is removed by running that many zeros past the end.
    """
    sig = np.asarray(x, dtype=np.float64).reshape(-1)
    sig = np.where(np.isfinite(sig), sig, 0.0)
    src: GainSource = source if source is not None else UnitySource()
    src.reset()
    length = len(sig)
    n_steps = math.ceil((length + LATENCY_SAMPLES) / FRAME_SIZE)
    padded = pad_signal(sig, n_steps)
    analyzer = Analyzer()
    floor = None if attenuation_limit_db is None else gain_floor(attenuation_limit_db)
    synth = np.empty((n_steps, WINDOW_SIZE))
    for first in range(0, n_steps, BLOCK_STEPS):
        count = min(BLOCK_STEPS, n_steps - first)
        frames = analyzer.process(step_buffers(padded, first, count))
        g, r = src(frames)
        if floor is not None:
            g = np.maximum(g, floor)
        spectrum = apply_gains(frames.Y, frames.P, frames.E_y, g, r, use_postfilter=use_postfilter)
        synth[first : first + count] = synthesis(spectrum)
    out = overlap_add(synth)
    return out[LATENCY_SAMPLES : LATENCY_SAMPLES + length].astype(np.float32)
