"""The server's side of one stream's packets: the streaming API's StreamEnhancer plus
this service's counters (Prometheus and the per-stream stats).

The algorithm runs behind percepnet.streaming (one call per packet, or one for many
streams' packets: process_many -> enhance_many); this module only records what came
back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from percepnet.streaming import (
    SAMPLE_RATE,
    Enhancer,
    PacketResult,
    StreamEnhancer,
    enhance_many,
)
from server.ops.prometheus import Metrics

FloatArray = npt.NDArray[np.float64]


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


class StreamProcessor:
    """One stream's packets: mono float in, mono float out, same length.

    enhancer=None is the pass-through mode (no DSP, no delay); otherwise the output is
    LATENCY_SAMPLES late, and late or failed frames pass through delayed as much
    (percepnet.streaming.StreamEnhancer). Not thread-safe: one packet at a time.
    """

    def __init__(self, enhancer: Enhancer | None, metrics: Metrics, stats: StreamStats) -> None:
        self.stream = StreamEnhancer(enhancer)
        self.metrics = metrics
        self.stats = stats

    @property
    def enhancer(self) -> Enhancer | None:
        return self.stream.enhancer

    @property
    def latency_samples(self) -> int:
        """Delay of the output in samples: algorithmic plus any alignment padding."""
        return self.stream.latency_samples

    @property
    def added_latency_s(self) -> float:
        """Everything the service adds: latency_samples plus the wait for a model batch."""
        return self.latency_samples / SAMPLE_RATE + self.stats.batch_wait_ms / 1e3

    def process(self, x: FloatArray, late: bool) -> FloatArray:
        return process_many([(self, x, late)])[0]

    def record(self, result: PacketResult) -> FloatArray:
        """Count what happened to the packet's frames; its output."""
        stats = self.stats
        for outcome, n in (
            ("processed", result.processed),
            ("bypassed", result.bypassed),
            ("failed", result.failed),
        ):
            if n:
                self.metrics.frames.labels(outcome).inc(n)
        stats.frames_processed += result.processed
        stats.frames_bypassed += result.bypassed
        stats.frames_failed += result.failed
        stats.padding_samples = self.stream.padding_samples
        if n_frames := result.frames:
            per_frame = result.wall_s / n_frames
            for _ in range(n_frames):
                self.metrics.frame_seconds.observe(per_frame)
            stats.last_frame_ms = 1e3 * per_frame
        stats.cpu_seconds += result.cpu_s
        return result.samples


def process_many(items: Sequence[tuple[StreamProcessor, FloatArray, bool]]) -> list[FloatArray]:
    """One packet each for several streams (each processor at most once): the outputs,
    from one call of the streaming API (one model run per frame for all of them)."""
    results = enhance_many([(proc.stream, x, late) for proc, x, late in items])
    return [proc.record(r) for (proc, _, _), r in zip(items, results, strict=True)]
