"""Sidecar mode for conferencing bridges: plain Opus RTP in, cleaned Opus RTP out.

    POST   /v1/rtp-sessions       JSON {host, port[, source_host, payload_type, ssrc, mode,
                                  enabled, attenuation_limit_db]} -> 201 {id, session,
                                  port, ...}: the bridge sends the participant's Opus RTP
                                  to that local UDP port; cleaned Opus RTP goes to host:port
    GET    /v1/rtp-sessions/{key} stream JSON (the same record as /streams/{key})
    DELETE /v1/rtp-sessions/{key} end it (DELETE /streams/{key} works too)

An RTP session is an ordinary Session of the worker's SessionManager, admitted by the
same path as WebRTC (`admit`/`register`: max_streams, pending limits, 503 when full or
draining); it is pending until its first valid RTP packet, takes the same controls
(POST /streams/{key}/control), feeds the same metrics, is closed by the idle and connect
timeouts and by the SIGTERM drain. Auth is the app's bearer guard (the operator token);
{key} is the session's capability (`session` in the 201 answer).

Not an amplifier:
- it sends only to `host` on the operator's allowlist (Config.rtp_allow; loopback when
  none is set), never to multicast, broadcast or unspecified addresses;
- it sends only after valid RTP has come from the expected source host (`source_host`,
  default `host`: symmetric RTP); the first such packet latches the source port, and
  packets from anywhere else are counted as foreign and dropped;
- it never sends more packets than it has received: each sent packet spends one
  received packet's credit, concealment uses only spare credit, and the output packet
  duration follows the input's (20, 40 or 60 ms).

Per session, on the event loop:
    UDP datagram -> RtpPacket -> Reorderer (sequence numbers: reorder within a small
    window, drop late and duplicate packets) -> queue -> Opus decode -> StreamProcessor
    (the enhancer, 480-sample frames, 30 ms delay) -> Opus encode (20 ms) -> RTP out.
Output RTP timestamps follow the input's (out = in + constant): a gap left by lost
packets (up to CONCEAL_MAX_S) is filled with silence, so the output clock stays constant;
a longer jump (a pause of the sender, DTX) is carried over as a jump with the marker bit.
RTCP is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import av
import numpy as np
import numpy.typing as npt
from aiohttp import web
from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket, is_rtcp
from prometheus_client import Counter

from percepnet.streaming import INT16_SCALE, PACKET_SAMPLES, SAMPLE_RATE
from server.httputil import client_address, parse_json, read_text
from server.media.aiortc_hooks import arrival_clock
from server.media.convert import level_db, to_mono
from server.media.processor import StreamProcessor, StreamStats
from server.media.runners import Runner
from server.media.track import Deadline
from server.ops.config import Config
from server.ops.prometheus import Metrics
from server.reorder import Reorderer
from server.sessions.addresses import is_unicast
from server.sessions.controls import parse_control
from server.sessions.errors import BadRequest, EnhancerUnavailable, ServiceFull, UnknownSession
from server.sessions.manager import Mode, Session, SessionManager

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
PATH = "/v1/rtp-sessions"
OPUS_CLOCK = 48_000
"""Opus RTP timestamps always count at 48 kHz (RFC 7587), whatever the audio bandwidth."""
LONG_PACKETS = (2 * PACKET_SAMPLES, 3 * PACKET_SAMPLES)
"""Output packetisation: PACKET_SAMPLES (20 ms, the usual Opus frame for conferencing)
or the input's own 40 or 60 ms, so one packet in makes at most one packet out."""
DEFAULT_PAYLOAD_TYPE = 111
CONCEAL_MAX_S = 0.2
"""A timestamp gap up to this long is lost packets: filled with silence; longer: a jump."""
RTP_VERSION = 2
MAX_DATAGRAM = 1500


class RtpSetupError(BadRequest):
    """A bad session request (400)."""


