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

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from percepnet.streaming import SAMPLE_RATE
from server.media.aiortc_hooks.inline_codecs import arrival_clock, arrival_time
from server.media.convert import OUT_TIME_BASE, level_db, to_mono, to_stereo_s16
from server.media.processor import StreamProcessor, StreamStats
from server.media.runners import Runner

log = logging.getLogger(__name__)

BEHIND_LOG_INTERVAL_S = 10
"""A stream falling behind its deadline is logged at most this often."""


class Deadline:
    """Whether a stream's next packet is late, for the WebRTC track and the RTP sidecar.

    A packet that waited longer than `seconds` since it was decoded (or was due) means
    the worker is not keeping up: passing frames through (about 50x cheaper) catches
    up. A burst from the network (several packets decoded at once) is not late. Without
    an arrival time (aiortc's decoder threads) a packet is judged by the audio queued
    behind it, which a burst can also fill. Falling behind is logged once per
    BEHIND_LOG_INTERVAL_S.
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
        if late and (now := time.monotonic()) - self._last_log >= BEHIND_LOG_INTERVAL_S:
            self._last_log = now
            log.warning(
                "falling behind at packet %d: passing frames through (waited %s ms since "
                "decoding, %.0f ms of audio queued, deadline %.0f ms; logged once per %d s)",
                stats.packets,
                "?" if waited_s is None else f"{1e3 * waited_s:.0f}",
                1e3 * backlog_s,
                1e3 * self.seconds,
                BEHIND_LOG_INTERVAL_S,
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
