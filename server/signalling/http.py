"""The HTTP layer every endpoint shares: the guard middleware (CORS, bearer auth, body
limits, errors -> JSON with a status), bodies and their types, the client's address."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from server.httputil import bearer_matches, parse_json, read_text
from server.httputil import client_address as _client_address
from server.ops.appkeys import CONFIG_KEY, METRICS_KEY
from server.sessions.errors import BadRequest, Draining, ServiceFull, SessionError

log = logging.getLogger(__name__)

PROTECTED_PREFIXES = ("/offer", "/whip", "/streams", "/config.json", "/v1/", "/metrics")
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, ETag, Retry-After",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    return await read_text(request, request.app[CONFIG_KEY].max_body_bytes, BadRequest)


def require_type(request: web.Request, expected: str) -> None:
    if request.content_type != expected:
        raise web.HTTPUnsupportedMediaType(text=f"expected Content-Type {expected}")


def session_key(request: web.Request) -> str:
    return request.match_info["id"]


async def json_body(request: web.Request) -> Any:
    """The request's JSON (bounded size, depth and numbers); 400 when it is not."""
    text = await body_text(request)
    try:
        return parse_json(text)
    except ValueError as exc:
        if METRICS_KEY in request.app:
            request.app[METRICS_KEY].rejected_requests.labels("body").inc()
        raise BadRequest(f"body: {exc}") from exc
