"""The sidecar's settings (PERCEPNET_RTP_* environment) and a session request's body."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from server.httputil import parse_json
from server.sessions.controls import parse_control
from server.sessions.errors import BadRequest
from server.sessions.manager import Mode

DEFAULT_PAYLOAD_TYPE = 111
"""The dynamic payload type Opus usually gets (what a request that names none uses)."""


class RtpSetupError(BadRequest):
    """A bad session request (400)."""


@dataclass(frozen=True)
class RtpSettings:
    """Sidecar settings, from PERCEPNET_RTP_* variables (read once, in install())."""

    bind_host: str = "0.0.0.0"
    """Local address of the UDP sockets the bridge sends to."""
    port_min: int = 0
    port_max: int = 0
    """Local UDP port range (inclusive; open it in firewalls); 0-0: any free port."""
    advertise_host: str | None = None
    """Address returned to the bridge; default: bind_host unless it is a wildcard."""
    reorder_packets: int = 3
    """Packets held behind a missing one before it is declared lost."""
    reorder_wait_s: float = 0.04
    """...or time waited for it."""
    bitrate: int = 32_000
    """Opus bit rate of the cleaned stream (bits/s; mono voice)."""

    def __post_init__(self) -> None:
        if (self.port_min == 0) != (self.port_max == 0) or self.port_min > self.port_max:
            raise ValueError(f"bad RTP port range {self.port_min}-{self.port_max}")
        if not 0 <= self.port_min <= 65535 or not 0 <= self.port_max <= 65535:
            raise ValueError("RTP ports out of range")

    @classmethod
    def from_env(cls, env: Mapping[str, str], default_bind: str) -> RtpSettings:
        kw: dict[str, Any] = {"bind_host": env.get("PERCEPNET_RTP_BIND") or default_bind}
        ports = env.get("PERCEPNET_RTP_PORTS", "").strip()
        if ports:
            low, sep, high = ports.partition("-")
            try:
                kw["port_min"], kw["port_max"] = int(low), int(high if sep else low)
            except ValueError as exc:
                raise ValueError(f"PERCEPNET_RTP_PORTS must be MIN-MAX, got {ports!r}") from exc
        if advertise := env.get("PERCEPNET_RTP_ADVERTISE_HOST"):
            kw["advertise_host"] = advertise
        if bitrate := env.get("PERCEPNET_RTP_BITRATE"):
            kw["bitrate"] = int(bitrate)
        return cls(**kw)

    @property
    def public_host(self) -> str | None:
        if self.advertise_host:
            return self.advertise_host
        return None if self.bind_host in ("0.0.0.0", "::", "") else self.bind_host


@dataclass(frozen=True)
class RtpRequest:
    """A validated POST /v1/rtp-sessions body."""

    host: str
    port: int
    source_host: str | None = None
    """The host the participant's RTP comes from; None: `host` (symmetric RTP)."""
    payload_type: int | None = None
    """Input packets must carry it (others are dropped); output uses it. None: the input's."""
    ssrc: int | None = None
    """SSRC of the cleaned stream; None: random."""
    mode: Mode = "enhance"
    controls: dict[str, Any] = field(default_factory=dict)


def parse_request(text: str) -> RtpRequest:
    try:
        body = parse_json(text)
    except ValueError as exc:
        raise RtpSetupError(f"body: {exc}") from exc
    if not isinstance(body, dict):
        raise RtpSetupError("expected a JSON object")
    unknown = set(body) - {
        "host",
        "port",
        "source_host",
        "payload_type",
        "ssrc",
        "mode",
        "enabled",
        "attenuation_limit_db",
    }
    if unknown:
        raise RtpSetupError(f"unknown fields: {sorted(unknown)}")
    host = body.get("host")
    try:
        ipaddress.ip_address(host if isinstance(host, str) else "")
    except ValueError as exc:
        raise RtpSetupError("host must be an IPv4 or IPv6 address") from exc
    assert isinstance(host, str)
    source = body.get("source_host")
    if source is not None:
        try:
            ipaddress.ip_address(source if isinstance(source, str) else "")
        except ValueError as exc:
            raise RtpSetupError("source_host must be an IPv4 or IPv6 address") from exc

    def integer(name: str, low: int, high: int, required: bool = False) -> int | None:
        value = body.get(name)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise RtpSetupError(f"{name} must be an integer in [{low}, {high}]")
        return value

    port = integer("port", 1, 65535, required=True)
    assert port is not None
    mode = body.get("mode", "enhance")
    if mode not in ("enhance", "passthrough"):
        raise RtpSetupError(f"mode must be enhance or passthrough, not {mode!r}")
    controls = {k: body[k] for k in ("enabled", "attenuation_limit_db") if k in body}
    if controls:
        try:
            controls = parse_control(controls)
        except ValueError as exc:
            raise RtpSetupError(str(exc)) from exc
    return RtpRequest(
        host=host,
        port=port,
        source_host=source,
        payload_type=integer("payload_type", 0, 127),
        ssrc=integer("ssrc", 0, 2**32 - 1),
        mode=mode,
        controls=controls,
    )
