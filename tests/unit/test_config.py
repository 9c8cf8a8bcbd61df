"""mailapi.config: the bootstrap TOML file, validated at start."""

from pathlib import Path

import pytest

from mailapi.config import (
    DELIVERY_LOG_MAX_BYTES,
    PANEL_PORT,
    RECEIVER_PORT,
    Config,
    ConfigError,
    fault_injector,
    load_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "mail-api.toml.example"


def _load(tmp_path: Path, text: str, name: str = "mail-api.toml") -> Config:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    return str(caught.value)


MINIMAL = '[database]\npath = "mail.sqlite3"\n'


def test_example_file_loads() -> None:
    if not EXAMPLE.is_file():
        pytest.skip(f"{EXAMPLE} does not exist")
    config = load_config(EXAMPLE)
    assert config.database.path.is_absolute()


def test_minimal_config_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path, MINIMAL)
    assert config.path == (tmp_path / "mail-api.toml").resolve()
    assert config.database.path == (tmp_path / "mail.sqlite3").resolve()
    assert config.database.busy_timeout_ms == 5000
    assert (config.receiver.host, config.receiver.port) == ("0.0.0.0", RECEIVER_PORT)
    assert (config.panel.host, config.panel.port) == ("127.0.0.1", PANEL_PORT)
    assert config.panel.allow_public_bind is False
    assert config.worker.delivery_backend == "smtp"
    assert config.worker.outbox_dir is None
    assert (config.logging.level, config.logging.format) == ("info", "auto")
    assert config.logging.delivery_log_max_bytes == DELIVERY_LOG_MAX_BYTES


def test_relative_paths_resolve_against_file_folder(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    text = ('[database]\npath = "data/mail.sqlite3"\n'
            '[worker]\ndelivery_backend = "file"\noutbox_dir = "../outbox"\n'
            '[logging]\ndelivery_log = "/var/log/mail/delivery.log"\n')
    config = _load(folder, text)
    assert config.database.path == (folder / "data" / "mail.sqlite3").resolve()
    assert config.worker.outbox_dir == (tmp_path / "outbox").resolve()
    assert config.logging.delivery_log == Path("/var/log/mail/delivery.log")


def test_full_config(tmp_path: Path) -> None:
    text = MINIMAL + (
        '[receiver]\nhost = "127.0.0.1"\nport = 8025\nmax_body_bytes = 2048\n'
        '[panel]\nhost = "0.0.0.0"\nport = 0\nallow_public_bind = true\n'
        '[worker]\nsessions = 2\nbatch_size = 1\nlease_seconds = 30\npoll_interval_ms = 5\n'
        '[logging]\nlevel = "debug"\nformat = "json"\n')
    config = _load(tmp_path, text)
    assert config.receiver.port == 8025
    assert config.receiver.max_body_bytes == 2048
    assert config.panel.host == "0.0.0.0"
    assert config.worker.sessions == 2
    assert config.logging.format == "json"


@pytest.mark.parametrize(("text", "name"), [(MINIMAL + "[mailer]\nhost = 'x'\n", "mailer"),
                                            ("[datbase]\npath = 'x'\n", "datbase")])
def test_unknown_section_named(tmp_path: Path, text: str, name: str) -> None:
    message = _error(tmp_path, text)
    assert "unknown section" in message
    assert name in message


@pytest.mark.parametrize(("section", "key"), [("database", "pth"), ("receiver", "hots"),
                                              ("worker", "session"), ("panel", "public")])
def test_unknown_key_named(tmp_path: Path, section: str, key: str) -> None:
    if section == "database":
        text = f'[database]\npath = "x"\n{key} = 1\n'
    else:
        text = f"{MINIMAL}[{section}]\n{key} = 1\n"
    message = _error(tmp_path, text)
    assert f"unknown key(s) in [{section}]" in message
    assert key in message


@pytest.mark.parametrize(
    ("snippet", "where", "what"),
    [
        ('[receiver]\nport = "2555"', "[receiver] port", "integer"),
        ("[receiver]\nport = true", "[receiver] port", "integer"),
        ("[receiver]\nport = 25.5", "[receiver] port", "integer"),
        ("[panel]\nallow_public_bind = 1", "[panel] allow_public_bind", "true or false"),
        ('[panel]\nallow_public_bind = "yes"', "[panel] allow_public_bind", "true or false"),
        ("[logging]\nlevel = 3", "[logging] level", "string"),
        ("[worker]\noutbox_dir = 5", "[worker] outbox_dir", "path"),
        ('[worker]\noutbox_dir = ""', "[worker] outbox_dir", "path"),
    ],
)
def test_wrong_types(tmp_path: Path, snippet: str, where: str, what: str) -> None:
    message = _error(tmp_path, MINIMAL + snippet + "\n")
    assert where in message
    assert what in message


def test_section_must_be_table(tmp_path: Path) -> None:
    assert "[receiver] must be a table" in _error(tmp_path, 'receiver = "x"\n' + MINIMAL)


@pytest.mark.parametrize("text", ["", "[database]\n", "[database]\nbusy_timeout_ms = 1\n"])
def test_database_path_required(tmp_path: Path, text: str) -> None:
    assert "[database] path is required" in _error(tmp_path, text)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "panel.example.com"])
