"""A migrated, configured suite in a temporary folder, with an SMTP server to deliver to."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.processes import Suite, cli, write_config
from tests.support.smtpd import SmtpServer


@pytest.fixture
def suite(tmp_path: Path, smtp_server: SmtpServer) -> Iterator[Suite]:
    port = free_port()
    config = write_config(tmp_path, receiver_port=port)
    assert cli(config, "db", "upgrade").returncode == 0
    secret = secrets.token_hex(16)
    for key, value in (("webhook_secret", secret), ("allowed_sender_domain", "example.com"),
                       ("smtp_host", "127.0.0.1"), ("smtp_port", str(smtp_server.port)),
                       ("smtp_security", "plain"), ("smtp_timeout", "5"),
                       ("retry_base_seconds", "1")):
        result = cli(config, "settings", "set", key, value)
        assert result.returncode == 0, result.stderr
    running = Suite(config, port, secret)
    yield running
    running.stop_all()
