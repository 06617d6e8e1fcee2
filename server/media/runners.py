"""Where a worker runs its streams' packets: inline, in a thread, or batched.

A runner's `run(processor, x, late)` returns the processed packet. The batched
runner (the default) holds an enhancing stream's packet for at most `window_s`,
so that the packets of several streams go through the model in one run per
frame: the weights are then read once for all of them instead of once per stream,
and the model's per-stream CPU falls (`python -m bench.service_load` measures it).

It waits only for streams it expects within the window. Each stream's packets
arrive at a steady period (20 ms for Opus) and phase, so its next arrival is its
last one plus its period; a packet is held while some active stream is due
before the window closes, and runs at once when none is (one stream alone, or
streams whose phases are further apart than the window, never wait). Pass-through
streams never wait. A packet is also held at most ARRIVAL_SLACK_S past the window after
it was decoded (see BatchRunner.run).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server.media.processor import StreamProcessor, process_many
from server.ops.prometheus import Metrics

FloatArray = npt.NDArray[np.float64]

RECENT_S = 0.1
"""A stream that submitted a packet this recently is expected to submit the next one."""
DEFAULT_PERIOD_S = 0.02
"""Packet period assumed until a stream's own is measured (Opus: 20 ms)."""
PERIOD_RANGE_S = (0.005, 0.1)
PERIOD_SMOOTHING = 0.1
"""Weight of a new inter-arrival time in a stream's period estimate."""
DUE_SLACK_S = 0.002
"""A stream this late for its predicted arrival still counts as due (network jitter)."""
WAIT_SMOOTHING = 0.1
"""Weight of a packet's wait in its stream's smoothed batch wait (its added latency)."""
ARRIVAL_SLACK_S = 0.01
"""A packet is held at most this much past `window_s` after it arrived (was decoded)."""


class InlineRunner:
    """On the event loop, one packet at a time (no added delay)."""

    async def run(
        self, processor: StreamProcessor, x: FloatArray, late: bool, arrived: float | None = None
    ) -> FloatArray:
        return processor.process(x, late)

    def close(self) -> None:
        pass


class ThreadRunner:
    """In one enhancer thread: the loop stays free while a packet is processed."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enhancer")

    async def run(
        self, processor: StreamProcessor, x: FloatArray, late: bool, arrived: float | None = None
    ) -> FloatArray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, processor.process, x, late)

    def close(self) -> None:
        self.executor.shutdown(wait=True)


@dataclass
class _Arrivals:
    last: float
    period: float = DEFAULT_PERIOD_S

    def update(self, now: float) -> None:
        lo, hi = PERIOD_RANGE_S
        interval = min(max(now - self.last, lo), hi)
        self.period += PERIOD_SMOOTHING * (interval - self.period)
        self.last = now

    def due(self, now: float, until: float) -> bool:
        """Recently active and its next packet predicted between now (less the slack)
        and `until`."""
        if now - self.last > RECENT_S:
            return False
        return now - DUE_SLACK_S <= self.last + self.period <= until


@dataclass
class _Waiting:
    processor: StreamProcessor
    x: FloatArray
    late: bool
    future: asyncio.Future[FloatArray]
    closes: float  # the latest it may run: see BatchRunner.run
    entered: float  # when it entered the runner: its batch wait counts from here


class BatchRunner:
    """Packets of a worker's enhancing streams, processed together (see the module doc).

    A batch is run when no stream without a packet in is due before the window
    closes, when it holds `max_streams` packets, or `window_s` after its first
    packet, whichever comes first. It runs on the event loop, like InlineRunner.
    `clock` is for tests.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        window_s: float,
        max_streams: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s < 0 or max_streams < 1:
            raise ValueError(f"bad batch settings: window {window_s} s, {max_streams} streams")
        self.metrics = metrics
        self.window_s = window_s
        self.max_streams = max_streams
        self._waiting: list[_Waiting] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.clock = clock
        self._arrivals: weakref.WeakKeyDictionary[StreamProcessor, _Arrivals] = (
            weakref.WeakKeyDictionary()
        )

    async def run(
        self, processor: StreamProcessor, x: FloatArray, late: bool, arrived: float | None = None
    ) -> FloatArray:
        """The processed packet.

        It is held at most `window_s`, and at most `window_s + ARRIVAL_SLACK_S` after
        `arrived` (when it was decoded, on the runner's clock), so that time it spent
        queued behind the stream's previous packet is not all waited again: a stream
        that always opens the window would otherwise fall behind by a batch's run time
        each packet, until its frames pass the deadline. A packet whose time is up on
        entry runs in the next loop iteration, with the other streams' packets that are
        ready by then (not alone: under load, all of them are behind)."""
        if processor.enhancer is None or late:  # nothing for the model: no reason to wait
            self._arrivals.pop(processor, None)
            return processor.process(x, late)
        if any(w.processor is processor for w in self._waiting):
            self._flush()  # a second packet of one stream: the first goes now
        loop = asyncio.get_running_loop()
        now = self.clock()
        arrivals = self._arrivals.get(processor)
        if arrivals is None:
            self._arrivals[processor] = _Arrivals(last=now)
        else:
            arrivals.update(now)
        future: asyncio.Future[FloatArray] = loop.create_future()
        own = now + self.window_s
        if arrived is not None:
            own = min(own, arrived + self.window_s + ARRIVAL_SLACK_S)
        self._waiting.append(_Waiting(processor, x, late, future, own, now))
        closes = min(w.closes for w in self._waiting)
        if len(self._waiting) >= self.max_streams:
            self._flush()
        elif closes <= now:
            self._schedule(loop, now, now)
        elif not self._anyone_due(now, closes):
            self._flush()
        else:
            self._schedule(loop, now, closes)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop, now: float, at: float) -> None:
        """The flush timer, at `at` or earlier if it is already set earlier."""
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_later(max(0.0, at - now), self._flush)

    def _anyone_due(self, now: float, until: float) -> bool:
        """Whether a stream with no packet in is expected before `until`."""
        waiting = {id(w.processor) for w in self._waiting}
        return any(
            id(proc) not in waiting and arrivals.due(now, until)
            for proc, arrivals in self._arrivals.items()
        )

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = [w for w in self._waiting if not w.future.done()]  # done: its task was cancelled
        self._waiting = []
        if not batch:
            return
        now = self.clock()
        for w in batch:
            wait = max(0.0, now - w.entered)
            self.metrics.batch_wait.observe(wait)
            stats = w.processor.stats
            stats.batch_wait_ms += WAIT_SMOOTHING * (1e3 * wait - stats.batch_wait_ms)
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
