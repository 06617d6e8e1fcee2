"""Hook 2, inline codecs: an audio receiver decodes, and an audio sender encodes, on the
event loop instead of in aiortc's threads (the hand-offs cost more than 20 ms of Opus).
Decoded frames carry their arrival time (`arrival_time`), which the track's deadline
reads."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from aiortc.codecs import get_decoder

from server.media.aiortc_hooks.relay_buffer import expand

log = logging.getLogger(__name__)

arrival_clock = time.monotonic
"""The clock of the arrival stamps InlineDecoder leaves in each frame's `opaque`."""


def arrival_time(frame: Any) -> float | None:
    """When an inline-decoded frame was decoded (arrival_clock), or None if unstamped."""
    stamp = getattr(frame, "opaque", None)
    return stamp if isinstance(stamp, float) else None


class InlineDecoder:
    """Takes the place of an audio receiver's decoder queue: decodes each frame as aiortc
    puts it in, on the caller's thread (the event loop), and hands the decoded frames
    straight to the track's queue, each stamped with its arrival time in `opaque` (so
    a consumer can tell how long a frame waited, whatever came in with it). `put(None)`
    ends the track, as aiortc's worker does."""

    def __init__(self) -> None:
        self._output: asyncio.Queue[Any] | None = None
        self._error: threading.Event | None = None
        self._decoder: Any = None
        self._codec_name: str | None = None

    def attach(self, output: asyncio.Queue[Any], error: threading.Event) -> None:
        self._output, self._error = output, error

    def put(self, task: Any) -> None:
        if self._output is None:  # receive() never ran: nothing to decode for
            return
        if task is None:
            self._output.put_nowait(None)
            self._decoder = None
            return
        codec, encoded_frame = task
        for one in expand(encoded_frame):
            try:
                if codec.name != self._codec_name:
                    self._decoder, self._codec_name = get_decoder(codec), codec.name
                frames = self._decoder.decode(one)
            except Exception as exc:  # keep the decoder state, as aiortc does; never raise
                # into aiortc's packet handler, which runs the whole transport
                log.warning("failed to decode %s frame: %s", codec.name, exc)
                if self._error is not None:
                    self._error.set()
                continue
            arrived = arrival_clock()
            for frame in frames:
                frame.opaque = arrived  # when it was ready for us (the track's deadline)
                self._output.put_nowait(frame)


class InlineExecutorLoop:
    """The event loop as an audio sender sees it: `run_in_executor` (its encode call) runs
    the function at once and returns a finished future; everything else is the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> Any:
        future = self._loop.create_future()
        try:
            future.set_result(func(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)
