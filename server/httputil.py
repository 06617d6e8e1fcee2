"""Small HTTP helpers shared by the signalling and sidecar handlers: bounded body reads,
bounded JSON parsing and bearer-token comparison."""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable
from typing import Any

from aiohttp import web

CLIENT_HEADER = "X-PercepNet-Client"
"""The client's address, added by the router for its workers (trusted only by them)."""
MAX_JSON_DEPTH = 16
"""Nesting of arrays/objects accepted in any JSON we parse (our messages use 1-2)."""
MAX_JSON_INT_DIGITS = 20
"""Longest integer literal accepted (2**64 has 20 digits; Python refuses past 4300 with
a ValueError, and converting long ones is quadratic)."""


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


def json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than `limit` (a linear scan, so a
    deeply nested document never reaches the recursive parser)."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def _int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise ValueError(f"integer longer than {MAX_JSON_INT_DIGITS} digits")
    return int(literal)


def _float(literal: str) -> float:
    if len(literal) > 64:
        raise ValueError("number literal too long")
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {literal}")
    return value


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str | bytes | bytearray, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads with bounded nesting and number sizes; NaN and Infinity refused.

    Every failure is a ValueError with a short reason (never RecursionError)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")  # UnicodeDecodeError is a ValueError
    if json_depth_exceeds(text, max_depth):
        raise ValueError(f"JSON nested deeper than {max_depth}")
    try:
        return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from exc
    except RecursionError as exc:  # unreachable after the depth scan; kept as a backstop
        raise ValueError("JSON nested too deeply") from exc


def bearer_matches(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries `Bearer <token>`, compared as bytes in
    constant time. Header text that is not valid UTF-8 (aiohttp hands it over with
    surrogate escapes) simply does not match."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    try:
        given_bytes = given.strip().encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(given_bytes, token.encode("utf-8"))


def client_address(request: web.Request, forwarded: bool) -> str:
    """The address a request came from; behind the router (`forwarded`), the router's
    word for it (a worker listens on a private Unix socket, where the peer is the router)."""
    if forwarded and (given := request.headers.get(CLIENT_HEADER)):
        return given
    return request.remote or "unknown"
