"""Who is calling: the peer address, or X-Forwarded-For when the peer is a trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=64)
def parse_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def parse_address(text: str | None) -> Address | None:
    if not text:
        return None
    candidate = text.strip()
    if candidate.startswith("[") and "]" in candidate:  # "[::1]:443"
        candidate = candidate[1:candidate.index("]")]
    elif candidate.count(":") == 1:  # "203.0.113.9:5555"
        candidate = candidate.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(address: Address | None, networks: Iterable[Network]) -> bool:
    return address is not None and any(address in network for network in networks)


def client_address(peer: str | None, forwarded_for: Sequence[str],
                   trusted_proxies: tuple[str, ...]) -> Address | None:
    """The address to judge the request by, or None when it cannot be known.

    X-Forwarded-For is read right to left only while each hop is a trusted proxy; the first
    untrusted hop is the client. A peer that is not a trusted proxy is the client, whatever
    headers it sent.
    """
    peer_address = parse_address(peer)
    proxies = parse_networks(trusted_proxies)
    if not in_networks(peer_address, proxies) or not forwarded_for:
        return peer_address
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            return None  # a malformed chain from a trusted proxy: unknown, fail closed
        if not in_networks(address, proxies):
            return address
    return parse_address(hops[0]) if hops else peer_address


def allowed(address: Address | None, allowlist: tuple[str, ...]) -> bool:
    """Empty allowlist: everyone. Otherwise the address must be in one of the networks."""
    if not allowlist:
        return True
    return in_networks(address, parse_networks(allowlist))
