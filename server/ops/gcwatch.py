"""Garbage-collector pauses: keep them short, and measure them.

A worker's heap after start-up holds some 160,000 container objects (numba, ONNX
Runtime, scipy, aiortc); a full (generation 2) collection walks all of them and
stalls the event loop that carries every stream for about 135 ms on this machine's
cores, long enough to push packets past their deadline (bypassed frames). Once the
worker has loaded and warmed everything, `freeze_startup_heap()` moves those
objects to the permanent generation, so later collections walk only what streams
created (under 1 ms). `GcMonitor` times every collection into a histogram, by
generation, so a regression shows in /metrics.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram


def freeze_startup_heap() -> int:
    """Collect once, then exempt every surviving object from later collections.

    Returns the number of objects frozen. Call when start-up is done and before
    streams arrive (objects created later are collected as usual).
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcMonitor:
    """Observes the duration of each garbage collection into `histogram`
    (label `generation`) while started."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self._started_at: float | None = None
        self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_at = time.perf_counter()
        elif self._started_at is not None:
            elapsed = time.perf_counter() - self._started_at
            self._started_at = None
            self.histogram.labels(str(info.get("generation", "?"))).observe(elapsed)

    def start(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def stop(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False
