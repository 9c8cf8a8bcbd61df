"""What every daemon does before serving: arguments, config, logging, a checked database."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from sqlalchemy import Engine

from mailapi.config import Config, ConfigError, load_config, secret_overrides
from mailapi.db import Durability, StorageError, integrity_check, naming_the_file, open_engine
from mailapi.logging import configure_logging, get_logger
from mailapi.schema import SchemaNotCurrent, ensure_current

EXIT_CONFIG = 78  # EX_CONFIG: systemd's Restart=on-failure should not loop on this forever


@dataclass(frozen=True)
class Startup:
    config: Config
    engine: Engine
    arguments: argparse.Namespace
    # Settings this process takes from the bootstrap config's secret files.
    secret_overrides: dict[str, str]


def fatal(process: str, message: str) -> NoReturn:
    print(f"{process}: {message}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def _stop_during_startup(signum: int, frame: object) -> None:
    # Nothing is claimed or accepted yet: a stop request now is a clean exit. The serving
    # loops install their own handlers once they run.
    raise SystemExit(0)


def start_daemon(process: str, argv: Sequence[str] | None, *, durability: Durability,
                 description: str, extra: Sequence[tuple[str, dict[str, object]]] = (),
                 secrets: tuple[str, ...] = ()) -> Startup:
    signal.signal(signal.SIGTERM, _stop_during_startup)
    parser = argparse.ArgumentParser(prog=f"mailapi-{process}", description=description)
    parser.add_argument("--config", required=True, help="path of the bootstrap TOML file")
    for flag, options in extra:
        parser.add_argument(flag, **options)  # type: ignore[arg-type]
    arguments = parser.parse_args(argv)
    try:
        config = load_config(arguments.config)
        overrides = secret_overrides(config, secrets)
    except ConfigError as exc:
        fatal(process, str(exc))
    configure_logging(level=config.logging.level, format=config.logging.format,
                      process=process)
    try:
        engine = open_engine(config.database.path, durability=durability,
                             busy_timeout_ms=config.database.busy_timeout_ms)
        result = integrity_check(engine)
        if result != ["ok"]:
            fatal(process, f"database {config.database.path} failed its integrity check: "
                  f"{'; '.join(result[:5])}. Restore it from a backup; it is not recreated.")
        ensure_current(engine, config.database.path)
    except (StorageError, SchemaNotCurrent) as exc:
        fatal(process, naming_the_file(exc, config.database.path))
    get_logger(process).info("starting", config=str(config.path),
                             database=str(config.database.path))
    return Startup(config, engine, arguments, overrides)
