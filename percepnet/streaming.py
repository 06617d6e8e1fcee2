"""The streaming API: everything of the algorithm that a service (server/) uses.

    factory = load_enhancer_factory(path_or_None)     # the model, loaded once
    stream = StreamEnhancer(factory())                # one per stream
    stream.apply(StreamSettings(attenuation_limit_db=12))
    result = stream.process(packet, late=False)       # 20 ms in, 20 ms out
    results = enhance_many([(stream_a, a, False), (stream_b, b, False)])

A StreamEnhancer takes packets of any length (20 ms from WebRTC's Opus path, 40 or
60 ms from RTP) of mono float64 at SAMPLE_RATE and returns as many samples, all
LATENCY_SAMPLES late (plus one-off padding when a packet is not a whole number of
10 ms frames). It owns that latency: frames that are late (the caller says so) or
whose processing fails go out as the input delayed by the same amount, so the stream
stays continuous. `enhance_many` advances several streams' packets together: every
stream's frames are analysed, the gains of all of them come from one model run per
frame index (the weights are read once for all the streams), then each stream is
synthesised. When and which packets to batch is the caller's business; running them
is this module's.

Also here, for the service's edges and its test tools: the audio format constants
(SAMPLE_RATE, FRAME_SIZE, PACKET_SAMPLES, INT16_SCALE), `load_audio` (a file as mono
float at SAMPLE_RATE) and `package_version`.

Errors: ModelError (no usable model, at load), SettingsError (a bad setting, a
ValueError). A failing frame never raises: it is counted in the PacketResult.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from percepnet.analysis import Frames
from percepnet.audio import load as load_audio
from percepnet.constants import (
    FRAME_SIZE,
    INT16_SCALE,
    LATENCY_SAMPLES,
    PACKET_SAMPLES,
    SAMPLE_RATE,
)
from percepnet.enhancer import Diagnostics, Enhancer, GainPair, warm_up
from percepnet.runtime import (
    DEFAULT_MODEL,
    EnhancerFactory,
    ModelError,
    gains_for_many,
    load_enhancer_factory,
)
from percepnet.settings import MAX_ATTENUATION_DB, SettingsError, StreamSettings
from percepnet.version import package_version

__all__ = [
    "DEFAULT_MODEL",
    "FRAME_SIZE",
    "INT16_SCALE",
    "LATENCY_SAMPLES",
    "MAX_ATTENUATION_DB",
    "PACKET_SAMPLES",
    "SAMPLE_RATE",
    "Diagnostics",
    "Enhancer",
    "EnhancerFactory",
    "ModelError",
    "PacketResult",
    "SettingsError",
    "StreamEnhancer",
    "StreamSettings",
    "enhance_many",
    "load_audio",
    "load_enhancer_factory",
    "package_version",
    "unity_enhancer_factory",
    "warm_up",
]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

FAILURE_LOG_INTERVAL_S = 10
"""A stream's failing frames are logged (with the traceback) at most this often."""
RESET_AFTER_FAILURES = 3
"""Consecutive failed packets after which the enhancer state is reset."""


def unity_enhancer_factory() -> EnhancerFactory:
    """Enhancers with unity gains and no model: the full DSP path, for wiring checks."""
    return Enhancer


@dataclass
class PacketResult:
    """One packet's output and what happened to its frames."""

    samples: FloatArray
    """As many samples as the packet had, LATENCY_SAMPLES (+ padding) late."""
    processed: int = 0
    """Frames enhanced (or passed through by a pass-through stream)."""
    bypassed: int = 0
    """Frames passed through, delayed, because the caller said the packet was late."""
    failed: int = 0
    """Frames passed through, delayed, because their processing failed."""
    cpu_s: float = 0.0
    """CPU seconds spent on this packet, with its share of a shared model run."""
    wall_s: float = 0.0
    """Wall seconds, likewise."""

    @property
    def frames(self) -> int:
        return self.processed + self.bypassed + self.failed


@dataclass
class _Packet:
    """One packet between StreamEnhancer._begin and _finish."""

    x: FloatArray  # the packet: its output has this length
    chunk: FloatArray  # the whole 10 ms frames taken from what was pending plus x
    delayed: FloatArray  # chunk through the delay line: what passes through
    late: bool
    frames: Frames | None = None  # analysed, waiting for its gains (enhancing only)
    gains: GainPair | None = None
    error: BaseException | None = None
    cpu_s: float = 0.0
    wall_s: float = 0.0

    @property
    def n_frames(self) -> int:
        return len(self.chunk) // FRAME_SIZE


