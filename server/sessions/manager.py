"""Sessions: one peer connection, one enhancer, one data channel, and their lifetimes.

The SessionManager owns every session of a worker, admits new ones (WebRTC, WHIP and
the RTP sidecar alike: `admit` then `register`), enforces capacity, pending-session
limits and draining, and runs one ticker task that pushes stats down the data
channels, refreshes the per-stream metrics and closes sessions whose peer never
connected or went silent.

Ownership: each session has a public id (`0-1a2b3c4d`: logs, /streams for the
operator, metrics labels; it grants nothing) and a secret of SECRET_BYTES from the
CSPRNG. The session's key, `<id>.<secret>`, is its capability: every URL that reads,
controls or ends the session carries it (/whip/{key}, /streams/{key},
/v1/rtp-sessions/{key}); only its creator is told it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.rtcdatachannel import RTCDataChannel

from percepnet.streaming import Enhancer, StreamSettings
from server.media import aiortc_hooks
from server.media.processor import StreamProcessor, StreamStats
from server.media.runners import BatchRunner, InlineRunner, Runner, ThreadRunner
from server.media.track import EnhancedTrack
from server.ops.config import Config
from server.ops.prometheus import Metrics
from server.sessions.addresses import client_key
from server.sessions.controls import parse_control
from server.sessions.errors import (
    BadRequest,
    Draining,
    EnhancerUnavailable,
    IceRestartUnsupported,
    ServiceFull,
    TooManyPending,
    TooManyRequests,
    UnknownSession,
)
from server.sessions.ice import candidate_lines, check_candidate, ice_servers, ice_ufrag
from server.sessions.ids import new_session_id

log = logging.getLogger(__name__)

Mode = Literal["enhance", "passthrough"]
CPU_WINDOW_S = 1.0
SECRET_BYTES = 24
"""Session secrets: 192 bits from secrets (the OS CSPRNG), URL-safe base64."""
MAX_CANDIDATES_PER_SESSION = 16
"""Remote ICE candidates one session may name (offer and trickle together): each one is
an address the server sends STUN checks to."""
MAX_CANDIDATES_PER_PATCH = 8
PENDING_GRACE_S = 1.0
"""A full worker closes a not-yet-connected session to admit a new one only once it has
had this long to connect (ICE and DTLS take well under a second on most paths)."""
PATCH_BURST = 5
PATCH_PER_S = 1.0
"""Trickle PATCHes per session: a burst of PATCH_BURST, then PATCH_PER_S (token bucket)."""


@dataclass
class Session:
    id: str  # public: logs, /streams, metrics labels; grants nothing
    pc: RTCPeerConnection
    mode: Mode
    kind: str  # "offer", "whip" or "rtp"
    enhancer: Enhancer | None
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(SECRET_BYTES))
    client: str = ""  # address admitted from (per-client pending limits)
    stats: StreamStats = field(default_factory=StreamStats)
    controls: StreamSettings = field(default_factory=StreamSettings)
    """The stream's settings; the enhancer holds this same object (apply)."""
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
    candidates: int = 0  # remote ICE candidates named so far (offer + PATCHes)
    patch_tokens: float = PATCH_BURST
    patch_refill: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> str:
        """The capability: `<public id>.<secret>`, in every URL of this session."""
        return f"{self.id}.{self.secret}"

    @property
    def pending(self) -> bool:
        return self.connected_at is None and not self.closed

    def receive_counts(self) -> dict[str, int] | None:
        """Audio packets lost / late / duplicate at this stream's receive buffer (None: not
        the relay buffer, see server/media/aiortc_hooks.py)."""
        stats = aiortc_hooks.receive_stats(self.receiver)
        return None if stats is None else stats.counts()

    def apply(self, changes: dict[str, Any]) -> None:
        """Change some settings (parse_control's result): one new StreamSettings, made
        (validated, converted) once, used by the enhancer from its next frame."""
        self.controls = replace(self.controls, **changes)
        if self.enhancer is not None:
            self.enhancer.apply(self.controls)

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


