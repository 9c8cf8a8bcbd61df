"""mailapi.settings.definitions: typed parsing and validation of every runtime option."""

from dataclasses import replace
from typing import Any

import pytest

from mailapi.headersafety import unsafe_character
from mailapi.settings.definitions import (
    SECRET_KEYS,
    SETTING_KEYS,
    Settings,
    SettingsError,
    check_consistency,
    default_value,
    parse_value,
    validate_value,
)


def _refused(key: str, value: Any, *, parse: bool = False) -> str:
    with pytest.raises(SettingsError) as caught:
        if parse:
            parse_value(key, value)
        else:
            validate_value(key, value)
    message = str(caught.value)
    assert message.startswith(f"{key}: ")
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), (" YES ", True), ("on", True), ("1", True),
     ("false", False), ("No", False), ("OFF", False), ("0", False)],
)
def test_parse_bool(text: str, expected: bool) -> None:
    assert parse_value("allow_any_local_part", text) is expected


@pytest.mark.parametrize("text", ["", "maybe", "2", "truthy", "y"])
def test_parse_bool_invalid(text: str) -> None:
    assert "true or false" in _refused("smtp_ignore_certificates", text, parse=True)


def test_parse_int() -> None:
    assert parse_value("smtp_port", " 465 ") == 465
    assert parse_value("rate_limit_per_minute", "0") == 0


@pytest.mark.parametrize("text", ["", "abc", "5.5", "1e3", "0x19"])
def test_parse_int_invalid(text: str) -> None:
    assert "whole number" in _refused("smtp_timeout", text, parse=True)


def test_parse_float() -> None:
    assert parse_value("webhook_secret_previous_valid_until", "1771652110.5") == 1771652110.5
    assert _refused("webhook_secret_previous_valid_until", "soon", parse=True)
    assert _refused("webhook_secret_previous_valid_until", "nan", parse=True)
    assert _refused("webhook_secret_previous_valid_until", "inf", parse=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10.0.0.0/8, 192.0.2.1  ::1", ["10.0.0.0/8", "192.0.2.1", "::1"]),
     ('["10.0.0.0/8", " 192.0.2.1 ", ""]', ["10.0.0.0/8", "192.0.2.1"]),
     ("", []), ("  ", []), ("[]", [])],
)
def test_parse_list(text: str, expected: list[str]) -> None:
    assert parse_value("ip_allowlist", text) == expected


@pytest.mark.parametrize(("text", "fragment"), [("[10.0.0.0/8", "not a valid JSON list"),
                                                ('["10.0.0.0/8", 5]', "must be a string"),
                                                ("10.0.0.0/8, nonsense", "'nonsense'")])
def test_parse_list_invalid(text: str, fragment: str) -> None:
    assert fragment in _refused("trusted_proxies", text, parse=True)


def test_parse_str_is_taken_verbatim() -> None:
    assert parse_value("smtp_password", "  p@ss word ") == "  p@ss word "


def test_unknown_key() -> None:
    with pytest.raises(SettingsError, match="unknown setting 'no_such_key'"):
        parse_value("no_such_key", "1")
    with pytest.raises(SettingsError, match="unknown setting 'no_such_key'"):
        validate_value("no_such_key", 1)
    assert "revision" not in SETTING_KEYS


@pytest.mark.parametrize(("key", "value"), [("smtp_port", "587"), ("smtp_port", True),
                                            ("smtp_port", 587.0), ("allow_any_local_part", 1),
                                            ("smtp_host", 5), ("ip_allowlist", "10.0.0.0/8"),
                                            ("webhook_secret_previous_valid_until", False)])
def test_validate_wrong_type(key: str, value: object) -> None:
    assert "expected" in _refused(key, value)


@pytest.mark.parametrize("mode", ["plain", "starttls", "ssl"])
def test_smtp_security_enum(mode: str) -> None:
    assert validate_value("smtp_security", mode) == mode


@pytest.mark.parametrize("mode", ["tls", "STARTTLS", "", "none"])
def test_smtp_security_invalid(mode: str) -> None:
    assert "must be one of plain, starttls, ssl" in _refused("smtp_security", mode)


@pytest.mark.parametrize(("port", "ok"), [(0, False), (1, True), (25, True), (65535, True),
                                          (65536, False), (-25, False)])
