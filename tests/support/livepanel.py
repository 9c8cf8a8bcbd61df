"""A migrated suite with one panel admin, made by the real CLI, for tests of mailapi-panel."""

from __future__ import annotations

from pathlib import Path

from tests.support.ports import free_port
from tests.support.processes import Suite, cli, write_config

ADMIN = "admin"
ADMIN_PASSWORD = "correct horse battery staple"


def _run(config: Path, *args: str) -> None:
    result = cli(config, *args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)


def panel_suite(directory: Path, *, panel_extra: str = "",
                settings: dict[str, str] | None = None) -> Suite:
    """Config with a loopback panel on a free port, schema, settings, and the admin."""
    receiver_port, panel_port = free_port(), free_port()
    config = write_config(directory, receiver_port=receiver_port, panel_port=panel_port,
                          panel_extra=panel_extra)
    _run(config, "db", "upgrade")
    for key, value in (settings or {}).items():
        _run(config, "settings", "set", key, value)
    password_file = directory / "admin-password"
    password_file.touch(mode=0o600)
    password_file.write_text(ADMIN_PASSWORD + "\n", encoding="utf-8")
    _run(config, "admin", "create", ADMIN, "--password-file", str(password_file))
    return Suite(config, receiver_port, secret="", panel_port=panel_port)
