"""Where the panel's test buttons may connect: no link-local, metadata, multicast or odd ports.

An admin types a host name into the SMTP / IMAP / POP3 tests; the panel then connects from
the server's network position. That is a server-side request forgery channel, so the target
is resolved first and refused when any address it resolves to is unspecified, link-local
(which covers cloud metadata at 169.254.169.254 and fe80::/10), multicast, broadcast or
reserved, or when the port is not one the protocol uses (plus the operator's
`[panel] extra_test_ports`). Loopback and private addresses stay allowed: a relay's upstream
is often on the same host or network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

USUAL_PORTS = {
    "smtp": frozenset({25, 465, 587, 2525}),
    "imap": frozenset({143, 993}),
    "imaps": frozenset({143, 993}),
    "pop3": frozenset({110, 995}),
    "pop3s": frozenset({110, 995}),
}

# Addresses cloud providers serve instance metadata on, beyond the link-local ranges.
_METADATA = (ipaddress.ip_network("fd00:ec2::254/128"), ipaddress.ip_network("100.100.100.200/32"))


class TargetRefused(ValueError):
    """The host or port is not one the test buttons may reach; the message says why."""


def refused_reason(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None  # ::1 sits inside the reserved ::/8, but a local upstream is ordinary
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if address.is_multicast:
        return "a multicast address"
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if any(address in network for network in _METADATA):
        return "a cloud metadata address"
    if address.is_reserved:
        return "a reserved address"
    return None


def check_port(protocol: str, port: int, extra_ports: Iterable[int]) -> None:
    allowed = USUAL_PORTS[protocol] | frozenset(extra_ports)
    if port not in allowed:
        listed = ", ".join(str(p) for p in sorted(allowed))
        raise TargetRefused(f"port {port} is not a usual {protocol.upper()} port ({listed}); "
                            "an operator can allow more in [panel] extra_test_ports")


async def resolve_checked(protocol: str, host: str, port: int, extra_ports: Iterable[int],
                          *, timeout: float = 5.0) -> list[str]:
    """The host's addresses, each one allowed, or TargetRefused."""
    host = host.strip()
    if not host:
        raise TargetRefused("no host is configured")
    check_port(protocol, port, extra_ports)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
    except (OSError, TimeoutError) as exc:
        raise TargetRefused(f"cannot resolve {host!r}: {exc}") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    if not addresses:
        raise TargetRefused(f"{host!r} resolves to no address")
    for text in addresses:
        reason = refused_reason(ipaddress.ip_address(text.split("%", 1)[0]))
        if reason is not None:
            raise TargetRefused(f"{host!r} resolves to {text}, {reason}; refused")
    return addresses
