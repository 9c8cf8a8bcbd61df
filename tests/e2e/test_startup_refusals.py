"""Daemons refuse to start on a database that is missing, unmigrated or corrupt."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.processes import BIN, cli, write_config

pytestmark = pytest.mark.e2e


def run(name: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / f"mailapi-{name}"), "--config", str(config)],
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("name", ["receiver", "worker"])
def test_missing_database_is_not_created(tmp_path: Path, name: str) -> None:
    config = write_config(tmp_path, receiver_port=free_port())
    result = run(name, config)
    assert result.returncode == 78
    assert "does not exist" in result.stderr and "db upgrade" in result.stderr
    assert not (tmp_path / "mail-api.sqlite3").exists()


@pytest.mark.parametrize("name", ["receiver", "worker"])
def test_corrupt_database_refused(tmp_path: Path, name: str) -> None:
    config = write_config(tmp_path, receiver_port=free_port())
    assert cli(config, "db", "upgrade").returncode == 0
    database = tmp_path / "mail-api.sqlite3"
    database.write_bytes(b"this is not a database" * 1000)
    result = run(name, config)
    assert result.returncode == 78
    assert "database" in result.stderr
    assert database.read_bytes().startswith(b"this is not a database")


@pytest.mark.parametrize("name", ["receiver", "worker"])
def test_unmigrated_database_refused(tmp_path: Path, name: str) -> None:
    config = write_config(tmp_path, receiver_port=free_port())
    import sqlite3
    sqlite3.connect(tmp_path / "mail-api.sqlite3").close()
    result = run(name, config)
    assert result.returncode == 78
    assert "schema revision none" in result.stderr


def test_bad_config_names_the_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[database]\npath = "x.db"\n[receiver]\nprot = 1\n')
    result = run("receiver", config)
    assert result.returncode == 78
    assert "unknown key(s) in [receiver]: prot" in result.stderr
