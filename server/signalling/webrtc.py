"""WebRTC signalling: POST /offer (the aiortc-example JSON shape) and WHIP (RFC 9725:
POST -> 201 + Location, PATCH trickle ICE -> 204, DELETE, OPTIONS)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.ops.appkeys import CONFIG_KEY, MANAGER_KEY
from server.sessions.errors import BadRequest
from server.sessions.manager import Mode, Session
from server.signalling.http import (
    CORS_HEADERS,
    body_text,
    client_address,
    json_body,
    require_type,
    session_key,
)

SDP_TYPE = "application/sdp"
TRICKLE_TYPE = "application/trickle-ice-sdpfrag"


def _mode(value: object) -> Mode:
    if value in (None, "", "enhance"):
        return "enhance"
    if value == "passthrough":
        return "passthrough"
    raise BadRequest(f"mode must be enhance or passthrough, not {value!r}")


async def offer(request: web.Request) -> web.Response:
    require_type(request, "application/json")
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("sdp"), str):
        raise BadRequest("expected a JSON object with string fields sdp and type")
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
    require_type(request, SDP_TYPE)
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
    manager.get(session_key(request))  # 404 before 415 for an unknown session
    require_type(request, TRICKLE_TYPE)
    fragment = await body_text(request)
    await manager.add_candidates(session_key(request), fragment)
    return web.Response(status=204)


async def session_delete(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    session = manager.get(session_key(request))
    await manager.close(session.id, "closed")
    return web.Response(status=200)


async def whip_options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Accept-Post": SDP_TYPE, **CORS_HEADERS})