def test_smtp_port_range(port: int, ok: bool) -> None:
    if ok:
        assert validate_value("smtp_port", port) == port
    else:
        assert "between 1 and 65535" in _refused("smtp_port", port)


@pytest.mark.parametrize("key", ["ip_allowlist", "trusted_proxies"])
def test_cidr_lists(key: str) -> None:
    value = ["10.0.0.0/8", " 192.0.2.7 ", "2001:db8::/32", "10.0.0.1/8"]
    assert validate_value(key, value) == ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32",
                                          "10.0.0.1/8"]
    for bad in ("10.0.0.0/33", "example.com", "300.0.0.1", "10.0.0.0/8,192.0.2.1"):
        assert repr(bad) in _refused(key, [bad])


@pytest.mark.parametrize(("text", "expected"), [(" Example.COM. ", "example.com"),
                                                ("mail.xn--bcher-kva.de", "mail.xn--bcher-kva.de"),
                                                ("", "")])
def test_domain_lower_cased(text: str, expected: str) -> None:
    assert validate_value("allowed_sender_domain", text) == expected
    assert parse_value("allowed_sender_domain", text) == expected


@pytest.mark.parametrize("domain", ["localhost", "bücher.de", "-bad.example", "a_b.example",
                                    "exa mple.com", "x@example.com", "a..b.com"])
def test_domain_invalid(domain: str) -> None:
    assert "domain name" in _refused("allowed_sender_domain", domain)


@pytest.mark.parametrize("local", ["no-reply", "a.b", "o'brien", "x+tag", "x" * 64])
def test_local_part_valid(local: str) -> None:
    assert validate_value("default_from_local_part", local) == local
    assert validate_value("sender_allowlist", [local]) == [local]


@pytest.mark.parametrize("local", ["", "no reply", "a..b", ".a", "a.", "a@b", "ü", "x" * 65,
                                   '"quoted"', "a\nb"])
def test_local_part_invalid(local: str) -> None:
    assert "local part" in _refused("default_from_local_part", local)
    assert "local part" in _refused("sender_allowlist", ["ok", local or "a b"])


@pytest.mark.parametrize("url", ["", "https://example.com", "http://localhost:8080/app/",
                                 "HTTPS://Example.com/x"])
def test_public_web_url_valid(url: str) -> None:
    assert validate_value("public_web_url", url) == url


@pytest.mark.parametrize("url", ["ftp://example.com", "javascript:alert(1)", "example.com",
                                 "//example.com", "https://", "https://exa mple.com",
                                 'https://example.com/"x', "https://example.com/\x00"])
def test_public_web_url_invalid(url: str) -> None:
    assert _refused("public_web_url", url)


@pytest.mark.parametrize("name", ["Evil\r\nBcc: x@y", "tab\there", "nul\x00", "del\x7f",
                                  "line\u2028sep", "x" * 129])
def test_display_name_invalid(name: str) -> None:
    assert _refused("sender_display_name", name)


@pytest.mark.parametrize("name", ["Acme\x85Bcc", "Acme\x9b", "=?utf-8?q?Acme=0D=0ABcc:x@y?="])
def test_display_name_refuses_what_composition_refuses(name: str) -> None:
    assert unsafe_character(name) is not None
    with pytest.raises(SettingsError):
        validate_value("sender_display_name", name)


def test_link_path() -> None:
    assert validate_value("link_path_password_reset", "/reset") == "/reset"
    assert _refused("link_path_password_reset", "reset")
    assert _refused("link_path_password_reset", "/with space")


def test_check_consistency() -> None:
    check_consistency(Settings())
    check_consistency(Settings(retry_base_seconds=60, retry_max_seconds=60))
    with pytest.raises(SettingsError, match="retry_max_seconds"):
        check_consistency(replace(Settings(), retry_base_seconds=600, retry_max_seconds=599))


def test_defaults_are_valid() -> None:
    for key in SETTING_KEYS:
        assert validate_value(key, default_value(key)) == default_value(key)
    assert {"webhook_secret", "webhook_secret_previous", "smtp_password"} <= SECRET_KEYS
    assert "smtp_username" not in SECRET_KEYS
