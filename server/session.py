"""Sessions: one peer connection, one enhancer, one data channel, and their lifetimes.

The SessionManager owns every session of a worker, enforces capacity and draining,
and runs one ticker task that pushes stats down the data channels, refreshes the
per-stream metrics and closes sessions whose peer never connected or went silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.sdp import candidate_from_sdp

from percepnet.enhancer import Enhancer
from server import aiortc_speedups
from server.batching import BatchRunner, InlineRunner, Runner, ThreadRunner
from server.config import Config
from server.metrics import Metrics
from server.track import EnhancedTrack, StreamProcessor, StreamStats

log = logging.getLogger(__name__)

Mode = Literal["enhance", "passthrough"]
MAX_ATTENUATION_DB = 100.0
MAX_CONTROL_BYTES = 4096
CPU_WINDOW_S = 1.0


class SessionError(Exception):
    """Base of the errors the HTTP layer maps onto status codes."""

    status = 500


class BadOffer(SessionError):
    status = 400


class ServiceFull(SessionError):
    status = 503


class Draining(SessionError):
    status = 503


class UnknownSession(SessionError):
    status = 404


class EnhancerUnavailable(SessionError):
    status = 500


class IceRestartUnsupported(SessionError):
    status = 422


@dataclass
class Controls:
    """Per-stream runtime settings; the enhancer reads them on its next frame."""

    enabled: bool = True
    attenuation_limit_db: float | None = None


def parse_control(message: object) -> dict[str, Any]:
    """Validate a control message; returns only the recognised, well-typed settings.

    Accepts a JSON object (or its text) with optional `enabled` (bool) and
    `attenuation_limit_db` (number in [0, 100] dB, or null for no limit). Raises
    ValueError for anything else, so garbage can be counted and ignored.
    """
    if isinstance(message, (bytes, bytearray)):
        message = bytes(message).decode("utf-8")
    if isinstance(message, str):
        if len(message) > MAX_CONTROL_BYTES:
            raise ValueError("control message too long")
        message = json.loads(message)
    if not isinstance(message, dict):
        raise ValueError("control message must be a JSON object")
    if message.get("type", "control") != "control":
        raise ValueError(f"unknown message type {message.get('type')!r}")
    out: dict[str, Any] = {}
    if "enabled" in message:
        if not isinstance(message["enabled"], bool):
            raise ValueError("enabled must be true or false")
        out["enabled"] = message["enabled"]
    if "attenuation_limit_db" in message:
        limit = message["attenuation_limit_db"]
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, (int, float)):
                raise ValueError("attenuation_limit_db must be a number or null")
            if not (math.isfinite(limit) and 0.0 <= limit <= MAX_ATTENUATION_DB):
                raise ValueError(f"attenuation_limit_db must be in [0, {MAX_ATTENUATION_DB}]")
            limit = float(limit)
        out["attenuation_limit_db"] = limit
    if not out:
        raise ValueError("control message sets nothing")
    return out


@dataclass
class Session:
    id: str
    pc: RTCPeerConnection
    mode: Mode
    kind: str  # "offer" or "whip"
    enhancer: Enhancer | None
    stats: StreamStats = field(default_factory=StreamStats)
    controls: Controls = field(default_factory=Controls)
    track: EnhancedTrack | None = None
    processor: StreamProcessor | None = None
    channel: RTCDataChannel | None = None
    created: float = field(default_factory=time.monotonic)
    connected_at: float | None = None
    last_packets: int = 0
    last_packet_time: float = field(default_factory=time.monotonic)
    ice_ufrag: str | None = None
    closed: bool = False
    cpu_mark: tuple[float, float] = field(default_factory=lambda: (time.monotonic(), 0.0))
    cpu_percent: float = 0.0
    receiver: RTCRtpReceiver | None = None
    packet_counts: dict[str, int] = field(default_factory=dict)  # reported to metrics so far

    def receive_counts(self) -> dict[str, int] | None:
        """Audio packets lost / late / duplicate at this stream's receive buffer (None: not
        the relay buffer, see server/aiortc_speedups.py)."""
        stats = aiortc_speedups.receive_stats(self.receiver)
        return None if stats is None else stats.counts()

    def apply(self, settings: dict[str, Any]) -> None:
        if "enabled" in settings:
            self.controls.enabled = settings["enabled"]
        if "attenuation_limit_db" in settings:
            self.controls.attenuation_limit_db = settings["attenuation_limit_db"]
        if self.enhancer is not None:
            self.enhancer.enabled = self.controls.enabled
            self.enhancer.attenuation_limit_db = self.controls.attenuation_limit_db

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        d = self.enhancer.diagnostics if self.enhancer is not None else None
        latency_s = self.processor.added_latency_s if self.processor is not None else 0.0
        return {
            "id": self.id,
            "kind": self.kind,
            "mode": self.mode,
            "state": self.pc.connectionState,
            "enabled": self.controls.enabled,
            "attenuation_limit_db": self.controls.attenuation_limit_db,
            "voice_activity": round(d.voice_activity, 4) if d else None,
            "mean_gain": round(d.mean_gain, 4) if d else None,
            "added_latency_ms": round(1e3 * latency_s, 2),
            "batch_wait_ms": round(s.batch_wait_ms, 2),
            "frames_processed": s.frames_processed,
            "frames_bypassed": s.frames_bypassed,
            "frames_failed": s.frames_failed,
            "cpu_seconds": round(s.cpu_seconds, 6),
            "last_frame_ms": round(s.last_frame_ms, 4),
            "level_in_db": round(s.level_in_db, 2),
            "level_out_db": round(s.level_out_db, 2),
            "backlog_ms": round(s.backlog_ms, 2),
            "queue_wait_ms": round(s.queue_wait_ms, 2),
            **{f"packets_{k}": v for k, v in (self.receive_counts() or {}).items()},
            "cpu_percent": round(self.cpu_percent, 3),
            "age_s": round(time.monotonic() - self.created, 3),
        }


def _ice_servers(config: Config) -> list[RTCIceServer]:
    return [
        RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
        for s in config.ice_servers
    ]


def _ice_ufrag(sdp: str) -> str | None:
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:"):
            return line.split(":", 1)[1].strip()
    return None


def make_runner(config: Config, metrics: Metrics) -> Runner:
    """The worker's packet runner for config.offload (server/batching.py)."""
    if config.offload == "thread":
        return ThreadRunner()
    if config.offload == "inline":
        return InlineRunner()
    return BatchRunner(metrics, window_s=config.batch_window_ms / 1e3)