class StreamEnhancer:
    """One stream: packets of any length in, as many samples out, latency compensated.

    enhancer=None is the pass-through mode (no DSP, no delay). Otherwise the output is
    the enhancer's (LATENCY_SAMPLES late); frames that are late or fail are replaced by
    the input delayed by the same amount. Not thread-safe: one packet at a time.
    """

    def __init__(self, enhancer: Enhancer | None) -> None:
        self.enhancer = enhancer
        self._settings = StreamSettings()  # pass-through mode's (the enhancer holds its own)
        self.padding_samples = 0
        """Alignment padding so far (packets that were not whole frames), in samples."""
        self._pending = np.zeros(0)
        self._ready = np.zeros(0)
        self._delay = np.zeros(LATENCY_SAMPLES if enhancer is not None else 0)
        self._failures_in_row = 0
        self._last_failure_log = -math.inf

    @property
    def enhancing(self) -> bool:
        """Whether packets go through the model (False: pass-through mode)."""
        return self.enhancer is not None

    @property
    def latency_samples(self) -> int:
        """Delay of the output in samples: algorithmic plus any alignment padding."""
        base = LATENCY_SAMPLES if self.enhancer is not None else 0
        return base + self.padding_samples

    @property
    def diagnostics(self) -> Diagnostics | None:
        """The last frame's voice activity, gain and pitch (None: pass-through)."""
        return self.enhancer.diagnostics if self.enhancer is not None else None

    @property
    def settings(self) -> StreamSettings:
        return self.enhancer.settings if self.enhancer is not None else self._settings

    def apply(self, settings: StreamSettings) -> None:
        """Use `settings` from the next packet on."""
        if self.enhancer is not None:
            self.enhancer.apply(settings)
        else:
            self._settings = settings

    def process(self, x: FloatArray, late: bool = False) -> PacketResult:
        """One packet of this stream alone (enhance_many of one)."""
        return enhance_many([(self, x, late)])[0]

    def _begin(self, x: FloatArray, late: bool) -> _Packet:
        """Take the packet's whole frames and, when enhancing them, analyse them."""
        start_cpu, start = time.thread_time(), time.perf_counter()
        data = np.concatenate([self._pending, x]) if self._pending.size else x
        n = len(data) // FRAME_SIZE
        chunk = data[: n * FRAME_SIZE]
        self._pending = data[n * FRAME_SIZE :].copy()
        delayed = chunk
        if self.enhancer is not None and n:
            line = np.concatenate([self._delay, chunk])
            delayed, self._delay = line[: n * FRAME_SIZE], line[n * FRAME_SIZE :]
        packet = _Packet(x=x, chunk=chunk, delayed=delayed, late=late)
        if self.enhancer is not None and n and not late:
            try:
                packet.frames = self.enhancer.analyse_frames(chunk)
            except Exception as exc:
                packet.error = exc
        packet.cpu_s += time.thread_time() - start_cpu
        packet.wall_s += time.perf_counter() - start
        return packet

    def _finish(self, packet: _Packet) -> PacketResult:
        """Synthesise (or pass through) the packet's frames; the packet's output."""
        start_cpu, start = time.thread_time(), time.perf_counter()
        result = PacketResult(samples=np.zeros(0))
        outs = [self._frames(packet, result)] if packet.n_frames else []
        ready = np.concatenate([self._ready, *outs]) if outs else self._ready
        if len(ready) < len(packet.x):  # input not a multiple of FRAME_SIZE: buffer once
            pad = len(packet.x) - len(ready)
            self.padding_samples += pad
            ready = np.concatenate([np.zeros(pad), ready])
        result.samples, self._ready = ready[: len(packet.x)], ready[len(packet.x) :]
        result.cpu_s = packet.cpu_s + time.thread_time() - start_cpu
        result.wall_s = packet.wall_s + time.perf_counter() - start
        return result

    def _frames(self, packet: _Packet, result: PacketResult) -> FloatArray:
        """Enhanced frames, or the frames passed through (pass-through mode, late, failed)."""
        n = packet.n_frames
        if self.enhancer is None:
            result.processed = n
            return packet.chunk
        if packet.late:
            result.bypassed = n
            return packet.delayed
        try:
            if packet.error is not None:
                raise packet.error
            if packet.frames is None or packet.gains is None:
                raise RuntimeError("packet finished before its gains were computed")
            g, r = packet.gains
            out = np.asarray(self.enhancer.synthesise_frames(packet.frames, g, r), dtype=np.float64)
            if out.shape != packet.chunk.shape or not np.isfinite(out).all():
                raise ValueError(f"enhancer returned {out.shape} {out.dtype} with non-finite")
        except Exception:
            result.failed = n
            self._failed()
            return packet.delayed
        self._failures_in_row = 0
        result.processed = n
        return out

    def _failed(self) -> None:
        """Log a failure (called in the except block: the traceback is logged)."""
        assert self.enhancer is not None
        self._failures_in_row += 1
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_S:
            self._last_failure_log = now
            log.exception(
                "enhancer frame failed; passing it through (logged once per %d s)",
                FAILURE_LOG_INTERVAL_S,
            )
        if self._failures_in_row == RESET_AFTER_FAILURES:
            # A one-off failure leaves the history usable (a short splice); repeated
            # ones suggest a broken state, so start clean.
            try:
                self.enhancer.reset()
            except Exception:
                log.exception("enhancer reset failed")


def enhance_many(items: Sequence[tuple[StreamEnhancer, FloatArray, bool]]) -> list[PacketResult]:
    """One packet each (samples, late) for several streams (each at most once).

    Every stream's frames are analysed, then the gains of all of them come from one
    model run per frame index (runtime.gains_for_many), then each is synthesised. A
    failure in one stream's analysis, gains or synthesis touches that stream only; a
    failed model run fails the packets in it. The shared run's cost is split between
    the streams by their frame counts.
    """
    packets = [stream._begin(x, late) for stream, x, late in items]
    waiting = [
        (stream.enhancer, packet)
        for (stream, _, _), packet in zip(items, packets, strict=True)
        if stream.enhancer is not None and packet.frames is not None
    ]
    if waiting:
        start_cpu, start = time.thread_time(), time.perf_counter()
        results = gains_for_many(
            [enh.source for enh, _ in waiting], [pk.frames for _, pk in waiting if pk.frames]
        )
        for (_, packet), result in zip(waiting, results, strict=True):
            if isinstance(result, Exception):
                packet.error = result
            else:
                packet.gains = result
        frames = sum(pk.n_frames for _, pk in waiting)
        cpu, wall = time.thread_time() - start_cpu, time.perf_counter() - start
        for _, packet in waiting:
            packet.cpu_s += cpu * packet.n_frames / frames
            packet.wall_s += wall * packet.n_frames / frames
    return [stream._finish(packet) for (stream, _, _), packet in zip(items, packets, strict=True)]
