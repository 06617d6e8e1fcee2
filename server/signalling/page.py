"""The browser page (/) and what it needs to know (/config.json)."""

from __future__ import annotations

from aiohttp import web

from percepnet.streaming import MAX_ATTENUATION_DB
from server.ops.appkeys import CONFIG_KEY


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
