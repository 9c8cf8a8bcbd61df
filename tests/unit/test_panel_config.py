"""mailapi.config [panel]: the bind address and the options the panel's security rests on."""

from pathlib import Path

import pytest

from mailapi.config import Config, ConfigError, load_config

MINIMAL = '[database]\npath = "mail.sqlite3"\n'


def _load(tmp_path: Path, panel: str) -> Config:
    path = tmp_path / "mail-api.toml"
    path.write_text(f"{MINIMAL}[panel]\n{panel}\n", encoding="utf-8")
    return load_config(path)


def _error(tmp_path: Path, panel: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, panel)
    return str(caught.value)


def test_panel_defaults_are_loopback_only(tmp_path: Path) -> None:
    panel = _load(tmp_path, "").panel
    assert panel.host == "127.0.0.1"
    assert panel.allow_public_bind is False
    assert panel.allowed_hosts == ["localhost", "127.0.0.1", "[::1]"]
    assert panel.loopback_api_without_auth is False
    assert panel.extra_test_ports == []
    assert (panel.tls_certificate, panel.tls_key) == (None, None)


def test_allow_public_bind_false_is_the_same_as_absent(tmp_path: Path) -> None:
    assert "allow_public_bind" in _error(tmp_path,
                                         'host = "0.0.0.0"\nallow_public_bind = false')


def test_allowed_hosts_cannot_be_empty(tmp_path: Path) -> None:
    assert "allowed_hosts must name at least one host" in _error(tmp_path, "allowed_hosts = []")


@pytest.mark.parametrize("root", ["mail-api", "/mail-api/", "/"])
def test_root_path_must_be_a_clean_prefix(tmp_path: Path, root: str) -> None:
    assert "root_path" in _error(tmp_path, f'root_path = "{root}"')


def test_root_path_accepted(tmp_path: Path) -> None:
    assert _load(tmp_path, 'root_path = "/mail-api"').panel.root_path == "/mail-api"


@pytest.mark.parametrize("port", [0, 65536, -25])
def test_extra_test_ports_must_be_real_ports(tmp_path: Path, port: int) -> None:
    assert "extra_test_ports" in _error(tmp_path, f"extra_test_ports = [2525, {port}]")


@pytest.mark.parametrize("line", ['tls_certificate = "cert.pem"', 'tls_key = "key.pem"'])
def test_tls_certificate_and_key_go_together(tmp_path: Path, line: str) -> None:
    assert "go together" in _error(tmp_path, line)
