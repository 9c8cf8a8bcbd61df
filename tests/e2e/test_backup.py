"""`mailapi db backup`: a consistent, checked, 0600 copy taken while the receiver writes."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from tests.support.processes import Suite, cli, webhook_body

pytestmark = pytest.mark.e2e


class Sender(threading.Thread):
    """Posts signed webhooks until told to stop (or 20 s pass), counting the 202s."""

    def __init__(self, suite: Suite) -> None:
        super().__init__(daemon=True)
        self.suite = suite
        self.accepted = 0
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 20
        while not self.halt.is_set() and time.monotonic() < deadline:
            status, body = self.suite.post(
                webhook_body(f"user{self.accepted}@example.org", f"token-{self.accepted}"))
            if status == 202:
                self.accepted += 1
            else:
                self.errors.append(f"{status} {body}")


def queued_rows(database: Path) -> int:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        return int(connection.execute("SELECT count(*) FROM outbound_queue").fetchone()[0])


def copy_config(directory: Path, database: Path) -> Path:
    directory.mkdir()
    path = directory / "copy.toml"
    path.write_text(f'[database]\npath = "{database}"\n', encoding="utf-8")
    return path


def test_backup_while_the_receiver_writes(suite: Suite, tmp_path: Path) -> None:
    suite.start_receiver()
    sender = Sender(suite)
    sender.start()
    try:
        while sender.accepted < 20:  # the queue is busy before the backup starts
            assert sender.is_alive(), sender.errors
            time.sleep(0.01)
        accepted_before = sender.accepted
        backups = tmp_path / "backups"
        backups.mkdir()
        destination = backups / "nightly.sqlite3"
        result = cli(suite.config, "db", "backup", str(destination))
        accepted_after = sender.accepted
    finally:
        sender.halt.set()
        sender.join(timeout=30)
    assert result.returncode == 0, result.stderr
    assert "integrity: ok" in result.stdout
    assert not sender.errors
    assert accepted_after > accepted_before  # the receiver committed during the backup
    assert stat.S_IMODE(destination.stat().st_mode) == 0o600
    assert sorted(p.name for p in backups.iterdir()) == ["nightly.sqlite3"]  # no temp left
    # One snapshot: everything accepted before the command ran, nothing half-written.
    assert accepted_before <= queued_rows(destination) <= accepted_after
    check = cli(copy_config(tmp_path / "restore", destination), "db", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "integrity: ok" in check.stdout and "status:    ok" in check.stdout


def test_backup_refuses_to_overwrite_or_to_target_the_live_file(suite: Suite,
                                                                tmp_path: Path) -> None:
    live = suite.config.parent / "mail-api.sqlite3"
    destination = tmp_path / "copy.sqlite3"
    assert cli(suite.config, "db", "backup", str(destination)).returncode == 0
    again = cli(suite.config, "db", "backup", str(destination))
    assert again.returncode == 1 and "exists; remove it first or pass --force" in again.stderr
    assert cli(suite.config, "db", "backup", "--force", str(destination)).returncode == 0
    onto_live = cli(suite.config, "db", "backup", "--force", str(live))
    assert onto_live.returncode == 1 and "is the live database" in onto_live.stderr
    assert cli(suite.config, "db", "check").returncode == 0
    nowhere = cli(suite.config, "db", "backup", str(tmp_path / "missing" / "copy.sqlite3"))
    assert nowhere.returncode == 1 and "does not exist" in nowhere.stderr
    folder = tmp_path / "folder"
    folder.mkdir()
    into_folder = cli(suite.config, "db", "backup", str(folder))
    assert into_folder.returncode == 0, into_folder.stderr
    (written,) = folder.iterdir()
    assert written.name.startswith("mail-api-") and written.suffix == ".sqlite3"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
