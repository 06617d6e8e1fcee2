"""The aiohttp application of one worker: signalling, controls, metrics, health, page.

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
    POST   /v1/rtp-sessions, GET/DELETE /v1/rtp-sessions/{key}: sidecar RTP (server/rtp.py)

mode is "enhance" (default) or "passthrough" (no DSP at all: the benchmark baseline).

{key} is the session's capability, `<id>.<secret>` (server/session.py), returned only
to its creator: `session` in the /offer answer, the WHIP Location, the sidecar's
`session`. The public `id` grants nothing. With an operator token (--auth-token) every
endpoint but the page, /healthz and /readyz also needs `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from percepnet.streaming import MAX_ATTENUATION_DB, Enhancer
from server import aiortc_speedups, rtp
from server.config import Config
from server.gcwatch import GcMonitor
from server.httputil import bearer_matches, parse_json, read_text
from server.httputil import client_address as _client_address
from server.metrics import Metrics
from server.session import (
    BadOffer,
    Draining,
    Mode,
    ServiceFull,
    Session,
    SessionError,
    SessionManager,
)

log = logging.getLogger(__name__)

CONFIG_KEY = web.AppKey("config", Config)
MANAGER_KEY = web.AppKey("manager", SessionManager)
METRICS_KEY = web.AppKey("metrics", Metrics)

SDP_TYPE = "application/sdp"
TRICKLE_TYPE = "application/trickle-ice-sdpfrag"
PROTECTED_PREFIXES = ("/offer", "/whip", "/streams", "/config.json", "/v1/", "/metrics")
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, ETag, Retry-After",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LoopLagMonitor:
    """Wakes every `interval` seconds and records how late it woke (event-loop lag)."""

    def __init__(self, metrics: Metrics, interval: float = 0.05, window: float = 5.0) -> None:
        self.metrics = metrics
        self.interval = interval
        self.window = window
        self.last_s = 0.0
        self.max_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        window_start = time.monotonic()
        window_max = 0.0
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval)
            lag = max(0.0, time.monotonic() - before - self.interval)
            self.last_s = lag
            self.metrics.loop_lag.observe(lag)
            window_max = max(window_max, lag)
            if time.monotonic() - window_start >= self.window:
                self.max_s = window_max
                self.metrics.loop_lag_max.set(window_max)
                self.metrics.loop_tasks.set(len(asyncio.all_tasks()))
                window_start, window_max = time.monotonic(), 0.0


LAG_KEY = web.AppKey("loop_lag", LoopLagMonitor)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _authorized(request: web.Request, token: str) -> bool:
    return bearer_matches(request.headers.get("Authorization"), token)


def client_address(request: web.Request) -> str:
    """The address a request came from (the router's word for it, behind the router)."""
    return _client_address(request, request.app[CONFIG_KEY].forwarded_client)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS headers, bearer auth, body-size limit, SessionError -> status mapping, and
    any other exception -> a logged 500 (the connection and every session stay up)."""
    config = request.app[CONFIG_KEY]
    try:
        if request.method != "OPTIONS":
            protected = config.auth_token and request.path.startswith(PROTECTED_PREFIXES)
            if protected and not _authorized(request, config.auth_token or ""):
                raise web.HTTPUnauthorized(
                    text="missing or wrong bearer token",
                    headers={"WWW-Authenticate": 'Bearer realm="percepnet"'},
                )
            length = request.content_length
            if length is not None and length > config.max_body_bytes:
                raise web.HTTPRequestEntityTooLarge(
                    max_size=config.max_body_bytes, actual_size=length
                )
        response = await handler(request)
    except SessionError as exc:
        headers = None
        if isinstance(exc, (ServiceFull, Draining)):
            headers = {"Retry-After": str(config.retry_after_s)}
        response = error_response(exc.status, str(exc), headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {k: v for k, v in exc.headers.items() if k in ("WWW-Authenticate", "Allow")}
        response = error_response(exc.status, exc.text or exc.reason, kept)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        if METRICS_KEY in request.app:
            request.app[METRICS_KEY].rejected_requests.labels("error").inc()
        response = error_response(500, "internal error (logged)")
    for key, value in CORS_HEADERS.items():
        response.headers.setdefault(key, value)
    return response


async def body_text(request: web.Request) -> str:
    """The request body; 413 when it exceeds the limit even without Content-Length."""
    return await read_text(request, request.app[CONFIG_KEY].max_body_bytes, BadOffer)


def _require_type(request: web.Request, expected: str) -> None:
    if request.content_type != expected:
        raise web.HTTPUnsupportedMediaType(text=f"expected Content-Type {expected}")


def _mode(value: object) -> Mode:
    if value in (None, "", "enhance"):
        return "enhance"
    if value == "passthrough":
        return "passthrough"
    raise BadOffer(f"mode must be enhance or passthrough, not {value!r}")


def _session_key(request: web.Request) -> str:
    return request.match_info["id"]


async def json_body(request: web.Request) -> Any:
    """The request's JSON (bounded size, depth and numbers); 400 when it is not."""
    text = await body_text(request)
    try:
        return parse_json(text)
    except ValueError as exc:
        if METRICS_KEY in request.app:
            request.app[METRICS_KEY].rejected_requests.labels("body").inc()
        raise BadOffer(f"body: {exc}") from exc


# -- signalling ------------------------------------------------------------------------
async def offer(request: web.Request) -> web.Response:
    _require_type(request, "application/json")
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("sdp"), str):
        raise BadOffer("expected a JSON object with string fields sdp and type")
    manager = request.app[MANAGER_KEY]
    session = await manager.create(
        body["sdp"],
        str(body.get("type")),
        mode=_mode(body.get("mode")),
        kind="offer",
        client=client_address(request),
    )
    return web.json_response(_answer_json(session))


