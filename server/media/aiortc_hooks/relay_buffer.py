"""Hook 4, the relay receive buffer: packets back in order and decoded as they arrive;
only a gap holds the packets behind it (this changes latency: 20 ms after a loss instead
of aiortc's 80 ms playout buffer, 280 ms after its first loss)."""

from __future__ import annotations

import queue
from typing import Any

from aiortc.jitterbuffer import JitterFrame
from aiortc.rtp import RtpPacket

from server.reorder import Reorderer, ReorderStats

RELAY_MAX_HELD = 1
"""Packets an audio receiver holds behind a missing one before giving it up as lost: a
packet may arrive one place late (swapped with its neighbour). A loss then delays the
packet after it by one packet time (20 ms); each packet more held would add 20 ms to the
next one too (bench/latency.py --loss-every). One reordered further arrives after its
place was given up and is dropped as late."""


class RelayFrame(JitterFrame):
    """An encoded frame and those that became due with it, as (RTP timestamp offset from
    this one, data): aiortc's receiver takes one frame per packet from its buffer, and the
    packet that fills a gap (or gives up on it) releases the ones held behind the gap."""

    def __init__(self, data: bytes, timestamp: int, following: list[tuple[int, bytes]]) -> None:
        super().__init__(data=data, timestamp=timestamp)
        self.following = following


def expand(frame: JitterFrame) -> list[JitterFrame]:
    """The frames a RelayFrame carries, each timestamped on the receiver's mapped clock
    like the first; any other frame alone."""
    following: list[tuple[int, bytes]] = getattr(frame, "following", [])
    return [frame, *(JitterFrame(data=d, timestamp=frame.timestamp + dt) for dt, d in following)]


class RelayJitterBuffer:
    """Takes the place of an audio receiver's aiortc JitterBuffer (same `add`): packets
    in sequence order, each as soon as it is due (see the module doc, item 4)."""

    def __init__(self, max_held: int = RELAY_MAX_HELD) -> None:
        self.reorderer = Reorderer(max_held)

    @property
    def stats(self) -> ReorderStats:
        return self.reorderer.stats

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """(PLI wanted: never, for audio; the frame now due or None)."""
        due = self.reorderer.push(packet)
        if not due:
            return False, None
        first, *rest = due
        following = [((p.timestamp - first.timestamp) & 0xFFFFFFFF, _data(p)) for p in rest]
        return False, RelayFrame(_data(first), first.timestamp, following)


def _data(packet: RtpPacket) -> bytes:
    data = getattr(packet, "_data", b"")  # the depayloaded frame aiortc's receiver attached
    return data if isinstance(data, bytes) else b""


class ExpandingQueue(queue.Queue[Any]):
    """The decoder queue of an audio receiver that keeps aiortc's decoder thread: each
    RelayFrame goes in as the frames it carries."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:  # the end of the track
            super().put(item, block, timeout)
            return
        codec, frame = item
        for one in expand(frame):
            super().put((codec, one), block, timeout)
