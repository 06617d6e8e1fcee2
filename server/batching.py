"""Where a worker runs its streams' packets: inline, in a thread, or batched.

A runner's `run(processor, x, late)` returns the processed packet. The batched
runner (the default) holds an enhancing stream's packet for at most `window_s`,
so that the packets of several streams go through the model in one run per
frame: the weights are then read once for all of them instead of once per stream,
and the model's per-stream CPU falls (bench/bench_service.py measures it). It does
not wait at all when every stream that sent audio recently already has a packet
in: with one active stream, or streams whose packets arrive together, the added
delay is zero. Pass-through streams never wait.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server.metrics import Metrics
from server.track import StreamProcessor, process_many

FloatArray = npt.NDArray[np.float64]

RECENT_S = 0.1
"""A stream that submitted a packet this recently is expected to submit the next one."""


class InlineRunner:
    """On the event loop, one packet at a time (no added delay)."""

    async def run(self, processor: StreamProcessor, x: FloatArray, late: bool) -> FloatArray:
        return processor.process(x, late)

    def close(self) -> None:
        pass


class ThreadRunner:
    """In one enhancer thread: the loop stays free while a packet is processed."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enhancer")

    async def run(self, processor: StreamProcessor, x: FloatArray, late: bool) -> FloatArray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, processor.process, x, late)

    def close(self) -> None:
        self.executor.shutdown(wait=True)


@dataclass
class _Waiting:
    processor: StreamProcessor
    x: FloatArray
    late: bool
    future: asyncio.Future[FloatArray]
    since: float


class BatchRunner:
    """Packets of a worker's enhancing streams, processed together (see the module doc).

    A batch is run when every recently active stream has a packet in, when it holds
    `max_streams` packets, or `window_s` after its first packet, whichever comes
    first. It runs on the event loop, like InlineRunner.
    """

    def __init__(self, metrics: Metrics, *, window_s: float, max_streams: int = 32) -> None:
        if window_s < 0 or max_streams < 1:
            raise ValueError(f"bad batch settings: window {window_s} s, {max_streams} streams")
        self.metrics = metrics
        self.window_s = window_s
        self.max_streams = max_streams
        self._waiting: list[_Waiting] = []
        self._timer: asyncio.TimerHandle | None = None
        self._seen: weakref.WeakKeyDictionary[StreamProcessor, float] = weakref.WeakKeyDictionary()

    async def run(self, processor: StreamProcessor, x: FloatArray, late: bool) -> FloatArray:
        if processor.enhancer is None or late:  # nothing for the model: no reason to wait
            self._seen.pop(processor, None)
            return processor.process(x, late)
        if any(w.processor is processor for w in self._waiting):
            self._flush()  # a second packet of one stream: the first goes now
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        self._seen[processor] = now
        future: asyncio.Future[FloatArray] = loop.create_future()
        self._waiting.append(_Waiting(processor, x, late, future, now))
        if len(self._waiting) >= min(self.max_streams, self._expected(now)):
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._flush)
        return await future

    def _expected(self, now: float) -> int:
        """Streams that sent a packet within RECENT_S: the batch is full with all of them."""
        return sum(1 for seen in self._seen.values() if now - seen <= RECENT_S)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = [w for w in self._waiting if not w.future.done()]  # done: its task was cancelled
        self._waiting = []
        if not batch:
            return
        now = time.monotonic()
        for w in batch:
            self.metrics.batch_wait.observe(now - w.since)
        self.metrics.batch_streams.observe(len(batch))
        try:
            outs = process_many([(w.processor, w.x, w.late) for w in batch])
        except Exception as exc:  # process_many handles stream failures; this is a bug
            for w in batch:
                w.future.set_exception(exc)
            return
        for w, y in zip(batch, outs, strict=True):
            w.future.set_result(y)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for w in self._waiting:
            w.future.cancel()
        self._waiting = []


Runner = InlineRunner | ThreadRunner | BatchRunner