class SessionManager:
    def __init__(
        self,
        config: Config,
        enhancer_factory: Callable[[], Enhancer],
        metrics: Metrics,
        *,
        worker_index: int = 0,
    ) -> None:
        self.config = config
        self.enhancer_factory = enhancer_factory
        self.metrics = metrics
        self.worker_index = worker_index
        self.capacity = config.max_streams
        self.sessions: dict[str, Session] = {}
        self._reserved = 0  # offers being negotiated: they hold a slot already
        self.draining = False
        self._ticker: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[bool]] = set()
        self._idle = asyncio.Event()  # set whenever no session is left (drain waits on it)
        self._idle.set()
        self.runner = make_runner(config, metrics)
        metrics.capacity.set(self.capacity)

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick(), name="session-ticker")

    async def stop(self) -> None:
        """Close every session and stop background work (app cleanup)."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await asyncio.gather(*(self.close(sid, "closed") for sid in list(self.sessions)))
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        self.runner.close()

    async def drain(self, timeout_s: float) -> None:
        """Refuse new sessions, let current ones finish, then close what remains."""
        self.draining = True
        self.metrics.draining.set(1)
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)
        await asyncio.gather(*(self.close(sid, "closed") for sid in list(self.sessions)))

    async def wait_idle(self) -> None:
        """Until no session is left."""
        await self._idle.wait()

    @property
    def active(self) -> int:
        return len(self.sessions)

    @property
    def ready(self) -> bool:
        return not self.draining and self.active + self._reserved < self.capacity

    # -- signalling ----------------------------------------------------------------
    async def create(self, sdp: str, sdp_type: str, *, mode: Mode, kind: str) -> Session:
        """Negotiate a new session from an SDP offer; returns it with its answer set."""
        if self.draining:
            self.metrics.sessions.labels("rejected_draining").inc()
            raise Draining("server is draining")
        if self.active + self._reserved >= self.capacity:
            self.metrics.sessions.labels("rejected_full").inc()
            raise ServiceFull("no free stream slot")
        if sdp_type != "offer":
            raise BadOffer(f"expected an SDP offer, got type {sdp_type!r}")
        self._reserved += 1
        try:
            return await self._negotiate(sdp, mode=mode, kind=kind)
        finally:
            self._reserved -= 1

    async def _negotiate(self, sdp: str, *, mode: Mode, kind: str) -> Session:
        sid = f"{self.worker_index}-{secrets.token_urlsafe(12)}"
        try:
            enhancer = self.enhancer_factory() if mode == "enhance" else None
        except Exception as exc:
            self.metrics.sessions.labels("failed").inc()
            log.exception("enhancer factory failed")
            raise EnhancerUnavailable(f"could not create an enhancer: {exc}") from exc
        pc = RTCPeerConnection(RTCConfiguration(iceServers=_ice_servers(self.config)))
        session = Session(id=sid, pc=pc, mode=mode, kind=kind, enhancer=enhancer)
        self._wire(session)
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as exc:  # aiortc raises ValueError/TypeError/... for bad SDP
                raise BadOffer(f"malformed SDP offer: {exc}") from exc
            transceivers = pc.getTransceivers()
            audio = [t for t in transceivers if t.kind == "audio"]
            if len(audio) != 1 or len(transceivers) != 1:
                raise BadOffer("the offer must carry exactly one audio stream (no video)")
            receiver_track = audio[0].receiver.track
            session.receiver = audio[0].receiver
            opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.name == "opus"]
            audio[0].setCodecPreferences(opus)
            session.processor = StreamProcessor(enhancer, self.metrics, session.stats)
            session.track = EnhancedTrack(
                receiver_track,
                session.processor,
                deadline_s=self.config.frame_deadline_ms / 1e3,
                runner=self.runner,
            )
            pc.addTrack(session.track)
            answer = await pc.createAnswer()
            if answer is None:
                raise BadOffer("could not answer the offer")
            await pc.setLocalDescription(answer)
        except BadOffer:
            self.metrics.sessions.labels("failed").inc()
            await pc.close()
            raise
        except Exception as exc:
            self.metrics.sessions.labels("failed").inc()
            await pc.close()
            raise BadOffer(f"could not negotiate: {exc}") from exc
        session.ice_ufrag = _ice_ufrag(sdp)
        session.apply({})
        self.sessions[sid] = session
        self._idle.clear()
        self.metrics.sessions.labels("accepted").inc()
        self.metrics.active_streams.set(self.active)
        self.metrics.stream_started(sid)
        if session.processor is not None:
            self.metrics.added_latency.set(session.processor.added_latency_s)
        log.info("session %s (%s, %s) started; %d active", sid, kind, mode, self.active)
        return session

    def _wire(self, session: Session) -> None:
        pc = session.pc

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            if state == "connected" and session.connected_at is None:
                session.connected_at = time.monotonic()
            if state in ("failed", "closed"):
                self._close_soon(session.id, "closed")

        @pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            if session.channel is None:
                session.channel = channel

            @channel.on("message")
            def on_message(message: object) -> None:
                self._on_channel_message(session.id, message)

    def _close_soon(self, sid: str, outcome: str) -> None:
        if sid in self.sessions:
            task = asyncio.create_task(self.close(sid, outcome))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self, sid: str, outcome: str = "closed") -> bool:
        """End a session and free everything it holds; False if it was not there."""
        session = self.sessions.pop(sid, None)
        if session is None or session.closed:
            return False
        session.closed = True
        self.metrics.sessions.labels(outcome).inc()
        self.metrics.active_streams.set(self.active)
        self.metrics.stream_ended(sid)
        if not self.sessions:
            self._idle.set()
        if session.track is not None:
            session.track.stop()
        try:
            await session.pc.close()
        except Exception:
            log.exception("closing peer connection of %s", sid)
        log.info("session %s ended (%s); %d active", sid, outcome, self.active)
        return True

    def get(self, sid: str) -> Session:
        session = self.sessions.get(sid)
        if session is None:
            raise UnknownSession(f"no session {sid!r}")
        return session

    async def add_candidates(self, sid: str, fragment: str) -> None:
        """Trickle ICE (WHIP PATCH): add remote candidates; an ICE restart is refused."""
        session = self.get(sid)
        ufrag = _ice_ufrag(fragment)
        if ufrag is not None and session.ice_ufrag is not None and ufrag != session.ice_ufrag:
            raise IceRestartUnsupported("ICE restart is not supported")
        mid = None
        for line in fragment.splitlines():
            line = line.strip()
            if line.startswith("a=mid:"):
                mid = line.split(":", 1)[1]
            elif line.startswith("a=candidate:"):
                try:
                    candidate = candidate_from_sdp(line[len("a=") :].split(":", 1)[1])
                except Exception as exc:
                    raise BadOffer(f"bad candidate line: {line!r}") from exc
                candidate.sdpMid = mid
                candidate.sdpMLineIndex = 0
                await session.pc.addIceCandidate(candidate)

    # -- controls and stats --------------------------------------------------------
    def control(self, sid: str, message: object) -> dict[str, Any]:
        """Apply a control message (data channel or HTTP); ValueError on garbage (counted)."""
        session = self.get(sid)
        try:
            settings = parse_control(message)
        except (ValueError, UnicodeDecodeError) as exc:
            self.metrics.control_messages.labels("ignored").inc()
            raise ValueError(str(exc)) from exc
        session.apply(settings)
        self.metrics.control_messages.labels("applied").inc()
        return session.snapshot()

    def _on_channel_message(self, sid: str, message: object) -> None:
        try:
            self.control(sid, message)
        except (ValueError, UnknownSession) as exc:
            log.debug("ignored data-channel message for %s: %s", sid, exc)

    async def _tick(self) -> None:
        interval = self.config.stats_interval_s
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            latencies = []
            for session in list(self.sessions.values()):
                try:
                    self._tick_session(session, now)
                    if session.processor is not None and session.enhancer is not None:
                        latencies.append(session.processor.added_latency_s)
                except Exception:
                    log.exception("stats for %s", session.id)
            if latencies:
                self.metrics.added_latency.set(max(latencies))

    def _tick_session(self, session: Session, now: float) -> None:
        s = session.stats
        if s.packets != session.last_packets:
            session.last_packets = s.packets
            session.last_packet_time = now
        if session.connected_at is None:
            if now - session.created > self.config.connect_timeout_s:
                log.info("session %s never connected", session.id)
                self._close_soon(session.id, "closed")
                return
        elif now - max(session.last_packet_time, session.connected_at) > (
            self.config.idle_timeout_s
        ):
            log.info(
                "session %s received no audio for %.1f s",
                session.id,
                now - session.last_packet_time,
            )
            self._close_soon(session.id, "closed")
            return
        self._cpu_percent(session, now)
        self._count_packets(session)
        snap = session.snapshot()
        self.metrics.stream_update(session.id, s.cpu_seconds, snap["voice_activity"] or 0.0)
        channel = session.channel
        if channel is not None and channel.readyState == "open":
            snap["type"] = "stats"
            channel.send(json.dumps(snap))

    def _count_packets(self, session: Session) -> None:
        """Add what the stream's receive buffer counted since the last tick to the metric."""
        stats = aiortc_speedups.receive_stats(session.receiver)
        if stats is not None:
            for outcome, new in stats.since(session.packet_counts).items():
                self.metrics.received_packets.labels(outcome).inc(new)

    @staticmethod
    def _cpu_percent(session: Session, now: float) -> float:
        """Share of one core used by this stream over about the last second (percent)."""
        t0, cpu0 = session.cpu_mark
        if now - t0 >= CPU_WINDOW_S:
            session.cpu_percent = 100.0 * (session.stats.cpu_seconds - cpu0) / (now - t0)
            session.cpu_mark = (now, session.stats.cpu_seconds)
        return round(session.cpu_percent, 3)
