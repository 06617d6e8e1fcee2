"""The denoising media track: remote audio in, enhanced audio out, one constant format.

aiortc hands over s16 stereo 48 kHz frames of 960 samples (20 ms). Each is downmixed
to mono float, cut into FRAME_SIZE (10 ms) enhancer frames, and returned as one s16
stereo 48 kHz frame with the input's pts/time_base (stereo so the Opus encoder does
not apply its -3 dB mono upmix; never changing format, because the encoder's
resampler is fixed by the first frame).

Nothing raises out of recv() except MediaStreamError at the end of the source: a
frame whose processing fails, or that misses its deadline (it waited longer than the
deadline since it was decoded: we fell behind; with aiortc's own decoder threads, which
leave no arrival stamp, more than the deadline's worth of audio queued behind it),
passes through - delayed by the same LATENCY_SAMPLES so the stream stays continuous -
and is counted.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from percepnet.analysis import Frames
from percepnet.constants import FRAME_SIZE, INT16_SCALE, LATENCY_SAMPLES, SAMPLE_RATE
from percepnet.enhancer import Enhancer, GainPair
from percepnet.runtime import gains_for_many
from server.aiortc_speedups import arrival_clock, arrival_time
from server.metrics import Metrics

if TYPE_CHECKING:
    from server.batching import Runner

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
OUT_CHANNELS = 2
OUT_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
FAILURE_LOG_INTERVAL_S = 10
RESET_AFTER_FAILURES = 3
"""Consecutive failed frames after which the enhancer state is reset."""


@dataclass
class StreamStats:
    """Per-stream counters read by the session's stats task (same thread as recv)."""

    frames_processed: int = 0
    frames_bypassed: int = 0
    frames_failed: int = 0
    packets: int = 0
    cpu_seconds: float = 0.0
    last_frame_ms: float = 0.0
    level_in_db: float = -120.0
    level_out_db: float = -120.0
    backlog_ms: float = 0.0
    padding_samples: int = 0
    batch_wait_ms: float = 0.0  # smoothed wait for a model batch (BatchRunner), per packet
    queue_wait_ms: float = 0.0  # how long the last frame waited after decoding (if stamped)


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


@dataclass
class Packet:
    """One packet on its way through StreamProcessor.begin -> (gains) -> finish."""

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


