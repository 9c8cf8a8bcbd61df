"""structlog set-up: JSON lines under systemd or a pipe, readable colours on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(*, level: str = "info", format: str = "auto",
                      process: str = "mailapi") -> None:
    """Route structlog and the standard library's logging to stdout in one format."""
    use_json = format == "json" or (format == "auto" and not sys.stdout.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (structlog.processors.JSONRenderer() if use_json
                     else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()))
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer] if use_json
        else [*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(process=process)
    # Libraries (hypercorn, alembic) log through the standard library: keep them readable and
    # quiet below warnings.
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(name)s: %(message)s",
                        force=True)


def set_level(level: str) -> None:
    """Change the level at run time (the log_level setting)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]))


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