def make_runner(config: Config, metrics: Metrics) -> Runner:
    """The worker's packet runner for config.offload (server/media/runners.py)."""
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
        self.sessions: dict[str, Session] = {}  # by public id
        self._negotiating: Counter[str] = Counter()  # admitted, not registered, by client
        self.draining = False
        self._ticker: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[Any]] = set()
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
        """Whether a new session would be taken (a pending one may be evicted for it)."""
        if self.draining:
            return False
        held = self.active + sum(self._negotiating.values())
        return held < self.capacity or bool(self._evictable(self.sessions.values(), True))

    # -- admission: the one path for WebRTC, WHIP and RTP --------------------------
    @contextlib.asynccontextmanager
    async def admit(self, client: str) -> AsyncIterator[None]:
        """Hold a slot for a session being set up by `client` (an address); `register`
        the session inside. Refuses with Draining (503), TooManyPending (429: the client
        has max_pending_per_client sessions connecting) or ServiceFull (503: full of
        connected streams). When the pending budget is spent, or every slot is taken
        while some are held by sessions that have not connected in PENDING_GRACE_S, the
        oldest of those of the client holding the most is closed to make room: sessions
        that never connect cannot lock others out."""
        client = client_key(client)
        if self.draining:
            self.metrics.sessions.labels("rejected_draining").inc()
            raise Draining("server is draining")
        pending = [s for s in self.sessions.values() if s.pending]
        mine = self._negotiating[client] + sum(1 for s in pending if s.client == client)
        if mine >= self.config.max_pending_per_client:
            self.metrics.sessions.labels("rejected_pending").inc()
            raise TooManyPending(
                f"{mine} sessions of this client are still connecting; connect or end them"
            )
        negotiating = sum(self._negotiating.values())
        budget_spent = negotiating + len(pending) >= self.config.max_pending
        full = self.active + negotiating >= self.capacity
        if (budget_spent or full) and not self._evict_pending(self._evictable(pending, grace=full)):
            self.metrics.sessions.labels("rejected_full").inc()
            raise ServiceFull("no free stream slot")
        self._negotiating[client] += 1
        try:
            yield
        finally:
            self._negotiating[client] -= 1
            if self._negotiating[client] <= 0:
                del self._negotiating[client]

    @staticmethod
    def _evictable(sessions: Any, grace: bool) -> list[Session]:
        now = time.monotonic()
        return [
            s for s in sessions if s.pending and (not grace or now - s.created >= PENDING_GRACE_S)
        ]

    def _evict_pending(self, pending: list[Session]) -> bool:
        """Close the oldest not-yet-connected session of the client with the most."""
        if not pending:
            return False
        per_client = Counter(s.client for s in pending)
        worst = max(per_client, key=lambda c: per_client[c])
        victim = min((s for s in pending if s.client == worst), key=lambda s: s.created)
        log.info(
            "session %s evicted: still not connected after %.1f s",
            victim.id,
            time.monotonic() - victim.created,
        )
        self._forget(victim, "evicted_pending")
        self._finish_soon(victim, "evicted_pending")
        return True

    def new_id(self) -> str:
        """A fresh public id (not secret: the session's secret is separate)."""
        while True:
            sid = new_session_id(self.worker_index)
            if sid not in self.sessions:
                return sid

    def register(self, session: Session, client: str) -> None:
        """Make an admitted session live (call inside `admit`, before any await that
        could let another request in)."""
        session.client = client_key(client)
        self.sessions[session.id] = session
        self._idle.clear()
        self.metrics.sessions.labels("accepted").inc()
        self.metrics.active_streams.set(self.active)
        self.metrics.stream_started(session.id)
        if session.processor is not None and session.enhancer is not None:
            self.metrics.added_latency.set(session.processor.added_latency_s)

    # -- signalling ----------------------------------------------------------------
    async def create(
        self, sdp: str, sdp_type: str, *, mode: Mode, kind: str, client: str = ""
    ) -> Session:
        """Negotiate a new session from an SDP offer; returns it with its answer set."""
        if sdp_type != "offer":
            raise BadRequest(f"expected an SDP offer, got type {sdp_type!r}")
        lines = candidate_lines(sdp)
        if len(lines) > MAX_CANDIDATES_PER_SESSION:
            raise BadRequest(f"more than {MAX_CANDIDATES_PER_SESSION} ICE candidates")
        for line in lines:
            check_candidate(line)
        async with self.admit(client):
            session = await self._negotiate(sdp, mode=mode, kind=kind)
            session.candidates = len(lines)
            self.register(session, client)
        log.info("session %s (%s, %s) started; %d active", session.id, kind, mode, self.active)
        return session

    async def _negotiate(self, sdp: str, *, mode: Mode, kind: str) -> Session:
        sid = self.new_id()
        try:
            enhancer = self.enhancer_factory() if mode == "enhance" else None
        except Exception as exc:
            self.metrics.sessions.labels("failed").inc()
            log.exception("enhancer factory failed")
            raise EnhancerUnavailable(f"could not create an enhancer: {exc}") from exc
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(self.config)))
        session = Session(id=sid, pc=pc, mode=mode, kind=kind, enhancer=enhancer)
        self._wire(session)
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as exc:  # aiortc raises ValueError/TypeError/... for bad SDP
                raise BadRequest(f"malformed SDP offer: {exc}") from exc
            transceivers = pc.getTransceivers()
            audio = [t for t in transceivers if t.kind == "audio"]
            if len(audio) != 1 or len(transceivers) != 1:
                raise BadRequest("the offer must carry exactly one audio stream (no video)")
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
                raise BadRequest("could not answer the offer")
            await pc.setLocalDescription(answer)
        except BadRequest:
            self.metrics.sessions.labels("failed").inc()
            await pc.close()
            raise
        except Exception as exc:
            self.metrics.sessions.labels("failed").inc()
            await pc.close()
            raise BadRequest(f"could not negotiate: {exc}") from exc
        session.ice_ufrag = ice_ufrag(sdp)
        session.apply({})
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
                self._on_channel_message(session, message)

    def _close_soon(self, sid: str, outcome: str) -> None:
        if sid in self.sessions:
            task = asyncio.create_task(self.close(sid, outcome))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _forget(self, session: Session, outcome: str) -> bool:
        """The synchronous half of closing: the slot is free when this returns."""
        if self.sessions.get(session.id) is not session or session.closed:
            return False
        del self.sessions[session.id]
        session.closed = True
        self.metrics.sessions.labels(outcome).inc()
        self.metrics.active_streams.set(self.active)
        self.metrics.stream_ended(session.id)
        if not self.sessions:
            self._idle.set()
        if session.track is not None:
            session.track.stop()
        return True

    async def _finish(self, session: Session, outcome: str) -> None:
        try:
            await session.pc.close()
        except Exception:
            log.exception("closing peer connection of %s", session.id)
        log.info("session %s ended (%s); %d active", session.id, outcome, self.active)

    def _finish_soon(self, session: Session, outcome: str) -> None:
        task = asyncio.create_task(self._finish(session, outcome))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self, sid: str, outcome: str = "closed") -> bool:
        """End a session (by public id) and free everything it holds; False if it was
        not there."""
        session = self.sessions.get(sid)
        if session is None or not self._forget(session, outcome):
            return False
        await self._finish(session, outcome)
        return True

    def get(self, key: str) -> Session:
        """The session whose capability key (`<id>.<secret>`) this is; UnknownSession
        (404) for an unknown id and a wrong secret alike. The secret is compared in
        constant time."""
        sid, _, secret = key.partition(".")
        session = self.sessions.get(sid)
        given = secret.encode("utf-8", "surrogateescape")
        if session is None or not hmac.compare_digest(given, session.secret.encode()):
            raise UnknownSession("no such session")
        return session

    async def add_candidates(self, key: str, fragment: str) -> None:
        """Trickle ICE (WHIP PATCH): add remote candidates; an ICE restart is refused.

        Bounded: MAX_CANDIDATES_PER_PATCH per request, MAX_CANDIDATES_PER_SESSION in
        all, PATCH_BURST/PATCH_PER_S requests; every candidate is checked before any
        is added, so a refused PATCH adds none."""
        session = self.get(key)
        now = time.monotonic()
        session.patch_tokens = min(
            PATCH_BURST, session.patch_tokens + (now - session.patch_refill) * PATCH_PER_S
        )
        session.patch_refill = now
        if session.patch_tokens < 1.0:
            self.metrics.rejected_requests.labels("rate").inc()
            raise TooManyRequests("too many PATCH requests for this session")
        session.patch_tokens -= 1.0
        ufrag = ice_ufrag(fragment)
        if ufrag is not None and session.ice_ufrag is not None and ufrag != session.ice_ufrag:
            raise IceRestartUnsupported("ICE restart is not supported")
        mid = None
        found: list[Any] = []
        for line in fragment.splitlines():
            line = line.strip()
            if line.startswith("a=mid:"):
                mid = line.split(":", 1)[1]
            elif line.startswith("a=candidate:"):
                if len(found) >= MAX_CANDIDATES_PER_PATCH:
                    self.metrics.rejected_requests.labels("candidates").inc()
                    raise BadRequest(f"more than {MAX_CANDIDATES_PER_PATCH} candidates in a PATCH")
                try:
                    candidate = check_candidate(line[len("a=candidate:") :])
                except BadRequest:
                    self.metrics.rejected_requests.labels("candidates").inc()
                    raise
                candidate.sdpMid = mid
                candidate.sdpMLineIndex = 0
                found.append(candidate)
        if session.candidates + len(found) > MAX_CANDIDATES_PER_SESSION:
            self.metrics.rejected_requests.labels("candidates").inc()
            raise BadRequest(f"more than {MAX_CANDIDATES_PER_SESSION} candidates for a session")
        session.candidates += len(found)
        for candidate in found:
            await session.pc.addIceCandidate(candidate)

    # -- controls and stats --------------------------------------------------------
    def control(self, key: str, message: object) -> dict[str, Any]:
        """Apply a control message (HTTP) to the session with this capability key;
        ValueError on garbage (counted)."""
        return self._apply_control(self.get(key), message)

    def _apply_control(self, session: Session, message: object) -> dict[str, Any]:
        try:
            settings = parse_control(message)
        except ValueError as exc:  # UnicodeDecodeError included
            self.metrics.control_messages.labels("ignored").inc()
            raise ValueError(str(exc)) from exc
        session.apply(settings)
        self.metrics.control_messages.labels("applied").inc()
        return session.snapshot()

    def _on_channel_message(self, session: Session, message: object) -> None:
        """A data-channel message: applied, or ignored and counted. Nothing may escape
        to aiortc (its event emitter would end the connection)."""
        if session.closed:
            return
        try:
            self._apply_control(session, message)
        except ValueError as exc:
            log.debug("ignored data-channel message for %s: %s", session.id, exc)
        except Exception:
            self.metrics.control_messages.labels("ignored").inc()
            log.exception("data-channel message for %s", session.id)

    async def _tick(self) -> None:
        interval = self.config.stats_interval_s
        while True:
            await asyncio.sleep(interval)
            self._tick_all(time.monotonic())

    def _tick_all(self, now: float) -> None:
        # (a function of its own, so that no loop variable of the long-lived ticker keeps
        # the last session, closed or not, alive between ticks: bench/soak.py abandoned)
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
                self._close_soon(session.id, "timed_out")
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
        stats = aiortc_hooks.receive_stats(session.receiver)
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
