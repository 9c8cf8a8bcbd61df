"""A throw-away installation: a real bootstrap file, a migrated database, runtime settings."""

from __future__ import annotations

import datetime as dt
import os
import platform
import secrets
import sqlite3
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from bench.procs import HOST, VENV_BIN, Process, free_port, run_checked
from mailapi.db import open_engine, read_transaction
from mailapi.models import outbound_queue
from mailapi.settings import save_settings

SENDER_DOMAIN = "example.com"


@dataclass
class Installation:
    """One temp dir with mail-api.toml, the database and the processes' logs."""

    root: Path
    config_path: Path
    database: Path
    receiver_port: int
    secret: str
    sessions: int

    def engine(self, pool_size: int = 2) -> Engine:
        return open_engine(self.database, durability="NORMAL", busy_timeout_ms=5000,
                           pool_size=pool_size)

    def configure(self, **settings: Any) -> None:
        """Store runtime settings the way the CLI does (validated, audited, one revision)."""
        engine = self.engine(pool_size=1)
        try:
            save_settings(engine, settings, actor="bench", source="bench")
        finally:
            engine.dispose()

    def start_receiver(self) -> Process:
        return Process("receiver", [str(VENV_BIN / "mailapi-receiver"), "--config",
                                    str(self.config_path)], self.root / "receiver.log")

    def start_worker(self) -> Process:
        return Process("worker", [str(VENV_BIN / "mailapi-worker"), "--config",
                                  str(self.config_path)], self.root / "worker.log")


def create_installation(parent: Path, name: str, *, sessions: int = 4) -> Installation:
    """Write the config, run `mailapi db upgrade`, and set the receiver's required settings."""
    root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
    port = free_port()
    config_path = root / "mail-api.toml"
    config_path.write_text(
        "[database]\n"
        'path = "mail-api.sqlite3"\n'
        "busy_timeout_ms = 5000\n\n"
        "[receiver]\n"
        f'host = "{HOST}"\n'
        f"port = {port}\n\n"
        "[worker]\n"
        'delivery_backend = "smtp"\n'
        f"sessions = {sessions}\n"
        "batch_size = 64\n"
        "poll_interval_ms = 10\n\n"
        "[logging]\n"
        'level = "info"\n'
        'format = "json"\n'
        'delivery_log = "delivery.log"\n',
        encoding="utf-8",
    )
    run_checked([str(VENV_BIN / "mailapi"), "--config", str(config_path), "db", "upgrade"])
    installation = Installation(root, config_path, root / "mail-api.sqlite3", port,
                                secrets.token_hex(32), sessions)
    installation.configure(webhook_secret=installation.secret,
                           allowed_sender_domain=SENDER_DOMAIN, rate_limit_per_minute=0)
    return installation


def queue_counts(engine: Engine) -> tuple[int, int]:
    """(rows in the queue, rows still in state 'queued')."""
    q = outbound_queue
    with read_transaction(engine) as connection:
        total = connection.execute(select(func.count()).select_from(q)).scalar_one()
        queued = connection.execute(
            select(func.count()).select_from(q).where(q.c.state == "queued")).scalar_one()
    return int(total), int(queued)


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str] = {}
    for package in ("hypercorn", "starlette", "h11", "aiosmtplib", "aiosmtpd", "SQLAlchemy",
                    "structlog"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    versions["sqlite"] = sqlite3.sqlite_version
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": versions,
    }
