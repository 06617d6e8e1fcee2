"""Control messages (data channel or HTTP) -> changes of a stream's StreamSettings."""

from __future__ import annotations

from typing import Any

from percepnet.streaming import StreamSettings
from server.httputil import parse_json

MAX_CONTROL_BYTES = 4096
"""Longest control message taken (they are a few dozen bytes)."""


def parse_control(message: object) -> dict[str, Any]:
    """Validate a control message; returns only the recognised, well-typed settings.

    Accepts a JSON object (or its text) with optional `enabled` (bool) and
    `attenuation_limit_db` (number in [0, MAX_ATTENUATION_DB] dB, or null for no
    limit): the fields of StreamSettings, checked by it. Raises
    ValueError for anything else, so garbage can be counted and ignored.
    """
    if isinstance(message, (bytes, bytearray, str)):
        if len(message) > MAX_CONTROL_BYTES:
            raise ValueError("control message too long")
        message = parse_json(message)  # ValueError for bad UTF-8, depth, numbers
    if not isinstance(message, dict):
        raise ValueError("control message must be a JSON object")
    if message.get("type", "control") != "control":
        raise ValueError(f"unknown message type {message.get('type')!r}")
    out = {k: message[k] for k in ("enabled", "attenuation_limit_db") if k in message}
    StreamSettings(**out)  # SettingsError (a ValueError) for a bad value or type
    if not out:
        raise ValueError("control message sets nothing")
    return out
