"""A migrated, configured suite of real processes on 127.0.0.1, set up in-process for speed."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.database import configure, migrated_engine
from tests.support.ports import free_port
from tests.support.processes import Suite, write_config
from tests.support.smtpd import SmtpServer


@pytest.fixture
def suite(tmp_path: Path, smtp_server: SmtpServer) -> Iterator[Suite]:
    """Like tests/e2e's `suite`, migrated and configured without a CLI process per setting.

    Stops every process it started (by PID) when the test ends, whatever happened.
    """
    port = free_port()
    config = write_config(tmp_path, receiver_port=port)
    engine = migrated_engine(tmp_path / "mail-api.sqlite3")
    secret = secrets.token_hex(16)
    configure(engine, webhook_secret=secret, allowed_sender_domain="example.com",
              smtp_host="127.0.0.1", smtp_port=smtp_server.port, smtp_security="plain",
              smtp_timeout=5, retry_base_seconds=1)
    engine.dispose()
    running = Suite(config, port, secret)
    yield running
    running.stop_all()
