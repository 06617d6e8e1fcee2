"""One sidecar session's UDP side: RTP in (latched source, reordered), the stream's
packets through the enhancer, RTP out (never more packets than came in)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import av
import numpy as np
import numpy.typing as npt
from aiortc.rtp import RtpPacket, is_rtcp
from prometheus_client import Counter

from percepnet.streaming import PACKET_SAMPLES, SAMPLE_RATE
from server.media.aiortc_hooks.inline_codecs import arrival_clock
from server.media.convert import level_db
from server.media.opus import LONG_PACKETS, OpusPayloadDecoder, OpusPayloadEncoder
from server.media.processor import StreamProcessor
from server.media.runners import Runner
from server.media.track import Deadline
from server.ops.prometheus import Metrics
from server.reorder import Reorderer
from server.sessions.errors import ServiceFull
from server.sidecar.destinations import same_host
from server.sidecar.request import DEFAULT_PAYLOAD_TYPE, RtpRequest, RtpSettings

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
OPUS_CLOCK = 48_000
"""Opus RTP timestamps always count at 48 kHz (RFC 7587), whatever the audio bandwidth."""
CONCEAL_MAX_S = 0.2
"""A timestamp gap up to this long is lost packets: filled with silence; longer: a jump."""
RTP_VERSION = 2
MAX_DATAGRAM = 1500


class RtpMetrics:
    """Sidecar counters, in the worker's registry beside the service's metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.packets = Counter(
            "percepnet_rtp_packets",
            "Sidecar RTP packets by outcome: received, sent, lost, late, duplicate, "
            "invalid (not RTP/Opus or wrong payload type), foreign (not from the expected "
            "source), withheld (output past the packets received: not sent)",
            ["outcome"],
            registry=metrics.registry,
        )
        for outcome in OUTCOMES:
            self.packets.labels(outcome)


OUTCOMES = ("received", "sent", "lost", "late", "duplicate", "invalid", "foreign", "withheld")


