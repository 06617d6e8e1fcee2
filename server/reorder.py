"""RTP sequence order restored with little delay, for audio that is relayed, not played.

A playout jitter buffer holds packets to smooth their arrival times for a sound card;
this service's output goes back over the network to a peer that has its own. Here a
packet is only held while one before it is missing, and at most `max_held` of them:
in order, a packet leaves at once. Used by the RTP sidecar (server/sidecar/) and, in
place of aiortc's audio jitter buffer, by WebRTC receivers (server/media/aiortc_hooks.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiortc.rtp import RtpPacket

MAX_DROPOUT = 3000
"""Sequence jump beyond which the stream is taken to have restarted (RFC 3550 A.1)."""
MAX_MISORDER = 100
"""A packet this far behind is late (dropped); further behind: a restart."""


OUTCOMES = ("lost", "late", "duplicate")
"""The packets a Reorderer does not pass on in order, by what happened to them."""


@dataclass
class ReorderStats:
    lost: int = 0
    late: int = 0
    duplicate: int = 0
    restarts: int = 0

    def counts(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in OUTCOMES}

    def since(self, reported: dict[str, int]) -> dict[str, int]:
        """Each outcome's count added since `reported` (brought up to date here): what a
        caller adds to its counter metric."""
        new = {}
        for outcome, count in self.counts().items():
            if count > reported.get(outcome, 0):
                new[outcome] = count - reported.get(outcome, 0)
                reported[outcome] = count
        return new


class Reorderer:
    """Puts RTP packets back in sequence order; gives up on a missing one when more
    than `max_held` later packets wait behind it, or when flush() is called (timer).

    push() and flush() return the packets now due, in order. Sequence numbers are
    16-bit and wrap; distances are taken modulo 2**16.
    """

    def __init__(self, max_held: int = 3) -> None:
        self.max_held = max_held
        self.expected: int | None = None
        self.held: dict[int, RtpPacket] = {}
        self.stats = ReorderStats()

    @property
    def waiting(self) -> bool:
        return bool(self.held)

    def push(self, packet: RtpPacket) -> list[RtpPacket]:
        seq = packet.sequence_number
        if self.expected is None:
            self.expected = seq
        ahead = (seq - self.expected) & 0xFFFF
        if ahead >= 0x10000 - MAX_MISORDER:
            self.stats.late += 1  # already played (or given up on)
            return []
        if ahead >= MAX_DROPOUT:  # the sender restarted: play what is held, follow it
            self.stats.restarts += 1
            out = self.flush()
            self.expected = seq
            return [*out, *self.push(packet)]
        if seq in self.held:
            self.stats.duplicate += 1
            return []
        self.held[seq] = packet
        return self._release(force=False)

    def flush(self) -> list[RtpPacket]:
        """Stop waiting: everything held, in order, the gaps counted as lost."""
        return self._release(force=True)

    def _release(self, force: bool) -> list[RtpPacket]:
        out: list[RtpPacket] = []
        while self.held:
            assert self.expected is not None
            packet = self.held.pop(self.expected, None)
            if packet is None:
                if not force and len(self.held) <= self.max_held:
                    break
                expected = self.expected
                nearest = min(self.held, key=lambda s: (s - expected) & 0xFFFF)
                self.stats.lost += (nearest - expected) & 0xFFFF
                self.expected = nearest
                continue
            out.append(packet)
            self.expected = (self.expected + 1) & 0xFFFF
        return out
