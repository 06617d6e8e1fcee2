"""The worker's garbage-collection guard: frozen start-up heap, timed collections."""

from __future__ import annotations

import gc
import time

from prometheus_client import CollectorRegistry, Histogram

from server.ops.gcwatch import GcMonitor, freeze_startup_heap


def _count(registry: CollectorRegistry, generation: str) -> float:
    value = registry.get_sample_value("t_gc_seconds_count", {"generation": generation})
    return value or 0.0


def test_monitor_times_collections_while_started_only() -> None:
    registry = CollectorRegistry()
    hist = Histogram("t_gc_seconds", "test", ["generation"], registry=registry)
    monitor = GcMonitor(hist)
    monitor.start()
    monitor.start()  # idempotent: one callback, one observation per collection
    try:
        gc.collect(2)
        gc.collect(1)
        assert _count(registry, "2") == 1
        assert _count(registry, "1") == 1
        total = registry.get_sample_value("t_gc_seconds_sum", {"generation": "2"})
        assert total is not None and 0 < total < 5
    finally:
        monitor.stop()
    gc.collect(2)
    assert _count(registry, "2") == 1
    assert monitor._callback not in gc.callbacks


def test_frozen_heap_makes_a_full_collection_cheap() -> None:
    # a heap of many container objects, as a loaded worker has (numba, onnxruntime ...)
    ballast = [[i] for i in range(300_000)]

    def full_collection_s() -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            gc.collect(2)
            best = min(best, time.perf_counter() - start)
        return best

    before = full_collection_s()
    try:
        assert freeze_startup_heap() >= len(ballast)
        after = full_collection_s()
    finally:
        gc.unfreeze()
    # the collector no longer walks the frozen objects
    assert after < 0.25 * before, (before, after)
    del ballast