class StreamProcessor:
    """The synchronous part: mono float in, mono float out, same length.

    enhancer=None is the pass-through mode (no DSP, no delay). Otherwise output is the
    enhancer's (LATENCY_SAMPLES late); frames that are late or fail are replaced by
    the input delayed by the same amount. Not thread-safe: one packet at a time.

    A packet goes through begin() (buffering, analysis), then its gains are computed
    (for one stream, or for many streams' packets in one model run: process_many),
    then finish() (synthesis, failure handling, metrics).
    """

    def __init__(self, enhancer: Enhancer | None, metrics: Metrics, stats: StreamStats) -> None:
        self.enhancer = enhancer
        self.metrics = metrics
        self.stats = stats
        self._pending = np.zeros(0)
        self._ready = np.zeros(0)
        self._delay = np.zeros(LATENCY_SAMPLES if enhancer is not None else 0)
        self._failures_in_row = 0
        self._last_failure_log = -math.inf

    @property
    def latency_samples(self) -> int:
        """Delay of the output in samples: algorithmic plus any alignment padding."""
        base = LATENCY_SAMPLES if self.enhancer is not None else 0
        return base + self.stats.padding_samples

    @property
    def added_latency_s(self) -> float:
        """Everything the service adds: latency_samples plus the wait for a model batch."""
        return self.latency_samples / SAMPLE_RATE + self.stats.batch_wait_ms / 1e3

    def process(self, x: FloatArray, late: bool) -> FloatArray:
        return process_many([(self, x, late)])[0]

    def begin(self, x: FloatArray, late: bool) -> Packet:
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
        packet = Packet(x=x, chunk=chunk, delayed=delayed, late=late)
        if self.enhancer is not None and n and not late:
            try:
                packet.frames = self.enhancer.analyse_frames(chunk)
            except Exception as exc:
                packet.error = exc
        packet.cpu_s += time.thread_time() - start_cpu
        packet.wall_s += time.perf_counter() - start
        return packet

    def finish(self, packet: Packet) -> FloatArray:
        """Synthesise (or pass through) the packet's frames; the packet's output."""
        start_cpu, start = time.thread_time(), time.perf_counter()
        n = packet.n_frames
        outs = [self._frames(packet)] if n else []
        ready = np.concatenate([self._ready, *outs]) if outs else self._ready
        if len(ready) < len(packet.x):  # input not a multiple of FRAME_SIZE: buffer once
            pad = len(packet.x) - len(ready)
            self.stats.padding_samples += pad
            ready = np.concatenate([np.zeros(pad), ready])
        y, self._ready = ready[: len(packet.x)], ready[len(packet.x) :]
        elapsed = packet.wall_s + time.perf_counter() - start
        if n:
            per_frame = elapsed / n
            for _ in range(n):
                self.metrics.frame_seconds.observe(per_frame)
            self.stats.last_frame_ms = 1e3 * per_frame
        self.stats.cpu_seconds += packet.cpu_s + time.thread_time() - start_cpu
        return y

    def _frames(self, packet: Packet) -> FloatArray:
        """Enhanced frames, or the frames passed through (pass-through mode, late, failed)."""
        n = packet.n_frames
        if self.enhancer is None:
            self._count("processed", n)
            return packet.chunk
        if packet.late:
            self._count("bypassed", n)
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
            self._failed(n)
            return packet.delayed
        self._failures_in_row = 0
        self._count("processed", n)
        return out

    def _failed(self, n: int) -> None:
        """Count a failure (called in the except block: the traceback is logged)."""
        assert self.enhancer is not None
        self._count("failed", n)
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

    def _count(self, outcome: str, n: int = 1) -> None:
        self.metrics.frames.labels(outcome).inc(n)
        if outcome == "processed":
            self.stats.frames_processed += n
        elif outcome == "bypassed":
            self.stats.frames_bypassed += n
        else:
            self.stats.frames_failed += n