def _answer_json(session: Session) -> dict[str, Any]:
    desc = session.pc.localDescription
    return {
        "sdp": desc.sdp,
        "type": desc.type,
        "id": session.id,
        "session": session.key,
        "location": f"/whip/{session.key}",
    }


async def whip_post(request: web.Request) -> web.Response:
    _require_type(request, SDP_TYPE)
    sdp = await body_text(request)
    manager = request.app[MANAGER_KEY]
    session = await manager.create(
        sdp,
        "offer",
        mode=_mode(request.query.get("mode")),
        kind="whip",
        client=client_address(request),
    )
    location = f"/whip/{session.key}"
    headers = {"Location": location, "ETag": f'"{session.id}"'}
    for server in request.app[CONFIG_KEY].ice_servers:
        headers.setdefault("Link", f'<{server.urls}>; rel="ice-server"')
    return web.Response(
        status=201, text=session.pc.localDescription.sdp, content_type=SDP_TYPE, headers=headers
    )


async def whip_patch(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    manager.get(_session_key(request))  # 404 before 415 for an unknown session
    _require_type(request, TRICKLE_TYPE)
    fragment = await body_text(request)
    await manager.add_candidates(_session_key(request), fragment)
    return web.Response(status=204)


async def session_delete(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    session = manager.get(_session_key(request))
    await manager.close(session.id, "closed")
    return web.Response(status=200)


async def whip_options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Accept-Post": SDP_TYPE, **CORS_HEADERS})


# -- streams and controls --------------------------------------------------------------
async def streams(request: web.Request) -> web.Response:
    """Totals for anyone; each stream's record (public ids, voice activity...) only when
    an operator token is configured (the guard has checked it by now)."""
    manager = request.app[MANAGER_KEY]
    body: dict[str, Any] = {
        "active": manager.active,
        "capacity": manager.capacity,
        "draining": manager.draining,
    }
    if request.app[CONFIG_KEY].auth_token:
        body["streams"] = [s.snapshot() for s in manager.sessions.values()]
    return web.json_response(body)


async def stream(request: web.Request) -> web.Response:
    return web.json_response(request.app[MANAGER_KEY].get(_session_key(request)).snapshot())


async def control(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    manager.get(_session_key(request))
    _require_type(request, "application/json")
    text = await body_text(request)
    try:
        state = manager.control(_session_key(request), text)
    except ValueError as exc:
        raise BadOffer(str(exc)) from exc
    return web.json_response(state)


# -- operations ------------------------------------------------------------------------
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "loop_lag_ms": 1e3 * request.app[LAG_KEY].last_s})


async def readyz(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    body = {
        "ready": manager.ready,
        "active": manager.active,
        "capacity": manager.capacity,
        "draining": manager.draining,
    }
    headers = None if manager.ready else {"Retry-After": str(request.app[CONFIG_KEY].retry_after_s)}
    return web.json_response(body, status=200 if manager.ready else 503, headers=headers)


async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[METRICS_KEY].registry)
    response = web.Response(body=data)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def client_config(request: web.Request) -> web.Response:
    config = request.app[CONFIG_KEY]
    return web.json_response(
        {
            "iceServers": [s.as_json() for s in config.ice_servers],
            "maxAttenuationDb": MAX_ATTENUATION_DB,
        }
    )


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(request.app[CONFIG_KEY].static_dir / "index.html")


# -- factory ---------------------------------------------------------------------------
def create_app(
    config: Config,
    enhancer_factory: Callable[[], Enhancer],
    *,
    worker_index: int = 0,
) -> web.Application:
    """One worker's app. The factory makes one Enhancer per stream (model loaded already)."""
    aiortc_speedups.install(
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
    r.add_get("/metrics", metrics)
    r.add_get("/config.json", client_config)
    rtp.install(app, config, manager, app_metrics)  # sidecar: /v1/rtp-sessions
    r.add_get("/", index)
    if config.static_dir.is_dir():
        r.add_static("/static/", config.static_dir)
    return app


def app_manager(app: web.Application) -> SessionManager:
    return cast(SessionManager, app[MANAGER_KEY])
