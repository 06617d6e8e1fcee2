"""Health and metrics endpoints, and the event-loop lag they report.

GET /healthz   alive: the loop answers (with its last lag)
GET /readyz    accepting: not draining, not full (503 + Retry-After otherwise)
GET /metrics   Prometheus text
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.ops.appkeys import CONFIG_KEY, MANAGER_KEY, METRICS_KEY
from server.ops.prometheus import Metrics


class LoopLagMonitor:
    """Wakes every `interval` seconds and records how late it woke (event-loop lag)."""

    def __init__(self, metrics: Metrics, interval: float = 0.05, window: float = 5.0) -> None:
        self.metrics = metrics
        self.interval = interval
        self.window = window
        self.last_s = 0.0
        self.max_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        window_start = time.monotonic()
        window_max = 0.0
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval)
            lag = max(0.0, time.monotonic() - before - self.interval)
            self.last_s = lag
            self.metrics.loop_lag.observe(lag)
            window_max = max(window_max, lag)
            if time.monotonic() - window_start >= self.window:
                self.max_s = window_max
                self.metrics.loop_lag_max.set(window_max)
                self.metrics.loop_tasks.set(len(asyncio.all_tasks()))
                window_start, window_max = time.monotonic(), 0.0


LAG_KEY = web.AppKey("loop_lag", LoopLagMonitor)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "loop_lag_ms": 1e3 * request.app[LAG_KEY].last_s})


async def readyz(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    body = {
        "ready": manager.ready,
        "active": manager.active,
        "capacity": manager.capacity,
        "draining": manager.draining,
    }
    headers = None if manager.ready else {"Retry-After": str(request.app[CONFIG_KEY].retry_after_s)}
    return web.json_response(body, status=200 if manager.ready else 503, headers=headers)


async def prometheus_metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[METRICS_KEY].registry)
    response = web.Response(body=data)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