def process_many(items: Sequence[tuple[StreamProcessor, FloatArray, bool]]) -> list[FloatArray]:
    """One packet each for several streams (each processor at most once): the outputs.

    Every stream's frames are analysed, then the gains of all of them come from one
    model run per frame index (runtime.gains_for_many: the weights are read once for
    all the streams), then each is synthesised. A failure in one stream's analysis,
    gains or synthesis touches that stream only; a failed model run fails the packets
    in it.
    """
    packets = [proc.begin(x, late) for proc, x, late in items]
    waiting = [
        (proc.enhancer, packet)
        for (proc, _, _), packet in zip(items, packets, strict=True)
        if proc.enhancer is not None and packet.frames is not None
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
        # The shared run's cost, split between the streams by their frame counts.
        frames = sum(pk.n_frames for _, pk in waiting)
        cpu, wall = time.thread_time() - start_cpu, time.perf_counter() - start
        for _, packet in waiting:
            packet.cpu_s += cpu * packet.n_frames / frames
            packet.wall_s += wall * packet.n_frames / frames
    return [proc.finish(packet) for (proc, _, _), packet in zip(items, packets, strict=True)]


class Deadline:
    """Whether a stream's next packet is late, for the WebRTC track and the RTP sidecar.

    A packet that waited longer than `seconds` since it was decoded (or was due) means
    the worker is not keeping up: passing frames through (about 50x cheaper) catches
    up. A burst from the network (several packets decoded at once) is not late. Without
    an arrival time (aiortc's decoder threads) a packet is judged by the audio queued
    behind it, which a burst can also fill. Falling behind is logged once per
    FAILURE_LOG_INTERVAL_S.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last_log = -math.inf

    def check(self, stats: StreamStats, backlog_s: float, waited_s: float | None) -> bool:
        stats.backlog_ms = 1e3 * backlog_s
        if waited_s is None:
            late = backlog_s > self.seconds
        else:
            stats.queue_wait_ms = 1e3 * waited_s
            late = waited_s > self.seconds
        if late and (now := time.monotonic()) - self._last_log >= FAILURE_LOG_INTERVAL_S:
            self._last_log = now
            log.warning(
                "falling behind at packet %d: passing frames through (waited %s ms since "
                "decoding, %.0f ms of audio queued, deadline %.0f ms; logged once per %d s)",
                stats.packets,
                "?" if waited_s is None else f"{1e3 * waited_s:.0f}",
                1e3 * backlog_s,
                1e3 * self.seconds,
                FAILURE_LOG_INTERVAL_S,
            )
        return late


def queued_frames(track: MediaStreamTrack) -> int:
    """Frames waiting in an aiortc remote track's queue (0 if it has none).

    RemoteStreamTrack keeps decoded frames in an unbounded asyncio.Queue `_queue`; its
    depth is exactly the backlog we caused (network jitter is absorbed before it, in
    the jitter buffer). Private, so read defensively.
    """
    queue = getattr(track, "_queue", None)
    return queue.qsize() if isinstance(queue, asyncio.Queue) else 0


class EnhancedTrack(MediaStreamTrack):
    """Wraps the peer's remote audio track; its recv() is what we send back."""

    kind = "audio"

    def __init__(
        self,
        source: MediaStreamTrack,
        processor: StreamProcessor,
        *,
        deadline_s: float,
        runner: Runner | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.processor = processor
        self.stats = processor.stats
        self.deadline = Deadline(deadline_s)
        self.runner = runner
        self._resampler: av.AudioResampler | None = None

    async def recv(self) -> av.AudioFrame:
        frame = await self.source.recv()  # MediaStreamError here ends the stream normally
        if not isinstance(frame, av.AudioFrame):
            raise MediaStreamError("not an audio frame")
        try:
            return await self._enhance(frame)
        except Exception:
            log.exception("frame conversion failed; sending silence of the same length")
            self.processor.metrics.frames.labels("failed").inc()
            self.stats.frames_failed += 1
            samples = max(1, frame.samples * SAMPLE_RATE // max(1, frame.sample_rate))
            return to_stereo_s16(np.zeros(samples), frame.pts, frame.time_base or OUT_TIME_BASE)

    async def _enhance(self, frame: av.AudioFrame) -> av.AudioFrame:
        # CPU of the conversions here (this thread) plus, inside process(), the enhancer's
        # (whichever thread runs it); Opus and SRTP work in aiortc is not included.
        cpu = time.thread_time()
        pts, time_base = frame.pts, frame.time_base
        if frame.sample_rate != SAMPLE_RATE:  # not Opus: bring it to the internal rate
            frame, pts, time_base = self._resample(frame)
        backlog_s = queued_frames(self.source) * frame.samples / SAMPLE_RATE
        arrived = arrival_time(frame)
        waited = None if arrived is None else arrival_clock() - arrived
        late = self.deadline.check(self.stats, backlog_s, waited)
        x = to_mono(frame)
        self.stats.cpu_seconds += time.thread_time() - cpu
        y = (
            self.processor.process(x, late)
            if self.runner is None
            else await self.runner.run(self.processor, x, late, arrived=arrived)
        )
        cpu = time.thread_time()
        self.stats.packets += 1
        self.stats.level_in_db = level_db(x)
        self.stats.level_out_db = level_db(y)
        out = to_stereo_s16(y, pts, time_base or OUT_TIME_BASE)
        self.stats.cpu_seconds += time.thread_time() - cpu
        return out

    def _resample(
        self, frame: av.AudioFrame
    ) -> tuple[av.AudioFrame, int | None, fractions.Fraction]:
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=SAMPLE_RATE)
        pieces = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        pcm = np.concatenate(pieces).astype(np.int16) if pieces else np.zeros(0, dtype=np.int16)
        out = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="stereo")
        out.sample_rate = SAMPLE_RATE
        pts = None
        if frame.pts is not None and frame.time_base is not None:
            pts = int(frame.pts * frame.time_base * SAMPLE_RATE)
        return out, pts, OUT_TIME_BASE

    def stop(self) -> None:
        super().stop()
        self.source.stop()