class DestinationRefused(BadRequest):
    """A destination off the allowlist, or not unicast (403)."""

    status = 403


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _plain(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_destination(host: str, networks: tuple[Network, ...]) -> None:
    """Refuse (DestinationRefused) a destination that is not a unicast address inside one
    of `networks`, or that is the broadcast address of one of them."""
    address = _plain(ipaddress.ip_address(host))
    if not is_unicast(address):
        raise DestinationRefused(f"destination {address} is not a unicast address")
    for network in networks:
        if address.version != network.version or address not in network:
            continue
        if (
            address.version == 4
            and network.prefixlen <= 30
            and address == network.broadcast_address
        ):
            raise DestinationRefused(f"destination {address} is the broadcast address of {network}")
        return
    raise DestinationRefused(f"destination {address} is not on the sidecar allowlist (--rtp-allow)")


def same_host(a: str, b: str) -> bool:
    try:
        return bool(_plain(ipaddress.ip_address(a)) == _plain(ipaddress.ip_address(b)))
    except ValueError:
        return False


@dataclass(frozen=True)
class RtpSettings:
    """Sidecar settings, from PERCEPNET_RTP_* variables (read once, in install())."""

    bind_host: str = "0.0.0.0"
    """Local address of the UDP sockets the bridge sends to."""
    port_min: int = 0
    port_max: int = 0
    """Local UDP port range (inclusive; open it in firewalls); 0-0: any free port."""
    advertise_host: str | None = None
    """Address returned to the bridge; default: bind_host unless it is a wildcard."""
    reorder_packets: int = 3
    """Packets held behind a missing one before it is declared lost."""
    reorder_wait_s: float = 0.04
    """...or time waited for it."""
    bitrate: int = 32_000
    """Opus bit rate of the cleaned stream (bits/s; mono voice)."""

    def __post_init__(self) -> None:
        if (self.port_min == 0) != (self.port_max == 0) or self.port_min > self.port_max:
            raise ValueError(f"bad RTP port range {self.port_min}-{self.port_max}")
        if not 0 <= self.port_min <= 65535 or not 0 <= self.port_max <= 65535:
            raise ValueError("RTP ports out of range")

    @classmethod
    def from_env(cls, env: Mapping[str, str], default_bind: str) -> RtpSettings:
        kw: dict[str, Any] = {"bind_host": env.get("PERCEPNET_RTP_BIND") or default_bind}
        ports = env.get("PERCEPNET_RTP_PORTS", "").strip()
        if ports:
            low, sep, high = ports.partition("-")
            try:
                kw["port_min"], kw["port_max"] = int(low), int(high if sep else low)
            except ValueError as exc:
                raise ValueError(f"PERCEPNET_RTP_PORTS must be MIN-MAX, got {ports!r}") from exc
        if advertise := env.get("PERCEPNET_RTP_ADVERTISE_HOST"):
            kw["advertise_host"] = advertise
        if bitrate := env.get("PERCEPNET_RTP_BITRATE"):
            kw["bitrate"] = int(bitrate)
        return cls(**kw)

    @property
    def public_host(self) -> str | None:
        if self.advertise_host:
            return self.advertise_host
        return None if self.bind_host in ("0.0.0.0", "::", "") else self.bind_host


@dataclass(frozen=True)
class RtpRequest:
    """A validated POST /v1/rtp-sessions body."""

    host: str
    port: int
    source_host: str | None = None
    """The host the participant's RTP comes from; None: `host` (symmetric RTP)."""
    payload_type: int | None = None
    """Input packets must carry it (others are dropped); output uses it. None: the input's."""
    ssrc: int | None = None
    """SSRC of the cleaned stream; None: random."""
    mode: Mode = "enhance"
    controls: dict[str, Any] = field(default_factory=dict)


def parse_request(text: str) -> RtpRequest:
    try:
        body = parse_json(text)
    except ValueError as exc:
        raise RtpSetupError(f"body: {exc}") from exc
    if not isinstance(body, dict):
        raise RtpSetupError("expected a JSON object")
    unknown = set(body) - {
        "host",
        "port",
        "source_host",
        "payload_type",
        "ssrc",
        "mode",
        "enabled",
        "attenuation_limit_db",
    }
    if unknown:
        raise RtpSetupError(f"unknown fields: {sorted(unknown)}")
    host = body.get("host")
    try:
        ipaddress.ip_address(host if isinstance(host, str) else "")
    except ValueError as exc:
        raise RtpSetupError("host must be an IPv4 or IPv6 address") from exc
    assert isinstance(host, str)
    source = body.get("source_host")
    if source is not None:
        try:
            ipaddress.ip_address(source if isinstance(source, str) else "")
        except ValueError as exc:
            raise RtpSetupError("source_host must be an IPv4 or IPv6 address") from exc

    def integer(name: str, low: int, high: int, required: bool = False) -> int | None:
        value = body.get(name)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise RtpSetupError(f"{name} must be an integer in [{low}, {high}]")
        return value

    port = integer("port", 1, 65535, required=True)
    assert port is not None
    mode = body.get("mode", "enhance")
    if mode not in ("enhance", "passthrough"):
        raise RtpSetupError(f"mode must be enhance or passthrough, not {mode!r}")
    controls = {k: body[k] for k in ("enabled", "attenuation_limit_db") if k in body}
    if controls:
        try:
            controls = parse_control(controls)
        except ValueError as exc:
            raise RtpSetupError(str(exc)) from exc
    return RtpRequest(
        host=host,
        port=port,
        source_host=source,
        payload_type=integer("payload_type", 0, 127),
        ssrc=integer("ssrc", 0, 2**32 - 1),
        mode=mode,
        controls=controls,
    )


# -- Opus ------------------------------------------------------------------------------
class OpusDecoder:
    """Opus payloads -> mono float at 48 kHz."""

    def __init__(self) -> None:
        self.codec = av.CodecContext.create("libopus", "r")
        self.codec.sample_rate = SAMPLE_RATE
        self.codec.layout = "mono"

    def decode(self, payload: bytes) -> FloatArray:
        frames = self.codec.decode(av.Packet(payload))
        pieces = [to_mono(f) for f in frames if isinstance(f, av.AudioFrame)]
        return np.concatenate(pieces) if pieces else np.zeros(0)


class OpusEncoder:
    """Mono float at 48 kHz -> one Opus payload per `packet_samples` samples."""

    def __init__(self, bitrate: int, packet_samples: int = PACKET_SAMPLES) -> None:
        if packet_samples not in (PACKET_SAMPLES, *LONG_PACKETS):
            raise ValueError(f"unsupported Opus packet of {packet_samples} samples")
        self.packet_samples = packet_samples
        self.codec = av.CodecContext.create("libopus", "w")
        self.codec.sample_rate = SAMPLE_RATE
        self.codec.layout = "mono"
        self.codec.format = "s16"
        self.codec.bit_rate = bitrate
        # libopus's default complexity (the highest): at this bit rate a lower one changes the
        # sound measurably (the noise floor in pauses by 2.5 dB at 5, tests/test_rtp.py)
        duration_ms = 1000 * packet_samples // SAMPLE_RATE
        self.codec.options = {"application": "voip", "frame_duration": str(duration_ms)}
        self._pending = np.zeros(0)
        self._pts = 0

    def encode(self, x: FloatArray) -> list[bytes]:
        size = self.packet_samples
        data = np.concatenate([self._pending, x]) if self._pending.size else x
        n = len(data) // size
        self._pending = data[n * size :].copy()
        out: list[bytes] = []
        for i in range(n):
            chunk = data[i * size : (i + 1) * size]
            pcm = np.clip(np.rint(chunk * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1)
            frame = av.AudioFrame.from_ndarray(
                pcm.astype(np.int16).reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate = SAMPLE_RATE
            frame.pts = self._pts
            self._pts += size
            out.extend(bytes(p) for p in self.codec.encode(frame))
        return out


# -- one session -----------------------------------------------------------------------
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
        self.decoder = OpusDecoder()
        self.encoder: OpusEncoder | None = None  # made for the first packet's duration
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
            self.encoder = OpusEncoder(self.settings.bitrate, size)
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


# -- HTTP ------------------------------------------------------------------------------
@dataclass
class RtpService:
    config: Config
    manager: SessionManager
    metrics: Metrics
    settings: RtpSettings
    rtp_metrics: RtpMetrics
    endpoints: dict[str, RtpEndpoint] = field(default_factory=dict)

    async def open(self, request: RtpRequest, client: str) -> tuple[Session, RtpEndpoint]:
        check_destination(request.host, self.config.rtp_networks)
        manager = self.manager
        async with manager.admit(client):
            sock = bind_socket(self.settings)
            try:
                enhancer = manager.enhancer_factory() if request.mode == "enhance" else None
            except Exception as exc:
                sock.close()
                self.metrics.sessions.labels("failed").inc()
                log.exception("enhancer factory failed")
                raise EnhancerUnavailable(f"could not create an enhancer: {exc}") from exc
            processor = StreamProcessor(enhancer, self.metrics, StreamStats())
            sid = manager.new_id()
            session_box: list[Session] = []

            def first_packet() -> None:
                if session_box and session_box[0].connected_at is None:
                    session_box[0].connected_at = time.monotonic()

            endpoint = RtpEndpoint(
                sid,
                request,
                processor,
                self.settings,
                self.rtp_metrics,
                deadline_s=self.config.frame_deadline_ms / 1e3,
                runner=manager.runner,
                on_first_packet=first_packet,
            )
            session = Session(
                id=sid,
                pc=cast(RTCPeerConnection, endpoint),  # duck-typed: connectionState, close()
                mode=request.mode,
                kind="rtp",
                enhancer=enhancer,
                stats=processor.stats,
                processor=processor,
            )
            session_box.append(session)
            session.apply(request.controls)
            # Registered before the first await, so concurrent requests see the slot taken.
            manager.register(session, client)
            self.endpoints[sid] = endpoint
        try:
            loop = asyncio.get_running_loop()
            await loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
        except Exception:
            sock.close()
            await manager.close(sid, "failed")
            self.endpoints.pop(sid, None)
            raise
        log.info(
            "rtp session %s: udp %s -> %s:%d; %d active",
            sid,
            endpoint.local_port,
            request.host,
            request.port,
            manager.active,
        )
        return session, endpoint

    def get(self, key: str) -> tuple[Session, RtpEndpoint]:
        session = self.manager.get(key)  # 404 for an unknown id or a wrong secret
        endpoint = self.endpoints.get(session.id)
        if endpoint is None:
            raise UnknownSession("no such RTP session")
        return session, endpoint

    def describe(self, session: Session, endpoint: RtpEndpoint) -> dict[str, Any]:
        return {
            **session.snapshot(),
            **endpoint.describe(),
            "host": self.settings.public_host,
            "port": endpoint.local_port,
            "session": session.key,
            "location": f"{PATH}/{session.key}",
        }

    def forget_closed(self) -> None:
        for sid in [s for s in self.endpoints if s not in self.manager.sessions]:
            del self.endpoints[sid]


RTP_KEY = web.AppKey("rtp", RtpService)


async def _read_body(request: web.Request, limit: int) -> str:
    return await read_text(request, limit, RtpSetupError)


async def create_session(request: web.Request) -> web.Response:
    service = request.app[RTP_KEY]
    service.forget_closed()
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="expected Content-Type application/json")
    body = parse_request(await _read_body(request, service.config.max_body_bytes))
    session, endpoint = await service.open(
        body, client_address(request, service.config.forwarded_client)
    )
    location = f"{PATH}/{session.key}"
    return web.json_response(
        service.describe(session, endpoint), status=201, headers={"Location": location}
    )


async def get_session(request: web.Request) -> web.Response:
    service = request.app[RTP_KEY]
    session, endpoint = service.get(request.match_info["id"])
    return web.json_response(service.describe(session, endpoint))


async def delete_session(request: web.Request) -> web.Response:
    service = request.app[RTP_KEY]
    session, _ = service.get(request.match_info["id"])
    await service.manager.close(session.id, "closed")
    service.endpoints.pop(session.id, None)
    return web.Response(status=200)


def install(
    app: web.Application,
    config: Config,
    manager: SessionManager,
    metrics: Metrics,
    settings: RtpSettings | None = None,
) -> None:
    """Add the sidecar routes to a worker app (settings default: PERCEPNET_RTP_* env)."""
    if settings is None:
        settings = RtpSettings.from_env(os.environ, config.host)
    app[RTP_KEY] = RtpService(config, manager, metrics, settings, RtpMetrics(metrics))
    app.router.add_post(PATH, create_session)
    app.router.add_get(PATH + "/{id}", get_session)
    app.router.add_delete(PATH + "/{id}", delete_session)
