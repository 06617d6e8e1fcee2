"""ICE on the signalling path: configured servers, ufrags, and remote candidates that
must name a unicast address (each is an address the server sends STUN checks to)."""

from __future__ import annotations

import ipaddress
from typing import Any

from aiortc import RTCIceServer
from aiortc.sdp import candidate_from_sdp

from server.ops.config import Config
from server.sessions.addresses import is_unicast
from server.sessions.errors import BadRequest


def ice_servers(config: Config) -> list[RTCIceServer]:
    return [
        RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
        for s in config.ice_servers
    ]


def ice_ufrag(sdp: str) -> str | None:
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:"):
            return line.split(":", 1)[1].strip()
    return None


def candidate_lines(sdp: str) -> list[str]:
    return [
        line.strip()[len("a=candidate:") :]
        for line in sdp.splitlines()
        if line.strip().startswith("a=candidate:")
    ]


def check_candidate(value: str) -> Any:
    """Parse one candidate (the text after `a=candidate:`); BadRequest unless it names a
    unicast IP address (or an mDNS `.local` name) and a port in 1-65535."""
    try:
        candidate = candidate_from_sdp(value)
    except Exception as exc:  # aiortc raises IndexError/ValueError... for garbage
        raise BadRequest("bad candidate line") from exc
    if not isinstance(candidate.port, int) or not 1 <= candidate.port <= 65535:
        raise BadRequest(f"candidate port out of range: {candidate.port}")
    host = str(candidate.ip)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        labels = host.split(".")
        if len(labels) == 2 and labels[1] == "local" and 0 < len(labels[0]) <= 63:
            return candidate  # a browser's mDNS-obfuscated host candidate
        raise BadRequest("candidate address must be an IP address") from None
    if not is_unicast(address):
        raise BadRequest(f"candidate address is not unicast: {address}")
    return candidate
