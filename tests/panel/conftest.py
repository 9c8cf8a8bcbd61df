"""Fixtures for the panel tests: the app in-process over a migrated WAL database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.support.panel import Panel, PanelClient


@pytest.fixture
def panel(engine: Engine, tmp_path: Path) -> Iterator[Panel]:
    instance = Panel(engine, tmp_path)
    yield instance
    instance.close()


@pytest.fixture
def admin_client(panel: Panel) -> PanelClient:
    """A browser-like client logged in as "admin"."""
    return panel.logged_in("admin")
