"""Small HTTP helpers shared by the signalling and sidecar handlers."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web


async def read_text(request: web.Request, limit: int, bad: Callable[[str], Exception]) -> str:
    """The UTF-8 request body; 413 past `limit` bytes (even without Content-Length),
    `bad(message)` raised when it is not UTF-8."""
    data = await request.content.read(limit + 1)
    if len(data) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(data))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad("body is not UTF-8") from exc
