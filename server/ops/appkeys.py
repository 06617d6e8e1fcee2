"""The keys of a worker app's shared state (aiohttp AppKey): set by server/app.py, read
by the handlers. SessionManager is named for the type checker only, so this module sits
below everything that reads a key (no import circle through the sessions)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from server.ops.config import Config
from server.ops.prometheus import Metrics

if TYPE_CHECKING:
    from server.sessions.manager import SessionManager

CONFIG_KEY = web.AppKey("config", Config)
METRICS_KEY = web.AppKey("metrics", Metrics)
MANAGER_KEY: web.AppKey[SessionManager] = web.AppKey("manager")
