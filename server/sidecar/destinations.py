"""Where the sidecar may send: allow-listed unicast destinations only (not an amplifier)."""

from __future__ import annotations

import ipaddress
from typing import Any

from server.sessions.addresses import is_unicast
from server.sessions.errors import BadRequest


class DestinationRefused(BadRequest):
    """A destination off the allowlist, or not unicast (403)."""

    status = 403


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _plain(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_destination(host: str, networks: tuple[Network, ...]) -> None:
    """Refuse (DestinationRefused) a destination that is not a unicast address inside one
    of `networks`, or that is the broadcast address of one of them."""
    address = _plain(ipaddress.ip_address(host))
    if not is_unicast(address):
        raise DestinationRefused(f"destination {address} is not a unicast address")
    for network in networks:
        if address.version != network.version or address not in network:
            continue
        if (
            address.version == 4
            and network.prefixlen <= 30
            and address == network.broadcast_address
        ):
            raise DestinationRefused(f"destination {address} is the broadcast address of {network}")
        return
    raise DestinationRefused(f"destination {address} is not on the sidecar allowlist (--rtp-allow)")


def same_host(a: str, b: str) -> bool:
    try:
        return bool(_plain(ipaddress.ip_address(a)) == _plain(ipaddress.ip_address(b)))
    except ValueError:
        return False
