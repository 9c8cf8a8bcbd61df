"""Argument parsing and dispatch for the `mailapi` admin command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mailapi.accounts import AccountError
from mailapi.cli import admin, database, queue, settings, status, webhook
from mailapi.config import ConfigError, load_config
from mailapi.db import StorageError, naming_the_file
from mailapi.schema import SchemaNotCurrent
from mailapi.settings import SettingsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailapi", description="MAIL_API administration")
    parser.add_argument("--config", required=True, help="path of the bootstrap TOML file")
    groups = parser.add_subparsers(dest="group", required=True, metavar="GROUP")
    database.register(groups)
    settings.register(groups)
    queue.register(groups)
    webhook.register(groups)
    status.register(groups)
    admin.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        config = load_config(arguments.config)
    except ConfigError as exc:
        print(f"mailapi: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        code = arguments.handler(config, arguments)
    except StorageError as exc:
        print(f"mailapi: {naming_the_file(exc, config.database.path)}", file=sys.stderr)
        raise SystemExit(2) from None
    except (AccountError, ConfigError, SchemaNotCurrent, SettingsError) as exc:
        print(f"mailapi: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(code)
