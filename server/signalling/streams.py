"""A stream's record and controls over HTTP: /streams, /streams/{key}, .../control."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.ops.appkeys import CONFIG_KEY, MANAGER_KEY
from server.sessions.errors import BadRequest
from server.signalling.http import body_text, require_type, session_key


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
    return web.json_response(request.app[MANAGER_KEY].get(session_key(request)).snapshot())


async def control(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    manager.get(session_key(request))
    require_type(request, "application/json")
    text = await body_text(request)
    try:
        state = manager.control(session_key(request), text)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    return web.json_response(state)
