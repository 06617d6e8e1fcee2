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
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web
from aiortc import RTCPeerConnection

from server.httputil import client_address, read_text
from server.media.processor import StreamProcessor, StreamStats
from server.ops.config import Config
from server.ops.prometheus import Metrics
from server.sessions.errors import EnhancerUnavailable, UnknownSession
from server.sessions.manager import Session, SessionManager
from server.sidecar.destinations import check_destination
from server.sidecar.endpoint import RtpEndpoint, RtpMetrics, bind_socket
from server.sidecar.request import RtpRequest, RtpSettings, RtpSetupError, parse_request

log = logging.getLogger(__name__)

PATH = "/v1/rtp-sessions"


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