def test_public_panel_needs_allow_public_bind(tmp_path: Path, host: str) -> None:
    message = _error(tmp_path, f'{MINIMAL}[panel]\nhost = "{host}"\n')
    assert "allow_public_bind" in message
    config = _load(tmp_path, f'{MINIMAL}[panel]\nhost = "{host}"\nallow_public_bind = true\n')
    assert config.panel.host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_panel_allowed(tmp_path: Path, host: str) -> None:
    assert _load(tmp_path, f'{MINIMAL}[panel]\nhost = "{host}"\n').panel.host == host


def test_file_backend_needs_outbox_dir(tmp_path: Path) -> None:
    message = _error(tmp_path, f'{MINIMAL}[worker]\ndelivery_backend = "file"\n')
    assert "outbox_dir is required" in message


@pytest.mark.parametrize(
    ("snippet", "fragment"),
    [
        ('[worker]\ndelivery_backend = "sendmail"', "delivery_backend must be one of"),
        ("[worker]\nsessions = 0", "sessions must be at least 1"),
        ("[receiver]\nport = 65536", "port must be between"),
        ("[panel]\nport = -1", "port must be between"),
        ('[logging]\nlevel = "verbose"', "level must be one of"),
        ('[logging]\nformat = "xml"', "format must be one of"),
        ("[logging]\ndelivery_log_max_bytes = 1000", "delivery_log_max_bytes"),
        ("[receiver]\nmax_body_bytes = 1023", "max_body_bytes must be at least 1024"),
        ("[database]\nbusy_timeout_ms = -1", "busy_timeout_ms must not be negative"),
    ],
)
def test_invalid_values(tmp_path: Path, snippet: str, fragment: str) -> None:
    text = MINIMAL + snippet + "\n"
    if snippet.startswith("[database]"):
        text = '[database]\npath = "x"\n' + snippet.split("\n", 1)[1] + "\n"
    assert fragment in _error(tmp_path, text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_invalid_toml(tmp_path: Path) -> None:
    assert "invalid TOML" in _error(tmp_path, "[database\npath = \n")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a directory
    (tmp_path / "latin1.toml").write_bytes(b'[database]\npath = "\xe9"\n')
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "latin1.toml")


def test_the_test_only_fault_point_must_be_a_known_one(tmp_path: Path) -> None:
    path = tmp_path / "mail-api.toml"
    path.write_text('[database]\npath = "db"\n[testing]\ncrash_at = "receiver.nowhere"\n',
                    encoding="utf-8")
    with pytest.raises(ConfigError, match="crash_at must be one of"):
        load_config(path)
    path.write_text('[database]\npath = "db"\n[testing]\ncrash_at = "worker.after_accept"\n'
                    'crash_after = 3\n', encoding="utf-8")
    injector = fault_injector(load_config(path))
    assert injector is not None and (injector.point, injector.remaining) == (
        "worker.after_accept", 3)
    path.write_text('[database]\npath = "db"\n', encoding="utf-8")
    assert fault_injector(load_config(path)) is None
