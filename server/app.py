"""The aiohttp application of one worker: wires signalling, sessions, the sidecar and ops.

    POST   /offer                  JSON {sdp, type[, mode]} -> JSON answer
                                   {sdp, type, id, session, location}
    POST   /whip[?mode=...]        application/sdp -> 201, Location: /whip/{key}, answer SDP
    PATCH  /whip/{key}             application/trickle-ice-sdpfrag -> 204 (ICE restart: 422)
    DELETE /whip/{key}             end the session (also DELETE /streams/{key})
    OPTIONS /whip, /whip/{key}     CORS preflight
    GET    /streams                totals; each stream's JSON too with an operator token
    GET    /streams/{key}          the stream's JSON
    POST   /streams/{key}/control  JSON {enabled?, attenuation_limit_db?} -> stream JSON
    GET    /metrics /healthz /readyz /config.json, and the page at /
    POST   /v1/rtp-sessions, GET/DELETE /v1/rtp-sessions/{key}: sidecar RTP (server/sidecar/)

mode is "enhance" (default) or "passthrough" (no DSP at all: the benchmark baseline).

{key} is the session's capability, `<id>.<secret>` (server/sessions/manager.py), returned only
to its creator: `session` in the /offer answer, the WHIP Location, the sidecar's
`session`. The public `id` grants nothing. With an operator token (--auth-token) every
endpoint but the page, /healthz and /readyz also needs `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

from percepnet.streaming import Enhancer
from server.media import aiortc_hooks
from server.ops.appkeys import CONFIG_KEY, MANAGER_KEY, METRICS_KEY
from server.ops.config import Config
from server.ops.gcwatch import GcMonitor
from server.ops.health import LAG_KEY, LoopLagMonitor, healthz, prometheus_metrics, readyz
from server.ops.prometheus import Metrics
from server.sessions.manager import SessionManager
from server.sidecar import service as rtp_sidecar
from server.signalling.http import guard
from server.signalling.page import client_config, index
from server.signalling.streams import control, stream, streams
from server.signalling.webrtc import offer, session_delete, whip_options, whip_patch, whip_post

__all__ = ["CONFIG_KEY", "MANAGER_KEY", "METRICS_KEY", "app_manager", "create_app"]


def create_app(
    config: Config,
    enhancer_factory: Callable[[], Enhancer],
    *,
    worker_index: int = 0,
) -> web.Application:
    """One worker's app. The factory makes one Enhancer per stream (model loaded already)."""
    aiortc_hooks.install(
        inline_codecs=config.inline_codecs,
        relay_buffer=config.receive_buffer == "relay",
        opus_complexity=config.opus_complexity,
    )
    app = web.Application(middlewares=[guard], client_max_size=config.max_body_bytes)
    # Per-stream series (stream ids, voice activity) only where /metrics needs the
    # operator token; without one, /metrics is open and carries totals only.
    per_stream = config.per_stream_metrics_limit if config.auth_token else 0
    app_metrics = Metrics(per_stream_limit=per_stream)
    manager = SessionManager(config, enhancer_factory, app_metrics, worker_index=worker_index)
    app[CONFIG_KEY] = config
    app[METRICS_KEY] = app_metrics
    app[MANAGER_KEY] = manager
    app[LAG_KEY] = LoopLagMonitor(app_metrics)
    gc_monitor = GcMonitor(app_metrics.gc_pause)

    async def lifecycle(app: web.Application) -> Any:
        await app[LAG_KEY].start()
        gc_monitor.start()
        await app[MANAGER_KEY].start()
        yield
        await app[MANAGER_KEY].stop()
        gc_monitor.stop()
        await app[LAG_KEY].stop()

    app.cleanup_ctx.append(lifecycle)
    r = app.router
    r.add_post("/offer", offer)
    r.add_post("/whip", whip_post)
    r.add_route("OPTIONS", "/whip", whip_options)
    r.add_route("OPTIONS", "/whip/{id}", whip_options)
    r.add_patch("/whip/{id}", whip_patch)
    r.add_delete("/whip/{id}", session_delete)
    r.add_get("/streams", streams)
    r.add_get("/streams/{id}", stream)
    r.add_delete("/streams/{id}", session_delete)
    r.add_post("/streams/{id}/control", control)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", prometheus_metrics)
    r.add_get("/config.json", client_config)
    rtp_sidecar.install(app, config, manager, app_metrics)  # sidecar: /v1/rtp-sessions
    r.add_get("/", index)
    if config.static_dir.is_dir():
        r.add_static("/static/", config.static_dir)
    return app


def app_manager(app: web.Application) -> SessionManager:
    return cast(SessionManager, app[MANAGER_KEY])
