"""Public session ids: "<worker index>-<hex token>", made and read here only.

The id names a session in logs, /streams and metrics labels; it grants nothing (the
capability is the session's key, id plus secret: server/sessions/manager.py). The
router sends a request for /whip/{id...} to the worker the prefix names.
"""

from __future__ import annotations

import secrets

ID_SEPARATOR = "-"
"""Public session ids are "<worker index>-<hex token>": the router routes by the prefix."""
ID_TOKEN_BYTES = 4


def new_session_id(worker_index: int) -> str:
    """A fresh public id on worker `worker_index` (not secret: grants nothing)."""
    return f"{worker_index}{ID_SEPARATOR}{secrets.token_hex(ID_TOKEN_BYTES)}"


def worker_of(session_id: str) -> int | None:
    """The worker index a public session id names (None: not an id of ours)."""
    prefix, sep, _ = session_id.partition(ID_SEPARATOR)
    return int(prefix) if sep and prefix.isdigit() else None