class RtpEndpoint(asyncio.DatagramProtocol):
    """The UDP side of one sidecar session. Duck-types the two members of an
    RTCPeerConnection the SessionManager uses: `connectionState` and `close()`."""

    def __init__(
        self,
        session_id: str,
        request: RtpRequest,
        processor: StreamProcessor,
        settings: RtpSettings,
        rtp_metrics: RtpMetrics,
        *,
        deadline_s: float,
        runner: Runner,
        on_first_packet: Callable[[], None],
    ) -> None:
        self.id = session_id
        self.request = request
        self.destination = (request.host, request.port)
        self.processor = processor
        self.stats = processor.stats
        self.settings = settings
        self.rtp_metrics = rtp_metrics
        self.deadline = Deadline(deadline_s)
        self.runner = runner
        self.on_first_packet = on_first_packet
        self.transport: asyncio.DatagramTransport | None = None
        self.expected_host = request.source_host or request.host
        self.source: tuple[Any, ...] | None = None  # latched (host, port, ...)
        self.in_payload_type = request.payload_type
        self.out_ssrc = request.ssrc if request.ssrc is not None else random.getrandbits(32)
        self.reorderer = Reorderer(settings.reorder_packets)
        self.queue: asyncio.Queue[tuple[float, RtpPacket]] = asyncio.Queue()  # (due at, packet)
        self.decoder = OpusPayloadDecoder()
        self.encoder: OpusPayloadEncoder | None = None  # made for the first packet's duration
        self.next_in_ts: int | None = None  # input timestamp the next packet should carry
        self.ts_offset = 0  # output timestamp = input timestamp + ts_offset (mod 2**32)
        self.out_ts: int | None = None
        self.out_seq = random.getrandbits(16)
        self.marker = True  # first packet of a talk spurt
        self.packets_in = 0  # packets handled (after the reorderer): the send credit
        self.counts = {name: 0 for name in OUTCOMES}
        self.counts["concealed_samples"] = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.connectionState = "new"

    # -- asyncio.DatagramProtocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self._task = asyncio.create_task(self._run(), name=f"rtp-{self.id}")

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.connectionState == "closed":
            return
        if self.source is not None:
            if addr != self.source:
                self._count("foreign")
                return
        elif not same_host(str(addr[0]), self.expected_host):
            self._count("foreign")
            return
        if len(data) < 12 or data[0] >> 6 != RTP_VERSION or is_rtcp(data):
            if not is_rtcp(data):
                self._count("invalid")
            return
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            self._count("invalid")
            return
        if self.in_payload_type is None:
            self.in_payload_type = packet.payload_type
        if packet.payload_type != self.in_payload_type or not packet.payload:
            self._count("invalid")
            return
        if self.source is None:  # latch on the first valid packet from the expected host
            self.source = addr
        self._count("received")
        if self.connectionState == "new":
            self.connectionState = "connected"
            self.on_first_packet()
        self._due(self.reorderer.push(packet))
        if self.reorderer.waiting and self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(self.settings.reorder_wait_s, self._flush)

    def error_received(self, exc: Exception) -> None:
        # e.g. ICMP port unreachable for our sends while the bridge is not listening yet
        log.debug("rtp session %s: %s", self.id, exc)

    def _flush(self) -> None:
        self._flush_timer = None
        self._due(self.reorderer.flush())

    def _due(self, packets: list[RtpPacket]) -> None:
        for name, new in self.reorderer.stats.since(self.counts).items():
            self.rtp_metrics.packets.labels(name).inc(new)
        if not self.reorderer.waiting and self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        now = arrival_clock()
        for packet in packets:
            self.queue.put_nowait((now, packet))

    def _count(self, outcome: str) -> None:
        self.rtp_metrics.packets.labels(outcome).inc()
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    # -- processing --------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            queued_at, packet = await self.queue.get()
            try:
                await self._handle(packet, queued_at)
            except Exception:
                log.exception("rtp session %s: packet dropped", self.id)
                self.processor.metrics.frames.labels("failed").inc()
                self.stats.frames_failed += 1

    async def _handle(self, packet: RtpPacket, queued_at: float) -> None:
        cpu = time.thread_time()
        self.packets_in += 1  # the credit: each packet handled allows one packet out
        conceal = self._timeline(packet)
        try:
            x = self.decoder.decode(packet.payload)
        except (av.FFmpegError, ValueError):
            self._count("invalid")
            x = np.zeros(0)
        if len(x) == 0:  # undecodable: its slot (if known later) is concealed
            self.stats.cpu_seconds += time.thread_time() - cpu
            return
        self.next_in_ts = (packet.timestamp + len(x)) & 0xFFFFFFFF
        if self.encoder is None:
            size = len(x) if len(x) in LONG_PACKETS else PACKET_SAMPLES
            self.encoder = OpusPayloadEncoder(self.settings.bitrate, size)
        if conceal:
            # Only what spare credit can send (one packet in, at most one out; with
            # 20 ms in and out there is none): the rest of the gap stays a gap in the
            # output clock, for the receiver's own loss concealment.
            spare = self.packets_in - self.counts["sent"] - 1
            filled = min(conceal, max(0, spare) * self.encoder.packet_samples)
            self._jump(conceal - filled, marker=False)
            if filled:
                x = np.concatenate([np.zeros(filled), x])
                self.counts["concealed_samples"] += filled
        # As in the WebRTC track, timed from when the packet was due (left the reorderer).
        backlog_s = self.queue.qsize() * PACKET_SAMPLES / SAMPLE_RATE
        late = self.deadline.check(self.stats, backlog_s, arrival_clock() - queued_at)
        self.stats.cpu_seconds += time.thread_time() - cpu
        y = await self.runner.run(self.processor, x, late, arrived=queued_at)
        cpu = time.thread_time()
        self.stats.packets += 1
        self.stats.level_in_db = level_db(x)
        self.stats.level_out_db = level_db(y)
        for payload in self.encoder.encode(y):
            self._send(payload, self.encoder.packet_samples)
        self.stats.cpu_seconds += time.thread_time() - cpu

    def _timeline(self, packet: RtpPacket) -> int:
        """Samples of silence to insert before `packet` (lost packets before it)."""
        if self.out_ts is None:
            self.out_ts = random.getrandbits(32)
            self.ts_offset = (self.out_ts - packet.timestamp) & 0xFFFFFFFF
            return 0
        if self.next_in_ts is None:
            return 0
        gap = (packet.timestamp - self.next_in_ts) & 0xFFFFFFFF
        if gap >= 0x80000000:
            gap -= 0x100000000
        if 0 < gap <= CONCEAL_MAX_S * OPUS_CLOCK:
            return gap
        self._jump(gap)  # a pause or a restart: jump the output clock with the input's
        return 0

    def _jump(self, gap: int, *, marker: bool = True) -> None:
        """Move the output clock with the input's by `gap` samples; `marker`: a new talk
        spurt (a pause or a restart of the sender), not a loss."""
        if gap != 0 and self.out_ts is not None:
            self.ts_offset = (self.ts_offset - gap) & 0xFFFFFFFF
            self.out_ts = (self.out_ts + gap) & 0xFFFFFFFF
            self.marker = self.marker or marker

    def _send(self, payload: bytes, samples: int) -> None:
        assert self.out_ts is not None
        if self.counts["sent"] >= self.packets_in:
            # never more packets out than in: the slot is skipped, a gap in the clock
            self._count("withheld")
            self.out_ts = (self.out_ts + samples) & 0xFFFFFFFF
            return
        packet = RtpPacket(
            payload_type=(
                self.request.payload_type
                if self.request.payload_type is not None
                else (self.in_payload_type or DEFAULT_PAYLOAD_TYPE)
            ),
            marker=int(self.marker),
            sequence_number=self.out_seq,
            timestamp=self.out_ts,
            ssrc=self.out_ssrc,
            payload=payload,
        )
        self.marker = False
        self.out_seq = (self.out_seq + 1) & 0xFFFF
        self.out_ts = (self.out_ts + samples) & 0xFFFFFFFF
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(packet.serialize(), self.destination)
            self._count("sent")

    async def close(self) -> None:
        self.connectionState = "closed"
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.transport is not None:
            self.transport.close()

    def describe(self) -> dict[str, Any]:
        r = self.reorderer.stats
        return {
            "local_port": self.local_port,
            "destination": {"host": self.request.host, "port": self.request.port},
            "payload_type": self.in_payload_type,
            "ssrc": self.out_ssrc,
            "source": list(self.source[:2]) if self.source else None,
            "expected_source_host": self.expected_host,
            "packets_received": self.counts["received"],
            "packets_sent": self.counts["sent"],
            "packets_withheld": self.counts["withheld"],
            "packets_foreign": self.counts["foreign"],
            "packets_lost": r.lost,
            "packets_late": r.late,
            "packets_duplicate": r.duplicate,
            "concealed_ms": 1e3 * self.counts["concealed_samples"] / SAMPLE_RATE,
        }

    @property
    def local_port(self) -> int | None:
        if self.transport is None:
            return None
        return int(self.transport.get_extra_info("sockname")[1])


def bind_socket(settings: RtpSettings) -> socket.socket:
    """A UDP socket on the configured range (random start, first free port)."""
    family = socket.AF_INET6 if ":" in settings.bind_host else socket.AF_INET
    if settings.port_min == 0:
        candidates = [0]
    else:
        candidates = list(range(settings.port_min, settings.port_max + 1))
        start = random.randrange(len(candidates))
        candidates = candidates[start:] + candidates[:start]
    for port in candidates:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((settings.bind_host, port))
        except OSError:
            sock.close()
            continue
        sock.setblocking(False)
        return sock
    raise ServiceFull("no free UDP port in the RTP range")
