"""Addresses: which can be sent to (unicast), and the unit per-client limits count by."""

from __future__ import annotations

import ipaddress


def is_unicast(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether one host can be sent to: not multicast, broadcast, unspecified or
    reserved (IPv4-mapped IPv6 judged as the IPv4 address it maps)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:  # ::1 lies inside IPv6's reserved ::/8
        return True
    return not (address.is_multicast or address.is_unspecified or address.is_reserved)


def client_key(address: str) -> str:
    """The unit per-client limits count by: an IPv4 address, or an IPv6 /64 (one host
    is handed a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
