"""The test buttons' target guard: refused address classes and ports, resolved for real."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from panel.guard import TargetRefused, check_port, refused_reason, resolve_checked


@pytest.mark.parametrize("address", [
    "169.254.169.254", "fe80::1", "0.0.0.0", "::", "224.0.0.1", "ff02::1",
    "255.255.255.255", "fd00:ec2::254", "100.100.100.200", "240.0.0.1",
    "::ffff:169.254.169.254",
])
def test_dangerous_addresses_are_refused(address: str) -> None:
    assert refused_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.0.0.5", "192.168.1.20",
                                     "203.0.113.7", "2001:db8::25"])
def test_ordinary_addresses_pass(address: str) -> None:
    assert refused_reason(ipaddress.ip_address(address)) is None


def test_only_usual_ports_unless_the_operator_adds_more() -> None:
    check_port("smtp", 587, [])
    check_port("imaps", 993, [])
    with pytest.raises(TargetRefused, match="not a usual SMTP port"):
        check_port("smtp", 6379, [])
    check_port("smtp", 6379, [6379])
    with pytest.raises(TargetRefused, match="POP3"):
        check_port("pop3", 25, [])


def test_resolution_checks_every_address() -> None:
    assert asyncio.run(resolve_checked("smtp", "localhost", 25, [])) != []
    with pytest.raises(TargetRefused, match="link-local"):
        asyncio.run(resolve_checked("smtp", "169.254.169.254", 25, []))
    with pytest.raises(TargetRefused, match="no host"):
        asyncio.run(resolve_checked("smtp", "  ", 25, []))
    with pytest.raises(TargetRefused, match="cannot resolve"):
        asyncio.run(resolve_checked("smtp", "no-such-host.invalid", 25, []))
