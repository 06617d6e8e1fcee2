"""Format conversions at the media edge: PyAV frames <-> mono float, levels.

Inside, audio is mono float64 in [-1, 1] at SAMPLE_RATE; out, one constant format:
packed s16 stereo at SAMPLE_RATE (stereo so the Opus encoder does not apply its -3 dB
mono upmix), clipped before every int16 cast.
"""

from __future__ import annotations

import fractions

import av
import numpy as np
import numpy.typing as npt

from percepnet.streaming import INT16_SCALE, SAMPLE_RATE

FloatArray = npt.NDArray[np.float64]
OUT_CHANNELS = 2
OUT_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


def level_db(x: FloatArray) -> float:
    """RMS level in dBFS of a float signal in [-1, 1]."""
    return float(10.0 * np.log10(float(np.dot(x, x)) / max(1, len(x)) + 1e-12))


def to_mono(frame: av.AudioFrame) -> FloatArray:
    """Any PyAV audio frame -> mono float64 in [-1, 1] at the frame's own rate."""
    channels = len(frame.layout.channels)
    if frame.format.name == "s16" and channels == 2:  # what aiortc's Opus decoder gives
        plane = memoryview(frame.planes[0])
        pcm = np.frombuffer(plane, np.int16, count=2 * frame.samples).reshape(-1, 2)
        x = pcm[:, 0].astype(np.float64)
        x += pcm[:, 1]
        x *= 0.5 / INT16_SCALE
        return x
    data = frame.to_ndarray()
    # planar: one row per channel; packed: channels interleaved in one row
    samples = data.reshape(channels, -1) if frame.format.is_planar else data.reshape(-1, channels).T
    if samples.dtype == np.int16:
        return samples.astype(np.float64).mean(axis=0) / INT16_SCALE
    if samples.dtype == np.int32:
        return samples.astype(np.float64).mean(axis=0) / 2.0**31
    return samples.astype(np.float64).mean(axis=0)


def to_stereo_s16(y: FloatArray, pts: int | None, time_base: fractions.Fraction) -> av.AudioFrame:
    """Mono float -> packed s16 stereo AudioFrame at SAMPLE_RATE (clipped before the cast)."""
    mono = y * INT16_SCALE
    np.rint(mono, out=mono)
    np.clip(mono, -INT16_SCALE, INT16_SCALE - 1, out=mono)
    pcm = np.empty((len(y), OUT_CHANNELS), dtype=np.int16)
    pcm[:] = mono[:, None]
    if len(y):  # a frame of the right size, filled in place: cheaper than from_ndarray
        frame = av.AudioFrame(format="s16", layout="stereo", samples=len(y))
        frame.planes[0].update(pcm.tobytes())
    else:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, 0), format="s16", layout="stereo")
    frame.sample_rate = SAMPLE_RATE
    frame.pts = pts
    frame.time_base = time_base
    return frame
