"""House rules made mechanical: imports flow one way, modules stay small, no import-time state."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = ("receiver", "worker", "panel")


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else []


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["mailapi", *PROCESSES])
def test_imports_flow_one_way(package: str) -> None:
    forbidden = set(PROCESSES) - {package}
    offenders = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & forbidden)
                 for path in python_files(package) if imported_packages(path) & forbidden}
    assert offenders == {}, f"{package} must not import other process packages: {offenders}"


def test_no_module_past_500_lines() -> None:
    long = [f"{path.relative_to(ROOT)}: {lines}"
            for package in ("mailapi", *PROCESSES) for path in python_files(package)
            if (lines := path.read_text(encoding="utf-8").count("\n")) > 500]
    assert long == []


def test_no_engine_or_app_built_at_import_time() -> None:
    """Entry points are tiny: nothing creates an engine, app or settings at module level."""
    constructors = {"create_engine", "open_engine", "Starlette", "build_app", "load_config"}
    offenders = []
    for package in ("mailapi", *PROCESSES):
        for path in python_files(package):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in tree.body:
                if isinstance(node, ast.Assign | ast.AnnAssign | ast.Expr):
                    for call in ast.walk(node):
                        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                                and call.func.id in constructors):
                            offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_every_write_transaction_begins_immediate() -> None:
    source = (ROOT / "mailapi" / "db.py").read_text(encoding="utf-8")
    assert 'exec_driver_sql("BEGIN IMMEDIATE")' in source


def test_example_configuration_loads() -> None:
    from mailapi.config import load_config

    config = load_config(ROOT / "etc" / "mail-api.toml.example")
    assert config.receiver.port == 2555 and config.receiver.host == "0.0.0.0"
    assert config.panel.port == 2580 and config.panel.host == "127.0.0.1"
    assert config.logging.delivery_log_max_bytes == 5 * 1024 * 1024
    assert config.worker.delivery_backend == "smtp"
