"""mailapi.clientaddress: the peer, or X-Forwarded-For only behind trusted proxies."""

import ipaddress

import pytest

from mailapi.clientaddress import allowed, client_address, parse_address

PROXIES = ("10.0.0.0/8", "2001:db8:ffff::/48")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.9", "203.0.113.9"),
        (" 203.0.113.9 ", "203.0.113.9"),
        ("203.0.113.9:5555", "203.0.113.9"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("[::ffff:198.51.100.7]:80", "198.51.100.7"),
    ],
)
def test_parse_address(text: str, expected: str) -> None:
    assert parse_address(text) == _ip(expected)


@pytest.mark.parametrize("text", [None, "", " ", "unknown", "300.1.1.1", "1.2.3.4:5:6x",
                                  "example.com", "[::1"])
def test_parse_address_garbage(text: str | None) -> None:
    assert parse_address(text) is None


def test_ipv4_mapped_peer_normalised() -> None:
    result = client_address("::ffff:203.0.113.9", [], PROXIES)
    assert isinstance(result, ipaddress.IPv4Address)
    assert result == _ip("203.0.113.9")


def test_untrusted_peer_ignores_forwarded_for() -> None:
    assert client_address("203.0.113.9", ["198.51.100.7"], PROXIES) == _ip("203.0.113.9")
    assert client_address("203.0.113.9", ["garbage"], PROXIES) == _ip("203.0.113.9")


def test_no_trusted_proxies_ignores_forwarded_for() -> None:
    assert client_address("10.0.0.1", ["198.51.100.7"], ()) == _ip("10.0.0.1")


def test_trusted_proxy_without_header_is_the_client() -> None:
    assert client_address("10.0.0.1", [], PROXIES) == _ip("10.0.0.1")


def test_trusted_proxy_rightmost_untrusted_hop() -> None:
    # The client may forge the leftmost entries; only the hop our proxy saw counts.
    header = "1.1.1.1, 198.51.100.7"
    assert client_address("10.0.0.1", [header], PROXIES) == _ip("198.51.100.7")


def test_chain_of_trusted_proxies() -> None:
    header = "6.6.6.6, 198.51.100.7, 10.1.2.3, 2001:db8:ffff::5"
    assert client_address("10.0.0.1", [header], PROXIES) == _ip("198.51.100.7")


def test_several_header_lines_are_one_chain() -> None:
    lines = ["6.6.6.6, 198.51.100.7", "10.1.2.3"]
    assert client_address("10.0.0.1", lines, PROXIES) == _ip("198.51.100.7")


def test_hop_with_port_and_mapped_address() -> None:
    assert client_address("10.0.0.1", ["198.51.100.7:4444"], PROXIES) == _ip("198.51.100.7")
    assert client_address("::ffff:10.0.0.1", ["::ffff:198.51.100.7"], PROXIES) == _ip(
        "198.51.100.7")


def test_all_hops_trusted_gives_leftmost() -> None:
    assert client_address("10.0.0.1", ["10.9.9.9, 10.0.0.5"], PROXIES) == _ip("10.9.9.9")


@pytest.mark.parametrize("header", ["garbage", "198.51.100.7, nonsense", "1.2.3.4, , 10.0.0.2",
                                    "", "198.51.100.7,"])
def test_malformed_chain_from_trusted_proxy_fails_closed(header: str) -> None:
    assert client_address("10.0.0.1", [header], PROXIES) is None


def test_malformed_hop_left_of_client_is_not_read() -> None:
    # Reading stops at the first untrusted hop, so junk further left does not matter.
    assert client_address("10.0.0.1", ["junk, 198.51.100.7"], PROXIES) == _ip("198.51.100.7")


def test_unknown_peer() -> None:
    assert client_address(None, ["198.51.100.7"], PROXIES) is None


def test_allowed_with_empty_allowlist() -> None:
    assert allowed(_ip("203.0.113.9"), ())
    assert allowed(None, ())


@pytest.mark.parametrize(
    ("address", "expected"),
    [("192.0.2.10", True), ("192.0.2.255", True), ("192.0.3.1", False), ("203.0.113.9", True),
     ("203.0.113.10", False), ("2001:db8:1::abcd", True), ("2001:db8:2::1", False)],
)
def test_allowed_with_cidr_allowlist(address: str, expected: bool) -> None:
    allowlist = ("192.0.2.0/24", "203.0.113.9", "2001:db8:1::/48")
    assert allowed(_ip(address), allowlist) is expected


def test_allowed_unknown_address_refused_when_list_set() -> None:
    assert not allowed(None, ("0.0.0.0/0", "::/0"))


def test_allowlist_non_strict_network() -> None:
    assert allowed(_ip("10.1.2.3"), ("10.0.0.1/8",))
